/**
 * The persistent file hash cache of local sources: stamps, one entry per
 * path, the file rewritten only when an entry changed, old formats replaced;
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
import { checksumTree } from '../../src/ops/checksum.ts';
import { hashCacheFor, PersistentHashCache } from '../../src/ops/hashcache.ts';
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

test('a lookup hits only with the recorded stamp; a new stamp replaces the entry', async () => {
  const c = new PersistentHashCache(path.join(dir, 'stamps.json'));
  await c.load();
  assert.equal(c.get('/ctx/a\u00003\u00001.5\u00001.5\u000042'), undefined);
  c.set('/ctx/a\u00003\u00001.5\u00001.5\u000042', H1);
  assert.equal(c.get('/ctx/a\u00003\u00001.5\u00001.5\u000042'), H1);
  assert.equal(c.get('/ctx/a\u00004\u00001.5\u00001.5\u000042'), undefined, 'size differs');
  assert.equal(c.get('/ctx/a\u00003\u00001.5\u00002.5\u000042'), undefined, 'ctime differs');
  assert.equal(c.get('/ctx/b\u00003\u00001.5\u00001.5\u000042'), undefined, 'another path');
  c.set('/ctx/a\u00004\u00009\u00009\u000042', H2);
  assert.equal(c.size, 1, 'one entry per path');
  assert.equal(c.get('/ctx/a\u00004\u00009\u00009\u000042'), H2);
  assert.equal(c.get('/ctx/a\u00003\u00001.5\u00001.5\u000042'), undefined, 'the old version is gone');
});

test('save writes only when an entry changed; a reload sees the entries', async () => {
  const file = path.join(dir, 'save', 'local-checksums.json');
  const c = new PersistentHashCache(file);
  await c.load();
  await c.save();
  assert.equal(c.writes, 0, 'nothing to write');
  await assert.rejects(fs.stat(file), /ENOENT/);
  c.set('/x\u00001\u00002\u00003\u00004', H1);
  await c.save();
  assert.equal(c.writes, 1);
  const st1 = await fs.stat(file, { bigint: true });

  const d = new PersistentHashCache(file);
  await d.load();
  assert.equal(d.size, 1);
  assert.equal(d.get('/x\u00001\u00002\u00003\u00004'), H1);
  await d.save();
  assert.equal(d.writes, 0, 'lookups alone do not rewrite the file');
  const st2 = await fs.stat(file, { bigint: true });
  assert.equal(st2.ino, st1.ino);
  assert.equal(st2.mtimeNs, st1.mtimeNs);
  d.set('/x\u00001\u00002\u00003\u00004', H1.replace('a', 'c'));
  await d.save();
  assert.equal(d.writes, 1);
  assert.notEqual((await fs.stat(file, { bigint: true })).ino, st1.ino, 'replaced by rename');
});

test('an old-format or corrupt file is ignored and replaced at the next save', async () => {
  for (const [name, text] of [
    ['old.json', JSON.stringify({ '/x\u00001\u00002\u00003\u00004': H1 })],
    ['corrupt.json', '{"v":2,"files":{'],
  ] as const) {
    const file = path.join(dir, name);
    await fs.writeFile(file, text);
    const c = new PersistentHashCache(file);
    await c.load();
    assert.equal(c.size, 0, name);
    assert.equal(c.get('/x\u00001\u00002\u00003\u00004'), undefined, name);
    await c.save();
    assert.deepEqual(JSON.parse(await fs.readFile(file, 'utf8')), { v: 2, files: {} }, name);
  }
});

test('with checksumTree: unchanged files are not re-read, a changed file replaces its entry', async () => {
  const tree = path.join(dir, 'tree');
  await fs.mkdir(path.join(tree, 'sub'), { recursive: true });
  for (let i = 0; i < 10; i++) await fs.writeFile(path.join(tree, 'sub', `f${i}`), `content ${i}`);
  const c = new PersistentHashCache(path.join(dir, 'tree.json'));
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
  const fresh = new PersistentHashCache(path.join(dir, 'tree.json'));
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
    const file = path.join(root, 'ops', 'local-checksums.json');
    const st1 = await fs.stat(file, { bigint: true });
    const cache = await hashCacheFor(path.join(root, 'ops'));
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
    const saved = JSON.parse(await fs.readFile(file, 'utf8')) as { v: number; files: Record<string, string> };
    assert.equal(Object.keys(saved.files).length, 50, 'one entry per file');
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
