/**
 * Copy by hard link (src/ops/copylink.ts) on real overlay snapshots through
 * the worker: a COPY from the committed context links the context's inodes
 * into the new layer, and the tree it gives equals the tree a copy gives
 * (names, types, modes, owners, times, bytes, symlink targets, xattrs, hard
 * link groups), including over a lower directory (copied up) and over a
 * lower file (its whiteout replaced). What must not be linked is copied:
 * a changed owner, an inode another snapshot already holds (a second COPY
 * of the same file, a hard-linked file), a layer of the destination's own
 * chain, a copy whose tree a later action of the same op reads, a context
 * with hard links of its own. After a linked COPY the next sync of the
 * context still copies only what changed.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import type { Stats } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { snapshotOwnDir } from '../../src/core/mount/mount.ts';
import { native } from '../../src/core/native/index.ts';
import { copy, local, marshal, merge, mkdir, scratch, type State } from '../../src/llb/index.ts';
import { makeLinker } from '../../src/ops/copylink.ts';
import { copyEntry } from '../../src/ops/fsutil.ts';
import { OpSession, snapshotOf } from '../../src/ops/refs.ts';
import type { Result } from '../../src/solver/types.ts';
import type { Worker } from '../../src/worker/worker.ts';
import { type Fixture, makeFixture } from './fixture.ts';

let fx: Fixture;
let ctxDir: string;
let linkedDir: string;
let w: Worker;

before(async () => {
  fx = await makeFixture({ snapshotter: 'overlayfs' });
  ctxDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-linkctx-'));
  const f = (rel: string, data: string | Buffer, mode = 0o644) =>
    fs.writeFile(path.join(ctxDir, rel), data, { mode }).then(() => fs.chmod(path.join(ctxDir, rel), mode));
  await fs.mkdir(`${ctxDir}/sub/deeper`, { recursive: true });
  await f('top.txt', 'top\n');
  await f('replace.txt', 'from the context\n');
  await f('run.sh', '#!/bin/sh\necho hi\n', 0o755);
  await f('empty', '');
  await f('sub/a.txt', 'a\n', 0o600);
  await f('sub/deeper/big.bin', Buffer.alloc(3 << 20, 7));
  await fs.symlink('../top.txt', `${ctxDir}/sub/sym`);
  // A second context, with a hard link group of its own.
  linkedDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-linkctx2-'));
  await fs.mkdir(`${linkedDir}/w`);
  await fs.writeFile(`${linkedDir}/w/p1`, 'pair\n');
  await fs.link(`${linkedDir}/w/p1`, `${linkedDir}/w/p2`);
  await fs.writeFile(`${linkedDir}/single`, 'single\n');
  execFileSync('setfattr', ['-n', 'user.kiln', '-v', 'yes', `${ctxDir}/top.txt`]);
  await fs.chown(`${ctxDir}/sub/deeper/big.bin`, 1234, 5678);
  await fs.utimes(`${ctxDir}/run.sh`, new Date('2001-02-03T04:05:06Z'), new Date('2001-02-03T04:05:06Z'));
  w = fx.worker({ locals: { ctx: ctxDir, linked: linkedDir } });
});
after(async () => {
  await fx?.close();
  if (ctxDir) await fs.rm(ctxDir, { recursive: true, force: true });
  if (linkedDir) await fs.rm(linkedDir, { recursive: true, force: true });
});

const ctx = local('ctx');
const solve = (st: State): Promise<Result> => w.solveDefinition(marshal(st));
// A base whose /app and /app/replace.txt exist only in the lower layers.
const base = scratch().file(
  mkdir('/app', 0o711).mkfile('/app/replace.txt', 0o600, 'from the base\n').mkdir('/app/kept', 0o755),
);

interface Entry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
  size: number;
  ino: number;
  body?: string;
  target?: string;
  xattrs?: string;
}

async function snapshotTree(dir: string, skip: string[] = []): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await fs.readdir(path.join(dir, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      if (skip.includes(r)) continue;
      const abs = path.join(dir, r);
      const st: Stats = await fs.lstat(abs);
      const type = st.isDirectory()
        ? 'dir'
        : st.isSymbolicLink()
          ? 'symlink'
          : st.isFile()
            ? 'file'
            : 'other';
      const e: Entry = {
        type,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtimeMs: type === 'dir' ? 0 : st.mtimeMs,
        size: type === 'dir' ? 0 : st.size,
        ino: st.ino,
      };
      if (type === 'file') e.body = (await fs.readFile(abs)).toString('base64');
      if (type === 'symlink') e.target = await fs.readlink(abs);
      if (type !== 'symlink') {
        const names = native().llistxattr(abs).sort();
        e.xattrs = names.map((n) => `${n}=${native().lgetxattr(abs, n)?.toString('hex')}`).join(',');
      }
      out.set(r, e);
      if (type === 'dir') await walk(r);
    }
  };
  await walk('');
  return out;
}

/** The tree without inode numbers, with hard link groups as sorted name lists. */
function comparable(tree: Map<string, Entry>): {
  entries: Record<string, Omit<Entry, 'ino'>>;
  groups: string[][];
} {
  const entries: Record<string, Omit<Entry, 'ino'>> = {};
  const byIno = new Map<number, string[]>();
  for (const [name, e] of tree) {
    const { ino, ...rest } = e;
    entries[name] = rest;
    if (e.type === 'file') byIno.set(ino, [...(byIno.get(ino) ?? []), name]);
  }
  const groups = [...byIno.values()].filter((g) => g.length > 1).map((g) => g.sort());
  return { entries, groups: groups.sort() };
}

test('a COPY of the committed context links its inodes and gives the tree a copy gives', async () => {
  const linked = await solve(base.file(copy(ctx, '/', '/app', { copyDirContentsOnly: true })));
  // The same copy, followed by an action that reads its tree: copied, not linked.
  const copied = await solve(
    base.file(copy(ctx, '/', '/app', { copyDirContentsOnly: true }).mkdir('/zz', 0o755)),
  );
  const context = await solve(ctx);
  const ctxTree = await fx.read(context, (d) => snapshotTree(d));
  const a = await fx.read(linked, (d) => snapshotTree(d));
  const b = await fx.read(copied, (d) => snapshotTree(d, ['zz']));
  assert.deepEqual(comparable(a), comparable(b));
  assert.equal(a.get('app/replace.txt')?.body, Buffer.from('from the context\n').toString('base64'));
  assert.equal(a.get('app/kept')?.type, 'dir', 'the lower directory kept its other entries');
  assert.equal(a.get('app')?.mode, 0o711, 'the copied-up directory kept its mode');
  for (const rel of ['top.txt', 'sub/a.txt', 'sub/deeper/big.bin', 'run.sh', 'replace.txt', 'empty']) {
    assert.equal(a.get(`app/${rel}`)?.ino, ctxTree.get(rel)?.ino, `${rel} is the context's inode`);
    assert.notEqual(b.get(`app/${rel}`)?.ino, ctxTree.get(rel)?.ino, `${rel} was copied in the second build`);
  }
  await Promise.all([linked.release(), copied.release(), context.release()]);
});

test('a changed owner, and a context with hard links of its own, get copies', async () => {
  const o = await solve(scratch().file(copy(ctx, '/top.txt', '/t.txt', { owner: '42:43' })));
  const l = await solve(
    scratch().file(copy(local('linked'), '/', '/l', { copyDirContentsOnly: true, createDestPath: true })),
  );
  const context = await solve(ctx);
  const linkedCtx = await solve(local('linked'));
  const ctxTree = await fx.read(context, (d) => snapshotTree(d));
  const lTree = await fx.read(linkedCtx, (d) => snapshotTree(d));
  const t = await fx.read(o, (d) => snapshotTree(d));
  const g = await fx.read(l, (d) => snapshotTree(d));
  assert.deepEqual([t.get('t.txt')?.uid, t.get('t.txt')?.gid], [42, 43]);
  assert.notEqual(t.get('t.txt')?.ino, ctxTree.get('top.txt')?.ino);
  assert.equal(g.get('l/w/p1')?.ino, g.get('l/w/p2')?.ino, 'the group is still one inode');
  assert.notEqual(g.get('l/w/p1')?.ino, lTree.get('w/p1')?.ino, 'copied, not linked');
  assert.notEqual(g.get('l/single')?.ino, lTree.get('single')?.ino, 'copied, not linked');
  await Promise.all([o.release(), l.release(), context.release(), linkedCtx.release()]);
});

test('the linker links only inodes no other snapshot holds, outside the destination chain', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-linker-'));
  try {
    await fs.mkdir(`${dir}/src/one`, { recursive: true });
    await fs.mkdir(`${dir}/dst`);
    await fs.writeFile(`${dir}/src/one/x`, 'x\n');
    await fs.writeFile(`${dir}/src/one/g1`, 'g\n');
    await fs.link(`${dir}/src/one/g1`, `${dir}/src/one/g2`);
    await fs.writeFile(`${dir}/src/y`, 'y\n');
    // The source tree is its own only layer; the destination is its own upper directory.
    const link = makeLinker(`${dir}/src`, [`${dir}/src`], `${dir}/dst`, `${dir}/dst`, []);
    assert.ok(link, 'linking is on (overlayfs metacopy is off here)');
    await copyEntry(`${dir}/src/one`, `${dir}/dst/one`, { links: new Map(), linkFile: link });
    // A second copy of x: its inode is now held twice, so this one is a copy.
    await copyEntry(`${dir}/src/one/x`, `${dir}/dst/x2`, { links: new Map(), linkFile: link });
    // A source layer that is one of the destination's lower layers: a copy.
    const inChain = makeLinker(`${dir}/src`, [`${dir}/src`], `${dir}/dst`, `${dir}/dst`, [`${dir}/src`]);
    await copyEntry(`${dir}/src/y`, `${dir}/dst/y`, { links: new Map(), linkFile: inChain });
    const st = async (p: string) => fs.lstat(`${dir}/${p}`);
    assert.equal((await st('dst/one/x')).ino, (await st('src/one/x')).ino, 'x is linked');
    assert.notEqual((await st('dst/x2')).ino, (await st('src/one/x')).ino, 'the second copy of x is a copy');
    assert.notEqual(
      (await st('dst/one/g1')).ino,
      (await st('src/one/g1')).ino,
      'a hard-linked file is copied',
    );
    assert.equal((await st('dst/one/g1')).ino, (await st('dst/one/g2')).ino, 'and its group is kept');
    assert.notEqual((await st('dst/y')).ino, (await st('src/y')).ino, 'a layer of the chain is not linked');
    assert.equal(await fs.readFile(`${dir}/dst/x2`, 'utf8'), 'x\n');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('after a linked COPY, the next sync of the context copies only what changed', async () => {
  const first = await solve(ctx);
  const r = await solve(
    scratch().file(copy(ctx, '/', '/app', { copyDirContentsOnly: true, createDestPath: true })),
  );
  await fs.writeFile(`${ctxDir}/sub/deeper/changed.txt`, 'new\n');
  try {
    const second = await solve(ctx);
    assert.notEqual(snapshotOf(second), snapshotOf(first));
    const own = await (async () => {
      const s = await OpSession.open(fx.core, 'test own dir');
      try {
        const dir = snapshotOwnDir(await s.view(snapshotOf(second)));
        assert.ok(dir, 'the increment has a directory of its own');
        const names: string[] = [];
        const walk = async (rel: string): Promise<void> => {
          for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
            const p = rel ? `${rel}/${e.name}` : e.name;
            if (e.isDirectory()) await walk(p);
            else names.push(p);
          }
        };
        await walk('');
        return names.sort();
      } finally {
        await s.close();
      }
    })();
    assert.deepEqual(own, ['sub/deeper/changed.txt'], 'only the new file was written');
    await second.release();
  } finally {
    await fs.rm(`${ctxDir}/sub/deeper/changed.txt`);
    await Promise.all([first.release(), r.release()]);
  }
});

test("a rebuild's COPY links the unchanged files the previous COPY layer also holds", async () => {
  const copyCtx = (): State =>
    base.file(copy(ctx, '/', '/app', { copyDirContentsOnly: true, allowEmptyWildcard: true }));
  const first = await solve(copyCtx());
  const firstTree = await fx.read(first, (d) => snapshotTree(d));
  await fs.writeFile(`${ctxDir}/added.txt`, 'added\n');
  try {
    const second = await solve(copyCtx());
    const context = await solve(ctx);
    const ctxTree = await fx.read(context, (d) => snapshotTree(d));
    const tree = await fx.read(second, (d) => snapshotTree(d));
    for (const rel of ['top.txt', 'sub/a.txt', 'sub/deeper/big.bin', 'run.sh', 'added.txt']) {
      assert.equal(tree.get(`app/${rel}`)?.ino, ctxTree.get(rel)?.ino, `${rel} is the context's inode`);
    }
    assert.equal(tree.get('app/top.txt')?.ino, firstTree.get('app/top.txt')?.ino, 'shared with the first');
    // The same tree a copy gives.
    const copied = await solve(
      base.file(copy(ctx, '/', '/app', { copyDirContentsOnly: true }).mkdir('/zz', 0o755)),
    );
    const b = await fx.read(copied, (d) => snapshotTree(d, ['zz']));
    assert.deepEqual(comparable(tree), comparable(b));
    await Promise.all([second.release(), context.release(), copied.release()]);
  } finally {
    await fs.rm(`${ctxDir}/added.txt`);
    await first.release();
  }
});

test("after a COPY of one context path, a rebuild's COPY of other paths into that chain links; the same path is copied", async () => {
  // A lockfile first, then the sources (the common Dockerfile shape), then a file the chain holds.
  const build = (): State =>
    base
      .file(copy(ctx, '/top.txt', '/lock/top.txt', { createDestPath: true }))
      .file(copy(ctx, '/sub', '/src', { copyDirContentsOnly: true, createDestPath: true }))
      .file(copy(ctx, '/sub/a.txt', '/again/a.txt', { createDestPath: true }));
  const first = await solve(build());
  // A change below /sub only: the lockfile COPY is a cache hit, the other two run again.
  await fs.writeFile(`${ctxDir}/sub/new.txt`, 'new\n');
  try {
    const second = await solve(build());
    const context = await solve(ctx);
    const ctxTree = await fx.read(context, (d) => snapshotTree(d));
    const firstTree = await fx.read(first, (d) => snapshotTree(d));
    const tree = await fx.read(second, (d) => snapshotTree(d));
    for (const rel of ['a.txt', 'deeper/big.bin', 'new.txt']) {
      assert.equal(
        tree.get(`src/${rel}`)?.ino,
        ctxTree.get(`sub/${rel}`)?.ino,
        `src/${rel} is the context's inode`,
      );
    }
    assert.equal(tree.get('src/a.txt')?.ino, firstTree.get('src/a.txt')?.ino, 'shared with the first build');
    assert.equal(tree.get('lock/top.txt')?.ino, ctxTree.get('top.txt')?.ino);
    // A context path the chain already holds is copied: no inode twice in one chain.
    assert.notEqual(tree.get('again/a.txt')?.ino, tree.get('src/a.txt')?.ino);
    assert.equal(tree.get('again/a.txt')?.body, Buffer.from('a\n').toString('base64'));
    assert.deepEqual(comparable(tree).groups, []);
    assert.deepEqual(comparable(firstTree).groups, []);
    await Promise.all([second.release(), context.release()]);
  } finally {
    await fs.rm(`${ctxDir}/sub/new.txt`);
    await first.release();
  }
});

test('a second COPY of the context into the same chain, or merged into it, gets copies', async () => {
  const cp = (st: State, dest: string): State =>
    st.file(copy(ctx, '/', dest, { copyDirContentsOnly: true, createDestPath: true }));
  // Two COPYs stacked: the second's chain holds the context's inodes (the first's label).
  const stacked = await solve(cp(cp(scratch(), '/a'), '/b'));
  // Each COPY on its own (both may link), then merged: the second is applied as a copy.
  const merged = await solve(merge([cp(scratch(), '/a'), cp(scratch(), '/b')]));
  // On top of an image-like chain made by merging a linked layer onto a base.
  const onMerged = await solve(cp(merge([base, cp(scratch(), '/a')]), '/b'));
  for (const [name, r] of [
    ['stacked', stacked],
    ['merged', merged],
    ['copy onto a merge', onMerged],
  ] as const) {
    const t = await fx.read(r, (d) => snapshotTree(d));
    const groups = comparable(t).groups;
    assert.deepEqual(groups, [], `${name}: no file shares an inode with another`);
    assert.equal(t.get('b/top.txt')?.body, Buffer.from('top\n').toString('base64'), name);
    assert.notEqual(t.get('a/top.txt')?.ino, t.get('b/top.txt')?.ino, name);
  }
  await Promise.all([stacked.release(), merged.release(), onMerged.release()]);
});
