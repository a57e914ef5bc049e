/**
 * src/core/fs/safe.ts with real files, bind mounts and device nodes: host
 * sentinel directories under /tmp stand for what must never be deleted, and
 * a private null device (mknod c 1 3) for /dev/null.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { realDirsBelow, removeTree, resolveInRoot, writeOutputFile } from '../../src/core/fs/safe.ts';
import { openCore } from '../../src/core/metadata/index.ts';
import { unmountAll } from '../../src/core/mount/mount.ts';
import { native } from '../../src/core/native/index.ts';

let base = '';
before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-fs-safe-'));
});
after(async () => {
  await unmountAll(base);
  await fs.rm(base, { recursive: true, force: true });
});

async function sentinel(): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-sentinel-'));
  await fs.writeFile(path.join(dir, 'keep'), 'precious\n');
  native().mknod(path.join(dir, 'null'), 0o020666, 1, 3);
  return dir;
}

async function intact(dir: string): Promise<void> {
  assert.equal(await fs.readFile(path.join(dir, 'keep'), 'utf8'), 'precious\n');
  assert.ok(
    (await fs.lstat(path.join(dir, 'null'))).isCharacterDevice(),
    'the device node is still a device',
  );
}

test('resolveInRoot never leaves the root: absolute links, .. and link chains', async () => {
  const root = path.join(base, 'resolve');
  await fs.mkdir(path.join(root, 'real'), { recursive: true });
  await fs.symlink('/', path.join(root, 'dev'));
  await fs.symlink('/tmp/kiln-sentinel-x', path.join(root, 'abs'));
  await fs.symlink('../../../../..', path.join(root, 'real', 'up'));
  await fs.symlink('dev', path.join(root, 'chain'));
  assert.equal(await resolveInRoot(root, '/dev/null'), path.join(root, 'null'));
  assert.equal(await resolveInRoot(root, '/abs/f'), path.join(root, 'tmp/kiln-sentinel-x/f'));
  assert.equal(await resolveInRoot(root, '/real/up/etc'), path.join(root, 'etc'));
  assert.equal(await resolveInRoot(root, '/../../etc/passwd'), path.join(root, 'etc/passwd'));
  assert.equal(await resolveInRoot(root, '/chain/x'), path.join(root, 'x'));
  assert.equal(await resolveInRoot(root, '/dev', false), path.join(root, 'dev'));
  assert.equal(await realDirsBelow(root, 'real'), true);
  assert.equal(await realDirsBelow(root, 'dev'), false, 'a symlink component is refused');
  assert.equal(await realDirsBelow(root, 'real/missing/more'), true);
});

test('removeTree refuses a tree with a bind mount below it and deletes nothing; afterwards it removes', async () => {
  const host = await sentinel();
  const tree = path.join(base, 'bundle');
  await fs.mkdir(path.join(tree, 'rootfs', 'x'), { recursive: true });
  await fs.writeFile(path.join(tree, 'config.json'), '{}');
  execFileSync('mount', ['--bind', host, path.join(tree, 'rootfs', 'x')]);
  try {
    await assert.rejects(removeTree(tree), (err) => isKilnError(err, 'FailedPrecondition'));
    await intact(host);
    assert.ok(await fs.stat(path.join(tree, 'config.json')), 'nothing removed before refusing');
  } finally {
    await unmountAll(tree);
  }
  await removeTree(tree);
  await assert.rejects(fs.lstat(tree), { code: 'ENOENT' });
  await intact(host);
  await fs.rm(host, { recursive: true });
});

test('removeTree of a symlink to a host directory removes the link only', async () => {
  const host = await sentinel();
  const link = path.join(base, 'link');
  await fs.symlink(host, link);
  await removeTree(link);
  await assert.rejects(fs.lstat(link), { code: 'ENOENT' });
  await intact(host);
  // Inside a tree: links are removed, never followed.
  const tree = path.join(base, 'tree-with-links');
  await fs.mkdir(tree);
  await fs.symlink(host, path.join(tree, 'to-host'));
  await fs.symlink(path.join(host, 'null'), path.join(tree, 'to-null'));
  await removeTree(tree);
  await intact(host);
  await removeTree(path.join(base, 'missing')); // nothing to do
  await fs.rm(host, { recursive: true });
});

test('writeOutputFile writes a device or FIFO in place and never replaces it', async () => {
  const dev = path.join(base, 'null');
  native().mknod(dev, 0o020666, 1, 3);
  const before = await fs.lstat(dev);
  const written = await writeOutputFile(dev, async (fh) => {
    await fh.write('discarded\n');
  });
  assert.equal(written, dev);
  const st = await fs.lstat(dev);
  assert.ok(st.isCharacterDevice(), 'still a character device');
  assert.equal(st.ino, before.ino, 'the same node, not a new file');
  assert.deepEqual(
    (await fs.readdir(base)).filter((n) => n.includes('.tmp-')),
    [],
    'no temp file left',
  );

  const fifo = path.join(base, 'fifo');
  native().mknod(fifo, 0o010600, 0, 0);
  const reader = fs.readFile(fifo, 'utf8');
  await writeOutputFile(fifo, async (fh) => {
    await fh.write('through the pipe');
  });
  assert.equal(await reader, 'through the pipe');
  assert.ok((await fs.lstat(fifo)).isFIFO());
});

test('writeOutputFile: a regular file is replaced atomically, a symlink is kept and its target written', async () => {
  const file = path.join(base, 'out.tar');
  await fs.writeFile(file, 'old');
  await writeOutputFile(file, async (fh) => {
    await fh.write('new');
  });
  assert.equal(await fs.readFile(file, 'utf8'), 'new');
  const link = path.join(base, 'out-link.tar');
  await fs.symlink('out.tar', link);
  assert.equal(
    await writeOutputFile(link, async (fh) => {
      await fh.write('via link');
    }),
    file,
  );
  assert.ok((await fs.lstat(link)).isSymbolicLink(), 'the link is kept');
  assert.equal(await fs.readFile(file, 'utf8'), 'via link');
  await assert.rejects(
    writeOutputFile(base, async () => {}),
    (err) => isKilnError(err, 'InvalidArgument'),
  );
  const fresh = path.join(base, 'new-dir', 'fresh.tar');
  await writeOutputFile(fresh, async (fh) => {
    await fh.write('x');
  });
  assert.equal(await fs.readFile(fresh, 'utf8'), 'x');
});

test('a snapshot with a host directory mounted inside it is not deleted through the mount', async () => {
  const host = await sentinel();
  const root = path.join(base, 'kiln-root');
  const core = await openCore({ root, namespace: 'test', snapshotter: 'native' });
  try {
    const sn = await core.snapshotter('native');
    const mounts = await sn.prepare('busy');
    const fsDir = mounts[0]!.source;
    await fs.mkdir(path.join(fsDir, 'x'));
    execFileSync('mount', ['--bind', host, path.join(fsDir, 'x')]);
    try {
      // The metadata record goes; the driver refuses to delete the directory (GC retries later).
      await sn.remove('busy');
      await intact(host);
      assert.ok((await fs.stat(path.join(fsDir, 'x'))).isDirectory(), 'the driver kept the snapshot');
    } finally {
      await unmountAll(path.join(fsDir, 'x'));
    }
    await intact(host);
  } finally {
    await core.close();
    await fs.rm(host, { recursive: true });
  }
});

test('exporting an OCI layout tar to a device node writes through it (the /dev/null case)', async () => {
  const { writeTarFile } = await import('../../src/core/images/oci-layout.ts');
  const dev = path.join(base, 'export-null');
  native().mknod(dev, 0o020666, 1, 3);
  await writeTarFile(dev, async (w) => {
    await w.add(
      { name: 'f', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 2, mtime: 0 },
      Buffer.from('hi'),
    );
  });
  assert.ok((await fs.lstat(dev)).isCharacterDevice(), 'still the device, not a tar file');
});

test('openOutputFile: abort leaves the old file and no temp file; commit replaces it', async () => {
  const { openOutputFile } = await import('../../src/core/fs/safe.ts');
  const dir = path.join(base, 'sink');
  await fs.mkdir(dir);
  const file = path.join(dir, 'out.tar');
  await fs.writeFile(file, 'old');
  const a = await openOutputFile(file);
  await a.handle.write('partial');
  await a.abort();
  assert.equal(await fs.readFile(file, 'utf8'), 'old');
  assert.deepEqual(await fs.readdir(dir), ['out.tar']);
  const b = await openOutputFile(file);
  await b.handle.write('complete');
  await b.commit();
  assert.equal(await fs.readFile(file, 'utf8'), 'complete');
  assert.deepEqual(await fs.readdir(dir), ['out.tar']);
});
