/**
 * Definitions on the wire: marshal → binary → parse keeps every digest, the
 * binary form is stable, and malformed definitions are refused.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { isKilnError } from '../../src/core/errors.ts';
import { InputSchema, OpSchema, SourceOpSchema } from '../../src/gen/kiln/llb/v1/llb_pb.ts';
import {
  copy,
  definitionFromBinary,
  definitionToBinary,
  digestOf,
  encodeOp,
  image,
  local,
  marshal,
  merge,
  mkfile,
  parseDefinition,
  pb,
  SourceMap,
  scratch,
} from '../../src/llb/index.ts';

function sample() {
  const ctx = local('context', { exclude: ['.git'] });
  const base = image('busybox').addEnv('Z', '1').addEnv('A', '2');
  const built = base.run({
    shell: 'cp -r /src /out',
    mounts: [
      { target: '/src', source: ctx, readonly: true },
      { type: 'cache', target: '/cache', id: 'c' },
    ],
    description: { 'llb.customname': 'build', z: 'last', a: 'first' },
    ignoreCache: true,
    progressGroup: { id: 'g1', name: 'stage 1' },
  });
  const files = scratch().file(mkfile('/etc/motd', 0o644, 'hi\n').copy(built, '/out', '/out'), {
    description: 'files',
  });
  return merge([base, files]);
}

const sha = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

test('marshal → toBinary → fromBinary → parse keeps the digests, metadata and order', () => {
  const def = marshal(sample(), { platform: 'linux/amd64' });
  const digests = def.def.map(sha);
  const bytes = definitionToBinary(def);
  const back = definitionFromBinary(bytes);
  assert.deepEqual(back.def.map(sha), digests);
  const g = parseDefinition(back);
  assert.equal(g.digest, digests.at(-1));
  assert.deepEqual(
    g.vertices.map((v) => v.digest),
    digests.slice(0, -1),
    'marshal already lists ops in topological order',
  );
  // Each op's digest is also what re-encoding the decoded op gives.
  for (const v of g.vertices) assert.equal(digestOf(v.op), v.digest);
  // Metadata survives, keyed by digest.
  const exec = g.vertices.find((v) => v.op.op.case === 'exec')!;
  assert.equal(exec.metadata?.ignoreCache, true);
  assert.deepEqual(exec.metadata?.description, { 'llb.customname': 'build', z: 'last', a: 'first' });
  assert.deepEqual([exec.metadata?.progressGroup?.id, exec.metadata?.progressGroup?.name], ['g1', 'stage 1']);
  assert.equal(
    g.vertices.find((v) => v.op.op.case === 'file')!.metadata?.description['llb.customname'],
    'files',
  );
  // Re-encoding the decoded definition gives the same bytes.
  assert.deepEqual(definitionToBinary(back), bytes);
  // And a second marshal of an equal graph gives them too.
  assert.deepEqual(definitionToBinary(marshal(sample(), { platform: 'linux/amd64' })), bytes);
});

test('digests are taken from the bytes as given, not re-encoded', () => {
  // A foreign encoder may write map entries in another order; the digest
  // must be that of its bytes, so that references to it still resolve.
  const op = create(OpSchema, {
    op: {
      case: 'source',
      value: create(SourceOpSchema, { identifier: 'local://x', attrs: { b: '1', a: '2' } }),
    },
  });
  const canonical = encodeOp(op);
  // Hand-made non-canonical form: the same op with attrs in b, a order.
  const entry = (k: string, v: string) => {
    const e = new Uint8Array([0x0a, k.length, ...Buffer.from(k), 0x12, v.length, ...Buffer.from(v)]);
    return [0x12, e.length, ...e];
  };
  const id = Buffer.from('local://x');
  const src = new Uint8Array([0x0a, id.length, ...id, ...entry('b', '1'), ...entry('a', '2')]);
  const foreign = new Uint8Array([0x1a, src.length, ...src]);
  assert.notDeepEqual(foreign, canonical);
  const term = create(OpSchema, { inputs: [create(InputSchema, { digest: sha(foreign), index: 0 })] });
  const g = parseDefinition(pb_definition([foreign, encodeOp(term)]));
  assert.equal(g.vertices[0]!.digest, sha(foreign));
  assert.equal(g.output?.digest, sha(foreign));
});

function pb_definition(def: Uint8Array[]): pb.Definition {
  return create(pb.DefinitionSchema, { def });
}

test('an empty definition is scratch', () => {
  const g = parseDefinition(marshal(scratch()));
  assert.deepEqual([g.vertices.length, g.output, g.digest], [0, undefined, undefined]);
});

test('malformed definitions are refused', () => {
  const good = marshal(image('busybox').file(copy(local('c'), '/a', '/b')), { platform: 'linux/amd64' });
  const is = (code: string, re: RegExp) => (err: unknown) =>
    isKilnError(err) && err.code === code && re.test(err.message);

  // Bytes that are not a definition.
  assert.throws(
    () => definitionFromBinary(new Uint8Array([0x0a, 0x05, 0x01])),
    is('DataLoss', /decode LLB definition/),
  );
  // An op whose bytes do not decode.
  assert.throws(
    () => parseDefinition(pb_definition([new Uint8Array([0x0a, 0xff]), ...good.def])),
    is('DataLoss', /decode LLB op 0/),
  );
  // A missing input: drop the first op (a source every other op depends on).
  const ops = good.def.map((b) => ({ b, op: parseDefinition(good).get(sha(b)) }));
  const firstSource = ops.findIndex((o) => o.op?.op.op.case === 'source');
  const missing = good.def.filter((_, i) => i !== firstSource);
  assert.throws(
    () => parseDefinition(pb_definition(missing)),
    is('InvalidArgument', /refers to unknown input "sha256:/),
  );
  // The last op must be the terminal.
  assert.throws(
    () => parseDefinition(pb_definition(good.def.slice(0, -1))),
    is('InvalidArgument', /not a terminal/),
  );
  // A terminal in the middle.
  const terminal = good.def.at(-1)!;
  assert.throws(
    () => parseDefinition(pb_definition([terminal, ...good.def])),
    is('InvalidArgument', /has no operation and is not last/),
  );
});

test('parse orders vertices topologically even when the list is not', () => {
  const def = marshal(sample(), { platform: 'linux/amd64' });
  const body = def.def.slice(0, -1).reverse();
  const g = parseDefinition(pb_definition([...body, def.def.at(-1)!]));
  const seen = new Set<string>();
  for (const v of g.vertices) {
    for (const i of v.op.inputs) assert.ok(seen.has(i.digest), `${v.digest} before its input ${i.digest}`);
    seen.add(v.digest);
  }
  assert.equal(g.vertices.length, body.length);
  // The exec's cache mount survived the trip with its options.
  const exec = g.vertices.find((v) => v.op.op.case === 'exec')!.op.op.value as pb.ExecOp;
  assert.deepEqual(
    exec.mounts.map((m) => [m.dest, m.type]),
    [
      ['/', pb.MountType.BIND],
      ['/src', pb.MountType.BIND],
      ['/cache', pb.MountType.CACHE],
    ],
  );
  assert.deepEqual(exec.meta?.env, ['A=2', 'Z=1']);
});

test('source locations are recorded per op, each file once, without changing digests', () => {
  const df = new SourceMap('Dockerfile', 'FROM busybox\nRUN make\nRUN make install\n', 'Dockerfile');
  const other = new SourceMap('other.txt', 'x');
  const base = image('busybox', { location: df.lines(1) });
  const s = base.run({ args: ['make'], location: df.lines(2) }).run({
    args: ['make', 'install'],
    location: [
      df.lines(3),
      other.location([{ start: { line: 1, character: 0 }, end: { line: 1, character: 1 } }]),
    ],
  });
  const def = definitionFromBinary(definitionToBinary(marshal(s, { platform: 'linux/amd64' })));
  const plain = marshal(
    image('busybox')
      .run({ args: ['make'] })
      .run({ args: ['make', 'install'] }),
    {
      platform: 'linux/amd64',
    },
  );
  assert.deepEqual(def.def, plain.def, 'locations do not change ops');
  assert.equal(plain.source, undefined);
  const src = def.source!;
  assert.deepEqual(
    src.infos.map((i) => [i.filename, i.language, new TextDecoder().decode(i.data)]),
    [
      ['Dockerfile', 'Dockerfile', 'FROM busybox\nRUN make\nRUN make install\n'],
      ['other.txt', '', 'x'],
    ],
  );
  const g = parseDefinition(def);
  const lines = (digest: string) =>
    src.locations[digest]!.locations.map((l) => [
      l.sourceIndex,
      l.ranges.map((r) => [r.start!.line, r.end!.line, r.end!.character]),
    ]);
  const [img, make, install] = g.vertices;
  assert.deepEqual(lines(img!.digest), [[0, [[1, 1, 0]]]]);
  assert.deepEqual(lines(make!.digest), [[0, [[2, 2, 0]]]]);
  assert.deepEqual(lines(install!.digest), [
    [0, [[3, 3, 0]]],
    [1, [[1, 1, 1]]],
  ]);
  assert.throws(
    () => df.lines(0),
    (err: unknown) => isKilnError(err, 'InvalidArgument'),
  );
});
