/**
 * Deterministic encoding: map entries are written in key order whatever the
 * insertion order (at every depth), repeated fields keep their order, and an
 * op's digest is the sha256 of exactly those bytes.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { create, equals, fromBinary, toBinary } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import {
  DefinitionSchema,
  OpMetadataSchema,
  OpSchema,
  SourceOpSchema,
} from '../../src/gen/kiln/llb/v1/llb_pb.ts';
import { canonicalBinary, compareKeys, digestOf, encodeOp } from '../../src/llb/encoding.ts';

/** The keys of the map entries of field `fieldNo`, in the order they appear in `bytes`. */
function mapKeysOnWire(bytes: Uint8Array, fieldNo: number): string[] {
  const keys: string[] = [];
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no !== fieldNo || wt !== WireType.LengthDelimited) {
      r.skip(wt);
      continue;
    }
    const entry = new BinaryReader(r.bytes());
    const [kno] = entry.tag();
    assert.equal(kno, 1, 'map entry starts with its key');
    keys.push(entry.string());
  }
  return keys;
}

function sourceOp(entries: [string, string][]) {
  return create(OpSchema, {
    op: {
      case: 'source',
      value: create(SourceOpSchema, { identifier: 'local://x', attrs: Object.fromEntries(entries) }),
    },
  });
}

const ENTRIES: [string, string][] = [
  ['z', '1'],
  ['10', 'ten'],
  ['a', '2'],
  ['9', 'nine'],
  ['B', '3'],
  ['é', '4'],
  ['local.include', '["*.ts"]'],
];

test('map entries are written in UTF-8 key order, integer-like keys included', () => {
  const bytes = encodeOp(sourceOp(ENTRIES));
  const source = new BinaryReader(bytes);
  // Op.source is field 3; its attrs map is field 2.
  let inner: Uint8Array | undefined;
  while (source.pos < source.len) {
    const [no, wt] = source.tag();
    if (no === 3) inner = source.bytes();
    else source.skip(wt);
  }
  assert.ok(inner, 'the op carries a source');
  const keys = mapKeysOnWire(inner, 2);
  assert.deepEqual(keys, ['10', '9', 'B', 'a', 'local.include', 'z', 'é']);
  // The plain library encoder would put "9" before "10" (JavaScript key order).
  const plain = mapKeysOnWire(
    (() => {
      const r = new BinaryReader(toBinary(OpSchema, sourceOp(ENTRIES)));
      let b: Uint8Array = new Uint8Array();
      while (r.pos < r.len) {
        const [no, wt] = r.tag();
        if (no === 3) b = r.bytes();
        else r.skip(wt);
      }
      return b;
    })(),
    2,
  );
  assert.deepEqual(plain.slice(0, 2), ['9', '10']);
});

test('insertion order never changes the bytes or the digest', () => {
  const orders = [
    ENTRIES,
    [...ENTRIES].reverse(),
    [...ENTRIES].sort(),
    [...ENTRIES.slice(3), ...ENTRIES.slice(0, 3)],
  ];
  const encodings = orders.map((e) => Buffer.from(encodeOp(sourceOp(e))).toString('hex'));
  assert.equal(new Set(encodings).size, 1);
  const digests = new Set(orders.map((e) => digestOf(sourceOp(e))));
  assert.equal(digests.size, 1);
  // ...while a different value does.
  const changed = ENTRIES.map(([k, v]): [string, string] => [k, k === 'a' ? 'other' : v]);
  assert.notEqual(digestOf(sourceOp(changed)), [...digests][0]);
});

test('nested maps (definition metadata → description) are sorted too', () => {
  const md = (desc: [string, string][]) =>
    create(OpMetadataSchema, { description: Object.fromEntries(desc) });
  const a = create(DefinitionSchema, {
    def: [new Uint8Array([1]), new Uint8Array([2])],
    metadata: {
      'sha256:bb': md([
        ['y', '1'],
        ['x', '2'],
      ]),
      'sha256:aa': md([
        ['2', 'a'],
        ['10', 'b'],
      ]),
    },
  });
  const b = create(DefinitionSchema, {
    def: [new Uint8Array([1]), new Uint8Array([2])],
    metadata: {
      'sha256:aa': md([
        ['10', 'b'],
        ['2', 'a'],
      ]),
      'sha256:bb': md([
        ['x', '2'],
        ['y', '1'],
      ]),
    },
  });
  const ea = canonicalBinary(DefinitionSchema, a);
  assert.deepEqual(ea, canonicalBinary(DefinitionSchema, b));
  assert.deepEqual(mapKeysOnWire(ea, 2), ['sha256:aa', 'sha256:bb']);
  // Repeated fields keep their order: swapping def entries changes the bytes.
  const c = create(DefinitionSchema, {
    def: [new Uint8Array([2]), new Uint8Array([1])],
    metadata: a.metadata,
  });
  assert.notDeepEqual(canonicalBinary(DefinitionSchema, c), ea);
  // The canonical bytes decode to an equal message.
  assert.ok(equals(DefinitionSchema, fromBinary(DefinitionSchema, ea), a));
});

test('encoding does not change the message it encodes', () => {
  const op = sourceOp(ENTRIES);
  const before = Object.keys((op.op.value as { attrs: Record<string, string> }).attrs);
  encodeOp(op);
  const after = Object.keys((op.op.value as { attrs: Record<string, string> }).attrs);
  assert.deepEqual(after, before);
});

test('digestOf is the sha256 of the encoded op', () => {
  const op = sourceOp([['k', 'v']]);
  const expected = `sha256:${createHash('sha256').update(encodeOp(op)).digest('hex')}`;
  assert.equal(digestOf(op), expected);
});

test('compareKeys orders by UTF-8 bytes, not UTF-16 units', () => {
  // An astral character is a surrogate pair (0xD83D…) in UTF-16, which sorts
  // below U+FF61; in UTF-8 (F0… vs EF…) it sorts above.
  const astral = '\u{1F600}';
  const halfwidth = '\uFF61';
  assert.ok(astral < halfwidth, 'JavaScript string order puts the astral character first');
  assert.equal(Math.sign(compareKeys(halfwidth, astral)), -1);
  assert.equal(Math.sign(compareKeys(astral, halfwidth)), 1);
  assert.equal(Math.sign(compareKeys('a', 'a')), 0);
});
