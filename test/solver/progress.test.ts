/**
 * Small solver parts: the multi-consumer progress channel, the semaphore
 * (limit, FIFO, cancellation of a waiter) and vertex identities and keys.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { edgeKey, vertexId, vertexKey } from '../../src/solver/keys.ts';
import { type ProgressEvent, ProgressChannel } from '../../src/solver/progress.ts';
import { Semaphore } from '../../src/solver/semaphore.ts';
import type { Vertex } from '../../src/solver/types.ts';

function ev(i: number): ProgressEvent {
  return { type: 'vertex', digest: `d${i}`, name: `v${i}` };
}

async function drain(it: AsyncIterable<ProgressEvent>): Promise<string[]> {
  const out: string[] = [];
  for await (const e of it) if (e.type === 'vertex') out.push(e.digest);
  return out;
}

describe('ProgressChannel', () => {
  it('gives every consumer every event, late consumers included, and ends on close', async () => {
    const ch = new ProgressChannel();
    const early = drain(ch);
    ch.write(ev(1));
    await new Promise((r) => setImmediate(r));
    ch.write(ev(2));
    const late = drain(ch);
    ch.write(ev(3));
    ch.close();
    ch.write(ev(4)); // ignored after close
    assert.deepEqual(await early, ['d1', 'd2', 'd3']);
    assert.deepEqual(await late, ['d1', 'd2', 'd3']);
    assert.deepEqual(await drain(ch), ['d1', 'd2', 'd3']);
  });

  it('lets a consumer stop early without affecting others', async () => {
    const ch = new ProgressChannel();
    for (let i = 0; i < 3; i++) ch.write(ev(i));
    for await (const e of ch) {
      assert.equal(e.type, 'vertex');
      break;
    }
    ch.close();
    assert.equal((await drain(ch)).length, 3);
  });
});

describe('Semaphore', () => {
  it('admits at most `limit` holders, in FIFO order', async () => {
    const sem = new Semaphore(2);
    const order: number[] = [];
    let inside = 0;
    let peak = 0;
    await Promise.all(
      [0, 1, 2, 3, 4].map(async (i) => {
        const release = await sem.acquire();
        order.push(i);
        inside++;
        peak = Math.max(peak, inside);
        await new Promise((r) => setImmediate(r));
        inside--;
        release();
        release(); // a second call is ignored
      }),
    );
    assert.equal(peak, 2);
    assert.deepEqual(order, [0, 1, 2, 3, 4]);
    assert.equal(sem.free, 2);
  });

  it('drops a cancelled waiter from the queue', async () => {
    const sem = new Semaphore(1);
    const release = await sem.acquire();
    const ac = new AbortController();
    const waiting = sem.acquire(ac.signal);
    ac.abort();
    await assert.rejects(waiting, (e) => isKilnError(e, 'Canceled'));
    release();
    assert.equal(sem.free, 1);
    assert.throws(
      () => new Semaphore(0),
      (e) => isKilnError(e, 'InvalidArgument'),
    );
  });
});

describe('keys', () => {
  const leaf = (digest: string): Vertex => ({ digest, name: digest, inputs: [], options: {}, sys: null });

  it('identifies a vertex by its digest and its inputs (edges and indexes)', () => {
    const a = leaf('a');
    const b = leaf('b');
    const on = (input: Vertex, index = 0): Vertex => ({
      digest: 'same',
      name: 'x',
      inputs: [{ vertex: input, index }],
      options: {},
      sys: null,
    });
    assert.equal(vertexId(on(a)), vertexId(on(leaf('a'))));
    assert.notEqual(vertexId(on(a)), vertexId(on(b)));
    assert.notEqual(vertexId(on(a, 0)), vertexId(on(a, 1)));
  });

  it('refuses a cycle', () => {
    const a: {
      digest: string;
      name: string;
      inputs: { vertex: Vertex; index: number }[];
      options: object;
      sys: null;
    } = { digest: 'a', name: 'A', inputs: [], options: {}, sys: null };
    const b: Vertex = { digest: 'b', name: 'B', inputs: [{ vertex: a, index: 0 }], options: {}, sys: null };
    a.inputs.push({ vertex: b, index: 0 });
    assert.throws(
      () => vertexId(b),
      (e) => isKilnError(e, 'InvalidArgument') && /its own ancestor/.test(e.message),
    );
  });

  it('keys cover the op digest, the inputs and content checksums distinctly', () => {
    const k = vertexKey('op', [{ key: edgeKey('in', 0) }]);
    assert.equal(k, vertexKey('op', [{ key: 'in#0' }]));
    assert.notEqual(k, vertexKey('op2', [{ key: 'in#0' }]));
    assert.notEqual(k, vertexKey('op', [{ key: 'in#1' }]));
    assert.notEqual(k, vertexKey('op', []));
    const c = vertexKey('op', [{ selector: 'src', checksum: 'sha256:1' }]);
    assert.notEqual(c, vertexKey('op', [{ selector: 'docs', checksum: 'sha256:1' }]));
    assert.notEqual(c, vertexKey('op', [{ selector: 'src', checksum: 'sha256:2' }]));
    assert.match(k, /^sha256:[0-9a-f]{64}$/);
  });
});
