/**
 * The Connect protocol's envelopes (src/client/connect.ts): messages split
 * across reads at any byte, several in one read, and an oversized length.
 * The calls themselves run against kilnd in test/cli/daemon.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EnvelopeReader, envelope, RpcError } from '../../src/client/connect.ts';

test('envelopes come out whole whatever the reads split', () => {
  const messages = [Buffer.from('first'), Buffer.alloc(0), Buffer.alloc(70_000, 7), Buffer.from('{"end":1}')];
  const wire = Buffer.concat(messages.map((m, i) => envelope(m, i === messages.length - 1 ? 2 : 0)));
  for (const step of [1, 3, 5, 4096, wire.length]) {
    const reader = new EnvelopeReader();
    const got: { flags: number; data: Buffer }[] = [];
    for (let off = 0; off < wire.length; off += step)
      got.push(...reader.push(wire.subarray(off, off + step)));
    assert.equal(reader.pending, 0, `step ${step}`);
    assert.deepEqual(
      got.map((e) => e.flags),
      [0, 0, 0, 2],
    );
    assert.deepEqual(
      got.map((e) => Buffer.from(e.data)),
      messages,
      `step ${step}`,
    );
  }
});

test('an incomplete envelope stays pending; an absurd length is refused', () => {
  const reader = new EnvelopeReader();
  assert.deepEqual(reader.push(envelope(Buffer.from('abc')).subarray(0, 6)), []);
  assert.equal(reader.pending, 6);
  const huge = Buffer.from([0, 0xff, 0xff, 0xff, 0xff]);
  assert.throws(
    () => new EnvelopeReader().push(huge),
    (err: unknown) => err instanceof RpcError && err.code === 'resource_exhausted',
  );
});
