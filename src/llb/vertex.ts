/**
 * The builder's internal graph: vertices (one per op a builder call made)
 * and outputs (a vertex plus an output index). Private to src/llb; users see
 * `State`.
 *
 * A vertex is immutable. It knows the outputs it consumes and how to turn
 * itself into an `Op` once marshal has assigned positions to those inputs
 * (marshal de-duplicates inputs by digest, so two equal inputs share one
 * position). Metadata (description, ignore-cache, progress group) does not
 * take part in the op's identity.
 */
import type { Platform } from '../core/images/types.ts';
import { create } from '@bufbuild/protobuf';
import { type OpMetadata, type Op as PbOp, ProgressGroupSchema } from '../gen/kiln/llb/v1/llb_pb.ts';
import type { SourceLocation } from './sourcemap.ts';

/** One result of a vertex: exec ops have several (root, writable mounts); others have one. */
export interface Output {
  readonly vertex: Vertex;
  readonly index: number;
}

/** What marshal knows while turning vertices into ops. */
export interface MarshalContext {
  /** Platform for ops whose state did not set one. */
  readonly platform: Platform;
}

/** The op fields a vertex produces; marshal fills in `inputs`. */
export type OpBody = Pick<PbOp, 'op' | 'platform' | 'constraints'>;

/** Metadata fields a vertex may carry (a plain subset of `OpMetadata`). */
export interface VertexMetadata {
  readonly ignoreCache?: boolean;
  readonly description?: Readonly<Record<string, string>>;
  readonly progressGroup?: { readonly id: string; readonly name: string; readonly weak?: boolean };
  readonly caps?: Readonly<Record<string, boolean>>;
  /** Where in source files this op comes from (not part of OpMetadata; see sourcemap.ts). */
  readonly locations?: readonly SourceLocation[];
}

export interface Vertex {
  /** Outputs consumed, in the order the op refers to them. */
  readonly inputs: readonly Output[];
  readonly metadata: VertexMetadata;
  /**
   * Builds the op. `inputIndex(o)` gives the position of input `o` in the
   * final `Op.inputs` (valid for every member of `inputs`).
   */
  toOp(ctx: MarshalContext, inputIndex: (o: Output) => number): OpBody;
}

/** The structural view of a State that lower modules need (avoids an import cycle). */
export interface StateRef {
  /** The result this state stands for; undefined for the empty tree (scratch). */
  output(): Output | undefined;
  /** The working directory relative paths are resolved against. */
  getDir(): string;
}

/** Common options of every builder call that creates an op. */
export interface OpOptions {
  /**
   * Human-readable name shown in progress output: a string sets
   * `llb.customname`; a record is used as the whole description map.
   */
  description?: string | Readonly<Record<string, string>>;
  /** Always run this op, even when a cached result exists. */
  ignoreCache?: boolean;
  /** Groups this op with others in progress output. */
  progressGroup?: { id: string; name: string; weak?: boolean };
  /** The source file ranges this op comes from, for error messages. */
  location?: SourceLocation | readonly SourceLocation[];
}

/** Metadata for a vertex from the common options, plus capability names it needs. */
export function vertexMetadata(opts: OpOptions | undefined, caps: readonly string[] = []): VertexMetadata {
  const md: {
    ignoreCache?: boolean;
    description?: Record<string, string>;
    progressGroup?: { id: string; name: string; weak?: boolean };
    caps?: Record<string, boolean>;
    locations?: SourceLocation[];
  } = {};
  if (opts?.ignoreCache) md.ignoreCache = true;
  if (typeof opts?.description === 'string') md.description = { 'llb.customname': opts.description };
  else if (opts?.description) md.description = { ...opts.description };
  if (opts?.progressGroup) md.progressGroup = { ...opts.progressGroup };
  if (caps.length > 0) md.caps = Object.fromEntries(caps.map((c) => [c, true]));
  const loc = opts?.location;
  if (loc)
    md.locations = Array.isArray(loc) ? [...(loc as readonly SourceLocation[])] : [loc as SourceLocation];
  return md;
}

/** Merges `b` into `a` (same op reached twice with different metadata). */
export function mergeMetadata(a: OpMetadata, b: VertexMetadata): void {
  if (b.ignoreCache) a.ignoreCache = true;
  if (b.description) Object.assign(a.description, b.description);
  if (b.progressGroup && !a.progressGroup) {
    a.progressGroup = create(ProgressGroupSchema, b.progressGroup);
  }
  if (b.caps) Object.assign(a.caps, b.caps);
}
