/**
 * Conformance suite for the ContentStore contract (src/core/content/types.ts).
 * Every implementation runs it: `runContentStoreConformance(name, makeStore)`
 * registers node:test `describe`/`it` blocks; `makeStore` gives a fresh,
 * empty store per test and a cleanup. Only the interface is used, so a
 * namespaced or remote store can run the same checks.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { ContentStore, Info, Writer, WriterOptions } from '../../src/core/content/types.ts';
import { type Digest, EMPTY_SHA256, sha256 } from '../../src/core/digest.ts';
import { type ErrorCode, isKilnError } from '../../src/core/errors.ts';

export interface ConformanceStore {
  store: ContentStore;
  cleanup(): Promise<void>;
}

const enc = new TextEncoder();

/** Deterministic test bytes of any length (not all-equal, so offsets matter). */
function bytes(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed * 2654435761;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

function code(c: ErrorCode): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isKilnError(err, c), `want KilnError ${c}, got ${String(err)}`);
    return true;
  };
}

async function put(store: ContentStore, ref: string, data: Uint8Array, labels?: Record<string, string>) {
  const w = await store.writer({ ref });
  await w.write(data);
  return w.commit({ labels });
}

async function walkAll(store: ContentStore, filters?: string[]): Promise<Info[]> {
  const out: Info[] = [];
  await store.walk((i) => {
    out.push(i);
  }, filters);
  return out.sort((a, b) => a.digest.localeCompare(b.digest));
}

export function runContentStoreConformance(name: string, makeStore: () => Promise<ConformanceStore>): void {
  void describe(`ContentStore conformance: ${name}`, () => {
    let ctx: ConformanceStore;
    let store: ContentStore;
    const open: Writer[] = [];
    beforeEach(async () => {
      ctx = await makeStore();
      store = ctx.store;
    });
    afterEach(async () => {
      for (const w of open.splice(0)) await w.close().catch(() => undefined);
      await ctx.cleanup();
    });
    const writer = async (opts: WriterOptions): Promise<Writer> => {
      const w = await store.writer(opts);
      open.push(w);
      return w;
    };

    void it('writes in chunks, commits and reads back the same bytes', async () => {
      const data = bytes(300_000);
      const w = await writer({ ref: 'write-1' });
      assert.equal(w.ref, 'write-1');
      assert.equal(w.offset, 0);
      await w.write(data.subarray(0, 1000));
      await w.write(data.subarray(1000, 1000)); // empty chunk
      await w.write(data.subarray(1000));
      assert.equal(w.offset, data.length);
      assert.equal(w.digest(), sha256(data));
      const d = await w.commit();
      assert.equal(d, sha256(data));
      const info = await store.info(d);
      assert.equal(info.digest, d);
      assert.equal(info.size, data.length);
      assert.deepEqual(info.labels, {});
      assert.ok(info.createdAt instanceof Date && !Number.isNaN(info.createdAt.getTime()));
      assert.ok(info.updatedAt.getTime() >= info.createdAt.getTime());
      assert.deepEqual(await collect(store.read(d)), Buffer.from(data));
      await assert.rejects(store.status('write-1'), code('NotFound'), 'the ingest is gone after commit');
    });

    void it('commits the empty blob', async () => {
      const w = await writer({ ref: 'empty' });
      assert.equal(await w.commit(), EMPTY_SHA256);
      assert.equal((await store.info(EMPTY_SHA256)).size, 0);
      assert.equal((await collect(store.read(EMPTY_SHA256))).length, 0);
    });

    void it('verifies expected size and digest given to writer() or commit()', async () => {
      const data = enc.encode('expected content');
      const w = await writer({ ref: 'exp', total: data.length, expected: sha256(data) });
      await w.write(data);
      assert.equal(await w.commit({ size: data.length, expected: sha256(data) }), sha256(data));
      const w2 = await writer({ ref: 'exp2' });
      await w2.write(enc.encode('abc'));
      assert.equal(await w2.commit({ size: 3, expected: sha256('abc') }), sha256('abc'));
    });

    void it('streams byte ranges', async () => {
      const data = bytes(3 << 20, 7); // more than one read chunk
      const d = await put(store, 'range', data);
      const range = async (start?: number, end?: number) => collect(store.read(d, { start, end }));
      assert.deepEqual(await range(3, 10), Buffer.from(data.subarray(3, 10)));
      assert.deepEqual(await range(5), Buffer.from(data.subarray(5)));
      assert.deepEqual(await range(undefined, 4), Buffer.from(data.subarray(0, 4)));
      assert.deepEqual(await range(1_000_000, 2_500_001), Buffer.from(data.subarray(1_000_000, 2_500_001)));
      assert.equal((await range(9, 9)).length, 0);
      assert.equal((await range(data.length)).length, 0);
    });

    void it('reads at offsets with readerAt', async () => {
      const data = bytes(10_000, 3);
      const d = await put(store, 'ra', data);
      const r = await store.readerAt(d);
      try {
        assert.equal(r.size, data.length);
        assert.deepEqual(Buffer.from(await r.read(0, 10)), Buffer.from(data.subarray(0, 10)));
        assert.deepEqual(Buffer.from(await r.read(4321, 100)), Buffer.from(data.subarray(4321, 4421)));
        assert.deepEqual(Buffer.from(await r.read(9990, 100)), Buffer.from(data.subarray(9990)));
        assert.equal((await r.read(data.length, 10)).length, 0);
      } finally {
        await r.close();
      }
    });

    void it('reports NotFound for unknown content', async () => {
      const d = sha256('never written');
      await assert.rejects(store.info(d), code('NotFound'));
      await assert.rejects(store.readerAt(d), code('NotFound'));
      await assert.rejects(collect(store.read(d)), code('NotFound'));
      await assert.rejects(store.delete(d), code('NotFound'));
      await assert.rejects(store.update({ digest: d, labels: { a: 'b' } }), code('NotFound'));
    });

    void it('reads whole blobs with readBlob, each caller getting its own copy', async () => {
      const data = bytes(5000, 7);
      const d = await put(store, 'whole', data);
      const first = await store.readBlob(d, 1 << 20);
      assert.deepEqual(Buffer.from(first), Buffer.from(data));
      first.fill(0);
      assert.deepEqual(Buffer.from(await store.readBlob(d, 1 << 20)), Buffer.from(data));
      await assert.rejects(store.readBlob(d, 4999), code('ResourceExhausted'));
      await assert.rejects(store.readBlob(sha256('never written'), 100), code('NotFound'));
      await store.delete(d);
      await assert.rejects(store.readBlob(d, 1 << 20), code('NotFound'));
    });

    void it('keeps labels given at commit and updates them', async () => {
      const d = await put(store, 'lab', enc.encode('labelled'), { a: '1', b: '2' });
      assert.deepEqual((await store.info(d)).labels, { a: '1', b: '2' });

      let info = await store.update({ digest: d, labels: { c: '3' } }, ['labels.c']);
      assert.deepEqual(info.labels, { a: '1', b: '2', c: '3' });
      info = await store.update({ digest: d, labels: { a: '' } }, ['labels.a']);
      assert.deepEqual(info.labels, { b: '2', c: '3' });
      info = await store.update({ digest: d, labels: { b: '20' } }, ['labels.b', 'labels.missing']);
      assert.deepEqual(info.labels, { b: '20', c: '3' });
      assert.deepEqual((await store.info(d)).labels, { b: '20', c: '3' });

      info = await store.update({ digest: d, labels: { x: 'y' } }, ['labels']);
      assert.deepEqual(info.labels, { x: 'y' });
      info = await store.update({ digest: d, labels: { z: 'w' } });
      assert.deepEqual(info.labels, { z: 'w' });
      const again = await store.info(d);
      assert.deepEqual(again.labels, { z: 'w' });
      assert.equal(again.size, 8);
      assert.ok(again.updatedAt.getTime() >= again.createdAt.getTime());
    });

    void it('walks with digest, size and label filters', async () => {
      const a = await put(store, 'wa', enc.encode('aaaa'), { kind: 'layer', team: 'x' });
      const b = await put(store, 'wb', enc.encode('bbbbbb'), { kind: 'config' });
      const c = await put(store, 'wc', enc.encode('cccc'));
      const digests = async (filters?: string[]) => (await walkAll(store, filters)).map((i) => i.digest);
      const sorted = (...ds: Digest[]) => [...ds].sort();

      assert.deepEqual(await digests(), sorted(a, b, c));
      assert.deepEqual(await digests([]), sorted(a, b, c));
      assert.deepEqual(await digests([`digest==${b}`]), [b]);
      assert.deepEqual(await digests(['size==4']), sorted(a, c));
      assert.deepEqual(await digests(['size!=4']), [b]);
      assert.deepEqual(await digests(['labels.kind==layer']), [a]);
      assert.deepEqual(await digests(['labels.kind']), sorted(a, b));
      assert.deepEqual(await digests(['labels.kind!=layer']), sorted(b, c));
      assert.deepEqual(await digests(['labels.kind~=^(lay|conf)']), sorted(a, b));
      assert.deepEqual(await digests(['labels.kind==layer,labels.team==x']), [a]);
      assert.deepEqual(await digests(['labels.kind==config,labels.team==x']), []);
      assert.deepEqual(await digests(['labels.kind==config', `digest==${c}`]), sorted(b, c));
      const infos = await walkAll(store, [`digest==${a}`]);
      assert.equal(infos[0].size, 4);
      assert.deepEqual(infos[0].labels, { kind: 'layer', team: 'x' });
      await assert.rejects(walkAll(store, ['labels.kind~=(']), code('InvalidArgument'));
    });

    void it('deletes content', async () => {
      const d = await put(store, 'del', enc.encode('to delete'), { k: 'v' });
      const keep = await put(store, 'keep', enc.encode('to keep'));
      await store.delete(d);
      await assert.rejects(store.info(d), code('NotFound'));
      await assert.rejects(collect(store.read(d)), code('NotFound'));
      assert.deepEqual(
        (await walkAll(store)).map((i) => i.digest),
        [keep],
      );
      await assert.rejects(store.delete(d), code('NotFound'));
      // The same content can be written again, without the old labels.
      assert.equal(await put(store, 'del-again', enc.encode('to delete')), d);
      assert.deepEqual((await store.info(d)).labels, {});
    });

    void it('reports the status of ingests and lists them with filters', async () => {
      const data = enc.encode('status bytes');
      const w = await writer({ ref: 'st-1', total: 100, expected: sha256('whatever') });
      await w.write(data);
      const st = await store.status('st-1');
      assert.equal(st.ref, 'st-1');
      assert.equal(st.offset, data.length);
      assert.equal(st.total, 100);
      assert.equal(st.expected, sha256('whatever'));
      assert.ok(st.startedAt instanceof Date && !Number.isNaN(st.startedAt.getTime()));
      assert.ok(st.updatedAt.getTime() >= st.startedAt.getTime());
      const w2 = await writer({ ref: 'st-2' });
      await w2.write(enc.encode('x'));
      await w2.close();
      const st2 = await store.status('st-2');
      assert.equal(st2.offset, 1);
      assert.equal(st2.total, 0);
      assert.equal(st2.expected, undefined);

      const refs = async (filters?: string[]) => (await store.listStatuses(filters)).map((s) => s.ref).sort();
      assert.deepEqual(await refs(), ['st-1', 'st-2']);
      assert.deepEqual(await refs(['ref==st-2']), ['st-2']);
      assert.deepEqual(await refs(['ref~=^st-']), ['st-1', 'st-2']);
      assert.deepEqual(await refs(['ref==nope']), []);
      await assert.rejects(store.status('nope'), code('NotFound'));
    });

    void it('aborts an ingest and its bytes', async () => {
      const w = await writer({ ref: 'ab' });
      await w.write(enc.encode('discard me'));
      await w.close();
      await store.abort('ab');
      await assert.rejects(store.status('ab'), code('NotFound'));
      assert.deepEqual(await store.listStatuses(), []);
      const w2 = await writer({ ref: 'ab' });
      assert.equal(w2.offset, 0, 'a new writer after abort starts from zero');
      await w2.write(enc.encode('fresh'));
      assert.equal(await w2.commit(), sha256('fresh'));
      await assert.rejects(store.abort('never-started'), code('NotFound'));
    });

    void it('resumes after close at the same offset and digest state', async () => {
      const data = bytes(200_000, 11);
      const w = await writer({ ref: 'resume', total: data.length, expected: sha256(data) });
      await w.write(data.subarray(0, 70_001));
      await w.close();
      await w.close(); // idempotent
      await assert.rejects(w.write(data.subarray(70_001)), code('FailedPrecondition'));
      assert.equal((await store.status('resume')).offset, 70_001);

      const w2 = await writer({ ref: 'resume', total: data.length, expected: sha256(data) });
      assert.equal(w2.offset, 70_001);
      assert.equal(w2.digest(), sha256(data.subarray(0, 70_001)));
      await w2.write(data.subarray(70_001));
      assert.equal(await w2.commit(), sha256(data));
      assert.deepEqual(await collect(store.read(sha256(data))), Buffer.from(data));
    });

    void it('refuses a second writer on a ref in use, until the first closes', async () => {
      const w = await writer({ ref: 'busy' });
      await w.write(enc.encode('one'));
      await assert.rejects(store.writer({ ref: 'busy' }), (err) => {
        code('Unavailable')(err);
        assert.match((err as Error).message, /is in use/);
        return true;
      });
      // Other refs are independent.
      const other = await writer({ ref: 'not-busy' });
      await other.write(enc.encode('two'));
      await w.close();
      const w2 = await writer({ ref: 'busy' });
      assert.equal(w2.offset, 3);
      await w2.write(enc.encode(' more'));
      assert.equal(await w2.commit(), sha256('one more'));
    });

    void it('fails a commit on a size mismatch and discards the ingest', async () => {
      const w = await writer({ ref: 'size', total: 10 });
      await w.write(enc.encode('short'));
      await assert.rejects(w.commit(), code('DataLoss'));
      await assert.rejects(store.info(sha256('short')), code('NotFound'));
      await assert.rejects(store.status('size'), code('NotFound'));

      const w2 = await writer({ ref: 'size2' });
      await w2.write(enc.encode('12345'));
      await assert.rejects(w2.commit({ size: 4 }), code('DataLoss'));
      await assert.rejects(store.info(sha256('12345')), code('NotFound'));
      await assert.rejects(store.status('size2'), code('NotFound'));

      // Writing past the expected total fails, at the write or at the commit.
      const w3 = await writer({ ref: 'size3', total: 3 });
      await assert.rejects(async () => {
        await w3.write(enc.encode('toolong'));
        await w3.commit();
      }, code('DataLoss'));
      await assert.rejects(store.info(sha256('toolong')), code('NotFound'));
      assert.deepEqual(await walkAll(store), []);
    });

    void it('fails a commit on a digest mismatch and discards the ingest', async () => {
      const w = await writer({ ref: 'dig', expected: sha256('other') });
      await w.write(enc.encode('data'));
      await assert.rejects(w.commit(), code('DataLoss'));
      await assert.rejects(store.info(sha256('data')), code('NotFound'));
      await assert.rejects(store.info(sha256('other')), code('NotFound'));
      await assert.rejects(store.status('dig'), code('NotFound'));

      const w2 = await writer({ ref: 'dig2' });
      await w2.write(enc.encode('data'));
      await assert.rejects(w2.commit({ expected: sha256('not data') }), code('DataLoss'));
      await assert.rejects(store.info(sha256('data')), code('NotFound'));
      assert.deepEqual(await walkAll(store), []);
      assert.deepEqual(await store.listStatuses(), []);
    });

    void it('reports AlreadyExists for content already in the store', async () => {
      const data = enc.encode('duplicate');
      const d = await put(store, 'dup-1', data, { first: 'yes' });
      await assert.rejects(store.writer({ ref: 'dup-2', expected: d }), code('AlreadyExists'));

      const w = await writer({ ref: 'dup-3' });
      await w.write(data);
      await assert.rejects(w.commit({ labels: { second: 'yes' } }), code('AlreadyExists'));
      await assert.rejects(store.status('dup-3'), code('NotFound'), 'the duplicate ingest is cleaned up');
      const info = await store.info(d);
      assert.deepEqual(info.labels, { first: 'yes' }, 'the existing blob keeps its labels');
      assert.deepEqual(await collect(store.read(d)), Buffer.from(data));
    });

    void it('refuses writes and commits on a finished writer', async () => {
      const w = await writer({ ref: 'done' });
      await w.write(enc.encode('x'));
      await w.commit();
      await assert.rejects(w.write(enc.encode('y')), code('FailedPrecondition'));
      await assert.rejects(w.commit(), code('FailedPrecondition'));
      assert.equal(w.digest(), sha256('x'));
    });

    void it('cancels a writer through its AbortSignal', async () => {
      const ac = new AbortController();
      const w = await writer({ ref: 'cancel', signal: ac.signal });
      await w.write(enc.encode('before'));
      ac.abort();
      await assert.rejects(w.write(enc.encode('after')), code('Canceled'));
      await w.close();
      assert.equal((await store.status('cancel')).offset, 6);
    });
  });
}
