/**
 * Test fixtures for the exporters: a build result made by hand in a Kiln
 * core, as the worker makes one — a committed snapshot chain: `base` (a
 * busybox root filesystem copied in), `step1` (adds, changes, deletes, an
 * opaque directory, a hard link, a symlink, a fifo, a setuid file owned by
 * 1000, an xattr), `step2` (no change: an empty layer) and `step3` (adds a
 * file) — plus the frontend-style image config with history for it.
 */
import { execFile } from 'node:child_process';
import { appendFile, chmod, chown, link, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ImageConfig } from '../../src/core/images/types.ts';
import type { Core } from '../../src/core/metadata/index.ts';
import { withTempMount } from '../../src/core/mount/mount.ts';
import { listTree } from '../core/fixtures/images.ts';

export const execFileP = promisify(execFile);

/** Prepares `key` on `parent`, runs `fn` on the mounted tree and commits it as `name`. */
export async function step(
  core: Core,
  name: string,
  parent: string | undefined,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  // Held by a lease, as the solver's cache holds build results (GC must keep them).
  try {
    core.leases.create({ id: 'test-results' });
  } catch {
    // exists
  }
  const sn = (await core.snapshotter()).withLease('test-results');
  const key = `${name}-active`;
  const mounts = await sn.prepare(key, parent);
  await withTempMount(mounts, fn);
  await sn.commit(name, key);
}

/** Builds the chain base → step1 → step2 → step3 (names prefixed with `prefix`) from `rootfs`. */
export async function makeChain(core: Core, rootfs: string, prefix = ''): Promise<string> {
  await step(core, `${prefix}base`, undefined, async (dir) => {
    await execFileP('cp', ['-a', `${rootfs}/.`, dir]);
  });
  await step(core, `${prefix}step1`, `${prefix}base`, async (dir) => {
    await writeFile(join(dir, 'hello.txt'), 'hello from kiln\n');
    await appendFile(join(dir, 'etc/passwd'), 'app:x:1000:1000::/home/app:/bin/sh\n');
    await rm(join(dir, 'bin/vi'));
    await mkdir(join(dir, 'var/old'), { recursive: true });
    await rm(join(dir, 'home'), { recursive: true });
    await mkdir(join(dir, 'home/app'), { recursive: true });
    await mkdir(join(dir, 'data'));
    await writeFile(join(dir, 'data/a'), 'shared bytes\n');
    await link(join(dir, 'data/a'), join(dir, 'data/b'));
    await symlink('../hello.txt', join(dir, 'data/link'));
    await execFileP('mkfifo', [join(dir, 'data/fifo')]);
    await writeFile(join(dir, 'data/suid'), '#!/bin/sh\necho suid\n');
    await chown(join(dir, 'data/suid'), 1000, 1000);
    await chmod(join(dir, 'data/suid'), 0o4755);
    await execFileP('setfattr', ['-n', 'user.kiln', '-v', 'exported', join(dir, 'data/a')]);
  });
  await step(core, `${prefix}step2`, `${prefix}step1`, async () => {});
  await step(core, `${prefix}step3`, `${prefix}step2`, async (dir) => {
    await mkdir(join(dir, 'app'));
    await writeFile(join(dir, 'app/run.sh'), '#!/bin/sh\necho run\n', { mode: 0o755 });
  });
  return `${prefix}step3`;
}

/** The image config a frontend would give for the chain: 3 layer steps (one of them empty) and an ENV. */
export function chainConfig(): ImageConfig {
  const arch = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;
  return {
    architecture: arch,
    os: 'linux',
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Cmd: ['sh'],
    },
    rootfs: { type: 'layers', diff_ids: [] },
    history: [
      { created_by: 'busybox rootfs', comment: 'base' },
      { created_by: 'RUN step1 # buildkit', comment: 'buildkit.dockerfile.v0' },
      { created_by: 'RUN true # buildkit', comment: 'buildkit.dockerfile.v0' },
      { created_by: 'ENV A=b', comment: 'buildkit.dockerfile.v0', empty_layer: true },
      { created_by: 'COPY app /app # buildkit', comment: 'buildkit.dockerfile.v0' },
    ],
  };
}

/** listTree of committed snapshot `name` (through a read-only view). */
export async function snapshotTree(core: Core, name: string): Promise<string[]> {
  const sn = await core.snapshotter();
  const key = `tree-${name}-${Math.random().toString(36).slice(2)}`;
  const mounts = await sn.view(key, name);
  try {
    return await withTempMount(mounts, (dir) => listTree(dir));
  } finally {
    await sn.remove(key);
  }
}

/** True when the docker daemon answers. */
export async function dockerAvailable(): Promise<boolean> {
  try {
    await execFileP('/usr/bin/docker', ['info', '--format', '{{.ServerVersion}}']);
    return true;
  } catch {
    return false;
  }
}

export async function docker(args: string[]): Promise<string> {
  const { stdout } = await execFileP('/usr/bin/docker', args, { maxBuffer: 16 << 20 });
  return stdout;
}
