/**
 * Definitions on the wire: binary encoding, decoding and validation into a
 * graph of vertices in topological order (inputs first).
 *
 * A vertex's digest is the sha256 of its bytes exactly as they appear in
 * `Definition.def` (they are not re-encoded), so a definition made by
 * another encoder keeps its digests. `parseDefinition` checks that every
 * op decodes and is well formed (validate.ts), that every input names an
 * existing output of an op of the definition, that the graph has no cycle,
 * and that the last op is the terminal (one input, no operation). Exact
 * duplicate op entries are tolerated and listed once.
 */
import { create, fromBinary, type MessageInitShape } from '@bufbuild/protobuf';
import { type Digest, sha256 } from '../core/digest.ts';
import { errDataLoss, errInvalidArgument } from '../core/errors.ts';
import {
  type Definition,
  DefinitionSchema,
  type Input,
  type Op,
  type OpMetadata,
  OpSchema,
} from '../gen/kiln/llb/v1/llb_pb.ts';
import { canonicalBinary } from './encoding.ts';
import { outputCount, validateOp } from './validate.ts';

/** One op of a decoded definition. */
export interface DefinitionVertex {
  readonly digest: Digest;
  readonly op: Op;
  /** The op's bytes as found in the definition. */
  readonly bytes: Uint8Array;
  readonly metadata: OpMetadata | undefined;
}

/** A validated definition. */
export interface DefinitionGraph {
  /** Every op except the terminal, inputs before the ops that use them. */
  readonly vertices: readonly DefinitionVertex[];
  /** The requested output; undefined for an empty definition (scratch). */
  readonly output: Input | undefined;
  /** The terminal op's digest (the definition's identity); undefined when empty. */
  readonly digest: Digest | undefined;
  get(digest: string): DefinitionVertex | undefined;
}

/** Deterministic bytes of a definition (map entries sorted; see encoding.ts). */
export function definitionToBinary(def: Definition): Uint8Array {
  return canonicalBinary(DefinitionSchema, def);
}

/** Decodes a definition; throws DataLoss when the bytes are not one. */
export function definitionFromBinary(bytes: Uint8Array): Definition {
  try {
    return fromBinary(DefinitionSchema, bytes);
  } catch (err) {
    throw errDataLoss(`decode LLB definition (${bytes.byteLength} bytes): ${(err as Error).message}`, err);
  }
}

/** Builds a Definition message from its parts. */
export function newDefinition(init: MessageInitShape<typeof DefinitionSchema>): Definition {
  return create(DefinitionSchema, init);
}

/** Decodes and validates a definition into a topologically ordered graph. */
export function parseDefinition(def: Definition): DefinitionGraph {
  const byDigest = new Map<string, DefinitionVertex>();
  if (def.def.length === 0) {
    return { vertices: [], output: undefined, digest: undefined, get: () => undefined };
  }
  let terminal: DefinitionVertex | undefined;
  def.def.forEach((bytes, i) => {
    const digest = sha256(bytes);
    let op: Op;
    try {
      op = fromBinary(OpSchema, bytes);
    } catch (err) {
      throw errDataLoss(`decode LLB op ${i} (${digest}): ${(err as Error).message}`, err);
    }
    const v: DefinitionVertex = { digest, op, bytes, metadata: def.metadata[digest] };
    if (i === def.def.length - 1) terminal = v;
    else byDigest.set(digest, v);
  });
  const term = terminal!;
  if (term.op.op.case !== undefined || term.op.inputs.length !== 1) {
    throw errInvalidArgument(
      `invalid LLB definition: last op ${term.digest} is not a terminal (want one input and no operation, got ${term.op.inputs.length} inputs and "${term.op.op.case}")`,
    );
  }
  const checkRef = (input: Input, user: string): void => {
    const producer = byDigest.get(input.digest);
    if (!producer) {
      throw errInvalidArgument(`invalid LLB definition: ${user} refers to unknown input "${input.digest}"`);
    }
    const count = outputCount(producer.op);
    if (!Number.isInteger(input.index) || input.index < 0 || input.index >= count) {
      throw errInvalidArgument(
        `invalid LLB definition: ${user} uses output ${input.index} of op ${input.digest}, which has ${count}`,
      );
    }
  };
  for (const v of byDigest.values()) {
    if (v.op.op.case === undefined) {
      throw errInvalidArgument(`invalid LLB definition: op ${v.digest} has no operation and is not last`);
    }
    validateOp(v.op, v.digest);
    for (const input of v.op.inputs) checkRef(input, `op ${v.digest}`);
  }
  const output = term.op.inputs[0]!;
  checkRef(output, 'the terminal');

  // Depth-first post-order from every op in definition order, so the result
  // is deterministic and inputs always precede their users.
  const order: DefinitionVertex[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (v: DefinitionVertex): void => {
    const s = state.get(v.digest);
    if (s === 'done') return;
    if (s === 'visiting') throw errInvalidArgument(`invalid LLB definition: cycle through op ${v.digest}`);
    state.set(v.digest, 'visiting');
    for (const input of v.op.inputs) visit(byDigest.get(input.digest)!);
    state.set(v.digest, 'done');
    order.push(v);
  };
  for (const v of byDigest.values()) visit(v);
  return {
    vertices: order,
    output,
    digest: term.digest,
    get: (digest) => byDigest.get(digest),
  };
}
