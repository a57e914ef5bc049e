/**
 * Op validation: what the builder makes passes; hand-made malformed ops are
 * refused with a message naming the problem.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { isKilnError } from '../../src/core/errors.ts';
import { outputCount, validateOp } from '../../src/llb/validate.ts';
import {
  copy,
  encodeOp,
  image,
  local,
  marshal,
  merge,
  mkdir,
  parseDefinition,
  pb,
  scratch,
} from '../../src/llb/index.ts';

type OpInit = MessageInitShape<typeof pb.OpSchema>;
const op = (init: OpInit) => create(pb.OpSchema, init);
const IN = { digest: `sha256:${'1'.repeat(64)}`, index: 0 };
const refuses = (init: OpInit, re: RegExp) =>
  assert.throws(
    () => validateOp(op(init), 'x'),
    (err: unknown) => isKilnError(err, 'InvalidArgument') && re.test(err.message),
  );

const rootMount = { dest: '/', type: pb.MountType.BIND, output: 0 };
const exec = (mounts: MessageInitShape<typeof pb.MountSchema>[], inputs = [IN]): OpInit => ({
  inputs,
  op: { case: 'exec', value: { meta: { args: ['true'], cwd: '/' }, mounts } },
});

test('everything the builder makes is valid', () => {
  const run = image('busybox').run({
    args: ['true'],
    mounts: [
      { target: '/a', source: local('c') },
      { target: '/b', readonly: true, source: local('d') },
      { type: 'cache', target: '/c' },
      { type: 'tmpfs', target: '/t' },
      { type: 'secret', target: '/s' },
      { type: 'ssh', target: '/ssh' },
      { target: '/e' },
    ],
  });
  const s = merge([
    run.getMount('/a'),
    run.getMount('/e'),
    scratch().file(mkdir('/x', 0o755).copy(run, '/', '/y')),
  ]);
  const g = parseDefinition(marshal(s));
  for (const v of g.vertices) validateOp(v.op, v.digest);
  const e = g.vertices.find((v) => v.op.op.case === 'exec')!;
  assert.equal(outputCount(e.op), 3, 'root, /a and /e');
});

test('malformed exec ops are refused', () => {
  refuses({ op: { case: 'exec', value: { meta: { args: [] }, mounts: [rootMount] } } }, /no command/);
  refuses(exec([{ dest: '/x', type: pb.MountType.BIND }]), /first exec mount must be the root/);
  refuses(exec([{ ...rootMount, input: 1 }]), /refers to input 1, but the op has 1 inputs/);
  refuses(exec([rootMount, { dest: '/c', type: pb.MountType.CACHE }]), /cache mount "\/c" has no id/);
  refuses(
    exec([rootMount, { dest: '/s', type: pb.MountType.SECRET, input: 0, secret: { id: 's' } }]),
    /cannot have an input or output/,
  );
  refuses(exec([rootMount, { dest: '/b', type: pb.MountType.BIND, output: 2 }]), /numbered 0 to 1, got 0, 2/);
  refuses(exec([rootMount, { dest: 'rel', type: pb.MountType.BIND }]), /"rel" is not absolute/);
  refuses(exec([rootMount, { dest: '/m', type: pb.MountType.UNSPECIFIED }]), /invalid type 0/);
});

test('malformed file, merge, diff and source ops are refused', () => {
  const mk = (i: number) => ({ case: 'mkdir' as const, value: { path: `/d${i}`, mode: 0o755 } });
  refuses({ op: { case: 'file', value: { actions: [] } } }, /no actions/);
  refuses(
    {
      op: {
        case: 'file',
        value: { actions: [{ input: { from: { case: 'action', value: 0 } }, output: 0, action: mk(0) }] },
      },
    },
    /refers to action 0, not an earlier one/,
  );
  refuses({ op: { case: 'file', value: { actions: [{ action: mk(0) }] } } }, /no output/);
  refuses(
    {
      op: {
        case: 'file',
        value: { actions: [{ input: { from: { case: 'opInput', value: 3 } }, output: 0, action: mk(0) }] },
      },
    },
    /action 0 input refers to input 3/,
  );
  refuses({ op: { case: 'merge', value: { inputs: [] } } }, /merge has no inputs/);
  refuses(
    { inputs: [IN], op: { case: 'diff', value: { lower: { input: 0 }, upper: { input: 1 } } } },
    /diff upper/,
  );
  refuses(
    { op: { case: 'source', value: { identifier: 'busybox' } } },
    /invalid source identifier "busybox"/,
  );
});

test('a definition using a missing output of an op is refused', () => {
  const good = marshal(image('busybox').file(copy(local('c'), '/a', '/b')), { platform: 'linux/amd64' });
  const g = parseDefinition(good);
  const terminal = op({ inputs: [{ digest: g.output!.digest, index: 1 }] });
  const bad = create(pb.DefinitionSchema, { def: [...good.def.slice(0, -1), encodeOp(terminal)] });
  assert.throws(
    () => parseDefinition(bad),
    (err: unknown) =>
      isKilnError(err, 'InvalidArgument') && /uses output 1 of op sha256:\w+, which has 1/.test(err.message),
  );
});
