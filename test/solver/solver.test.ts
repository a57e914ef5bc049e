/**
 * The generic solver with real work (test/solver/testops.ts: real files, real
 * `sh` processes): concurrency seen in progress intervals, the SQLite cache
 * index across Solver instances, content-based keys, laziness, sharing of a
 * vertex between concurrent solves, cancellation that kills the process, and
 * errors that name the vertex.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { MemoryCacheManager, SqliteCacheManager } from '../../src/solver/cache.ts';
import { type ProgressEvent, ProgressChannel, type VertexEvent } from '../../src/solver/progress.ts';
import { SolveError, Solver } from '../../src/solver/solver.ts';
import type { CacheMap, Result, Vertex } from '../../src/solver/types.ts';
import { alive, DirStore, edge, processesInGroup, TestOps, vertex } from './testops.ts';

let base: string;
before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-solver-'));
});
after(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

let n = 0;
async function setup(parallelism: number | 'default' = 4): Promise<{
  root: string;
  ops: TestOps;
  store: DirStore;
  cache: MemoryCacheManager;
  solver: Solver;
}> {
  const root = path.join(base, `t${n++}`);
  await fs.mkdir(root, { recursive: true });
  const store = new DirStore(root);
  const ops = new TestOps(store);
  const cache = new MemoryCacheManager({ exists: (id) => store.exists(id) });
  const solver = new Solver({
    resolveOp: ops.resolve,
    cache,
    loadResult: (id) => store.load(id),
    ...(parallelism === 'default' ? {} : { parallelism }),
  });
  return { root, ops, store, cache, solver };
}

/** A solver whose vertex named "RUN source" answers its cache map through `wrap` (given the op's own). */
async function sourceMapSolver(wrap: (map: () => Promise<CacheMap>) => Promise<CacheMap>): Promise<Solver> {
  const root = path.join(base, `t${n++}`);
  await fs.mkdir(root, { recursive: true });
  const store = new DirStore(root);
  const ops = new TestOps(store);
  return new Solver({
    resolveOp: (v) => {
      const op = ops.resolve(v);
      if (v.name !== 'RUN source') return op;
      return {
        ...op,
        cacheMap: (...args: Parameters<typeof op.cacheMap>) => wrap(() => op.cacheMap(...args)),
      };
    },
    cache: new MemoryCacheManager({ exists: (id) => store.exists(id) }),
    loadResult: (id) => store.load(id),
  });
}

function run(name: string, script: string, inputs: Vertex[] = [], options = {}): Vertex {
  return vertex(name, { kind: 'run', script }, inputs, options);
}

function vertexEvents(events: ProgressEvent[], v: Vertex): VertexEvent[] {
  return events.filter((e): e is VertexEvent => e.type === 'vertex' && e.digest === v.digest);
}

/** The [started, completed] interval of an executed vertex, from its progress events. */
function interval(events: ProgressEvent[], v: Vertex): [number, number] {
  const done = vertexEvents(events, v).find((e) => e.completed !== undefined && !e.cached);
  assert.ok(done?.started !== undefined && done.completed !== undefined, `no exec interval for "${v.name}"`);
  return [done.started, done.completed];
}

async function readResult(r: Result, file: string): Promise<string> {
  return fs.readFile(path.join(r.sys as string, file), 'utf8');
}

async function solveAndRead(solver: Solver, target: Vertex, file: string, progress?: ProgressChannel) {
  const r = await solver.solve(edge(target), { progress });
  try {
    return await readResult(r, file);
  } finally {
    await r.release();
  }
}

/** Waits until a log line containing `text` arrives; fails (instead of hanging) if the solve ends first. */
async function untilLog(ch: ProgressChannel, work: Promise<unknown>, text: string): Promise<void> {
  work.then(
    () => ch.close(),
    () => ch.close(),
  );
  for await (const ev of ch) {
    if (ev.type === 'log' && new TextDecoder().decode(ev.data).includes(text)) return;
  }
  throw new Error(`the solve ended before logging "${text}"`);
}

describe('solver', { timeout: 60_000 }, () => {
  it('runs independent vertices at the same time (their exec intervals overlap)', async () => {
    const { ops, store, solver } = await setup(2);
    const a = run('RUN a', 'sleep 0.3; echo a > a');
    const b = run('RUN b', 'sleep 0.3; echo b > b');
    const both = run('RUN both', 'cat a b > both', [a, b]);
    const ch = new ProgressChannel();
    assert.equal(await solveAndRead(solver, both, 'both', ch), 'a\nb\n');
    ch.close();
    const events = ch.events();
    const [a0, a1] = interval(events, a);
    const [b0, b1] = interval(events, b);
    assert.ok(a0 < b1 && b0 < a1, `intervals [${a0}, ${a1}] and [${b0}, ${b1}] do not overlap`);
    // The consumer starts only after both inputs completed.
    const [c0] = interval(events, both);
    assert.ok(c0 >= Math.max(a1, b1));
    assert.equal(ops.execCount(), 3);
    assert.equal(store.live, 0);
    assert.equal(solver.activeVertices, 0);
  });

  it('respects the parallelism limit (intervals of a limit-1 solver do not overlap)', async () => {
    const { solver } = await setup(1);
    const a = run('RUN a', 'sleep 0.1; echo a > a');
    const b = run('RUN b', 'sleep 0.1; echo b > b');
    const both = run('RUN both', 'cat a b > both', [a, b]);
    const ch = new ProgressChannel();
    assert.equal(await solveAndRead(solver, both, 'both', ch), 'a\nb\n');
    const [a0, a1] = interval(ch.events(), a);
    const [b0, b1] = interval(ch.events(), b);
    assert.ok(a1 <= b0 || b1 <= a0, 'two execs ran at once with parallelism 1');
  });

  it("shows a source's slow cache map in its progress, and an input's in its consumer's not", async () => {
    // A cache map that works 200 ms (as a local source's checksum of its files does).
    const solver = await sourceMapSolver(async (map) => {
      await new Promise((r) => setTimeout(r, 200));
      return map();
    });
    const src = run('RUN source', 'echo s > s');
    const use = run('RUN use', 'cat s > u', [src]);
    const ch = new ProgressChannel();
    const t0 = Date.now();
    assert.equal(await solveAndRead(solver, use, 'u', ch), 's\n');
    const [s0, s1] = interval(ch.events(), src);
    const [u0] = interval(ch.events(), use);
    assert.ok(s1 - s0 >= 190, `the source's interval [${s0}, ${s1}] leaves out its cache map`);
    assert.ok(s0 >= t0 - 5, 'the source starts when its cache map did');
    assert.ok(u0 >= s1, 'the consumer starts after its input, not when it began waiting for its key');
  });

  it("counts the time a source's cache map took before the solve asked for it (workMs)", async () => {
    // A map computed ahead (as the build memo's check does with a local source): it answers at
    // once and says it took 200 ms.
    const solver = await sourceMapSolver(async (map) => ({ ...(await map()), workMs: 200 }));
    const src = run('RUN source', 'echo s > s');
    const ch = new ProgressChannel();
    const t0 = Date.now();
    assert.equal(await solveAndRead(solver, src, 's', ch), 's\n');
    const [s0, s1] = interval(ch.events(), src);
    assert.ok(s1 - s0 >= 195, `the source's interval [${s0}, ${s1}] includes the 200 ms of its map`);
    assert.ok(s0 <= t0 - 150, 'it starts before the solve did, when its map was computed');
  });

  it('runs more independent ops at once than there are CPUs by default (BuildKit sets no limit)', async () => {
    const { solver } = await setup('default');
    // One more than the CPUs, each sleeping long enough that a queued one would start after the others ended.
    const count = os.availableParallelism() + 1;
    const parts = Array.from({ length: count }, (_, i) => run(`RUN p${i}`, `sleep 0.3; echo ${i} > p${i}`));
    const all = run('RUN all', `cat ${parts.map((_, i) => `p${i}`).join(' ')} > all`, parts);
    const ch = new ProgressChannel();
    await solveAndRead(solver, all, 'all', ch);
    const spans = parts.map((p) => interval(ch.events(), p));
    const lastStart = Math.max(...spans.map(([s]) => s));
    const firstEnd = Math.min(...spans.map(([, e]) => e));
    assert.ok(lastStart < firstEnd, `the ${count} ops did not all run at once: ${JSON.stringify(spans)}`);
  });

  it('solves a second time from the SQLite cache index with no exec, across Solver instances', async () => {
    const root = path.join(base, `t${n++}`);
    const store = new DirStore(root);
    const ctx = path.join(root, 'ctx');
    await fs.mkdir(path.join(ctx, 'src'), { recursive: true });
    await fs.writeFile(path.join(ctx, 'src', 'main.c'), 'int main;\n');
    const local = vertex('local ctx', { kind: 'local', dir: ctx, session: 'fixed' });
    const copy = vertex('COPY src', { kind: 'copy', path: 'src' }, [local]);
    const base1 = run('RUN base', 'echo base > base');
    const build = run('RUN build', 'cat src/main.c base > out', [copy, base1]);

    const first = new TestOps(store);
    const cache1 = new SqliteCacheManager({ root, exists: (id) => store.exists(id) });
    const s1 = new Solver({ resolveOp: first.resolve, cache: cache1, loadResult: (id) => store.load(id) });
    assert.equal(await solveAndRead(s1, build, 'out'), 'int main;\nbase\n');
    assert.deepEqual(
      [...first.execs.keys()].sort(),
      ['COPY src', 'RUN base', 'RUN build', 'local ctx'],
      'the cold solve executes every vertex',
    );
    cache1.close();

    const second = new TestOps(store);
    const cache2 = new SqliteCacheManager({ root, exists: (id) => store.exists(id) });
    const s2 = new Solver({ resolveOp: second.resolve, cache: cache2, loadResult: (id) => store.load(id) });
    const ch = new ProgressChannel();
    assert.equal(await solveAndRead(s2, build, 'out', ch), 'int main;\nbase\n');
    assert.equal(second.execCount(), 0, 'no exec on the second solve');
    // Lazy: the target hit, so no input result was loaded; only the target is reported, as cached.
    const reported = ch.events().filter((e): e is VertexEvent => e.type === 'vertex');
    assert.deepEqual(
      reported.map((e) => [e.name, e.cached]),
      [['RUN build', true]],
    );
    const records = await cache2.list();
    assert.ok(records.length >= 4);
    for (const rec of records) assert.ok(rec.lastUsedAt >= rec.createdAt);

    // A record whose result is gone is a miss: only that vertex runs again, its inputs are loaded.
    const third = new TestOps(store);
    const s3 = new Solver({ resolveOp: third.resolve, cache: cache2, loadResult: (id) => store.load(id) });
    const r = await s2.solve(edge(build));
    const gone = r.id;
    await r.release();
    await fs.rm(store.dir(gone), { recursive: true });
    assert.equal(await solveAndRead(s3, build, 'out'), 'int main;\nbase\n');
    assert.deepEqual([...third.execs.entries()], [['RUN build', 1]]);
    cache2.close();
    assert.equal(store.live, 0);
  });

  it('does not invalidate a copy of src/ when docs/ changes, and does when src/ changes', async () => {
    const { root, ops, solver } = await setup();
    const ctx = path.join(root, 'ctx');
    await fs.mkdir(path.join(ctx, 'src'), { recursive: true });
    await fs.mkdir(path.join(ctx, 'docs'), { recursive: true });
    await fs.writeFile(path.join(ctx, 'src', 'a.txt'), 'one\n');
    await fs.writeFile(path.join(ctx, 'docs', 'README'), 'docs v1\n');
    // Each build session sends the context again: the local source's key is new every time.
    const graph = (session: string) => {
      const local = vertex('local ctx', { kind: 'local', dir: ctx, session });
      const copy = vertex('COPY src', { kind: 'copy', path: 'src' }, [local]);
      return run('RUN cat', 'cat src/a.txt > out; echo done >> out', [copy]);
    };
    const execs = () => Object.fromEntries(ops.execs);

    assert.equal(await solveAndRead(solver, graph('s1'), 'out'), 'one\ndone\n');
    assert.deepEqual(execs(), { 'local ctx': 1, 'COPY src': 1, 'RUN cat': 1 });

    await fs.writeFile(path.join(ctx, 'docs', 'README'), 'docs v2\n');
    assert.equal(await solveAndRead(solver, graph('s2'), 'out'), 'one\ndone\n');
    assert.deepEqual(
      execs(),
      { 'local ctx': 2, 'COPY src': 1, 'RUN cat': 1 },
      'docs/ change re-ran the copy',
    );

    await fs.writeFile(path.join(ctx, 'src', 'a.txt'), 'two\n');
    assert.equal(await solveAndRead(solver, graph('s3'), 'out'), 'two\ndone\n');
    assert.deepEqual(execs(), { 'local ctx': 3, 'COPY src': 2, 'RUN cat': 2 }, 'src/ change must re-run');

    // The content-key hit was linked under the definition key: the same session hits directly.
    const before = ops.execCount();
    assert.equal(await solveAndRead(solver, graph('s3'), 'out'), 'two\ndone\n');
    assert.equal(ops.execCount(), before);
  });

  it('is lazy: vertices outside the target ancestry are never touched', async () => {
    const { ops, solver } = await setup();
    const shared = run('RUN shared', 'echo s > s');
    const wanted = run('RUN wanted', 'cat s > w', [shared]);
    const other = run('RUN other', 'echo o > o', [shared]);
    assert.equal(await solveAndRead(solver, wanted, 'w'), 's\n');
    assert.equal(ops.execCount('RUN other'), 0);
    assert.equal(
      ops.cacheMaps.get(other.name),
      undefined,
      'the op of a vertex outside the graph was resolved',
    );
    assert.equal(ops.execCount(), 2);
  });

  it('runs a vertex shared by two concurrent solves once, and both get its events and result', async () => {
    const { ops, store, solver } = await setup();
    const s = run('RUN shared', 'sleep 0.3; echo shared > s');
    const t1 = run('RUN t1', 'cat s > t1', [s]);
    const t2 = run('RUN t2', 'cat s > t2', [s]);
    const ch1 = new ProgressChannel();
    const ch2 = new ProgressChannel();
    const [o1, o2] = await Promise.all([
      solveAndRead(solver, t1, 't1', ch1),
      solveAndRead(solver, t2, 't2', ch2),
    ]);
    assert.equal(o1, 'shared\n');
    assert.equal(o2, 'shared\n');
    assert.equal(ops.execCount('RUN shared'), 1);
    assert.equal(ops.execCount(), 3);
    for (const ch of [ch1, ch2]) {
      const evs = vertexEvents(ch.events(), s);
      assert.ok(evs.some((e) => e.started !== undefined && e.completed === undefined));
      assert.ok(evs.some((e) => e.completed !== undefined && !e.cached && !e.error));
    }
    // The same whole definition solved twice at once also runs once.
    const u = run('RUN same', 'sleep 0.2; echo same > u');
    const outs = await Promise.all([solveAndRead(solver, u, 'u'), solveAndRead(solver, u, 'u')]);
    assert.deepEqual(outs, ['same\n', 'same\n']);
    assert.equal(ops.execCount('RUN same'), 1);
    assert.equal(store.live, 0);
    assert.equal(solver.activeVertices, 0);
  });

  it('cancels mid-exec: the process group is killed, handles released, rejects with Canceled', async () => {
    const { ops, store, solver } = await setup();
    const ready = run('RUN ready', 'echo ready > ready');
    const slow = run('RUN slow', 'sleep 30 & echo started; wait; echo never > never', [ready]);
    const ch = new ProgressChannel();
    const ac = new AbortController();
    const solving = solver.solve(edge(slow), { signal: ac.signal, progress: ch });
    await untilLog(ch, solving, 'started');
    const pid = ops.pids.at(-1)!;
    assert.ok(alive(pid));
    assert.ok((await processesInGroup(pid)).length >= 2, 'sh and sleep should be running');
    ac.abort();
    await assert.rejects(solving, (err) => isKilnError(err, 'Canceled'));
    assert.equal(alive(pid), false, `process ${pid} survived the cancel`);
    assert.deepEqual(await processesInGroup(pid), [], 'a process of the exec survived the cancel');
    assert.equal(store.live, 0, 'result handles leaked');
    assert.equal(solver.activeVertices, 0);
    const last = vertexEvents(ch.events(), slow).at(-1);
    assert.equal(last?.error, 'canceled');
    // The finished input was recorded, the cancelled exec was not.
    assert.equal(ops.execCount('RUN ready'), 1);
  });

  it('cancels a vertex still waiting for an execution slot without starting it', async () => {
    const { ops, store, solver } = await setup(1);
    const a = run('RUN a', 'sleep 30 & echo running; wait');
    const b = run('RUN b', 'sleep 30 & echo running; wait');
    const both = run('RUN both', 'true', [a, b]);
    const ac = new AbortController();
    const ch = new ProgressChannel();
    const solving = solver.solve(edge(both), { signal: ac.signal, progress: ch });
    await untilLog(ch, solving, 'running');
    ac.abort();
    await assert.rejects(solving, (err) => isKilnError(err, 'Canceled'));
    assert.equal(ops.pids.length, 1, 'the queued vertex started despite parallelism 1');
    assert.equal(ops.execCount(), 1);
    assert.deepEqual(await processesInGroup(ops.pids[0]), []);
    assert.equal(store.live, 0);
    assert.equal(solver.activeVertices, 0);
  });

  it('keeps a shared vertex running for the other solve when one solve is cancelled', async () => {
    const { ops, store, solver } = await setup();
    const s = run('RUN shared', 'echo go; sleep 0.5; echo shared > s');
    const t1 = run('RUN t1', 'cat s > t1', [s]);
    const t2 = run('RUN t2', 'cat s > t2', [s]);
    const ac = new AbortController();
    const ch = new ProgressChannel();
    const p1 = solver.solve(edge(t1), { signal: ac.signal, progress: ch });
    const p2 = solveAndRead(solver, t2, 't2');
    await untilLog(ch, p1, 'go');
    ac.abort();
    await assert.rejects(p1, (err) => isKilnError(err, 'Canceled'));
    assert.equal(await p2, 'shared\n');
    assert.equal(ops.execCount('RUN shared'), 1);
    assert.equal(ops.execCount('RUN t1'), 0);
    assert.equal(store.live, 0);
    assert.equal(solver.activeVertices, 0);
  });

  it('rejects with a SolveError naming the failed vertex and stops its running siblings', async () => {
    const { ops, store, solver } = await setup();
    const make = run('RUN make', 'sleep 0.1; echo oops >&2; exit 3');
    const sibling = run('RUN sibling', 'echo sib; sleep 30; echo sib > sib');
    const both = run('RUN both', 'true', [make, sibling]);
    const ch = new ProgressChannel();
    const err = await solver.solve(edge(both), { progress: ch }).then(
      () => assert.fail('solve should fail'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof SolveError);
    assert.match(err.message, /^vertex "RUN make" failed: process "sh -c .*" exited with 3$/);
    assert.deepEqual(err.vertex, { digest: make.digest, name: 'RUN make' });
    assert.ok(err.cause instanceof Error);
    assert.equal(ops.pids.length, 2);
    for (const pid of ops.pids) {
      assert.equal(alive(pid), false, `process ${pid} survived`);
      assert.deepEqual(await processesInGroup(pid), [], `a process of group ${pid} survived`);
    }
    assert.equal(ops.execCount('RUN both'), 0);
    const events = ch.events();
    assert.ok(vertexEvents(events, make).some((e) => e.error?.includes('exited with 3')));
    assert.ok(
      events.some((e) => e.type === 'log' && e.stream === 2 && new TextDecoder().decode(e.data) === 'oops\n'),
    );
    assert.equal(store.live, 0);
    assert.equal(solver.activeVertices, 0);
  });

  it('streams status and log events of a shared vertex to every solve, replaying them to a late one', async () => {
    const { store, cache } = await setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const pull: Vertex = { digest: 'sha256:pull', name: 'pull img', inputs: [], options: {}, sys: 'pull' };
    const solver = new Solver({
      cache,
      loadResult: (id) => store.load(id),
      resolveOp: (v) => ({
        cacheMap: async () => ({ digest: v.digest, deps: [] }),
        exec: async (ctx) => {
          ctx.progress.status('layer-1', { current: 0, total: 10, started: 1 });
          ctx.progress.log(1, 'pulling\n');
          await gate;
          ctx.progress.status('layer-1', { current: 10, total: 10, started: 1, completed: 2 });
          const out = await store.create();
          return [store.handle(out.id)];
        },
      }),
    });
    const early = new ProgressChannel();
    const p1 = solver.solve(edge(pull), { progress: early });
    await untilLog(early, p1, 'pulling');
    const late = new ProgressChannel();
    const p2 = solver.solve(edge(pull), { progress: late });
    release();
    const results = await Promise.all([p1, p2]);
    await Promise.all(results.map((r) => r.release()));
    for (const ch of [early, late]) {
      const kinds = ch
        .events()
        .map((e) => (e.type === 'status' ? `status ${e.id} ${e.current}/${e.total}` : e.type));
      assert.deepEqual(kinds, ['vertex', 'status layer-1 0/10', 'log', 'status layer-1 10/10', 'vertex']);
      for (const e of ch.events()) assert.equal(e.type === 'vertex' ? e.digest : e.vertex, pull.digest);
    }
    assert.equal(store.live, 0);
  });

  it('caches every output of a multi-output op and refuses an output it does not have', async () => {
    const { store, cache } = await setup();
    let execs = 0;
    const solver = new Solver({
      cache,
      loadResult: (id) => store.load(id),
      resolveOp: (v) => ({
        cacheMap: async () => ({ digest: v.digest, deps: [] }),
        exec: async () => {
          execs++;
          const outs = [];
          for (const text of ['zero', 'one']) {
            const out = await store.create();
            await fs.writeFile(path.join(out.dir, 'f'), text);
            outs.push(store.handle(out.id));
          }
          return outs;
        },
      }),
    });
    const two: Vertex = { digest: 'sha256:two', name: 'RUN two outputs', inputs: [], options: {}, sys: null };
    const read = async (index: number) => {
      const r = await solver.solve({ vertex: two, index });
      try {
        return await readResult(r, 'f');
      } finally {
        await r.release();
      }
    };
    assert.equal(await read(1), 'one');
    assert.equal(await read(0), 'zero');
    assert.equal(await read(1), 'one');
    assert.equal(execs, 1);
    assert.equal((await cache.list()).length, 1);
    await assert.rejects(solver.solve({ vertex: two, index: 2 }), {
      name: 'SolveError',
      message: 'vertex "RUN two outputs" failed: output 2 requested, op has 2 output(s)',
    });
    assert.equal(store.live, 0);
  });

  it('names the vertex whose op failed before exec (cache map error)', async () => {
    const { store, cache } = await setup();
    const failing = vertex('FROM nowhere', { kind: 'run', script: 'true' });
    const solver = new Solver({
      resolveOp: () => ({
        cacheMap: async () => {
          throw new Error('resolve "nowhere": not found');
        },
        exec: async () => [],
      }),
      cache,
      loadResult: (id) => store.load(id),
    });
    await assert.rejects(solver.solve(edge(failing)), {
      name: 'SolveError',
      message: 'vertex "FROM nowhere" failed: resolve "nowhere": not found',
    });
  });

  it('re-executes an ignoreCache vertex but reuses its cached inputs', async () => {
    const { ops, solver } = await setup();
    const dep = run('RUN dep', 'echo d > d');
    const t = run('RUN t', 'date +%N > t', [dep], { ignoreCache: true });
    const first = await solveAndRead(solver, t, 't');
    const second = await solveAndRead(solver, t, 't');
    assert.notEqual(first, second);
    assert.equal(ops.execCount('RUN t'), 2);
    assert.equal(ops.execCount('RUN dep'), 1);
  });

  it('solves a deep chain without recursion limits', async () => {
    let v: Vertex = run('RUN 0', 'echo 0 > n');
    for (let i = 1; i < 300; i++) {
      v = {
        digest: `sha256:${String(i).padStart(64, '0')}`,
        name: `step ${i}`,
        inputs: [edge(v)],
        options: {},
        sys: i,
      };
    }
    // A generic solver: trivial in-memory ops for the chain above the first real one.
    const { store, cache } = await setup();
    const inner = new TestOps(store);
    let execs = 0;
    const chain = new Solver({
      cache,
      loadResult: (id) => store.load(id),
      resolveOp: (x) =>
        typeof x.sys === 'number'
          ? {
              cacheMap: async () => ({ digest: x.digest, deps: [] }),
              exec: async (_ctx, inputs) => {
                execs++;
                return [inputs[0].clone()];
              },
            }
          : inner.resolve(x),
    });
    const r = await chain.solve(edge(v));
    assert.equal(await readResult(r, 'n'), '0\n');
    await r.release();
    assert.equal(execs, 299);
    assert.equal(store.live, 0);
  });
});
