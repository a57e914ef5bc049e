/**
 * Build suite (issue 7): Kiln (in-process, and through kilnd) against docker's BuildKit (DOCKER_BUILDKIT=1,
 * Debian's docker.io 20.10 = BuildKit v0.8), docker's legacy builder
 * (DOCKER_BUILDKIT=0) and buildah (Debian, 1.28, `--layers`, runc), on the
 * five workloads of bench/build-suite/workloads.ts, same Dockerfile, same
 * base image bytes, each builder writing a tagged image to its own store.
 *
 * Per workload and run (builders alternate; the order rotates each run):
 * 1. full build from empty state: every builder's build cache and outputs
 *    are dropped first (BuildKit: `docker builder prune -af` + rmi; legacy:
 *    rmi + `docker image prune -f`; buildah: `rm -a`, rmi, `rmi --prune`,
 *    its cache-mount directory; Kiln: a fresh --root with the bases imported
 *    and its OCI runtime selected; kilnd: the same, then kilnd started on it;
 *    all outside the timing, followed by `sync`; every timed build of every
 *    scenario is preceded by a `sync` too); the builder's peak memory is taken during it
 *    (Kiln and buildah: VmHWM of their process, polled; BuildKit and legacy:
 *    dockerd's VmHWM after `echo 5 > /proc/PID/clear_refs`);
 * 2. repeated build with no change;
 * 3. repeated build after a one-line source change (workload 4: this is the
 *    rebuild after a code change with a cache mount).
 * A build with a cache imported from a registry is reported n/a (Kiln has no
 * remote cache import/export yet). The legacy builder cannot build workload
 * 4 (no RUN --mount): n/a.
 *
 * Also: Kiln's per-vertex timings (`--progress rawjson`) of the median run of
 * each scenario; optionally (default on) the differential comparison of each
 * workload's Kiln image with BuildKit's (test/differential/harness.ts); and
 * optionally (default on) CPU profiles of Kiln's full and one-line-change
 * builds of workloads 1 and 5 (`--cpu-prof`), summarised on stdout and in
 * /tmp/kiln-bench-profiles (not in the results).
 *
 * Base images are made locally and cached in /var/cache/kiln-bench/<BASES>:
 * busybox (scripts/make-busybox-rootfs.sh) and Debian bookworm minbase with
 * gcc, make and libc6-dev (bench/build-suite/make-debian-gcc.sh), as
 * `docker import` + `docker save` archives loaded into docker, buildah and
 * Kiln.
 *
 * Run: `npm run bench -- build-suite`, or `npx node bench/build-suite.ts
 * [--runs N] [--only 1,5] [--no-diff] [--no-profile] [--profile 1,5]` (also through
 * `npm run bench -- build-suite --runs 1`; or env KILN_BENCH_RUNS,
 * KILN_BENCH_ONLY, KILN_BENCH_NO_DIFF=1, KILN_BENCH_NO_PROFILE=1). Writes bench/results/build-suite.json and .md
 * (a run with --only or fewer than 3 runs writes /tmp/kiln-bench-build-suite.partial.*).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import {
  buildWithDocker,
  buildWithKiln,
  compareOutcomes,
  DOCKER,
  KILN,
  removeKilnRoot,
} from '../test/differential/harness.ts';
import { KilnClient } from '../src/client/index.ts';
import { makePackages, WORKLOADS, type Workload } from './build-suite/workloads.ts';
import { ensureCliBundle } from './lib/cli-bundle.ts';
import { type ProfileSummary, summarizeProfiles } from './lib/cpuprofile.ts';

const repo = fileURLToPath(new URL('..', import.meta.url));
const KILND = join(repo, 'bin/kilnd');
const BASES = 'bases-v1';
const CACHE = join('/var/cache/kiln-bench', BASES);
const ENV_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const BASE_IMAGES = {
  busybox: { name: 'kiln-bench/busybox:1', cmd: '["sh"]' },
  'debian-gcc': { name: 'kiln-bench/debian-gcc:1', cmd: '["bash"]' },
} as const;
type BaseId = keyof typeof BASE_IMAGES;

const BUILDERS = ['kiln', 'kilnd', 'buildkit', 'legacy', 'buildah'] as const;
type BuilderId = (typeof BUILDERS)[number];
const SCENARIOS = ['full', 'noChange', 'oneLine'] as const;
type Scenario = (typeof SCENARIOS)[number];

// ---------------------------------------------------------------- options

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const RUNS = Number(option('--runs') ?? process.env.KILN_BENCH_RUNS ?? 3);
const ONLY = (option('--only') ?? process.env.KILN_BENCH_ONLY ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const DIFF = !process.argv.includes('--no-diff') && !process.env.KILN_BENCH_NO_DIFF;
const PROFILE = !process.argv.includes('--no-profile') && !process.env.KILN_BENCH_NO_PROFILE;
/** Workloads whose Kiln builds are CPU-profiled after the timed runs (default 1 and 5). */
const PROFILED = (option('--profile') ?? '1,5')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);

// ---------------------------------------------------------------- processes

interface Ran {
  code: number | null;
  out: string;
  ms: number;
  /** Peak resident set (KiB) of the spawned process, when polled. */
  hwmKiB?: number;
}

/** Runs a command, collecting stdout+stderr; with `pollHwm`, polls the process's VmHWM every 50 ms. */
function exec(argv: string[], opts: { env?: NodeJS.ProcessEnv; pollHwm?: boolean } = {}): Promise<Ran> {
  const t0 = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  const chunks: Buffer[] = [];
  child.stdout.on('data', (b: Buffer) => chunks.push(b));
  child.stderr.on('data', (b: Buffer) => chunks.push(b));
  let hwm = 0;
  let timer: NodeJS.Timeout | undefined;
  if (opts.pollHwm && child.pid !== undefined) {
    const status = `/proc/${child.pid}/status`;
    const poll = (): void => {
      readFile(status, 'utf8').then(
        (s) => {
          const m = /VmHWM:\s+(\d+) kB/.exec(s);
          if (m) hwm = Math.max(hwm, Number(m[1]));
        },
        () => undefined,
      );
    };
    poll();
    timer = setInterval(poll, 50);
  }
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      if (timer) clearInterval(timer);
      const ms = performance.now() - t0;
      resolve({ code, out: Buffer.concat(chunks).toString(), ms, ...(opts.pollHwm ? { hwmKiB: hwm } : {}) });
    });
  });
}

async function must(argv: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  const r = await exec(argv, { env });
  if (r.code !== 0) throw new Error(`${argv.join(' ')} exited with ${r.code}: ${r.out.slice(-2000)}`);
  return r.out;
}

function version(argv: string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n')[0] ?? '?';
}

// ---------------------------------------------------------------- peers and bases

async function ensurePeers(): Promise<void> {
  if (!existsSync('/usr/bin/buildah')) {
    console.log('installing buildah (apt-get)…');
    await must(['apt-get', 'install', '-y', 'buildah'], { DEBIAN_FRONTEND: 'noninteractive' });
  }
  if ((await exec([DOCKER, 'info'])).code !== 0) {
    console.log('starting dockerd…');
    const d = spawn('dockerd', [], { detached: true, stdio: 'ignore' });
    d.unref();
    for (let i = 0; i < 120 && (await exec([DOCKER, 'info'])).code !== 0; i++) {
      await new Promise((r) => setTimeout(r, 500));
    }
    if ((await exec([DOCKER, 'info'])).code !== 0) throw new Error('dockerd did not come up within 60 s');
  }
}

/** The image ID (config digest) of a `docker save` archive. */
async function saveId(saveTar: string): Promise<string> {
  const m = JSON.parse(await must(['tar', '-xOf', saveTar, 'manifest.json'])) as { Config: string }[];
  return `sha256:${m[0]!.Config.replace(/^blobs\/sha256\//, '').replace(/\.json$/, '')}`;
}

/** Makes (once, cached) the base's layer tar and docker-archive; returns the archive path. */
async function ensureBaseArchive(base: BaseId): Promise<string> {
  await mkdir(CACHE, { recursive: true });
  const layer = join(CACHE, `${base}-layer.tar`);
  const save = join(CACHE, `${base}.docker.tar`);
  if (existsSync(save)) return save;
  if (!existsSync(layer)) {
    console.log(`making base ${base} (cached in ${CACHE})…`);
    if (base === 'busybox') {
      const dir = await mkdtemp(join(CACHE, 'busybox-rootfs.'));
      try {
        await must(['bash', join(repo, 'scripts/make-busybox-rootfs.sh'), dir]);
        await must([
          'tar',
          '--sort=name',
          '--numeric-owner',
          '--owner=0',
          '--group=0',
          '--mtime=@1700000000',
          '-C',
          dir,
          '-cf',
          `${layer}.tmp`,
          '.',
        ]);
        await rename(`${layer}.tmp`, layer);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    } else {
      await must(['bash', join(repo, 'bench/build-suite/make-debian-gcc.sh'), layer]);
    }
  }
  const { name, cmd } = BASE_IMAGES[base];
  await must([DOCKER, 'import', '-c', `ENV ${ENV_PATH}`, '-c', `CMD ${cmd}`, layer, name]);
  await must([DOCKER, 'save', '-o', `${save}.tmp`, name]);
  await rename(`${save}.tmp`, save);
  return save;
}

/** Loads the base archives into docker and buildah unless the same image ID is there already. */
async function loadBases(archives: Map<BaseId, string>): Promise<void> {
  for (const [base, save] of archives) {
    const { name } = BASE_IMAGES[base];
    const id = await saveId(save);
    const d = await exec([DOCKER, 'image', 'inspect', '--format', '{{.Id}}', name]);
    if (d.out.trim() !== id) await must([DOCKER, 'load', '-i', save]);
    const b = await exec(['buildah', 'inspect', '--type', 'image', '--format', '{{.FromImageID}}', name]);
    if (b.code !== 0 || !id.endsWith(b.out.trim()) || b.out.trim() === '') {
      await exec(['buildah', 'rmi', '-f', name]);
      await must(['buildah', 'pull', '-q', `docker-archive:${save}`]);
      const again = await exec([
        'buildah',
        'inspect',
        '--type',
        'image',
        '--format',
        '{{.FromImageID}}',
        name,
      ]);
      if (again.code !== 0 || !id.endsWith(again.out.trim()))
        throw new Error(`buildah: base "${name}" not found after pulling ${save}: ${again.out}`);
    }
  }
}

/**
 * Waits until inodes deleted by the resets or by a peer's build are no
 * longer "recently deleted" for ext4: on a file system without a journal (this VM's root), allocating
 * an inode skips, one by one, inodes freed in the last 60 s (300 s more
 * while their inode table block is dirty), so creating 20,000 files right
 * after deleting as many took 5-14 s instead of 0.5 s (perf: the time is in
 * recently_deleted / find_inode_bit). A sync, then 61 s; other builds are
 * preceded by a sync (untimed).
 */
async function settle(): Promise<void> {
  await must(['sync']);
  await new Promise((r) => setTimeout(r, 61_000));
}

/** A fresh Kiln root with the bases imported and unpacked. */
async function freshKilnRoot(
  root: string,
  archives: Map<BaseId, string>,
  bases: readonly BaseId[],
): Promise<void> {
  await mkdir(root, { recursive: true });
  for (const base of bases) {
    const { name } = BASE_IMAGES[base];
    await must([KILN, '--root', root, 'images', 'import', archives.get(base)!, '--name', name, '--unpack']);
    if ((await exec([KILN, '--root', root, 'images', 'inspect', name])).code !== 0)
      throw new Error(
        `kiln images import ${archives.get(base)} --name ${name} did not name the image "${name}"`,
      );
  }
  // The OCI runtime is chosen once per state directory (a probe container): done here, untimed,
  // like the peers' daemons and runtimes, which are set up before any build.
  await must([KILN, '--root', root, 'run', '--rm', BASE_IMAGES[bases[0]!].name, 'true']);
}

// ---------------------------------------------------------------- package server (workload 3)

async function startPackageServer(): Promise<{ base: string; server: Server }> {
  const { files } = await makePackages();
  const server = createServer((req, res) => {
    const body = files.get(decodeURIComponent((req.url ?? '/').slice(1)));
    if (!body) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': body.length }).end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

// ---------------------------------------------------------------- builders

interface Ctx {
  work: string;
  archives: Map<BaseId, string>;
  pkgBase: string;
  dockerdPid: number;
  kilnRoot: Map<string, string>;
  /** The running kilnd (builder `kilnd`), on its own root. */
  kilnd?: { root: string; address: string; proc: ChildProcess };
  runcPath: string;
}

/** Stops the suite's kilnd, if one runs, and removes its root. */
async function stopKilnd(ctx: Ctx): Promise<void> {
  const d = ctx.kilnd;
  if (!d) return;
  ctx.kilnd = undefined;
  if (d.proc.exitCode === null) {
    const closed = new Promise((r) => d.proc.once('close', r));
    d.proc.kill('SIGTERM');
    await closed;
  }
  await removeKilnRoot(d.root);
}

/** Starts kilnd on a fresh root with the bases imported; returns when it answers. */
async function startKilnd(ctx: Ctx, w: Workload, run: number): Promise<void> {
  const root = join(ctx.work, `kilnd-root-${w.id}-${run}`);
  await freshKilnRoot(root, ctx.archives, w.bases);
  const address = `unix://${join(root, 'kilnd.sock')}`;
  const proc = spawn(KILND, ['--root', root, '--addr', address, '--log-level', 'warn'], { stdio: 'ignore' });
  ctx.kilnd = { root, address, proc };
  for (let i = 0; ; i++) {
    const client = new KilnClient(address);
    try {
      await client.info();
      return;
    } catch (err) {
      if (proc.exitCode !== null || i > 600)
        throw new Error(`kilnd on ${root} did not start`, { cause: err });
      await new Promise((res) => setTimeout(res, 50));
    } finally {
      client.close();
    }
  }
}

function tagOf(w: Workload, b: BuilderId): string {
  return `kiln-bench/${w.id}:${b}`;
}

function buildArgs(w: Workload, ctx: Ctx): string[] {
  return w.packages ? ['--build-arg', `PKG_BASE=${ctx.pkgBase}`] : [];
}

/** Kiln through bin/kiln in-process, or through kilnd (`kiln --host`). */
function isKiln(b: BuilderId): boolean {
  return b === 'kiln' || b === 'kilnd';
}

function supports(b: BuilderId, w: Workload): boolean {
  return !(b === 'legacy' && w.cacheMount);
}

/** Drops the builder's build cache and this workload's output image (bases stay). */
async function reset(b: BuilderId, w: Workload, ctx: Ctx, run: number): Promise<void> {
  const tag = tagOf(w, b);
  switch (b) {
    case 'buildkit':
      await must([DOCKER, 'builder', 'prune', '-af']);
      await exec([DOCKER, 'image', 'rm', '-f', tag]);
      return;
    case 'legacy':
      await exec([DOCKER, 'image', 'rm', '-f', tag]);
      await must([DOCKER, 'image', 'prune', '-f']);
      return;
    case 'buildah':
      await exec(['buildah', 'rm', '-a']);
      await exec(['buildah', 'rmi', '-f', tag]);
      await exec(['buildah', 'rmi', '--prune']);
      await rm('/var/tmp/buildah-cache', { recursive: true, force: true });
      await rm('/var/tmp/buildah-cache-0', { recursive: true, force: true });
      return;
    case 'kiln': {
      const old = ctx.kilnRoot.get(w.id);
      if (old) await removeKilnRoot(old);
      const root = join(ctx.work, `kiln-root-${w.id}-${run}`);
      await freshKilnRoot(root, ctx.archives, w.bases);
      ctx.kilnRoot.set(w.id, root);
      return;
    }
    case 'kilnd':
      await stopKilnd(ctx);
      await startKilnd(ctx, w, run);
      return;
  }
}

function buildArgv(
  b: BuilderId,
  w: Workload,
  ctx: Ctx,
  dir: string,
): { argv: string[]; env: NodeJS.ProcessEnv } {
  const tag = tagOf(w, b);
  const args = buildArgs(w, ctx);
  switch (b) {
    case 'kiln':
    case 'kilnd': {
      // The same command line, in-process on the workload's root or sent to the suite's kilnd.
      const where = b === 'kiln' ? ['--root', ctx.kilnRoot.get(w.id)!] : ['--host', ctx.kilnd!.address];
      return {
        argv: [
          KILN,
          ...where,
          'build',
          '--network',
          'host',
          '--progress',
          'rawjson',
          ...args,
          '-t',
          tag,
          dir,
        ],
        env: {},
      };
    }
    case 'buildkit':
      return {
        argv: [DOCKER, 'build', '--progress=plain', '--network', 'host', ...args, '-t', tag, dir],
        env: { DOCKER_BUILDKIT: '1' },
      };
    case 'legacy':
      return {
        argv: [DOCKER, 'build', '--network', 'host', ...args, '-t', tag, dir],
        env: { DOCKER_BUILDKIT: '0' },
      };
    case 'buildah':
      return {
        argv: [
          'buildah',
          'bud',
          '--runtime',
          ctx.runcPath,
          '--layers',
          '--network',
          'host',
          ...args,
          '-t',
          tag,
          dir,
        ],
        env: {},
      };
  }
}

/** True when the build log shows a cache hit (must not happen in a full build from empty state). */
function sawCacheHit(b: BuilderId, out: string): boolean {
  if (isKiln(b))
    return vertices(out, Number.MAX_SAFE_INTEGER).some((v) => v.cached && /\] (RUN|COPY|ADD) /.test(v.name));
  if (b === 'buildkit') return /#\d+ CACHED/.test(out);
  return /Using cache/.test(out);
}

interface Vertex {
  name: string;
  ms: number;
  cached: boolean;
}

/** Kiln's vertices from rawjson progress, slowest first. */
function vertices(out: string, limit = 6): Vertex[] {
  const byDigest = new Map<string, Vertex>();
  for (const line of out.split('\n')) {
    if (!line.startsWith('{"type":"vertex"')) continue;
    try {
      const v = JSON.parse(line) as {
        digest: string;
        name: string;
        started?: number;
        completed?: number;
        cached?: boolean;
      };
      if (v.started !== undefined && v.completed !== undefined)
        byDigest.set(v.digest, {
          name: v.name,
          ms: Math.round(v.completed - v.started),
          cached: v.cached === true,
        });
    } catch {
      // a partial line: ignore
    }
  }
  return [...byDigest.values()].sort((a, b) => b.ms - a.ms).slice(0, limit);
}

async function readHwm(pid: number): Promise<number> {
  const m = /VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

interface Sample {
  ms: number;
  peakKiB?: number;
  vertices?: Vertex[];
  cacheHitInFullBuild?: boolean;
}

async function build(b: BuilderId, w: Workload, ctx: Ctx, dir: string, scenario: Scenario): Promise<Sample> {
  const { argv, env } = buildArgv(b, w, ctx, dir);
  const docker = b === 'buildkit' || b === 'legacy';
  // A daemon's peak: its VmHWM, reset before the build (dockerd for BuildKit and legacy, kilnd).
  const daemonPid = docker ? ctx.dockerdPid : b === 'kilnd' ? ctx.kilnd!.proc.pid! : undefined;
  if (scenario === 'full' && daemonPid !== undefined) await writeFile(`/proc/${daemonPid}/clear_refs`, '5');
  const r = await exec(argv, { env, pollHwm: scenario === 'full' && daemonPid === undefined });
  if (r.code !== 0)
    throw new Error(
      `${b} build of ${w.id} (${scenario}) failed (exit ${r.code}): ${argv.join(' ')}\n${r.out.slice(-3000)}`,
    );
  const s: Sample = { ms: r.ms };
  if (scenario === 'full') {
    s.peakKiB = daemonPid !== undefined ? await readHwm(daemonPid) : r.hwmKiB;
    if (sawCacheHit(b, r.out)) s.cacheHitInFullBuild = true;
  }
  if (isKiln(b)) s.vertices = vertices(r.out);
  return s;
}

// ---------------------------------------------------------------- statistics

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

const round = (x: number, d = 2): number => Math.round(x * 10 ** d) / 10 ** d;

interface Cell {
  medianS: number;
  runsS: number[];
  peakMiB?: number;
  peakRunsMiB?: number[];
  /** Kiln: the slowest vertices of the median run. */
  topVertices?: Vertex[];
  warnings?: string[];
}

type WorkloadResult = {
  title: string;
  loadavg: { before: number; after: number };
  scenarios: Record<Scenario, Partial<Record<BuilderId, Cell | 'n/a'>>>;
  remoteCache: 'n/a (no remote cache yet)';
  differential?: { same: boolean; differences: string[] } | { error: string };
  error?: string;
};

function cell(samples: Sample[]): Cell {
  const runsS = samples.map((s) => round(s.ms / 1000, 3));
  const med = median(runsS);
  const c: Cell = { medianS: med, runsS };
  const peaks = samples.map((s) => s.peakKiB).filter((x): x is number => x !== undefined);
  if (peaks.length > 0) {
    c.peakRunsMiB = peaks.map((k) => round(k / 1024, 1));
    c.peakMiB = median(c.peakRunsMiB);
  }
  if (samples[0]?.vertices) {
    const medRun = samples.reduce((best, s) =>
      Math.abs(s.ms / 1000 - med) < Math.abs(best.ms / 1000 - med) ? s : best,
    );
    c.topVertices = medRun.vertices;
  }
  if (samples.some((s) => s.cacheHitInFullBuild)) c.warnings = ['a cache hit was seen in a full build'];
  return c;
}

// ---------------------------------------------------------------- the suite

async function runWorkload(w: Workload, ctx: Ctx): Promise<WorkloadResult> {
  const load0 = os.loadavg()[0]!;
  const dir = join(ctx.work, `ctx-${w.id}`);
  await mkdir(dir, { recursive: true });
  await w.generate(dir);
  const builders = BUILDERS.filter((b) => supports(b, w));
  const samples = new Map<string, Sample[]>();
  const add = (b: BuilderId, sc: Scenario, s: Sample): void => {
    const k = `${b}/${sc}`;
    samples.set(k, [...(samples.get(k) ?? []), s]);
  };
  for (let run = 0; run < RUNS; run++) {
    await w.change(dir, 0);
    const order = builders.map((_, i) => builders[(i + run) % builders.length]!);
    for (const b of order) await reset(b, w, ctx, run);
    // Flush what the resets wrote before anything is timed. Kiln's reset imports the bases into a
    // fresh root (~350 MB of dirty page cache for debian-gcc); left dirty, the first overlay
    // unmount of the timed build flushed it (syncfs of the upper file system): 0.2-0.3 s inside
    // a WORKDIR or COPY step. The peers' bases were loaded once, at the start of the suite.
    await must(['sync']);
    // Deletions of many files since the last settle: the resets, and the legacy builder's and
    // buildah's builds, which remove their copy of the context afterwards.
    let deleted = true;
    for (const sc of SCENARIOS) {
      if (sc === 'oneLine') await w.change(dir, run + 1);
      for (const b of order) {
        if (w.settle && deleted) await settle();
        // Before every timed build, what the previous builds wrote is flushed: otherwise a builder
        // pays for the previous one's writeback (the first overlay unmount of its build syncs the
        // whole file system, and the kernel's flusher threads take CPU from it). For workload 5
        // this also leaves clean inode table blocks (ext4 extends the slow window to 360 s while
        // they are dirty).
        else await must(['sync']);
        deleted = b === 'legacy' || b === 'buildah';
        const s = await build(b, w, ctx, dir, sc);
        add(b, sc, s);
        process.stdout.write(
          `  ${w.id} run ${run + 1} ${sc} ${b}: ${(s.ms / 1000).toFixed(2)} s${s.peakKiB ? `, peak ${(s.peakKiB / 1024).toFixed(0)} MiB` : ''}\n`,
        );
      }
    }
  }
  const scenarios = {} as WorkloadResult['scenarios'];
  for (const sc of SCENARIOS) {
    scenarios[sc] = {};
    for (const b of BUILDERS) scenarios[sc][b] = supports(b, w) ? cell(samples.get(`${b}/${sc}`)!) : 'n/a';
  }
  const result: WorkloadResult = {
    title: w.title,
    loadavg: { before: load0, after: os.loadavg()[0]! },
    scenarios,
    remoteCache: 'n/a (no remote cache yet)',
  };
  if (DIFF) result.differential = await differential(w, ctx, dir);
  return result;
}

/** Builds the workload (current, changed context) once more with BuildKit and Kiln and compares the images. */
async function differential(
  w: Workload,
  ctx: Ctx,
  dir: string,
): Promise<{ same: boolean; differences: string[] } | { error: string }> {
  const work = await mkdtemp(join(ctx.work, `diff-${w.id}-`));
  try {
    const c = { name: w.id, dir, spec: {} };
    const flags = ['--network', 'host', ...buildArgs(w, ctx)];
    const docker = await buildWithDocker(c, work, flags);
    const kiln = await buildWithKiln(c, work, ctx.kilnRoot.get(w.id)!, flags);
    const differences = compareOutcomes(c, docker, kiln);
    return { same: differences.length === 0, differences: differences.slice(0, 20) };
  } catch (err) {
    return { error: (err as Error).message.slice(0, 2000) };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Kiln full and one-line-change builds of a workload under --cpu-prof; self-time summaries. */
async function profile(w: Workload, ctx: Ctx): Promise<Record<string, ProfileSummary>> {
  const dir = join(ctx.work, `ctx-${w.id}`);
  const out: Record<string, ProfileSummary> = {};
  await w.change(dir, 0);
  await reset('kiln', w, ctx, 99);
  for (const sc of ['full', 'oneLine'] as const) {
    if (sc === 'oneLine') await w.change(dir, 1000);
    const profDir = join('/tmp/kiln-bench-profiles', `${w.id}-${sc}`);
    await rm(profDir, { recursive: true, force: true });
    await mkdir(profDir, { recursive: true });
    const { argv } = buildArgv('kiln', w, ctx, dir);
    const r = await exec(argv, { env: { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${profDir}` } });
    if (r.code !== 0) throw new Error(`profiled kiln build of ${w.id} failed: ${r.out.slice(-2000)}`);
    out[sc] = await summarizeProfiles(profDir, repo, 25);
    out[sc].top.unshift({
      fn: `(wall time of the build: ${Math.round(r.ms)} ms)`,
      ms: Math.round(r.ms),
      share: 1,
    });
  }
  return out;
}

function markdown(result: Record<string, unknown>, workloads: Record<string, WorkloadResult>): string {
  const f = (c: Cell | 'n/a' | undefined): string =>
    c === undefined || c === 'n/a' ? 'n/a' : c.medianS.toFixed(c.medianS < 1 ? 3 : 2);
  const mem = (c: Cell | 'n/a' | undefined): string =>
    c === undefined || c === 'n/a' || c.peakMiB === undefined ? 'n/a' : c.peakMiB.toFixed(0);
  const ratio = (a: number | undefined, b: number | undefined): string =>
    a === undefined || b === undefined || b === 0 ? 'n/a' : `**${(a / b).toFixed(2)}**`;
  const val = (c: Cell | 'n/a' | undefined, pick: (c: Cell) => number | undefined): number | undefined =>
    c === undefined || c === 'n/a' ? undefined : pick(c);
  const names: Record<Scenario, string> = {
    full: 'full build, empty state',
    noChange: 'repeated, no change',
    oneLine: 'repeated, one-line change',
  };
  const rows: string[] = [];
  const memRows: string[] = [];
  const vertexRows: string[] = [];
  for (const [id, wr] of Object.entries(workloads)) {
    if (wr.error) {
      rows.push(
        `| ${id} | (failed: ${wr.error.split('\n')[0]!.slice(0, 200).replaceAll('|', '\\|')}) | | | | | | | |`,
      );
      continue;
    }
    for (const sc of SCENARIOS) {
      const s = wr.scenarios[sc];
      const label =
        id.startsWith('4-') && sc === 'oneLine' ? 'rebuild after code change, cache mount' : names[sc];
      const k = val(s.kiln, (c) => c.medianS);
      rows.push(
        `| ${id} | ${label} | ${f(s.kiln)} | ${f(s.kilnd)} | ${f(s.buildkit)} | ${f(s.legacy)} | ${f(s.buildah)} | ${ratio(
          k,
          val(s.buildkit, (c) => c.medianS),
        )} | ${ratio(
          val(s.kilnd, (c) => c.medianS),
          val(s.buildkit, (c) => c.medianS),
        )} | ${ratio(
          k,
          val(s.legacy, (c) => c.medianS),
        )} | ${ratio(
          k,
          val(s.buildah, (c) => c.medianS),
        )} |`,
      );
      const top = val(s.kiln, () => 0) === undefined ? undefined : (s.kiln as Cell).topVertices;
      if (top)
        vertexRows.push(
          `| ${id} | ${names[sc]} | ${top
            .slice(0, 4)
            .map(
              (v) =>
                `${v.name.replaceAll('|', '\\|').slice(0, 70)}${v.cached ? ' (cached)' : ''}: ${(v.ms / 1000).toFixed(2)}`,
            )
            .join('; ')} |`,
        );
    }
    rows.push(`| ${id} | cache imported from a registry | n/a (no remote cache yet) | | | | | | | | |`);
    const full = wr.scenarios.full;
    memRows.push(
      `| ${id} | ${mem(full.kiln)} | ${mem(full.kilnd)} | ${mem(full.buildkit)} | ${mem(full.legacy)} | ${mem(full.buildah)} | ${ratio(
        val(full.kiln, (c) => c.peakMiB),
        val(full.buildkit, (c) => c.peakMiB),
      )} | ${ratio(
        val(full.kilnd, (c) => c.peakMiB),
        val(full.buildkit, (c) => c.peakMiB),
      )} |`,
    );
  }
  const diffRows = Object.entries(workloads).map(([id, wr]) => {
    const d = wr.differential;
    if (!d) return `| ${id} | not run |`;
    if ('error' in d)
      return `| ${id} | error: ${d.error.split('\n')[0]!.slice(0, 200).replaceAll('|', '\\|')} |`;
    return `| ${id} | ${d.same ? 'match' : `differ: ${d.differences.slice(0, 3).join('; ').slice(0, 300).replaceAll('|', '\\|')}`} |`;
  });
  const m = result.machine as {
    cpu: string;
    cores: number;
    memGiB: number;
    kernel: string;
    loadavg: { start: number[]; end: number[] };
  };
  const v = result.versions as Record<string, string>;
  const warnings = Object.entries(workloads).flatMap(([id, wr]) =>
    Object.entries(wr.scenarios ?? {}).flatMap(([sc, byB]) =>
      Object.entries(byB).flatMap(([b, c]) =>
        c !== 'n/a' && c?.warnings ? [`${id} ${sc} ${b}: ${c.warnings.join(', ')}`] : [],
      ),
    ),
  );
  return `# Build suite: Kiln vs docker's BuildKit, docker's legacy builder and buildah

${result.inProgress ? `**Incomplete: written after ${Object.keys(workloads).length} workload(s) while the suite was still running.**\n\n` : ''}${result.date}: ${result.runs} runs per workload, scenario and builder, builders alternating (order rotated each run); medians of wall time in seconds.
Machine: ${m.cpu}, ${m.cores} cores, ${m.memGiB} GiB, Linux ${m.kernel}.
1/5/15-minute load average at start: ${m.loadavg.start.map((x) => x.toFixed(2)).join(' / ')}; at end: ${m.loadavg.end.map((x) => x.toFixed(2)).join(' / ')} (2-core VM shared with other work: figures are noisy).
Peers: docker ${v.docker} (BuildKit = \`DOCKER_BUILDKIT=1\`, legacy = \`DOCKER_BUILDKIT=0\`); ${v.buildah} (\`bud --layers --runtime runc\`); Kiln ${v.kiln} (\`bin/kiln build\`, CLI start-up included; "kilnd": \`bin/kiln --host\` to a running kilnd on its own root, client start-up included), ${v.node}.
All builders: same Dockerfile, same base image bytes (locally made, \`${BASES}\`), \`--network host\`, a tagged image in their own store.

Empty state: BuildKit \`docker builder prune -af\` + rmi; legacy rmi + \`docker image prune -f\`; buildah \`rm -a\`, rmi, \`rmi --prune\`, cache-mount dir removed; Kiln a fresh \`--root\` with the bases imported and its OCI runtime selected (untimed); kilnd the same, then kilnd restarted on it (untimed, as dockerd is up before BuildKit's builds); then \`sync\`; also a \`sync\` before every timed build (untimed, every builder), so that no builder's timed build flushes what the resets or the previous builds wrote. Workload 5 waits 61 s after the resets and after each legacy and buildah build, which delete their copy of the context (ext4 without a journal allocates inodes slowly for a while after mass deletions).
Workload 4's one-line change is the rebuild after a code change with a cache mount (objects in \`RUN --mount=type=cache\`); the legacy builder cannot build it (no \`--mount\`).

| workload | scenario | Kiln s | kilnd s | BuildKit s | legacy s | buildah s | Kiln/BuildKit | kilnd/BuildKit | Kiln/legacy | Kiln/buildah |
|------|------|-----:|-----:|-----:|-----:|-----:|-----:|-----:|-----:|-----:|
${rows.join('\n')}

Targets (issue 7): full build ≤ 1.0x BuildKit; no change and one-line change ≤ 0.5x BuildKit; peak memory below BuildKit's daemon.

Peak resident memory during the full build, MiB (Kiln and buildah: VmHWM of their own process, polled every 50 ms; BuildKit and legacy: dockerd's VmHWM after \`clear_refs\`, i.e. the whole daemon; kilnd: its VmHWM the same way; RUN processes are not counted for anyone):

| workload | Kiln | kilnd | BuildKit (dockerd) | legacy (dockerd) | buildah | Kiln/BuildKit | kilnd/BuildKit |
|------|-----:|-----:|-----:|-----:|-----:|-----:|-----:|
${memRows.join('\n')}

Kiln's slowest vertices (median run; seconds):

| workload | scenario | vertices |
|------|------|------|
${vertexRows.join('\n')}

Differential comparison of Kiln's image with BuildKit's (test/differential/harness.ts: file system and config):

| workload | result |
|------|------|
${diffRows.join('\n')}
${warnings.length > 0 ? `\nWarnings: ${warnings.join('; ')}\n` : ''}
Suite wall time: ${result.suiteSeconds} s (bases cached; includes resets, Kiln base imports and the differential builds).

Regenerate with \`npm run bench -- build-suite\` (env KILN_BENCH_RUNS, KILN_BENCH_ONLY) or \`npx node bench/build-suite.ts --runs N --only 1,5\`.
`;
}

async function main(): Promise<void> {
  ensureCliBundle(repo);
  const t0 = performance.now();
  const loadStart = os.loadavg();
  const workloads = WORKLOADS.filter(
    (w) =>
      ONLY.length === 0 || ONLY.some((o) => w.id === o || w.id.startsWith(`${o}-`) || w.id.startsWith(o)),
  );
  if (workloads.length === 0) throw new Error(`--only "${ONLY.join(',')}" matches no workload`);
  await ensurePeers();
  const archives = new Map<BaseId, string>();
  for (const base of ['busybox', 'debian-gcc'] as const) archives.set(base, await ensureBaseArchive(base));
  await loadBases(archives);
  const dockerdPid = Number((await must(['pidof', 'dockerd'])).trim().split(/\s+/)[0]);
  const work = await mkdtemp(join('/var/tmp', 'kiln-bench-build-suite-'));
  const pkg = await startPackageServer();
  const ctx: Ctx = {
    work,
    archives,
    pkgBase: pkg.base,
    dockerdPid,
    kilnRoot: new Map(),
    runcPath: '/usr/bin/runc',
  };
  const results: Record<string, WorkloadResult> = {};
  const profiles: Record<string, Record<string, ProfileSummary>> = {};
  /** Writes the results so far (after each workload, so that an interrupted run leaves its figures). */
  const writeResults = async (inProgress: boolean): Promise<string> => {
    const result = {
      date: new Date().toISOString(),
      runs: RUNS,
      only: ONLY,
      inProgress,
      suiteSeconds: Math.round((performance.now() - t0) / 1000),
      machine: {
        cpu: os.cpus()[0]?.model ?? '?',
        cores: os.cpus().length,
        memGiB: Math.round(os.totalmem() / 2 ** 30),
        kernel: os.release(),
        loadavg: { start: loadStart.map((x) => round(x)), end: os.loadavg().map((x) => round(x)) },
      },
      versions: {
        docker: version([DOCKER, 'version', '--format', '{{.Server.Version}}']),
        buildah: version(['buildah', '--version']),
        runc: version(['runc', '--version']),
        kiln: `${version([KILN, '--version'])} (git ${version(['git', '-C', repo, 'rev-parse', '--short', 'HEAD'])}${
          version(['git', '-C', repo, 'status', '--porcelain', '--untracked-files=no']) === ''
            ? ''
            : ', with uncommitted changes'
        })`,
        node: `Node ${process.version}`,
      },
      baseImages: BASES,
      workloads: results,
    };
    const partial = ONLY.length > 0 || RUNS < 3;
    // Partial runs (--only, fewer than 3 runs) do not overwrite the committed results.
    const stem = partial
      ? join(os.tmpdir(), 'kiln-bench-build-suite.partial')
      : join(repo, 'bench/results/build-suite');
    await writeFile(`${stem}.json`, `${JSON.stringify(result, null, 2)}\n`);
    const md = markdown(result, results);
    await writeFile(`${stem}.md`, md);
    return `${md}\nsuite time ${result.suiteSeconds} s; wrote ${stem}.{json,md}\n`;
  };
  try {
    for (const w of workloads) {
      console.log(`workload ${w.id}: ${w.title}`);
      try {
        results[w.id] = await runWorkload(w, ctx);
      } catch (err) {
        console.error(`workload ${w.id} failed: ${(err as Error).message}`);
        results[w.id] = {
          title: w.title,
          loadavg: { before: 0, after: os.loadavg()[0]! },
          scenarios: { full: {}, noChange: {}, oneLine: {} },
          remoteCache: 'n/a (no remote cache yet)',
          error: (err as Error).message.slice(0, 4000),
        };
      }
      if (PROFILE && PROFILED.some((p) => w.id.startsWith(`${p}-`))) {
        try {
          profiles[w.id] = await profile(w, ctx);
        } catch (err) {
          console.error(`profiling ${w.id} failed: ${(err as Error).message}`);
        }
      }
      await writeResults(true);
    }
    if (PROFILE) {
      await mkdir('/tmp/kiln-bench-profiles', { recursive: true });
      await writeFile('/tmp/kiln-bench-profiles/summary.json', `${JSON.stringify(profiles, null, 2)}\n`);
      for (const [id, byScenario] of Object.entries(profiles)) {
        for (const [sc, s] of Object.entries(byScenario)) {
          console.log(`\nCPU profile, Kiln, ${id} ${sc}: ${s.files} profile(s), ${s.totalMs} ms sampled`);
          for (const t of s.top.slice(0, 16))
            console.log(
              `  ${String(t.ms).padStart(7)} ms ${(t.share * 100).toFixed(1).padStart(5)}%  ${t.fn}`,
            );
          console.log('  by file:');
          for (const t of s.byFile.slice(0, 10))
            console.log(
              `  ${String(t.ms).padStart(7)} ms ${(t.share * 100).toFixed(1).padStart(5)}%  ${t.fn}`,
            );
        }
      }
    }
  } finally {
    pkg.server.closeAllConnections();
    pkg.server.close();
    for (const root of ctx.kilnRoot.values()) await removeKilnRoot(root).catch(() => undefined);
    await stopKilnd(ctx).catch(() => undefined);
    for (const w of workloads)
      for (const b of ['buildkit', 'legacy'] as const) await exec([DOCKER, 'image', 'rm', '-f', tagOf(w, b)]);
    for (const w of workloads) await exec(['buildah', 'rmi', '-f', tagOf(w, 'buildah')]);
    await exec([DOCKER, 'image', 'prune', '-f']);
    await exec(['buildah', 'rmi', '--prune']);
    await rm(work, { recursive: true, force: true });
  }
  const summary = await writeResults(false);
  process.stdout.write(`\n${summary}`);
  if (Object.values(results).some((r) => r.error)) process.exitCode = 1;
}

await main();
