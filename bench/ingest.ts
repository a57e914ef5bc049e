/**
 * Ingest benchmark: Kiln's LocalContentStore ingest of a 1 GiB file (read
 * stream → hash + write → fdatasync + link, i.e. including the commit)
 * against `sha256sum FILE` on the same file, in the same run, alternating,
 * RUNS times each; medians are compared: ratio = sha256sum / kiln (≥ 1 means
 * Kiln is no slower). Both read the source from the page cache (it was just
 * written). Writes bench/results/ingest.json and bench/results/ingest.md.
 *
 * Run: `npx node bench/ingest.ts` (env KILN_BENCH_MIB to change the size).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { ingestStream, LocalContentStore } from '../src/core/content/store.ts';

const RUNS = 5;
const BLOCK = 16 << 20;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

async function makeFile(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    for (let done = 0; done < size; done += BLOCK) await fh.write(randomBytes(Math.min(BLOCK, size - done)));
    await fh.datasync(); // so its writeback does not compete with the timed runs
  } finally {
    await fh.close();
  }
}

function timeSha256sum(file: string): { seconds: number; digest: string } {
  const t0 = performance.now();
  const r = spawnSync('sha256sum', [file], { encoding: 'utf8' });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`sha256sum "${file}" failed: ${r.stderr}`);
  return { seconds, digest: `sha256:${r.stdout.split(' ')[0]}` };
}

async function timeKiln(
  file: string,
  root: string,
  ref: string,
): Promise<{ seconds: number; digest: string }> {
  const store = new LocalContentStore(root);
  const t0 = performance.now();
  const digest = await ingestStream(store, ref, createReadStream(file, { highWaterMark: 4 << 20 }));
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, digest };
}

export interface IngestResult {
  benchmark: 'ingest';
  date: string;
  sizeBytes: number;
  runs: number;
  digest: string;
  machine: {
    cpuModel: string;
    cores: number;
    memoryBytes: number;
    /** 1-minute load average before and after: other work on the machine skews both tools. */
    loadavg: [number, number];
    kernel: string;
    node: string;
    sha256sum: string;
  };
  kiln: { what: string; seconds: number[] };
  sha256sum: { what: string; seconds: number[] };
  medianSeconds: { kiln: number; sha256sum: number };
  throughputMiBps: { kiln: number; sha256sum: number };
  /** sha256sum median / Kiln median: ≥ 1 means Kiln is no slower. */
  ratio: number;
}

export async function runIngestBench(): Promise<IngestResult> {
  const mib = Number(process.env.KILN_BENCH_MIB ?? 1024);
  const size = mib << 20;
  const dir = await mkdtemp(join(os.tmpdir(), 'kiln-bench-ingest-'));
  try {
    const file = join(dir, 'source.bin');
    console.log(`creating ${mib} MiB of random bytes in ${file} ...`);
    await makeFile(file, size);
    const loadBefore = os.loadavg()[0];
    const kiln: number[] = [];
    const sum: number[] = [];
    let digest = '';
    for (let i = 0; i < RUNS; i++) {
      const root = join(dir, `store-${i}`);
      const k = await timeKiln(file, root, `bench-${i}`);
      await rm(root, { recursive: true, force: true });
      const s = timeSha256sum(file);
      if (k.digest !== s.digest) throw new Error(`digest mismatch: kiln ${k.digest}, sha256sum ${s.digest}`);
      digest = k.digest;
      kiln.push(k.seconds);
      sum.push(s.seconds);
      console.log(
        `run ${i + 1}/${RUNS}: kiln ${k.seconds.toFixed(3)} s, sha256sum ${s.seconds.toFixed(3)} s`,
      );
    }
    const kMed = median(kiln);
    const sMed = median(sum);
    const cpus = os.cpus();
    const result: IngestResult = {
      benchmark: 'ingest',
      date: new Date().toISOString(),
      sizeBytes: size,
      runs: RUNS,
      digest,
      machine: {
        cpuModel: cpus[0]?.model ?? 'unknown',
        cores: cpus.length,
        memoryBytes: os.totalmem(),
        loadavg: [loadBefore, os.loadavg()[0]],
        kernel: os.release(),
        node: process.version,
        sha256sum: execFileSync('sha256sum', ['--version'], { encoding: 'utf8' }).split('\n')[0],
      },
      kiln: {
        what: 'LocalContentStore ingestStream from a file read stream, including commit',
        seconds: kiln,
      },
      sha256sum: { what: 'sha256sum FILE', seconds: sum },
      medianSeconds: { kiln: kMed, sha256sum: sMed },
      throughputMiBps: { kiln: mib / kMed, sha256sum: mib / sMed },
      ratio: sMed / kMed,
    };
    console.log('\n| tool      | median s | MiB/s |');
    console.log('|-----------|---------:|------:|');
    console.log(`| kiln      | ${kMed.toFixed(3)} | ${(mib / kMed).toFixed(0)} |`);
    console.log(`| sha256sum | ${sMed.toFixed(3)} | ${(mib / sMed).toFixed(0)} |`);
    console.log(`ratio sha256sum/kiln = ${result.ratio.toFixed(2)}`);
    return result;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function markdown(x: IngestResult): string {
  return [
    '# Ingest benchmark',
    '',
    `${x.date}: ${x.sizeBytes >> 20} MiB of random bytes, ${x.runs} runs each, alternating; medians.`,
    `Machine: ${x.machine.cpuModel}, ${x.machine.cores} cores, Linux ${x.machine.kernel}, Node ${x.machine.node},`,
    `${x.machine.sha256sum}. Source file in the page cache for both.`,
    `1-minute load average before/after: ${x.machine.loadavg.map((l) => l.toFixed(2)).join(' / ')} (2-core VM shared with other work).`,
    '',
    '| what | median s | MiB/s |',
    '|------|---------:|------:|',
    `| Kiln ingest (read stream → hash + write → fdatasync + link) | ${x.medianSeconds.kiln.toFixed(3)} | ${x.throughputMiBps.kiln.toFixed(0)} |`,
    `| \`sha256sum FILE\` | ${x.medianSeconds.sha256sum.toFixed(3)} | ${x.throughputMiBps.sha256sum.toFixed(0)} |`,
    '',
    `All runs (s): Kiln ${x.kiln.seconds.map((v) => v.toFixed(2)).join(', ')}; sha256sum ${x.sha256sum.seconds.map((v) => v.toFixed(2)).join(', ')}.`,
    '',
    `Ratio sha256sum / Kiln = **${x.ratio.toFixed(2)}** (≥ 1 means Kiln is no slower).`,
    '',
    'Regenerate with `npx node bench/ingest.ts`.',
    '',
  ].join('\n');
}

if (import.meta.main) {
  const result = await runIngestBench();
  const out = fileURLToPath(new URL('./results/', import.meta.url));
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'ingest.json'), `${JSON.stringify(result, null, 2)}\n`);
  await writeFile(join(out, 'ingest.md'), markdown(result));
  console.log(`wrote ${join(out, 'ingest.json')} and ingest.md`);
}
