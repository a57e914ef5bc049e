/**
 * The worker: wires LLB definitions to the generic solver (BuildKit's
 * worker). `loadDefinition` turns a definition into solver vertices (digest =
 * op digest, name = the op's `llb.customname` description or a summary such
 * as `exec sh -c make`, `sys` = the decoded op); `resolveOp` gives the ops/
 * implementation of a vertex; `loadResult` turns a cache index id (a
 * committed snapshot name) back into a handle. `solveDefinition` runs one
 * definition through the worker's own Solver (cache index:
 * `<root>/cache.db`, a record whose snapshot is gone is a miss).
 *
 * The OCI runtime is probed once, on the first exec (`selectRuntime`, the
 * choice kept in `<root>/runtime`), unless one is given. Op state that
 * persists (cache mounts, local checksum cache) lives in `<root>/ops`, exec
 * bundles in the root's run directory (../ops/bundles.ts).
 */
import path from 'node:path';
import { fromBinary } from '@bufbuild/protobuf';
import { sha256 } from '../core/digest.ts';
import { errInvalidArgument, errNotFound, isKilnError } from '../core/errors.ts';
import type { Core } from '../core/metadata/index.ts';
import { runDirFor } from '../core/rundir.ts';
import { removeStaleBundles } from '../ops/bundles.ts';
import { selectRuntime } from '../core/containers/select.ts';
import type { OciRuntime } from '../core/runtime/runtime.ts';
import { type Definition, type Op as OpPb, OpSchema } from '../gen/kiln/llb/v1/llb_pb.ts';
import { parseDefinition } from '../llb/definition.ts';
import { ContentChecksums } from '../ops/checksum.ts';
import type { ImageResolver, OpEnv, Sessions } from '../ops/env.ts';
import { summarizeArgs } from '../ops/exec.ts';
import { describeAction } from '../ops/file.ts';
import { resolveLlbOp } from '../ops/index.ts';
import { LABEL_RESULT, SCRATCH, SnapshotRef } from '../ops/refs.ts';
import { type CacheManager, SqliteCacheManager } from '../solver/cache.ts';
import { now, vertexWriter } from '../solver/progress.ts';
import { type SolveOptions, Solver } from '../solver/solver.ts';
import type { CacheMap, Edge, Op, ResolveOp, Result, Vertex } from '../solver/types.ts';

/** A source's cache map computed ahead of a solve (`Worker.sourceCacheMap`). */
interface EarlySource {
  op: Op;
  map: Promise<CacheMap>;
  /** When its computation started and ended (../solver/progress.ts `now`). */
  started: number;
  ended?: number;
}

export interface WorkerOptions {
  core: Core;
  /** The OCI runtime; probed on first use when absent. */
  runtime?: OciRuntime;
  sessions?: Partial<Sessions>;
  images?: ImageResolver;
  /** Cache index; default `workerCache(core)`, which `close()` closes (a given one is the caller's). */
  cache?: CacheManager;
  /** Execs at once; default the solver's. */
  parallelism?: number;
  /** The solver's `onExecuted`: result ids of each vertex it ran. */
  onExecuted?: (vertex: Vertex, ids: readonly string[]) => void;
  /** Told the cache map of each source vertex (image, local, git, http) as the solver gets it. */
  onSourceCacheMap?: (vertex: Vertex, identifier: string, map: CacheMap) => void;
}

/** What a worker vertex carries in `sys`. */
export interface LlbVertexSys {
  readonly op: OpPb;
}

/** A readable name for an op when it has no custom name. */
export function opSummary(op: OpPb): string {
  switch (op.op.case) {
    case 'source':
      return op.op.value.identifier;
    case 'exec':
      return `exec ${summarizeArgs(op.op.value.meta?.args ?? [])}`;
    case 'file':
      return op.op.value.actions.map(describeAction).join(', ');
    case 'merge':
      return `merge (${op.op.value.inputs.length} inputs)`;
    case 'diff':
      return 'diff';
    default:
      return String(op.op.case);
  }
}

/** Whether result `id` (a committed snapshot of the core's namespace) is still there. */
async function resultExists(core: Core, id: string): Promise<boolean> {
  try {
    const info = await (await core.snapshotter()).stat(id);
    return info.kind === 'committed';
  } catch (err) {
    if (isKilnError(err, 'NotFound')) return false;
    throw err;
  }
}

/**
 * The cache index of a core's root (`<root>/cache.db`) as a worker uses it:
 * a record whose snapshot is gone from the core's namespace is a miss. A
 * worker opens its own unless given one; a long-lived process (kilnd) keeps
 * one per namespace for all its builds and closes it itself.
 */
export function workerCache(core: Core): SqliteCacheManager {
  return new SqliteCacheManager({ root: core.root, exists: (id) => resultExists(core, id) });
}

export class Worker {
  readonly core: Core;
  readonly sessions: Sessions;
  readonly solver: Solver;
  readonly cache: CacheManager;
  readonly env: OpEnv;
  readonly resolveOp: ResolveOp;
  #runtime: Promise<OciRuntime> | undefined;
  readonly #ownsCache: boolean;
  /** Source ops whose cache map `sourceCacheMap` started, by vertex digest. */
  readonly #sources = new Map<string, EarlySource>();

  constructor(opts: WorkerOptions) {
    this.core = opts.core;
    this.sessions = { locals: {}, secrets: {}, ...opts.sessions };
    if (opts.runtime) this.#runtime = Promise.resolve(opts.runtime);
    const checksums = new ContentChecksums(this.core);
    this.env = {
      core: this.core,
      sessions: this.sessions,
      runtime: () => this.runtime(),
      ...(opts.images ? { images: opts.images } : {}),
      checksums,
      stateDir: path.join(this.core.root, 'ops'),
      runDir: runDirFor(this.core.root),
    };
    const observe = opts.onSourceCacheMap;
    this.resolveOp = (vertex: Vertex): Op => {
      const sys = vertex.sys as LlbVertexSys;
      // A source whose cache map `sourceCacheMap` computed already: that op, and its answer.
      const early = this.#sources.get(vertex.digest);
      this.#sources.delete(vertex.digest);
      const op = early?.op ?? resolveLlbOp(this.env, sys.op, vertex.digest);
      if (sys.op.op.case !== 'source' || (!observe && !early)) return op;
      const { identifier } = sys.op.op.value;
      return {
        async cacheMap(ctx, index) {
          let map: CacheMap | undefined;
          if (early && index === 0) {
            // The time it took before this call is the vertex's too; what is left, the solver times.
            const workMs = (early.ended ?? now()) - early.started;
            const got = await early.map.catch(() => undefined);
            if (got) map = { ...got, workMs };
          }
          map ??= await op.cacheMap(ctx, index);
          observe?.(vertex, identifier, map);
          return map;
        },
        exec: (ctx, inputs) => op.exec(ctx, inputs),
      };
    };
    this.#ownsCache = opts.cache === undefined;
    this.cache = opts.cache ?? workerCache(this.core);
    this.solver = new Solver({
      resolveOp: this.resolveOp,
      cache: this.cache,
      loadResult: (id) => this.loadResult(id),
      ...(opts.parallelism !== undefined ? { parallelism: opts.parallelism } : {}),
      ...(opts.onExecuted ? { onExecuted: opts.onExecuted } : {}),
    });
  }

  runtime(): Promise<OciRuntime> {
    // The runtime containers use, chosen once per state directory (probed only the first time).
    this.#runtime ??= selectRuntime(this.core.root);
    this.#runtime.catch(() => {
      this.#runtime = undefined;
    });
    return this.#runtime;
  }

  /** A handle on the committed snapshot `id` (a cache index entry). */
  async loadResult(id: string): Promise<Result> {
    if (!(await resultExists(this.core, id)))
      throw errNotFound(`load result "${id}": no committed snapshot of that name`);
    return new SnapshotRef(id);
  }

  /**
   * Solver vertices for a definition; returns the edge of its output, or
   * undefined for an empty definition (scratch).
   */
  loadDefinition(def: Definition): Edge | undefined {
    const graph = parseDefinition(def);
    if (!graph.output) return undefined;
    const built = new Map<string, Vertex>();
    for (const v of graph.vertices) {
      const desc = v.metadata?.description ?? {};
      const vertex: Vertex = {
        digest: v.digest,
        inputs: v.op.inputs.map((i) => ({ vertex: built.get(i.digest)!, index: i.index })),
        name: desc['llb.customname'] || opSummary(v.op),
        options: {
          ...(v.metadata?.ignoreCache ? { ignoreCache: true } : {}),
          ...(Object.keys(desc).length > 0 ? { description: { ...desc } } : {}),
        },
        sys: { op: v.op } satisfies LlbVertexSys,
      };
      built.set(v.digest, vertex);
    }
    return { vertex: built.get(graph.output.digest)!, index: graph.output.index };
  }

  /**
   * The digest of the cache map of a source op given as its bytes in a
   * definition: what the solver gets for that vertex (../control/memo.ts).
   */
  async sourceCacheMap(bytes: Uint8Array, signal: AbortSignal): Promise<string> {
    const op = fromBinary(OpSchema, bytes);
    if (op.op.case !== 'source') throw errInvalidArgument('source cache map: not a source op');
    const digest = sha256(bytes);
    const vertex: Vertex = { digest, inputs: [], name: op.op.value.identifier, options: {}, sys: { op } };
    const impl = resolveLlbOp(this.env, op, digest);
    const started = now();
    const map = impl.cacheMap({ vertex, signal, progress: vertexWriter(digest, () => {}) }, 0);
    const early: EarlySource = { op: impl, map, started };
    // A solve of this worker that meets the same source uses this op and its answer, once: a
    // build that the memo did not answer does not checksum its context twice.
    this.#sources.set(digest, early);
    try {
      return (await early.map).digest;
    } finally {
      early.ended = now();
    }
  }

  /**
   * Milliseconds that `sourceCacheMap` took for the source of this vertex digest, while no solve
   * has taken its answer yet; undefined when it did not finish or was not asked.
   */
  sourceWorkMs(digest: string): number | undefined {
    const early = this.#sources.get(digest);
    return early?.ended === undefined ? undefined : early.ended - early.started;
  }

  /** Solves a definition; the caller releases the result (SCRATCH for an empty definition). */
  async solveDefinition(def: Definition, opts: SolveOptions = {}): Promise<Result> {
    const edge = this.loadDefinition(def);
    if (!edge) return SCRATCH;
    return this.solver.solve(edge, opts);
  }

  /**
   * Prunes the build cache: deletes cache records last used more than
   * `olderThanMs` ago (default 0: all), then removes every op result
   * snapshot (label `kiln.io/result`) that no remaining record names and
   * that has no children, repeating until nothing more can go (a result that
   * is the parent of a kept one stays), and the build memo entries whose
   * record is gone. Results held by a running solve
   * must not be pruned: call it when no solve is in progress. Returns the
   * removed snapshot names; disk space returns at the next `core.gc()`.
   */
  async prune(opts: { olderThanMs?: number; now?: number } = {}): Promise<string[]> {
    const cutoff = (opts.now ?? Date.now()) - (opts.olderThanMs ?? 0);
    const keep = new Set<string>();
    for (const rec of await this.cache.list()) {
      if (rec.lastUsedAt <= cutoff) await this.cache.delete(rec.key);
      else for (const id of rec.results) keep.add(id);
    }
    const sn = await this.core.snapshotter();
    const removed: string[] = [];
    for (;;) {
      const candidates: string[] = [];
      const parents = new Set<string>();
      await sn.walk((info) => {
        if (info.parent) parents.add(info.parent);
        if (info.kind === 'committed' && info.labels[LABEL_RESULT] !== undefined && !keep.has(info.name)) {
          candidates.push(info.name);
        }
      });
      const leaves = candidates.filter((n) => !parents.has(n));
      if (leaves.length === 0) break;
      for (const name of leaves) {
        await sn.remove(name);
        await this.cache.deleteResult(name);
        removed.push(name);
      }
    }
    // Build memo entries stand for the records they name: gone with them.
    await this.cache.pruneMemos?.();
    return removed;
  }

  /**
   * Startup recovery for a state directory this process owns (call it while
   * holding the root's lock, before solving): unmounts and deletes exec
   * bundles left by a crashed process (their secret tmpfs included) and stale
   * runtime containers. Temp mounts and half-made snapshots are the core's
   * recovery.
   */
  async recover(): Promise<void> {
    await removeStaleBundles(this.env.runDir, this.env.stateDir);
    if (this.#runtime) await (await this.#runtime).cleanupStale().catch(() => {});
  }

  /** Closes the cache index it opened (not one it was given). */
  close(): void {
    if (this.#ownsCache) this.cache.close();
  }
}
