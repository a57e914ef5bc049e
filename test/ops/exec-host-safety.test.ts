/**
 * The exec op never deletes host files through symlinks in the rootfs: the
 * mount stubs it creates and prunes stay inside the rootfs, whether the
 * image holds an absolute symlink on a mount destination's path or the
 * process swaps a parent of a mount point for a symlink to a host directory
 * during the run. Sentinel host directories under /tmp are the would-be
 * victims; they must come out untouched.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { unmountAll } from '../../src/core/mount/mount.ts';
import { image, marshal } from '../../src/llb/index.ts';
import { missingMountPoints, removeStubs } from '../../src/ops/exec.ts';
import { type Fixture, makeFixture } from './fixture.ts';

let fx: Fixture;
let tmp = '';
before(async () => {
  // native: a copy per snapshot, so the process can rename directories of earlier layers
  // (overlayfs without redirect_dir answers EXDEV and mv cannot move a tree holding a mount).
  fx = await makeFixture({ snapshotter: 'native' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-exec-safety-'));
});
after(async () => {
  await fx?.close();
  if (tmp) {
    await unmountAll(tmp);
    await fs.rm(tmp, { recursive: true, force: true });
  }
});

/** A host directory holding an empty file and an empty directory (what a stub prune would delete). */
async function sentinel(name: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `kiln-sentinel-${name}-`));
  await fs.writeFile(path.join(dir, 'b'), '');
  await fs.mkdir(path.join(dir, 'm'));
  return dir;
}

async function intact(dir: string): Promise<void> {
  assert.equal((await fs.lstat(path.join(dir, 'b'))).isFile(), true, `${dir}/b still there`);
  assert.equal((await fs.lstat(path.join(dir, 'm'))).isDirectory(), true, `${dir}/m still there`);
}

test('stubs resolve inside the rootfs: an absolute symlink on the path leads into the rootfs, not the host', async (t) => {
  const host = await sentinel('abs');
  t.after(() => fs.rm(host, { recursive: true, force: true }));
  const rootfs = path.join(tmp, 'rootfs-abs');
  await fs.mkdir(rootfs);
  await fs.symlink(host, path.join(rootfs, 'x')); // /x -> /tmp/kiln-sentinel-...
  await fs.symlink('/', path.join(rootfs, 'dev')); // /dev -> /
  const stubs = await missingMountPoints(rootfs, ['/x/b', '/x/m', '/dev/null', '/x/new/deep']);
  for (const s of stubs) assert.ok(!s.startsWith('..') && !path.isAbsolute(s), `stub "${s}" is inside`);
  // The runtime would create these inside the rootfs; the host sentinel gets its own copies meanwhile.
  for (const s of stubs) await fs.mkdir(path.join(rootfs, s), { recursive: true });
  await fs.mkdir(path.join(host, 'new', 'deep'), { recursive: true });
  await removeStubs(rootfs, stubs);
  await intact(host);
  assert.ok((await fs.lstat(path.join(host, 'new', 'deep'))).isDirectory(), 'host dir made meanwhile kept');
  assert.ok((await fs.lstat('/dev/null')).isCharacterDevice());
});

test('a parent of a stub swapped for a symlink to the host is not followed when pruning', async (t) => {
  const host = await sentinel('swap');
  t.after(() => fs.rm(host, { recursive: true, force: true }));
  const rootfs = path.join(tmp, 'rootfs-swap');
  await fs.mkdir(path.join(rootfs, 'a'), { recursive: true });
  const stubs = await missingMountPoints(rootfs, ['/a/b', '/a/m']);
  assert.deepEqual(stubs.sort(), ['a/b', 'a/m']);
  // During the run: the runtime made the stubs, then the process moved /a away and linked /a to the host.
  await fs.writeFile(path.join(rootfs, 'a', 'b'), '');
  await fs.mkdir(path.join(rootfs, 'a', 'm'));
  await fs.rename(path.join(rootfs, 'a'), path.join(rootfs, 'a2'));
  await fs.symlink(host, path.join(rootfs, 'a'));
  await removeStubs(rootfs, stubs);
  await intact(host);
});

test('a stub with a bind mount of a host directory below it is not pruned through the mount', async (t) => {
  const host = await sentinel('bind');
  t.after(() => fs.rm(host, { recursive: true, force: true }));
  const rootfs = path.join(tmp, 'rootfs-bind');
  await fs.mkdir(rootfs);
  const stubs = await missingMountPoints(rootfs, ['/mnt/h']);
  assert.deepEqual(stubs, ['mnt']);
  await fs.mkdir(path.join(rootfs, 'mnt', 'h'), { recursive: true });
  const { execFileSync } = await import('node:child_process');
  execFileSync('mount', ['--bind', host, path.join(rootfs, 'mnt', 'h')]);
  t.after(() => unmountAll(path.join(rootfs, 'mnt')));
  await removeStubs(rootfs, stubs);
  await intact(host);
});

test('RUN: a process that swaps a mount point parent for a symlink to a host directory deletes nothing there', async (t) => {
  const host = await sentinel('run');
  t.after(() => fs.rm(host, { recursive: true, force: true }));
  const w = fx.worker();
  const st = image('busybox')
    .run({ shell: 'mkdir /a' })
    .run({
      // /a/b is a stub the runtime creates for the tmpfs; /a is then moved and replaced by a link.
      shell: `mv /a /a2 && ln -s ${host} /a && echo swapped`,
      mounts: [{ type: 'tmpfs', target: '/a/b' }],
    });
  const r = await w.solveDefinition(marshal(st.root()));
  await intact(host);
  const inResult = await fx.read(r, async (d) => fs.readlink(path.join(d, 'a')));
  assert.equal(inResult, host, 'the process did what it did, inside the rootfs');
  await r.release();
});

test('RUN: a bind mount selector through an absolute symlink in its input binds the input tree, not the host', async (t) => {
  const host = await sentinel('bind-sel');
  t.after(() => fs.rm(host, { recursive: true, force: true }));
  const name = path.basename(host);
  const w = fx.worker();
  // The input has `x -> /` and its own /tmp/<sentinel name>/b.
  const input = image('busybox').run({
    shell: `ln -s / /x && mkdir -p /tmp/${name} && echo mine > /tmp/${name}/b`,
  });
  const st = image('busybox').run({
    shell: 'cat /m/b && rm -rf /m/b /m/m && echo cleaned',
    mounts: [{ type: 'bind', target: '/m', source: input.root(), selector: `x/tmp/${name}` }],
  });
  const r = await w.solveDefinition(marshal(st.root()));
  await intact(host);
  await r.release();
  // A read-only bind with a selector reads the input tree too.
  const ro = image('busybox').run({
    shell: 'cat /m/b > /seen',
    mounts: [{ type: 'bind', target: '/m', source: input.root(), selector: `x/tmp/${name}`, readonly: true }],
  });
  const r2 = await w.solveDefinition(marshal(ro.root()));
  assert.equal(await fx.read(r2, (d) => fs.readFile(path.join(d, 'seen'), 'utf8')), 'mine\n');
  await r2.release();
});
