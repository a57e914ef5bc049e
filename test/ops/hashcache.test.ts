/**
 * The persistent file hash cache of local sources: stamps, one entry per
 * path, the file rewritten only when an entry changed, corrupt or old files replaced;
 * and through the worker, an unchanged local context re-solved from the
 * cache without rewriting the file or copying anything.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { sha256 } from '../../src/core/digest.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { unmountAll } from '../../src/core/mount/mount.ts';
import { copy, local, marshal, scratch } from '../../src/llb/index.ts';
import { checksumTree, type FileStamp } from '../../src/ops/checksum.ts';
import {
  hashCacheFile,
  hashCacheFor,
  MAX_CACHE_FILES,
  PersistentHashCache,
} from '../../src/ops/hashcache.ts';
import { OpSession, snapshotOf } from '../../src/ops/refs.ts';
import type { ProgressEvent } from '../../src/solver/progress.ts';
import { Worker } from '../../src/worker/worker.ts';

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-hashcache-'));
});
after(async () => {
  await unmountAll(dir).catch(() => {});
  await fs.rm(dir, { recursive: true, force: true });
});

const H1 = 'a'.repeat(64);
const H2 = 'b'.repeat(64);

function stamp(size: number, mtimeNsec: number, ctimeNsec: number, ino: number): FileStamp {
  return { size, mtimeSec: 1_700_000_000, mtimeNsec, ctimeSec: 1_700_000_000, ctimeNsec, ino };
}

test('a lookup hits only with the recorded stamp; a new stamp replaces the entry', async () => {
  const c = new PersistentHashCache(path.join(dir, 'stamps.bin'));
  await c.load();
  assert.equal(c.get('/ctx/a', stamp(3, 5, 5, 42)), undefined);
  c.set('/ctx/a', stamp(3, 5, 5, 42), H1);
  assert.equal(c.get('/ctx/a', stamp(3, 5, 5, 42)), H1);
  assert.equal(c.get('/ctx/a', stamp(4, 5, 5, 42)), undefined, 'size differs');
  assert.equal(c.get('/ctx/a', stamp(3, 6, 5, 42)), undefined, 'mtime differs by a nanosecond');
  assert.equal(c.get('/ctx/a', stamp(3, 5, 6, 42)), undefined, 'ctime differs');
  assert.equal(c.get('/ctx/a', stamp(3, 5, 5, 43)), undefined, 'inode differs');
  assert.equal(c.get('/ctx/a', { ...stamp(3, 5, 5, 42), mtimeSec: 1 }), undefined, 'mtime seconds differ');
  assert.equal(c.get('/ctx/b', stamp(3, 5, 5, 42)), undefined, 'another path');
  const reused = stamp(4, 9, 9, 42);
  c.set('/ctx/a', reused, H2);
  reused.size = 99; // the walk reuses its stamp object: the cache copied the fields
  assert.equal(c.size, 1, 'one entry per path');
  assert.equal(c.get('/ctx/a', stamp(4, 9, 9, 42)), H2);
  assert.equal(c.get('/ctx/a', stamp(3, 5, 5, 42)), undefined, 'the old version is gone');
  assert.throws(() => c.set('/ctx/c', stamp(1, 1, 1, 1), 'abc'), /not a hex sha256/);
});

test('save writes only when an entry changed; a reload sees the entries', async () => {
  const file = path.join(dir, 'save', 'local-checksums.bin');
  const c = new PersistentHashCache(file);
  await c.load();
  await c.save();
  assert.equal(c.writes, 0, 'nothing to write');
  await assert.rejects(fs.stat(file), /ENOENT/);
  // Many entries (the stamp block grows), multi-byte paths.
  for (let i = 0; i < 1000; i++) c.set(`/x/fichier-é-${i}`, stamp(i, i, i + 1, 1000 + i), H1);
  await c.save();
  assert.equal(c.writes, 1);
  const st1 = await fs.stat(file, { bigint: true });

  const d = new PersistentHashCache(file);
  await d.load();
  assert.equal(d.size, 1000);
  for (let i = 0; i < 1000; i += 37)
    assert.equal(d.get(`/x/fichier-é-${i}`, stamp(i, i, i + 1, 1000 + i)), H1);
  assert.equal(d.get('/x/fichier-é-5', stamp(5, 5, 5, 1005)), undefined);
  await d.save();
  assert.equal(d.writes, 0, 'lookups alone do not rewrite the file');
  const st2 = await fs.stat(file, { bigint: true });
  assert.equal(st2.ino, st1.ino);
  assert.equal(st2.mtimeNs, st1.mtimeNs);
  d.set('/x/fichier-é-3', stamp(3, 3, 4, 1003), H2);
  await d.save();
  assert.equal(d.writes, 1);
  assert.notEqual((await fs.stat(file, { bigint: true })).ino, st1.ino, 'replaced by rename');
  const e = new PersistentHashCache(file);
  await e.load();
  assert.equal(e.size, 1000);
  assert.equal(e.get('/x/fichier-é-3', stamp(3, 3, 4, 1003)), H2);
});

test('lookups in any order after a reload: in saved order, out of order, new paths in between', async () => {
  const file = path.join(dir, 'order.bin');
  const c = new PersistentHashCache(file);
  const names = Array.from({ length: 50 }, (_, i) => `/o/f${String(i).padStart(2, '0')}`);
  for (const [i, n] of names.entries()) c.set(n, stamp(i, 1, 1, i), `${i % 10}`.repeat(64));
  await c.save();
  const d = new PersistentHashCache(file);
  await d.load();
  // Saved order first (the cursor), then shuffled (the index), then a miss and a new entry mid-way.
  for (const [i, n] of names.entries()) assert.equal(d.get(n, stamp(i, 1, 1, i)), `${i % 10}`.repeat(64), n);
  for (const [i, n] of names.entries()) assert.equal(d.get(n, stamp(i, 1, 1, i)), `${i % 10}`.repeat(64), n);
  assert.equal(d.indexBuilds, 0, 'walks in saved order need no path index');
  for (const i of [49, 0, 25, 24, 26, 3])
    assert.equal(d.get(names[i]!, stamp(i, 1, 1, i)), `${i % 10}`.repeat(64));
  assert.equal(d.indexBuilds, 1, 'out of order: the index is built once');
  assert.equal(d.get('/o/f10a', stamp(1, 1, 1, 1)), undefined);
  d.set('/o/f10a', stamp(1, 1, 1, 1), H2);
  d.set(names[30]!, stamp(30, 2, 2, 30), H1);
  await d.save();
  const e = new PersistentHashCache(file);
  await e.load();
  assert.equal(e.size, 51);
  for (const [i, n] of names.entries()) {
    const want = i === 30 ? H1 : `${i % 10}`.repeat(64);
    assert.equal(e.get(n, i === 30 ? stamp(30, 2, 2, 30) : stamp(i, 1, 1, i)), want, n);
  }
  assert.equal(e.get('/o/f10a', stamp(1, 1, 1, 1)), H2);
  assert.equal(e.get(names[30]!, stamp(30, 1, 1, 30)), undefined, 'the replaced stamp misses');
});

test('a corrupt, truncated or foreign file is ignored and replaced at the next save', async () => {
  const good = new PersistentHashCache(path.join(dir, 'good.bin'));
  good.set('/x', stamp(1, 2, 3, 4), H1);
  await good.save();
  const bytes = await fs.readFile(good.file);
  const flipped = Buffer.from(bytes);
  flipped[20] = flipped[20]! ^ 1; // a stamp bit: the CRC catches it
  const cases: [string, Buffer][] = [
    ['flipped.bin', flipped],
    ['truncated.bin', bytes.subarray(0, bytes.length - 3)],
    ['json.bin', Buffer.from(JSON.stringify({ v: 2, files: { '/x': `1\u00002\u00003\u00004\u0000${H1}` } }))],
    ['empty.bin', Buffer.alloc(0)],
  ];
  for (const [name, data] of cases) {
    const sub = path.join(dir, `bad-${name}`);
    await fs.mkdir(sub);
    const file = path.join(sub, 'local-checksums.bin');
    await fs.writeFile(file, data);
    const c = new PersistentHashCache(file);
    await c.load();
    assert.equal(c.size, 0, name);
    assert.equal(c.get('/x', stamp(1, 2, 3, 4)), undefined, name);
    await c.save();
    assert.equal(c.writes, 1, `${name}: rewritten`);
    const again = new PersistentHashCache(file);
    await again.load();
    assert.equal(again.size, 0, name);
  }
  const reread = new PersistentHashCache(good.file);
  await reread.load();
  assert.equal(reread.get('/x', stamp(1, 2, 3, 4)), H1, 'the intact file still loads');
});

test('with checksumTree: unchanged files are not re-read, a changed file replaces its entry', async () => {
  const tree = path.join(dir, 'tree');
  await fs.mkdir(path.join(tree, 'sub'), { recursive: true });
  for (let i = 0; i < 10; i++) await fs.writeFile(path.join(tree, 'sub', `f${i}`), `content ${i}`);
  const c = new PersistentHashCache(path.join(dir, 'tree.bin'));
  await c.load();
  const first = await checksumTree(tree, '/', { cache: c });
  await c.save();
  assert.equal(c.size, 10);
  assert.equal(c.writes, 1);
  assert.equal(await checksumTree(tree, '/', { cache: c }), first);
  await c.save();
  assert.equal(c.writes, 1, 'an unchanged tree does not rewrite the cache');
  await fs.writeFile(path.join(tree, 'sub', 'f3'), 'changed');
  const second = await checksumTree(tree, '/', { cache: c });
  assert.notEqual(second, first);
  await c.save();
  assert.equal(c.writes, 2);
  assert.equal(c.size, 10, 'the changed file replaced its entry');
  // The saved file gives the same checksum in a new process (a reloaded cache).
  const fresh = new PersistentHashCache(path.join(dir, 'tree.bin'));
  await fresh.load();
  assert.equal(await checksumTree(tree, '/', { cache: fresh }), second);
});

test('checksumTree of a tree larger than one hash piece is the digest of its documented lines', async () => {
  // More than 64 KiB of lines (the walk hashes in pieces) and multi-byte names.
  const tree = path.join(dir, 'big');
  await fs.mkdir(tree);
  await fs.chmod(tree, 0o755);
  const lines = ['select "/" 1', 'path "/"', `dir "" 40755 0:0`];
  const names = Array.from({ length: 1500 }, (_, i) => `fichier-é-${String(i).padStart(4, '0')}.txt`).sort();
  for (const name of names) {
    const data = `data ${name}`;
    await fs.writeFile(path.join(tree, name), data);
    await fs.chmod(path.join(tree, name), 0o644);
    lines.push(`file ${JSON.stringify(name)} 100644 0:0 ${createHash('sha256').update(data).digest('hex')}`);
  }
  assert.ok(lines.join('\n').length > 1 << 16);
  assert.equal(await checksumTree(tree, '/'), sha256(lines.join('\n')));
});

test('one file per local directory: a build rewrites only its own; the old layout goes; at most MAX_CACHE_FILES stay', async () => {
  const state = path.join(dir, 'per-dir-state');
  await fs.mkdir(state, { recursive: true });
  // The layouts before: one binary file of every directory, and the JSON one.
  await fs.writeFile(path.join(state, 'local-checksums.bin'), 'old');
  await fs.writeFile(path.join(state, 'local-checksums.json'), '{"v":2,"files":{}}');
  const a = await hashCacheFor(state, path.join(dir, 'project-a'));
  const b = await hashCacheFor(state, path.join(dir, 'project-b'));
  assert.notEqual(a.file, b.file);
  assert.equal(a.file, hashCacheFile(state, path.join(dir, 'project-a')));
  a.set(path.join(dir, 'project-a', 'x'), stamp(1, 2, 3, 4), H1);
  await a.save();
  b.set(path.join(dir, 'project-b', 'y'), stamp(5, 6, 7, 8), H2);
  await b.save();
  for (const old of ['local-checksums.bin', 'local-checksums.json'])
    await assert.rejects(fs.stat(path.join(state, old)), /ENOENT/, `${old} is removed`);
  // A change in project b rewrites b's file only.
  const aBefore = await fs.stat(a.file, { bigint: true });
  b.set(path.join(dir, 'project-b', 'y'), stamp(5, 6, 7, 9), H1);
  await b.save();
  const aAfter = await fs.stat(a.file, { bigint: true });
  assert.equal(aAfter.mtimeNs, aBefore.mtimeNs);
  assert.equal(aAfter.ino, aBefore.ino);
  const reloaded = new PersistentHashCache(b.file);
  await reloaded.load();
  assert.equal(reloaded.size, 1, "b's file holds b's entries only");
  // Past MAX_CACHE_FILES, a save removes the least recently written files, never its own.
  const filesDir = path.dirname(a.file);
  for (let i = 0; i < MAX_CACHE_FILES; i++) {
    const f = path.join(filesDir, `filler-${String(i).padStart(3, '0')}.bin`);
    await fs.writeFile(f, '');
    await fs.utimes(f, 1_000_000 + i, 1_000_000 + i);
  }
  await fs.utimes(a.file, 1, 1); // older than every filler
  b.set(path.join(dir, 'project-b', 'z'), stamp(1, 1, 1, 1), H2);
  await b.save();
  const left = (await fs.readdir(filesDir)).filter((n) => n.endsWith('.bin'));
  assert.equal(left.length, MAX_CACHE_FILES);
  assert.ok(left.includes(path.basename(b.file)), 'the saved file stays');
  assert.ok(!left.includes(path.basename(a.file)), 'the least recently written goes first');
  assert.ok(!left.includes('filler-000.bin') && left.includes('filler-002.bin'));
});

test('through the worker: an unchanged context hits the cache before any copy and leaves the file alone', async () => {
  const root = path.join(dir, 'root');
  const ctx = path.join(dir, 'ctx');
  await fs.mkdir(path.join(ctx, 'src'), { recursive: true });
  for (let i = 0; i < 50; i++)
    await fs.writeFile(path.join(ctx, 'src', `m${i}.ts`), `export const x = ${i};\n`);
  const core: Core = await openCore({ root, namespace: 'test' });
  const workers: Worker[] = [];
  try {
    const def = marshal(scratch().file(copy(local('context'), '/', '/app')));
    const solve = async (): Promise<{
      executed: string[];
      cached: string[];
      id: string;
      snapshot: string;
    }> => {
      const w = new Worker({ core, sessions: { locals: { context: ctx } } });
      workers.push(w);
      const events: ProgressEvent[] = [];
      const r = await w.solveDefinition(def, { progress: { write: (e) => events.push(e) } });
      const id = r.id;
      const snapshot = snapshotOf(r);
      await r.release();
      const done = events.filter((e) => e.type === 'vertex' && e.completed !== undefined);
      return {
        executed: done
          .filter((e) => e.type === 'vertex' && !e.cached)
          .map((e) => (e as { name: string }).name),
        cached: done.filter((e) => e.type === 'vertex' && e.cached).map((e) => (e as { name: string }).name),
        id,
        snapshot,
      };
    };
    const first = await solve();
    assert.equal(first.executed.length, 2, 'cold: the local source and the copy run');
    const file = hashCacheFile(path.join(root, 'ops'), ctx);
    const st1 = await fs.stat(file, { bigint: true });
    const cache = await hashCacheFor(path.join(root, 'ops'), ctx);
    const writes = cache.writes;

    const second = await solve();
    assert.deepEqual(second.executed, [], 'nothing runs (no copy of the context)');
    assert.equal(second.cached.length, 1, 'the target is found by its definition key');
    assert.equal(second.id, first.id);
    assert.equal(cache.writes, writes, 'the checksum cache is not rewritten');
    const st2 = await fs.stat(file, { bigint: true });
    assert.equal(st2.ino, st1.ino);
    assert.equal(st2.mtimeNs, st1.mtimeNs);

    await fs.writeFile(path.join(ctx, 'src', 'm7.ts'), 'export const x = "changed";\n');
    const third = await solve();
    assert.equal(third.executed.length, 2, 'a changed file re-runs the source and the copy');
    assert.equal(cache.writes, writes + 1, 'the new hash is saved');
    const saved = new PersistentHashCache(file);
    await saved.load();
    assert.equal(saved.size, 50, 'one entry per file');
    const s = await OpSession.open(core, 'test read');
    try {
      const tree = await s.mount(await s.view(third.snapshot));
      assert.equal(
        await fs.readFile(path.join(tree, 'app', 'src', 'm7.ts'), 'utf8'),
        'export const x = "changed";\n',
      );
    } finally {
      await s.close();
    }
  } finally {
    for (const w of workers) w.close();
    await core.close();
  }
});
