/**
 * Merge and diff states.
 *
 * `merge([a, b, c])` layers trees: b on top of a, c on top of both (files in
 * later inputs win; directories are combined). Empty inputs (scratch) are
 * dropped; with none left the result is scratch and with one it is that
 * input itself, so no op is made. `diff(lower, upper)` is the set of
 * changes that turn lower into upper, as a tree of its own (deletions
 * included as whiteouts when exported); scratch on either side is the empty
 * tree. Results keep no settings except the platform of the first input
 * (merge) or of upper (diff).
 */
import { create } from '@bufbuild/protobuf';
import { errInvalidArgument } from '../core/errors.ts';
import { DiffOpSchema, MergeOpSchema } from '../gen/kiln/llb/v1/llb_pb.ts';
import { newState, type State } from './state.ts';
import {
  type MarshalContext,
  type OpBody,
  type OpOptions,
  type Output,
  type Vertex,
  type VertexMetadata,
  vertexMetadata,
} from './vertex.ts';

class MergeVertex implements Vertex {
  readonly inputs: readonly Output[];
  readonly metadata: VertexMetadata;

  constructor(inputs: Output[], md: VertexMetadata) {
    this.inputs = inputs;
    this.metadata = md;
  }

  toOp(_ctx: MarshalContext, inputIndex: (o: Output) => number): OpBody {
    const value = create(MergeOpSchema, { inputs: this.inputs.map((o) => ({ input: inputIndex(o) })) });
    return { op: { case: 'merge', value } };
  }
}

class DiffVertex implements Vertex {
  readonly inputs: readonly Output[];
  readonly metadata: VertexMetadata;
  readonly #lower: Output | undefined;
  readonly #upper: Output | undefined;

  constructor(lower: Output | undefined, upper: Output | undefined, md: VertexMetadata) {
    this.#lower = lower;
    this.#upper = upper;
    this.inputs = [lower, upper].filter((o): o is Output => o !== undefined);
    this.metadata = md;
  }

  toOp(_ctx: MarshalContext, inputIndex: (o: Output) => number): OpBody {
    const side = (o: Output | undefined) => (o ? { input: inputIndex(o) } : {});
    const value = create(DiffOpSchema, { lower: side(this.#lower), upper: side(this.#upper) });
    return { op: { case: 'diff', value } };
  }
}

/**
 * Layers states on top of each other, the first at the bottom.
 *
 * @example
 * ```ts
 * const rootfs = merge([image('busybox'), scratch().file(mkfile('/motd', 0o644, 'hi\n'))]);
 * ```
 */
export function merge(states: readonly State[], opts?: OpOptions): State {
  if (!Array.isArray(states)) throw errInvalidArgument('merge: want an array of states');
  const nonEmpty = states.filter((s) => !s.isScratch());
  if (nonEmpty.length === 0) return newState(undefined, { platform: states[0]?.getPlatform() });
  if (nonEmpty.length === 1) return nonEmpty[0]!;
  const outputs = nonEmpty.map((s) => s.output()!);
  return newState(
    { vertex: new MergeVertex(outputs, vertexMetadata(opts)), index: 0 },
    { platform: nonEmpty[0]!.getPlatform() },
  );
}

/**
 * The changes from `lower` to `upper` as a tree of their own; merging it
 * onto another base replays them there.
 *
 * @example
 * ```ts
 * const base = image('busybox');
 * const installed = base.run({ shell: 'echo tool > /usr/bin/tool' }).root();
 * const layer = diff(base, installed); // only /usr/bin/tool
 * const elsewhere = merge([image('alpine'), layer]);
 * ```
 */
export function diff(lower: State, upper: State, opts?: OpOptions): State {
  const vertex = new DiffVertex(lower.output(), upper.output(), vertexMetadata(opts));
  return newState({ vertex, index: 0 }, { platform: upper.getPlatform() });
}
