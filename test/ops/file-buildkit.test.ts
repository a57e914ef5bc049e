/**
 * Copy-action details found by the differential corpus (test/differential)
 * to differ from docker's BuildKit, on real snapshots through the worker:
 * - hard links are kept within one source's tree, not across the sources a
 *   wildcard matched (a followed symlink source is copied as a regular file);
 * - `attemptUnpack` extracts a tar archive source (plain and gzip) into the
 *   destination, copies other files as they are, and nothing is extracted
 *   without it;
 * - a source path through a symlink to a directory is followed.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { copy, local, marshal, scratch, type State } from '../../src/llb/index.ts';
import type { Result } from '../../src/solver/types.ts';
import type { Worker } from '../../src/worker/worker.ts';
import { type Fixture, makeFixture } from './fixture.ts';

let fx: Fixture;
let ctxDir: string;
let w: Worker;

before(async () => {
  fx = await makeFixture();
  ctxDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-bkctx-'));
  // a/b: deep and hard are one inode, link -> deep; tree/: x and y one inode.
  await fs.mkdir(`${ctxDir}/a/b`, { recursive: true });
  await fs.writeFile(`${ctxDir}/a/b/deep`, 'deep\n');
  await fs.link(`${ctxDir}/a/b/deep`, `${ctxDir}/a/b/hard`);
  await fs.symlink('deep', `${ctxDir}/a/b/link`);
  await fs.mkdir(`${ctxDir}/tree`);
  await fs.writeFile(`${ctxDir}/tree/x`, 'x\n');
  await fs.link(`${ctxDir}/tree/x`, `${ctxDir}/tree/y`);
  // an archive, its gzip, and a file that is not an archive
  await fs.mkdir(`${ctxDir}/src/inner`, { recursive: true });
  await fs.writeFile(`${ctxDir}/src/inner/in.txt`, 'in\n');
  execFileSync('tar', [
    '-C',
    `${ctxDir}/src`,
    '--owner=1000',
    '--group=2000',
    '-cf',
    `${ctxDir}/arch.tar`,
    '.',
  ]);
  execFileSync('sh', ['-c', `gzip -c "$1/arch.tar" > "$1/arch.tar.gz"`, 'sh', ctxDir]);
  await fs.writeFile(`${ctxDir}/plain.txt`, 'not an archive\n');
  // a symlink to a directory
  await fs.symlink('src', `${ctxDir}/link-to-dir`);
  w = fx.worker({ locals: { ctx: ctxDir } });
});
after(async () => {
  await fx?.close();
  if (ctxDir) await fs.rm(ctxDir, { recursive: true, force: true });
});

const ctx = local('ctx');
const solve = (st: State): Promise<Result> => w.solveDefinition(marshal(st));
const opts = {
  createDestPath: true,
  allowWildcard: true,
  allowEmptyWildcard: true,
  followSymlinks: true,
  copyDirContentsOnly: true,
};

test('hard links stay within one source tree, not across wildcard matches', async () => {
  const r = await solve(scratch().file(copy(ctx, '/a/b/*', '/glob/', opts).copy(ctx, '/tree', '/t/', opts)));
  const st = await fx.read(r, async (d) =>
    Promise.all(['glob/deep', 'glob/hard', 'glob/link', 't/x', 't/y'].map((p) => fs.lstat(`${d}/${p}`))),
  );
  const [deep, hard, link, x, y] = st;
  assert.ok(link!.isFile(), 'the symlink source was followed into a regular file');
  assert.deepEqual([deep!.nlink, hard!.nlink, link!.nlink], [1, 1, 1], 'each match is a file of its own');
  assert.equal(new Set([deep!.ino, hard!.ino, link!.ino]).size, 3);
  assert.equal(x!.ino, y!.ino, 'a hard link inside one source stays a hard link');
  assert.equal(x!.nlink, 2);
  await r.release();
});

test('attemptUnpack extracts tar archives; other files and copies without it stay files', async () => {
  const r = await solve(
    scratch().file(
      copy(ctx, '/arch.tar', '/x/', { ...opts, attemptUnpack: true })
        .copy(ctx, '/arch.tar.gz', '/xgz', { ...opts, attemptUnpack: true })
        .copy(ctx, '/plain.txt', '/p/', { ...opts, attemptUnpack: true })
        .copy(ctx, '/arch.tar', '/raw/', opts),
    ),
  );
  const got = await fx.read(r, async (d) => ({
    tar: await fs.readFile(`${d}/x/inner/in.txt`, 'utf8'),
    owner: (await fs.stat(`${d}/x/inner/in.txt`)).uid,
    gz: await fs.readFile(`${d}/xgz/inner/in.txt`, 'utf8'),
    plain: await fs.readFile(`${d}/p/plain.txt`, 'utf8'),
    raw: (await fs.readdir(`${d}/raw`)).sort(),
  }));
  assert.deepEqual(got, {
    tar: 'in\n',
    owner: 1000,
    gz: 'in\n',
    plain: 'not an archive\n',
    raw: ['arch.tar'],
  });
  await r.release();
});

test('a source path through a symlink to a directory is followed', async () => {
  const r = await solve(
    scratch().file(
      copy(ctx, '/link-to-dir/', '/through/', opts).copy(ctx, '/link-to-dir/inner/in.txt', '/f.txt', opts),
    ),
  );
  const got = await fx.read(r, async (d) => [
    await fs.readFile(`${d}/through/inner/in.txt`, 'utf8'),
    await fs.readFile(`${d}/f.txt`, 'utf8'),
  ]);
  assert.deepEqual(got, ['in\n', 'in\n']);
  await r.release();
});
