/**
 * unpackArchive (the copy action's attemptUnpack, Dockerfile ADD): archives
 * made by GNU tar, plain and compressed with gzip, bzip2 and xz, extract
 * with owners, modes, symlinks and hard links; files that are not archives
 * (text, gzip / xz / bzip2 of a non-tar, empty) are refused without touching the
 * destination; an entry climbing out of dest is refused.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { detectCompression, unpackArchive } from '../../src/ops/unpack.ts';

let dir: string;
let tarFile: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-unpack-'));
  const src = path.join(dir, 'src');
  await fs.mkdir(path.join(src, 'inner'), { recursive: true });
  await fs.writeFile(path.join(src, 'top.txt'), 'top\n');
  await fs.writeFile(path.join(src, 'inner', 'in.txt'), 'in\n');
  await fs.link(path.join(src, 'top.txt'), path.join(src, 'inner', 'hard.txt'));
  await fs.symlink('top.txt', path.join(src, 'link'));
  await fs.chmod(path.join(src, 'inner'), 0o750);
  await fs.chmod(path.join(src, 'inner', 'in.txt'), 0o640);
  tarFile = path.join(dir, 'a.tar');
  execFileSync('tar', ['-C', src, '--owner=1000', '--group=2000', '--numeric-owner', '-cf', tarFile, '.']);
  for (const [prog, ext] of [
    ['gzip', 'gz'],
    ['bzip2', 'bz2'],
    ['xz', 'xz'],
  ] as const) {
    execFileSync('sh', ['-c', `${prog} -c "$1" > "$1.${ext}"`, 'sh', tarFile]);
  }
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function newRoot(name: string): Promise<string> {
  const root = path.join(dir, name);
  await fs.mkdir(root);
  return root;
}

for (const ext of ['', '.gz', '.bz2', '.xz']) {
  test(`a tar archive${ext ? ` (${ext.slice(1)})` : ''} is extracted with owners, modes and links`, async () => {
    const root = await newRoot(`root${ext || '.tar'}`);
    let ensured = 0;
    const ok = await unpackArchive(`${tarFile}${ext}`, root, '/out/x', async () => {
      ensured++;
      await fs.mkdir(path.join(root, 'out/x'), { recursive: true });
    });
    assert.equal(ok, true);
    assert.equal(ensured, 1);
    const out = path.join(root, 'out/x');
    assert.equal(await fs.readFile(path.join(out, 'top.txt'), 'utf8'), 'top\n');
    assert.equal(await fs.readFile(path.join(out, 'inner/in.txt'), 'utf8'), 'in\n');
    assert.equal(await fs.readlink(path.join(out, 'link')), 'top.txt');
    const inner = await fs.stat(path.join(out, 'inner'));
    assert.equal(inner.mode & 0o7777, 0o750);
    assert.equal((await fs.stat(path.join(out, 'inner/in.txt'))).mode & 0o7777, 0o640);
    const top = await fs.stat(path.join(out, 'top.txt'));
    assert.deepEqual([top.uid, top.gid, top.nlink], [1000, 2000, 2]);
    assert.equal((await fs.stat(path.join(out, 'inner/hard.txt'))).ino, top.ino);
    assert.equal((await fs.lstat(path.join(out, 'link'))).uid, 1000);
  });
}

test('compression is detected from magic bytes', () => {
  assert.equal(detectCompression(gzipSync('x')), 'gzip');
  assert.equal(detectCompression(new Uint8Array([0x42, 0x5a, 0x68, 0x39])), 'bzip2');
  assert.equal(detectCompression(new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])), 'xz');
  assert.equal(detectCompression(new TextEncoder().encode('plain')), 'none');
});

test('files that are not tar archives are not extracted', async () => {
  const root = await newRoot('notar');
  const cases: Array<[string, Uint8Array | string]> = [
    ['text.txt', 'just some text that is not a tar header\n'],
    ['text.gz', gzipSync('gzip of something that is not a tar')],
    ['empty', ''],
    ['text.xz', execFileSync('xz', ['-c'], { input: 'xz of something that is not a tar\n'.repeat(2000) })],
    ['text.bz2', execFileSync('bzip2', ['-c'], { input: 'bzip2 of a non-tar\n'.repeat(2000) })],
  ];
  for (const [name, data] of cases) {
    const f = path.join(dir, name);
    await fs.writeFile(f, data);
    const ok = await unpackArchive(f, root, '/out', async () => {
      throw new Error('dest must not be created for a non-archive');
    });
    assert.equal(ok, false, name);
  }
  assert.deepEqual(await fs.readdir(root), []);
});

test('an entry climbing above dest is refused', async () => {
  const src = path.join(dir, 'evil');
  await fs.mkdir(path.join(src, 'a'), { recursive: true });
  await fs.writeFile(path.join(src, 'x'), 'x');
  const evil = path.join(dir, 'evil.tar');
  execFileSync('tar', ['-C', path.join(src, 'a'), '-P', '-cf', evil, '../x']);
  const root = await newRoot('evilroot');
  await assert.rejects(
    unpackArchive(evil, root, '/out', () => fs.mkdir(path.join(root, 'out'))),
    /points outside the destination/,
  );
  await assert.rejects(fs.stat(path.join(root, 'x')));
});
