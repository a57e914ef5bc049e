/**
 * Incremental local sources (src/ops/localsync.ts through the worker): after
 * adds, modifications, deletions, type changes, mode/owner/xattr changes
 * and hard-link changes the increment holds exactly the context (and what a
 * full copy holds), its own layer holds only the changes, an unchanged
 * context makes no snapshot, the chain is bounded, the native driver makes
 * full copies, a cancelled sync leaves no mount, snapshot or lease, and a
 * copy of the whole context takes its cache key from the source's checksum.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { tempMountRoot } from '../../src/core/mount/mount.ts';
import { native } from '../../src/core/native/index.ts';
import { copy, local, marshal, scratch } from '../../src/llb/index.ts';
import { checksumTree } from '../../src/ops/checksum.ts';
import {
  LABEL_LOCAL_CHECKSUM,
  LABEL_LOCAL_DEPTH,
  LABEL_LOCAL_KEY,
  MAX_LOCAL_DEPTH,
  syncTree,
} from '../../src/ops/localsync.ts';
import type { Result } from '../../src/solver/types.ts';
import type { Worker } from '../../src/worker/worker.ts';
import { type Fixture, makeFixture } from './fixture.ts';

let fx: Fixture;
let work: string;
before(async () => {
  fx = await makeFixture();
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-localsync-'));
});
after(async () => {
  await fx?.close();
  if (work) await fs.rm(work, { recursive: true, force: true });
});

/**
 * Everything a copy must keep, per path: type, mode, owner, mtime (except
 * the root's), size and content digest, link target, device number, user
 * xattrs, and hard-link groups (a later name of an inode names the first).
 */
async function signature(root: string): Promise<string[]> {
  const out: string[] = [];
  const inodes = new Map<string, string>();
  const visit = async (rel: string): Promise<void> => {
    const abs = rel === '' ? root : path.join(root, rel);
    const st = await fs.lstat(abs, { bigint: true });
    const xattrs = native()
      .llistxattr(abs)
      .filter((n) => n.startsWith('user.'))
      .sort()
      .map((n) => `${n}=${native().lgetxattr(abs, n)?.toString('hex')}`)
      .join(',');
    let line = `${rel || '.'} mode=${st.mode.toString(8)} owner=${st.uid}:${st.gid} x=[${xattrs}]`;
    if (rel !== '') line += ` mtime=${st.mtimeNs}`;
    if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      const first = inodes.get(key);
      if (first !== undefined) line += ` link=${first}`;
      else {
        inodes.set(key, rel);
        line += ` size=${st.size} sha=${createHash('sha256').update(readFileSync(abs)).digest('hex')}`;
      }
    } else if (st.isSymbolicLink()) line += ` target=${await fs.readlink(abs)}`;
    else if (st.isCharacterDevice() || st.isBlockDevice()) line += ` rdev=${st.rdev}`;
    out.push(line);
    if (st.isDirectory()) {
      for (const name of (await fs.readdir(abs)).sort()) await visit(rel === '' ? name : `${rel}/${name}`);
    }
  };
  await visit('');
  return out;
}

async function write(p: string, data: string): Promise<void> {
  await fs.mkdir(path.dirname(p), { recursive: true });
  await fs.writeFile(p, data);
}

async function solveLocal(w: Worker, name = 'ctx'): Promise<Result> {
  return w.solveDefinition(marshal(local(name)));
}

async function labelsOf(r: Result): Promise<{ parent?: string; labels: Record<string, string> }> {
  const info = await (await fx.core.snapshotter()).stat(r.id);
  return { ...(info.parent !== undefined ? { parent: info.parent } : {}), labels: info.labels };
}

async function localSnapshots(): Promise<string[]> {
  const names: string[] = [];
  await (await fx.core.snapshotter()).walk((i) => {
    if (i.labels[LABEL_LOCAL_KEY] !== undefined) names.push(i.name);
  });
  return names.sort();
}

test('an increment holds exactly the changed context, as a full copy does, and its own layer only the changes', async () => {
  const ctx = path.join(work, 'ctx1');
  for (let i = 0; i < 40; i++) await write(path.join(ctx, `bulk/d${i % 4}/f${i}.txt`), `bulk ${i}\n`);
  await write(path.join(ctx, 'a.txt'), 'hello\n');
  await write(path.join(ctx, 'sub/deep/x.txt'), 'x\n');
  await write(path.join(ctx, 'sub/y.txt'), 'y\n');
  await write(path.join(ctx, 'gone.txt'), 'gone\n');
  for (const n of ['1', '2', '3']) await write(path.join(ctx, `gonedir/in/${n}`), n);
  await write(path.join(ctx, 'f2d'), 'file then dir\n');
  await write(path.join(ctx, 'd2f/child'), 'dir then file\n');
  await write(path.join(ctx, 'd2l/child'), 'dir then link\n');
  await fs.symlink('a.txt', path.join(ctx, 'l2f'));
  await write(path.join(ctx, 'link1'), 'linked\n');
  await fs.link(path.join(ctx, 'link1'), path.join(ctx, 'link2'));
  await write(path.join(ctx, 'solo'), 'alone\n');
  await write(path.join(ctx, 'modme'), 'mode\n');
  await write(path.join(ctx, 'own'), 'owner\n');
  await write(path.join(ctx, 'xat'), 'xattr\n');
  await write(path.join(ctx, 'same-size.txt'), 'AAAA');
  await fs.utimes(path.join(ctx, 'same-size.txt'), 1_700_000_000.5, 1_700_000_000.5);
  native().mknod(path.join(ctx, 'fifo2'), 0o010644, 0, 0);

  const w = fx.worker({ locals: { ctx, ctx2: ctx } });
  const r1 = await solveLocal(w);
  assert.deepEqual(await fx.read(r1, signature), await signature(ctx));
  const l1 = await labelsOf(r1);
  assert.equal(l1.labels[LABEL_LOCAL_DEPTH], '0');
  assert.equal(l1.parent, undefined, 'the first sync is a full copy');

  // Adds, a same-size modification with a changed mtime, deletions, type changes, metadata, links.
  await write(path.join(ctx, 'new.txt'), 'new\n');
  await write(path.join(ctx, 'newdir/a/b.txt'), 'b\n');
  await fs.writeFile(path.join(ctx, 'same-size.txt'), 'BBBB');
  await fs.utimes(path.join(ctx, 'same-size.txt'), 1_700_000_001.25, 1_700_000_001.25);
  await fs.rm(path.join(ctx, 'gone.txt'));
  await fs.rm(path.join(ctx, 'gonedir'), { recursive: true });
  await fs.rm(path.join(ctx, 'f2d'));
  await write(path.join(ctx, 'f2d/now-a-dir'), 'inside\n');
  await fs.rm(path.join(ctx, 'd2f'), { recursive: true });
  await write(path.join(ctx, 'd2f'), 'now a file\n');
  await fs.rm(path.join(ctx, 'd2l'), { recursive: true });
  await fs.symlink('sub', path.join(ctx, 'd2l'));
  await fs.rm(path.join(ctx, 'l2f'));
  await write(path.join(ctx, 'l2f'), 'now a file\n');
  await fs.rm(path.join(ctx, 'link2'));
  await write(path.join(ctx, 'link2'), 'linked\n');
  await fs.link(path.join(ctx, 'solo'), path.join(ctx, 'solo-link'));
  await fs.chmod(path.join(ctx, 'modme'), 0o4755);
  await fs.chown(path.join(ctx, 'own'), 1000, 1001);
  native().lsetxattr(path.join(ctx, 'xat'), 'user.k', Buffer.from('v'), 0);
  await fs.chmod(path.join(ctx, 'sub'), 0o700);
  await fs.rm(path.join(ctx, 'sub/y.txt'));

  const r2 = await solveLocal(w);
  assert.notEqual(r2.id, r1.id);
  const want = await signature(ctx);
  assert.deepEqual(await fx.read(r2, signature), want);
  const l2 = await labelsOf(r2);
  assert.equal(l2.labels[LABEL_LOCAL_DEPTH], '1');
  assert.equal(l2.parent, r1.id, 'the increment sits on the previous snapshot');

  // The increment's own directory holds the changes only, not the 40 bulk files.
  const sn = await fx.core.snapshotter();
  const u1 = await sn.usage(r1.id);
  const u2 = await sn.usage(r2.id);
  assert.ok(u1.inodes > 60, `full copy has every entry (${u1.inodes})`);
  assert.ok(u2.inodes < 45, `increment holds only the changes (${u2.inodes} inodes)`);

  // A full copy of the same context (another local name: no base) is the same tree.
  const full = await solveLocal(w, 'ctx2');
  assert.equal((await labelsOf(full)).labels[LABEL_LOCAL_DEPTH], '0');
  assert.deepEqual(await fx.read(full, signature), want);

  // No change: a cache hit, no new snapshot.
  const before = await localSnapshots();
  const r3 = await solveLocal(w);
  assert.equal(r3.id, r2.id);
  assert.deepEqual(await localSnapshots(), before);
  await Promise.all([r1, r2, r3, full].map((r) => r.release()));
});

test('a file rewritten with the same size and whole-second mtime is compared by content', async () => {
  const src = path.join(work, 'coarse-src');
  const dst = path.join(work, 'coarse-dst');
  await write(path.join(src, 'f'), 'AAAA');
  await fs.utimes(path.join(src, 'f'), 1_700_000_000, 1_700_000_000);
  await fs.mkdir(dst);
  const tree = { dir: src, filter: () => true, descend: () => true };
  assert.deepEqual(await syncTree(tree, dst), {
    copied: 1,
    removed: 0,
    dirsUpdated: 0,
    unchanged: 0,
    hardlinked: 0,
  });
  assert.equal((await syncTree(tree, dst)).unchanged, 1);
  await fs.writeFile(path.join(src, 'f'), 'BBBB');
  await fs.utimes(path.join(src, 'f'), 1_700_000_000, 1_700_000_000);
  const s = await syncTree(tree, dst);
  assert.equal(s.copied, 1);
  assert.equal(await fs.readFile(path.join(dst, 'f'), 'utf8'), 'BBBB');
  // With a sub-second mtime, size + mtime are trusted (as rsync): nothing is read.
  await fs.utimes(path.join(src, 'f'), 1_700_000_000.5, 1_700_000_000.5);
  assert.equal((await syncTree(tree, dst)).copied, 1);
  assert.equal((await syncTree(tree, dst)).unchanged, 1);
});

test('filters: entries leaving the selection are removed, a directory kept only for what is below it goes with it', async () => {
  const src = path.join(work, 'filter-src');
  const dst = path.join(work, 'filter-dst');
  await write(path.join(src, 'keep/a.txt'), 'a');
  await write(path.join(src, 'keep/b.md'), 'b');
  await write(path.join(src, 'top.md'), 't');
  await fs.mkdir(dst);
  let pattern = /\.(txt|md)$/;
  const tree = {
    dir: src,
    filter: (rel: string, isDir: boolean) => !isDir && pattern.test(rel),
    descend: () => true,
  };
  await syncTree(tree, dst);
  assert.deepEqual((await fs.readdir(dst, { recursive: true })).sort(), [
    'keep',
    'keep/a.txt',
    'keep/b.md',
    'top.md',
  ]);
  pattern = /\.md$/;
  await syncTree(tree, dst);
  assert.deepEqual((await fs.readdir(dst, { recursive: true })).sort(), ['keep', 'keep/b.md', 'top.md']);
  pattern = /^top\.md$/;
  await syncTree(tree, dst);
  assert.deepEqual(await fs.readdir(dst, { recursive: true }), ['top.md']);
});

test(`the chain is bounded: after ${MAX_LOCAL_DEPTH} increments the next sync is a full copy`, async () => {
  const ctx = path.join(work, 'chain');
  await write(path.join(ctx, 'base.txt'), 'base\n');
  const w = fx.worker({ locals: { chain: ctx } });
  const depths: string[] = [];
  const results: Result[] = [];
  for (let i = 0; i <= MAX_LOCAL_DEPTH + 1; i++) {
    await write(path.join(ctx, 'counter.txt'), `${i}\n`);
    const r = await solveLocal(w, 'chain');
    results.push(r);
    const l = await labelsOf(r);
    depths.push(l.labels[LABEL_LOCAL_DEPTH]!);
    assert.equal(await fx.read(r, (d) => fs.readFile(path.join(d, 'counter.txt'), 'utf8')), `${i}\n`);
    if (l.labels[LABEL_LOCAL_DEPTH] === '0') assert.equal(l.parent, undefined);
    else assert.equal(l.parent, results[i - 1]!.id);
  }
  const want = Array.from({ length: MAX_LOCAL_DEPTH + 1 }, (_, i) => String(i));
  assert.deepEqual(depths, [...want, '0']);
  await Promise.all(results.map((r) => r.release()));
});

test('the native driver makes a full copy every time', async () => {
  const nfx = await makeFixture({ snapshotter: 'native' });
  try {
    const ctx = path.join(work, 'native');
    await write(path.join(ctx, 'f.txt'), 'one\n');
    const w = nfx.worker({ locals: { ctx } });
    const r1 = await solveLocal(w);
    await write(path.join(ctx, 'f.txt'), 'two\n');
    await write(path.join(ctx, 'g.txt'), 'g\n');
    const r2 = await solveLocal(w);
    const info = await (await nfx.core.snapshotter()).stat(r2.id);
    assert.equal(info.parent, undefined);
    assert.equal(info.labels[LABEL_LOCAL_DEPTH], '0');
    assert.deepEqual(await nfx.read(r2, signature), await signature(ctx));
    await Promise.all([r1.release(), r2.release()]);
  } finally {
    await nfx.close();
  }
});

test('a sync cancelled midway leaves no mount, active snapshot or lease', async () => {
  const ctx = path.join(work, 'cancel');
  for (let i = 0; i < 300; i++) await write(path.join(ctx, `d${i % 10}/f${i}`), `${i}\n`);
  const w = fx.worker({ locals: { cancel: ctx } });
  const base = await solveLocal(w, 'cancel');
  await write(path.join(ctx, 'changed'), 'x\n');
  const edge = w.loadDefinition(marshal(local('cancel')))!;
  const op = w.resolveOp(edge.vertex);
  // Aborts after the sync has checked the signal 50 times: deterministically mid-way.
  const ac = new AbortController();
  let checks = 0;
  const signal = new Proxy(ac.signal, {
    get(target, prop) {
      if (prop === 'throwIfAborted')
        return () => {
          if (++checks === 50) ac.abort(new Error('cancelled by the test'));
          target.throwIfAborted();
        };
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  const leasesBefore = fx.core.leases.list().length;
  await assert.rejects(
    op.exec({ vertex: edge.vertex, signal, progress: { log() {}, status() {} } }, []),
    /cancelled by the test/,
  );
  assert.ok(checks >= 50, 'the sync was under way when cancelled');
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8');
  assert.ok(
    !mountinfo.includes(`${tempMountRoot()}/m-${process.pid}-`),
    'no temporary mount of this process is left',
  );
  const actives: string[] = [];
  await (await fx.core.snapshotter()).walk((i) => {
    if (i.kind !== 'committed') actives.push(i.name);
  });
  assert.deepEqual(actives, []);
  assert.equal(fx.core.leases.list().length, leasesBefore);
  // And the next sync still works from the same base.
  const r = await solveLocal(w, 'cancel');
  assert.equal((await labelsOf(r)).parent, base.id);
  assert.equal(await fx.read(r, (d) => fs.readFile(path.join(d, 'changed'), 'utf8')), 'x\n');
  await Promise.all([base.release(), r.release()]);
});

test('a copy of the whole context keys on the checksum the source computed, without re-reading the snapshot', async () => {
  const ctx = path.join(work, 'copykey');
  await write(path.join(ctx, 'a.txt'), 'one\n');
  await write(path.join(ctx, 'dir/b.txt'), 'b\n');
  const w = fx.worker({ locals: { ck: ctx } });
  // Any whole-tree re-read of a result would go through forResult: forbid it.
  const checksums = w.env.checksums as unknown as { forResult: (...a: unknown[]) => Promise<string> };
  const original = checksums.forResult.bind(checksums);
  let reads = 0;
  checksums.forResult = (...a: unknown[]) => {
    reads++;
    return original(...a);
  };
  const def = () => marshal(scratch().file(copy(local('ck'), '/', '/app')));
  const c1 = await w.solveDefinition(def());
  const src = await solveLocal(w, 'ck');
  assert.equal(
    (await labelsOf(src)).labels[LABEL_LOCAL_CHECKSUM],
    await checksumTree(ctx, '/', {}),
    'the label is the checksum of the context',
  );
  assert.equal(await fx.read(c1, (d) => fs.readFile(path.join(d, 'app/a.txt'), 'utf8')), 'one\n');
  const again = await w.solveDefinition(def());
  assert.equal(again.id, c1.id, 'unchanged: the copy is a cache hit');
  await write(path.join(ctx, 'a.txt'), 'two\n');
  const c2 = await w.solveDefinition(def());
  assert.notEqual(c2.id, c1.id, 'changed: the copy runs again');
  assert.equal(await fx.read(c2, (d) => fs.readFile(path.join(d, 'app/a.txt'), 'utf8')), 'two\n');
  assert.equal(reads, 0, 'no snapshot was checksummed by reading it');
  // A copy of a part of the context still checksums just that part.
  const part = await w.solveDefinition(marshal(scratch().file(copy(local('ck'), '/dir', '/d'))));
  assert.equal(reads, 1);
  await Promise.all([c1, src, again, c2, part].map((r) => r.release()));
});
