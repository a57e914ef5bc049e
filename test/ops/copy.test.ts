/**
 * copyEntry with concurrent sibling copies: hard links to one inode spread
 * over directories stay one inode, directory timestamps and modes are set
 * after their children, a filter still applies; owners, set-id bits and
 * nanosecond mtimes survive, also into a set-group-id directory.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { copyEntry } from '../../src/ops/fsutil.ts';

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-copy-'));
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

test('a concurrent copy keeps hard links, modes and directory timestamps', async () => {
  const src = path.join(dir, 'src');
  for (let d = 0; d < 4; d++) {
    await fs.mkdir(path.join(src, `d${d}`), { recursive: true });
    for (let i = 0; i < 30; i++) await fs.writeFile(path.join(src, `d${d}`, `f${i}`), `file ${d}/${i}`);
  }
  // One inode with a name in every directory, another with two names in one.
  await fs.writeFile(path.join(src, 'shared'), 'shared');
  for (let d = 0; d < 4; d++) await fs.link(path.join(src, 'shared'), path.join(src, `d${d}`, 'shared-link'));
  await fs.writeFile(path.join(src, 'd2', 'pair-a'), 'pair');
  await fs.link(path.join(src, 'd2', 'pair-a'), path.join(src, 'd2', 'pair-b'));
  await fs.chmod(path.join(src, 'd1'), 0o711);
  await fs.chmod(path.join(src, 'd1', 'f3'), 0o600);
  const old = new Date('2001-02-03T04:05:06Z');
  for (let d = 0; d < 4; d++) await fs.utimes(path.join(src, `d${d}`), old, old);

  const dst = path.join(dir, 'dst');
  assert.equal(await copyEntry(src, dst, { links: new Map() }), true);

  const shared = (await fs.stat(path.join(dst, 'shared'))).ino;
  for (let d = 0; d < 4; d++) {
    assert.equal((await fs.stat(path.join(dst, `d${d}`, 'shared-link'))).ino, shared, `d${d}/shared-link`);
    assert.equal((await fs.readdir(path.join(dst, `d${d}`))).length, d === 2 ? 33 : 31);
    const st = await fs.stat(path.join(dst, `d${d}`));
    assert.equal(st.mtime.getTime(), old.getTime(), `d${d} mtime set after its children`);
  }
  assert.equal((await fs.stat(path.join(dst, 'shared'))).nlink, 5);
  assert.equal(
    (await fs.stat(path.join(dst, 'd2', 'pair-a'))).ino,
    (await fs.stat(path.join(dst, 'd2', 'pair-b'))).ino,
  );
  assert.notEqual((await fs.stat(path.join(dst, 'd2', 'pair-a'))).ino, shared);
  assert.equal((await fs.stat(path.join(dst, 'd1'))).mode & 0o7777, 0o711);
  assert.equal((await fs.stat(path.join(dst, 'd1', 'f3'))).mode & 0o7777, 0o600);
  assert.equal(await fs.readFile(path.join(dst, 'd3', 'f29'), 'utf8'), 'file 3/29');
});

test('a filtered concurrent copy creates only selected entries and their parents', async () => {
  const src = path.join(dir, 'fsrc');
  for (let d = 0; d < 3; d++) {
    await fs.mkdir(path.join(src, `d${d}`), { recursive: true });
    for (let i = 0; i < 20; i++)
      await fs.writeFile(path.join(src, `d${d}`, `f${i}.${i % 2 ? 'c' : 'h'}`), 'x');
  }
  const dst = path.join(dir, 'fdst');
  const made = await copyEntry(src, dst, {
    links: new Map(),
    filter: (rel, isDir) => rel === '' || (!isDir && rel.startsWith('d1/') && rel.endsWith('.c')),
    descend: () => true,
  });
  assert.equal(made, true);
  assert.deepEqual(await fs.readdir(dst), ['d1']);
  const names = (await fs.readdir(path.join(dst, 'd1'))).sort();
  assert.equal(names.length, 10);
  assert.ok(names.every((n) => n.endsWith('.c')));
  assert.equal(
    await copyEntry(src, path.join(dir, 'none'), {
      links: new Map(),
      filter: () => false,
      descend: () => true,
    }),
    false,
  );
  await assert.rejects(fs.stat(path.join(dir, 'none')), /ENOENT/);
});

test('owners and set-id bits survive the copy, also into a set-group-id directory and with overrides', async () => {
  const src = path.join(dir, 'osrc');
  await fs.mkdir(path.join(src, 'sub'), { recursive: true });
  await fs.writeFile(path.join(src, 'root-file'), 'r');
  await fs.writeFile(path.join(src, 'suid'), 's');
  await fs.chmod(path.join(src, 'suid'), 0o4755);
  await fs.writeFile(path.join(src, 'sub', 'user-file'), 'u');
  await fs.chown(path.join(src, 'sub', 'user-file'), 1000, 1002);
  await fs.chmod(path.join(src, 'sub', 'user-file'), 0o2750);
  await fs.symlink('root-file', path.join(src, 'link'));
  await fs.lchown(path.join(src, 'link'), 1003, 1004);
  await fs.utimes(path.join(src, 'root-file'), 1_600_000_000.123456, 1_600_000_000.123456);

  // Into a set-group-id directory of group 1234: new nodes would get group 1234, the copy must not.
  const parent = path.join(dir, 'sgid-parent');
  await fs.mkdir(parent);
  await fs.chown(parent, 0, 1234);
  await fs.chmod(parent, 0o2775);
  const dst = path.join(parent, 'dst');
  await copyEntry(src, dst, { links: new Map() });
  const st = async (p: string) => fs.lstat(path.join(dst, p), { bigint: true });
  const srcSt = async (p: string) => fs.lstat(path.join(src, p), { bigint: true });
  for (const p of ['', 'root-file', 'suid', 'sub', 'sub/user-file', 'link']) {
    const [a, b] = [await srcSt(p), await st(p)];
    assert.equal(`${b.uid}:${b.gid}`, `${a.uid}:${a.gid}`, `owner of "${p}"`);
    if (!a.isSymbolicLink()) assert.equal(b.mode, a.mode, `mode of "${p}"`);
    assert.equal(b.mtimeNs, a.mtimeNs, `mtime of "${p}"`);
  }

  // Overrides: every node gets the owner, every non-link the mode.
  const dst2 = path.join(dir, 'odst2');
  await copyEntry(src, dst2, { links: new Map(), owner: { uid: 7, gid: 8 }, mode: 0o640 });
  for (const p of ['root-file', 'suid', 'sub/user-file']) {
    const b = await fs.lstat(path.join(dst2, p));
    assert.equal(`${b.uid}:${b.gid}:${(b.mode & 0o7777).toString(8)}`, '7:8:640', p);
  }
  const l = await fs.lstat(path.join(dst2, 'link'));
  assert.equal(`${l.uid}:${l.gid}`, '7:8');
});
