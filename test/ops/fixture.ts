/**
 * Shared setup for the ops tests: a Kiln root in a temp directory, a busybox
 * rootfs (scripts/make-busybox-rootfs.sh) committed as snapshot "busybox",
 * an ImageResolver that answers every reference with it, and a Worker.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { removeTree } from '../../src/core/fs/safe.ts';
import { unmountAll, withTempMount } from '../../src/core/mount/mount.ts';
import { type Core, openCore, type SnapshotterName } from '../../src/core/metadata/index.ts';
import { probeRuntime, type OciRuntime } from '../../src/core/runtime/runtime.ts';
import { runDirFor } from '../../src/core/rundir.ts';
import type { ImageResolver, Sessions } from '../../src/ops/env.ts';
import { OpSession, snapshotOf } from '../../src/ops/refs.ts';
import type { ProgressEvent } from '../../src/solver/progress.ts';
import type { Result } from '../../src/solver/types.ts';
import { Worker, type WorkerOptions } from '../../src/worker/worker.ts';

const execFileAsync = promisify(execFile);
const repo = path.resolve(import.meta.dirname, '../..');

export const BUSYBOX = 'busybox-base';

export interface Fixture {
  root: string;
  core: Core;
  runtime: OciRuntime;
  resolver: ImageResolver;
  worker(sessions?: Partial<Sessions>, opts?: Partial<WorkerOptions>): Worker;
  /** Reads files of a result through a read-only mount. */
  read<T>(result: Result, fn: (dir: string) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

let rootfsDir: Promise<string> | undefined;

async function busyboxRootfs(): Promise<string> {
  rootfsDir ??= (async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-busybox-'));
    await execFileAsync(path.join(repo, 'scripts/make-busybox-rootfs.sh'), [dir]);
    await fs.chmod(dir, 0o755); // mkdtemp makes it 0700, and it becomes the image's /
    return dir;
  })();
  return rootfsDir;
}

export async function makeFixture(opts: { snapshotter?: SnapshotterName } = {}): Promise<Fixture> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-'));
  const core = await openCore({ root, namespace: 'test', ...opts });
  const sn = await core.snapshotter();
  const rootfs = await busyboxRootfs();
  const mounts = await sn.prepare('import-busybox');
  await withTempMount(mounts, async (target) => {
    await execFileAsync('cp', ['-a', '--no-target-directory', `${rootfs}/.`, `${target}/`]);
  });
  await sn.commit(BUSYBOX, 'import-busybox', { labels: { 'containerd.io/gc.root': 'test' } });
  const { runtime } = await probeRuntime({ stateDir: path.join(root, 'runtime') });
  const resolver: ImageResolver = {
    async resolve() {
      return { digest: 'sha256:busybox-test-image', topChainSnapshot: BUSYBOX };
    },
  };
  const workers: Worker[] = [];
  return {
    root,
    core,
    runtime,
    resolver,
    worker(sessions = {}, opts = {}) {
      const w = new Worker({ core, runtime, images: resolver, sessions, ...opts });
      workers.push(w);
      return w;
    },
    async read(result, fn) {
      const s = await OpSession.open(core, 'test read');
      try {
        return await fn(await s.mount(await s.view(snapshotOf(result))));
      } finally {
        await s.close();
      }
    },
    async close() {
      for (const w of workers) w.close();
      await core.close();
      // No rm -rf after a failed unmount: that would delete through whatever is still mounted.
      await unmountAll(root);
      await removeTree(root);
      const run = runDirFor(root);
      await unmountAll(run);
      await removeTree(run);
      if (rootfsDir) {
        const dir = await rootfsDir;
        rootfsDir = undefined;
        await fs.rm(dir, { recursive: true, force: true });
      }
    },
  };
}

/** Events collector. */
export function collect(): { events: ProgressEvent[]; write(e: ProgressEvent): void } {
  const events: ProgressEvent[] = [];
  return { events, write: (e) => events.push(e) };
}

export function logsOf(events: ProgressEvent[]): string {
  return events
    .filter((e) => e.type === 'log')
    .map((e) => Buffer.from(e.data).toString())
    .join('');
}
