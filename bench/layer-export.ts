/**
 * Layer-export benchmark: Kiln's diff service `compare([], <bind mount of
 * TREE>, store, {compression: 'gzip', level: 6})` (walk + tar + gzip -6 +
 * digests + content-store ingest incl. commit) against
 * `tar -cf - -C TREE . | gzip -6 > /dev/null`, in the same run, alternating,
 * RUNS times each; medians compared: ratio = tar_gzip / kiln (≥ 1 means
 * Kiln is no slower). With KILN_BENCH_PARALLEL=1, a third line times Kiln
 * with `parallel: 2` (gzip members compressed on two threads). The tree: ~1 GiB in 20,000 files
 * (19,992 small files of 1..48 KiB in 200 directories plus 8 files of
 * 64 MiB), random base64 text (gzip -6 keeps ~76%). Both read the tree
 * from the page cache (it was just written). Writes
 * bench/results/layer-export.json and bench/results/layer-export.md.
 *
 * Run: `npx node bench/layer-export.ts` (env KILN_BENCH_RUNS, default 3);
 * about 4-5 minutes on the 2-core VM, 6-7 with KILN_BENCH_PARALLEL=1.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { LocalContentStore } from '../src/core/content/store.ts';
import { compare } from '../src/core/diff/index.ts';
import type { Mount } from '../src/core/snapshots/types.ts';

const RUNS = Number(process.env.KILN_BENCH_RUNS ?? 3);
/** Also time `parallel: 2` (adds about a third to the run time). */
const WITH_PARALLEL = process.env.KILN_BENCH_PARALLEL === '1';
const SMALL_FILES = 19_992;
const DIRS = 200;
const LARGE_FILES = 8;
const LARGE_SIZE = 64 << 20;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Random base64 text of exactly `size` bytes, with a newline every 76 characters. */
function text(size: number): Buffer {
  const b64 = randomBytes(Math.ceil((size * 3) / 4) + 3).toString('base64');
  const out = Buffer.from(b64.slice(0, size));
  for (let i = 76; i < size; i += 77) out[i] = 0x0a;
  return out;
}

async function makeTree(dir: string): Promise<{ files: number; bytes: number }> {
  let bytes = 0;
  for (let d = 0; d < DIRS; d++)
    await mkdir(join(dir, `d${String(d).padStart(3, '0')}`, 'sub'), { recursive: true });
  const jobs: (() => Promise<void>)[] = [];
  for (let i = 0; i < SMALL_FILES; i++) {
    const size = 1024 + Math.floor(Math.random() * 47 * 1024);
    bytes += size;
    const d = `d${String(i % DIRS).padStart(3, '0')}`;
    const p = join(dir, d, i % 3 === 0 ? 'sub' : '', `f${i}.txt`);
    jobs.push(() => writeFile(p, text(size)));
  }
  for (let i = 0; i < LARGE_FILES; i++) {
    bytes += LARGE_SIZE;
    jobs.push(() => writeFile(join(dir, `large-${i}.txt`), text(LARGE_SIZE)));
  }
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < jobs.length) await jobs[next++]!();
    }),
  );
  return { files: SMALL_FILES + LARGE_FILES, bytes };
}

function timeTarGzip(dir: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn('sh', ['-c', `tar -cf - -C '${dir}' . | gzip -6 > /dev/null`], { stdio: 'inherit' });
    p.on('error', reject);
    p.on('exit', (code) => {
      if (code !== 0) reject(new Error(`tar | gzip exited with ${code}`));
      else resolve((performance.now() - t0) / 1000);
    });
  });
}

async function timeKiln(
  dir: string,
  storeRoot: string,
  parallel: number,
): Promise<{ seconds: number; size: number }> {
  const store = new LocalContentStore(storeRoot);
  const upper: Mount[] = [{ type: 'bind', source: dir, options: ['rbind', 'ro'] }];
  const t0 = performance.now();
  const desc = await compare([], upper, store, { compression: 'gzip', level: 6, parallel });
  const seconds = (performance.now() - t0) / 1000;
  await store.delete(desc.digest);
  return { seconds, size: desc.size };
}

export interface LayerExportResult {
  benchmark: 'layer-export';
  date: string;
  tree: { files: number; bytes: number; content: string };
  runs: number;
  machine: {
    cpuModel: string;
    cores: number;
    memoryBytes: number;
    loadavg: [number, number];
    kernel: string;
    node: string;
    tar: string;
    gzip: string;
  };
  kiln: { what: string; seconds: number[]; layerBytes: number };
  /** Only with KILN_BENCH_PARALLEL=1. */
  kilnParallel?: { what: string; seconds: number[]; layerBytes: number };
  tarGzip: { what: string; seconds: number[] };
  medianSeconds: { kiln: number; kilnParallel?: number; tarGzip: number };
  /** tar|gzip median / Kiln median: ≥ 1 means Kiln is no slower. */
  ratio: number;
  ratioParallel?: number;
}

export async function runLayerExportBench(): Promise<LayerExportResult> {
  const base = await mkdtemp(join(os.tmpdir(), 'kiln-bench-layer-'));
  try {
    const tree = join(base, 'tree');
    console.log(`creating the tree in ${tree} ...`);
    const made = await makeTree(tree);
    console.log(`${made.files} files, ${(made.bytes / 2 ** 30).toFixed(2)} GiB`);
    const loadBefore = os.loadavg()[0]!;
    const kiln: number[] = [];
    const par: number[] = [];
    const tg: number[] = [];
    let layerBytes = 0;
    let layerBytesPar = 0;
    for (let i = 0; i < RUNS; i++) {
      const k = await timeKiln(tree, join(base, 'store'), 1);
      layerBytes = k.size;
      const t = await timeTarGzip(tree);
      kiln.push(k.seconds);
      tg.push(t);
      let line = `run ${i + 1}/${RUNS}: kiln ${k.seconds.toFixed(2)} s, tar|gzip ${t.toFixed(2)} s`;
      if (WITH_PARALLEL) {
        const p = await timeKiln(tree, join(base, 'store'), 2);
        layerBytesPar = p.size;
        par.push(p.seconds);
        line += `, kiln parallel=2 ${p.seconds.toFixed(2)} s`;
      }
      console.log(line);
    }
    const cpus = os.cpus();
    const kMed = median(kiln);
    const pMed = par.length ? median(par) : Number.NaN;
    const tMed = median(tg);
    const result: LayerExportResult = {
      benchmark: 'layer-export',
      date: new Date().toISOString(),
      tree: { ...made, content: 'random base64 text, 76-character lines' },
      runs: RUNS,
      machine: {
        cpuModel: cpus[0]?.model ?? 'unknown',
        cores: cpus.length,
        memoryBytes: os.totalmem(),
        loadavg: [loadBefore, os.loadavg()[0]!],
        kernel: os.release(),
        node: process.version,
        tar: execFileSync('tar', ['--version'], { encoding: 'utf8' }).split('\n')[0]!,
        gzip: execFileSync('gzip', ['--version'], { encoding: 'utf8' }).split('\n')[0]!,
      },
      kiln: {
        what: "diff compare([], bind mount, store, {compression: 'gzip', level: 6}) incl. content-store commit",
        seconds: kiln,
        layerBytes,
      },
      tarGzip: { what: 'tar -cf - -C TREE . | gzip -6 > /dev/null', seconds: tg },
      medianSeconds: { kiln: kMed, tarGzip: tMed },
      ratio: tMed / kMed,
    };
    if (WITH_PARALLEL) {
      result.kilnParallel = {
        what: 'the same with parallel: 2 (concatenated gzip members)',
        seconds: par,
        layerBytes: layerBytesPar,
      };
      result.medianSeconds.kilnParallel = pMed;
      result.ratioParallel = tMed / pMed;
    }
    const mib = made.bytes / 2 ** 20;
    console.log('\n| what                | median s | MiB/s |');
    console.log('|---------------------|---------:|------:|');
    console.log(`| kiln                | ${kMed.toFixed(2)} | ${(mib / kMed).toFixed(1)} |`);
    if (WITH_PARALLEL)
      console.log(`| kiln parallel=2     | ${pMed.toFixed(2)} | ${(mib / pMed).toFixed(1)} |`);
    console.log(`| tar \\| gzip -6      | ${tMed.toFixed(2)} | ${(mib / tMed).toFixed(1)} |`);
    console.log(`ratio tar_gzip/kiln = ${result.ratio.toFixed(2)}`);
    if (result.ratioParallel)
      console.log(`ratio tar_gzip/kiln parallel=2 = ${result.ratioParallel.toFixed(2)}`);
    return result;
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

export function layerExportMarkdown(x: LayerExportResult): string {
  const mib = x.tree.bytes / 2 ** 20;
  return [
    '# Layer export benchmark',
    '',
    `${x.date}: ${x.tree.files} files, ${(x.tree.bytes / 2 ** 30).toFixed(2)} GiB of ${x.tree.content};`,
    `${x.runs} runs each, alternating; medians. Tree in the page cache for all.`,
    `Machine: ${x.machine.cpuModel}, ${x.machine.cores} cores, Linux ${x.machine.kernel}, Node ${x.machine.node},`,
    `${x.machine.tar}, ${x.machine.gzip}.`,
    `1-minute load average before/after: ${x.machine.loadavg.map((l) => l.toFixed(2)).join(' / ')} (2-core VM shared with other work).`,
    '',
    '| what | median s | MiB/s | layer bytes |',
    '|------|---------:|------:|------:|',
    `| Kiln compare + tar + gzip -6 into the content store (one gzip stream) | ${x.medianSeconds.kiln.toFixed(2)} | ${(mib / x.medianSeconds.kiln).toFixed(1)} | ${x.kiln.layerBytes} |`,
    ...(x.kilnParallel && x.medianSeconds.kilnParallel
      ? [
          `| Kiln, \`parallel: 2\` (concatenated gzip members) | ${x.medianSeconds.kilnParallel.toFixed(2)} | ${(mib / x.medianSeconds.kilnParallel).toFixed(1)} | ${x.kilnParallel.layerBytes} |`,
        ]
      : []),
    `| \`tar -cf - -C TREE . \\| gzip -6 > /dev/null\` | ${x.medianSeconds.tarGzip.toFixed(2)} | ${(mib / x.medianSeconds.tarGzip).toFixed(1)} | |`,
    '',
    `Ratio tar_gzip / Kiln = **${x.ratio.toFixed(2)}**${x.ratioParallel ? ` (parallel: 2: **${x.ratioParallel.toFixed(2)}**)` : ''}; ≥ 1 means Kiln is no slower.`,
    `Per run (s): Kiln ${x.kiln.seconds.map((s) => s.toFixed(2)).join(', ')}; tar|gzip ${x.tarGzip.seconds.map((s) => s.toFixed(2)).join(', ')}${x.kilnParallel ? `; Kiln parallel ${x.kilnParallel.seconds.map((s) => s.toFixed(2)).join(', ')}` : ''}.`,
    '',
    'Regenerate with `npx node bench/layer-export.ts`.',
    '',
  ].join('\n');
}

if (import.meta.main) {
  const result = await runLayerExportBench();
  const out = fileURLToPath(new URL('./results/', import.meta.url));
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'layer-export.json'), `${JSON.stringify(result, null, 2)}\n`);
  await writeFile(join(out, 'layer-export.md'), layerExportMarkdown(result));
  console.log(`wrote ${join(out, 'layer-export.json')} and layer-export.md`);
}
