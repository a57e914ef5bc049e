/**
 * File op semantics (copy wildcards, directory contents, owners by name,
 * modes, timestamps, hard links, xattrs, include/exclude, rm, mkdir),
 * local source filters, merge and diff — on real snapshots.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { native } from '../../src/core/native/index.ts';
import {
  copy,
  diff,
  image,
  local,
  marshal,
  merge,
  mkdir,
  mkfile,
  rm,
  scratch,
  type State,
} from '../../src/llb/index.ts';
import type { Result } from '../../src/solver/types.ts';
import type { Worker } from '../../src/worker/worker.ts';
import { type Fixture, makeFixture } from './fixture.ts';

let fx: Fixture;
let ctxDir: string;
let w: Worker;

before(async () => {
  fx = await makeFixture();
  ctxDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-filectx-'));
  await fs.mkdir(`${ctxDir}/sub/deep`, { recursive: true });
  for (const f of ['a.txt', 'b.txt', 'c.md', 'sub/d.txt', 'sub/e.md', 'sub/deep/f.txt']) {
    await fs.writeFile(`${ctxDir}/${f}`, `${f}\n`);
  }
  await fs.chmod(`${ctxDir}/a.txt`, 0o751);
  await fs.link(`${ctxDir}/a.txt`, `${ctxDir}/sub/a-link.txt`);
  await fs.symlink('sub', `${ctxDir}/sublink`);
  native().lsetxattr(`${ctxDir}/b.txt`, 'user.kiln', Buffer.from('xattr-value'), 0);
  w = fx.worker({ locals: { ctx: ctxDir } });
});
after(async () => {
  await fx?.close();
  if (ctxDir) await fs.rm(ctxDir, { recursive: true, force: true });
});

async function solve(st: State): Promise<Result> {
  return w.solveDefinition(marshal(st));
}

/** Every path of a result under `dir` (relative, sorted; directories end with '/'). */
async function tree(r: Result, dir = '/'): Promise<string[]> {
  return fx.read(r, async (root) => {
    const out: string[] = [];
    const walk = async (abs: string, rel: string): Promise<void> => {
      for (const e of (await fs.readdir(abs, { withFileTypes: true })).sort((a, b) =>
        a.name.localeCompare(b.name),
      )) {
        const r2 = rel ? `${rel}/${e.name}` : e.name;
        out.push(e.isDirectory() ? `${r2}/` : r2);
        if (e.isDirectory()) await walk(path.join(abs, e.name), r2);
      }
    };
    await walk(path.join(root, dir), '');
    return out;
  });
}

const ctx = local('ctx');

test('copy with wildcards copies only the matches into the directory', async () => {
  const r = await solve(
    scratch().file(copy(ctx, '/*.txt', '/out/', { allowWildcard: true, createDestPath: true })),
  );
  assert.deepEqual(await tree(r), ['out/', 'out/a.txt', 'out/b.txt']);
  await r.release();
});

test('an empty wildcard is an error unless allowed', async () => {
  await assert.rejects(
    solve(scratch().file(copy(ctx, '/*.none', '/out/', { allowWildcard: true, createDestPath: true }))),
    /no source files match "\/\*\.none"/,
  );
  const r = await solve(
    scratch().file(
      mkdir('/keep', 0o755).copy(ctx, '/*.none', '/out/', {
        allowWildcard: true,
        allowEmptyWildcard: true,
        createDestPath: true,
      }),
    ),
  );
  assert.deepEqual(await tree(r), ['keep/']);
  await r.release();
});

test('directory copies: contents only, as a directory, and into an existing directory', async () => {
  const r = await solve(
    scratch().file(
      copy(ctx, '/sub', '/contents', { copyDirContentsOnly: true, createDestPath: true })
        .copy(ctx, '/sub', '/asdir', { createDestPath: true })
        .mkdir('/into', 0o755)
        .copy(ctx, '/sub', '/into'),
    ),
  );
  const t = await tree(r);
  assert.ok(t.includes('contents/d.txt') && t.includes('contents/deep/f.txt'), t.join(' '));
  assert.ok(t.includes('asdir/d.txt'), 'a missing destination becomes the directory');
  assert.ok(t.includes('into/sub/d.txt'), 'an existing directory receives the source directory');
  await r.release();
});

test('a missing destination parent is an error without createDestPath', async () => {
  await assert.rejects(
    solve(scratch().file(copy(ctx, '/a.txt', '/no/such/dir/a.txt'))),
    /destination directory "\/no\/such\/dir" does not exist/,
  );
});

test('owners by name resolve in the destination tree; modes and timestamps apply', async () => {
  const st = image('busybox').file(
    copy(ctx, '/a.txt', '/x/a.txt', {
      owner: 'nobody',
      mode: 0o600,
      createDestPath: true,
      timestamp: new Date(86_400_000),
    })
      .mkdir('/owned', 0o711, { owner: 'nobody:root' })
      .mkfile('/owned/f', 0o640, 'data', { owner: { user: 1234, group: 'nogroup' } }),
  );
  const r = await solve(st);
  const stats = await fx.read(r, async (d) =>
    Promise.all(['x/a.txt', 'owned', 'owned/f'].map((p) => fs.lstat(path.join(d, p)))),
  );
  const [a, owned, f] = stats as [import('node:fs').Stats, import('node:fs').Stats, import('node:fs').Stats];
  assert.deepEqual([a.uid, a.gid, a.mode & 0o7777, a.mtimeMs], [65534, 65534, 0o600, 86_400_000]);
  assert.deepEqual([owned.uid, owned.gid, owned.mode & 0o7777], [65534, 0, 0o711]);
  assert.deepEqual([f.uid, f.gid, f.mode & 0o7777], [1234, 65534, 0o640]);
  await assert.rejects(
    solve(image('busybox').file(mkdir('/y', 0o755, { owner: 'nosuchuser' }))),
    /nosuchuser/,
  );
  await r.release();
});

test('a copy keeps source modes, hard links and xattrs', async () => {
  const r = await solve(scratch().file(copy(ctx, '/', '/c', { createDestPath: true })));
  const [a, link, x] = await fx.read(
    r,
    async (d) =>
      [
        await fs.stat(`${d}/c/a.txt`),
        await fs.stat(`${d}/c/sub/a-link.txt`),
        native().lgetxattr(`${d}/c/b.txt`, 'user.kiln')?.toString(),
      ] as const,
  );
  assert.equal(a.mode & 0o7777, 0o751);
  assert.equal(a.ino, link.ino, 'hard link kept');
  assert.equal(x, 'xattr-value');
  await r.release();
});

test('copy include and exclude patterns, and followSymlink', async () => {
  const r = await solve(
    scratch().file(
      copy(ctx, '/', '/inc', {
        include: ['**/*.txt'],
        exclude: ['b.txt', 'sub/deep'],
        createDestPath: true,
      }).copy(ctx, '/sublink', '/followed', { followSymlinks: true }),
    ),
  );
  assert.deepEqual(await tree(r, '/inc'), ['a.txt', 'sub/', 'sub/a-link.txt', 'sub/d.txt']);
  const t = await tree(r);
  assert.ok(t.includes('followed/d.txt'), 'the symlink was followed');
  await r.release();
});

test('rm with wildcards and allowNotFound; mkdir with parents', async () => {
  const r = await solve(
    scratch().file(
      copy(ctx, '/', '/c', { createDestPath: true })
        .rm('/c/*.txt', { allowWildcard: true })
        .rm('/c/nothing', { allowNotFound: true })
        .mkdir('/p/q/r', 0o700, { parents: true }),
    ),
  );
  const t = await tree(r);
  assert.ok(!t.includes('c/a.txt') && !t.includes('c/b.txt') && t.includes('c/c.md'), t.join(' '));
  assert.ok(t.includes('p/q/r/'));
  await assert.rejects(solve(scratch().file(rm('/nothing'))), /rm "\/nothing": no such file or directory/);
  await r.release();
});

test('local source include and exclude patterns', async () => {
  const r1 = await solve(local('ctx', { exclude: ['*.md', 'sub/deep'] }));
  assert.deepEqual(await tree(r1), [
    'a.txt',
    'b.txt',
    'sub/',
    'sub/a-link.txt',
    'sub/d.txt',
    'sub/e.md',
    'sublink',
  ]);
  const r2 = await solve(local('ctx', { include: ['sub'], exclude: ['**/*.md'] }));
  assert.deepEqual(await tree(r2), ['sub/', 'sub/a-link.txt', 'sub/d.txt', 'sub/deep/', 'sub/deep/f.txt']);
  await Promise.all([r1.release(), r2.release()]);
});

test('diff holds only the changes; merge layers trees', async () => {
  const base = image('busybox');
  const changed = base.run({ shell: 'mkdir -p /new && echo hi > /new/file && echo x > /etc/added' }).root();
  const d = await solve(diff(base, changed));
  assert.deepEqual(await tree(d), ['etc/', 'etc/added', 'new/', 'new/file']);
  const m = await solve(
    merge([
      scratch().file(mkfile('/bottom', 0o644, 'b').mkfile('/over', 0o644, 'old')),
      scratch().file(mkfile('/over', 0o644, 'new')),
      diff(base, changed),
    ]),
  );
  assert.deepEqual(await tree(m), ['bottom', 'etc/', 'etc/added', 'new/', 'new/file', 'over']);
  assert.equal(await fx.read(m, (dir) => fs.readFile(`${dir}/over`, 'utf8')), 'new');
  // An input's deletions apply to what is below it (its layers are replayed, whiteouts included).
  const withBottom = base.file(mkfile('/bottom', 0o644, 'b'));
  const deleting = base.run({ shell: 'rm /etc/passwd && echo n > /new2' }).root();
  const m2 = await solve(merge([withBottom, deleting]));
  const t2 = await tree(m2);
  assert.ok(t2.includes('bottom') && t2.includes('new2') && t2.includes('bin/busybox'), t2.join(' '));
  assert.ok(!t2.includes('etc/passwd'), 'the deletion was replayed');
  assert.ok(t2.includes('etc/group'));
  await Promise.all([d.release(), m.release(), m2.release()]);
});
