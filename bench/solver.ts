/**
 * Solver micro-benchmark: a 1,000-vertex DAG of trivial in-memory ops (each
 * vertex reads the previous one and one pseudo-random earlier one), solved
 * cold (every vertex executes) and fully cached (a new Solver on the same
 * cache index), with the in-memory and the SQLite cache index. Cached
 * variants:
 * - target: the target's definition key hits; no input is loaded (the
 *   common case of an unchanged rebuild);
 * - every vertex: all 1,000 vertices are requested at once (1,000 shared
 *   vertex states, 1,000 cache loads);
 * - content-keyed: the source is volatile (a new session each time, like a
 *   build context) and every other vertex has content-based deps, so every
 *   definition key misses and every vertex is found by content key after its
 *   inputs are loaded and checksummed (1 exec, 999 content hits).
 * Medians of RUNS runs. Target: fully cached 1,000 vertices in under 1 s.
 * Writes bench/results/solver.json and solver.md.
 *
 * Run: `npx node bench/solver.ts` (env KILN_BENCH_VERTICES to change the size).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { sha256 } from '../src/core/digest.ts';
import { type CacheManager, MemoryCacheManager, SqliteCacheManager } from '../src/solver/cache.ts';
import { Solver } from '../src/solver/solver.ts';
import type { Op, Result, Vertex } from '../src/solver/types.ts';

const RUNS = 5;
const STRESS = 'cached: every vertex requested (1,000 solves)';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** In-memory results: id → content string, with a live-handle count. */
class Mem {
  readonly content = new Map<string, string>();
  live = 0;
  handle(id: string): Result {
    this.live++;
    let done = false;
    return {
      id,
      sys: id,
      clone: () => this.handle(id),
      release: async () => {
        if (done) throw new Error(`double release of "${id}"`);
        done = true;
        this.live--;
      },
    };
  }
}

/** The graph: vertex 0 is a source; vertex i > 0 reads i-1 and a pseudo-random earlier vertex. */
function graph(size: number, session: string): Vertex[] {
  const vs: Vertex[] = [];
  for (let i = 0; i < size; i++) {
    const inputs = i === 0 ? [] : [vs[i - 1], ...(i > 1 ? [vs[(i * 7919) % (i - 1)]] : [])];
    const sys = i === 0 ? { source: session } : { step: i };
    const edges = inputs.map((v) => ({ vertex: v, index: 0 }));
    const digest = sha256(JSON.stringify([sys, edges.map((e) => e.vertex.digest)]));
    vs.push({ digest, name: `step ${i}`, inputs: edges, options: {}, sys });
  }
  return vs;
}

function makeSolver(mem: Mem, cache: CacheManager, contentDeps: boolean, counter: { execs: number }): Solver {
  let next = 0;
  const resolveOp = (v: Vertex): Op => ({
    cacheMap: async () => ({
      // The op's own definition (not its inputs, which the solver adds).
      digest: sha256(JSON.stringify(v.sys)),
      deps: contentDeps
        ? v.inputs.map(() => ({
            selector: '/',
            computeDigestFunc: async (r: Result) => sha256(mem.content.get(r.id)!),
          }))
        : [],
    }),
    exec: async (_ctx, inputs) => {
      counter.execs++;
      const id = `r${next++}-${v.digest.slice(7, 19)}`;
      // The source's content does not depend on its session (an unchanged build context).
      const own = v.inputs.length === 0 ? 'source' : JSON.stringify(v.sys);
      mem.content.set(id, `${own}:${inputs.map((r) => mem.content.get(r.id)!.length).join(',')}`);
      return [mem.handle(id)];
    },
  });
  return new Solver({
    resolveOp,
    cache,
    loadResult: async (id) => mem.handle(id),
  });
}

/** CPU seconds (user + system) of this process for each timed run, parallel to the wall times. */
let cpuLog: number[] = [];

async function timeIt(fn: () => Promise<void>): Promise<number> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const seconds = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  cpuLog.push((c.user + c.system) / 1e6);
  return seconds;
}

interface Scenario {
  index: 'memory' | 'sqlite';
  what: string;
  execs: number;
  seconds: number[];
  medianSeconds: number;
  /** CPU time of the process (user + system), less sensitive than wall time to other load on the machine. */
  medianCpuSeconds: number;
}

export interface SolverBenchResult {
  benchmark: 'solver';
  date: string;
  vertices: number;
  edges: number;
  runs: number;
  machine: { cpuModel: string; cores: number; kernel: string; node: string; loadavg: [number, number] };
  scenarios: Scenario[];
  /** The slowest fully cached single-solve scenario (wall), against the 1 s target. */
  worstCachedSeconds: number;
  /** Wall and CPU medians of the stress scenario (1,000 concurrent solves), reported apart from the target. */
  stress: { seconds: number; cpuSeconds: number };
}

export async function runSolverBench(): Promise<SolverBenchResult> {
  const size = Number(process.env.KILN_BENCH_VERTICES ?? 1000);
  const dir = await mkdtemp(join(os.tmpdir(), 'kiln-bench-solver-'));
  const loadBefore = os.loadavg()[0];
  const scenarios: Scenario[] = [];
  let edges = 0;
  try {
    for (const index of ['memory', 'sqlite'] as const) {
      const record = (what: string, seconds: number[], execs: number, cpu: number[]): void => {
        const s = {
          index,
          what,
          execs,
          seconds,
          medianSeconds: median(seconds),
          medianCpuSeconds: median(cpu),
        };
        scenarios.push(s);
        console.log(
          `${index.padEnd(6)} ${what.padEnd(44)} median ${s.medianSeconds.toFixed(4)} s (cpu ${s.medianCpuSeconds.toFixed(4)} s), execs ${execs}`,
        );
      };
      for (const contentDeps of [false, true]) {
        const mem = new Mem();
        const open = (): CacheManager =>
          index === 'memory'
            ? new MemoryCacheManager()
            : new SqliteCacheManager({ root: join(dir, `${index}-${contentDeps}`) });
        const cache = open();
        const counter = { execs: 0 };
        const g = graph(size, 'session-0');
        edges = g.reduce((n, v) => n + v.inputs.length, 0);
        const target = g[size - 1];
        cpuLog = [];
        const coldSeconds = await timeIt(async () => {
          const r = await makeSolver(mem, cache, contentDeps, counter).solve({ vertex: target, index: 0 });
          await r.release();
        });
        if (counter.execs !== size) throw new Error(`cold solve ran ${counter.execs} execs, want ${size}`);
        record(contentDeps ? 'cold (content deps)' : 'cold', [coldSeconds], counter.execs, cpuLog);

        if (!contentDeps) {
          const target1: number[] = [];
          const all: number[] = [];
          const cpuTarget: number[] = [];
          const cpuAll: number[] = [];
          counter.execs = 0;
          for (let i = 0; i < RUNS; i++) {
            // A new Solver each time: nothing in flight is shared, everything comes from the index.
            target1.push(
              await timeIt(async () => {
                const r = await makeSolver(mem, cache, false, counter).solve({ vertex: target, index: 0 });
                await r.release();
              }),
            );
            cpuTarget.push(cpuLog.pop()!);
            all.push(
              await timeIt(async () => {
                const solver = makeSolver(mem, cache, false, counter);
                const rs = await Promise.all(g.map((v) => solver.solve({ vertex: v, index: 0 })));
                await Promise.all(rs.map((r) => r.release()));
              }),
            );
            cpuAll.push(cpuLog.pop()!);
          }
          record('cached: target', target1, counter.execs / RUNS, cpuTarget);
          record(STRESS, all, counter.execs / RUNS, cpuAll);
        } else {
          const times: number[] = [];
          cpuLog = [];
          counter.execs = 0;
          for (let i = 0; i < RUNS; i++) {
            const gi = graph(size, `session-${i + 1}`);
            times.push(
              await timeIt(async () => {
                const r = await makeSolver(mem, cache, true, counter).solve({
                  vertex: gi[size - 1],
                  index: 0,
                });
                await r.release();
              }),
            );
          }
          record('cached: content-keyed (volatile source)', times, counter.execs / RUNS, cpuLog);
        }
        cache.close();
        if (mem.live !== 0) throw new Error(`${mem.live} result handles leaked`);
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const cpus = os.cpus();
  return {
    benchmark: 'solver',
    date: new Date().toISOString(),
    vertices: size,
    edges,
    runs: RUNS,
    machine: {
      cpuModel: cpus[0]?.model ?? 'unknown',
      cores: cpus.length,
      kernel: os.release(),
      node: process.version,
      loadavg: [loadBefore, os.loadavg()[0]],
    },
    scenarios,
    worstCachedSeconds: Math.max(
      ...scenarios
        .filter((s) => s.what.startsWith('cached') && s.what !== STRESS)
        .map((s) => s.medianSeconds),
    ),
    stress: {
      seconds: Math.max(...scenarios.filter((s) => s.what === STRESS).map((s) => s.medianSeconds)),
      cpuSeconds: Math.max(...scenarios.filter((s) => s.what === STRESS).map((s) => s.medianCpuSeconds)),
    },
  };
}

function markdown(x: SolverBenchResult): string {
  return [
    '# Solver benchmark',
    '',
    `${x.date}: ${x.vertices} vertices, ${x.edges} edges, trivial in-memory ops; cached rows are medians of ${x.runs} runs,`,
    'each with a new Solver on the same cache index (nothing shared in memory but the results).',
    '"every vertex requested" is 1,000 concurrent solves (each attaches to its whole ancestry: quadratic, ~500k',
    'attachments); "content-keyed" is one solve that loads and checksums every result (see bench/solver.ts).',
    `Machine: ${x.machine.cpuModel}, ${x.machine.cores} cores, Linux ${x.machine.kernel}, Node ${x.machine.node};`,
    `1-minute load average before/after: ${x.machine.loadavg.map((l) => l.toFixed(2)).join(' / ')}.`,
    '',
    '| cache index | scenario | execs | median wall s | median CPU s |',
    '|-------------|----------|------:|--------------:|-------------:|',
    ...x.scenarios.map(
      (s) =>
        `| ${s.index} | ${s.what} | ${s.execs} | ${s.medianSeconds.toFixed(4)} | ${s.medianCpuSeconds.toFixed(4)} |`,
    ),
    '',
    `Slowest fully cached single solve: **${x.worstCachedSeconds.toFixed(3)} s** (target: under 1 s).`,
    `Stress (1,000 concurrent solves, one per vertex): ${x.stress.seconds.toFixed(3)} s wall, ${x.stress.cpuSeconds.toFixed(3)} s CPU.`,
    '',
    'Regenerate with `npx node bench/solver.ts`.',
    '',
  ].join('\n');
}

if (import.meta.main) {
  const result = await runSolverBench();
  const out = fileURLToPath(new URL('./results/', import.meta.url));
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'solver.json'), `${JSON.stringify(result, null, 2)}\n`);
  await writeFile(join(out, 'solver.md'), markdown(result));
  console.log(`wrote ${join(out, 'solver.json')} and solver.md`);
}
