/**
 * The cache index: one conformance suite run against both implementations
 * (in-memory and SQLite), plus what only SQLite does (persistence across
 * reopen, crash-safe schema versioning).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import {
  type CacheManager,
  type ExistsFunc,
  MEMO_LIMIT,
  MemoryCacheManager,
  SqliteCacheManager,
} from '../../src/solver/cache.ts';

let base: string;
before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-solver-cache-'));
});
after(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

let n = 0;
const impls: [string, (exists: ExistsFunc) => Promise<CacheManager>][] = [
  ['memory', async (exists) => new MemoryCacheManager({ exists })],
  ['sqlite', async (exists) => new SqliteCacheManager({ root: path.join(base, `db${n++}`), exists })],
];

for (const [name, open] of impls) {
  describe(`CacheManager conformance: ${name}`, () => {
    it('saves and loads the results of every output, in order; misses unknown keys', async () => {
      const cm = await open(() => true);
      await cm.save('k1', ['a', 'b', 'c']);
      assert.deepEqual(await cm.load('k1'), ['a', 'b', 'c']);
      assert.equal(await cm.load('k2'), undefined);
      cm.close();
    });

    it('replaces a record on save, keeping its created time and advancing its last use', async () => {
      const cm = await open(() => true);
      await cm.save('k', ['a', 'b']);
      const [first] = await cm.list();
      await sleep(5);
      await cm.save('k', ['c']);
      assert.deepEqual(await cm.load('k'), ['c']);
      const [second] = await cm.list();
      assert.equal(second.createdAt, first.createdAt);
      assert.ok(second.lastUsedAt > first.lastUsedAt);
      cm.close();
    });

    it('updates last use on load and lists records oldest use first', async () => {
      const cm = await open(() => true);
      await cm.save('old', ['x']);
      await sleep(5);
      await cm.save('new', ['y']);
      assert.deepEqual(
        (await cm.list()).map((r) => r.key),
        ['old', 'new'],
      );
      await sleep(5);
      await cm.load('old');
      const recs = await cm.list();
      assert.deepEqual(
        recs.map((r) => [r.key, r.results]),
        [
          ['new', ['y']],
          ['old', ['x']],
        ],
      );
      assert.ok(recs[1].lastUsedAt > recs[1].createdAt);
      cm.close();
    });

    it('treats a record whose result is gone as a miss and deletes it', async () => {
      const present = new Set(['a', 'b']);
      const cm = await open(async (id) => present.has(id));
      await cm.save('k', ['a', 'b']);
      assert.deepEqual(await cm.load('k'), ['a', 'b']);
      present.delete('b');
      assert.equal(await cm.load('k'), undefined);
      present.add('b');
      assert.equal(await cm.load('k'), undefined, 'the stale record was not deleted');
      assert.deepEqual(await cm.list(), []);
      cm.close();
    });

    it('deletes records by key and by result', async () => {
      const cm = await open(() => true);
      await cm.save('k1', ['a']);
      await cm.save('k2', ['b', 'a']);
      await cm.save('k3', ['c']);
      assert.equal(await cm.deleteResult('a'), 2);
      await cm.delete('k3');
      await cm.delete('absent');
      assert.deepEqual(await cm.list(), []);
      cm.close();
    });

    it('keeps build memo entries: replaced by key, dropped with their record by pruneMemos, at most MEMO_LIMIT', async () => {
      const cm = await open(() => true);
      assert.equal(await cm.getMemo!('m1'), undefined);
      await cm.save('root-1', ['a']);
      await cm.putMemo!('m1', 'root-1', 'one');
      await cm.putMemo!('m1', 'root-1', 'one again');
      await cm.putMemo!('m2', 'root-2', 'two');
      assert.equal(await cm.getMemo!('m1'), 'one again');
      assert.equal(await cm.pruneMemos!(), 1, 'root-2 has no record');
      assert.equal(await cm.getMemo!('m2'), undefined);
      await cm.deleteMemo!('m1');
      assert.equal(await cm.getMemo!('m1'), undefined);
      // The least recently used go first once there are more than MEMO_LIMIT.
      await cm.putMemo!('keep', 'root-1', 'kept');
      for (let i = 0; i < MEMO_LIMIT; i++) {
        await cm.putMemo!(`fill-${i}`, 'root-1', String(i));
        if (i % 100 === 0) {
          await sleep(2);
          assert.equal(await cm.getMemo!('keep'), 'kept'); // used: stays
          await sleep(2);
        }
      }
      assert.equal(await cm.getMemo!('keep'), 'kept');
      assert.equal(await cm.getMemo!('fill-0'), undefined, 'the oldest unused entry went');
      cm.close();
    });

    it('refuses an empty key or an empty result list', async () => {
      const cm = await open(() => true);
      await assert.rejects(cm.save('', ['a']), (e) => isKilnError(e, 'InvalidArgument'));
      await assert.rejects(cm.save('k', []), (e) => isKilnError(e, 'InvalidArgument'));
      await assert.rejects(cm.save('k', ['']), (e) => isKilnError(e, 'InvalidArgument'));
      cm.close();
    });
  });
}

describe('SqliteCacheManager', () => {
  it('keeps records across close and reopen, in <root>/cache.db', async () => {
    const root = path.join(base, 'persist');
    const a = new SqliteCacheManager({ root });
    await a.save('k', ['snap-1', 'snap-2']);
    a.close();
    const b = new SqliteCacheManager({ root });
    assert.equal(b.path, path.join(root, 'cache.db'));
    assert.deepEqual(await b.load('k'), ['snap-1', 'snap-2']);
    b.close();
  });

  it('refuses a database of another schema version, naming the file', async () => {
    const root = path.join(base, 'version');
    new SqliteCacheManager({ root }).close();
    const db = new DatabaseSync(path.join(root, 'cache.db'));
    db.exec('PRAGMA user_version = 99');
    db.close();
    assert.throws(
      () => new SqliteCacheManager({ root }),
      (e: unknown) => isKilnError(e, 'InvalidArgument') && /cache\.db.*schema version 99/.test(e.message),
    );
  });

  it('treats a partial record (a missing output row) as a miss', async () => {
    const root = path.join(base, 'partial');
    const cm = new SqliteCacheManager({ root });
    await cm.save('k', ['a', 'b']);
    const db = new DatabaseSync(cm.path);
    db.prepare('DELETE FROM cache_records WHERE key = ? AND output = 0').run('k');
    db.close();
    assert.equal(await cm.load('k'), undefined);
    cm.close();
  });
});
