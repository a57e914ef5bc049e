/**
 * The generic solver (BuildKit's design, written from its documentation): it
 * turns a target edge into a result by walking the target's ancestors, and it
 * meets concrete operations only through `resolveOp` (see types.ts).
 *
 * Per vertex, on demand (lazy: nothing outside the target's ancestry is
 * touched, and an input is solved only if its consumer misses the cache):
 * 1. definition key: the op's cache map (stage 0) and the inputs' definition
 *    keys (keys.ts). Looked up in the cache index first.
 * 2. content key, only when the vertex or an ancestor has a content-based dep:
 *    the inputs are solved, `computeDigestFunc` checksums the selected paths,
 *    other inputs contribute their content keys. Looked up second; a hit is
 *    also recorded under the definition key.
 * 3. exec: inputs solved (concurrently), one slot of the `parallelism`
 *    semaphore held during `op.exec`; the outputs are recorded under both keys.
 *
 * Sharing: vertex states live in one map keyed by vertex identity (keys.ts)
 * for as long as at least one solve needs them; a solve attaches to the whole
 * ancestry of its target up front (cheap, no work) so that two concurrent
 * solves share every common vertex: it runs once, its progress events go to
 * both (a late solve gets the events so far replayed), and each solve gets its
 * own clone of the result. When the last solve that needs a vertex goes away
 * (it finished, failed or was cancelled) the vertex state is removed, its
 * AbortSignal fires if it is still working (ops kill execs, unmount, release
 * leases), and its result handles are released once it has settled.
 * `solve()` settles only after the work it orphaned has settled, so a
 * cancelled or failed solve leaves no exec behind (for ops that honour the
 * signal).
 *
 * Errors: a failing vertex rejects with `SolveError` naming the vertex
 * (`vertex "RUN make" failed: ...`, original error as `cause`, code taken from
 * it); consumers pass it through unchanged. A cancelled solve rejects with a
 * `KilnError` of code `Canceled`.
 *
 * Limits: one cache-map stage per op; results of a solve's intermediate
 * vertices are held until the solve ends; an op that ignores its signal delays
 * a cancelled solve until it returns; attaching costs O(ancestry) per solve
 * (n concurrent solves of n vertices of one graph: quadratic, ~0.3 s of CPU
 * for 1,000, see bench/solver.ts); every event of a live vertex is kept for
 * replay to solves that join later.
 */
import os from 'node:os';
import { type ErrorCode, errInvalidArgument, isKilnError, KilnError } from '../core/errors.ts';
import type { CacheManager } from './cache.ts';
import { edgeKey, type KeyPart, vertexId, vertexKey } from './keys.ts';
import { now, type ProgressEvent, type ProgressSink, vertexWriter } from './progress.ts';
import { Semaphore } from './semaphore.ts';
import type { CacheMap, Edge, Op, OpContext, ResolveOp, Result, Vertex } from './types.ts';

export interface SolverOptions {
  resolveOp: ResolveOp;
  cache: CacheManager;
  /** Turns a result id read from the cache index back into a handle (e.g. a snapshot ref). */
  loadResult: (id: string, signal: AbortSignal) => Promise<Result>;
  /**
   * Ops running at once; default `defaultParallelism()`, four per CPU.
   * BuildKit sets no limit by default: independent stages all run at once
   * and the kernel shares the CPUs. One per CPU left a third CPU-bound stage
   * waiting for a free slot while the running two were slowed by each other
   * anyway (workload 2 of bench/build-suite: 2.14 s against BuildKit's 1.72).
   */
  parallelism?: number;
  /**
   * Told the result ids of each vertex this solver ran (not of those the
   * cache answered), once they are recorded and before dependants start.
   * It must not throw; work it starts must not hold the solve up.
   */
  onExecuted?: (vertex: Vertex, ids: readonly string[]) => void;
}

export interface SolveOptions {
  signal?: AbortSignal;
  /**
   * Receives this solve's progress (including events of shared vertices, and a
   * replay of those emitted before this solve joined); the solver never closes
   * it. Give each solve its own sink, or shared vertices' events arrive twice.
   */
  progress?: ProgressSink;
  /**
   * Told the target vertex's definition key and its outputs' result ids once
   * the solve succeeded: the cache record under that key holds those ids
   * (../control/memo.ts).
   */
  rootRecord?: (key: string, ids: string[]) => void;
}

/** A vertex failed; `vertex` says which, `cause` is the original error. */
export class SolveError extends KilnError {
  readonly vertex: { readonly digest: string; readonly name: string };

  constructor(vertex: Vertex, cause: unknown, canceled: boolean) {
    const code: ErrorCode = canceled ? 'Canceled' : isKilnError(cause) ? cause.code : 'Internal';
    const detail = canceled ? 'canceled' : cause instanceof Error ? cause.message : String(cause);
    super(code, `vertex "${vertex.name}" failed: ${detail}`, { cause });
    this.name = 'SolveError';
    this.vertex = { digest: vertex.digest, name: vertex.name };
  }
}

interface Session {
  readonly sink: ProgressSink | undefined;
  /** Every state this session is attached to (each once). */
  readonly states: VertexState[];
}

interface DefInfo {
  readonly cacheMap: CacheMap;
  readonly key: string;
  /** The vertex or an ancestor has a content-based dep: the content key may differ. */
  readonly contentSensitive: boolean;
}

/** Internal services a vertex state needs from its solver. */
interface Env {
  readonly options: SolverOptions;
  readonly semaphore: Semaphore;
}

/** A source's cache map that took this long did work its progress shows (VertexState.#keyTime). */
export const KEY_WORK_MS = 50;

/** One vertex's shared work, for as long as some solve needs it. */
class VertexState {
  readonly id: string;
  readonly vertex: Vertex;
  readonly sessions = new Set<Session>();
  readonly events: ProgressEvent[] = [];
  /** The states of the inputs, in input order; they live at least as long as this one. */
  readonly inputs: readonly VertexState[];
  readonly #env: Env;
  readonly #controller = new AbortController();
  readonly #ctx: OpContext;
  #op: Op | undefined;
  #def: Promise<DefInfo> | undefined;
  #content: Promise<string> | undefined;
  #result: Promise<Result[]> | undefined;
  /**
   * Milliseconds a vertex without inputs (a source) spent computing its cache map (including the
   * map's own `workMs`), when that took KEY_WORK_MS or more: that is its own work (a local
   * source checksums its files there), so its progress shows it, ending at the start of its load
   * or run. Shorter times are left out, so that the intervals of vertices run one after another
   * do not overlap.
   */
  #keyTime = 0;
  #released = false;
  #disposed = false;
  #errorEmitted = false;

  constructor(env: Env, id: string, vertex: Vertex, inputs: VertexState[]) {
    this.#env = env;
    this.id = id;
    this.vertex = vertex;
    this.inputs = inputs;
    this.#ctx = {
      vertex,
      signal: this.#controller.signal,
      progress: vertexWriter(vertex.digest, (ev) => this.emit(ev)),
    };
  }

  emit(ev: ProgressEvent): void {
    this.events.push(ev);
    for (const s of this.sessions) {
      try {
        s.sink?.write(ev);
      } catch {
        // A broken progress consumer must not fail the build.
      }
    }
  }

  #input(j: number): VertexState {
    if (this.#disposed) throw new KilnError('Canceled', `vertex "${this.vertex.name}" is no longer needed`);
    return this.inputs[j];
  }

  #resolve(): Op {
    this.#op ??= this.#env.options.resolveOp(this.vertex);
    return this.#op;
  }

  #fail(err: unknown): never {
    if (err instanceof SolveError) throw err;
    const wrapped = new SolveError(this.vertex, err, this.#controller.signal.aborted);
    if (!this.#errorEmitted) {
      this.#errorEmitted = true;
      const t = now();
      const { digest, name } = this.vertex;
      this.emit({ type: 'vertex', digest, name, started: t, completed: t, error: wrapped.message });
    }
    throw wrapped;
  }

  def(): Promise<DefInfo> {
    this.#def ??= this.#computeDef().catch((err: unknown) => this.#fail(err));
    return this.#def;
  }

  content(): Promise<string> {
    this.#content ??= this.#computeContent().catch((err: unknown) => this.#fail(err));
    return this.#content;
  }

  result(): Promise<Result[]> {
    this.#result ??= this.#computeResult().catch((err: unknown) => this.#fail(err));
    return this.#result;
  }

  /** A new handle on output `index` (the caller releases it). */
  async output(index: number): Promise<Result> {
    const outs = await this.result();
    if (this.#released) throw new SolveError(this.vertex, this.#controller.signal.reason, true);
    const r = outs[index];
    if (!r) {
      throw new SolveError(
        this.vertex,
        errInvalidArgument(`output ${index} requested, op has ${outs.length} output(s)`),
        false,
      );
    }
    return r.clone();
  }

  async #computeDef(): Promise<DefInfo> {
    await Promise.resolve(); // start on a fresh stack: deep graphs must not recurse synchronously
    const op = this.#resolve();
    const keyStart = this.vertex.inputs.length === 0 ? now() : undefined;
    const [cacheMap, inputDefs] = await Promise.all([
      op.cacheMap(this.#ctx, 0),
      Promise.all(this.vertex.inputs.map((_, j) => this.#input(j).def())),
    ]);
    if (keyStart !== undefined) {
      const ms = now() - keyStart + (cacheMap.workMs ?? 0);
      if (ms >= KEY_WORK_MS) this.#keyTime = ms;
    }
    if (cacheMap.deps.length > this.vertex.inputs.length) {
      throw errInvalidArgument(
        `cache map has ${cacheMap.deps.length} deps for ${this.vertex.inputs.length} input(s)`,
      );
    }
    const parts = this.vertex.inputs.map((e, j) => ({ key: edgeKey(inputDefs[j].key, e.index) }));
    const contentSensitive =
      cacheMap.deps.some((d) => d?.computeDigestFunc !== undefined) ||
      inputDefs.some((d) => d.contentSensitive);
    return { cacheMap, key: vertexKey(cacheMap.digest, parts), contentSensitive };
  }

  async #computeContent(): Promise<string> {
    const def = await this.def();
    if (!def.contentSensitive) return def.key;
    const signal = this.#controller.signal;
    const parts = await Promise.all(
      this.vertex.inputs.map(async (e, j): Promise<KeyPart> => {
        const dep = def.cacheMap.deps[j];
        const input = this.#input(j);
        if (dep?.computeDigestFunc) {
          const r = await input.output(e.index);
          try {
            signal.throwIfAborted();
            return {
              selector: dep.selector ?? '',
              checksum: await dep.computeDigestFunc(r, dep.selector, signal),
            };
          } finally {
            await r.release();
          }
        }
        return { key: edgeKey(await input.content(), e.index) };
      }),
    );
    return vertexKey(def.cacheMap.digest, parts);
  }

  /** Loads a cache record's results, or undefined on a miss. */
  async #load(key: string): Promise<Result[] | undefined> {
    const started = now() - this.#keyTime;
    const ids = await this.#env.options.cache.load(key);
    if (!ids) return undefined;
    const signal = this.#controller.signal;
    const loaded = await Promise.allSettled(ids.map((id) => this.#env.options.loadResult(id, signal)));
    const results = loaded.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = loaded.find((r) => r.status === 'rejected');
    if (failed || signal.aborted) {
      await releaseAll(results);
      signal.throwIfAborted();
      throw (failed as PromiseRejectedResult).reason;
    }
    this.emit({
      type: 'vertex',
      digest: this.vertex.digest,
      name: this.vertex.name,
      started,
      completed: now(),
      cached: true,
    });
    return results;
  }

  async #computeResult(): Promise<Result[]> {
    const def = await this.def();
    const { cache } = this.#env.options;
    const useCache = this.vertex.options.ignoreCache !== true;
    if (useCache) {
      const hit = await this.#load(def.key);
      if (hit) return hit;
    }
    let contentKey: string | undefined;
    if (def.contentSensitive) {
      contentKey = await this.content();
      if (contentKey !== def.key && useCache) {
        const hit = await this.#load(contentKey);
        if (hit) {
          await cache.save(
            def.key,
            hit.map((r) => r.id),
          );
          return hit;
        }
      }
    }
    return this.#exec(def, contentKey);
  }

  async #exec(def: DefInfo, contentKey: string | undefined): Promise<Result[]> {
    const signal = this.#controller.signal;
    const inputs = await allOrRelease(this.vertex.inputs.map((e, j) => this.#input(j).output(e.index)));
    try {
      const release = await this.#env.semaphore.acquire(signal);
      try {
        return await this.#run(def, contentKey, inputs);
      } finally {
        release();
      }
    } finally {
      await releaseAll(inputs);
    }
  }

  /** op.exec with its progress events, then the cache records. */
  async #run(def: DefInfo, contentKey: string | undefined, inputs: Result[]): Promise<Result[]> {
    const signal = this.#controller.signal;
    const { digest, name } = this.vertex;
    const started = now() - this.#keyTime;
    this.emit({ type: 'vertex', digest, name, started });
    let outputs: Result[] = [];
    try {
      outputs = await this.#resolve().exec(this.#ctx, inputs);
      signal.throwIfAborted();
      if (outputs.length === 0) throw errInvalidArgument('op returned no outputs');
      const ids = outputs.map((r) => r.id);
      await this.#env.options.cache.save(def.key, ids);
      if (contentKey !== undefined && contentKey !== def.key)
        await this.#env.options.cache.save(contentKey, ids);
      this.#env.options.onExecuted?.(this.vertex, ids);
    } catch (err) {
      this.#errorEmitted = true;
      const error = signal.aborted ? 'canceled' : err instanceof Error ? err.message : String(err);
      this.emit({ type: 'vertex', digest, name, started, completed: now(), error });
      await releaseAll(outputs).catch(() => {});
      throw err;
    }
    this.emit({ type: 'vertex', digest, name, started, completed: now() });
    return outputs;
  }

  /**
   * Called once, when no solve needs this vertex any more: stops its work and
   * releases its results once everything it started has settled.
   */
  async dispose(): Promise<void> {
    this.#disposed = true;
    this.#controller.abort(new KilnError('Canceled', `vertex "${this.vertex.name}" is no longer needed`));
    const pending = [this.#def, this.#content].filter((p) => p !== undefined);
    await Promise.allSettled(pending);
    if (this.#result) {
      try {
        const outs = await this.#result;
        this.#released = true;
        await releaseAll(outs);
      } catch {
        // The failure was reported to the solves that waited for it.
      }
    }
    this.#released = true;
  }
}

/** Promise.all that fails fast and then releases the handles that still arrive. */
async function allOrRelease(handles: Promise<Result>[]): Promise<Result[]> {
  try {
    return await Promise.all(handles);
  } catch (err) {
    for (const p of handles) {
      void p.then(
        (r) => r.release().catch(() => {}),
        () => {},
      );
    }
    throw err;
  }
}

async function releaseAll(results: readonly Result[]): Promise<void> {
  const errs = (await Promise.allSettled(results.map((r) => r.release()))).filter(
    (r) => r.status === 'rejected',
  );
  if (errs.length > 0) throw (errs[0] as PromiseRejectedResult).reason;
}

function canceled(target: Vertex, reason: unknown): KilnError {
  return new KilnError('Canceled', `solve of "${target.name}" canceled`, { cause: reason });
}

/** The solver's default limit on ops running at once: four per CPU. */
export function defaultParallelism(): number {
  return 4 * os.availableParallelism();
}

export class Solver {
  readonly #states = new Map<string, VertexState>();
  readonly #env: Env;

  constructor(options: SolverOptions) {
    const parallelism = options.parallelism ?? defaultParallelism();
    this.#env = { options, semaphore: new Semaphore(parallelism) };
  }

  /** Vertex states alive right now (shared work of solves in progress). */
  get activeVertices(): number {
    return this.#states.size;
  }

  /**
   * Solves `target` and returns a new handle on its result (the caller
   * releases it). See the module comment for sharing, caching and cancellation.
   */
  async solve(target: Edge, opts: SolveOptions = {}): Promise<Result> {
    const { signal } = opts;
    if (signal?.aborted) throw canceled(target.vertex, signal.reason);
    const session: Session = { sink: opts.progress, states: [] };
    let onAbort: (() => void) | undefined;
    try {
      const state = this.#attach(session, target.vertex);
      const work = state.output(target.index);
      const aborted = new Promise<never>((_, reject) => {
        onAbort = () => reject(canceled(target.vertex, signal?.reason));
        signal?.addEventListener('abort', onAbort, { once: true });
      });
      try {
        const result = await Promise.race([work, aborted]);
        if (opts.rootRecord) {
          const [def, outs] = await Promise.all([state.def(), state.result()]);
          opts.rootRecord(
            def.key,
            outs.map((r) => r.id),
          );
        }
        return result;
      } catch (err) {
        // If the abort won the race, the handle that may still arrive is ours to release.
        void work.then(
          (r) => r.release().catch(() => {}),
          () => {},
        );
        throw err;
      }
    } finally {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      await this.#detach(session);
    }
  }

  /** The live state of a vertex, creating it and the missing states of its ancestry (iteratively). */
  #stateFor(root: Vertex): VertexState {
    const known = this.#states.get(vertexId(root));
    if (known) return known;
    const stack: { v: Vertex; expanded: boolean }[] = [{ v: root, expanded: false }];
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const id = vertexId(top.v);
      if (this.#states.has(id)) {
        stack.pop();
      } else if (!top.expanded) {
        top.expanded = true;
        for (const e of top.v.inputs) {
          if (!this.#states.has(vertexId(e.vertex))) stack.push({ v: e.vertex, expanded: false });
        }
      } else {
        stack.pop();
        const inputs = top.v.inputs.map((e) => this.#states.get(vertexId(e.vertex))!);
        this.#states.set(id, new VertexState(this.#env, id, top.v, inputs));
      }
    }
    return this.#states.get(vertexId(root))!;
  }

  /** Attaches a session to every vertex state in the target's ancestry (iteratively). */
  #attach(session: Session, target: Vertex): VertexState {
    const root = this.#stateFor(target);
    const stack = [root];
    while (stack.length > 0) {
      const st = stack.pop()!;
      if (st.sessions.has(session)) continue;
      st.sessions.add(session);
      session.states.push(st);
      if (session.sink) {
        for (const ev of st.events) {
          try {
            session.sink.write(ev);
          } catch {
            // A broken progress consumer must not fail the build.
          }
        }
      }
      for (const input of st.inputs) if (!input.sessions.has(session)) stack.push(input);
    }
    return root;
  }

  async #detach(session: Session): Promise<void> {
    const orphans: Promise<void>[] = [];
    for (const st of session.states) {
      if (st.sessions.size > 1) {
        st.sessions.delete(session);
        continue;
      }
      // The last solve that needs this vertex: it gets the events of the teardown (e.g. "canceled").
      if (this.#states.get(st.id) === st) this.#states.delete(st.id);
      orphans.push(st.dispose().finally(() => st.sessions.delete(session)));
    }
    session.states.length = 0;
    await Promise.all(orphans);
  }
}
