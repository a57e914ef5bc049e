/**
 * The generic solver's vocabulary, after BuildKit's solver package: a graph of
 * vertices joined by edges, and the one seam through which the solver meets
 * concrete operations (`Op`, obtained per vertex from a resolver). Nothing here
 * knows LLB: a vertex's `sys` is an opaque payload that only the resolver reads.
 *
 * Identity contract: `Vertex.digest` names the operation (for LLB, the digest
 * of the op's deterministic encoding). The solver derives a vertex's identity
 * from that digest AND its inputs' identities, so two vertices with the same
 * digest but different inputs are never merged.
 *
 * Cache contract (see solver.ts for how keys are built): an op whose output can
 * change while its definition does not (a local build context, a `git` branch)
 * must make `CacheMap.digest` change too (e.g. include a session id or a
 * resolved commit). Consumers that read only part of such an input recover the
 * cache hit through a content-based dep (`computeDigestFunc` over `selector`).
 */
import type { ProgressWriter } from './progress.ts';

/** An edge points at one output of a vertex. */
export interface Edge {
  readonly vertex: Vertex;
  /** Output index of `vertex`. */
  readonly index: number;
}

export interface VertexOptions {
  /** Never use a cached result for this vertex (the new result is still recorded). */
  readonly ignoreCache?: boolean;
  /** Free-form description (e.g. `llb.customname`), not interpreted by the solver. */
  readonly description?: Readonly<Record<string, string>>;
}

export interface Vertex {
  /** Digest of the operation (LLB: digest of the op's encoding). */
  readonly digest: string;
  readonly inputs: readonly Edge[];
  /** Human description used in progress and errors, e.g. `RUN make`. */
  readonly name: string;
  readonly options: VertexOptions;
  /** Opaque operation payload, read only by the resolver. */
  readonly sys: unknown;
}

/**
 * A reference-counted handle on one output (e.g. a committed snapshot). Every
 * handle is released exactly once; `clone()` gives an independent handle on the
 * same result. `id` is what the cache index stores: it must name a result that
 * outlives the process (e.g. a committed snapshot's name).
 */
export interface Result {
  readonly id: string;
  readonly sys: unknown;
  clone(): Result;
  release(): Promise<void>;
}

/** How one input takes part in the cache key of the op that reads it. */
export interface CacheMapDep {
  /** The paths the op reads from that input (e.g. `src/`), passed to `computeDigestFunc`. */
  readonly selector?: string;
  /**
   * Content checksum of the selected paths of the input's result. When set, the
   * op's content-based cache key uses this checksum instead of the input's key.
   */
  readonly computeDigestFunc?: (
    result: Result,
    selector: string | undefined,
    signal: AbortSignal,
  ) => Promise<string>;
}

export interface CacheMap {
  /** The op's own definition digest; may include resolved information (an image config digest). */
  readonly digest: string;
  /** One entry per input, in input order; missing entries mean "plain dep" (the input's key). */
  readonly deps: readonly CacheMapDep[];
  /**
   * Milliseconds this map took to compute before the solver asked for it (a source's map that
   * ../worker/worker.ts `sourceCacheMap` computed ahead); the solver counts them with the time it
   * measures itself (./solver.ts KEY_WORK_MS).
   */
  readonly workMs?: number;
}

/** What the solver hands an op for one call. */
export interface OpContext {
  readonly vertex: Vertex;
  /** Aborted when no solve needs this vertex any more; ops must stop (kill execs, unmount, release). */
  readonly signal: AbortSignal;
  /** Progress of this vertex (logs, per-item status), delivered to every solve waiting on it. */
  readonly progress: ProgressWriter;
}

/** A concrete operation, resolved per vertex. */
export interface Op {
  /**
   * The op's cache map. `index` is the cache-map stage; this solver asks for
   * stage 0 only (multi-stage maps, as BuildKit's sources use, are not
   * implemented).
   */
  cacheMap(ctx: OpContext, index: number): Promise<CacheMap>;
  /**
   * Runs the op on its inputs (borrowed handles: do not release them; clone
   * what must outlive the call). Returns one new handle per output, which the
   * solver then owns.
   */
  exec(ctx: OpContext, inputs: readonly Result[]): Promise<Result[]>;
}

/** The seam: turns a vertex into the op that implements it (BuildKit's worker.ResolveOp). */
export type ResolveOp = (vertex: Vertex) => Op;
