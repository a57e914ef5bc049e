/**
 * Pull/push benchmark on loopback: a 5-layer image (~300 MB of gzip layers
 * made from base64-like random text, which gzip shrinks only to ~75%) in a
 * local docker-registry. RUNS runs of each, alternating, medians compared:
 *
 * - pull: Kiln fetch only (unpack: false) and Kiln fetch + unpack, each into
 *   a fresh state root, against `skopeo copy docker://… oci:DIR` (fetch
 *   only, fresh DIR) and `docker pull` (fetch + extract; image removed first)
 *   when a docker daemon answers;
 * - push: Kiln push of the image imported from an OCI layout (no mount
 *   source known) against `skopeo copy oci:… docker://…`, each to a fresh,
 *   empty registry so that every blob is uploaded; and, with
 *   docker, Kiln push of the pulled image (which mounts from the source
 *   repository) against `docker push` of the pulled image (which mounts too).
 *
 * Ratios are other / Kiln (> 1 means Kiln is faster). Kiln runs in-process
 * (no CLI start-up); skopeo and docker are processes. Kiln fsyncs every blob
 * it stores (crash safety); skopeo's oci: destination and docker do not
 * fsync layers. The 1-minute load average is recorded at each measurement
 * (the machine is shared). Writes
 * bench/results/pull-push.json and .md. Run: `npx node bench/pull-push.ts`
 * (env KILN_BENCH_RUNS, KILN_BENCH_LAYER_MB).
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { type Digest, sha256 } from '../src/core/digest.ts';
import { importImages, pull, push } from '../src/core/images/index.ts';
import { MediaType } from '../src/core/images/types.ts';
import { openCore } from '../src/core/metadata/index.ts';
import { setTempMountRoot } from '../src/core/mount/mount.ts';
import { packTar } from '../src/core/archive/tar.ts';

const RUNS = Number(process.env.KILN_BENCH_RUNS ?? 3);
const LAYER_MB = Number(process.env.KILN_BENCH_LAYER_MB ?? 80);
const LAYERS = 5;
const gzipP = promisify(gzip);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Runs a command; resolves to the CPU seconds (user + system) it used, from bash's `times`. */
function run(cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn('bash', ['-c', '"$@"; rc=$?; times >&2; exit $rc', 'bash', cmd, ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    p.stderr.setEncoding('utf8').on('data', (c: string) => {
      err += c;
    });
    p.on('error', reject);
    p.on('close', (code) => {
      if (code !== 0) {
        reject(new Error(`${cmd} ${args.join(' ')}: ${err}`));
        return;
      }
      // The last line of `times` is the children's user and system time, e.g. "0m1.234s 0m0.567s".
      const last = err.trim().split('\n').at(-1) ?? '';
      const secs = [...last.matchAll(/(\d+)m([\d.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]));
      resolve(secs.reduce((a, b) => a + b, 0));
    });
  });
}

interface Timing {
  wall: number;
  /** CPU seconds of the measured side (Kiln's process, or the child's), undefined when not measurable. */
  cpu: number | undefined;
  /** 1-minute load average when the measurement ended. */
  load?: number;
}

/** Times `fn`: a number it returns is a child's CPU seconds; otherwise this process's CPU use is measured. */
async function timed(fn: () => Promise<unknown>, cpuMeasurable = true): Promise<Timing> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const r = await fn();
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  const cpu = typeof r === 'number' ? r : (c.user + c.system) / 1e6;
  return { wall, cpu: cpuMeasurable ? cpu : undefined };
}

function dockerAvailable(): boolean {
  try {
    execFileSync('docker', ['info'], { stdio: 'ignore', timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

/** Base64-like random text: gzip gets it to ~75%. */
function textish(bytes: number): Buffer {
  return Buffer.from(
    randomBytes(Math.ceil((bytes * 3) / 4))
      .toString('base64')
      .slice(0, bytes),
  );
}

async function makeLayout(dir: string): Promise<{ digest: Digest; bytes: number }> {
  await mkdir(join(dir, 'blobs/sha256'), { recursive: true });
  const put = async (b: Uint8Array): Promise<Digest> => {
    const d = sha256(b);
    await writeFile(join(dir, 'blobs/sha256', d.slice(7)), b);
    return d;
  };
  const layers = [];
  const diffIDs: Digest[] = [];
  let total = 0;
  for (let i = 0; i < LAYERS; i++) {
    const file = textish(LAYER_MB << 20);
    const parts: Uint8Array[] = [];
    for await (const c of packTar([
      { header: { name: `layer${i}/`, type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 } },
      {
        header: {
          name: `layer${i}/data.txt`,
          type: 'file',
          mode: 0o644,
          uid: 0,
          gid: 0,
          size: file.length,
          mtime: 0,
        },
        body: file,
      },
    ]))
      parts.push(c);
    const tar = Buffer.concat(parts);
    diffIDs.push(sha256(tar));
    const gz = await gzipP(tar, { level: 1 });
    total += gz.length;
    layers.push({ mediaType: MediaType.OciLayerGzip, digest: await put(gz), size: gz.length });
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: diffIDs },
      config: {},
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: { mediaType: MediaType.OciConfig, digest: await put(config), size: config.length },
      layers,
    }),
  );
  const md = await put(manifest);
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: MediaType.OciManifest,
          digest: md,
          size: manifest.length,
          annotations: { 'org.opencontainers.image.ref.name': 'v1' },
        },
      ],
    }),
  );
  return { digest: md, bytes: total };
}

async function startRegistry(dir: string): Promise<{ host: string; stop(): Promise<void> }> {
  const srv = (await import('node:net')).createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  await mkdir(join(dir, 'storage'), { recursive: true });
  const cfg = join(dir, 'config.yml');
  await writeFile(
    cfg,
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'storage')}\nhttp:\n  addr: 127.0.0.1:${port}\n`,
  );
  const proc = spawn('/usr/bin/docker-registry', ['serve', cfg], { stdio: 'ignore' });
  const host = `127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(`http://${host}/v2/`);
      await r.body?.cancel();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    host,
    stop: async () => {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

interface Row {
  what: string;
  runs: number[];
  loads: number[];
  median: number;
  cpuRuns: number[];
  cpuMedian: number | undefined;
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(os.tmpdir(), 'kiln-bench-pull-'));
  setTempMountRoot(join(work, 'mounts'));
  const docker = dockerAvailable();
  const loadBefore = os.loadavg()[0]!;
  const reg = await startRegistry(join(work, 'reg'));
  const rows = new Map<string, Timing[]>();
  const add = (what: string, t: Timing): void => {
    const load = os.loadavg()[0]!;
    rows.set(what, [...(rows.get(what) ?? []), { ...t, load }]);
    process.stderr.write(
      `${what}: ${t.wall.toFixed(2)} s (cpu ${t.cpu?.toFixed(2) ?? 'n/a'}, load ${load.toFixed(1)})\n`,
    );
  };
  try {
    const layout = join(work, 'layout');
    const { digest, bytes } = await makeLayout(layout);
    process.stderr.write(`image ${digest}: ${(bytes / 1e6).toFixed(0)} MB of layers\n`);
    const src = `${reg.host}/bench/src:v1`;
    await run('skopeo', [
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${layout}:v1`,
      `docker://${src}`,
    ]);
    // A store with the image imported (no mount source) for full-upload pushes,
    // and one with it pulled (mount source known).
    const imported = await openCore({ root: join(work, 'imported'), namespace: 'bench' });
    await importImages(imported, layout, { name: 'bench/img:v1' });
    const pulled = await openCore({ root: join(work, 'pulled'), namespace: 'bench' });
    await pull(pulled, src, { unpack: false });
    if (docker) await run('docker', ['pull', '-q', src]);

    for (let i = 0; i < RUNS; i++) {
      for (const unpack of [false, true]) {
        const root = join(work, `kiln-${i}-${unpack}`);
        const core = await openCore({ root, namespace: 'bench' });
        add(
          unpack ? 'Kiln pull (fetch + unpack)' : 'Kiln pull (fetch only)',
          await timed(() => pull(core, src, { unpack })),
        );
        await core.close();
        await rm(root, { recursive: true, force: true });
      }
      const dir = join(work, `skopeo-${i}`);
      add(
        'skopeo copy docker:// → oci: (fetch only)',
        await timed(() =>
          run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${src}`, `oci:${dir}:x`]),
        ),
      );
      await rm(dir, { recursive: true, force: true });
      if (docker) {
        await run('docker', ['rmi', src]);
        add('docker pull (fetch + extract)', await timed(() => run('docker', ['pull', '-q', src]), false));
      }
      // Full uploads go to a fresh, empty registry each time: nothing can be skipped or mounted
      // (skopeo remembers where it saw blobs and would mount them otherwise).
      for (const who of ['kiln', 'skopeo']) {
        const fresh = await startRegistry(join(work, `reg-${who}-${i}`));
        try {
          if (who === 'kiln') {
            add(
              'Kiln push (full upload)',
              await timed(() => push(imported, 'bench/img:v1', `${fresh.host}/bench/kiln:v1`)),
            );
          } else {
            add(
              'skopeo copy oci: → docker:// (full upload)',
              await timed(() =>
                run('skopeo', [
                  'copy',
                  '--quiet',
                  '--dest-tls-verify=false',
                  `oci:${layout}:v1`,
                  `docker://${fresh.host}/bench/skopeo:v1`,
                ]),
              ),
            );
          }
        } finally {
          await fresh.stop();
          await rm(join(work, `reg-${who}-${i}`), { recursive: true, force: true });
        }
      }
      if (docker) {
        add(
          'Kiln push (pulled image: cross-repo mount)',
          await timed(() => push(pulled, src, `${reg.host}/bench/kiln-mount-${i}:v1`)),
        );
        const tag = `${reg.host}/bench/docker-${i}:v1`;
        await run('docker', ['tag', src, tag]);
        add(
          'docker push (pulled image: cross-repo mount)',
          await timed(() => run('docker', ['push', '-q', tag])),
        );
        await run('docker', ['rmi', tag]);
      }
    }
    await imported.close();
    await pulled.close();
    if (docker) await run('docker', ['rmi', src]).catch(() => {});

    const table: Row[] = [...rows.entries()].map(([what, ts]) => {
      const cpuRuns = ts.map((t) => t.cpu).filter((c): c is number => c !== undefined);
      const runs = ts.map((t) => t.wall);
      return {
        what,
        runs,
        loads: ts.map((t) => t.load ?? Number.NaN),
        median: median(runs),
        cpuRuns,
        cpuMedian: cpuRuns.length ? median(cpuRuns) : undefined,
      };
    });
    const m = (w: string): number | undefined => table.find((r) => r.what === w)?.median;
    const mc = (w: string): number | undefined => table.find((r) => r.what === w)?.cpuMedian;
    const ratio = (other: string, kiln: string): number | undefined => {
      const a = m(other);
      const b = m(kiln);
      return a !== undefined && b !== undefined ? a / b : undefined;
    };
    const cpuRatio = (other: string, kiln: string): number | undefined => {
      const a = mc(other);
      const b = mc(kiln);
      return a !== undefined && b !== undefined ? a / b : undefined;
    };
    const ratios: Record<string, number | undefined> = {
      'skopeo pull / Kiln pull (fetch only)': ratio(
        'skopeo copy docker:// → oci: (fetch only)',
        'Kiln pull (fetch only)',
      ),
      'skopeo pull (fetch only) / Kiln pull (fetch + unpack)': ratio(
        'skopeo copy docker:// → oci: (fetch only)',
        'Kiln pull (fetch + unpack)',
      ),
      'docker pull / Kiln pull (fetch + unpack)': ratio(
        'docker pull (fetch + extract)',
        'Kiln pull (fetch + unpack)',
      ),
      'skopeo push / Kiln push (full upload)': ratio(
        'skopeo copy oci: → docker:// (full upload)',
        'Kiln push (full upload)',
      ),
      'docker push / Kiln push (mount)': ratio(
        'docker push (pulled image: cross-repo mount)',
        'Kiln push (pulled image: cross-repo mount)',
      ),
    };
    const cpuRatios: Record<string, number | undefined> = {
      'skopeo pull / Kiln pull (fetch only), CPU seconds': cpuRatio(
        'skopeo copy docker:// → oci: (fetch only)',
        'Kiln pull (fetch only)',
      ),
      'skopeo push / Kiln push (full upload), CPU seconds': cpuRatio(
        'skopeo copy oci: → docker:// (full upload)',
        'Kiln push (full upload)',
      ),
    };
    const cpus = os.cpus();
    const result = {
      date: new Date().toISOString(),
      image: { layers: LAYERS, layerBytesGzip: bytes, uncompressedMiBPerLayer: LAYER_MB, manifest: digest },
      runs: RUNS,
      docker: docker
        ? execFileSync('docker', ['version', '--format', '{{.Server.Version}}']).toString().trim()
        : null,
      skopeo: execFileSync('skopeo', ['--version']).toString().trim(),
      machine: {
        cpuModel: cpus[0]?.model ?? 'unknown',
        cores: cpus.length,
        memoryBytes: os.totalmem(),
        kernel: os.release(),
        node: process.version,
        loadavg: [loadBefore, os.loadavg()[0]!],
      },
      results: table,
      ratios,
      cpuRatios,
    };
    const out = fileURLToPath(new URL('./results/', import.meta.url));
    await mkdir(out, { recursive: true });
    await writeFile(join(out, 'pull-push.json'), `${JSON.stringify(result, null, 2)}\n`);
    const md = [
      '# Pull and push benchmark',
      '',
      `${result.date}: ${LAYERS} gzip layers, ${(bytes / 1e6).toFixed(0)} MB in all (${LAYER_MB} MiB uncompressed each), ` +
        `local docker-registry on loopback; ${RUNS} runs each, alternating; medians.`,
      `Machine: ${result.machine.cpuModel}, ${result.machine.cores} cores, Linux ${result.machine.kernel}, Node ${result.machine.node}; ` +
        `${result.skopeo}; docker ${result.docker ?? 'not available (no daemon)'}.`,
      `1-minute load average before/after: ${result.machine.loadavg.map((l) => l.toFixed(2)).join(' / ')} (2-core VM shared with other work).`,
      'Kiln runs in-process (no CLI start-up); skopeo and docker are separate processes (docker pull/push go through dockerd).',
      '',
      "CPU seconds: Kiln's whole process (incl. its thread pool) and skopeo's process; docker's work happens in dockerd",
      "and is not measured (n/a). The registry's own CPU is in neither. On a loaded machine CPU time is the steadier figure.",
      '',
      '| what | median wall s | wall runs | median CPU s | load at runs |',
      '|------|---------:|------|------:|------|',
      ...table.map(
        (r) =>
          `| ${r.what} | ${r.median.toFixed(2)} | ${r.runs.map((x) => x.toFixed(2)).join(', ')} | ${r.cpuMedian?.toFixed(2) ?? 'n/a'} | ${r.loads.map((x) => x.toFixed(1)).join(', ')} |`,
      ),
      '',
      '| ratio (other / Kiln; > 1 means Kiln is faster or uses less CPU) | value |',
      '|------|------:|',
      ...Object.entries({ ...ratios, ...cpuRatios })
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `| ${k} | **${v!.toFixed(2)}** |`),
      '',
      'Regenerate with `npx node bench/pull-push.ts`.',
      '',
    ].join('\n');
    await writeFile(join(out, 'pull-push.md'), md);
    process.stdout.write(md);
  } finally {
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
