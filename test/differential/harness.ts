/**
 * Differential harness: builds one corpus case (test/differential/corpus/<NN-name>)
 * with docker's BuildKit (`/usr/bin/docker`, DOCKER_BUILDKIT=1; docker 20.10 =
 * BuildKit v0.8) and with Kiln (`bin/kiln --root R build`), and compares
 *
 * - the final file system: both builders export it as a tar (docker
 *   `-o type=tar`, Kiln `-o type=tar`), GNU tar extracts each as root
 *   (numeric owners), and a walk lists path, type, permission bits, uid, gid,
 *   size, sha256 of content, link target, hard-link count and device numbers
 *   (mtimes ignored);
 * - the image config: docker's raw config from `docker save`, Kiln's from
 *   `-o type=oci`; created times, ids, `container*`, `docker_version` and the
 *   layer digests are ignored; every other config field (empty values
 *   dropped), author, platform, the layer count and history
 *   `created_by`/`empty_layer`/`comment` must be equal;
 * - failures: both builders must fail, with the same error kind
 *   (`classifyError`), the same RUN exit code and, where both name one, the
 *   same Dockerfile line.
 *
 * Both builders start from the same base image, `kiln-test/busybox:latest`:
 * scripts/make-busybox-rootfs.sh → `docker import` → `docker save` → `kiln
 * images import --unpack` (same config and layer bytes on both sides).
 *
 * A case's `case.json` (all optional): `target`, `buildArgs`, `secrets`
 * (id → secret text, written to temp files for `--secret id=…,src=…`),
 * `ssh` (true: a listening unix socket passed as `--ssh default=…`), `http`
 * (file name → text, served on loopback; its base URL goes in as the build
 * arg HTTP_BASE), `expectError` (the error kind both must report),
 * `skipReason`, `knownDifference` (a recorded Kiln/BuildKit difference: the
 * test is reported as todo).
 *
 * Limits: xattrs and file capabilities are not compared; docker's build
 * cache is reused between runs (each case's docker image is removed, its
 * cache is not); cases must not need the internet.
 *
 * Run directly (`npx node test/differential/harness.ts [case…]`) for a
 * plain-text report of every case.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { removeTree } from '../../src/core/fs/safe.ts';
import { unmountAll } from '../../src/core/mount/mount.ts';

const repo = path.resolve(import.meta.dirname, '../..');
export const CORPUS = path.join(import.meta.dirname, 'corpus');
export const DOCKER = '/usr/bin/docker';
export const KILN = path.join(repo, 'bin/kiln');
export const BASE_IMAGE = 'kiln-test/busybox:latest';

/** The optional `case.json` of a corpus case. */
export interface CaseSpec {
  target?: string;
  buildArgs?: Record<string, string>;
  secrets?: Record<string, string>;
  ssh?: boolean;
  http?: Record<string, string>;
  expectError?: string;
  skipReason?: string;
  knownDifference?: string;
}

export interface Case {
  name: string;
  dir: string;
  spec: CaseSpec;
}

/** Lists the corpus cases (directories with a Dockerfile), sorted by name. */
export async function loadCorpus(dir: string = CORPUS): Promise<Case[]> {
  const out: Case[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const caseDir = path.join(dir, name);
    if (!(await lstat(caseDir)).isDirectory()) continue;
    let spec: CaseSpec = {};
    try {
      spec = JSON.parse(await readFile(path.join(caseDir, 'case.json'), 'utf8')) as CaseSpec;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    out.push({ name, dir: caseDir, spec });
  }
  return out;
}

// ---------------------------------------------------------------- processes

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, collecting its output (never throws for a non-zero exit). */
export function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  const child: ChildProcess = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on('data', (b: Buffer) => out.push(b));
  child.stderr?.on('data', (b: Buffer) => err.push(b));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
    );
  });
}

async function mustRun(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  const r = await run(cmd, args, env);
  if (r.code !== 0)
    throw new Error(`${cmd} ${args.join(' ')} exited with ${r.code}: ${r.stderr || r.stdout}`);
  return r;
}

/** True when `docker info` answers (the daemon runs). */
export function dockerAvailable(): boolean {
  try {
    return spawnSync(DOCKER, ['info'], { stdio: 'ignore', timeout: 20_000 }).status === 0;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- file system listing

export interface FsEntry {
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'char' | 'block' | 'socket';
  /** Permission and special bits (07777). */
  mode: number;
  uid: number;
  gid: number;
  /** Regular files only. */
  size?: number;
  sha256?: string;
  nlink?: number;
  link?: string;
  rdev?: number;
}

function fileType(mode: number): FsEntry['type'] {
  switch (mode & 0o170000) {
    case 0o100000:
      return 'file';
    case 0o040000:
      return 'dir';
    case 0o120000:
      return 'symlink';
    case 0o010000:
      return 'fifo';
    case 0o020000:
      return 'char';
    case 0o060000:
      return 'block';
    default:
      return 'socket';
  }
}

function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/** Walks an extracted root file system; the root itself is listed as "/". Sorted by path. */
export async function walkTree(root: string): Promise<FsEntry[]> {
  const out: FsEntry[] = [];
  const visit = async (rel: string): Promise<void> => {
    const abs = path.join(root, rel);
    const st = await lstat(abs);
    const type = fileType(st.mode);
    const e: FsEntry = {
      path: rel === '' ? '/' : `/${rel}`,
      type,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
    };
    if (type === 'file') {
      e.size = st.size;
      e.sha256 = await sha256File(abs);
      e.nlink = st.nlink;
    } else if (type === 'symlink') e.link = await readlink(abs);
    else if (type === 'char' || type === 'block') e.rdev = st.rdev;
    out.push(e);
    if (type === 'dir') {
      for (const name of (await readdir(abs)).sort()) await visit(rel === '' ? name : `${rel}/${name}`);
    }
  };
  await visit('');
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

function describeEntry(e: FsEntry): string {
  const parts = [e.type, `mode=${e.mode.toString(8).padStart(4, '0')}`, `uid=${e.uid}`, `gid=${e.gid}`];
  if (e.size !== undefined) parts.push(`size=${e.size}`);
  if (e.link !== undefined) parts.push(`-> ${JSON.stringify(e.link)}`);
  return parts.join(' ');
}

/** Every difference between two listings ("docker" first, "kiln" second), in path order. */
export function diffTrees(docker: FsEntry[], kiln: FsEntry[]): string[] {
  const out: string[] = [];
  const a = new Map(docker.map((e) => [e.path, e]));
  const b = new Map(kiln.map((e) => [e.path, e]));
  const paths = [...new Set([...a.keys(), ...b.keys()])].sort();
  const fields = ['type', 'mode', 'uid', 'gid', 'size', 'sha256', 'link', 'nlink', 'rdev'] as const;
  for (const p of paths) {
    const d = a.get(p);
    const k = b.get(p);
    if (!k) {
      out.push(`${p}: only in docker (${describeEntry(d!)})`);
      continue;
    }
    if (!d) {
      out.push(`${p}: only in kiln (${describeEntry(k)})`);
      continue;
    }
    for (const f of fields) {
      if (d[f] === k[f]) continue;
      const show = (v: unknown): string =>
        f === 'mode' && typeof v === 'number' ? v.toString(8).padStart(4, '0') : JSON.stringify(v);
      out.push(`${p}: ${f} docker=${show(d[f])} kiln=${show(k[f])}`);
      break;
    }
  }
  return out;
}

// ---------------------------------------------------------------- image config

/** A raw image config (docker's or OCI) as parsed JSON. */
export type RawConfig = Record<string, unknown>;

function isEmpty(v: unknown): boolean {
  if (v === null || v === undefined || v === '' || v === false) return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === 'object') return Object.keys(v as object).length === 0;
  return false;
}

/** The compared part of an image config (see the module comment). */
export function normalizeConfig(raw: RawConfig): Record<string, unknown> {
  const cfg = (raw.config ?? {}) as Record<string, unknown>;
  const config: Record<string, unknown> = {};
  for (const k of Object.keys(cfg).sort()) {
    // `Image` is docker's legacy parent image ID, not part of the OCI config.
    if (k === 'Image' || isEmpty(cfg[k])) continue;
    config[k] = cfg[k];
  }
  const history = ((raw.history ?? []) as Record<string, unknown>[]).map((h) => ({
    created_by: (h.created_by as string | undefined) ?? '',
    empty_layer: h.empty_layer === true,
    comment: (h.comment as string | undefined) ?? '',
  }));
  const rootfs = (raw.rootfs ?? {}) as { diff_ids?: unknown[] };
  const out: Record<string, unknown> = {
    architecture: raw.architecture,
    os: raw.os,
    config,
    history,
    layers: rootfs.diff_ids?.length ?? 0,
  };
  if (!isEmpty(raw.variant)) out.variant = raw.variant;
  if (!isEmpty(raw.author)) out.author = raw.author;
  if (!isEmpty(raw['os.version'])) out['os.version'] = raw['os.version'];
  return out;
}

/** Every differing field of two normalized configs, as `field.path: docker=… kiln=…`. */
export function diffConfigs(docker: unknown, kiln: unknown, at = ''): string[] {
  if (isDeepStrictEqual(docker, kiln)) return [];
  const obj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
  if (Array.isArray(docker) && Array.isArray(kiln)) {
    const out: string[] = [];
    if (docker.length !== kiln.length)
      out.push(
        `${at}: length docker=${docker.length} kiln=${kiln.length} (docker=${JSON.stringify(docker)} kiln=${JSON.stringify(kiln)})`,
      );
    else for (let i = 0; i < docker.length; i++) out.push(...diffConfigs(docker[i], kiln[i], `${at}[${i}]`));
    return out;
  }
  if (obj(docker) && obj(kiln) && !Array.isArray(docker) && !Array.isArray(kiln)) {
    const out: string[] = [];
    for (const k of [...new Set([...Object.keys(docker), ...Object.keys(kiln)])].sort())
      out.push(...diffConfigs(docker[k], kiln[k], at ? `${at}.${k}` : k));
    return out;
  }
  return [`${at}: docker=${JSON.stringify(docker)} kiln=${JSON.stringify(kiln)}`];
}

// ---------------------------------------------------------------- errors

export interface ErrorKind {
  kind: string;
  /** The Dockerfile line the builder names, when it names one. */
  line?: number;
  /** RUN exit code for kind run-exit. */
  exitCode?: number;
  /** The builder's error line(s), for reports. */
  message: string;
}

/**
 * Classifies a failed build's output. Kinds: unknown-instruction,
 * unknown-flag, target-not-found, circular-dependency, run-exit,
 * missing-file, multi-source-needs-dir, user-not-found, parse (any other
 * Dockerfile error found before solving), other.
 */
export function classifyError(builder: 'docker' | 'kiln', output: string): ErrorKind {
  const lines = output.split('\n');
  const message =
    builder === 'docker'
      ? lines.filter((l) => /^(failed to|executor failed|error:|ERROR:)/.test(l)).join(' | ') ||
        lines.filter(Boolean).slice(-3).join(' | ')
      : lines.filter((l) => /^error: /.test(l)).join(' | ') || lines.filter(Boolean).slice(-3).join(' | ');
  const m = message;
  let line: number | undefined;
  const lm =
    builder === 'docker' ? /dockerfile parse error line (\d+)/.exec(m) : /Dockerfile:(\d+): /.exec(m);
  if (lm) line = Number(lm[1]);
  const withLine = (kind: string, extra: Partial<ErrorKind> = {}): ErrorKind => ({
    kind,
    message,
    ...(line !== undefined ? { line } : {}),
    ...extra,
  });
  if (/unknown instruction/i.test(m)) return withLine('unknown-instruction');
  if (/unknown flag/i.test(m)) return withLine('unknown-flag');
  if (/target stage .* could not be found|failed to reach build target|no stage named/i.test(m))
    return withLine('target-not-found');
  if (/circular dependency/i.test(m)) return withLine('circular-dependency');
  const exit = /exit code:? (\d+)/.exec(m);
  if (exit) return withLine('run-exit', { exitCode: Number(exit[1]) });
  if (/more than one source file|destination must be a directory/i.test(m))
    return withLine('multi-source-needs-dir');
  if (/unable to find user|no such user|unknown user/i.test(m)) return withLine('user-not-found');
  if (
    /failed to compute cache key: .* not found|failed to walk .* no such file|no such file or directory|not found: not found|no source files were specified/i.test(
      m,
    )
  )
    return withLine('missing-file');
  if (builder === 'docker' ? /failed to create LLB definition|dockerfile parse error/.test(m) : lm)
    return withLine('parse');
  return withLine('other');
}

// ---------------------------------------------------------------- base image

export interface Base {
  /** `docker save` of the base image (input for `kiln images import`). */
  saveTar: string;
}

/** Makes the busybox base, imports it into docker as BASE_IMAGE and saves it. */
export async function prepareBase(work: string): Promise<Base> {
  const rootfs = path.join(work, 'base-rootfs');
  const layer = path.join(work, 'base-layer.tar');
  const saveTar = path.join(work, 'base-save.tar');
  await mustRun('bash', [path.join(repo, 'scripts/make-busybox-rootfs.sh'), rootfs]);
  // Fixed mtimes and owners: the same busybox gives the same layer digest, so
  // an earlier import is reused (no dangling images, docker's cache stays warm).
  await mustRun('tar', [
    '--sort=name',
    '--numeric-owner',
    '--owner=0',
    '--group=0',
    '--mtime=@1700000000',
    '-C',
    rootfs,
    '-cf',
    layer,
    '.',
  ]);
  const env = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
  const want = JSON.stringify([[`sha256:${await sha256File(layer)}`], ['sh'], [env]]);
  const have = await run(DOCKER, [
    'image',
    'inspect',
    '--format',
    '[{{json .RootFS.Layers}},{{json .Config.Cmd}},{{json .Config.Env}}]',
    BASE_IMAGE,
  ]);
  if (have.code !== 0 || JSON.stringify(JSON.parse(have.stdout)) !== want) {
    await mustRun(DOCKER, ['import', '-c', `ENV ${env}`, '-c', 'CMD ["sh"]', layer, BASE_IMAGE]);
  }
  await mustRun(DOCKER, ['save', '-o', saveTar, BASE_IMAGE]);
  return { saveTar };
}

/** A Kiln state directory with the base image imported and unpacked. */
export async function prepareKilnRoot(root: string, base: Base): Promise<void> {
  await mustRun(KILN, ['--root', root, 'images', 'import', base.saveTar, '--name', BASE_IMAGE, '--unpack']);
}

/** Unmounts anything left under a Kiln root and removes it. */
export async function removeKilnRoot(root: string): Promise<void> {
  // Never delete through a mount that failed to come off: removeTree refuses then.
  await unmountAll(root);
  await removeTree(root);
}

// ---------------------------------------------------------------- per-case services

interface Services {
  args: string[];
  close(): Promise<void>;
}

/** Secrets files, ssh socket and HTTP server a case asks for, as shared build flags. */
async function startServices(spec: CaseSpec, work: string): Promise<Services> {
  const args: string[] = [];
  const closers: (() => Promise<void>)[] = [];
  for (const [k, v] of Object.entries(spec.buildArgs ?? {})) args.push('--build-arg', `${k}=${v}`);
  if (spec.target) args.push('--target', spec.target);
  for (const [id, text] of Object.entries(spec.secrets ?? {})) {
    const file = path.join(work, `secret-${id}`);
    await writeFile(file, text, { mode: 0o600 });
    args.push('--secret', `id=${id},src=${file}`);
  }
  if (spec.ssh) {
    const sock = path.join(work, 'agent.sock');
    const srv: NetServer = createNetServer((c) => c.destroy());
    await new Promise<void>((resolve) => srv.listen(sock, resolve));
    closers.push(() => new Promise<void>((resolve) => srv.close(() => resolve())));
    args.push('--ssh', `default=${sock}`);
  }
  if (spec.http) {
    const files = spec.http;
    const srv: HttpServer = createHttpServer((req, res) => {
      const name = decodeURIComponent((req.url ?? '/').slice(1));
      const body = files[name];
      if (body === undefined) {
        res.writeHead(404).end('not found');
        return;
      }
      res
        .writeHead(200, {
          'content-type': 'application/octet-stream',
          'content-length': Buffer.byteLength(body),
          'last-modified': 'Tue, 14 Nov 2023 22:13:20 GMT',
        })
        .end(req.method === 'HEAD' ? undefined : body);
    });
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const { port } = srv.address() as AddressInfo;
    closers.push(
      () =>
        new Promise<void>((resolve) => {
          srv.closeAllConnections();
          srv.close(() => resolve());
        }),
    );
    args.push('--build-arg', `HTTP_BASE=http://127.0.0.1:${port}`);
  }
  return {
    args,
    close: async () => {
      for (const c of closers) await c();
    },
  };
}

// ---------------------------------------------------------------- builds

export interface Outcome {
  ok: boolean;
  log: string;
  fs?: FsEntry[];
  config?: RawConfig;
  error?: ErrorKind;
}

async function extract(tar: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await mustRun('tar', ['-C', dir, '--numeric-owner', '--same-owner', '-xpf', tar]);
}

async function readJson(file: string): Promise<RawConfig> {
  return JSON.parse(await readFile(file, 'utf8')) as RawConfig;
}

/** docker build (image for the config via docker save, then the cached build again as a tar). */
export async function buildWithDocker(c: Case, work: string, flags: string[]): Promise<Outcome> {
  const env = { DOCKER_BUILDKIT: '1' };
  const tag = `kiln-diff/${c.name.toLowerCase()}:${process.pid}`;
  const first = await run(DOCKER, ['build', '--progress=plain', ...flags, '-t', tag, c.dir], env);
  if (first.code !== 0) {
    return { ok: false, log: first.stderr, error: classifyError('docker', first.stderr) };
  }
  try {
    const fsTar = path.join(work, 'docker-fs.tar');
    const second = await run(
      DOCKER,
      ['build', '--progress=plain', ...flags, '-o', `type=tar,dest=${fsTar}`, c.dir],
      env,
    );
    if (second.code !== 0)
      throw new Error(`docker build -o type=tar failed after a successful build: ${second.stderr}`);
    const saveTar = path.join(work, 'docker-save.tar');
    await mustRun(DOCKER, ['save', '-o', saveTar, tag]);
    const saved = path.join(work, 'docker-save');
    await extract(saveTar, saved);
    const manifest = (await readJson(path.join(saved, 'manifest.json'))) as unknown as { Config: string }[];
    const config = await readJson(path.join(saved, manifest[0]!.Config));
    const root = path.join(work, 'docker-root');
    await extract(fsTar, root);
    return { ok: true, log: first.stderr, fs: await walkTree(root), config };
  } finally {
    await run(DOCKER, ['rmi', '-f', tag]);
  }
}

/** kiln build with a tar (file system) and an OCI (config) output in one build. */
export async function buildWithKiln(c: Case, work: string, root: string, flags: string[]): Promise<Outcome> {
  const fsTar = path.join(work, 'kiln-fs.tar');
  const ociTar = path.join(work, 'kiln-oci.tar');
  const r = await run(KILN, [
    '--root',
    root,
    'build',
    '--progress=plain',
    ...flags,
    '-o',
    `type=tar,dest=${fsTar}`,
    '-o',
    `type=oci,dest=${ociTar}`,
    c.dir,
  ]);
  if (r.code !== 0) return { ok: false, log: r.stderr, error: classifyError('kiln', r.stderr) };
  const oci = path.join(work, 'kiln-oci');
  await extract(ociTar, oci);
  const blob = (d: string): string => path.join(oci, 'blobs', ...d.split(':'));
  let desc = (
    (await readJson(path.join(oci, 'index.json'))).manifests as { digest: string; mediaType: string }[]
  )[0]!;
  let doc = await readJson(blob(desc.digest));
  while (Array.isArray(doc.manifests)) {
    desc = (doc.manifests as { digest: string; mediaType: string }[])[0]!;
    doc = await readJson(blob(desc.digest));
  }
  const config = await readJson(blob((doc.config as { digest: string }).digest));
  const rootDir = path.join(work, 'kiln-root');
  await extract(fsTar, rootDir);
  return { ok: true, log: r.stderr, fs: await walkTree(rootDir), config };
}

// ---------------------------------------------------------------- comparison

export interface CaseResult {
  name: string;
  /** Equal (or both failed with the same error kind). */
  same: boolean;
  /** Every difference found, most important first. */
  differences: string[];
  docker: Outcome;
  kiln: Outcome;
}

/** Compares two outcomes of one case. */
export function compareOutcomes(c: Case, docker: Outcome, kiln: Outcome): string[] {
  const diffs: string[] = [];
  const expect = c.spec.expectError;
  const failure = (who: string, o: Outcome): string =>
    `${who} failed (${o.error?.kind}): ${o.error?.message ?? o.log.split('\n').slice(-5).join(' | ')}`;
  if (!docker.ok || !kiln.ok) {
    if (docker.ok) return [`only kiln failed: ${failure('kiln', kiln)}`];
    if (kiln.ok) return [`only docker failed: ${failure('docker', docker)}`];
    const d = docker.error!;
    const k = kiln.error!;
    if (d.kind !== k.kind)
      diffs.push(`error kind: docker=${d.kind} kiln=${k.kind} (docker: ${d.message} / kiln: ${k.message})`);
    if (d.exitCode !== k.exitCode) diffs.push(`RUN exit code: docker=${d.exitCode} kiln=${k.exitCode}`);
    if (d.line !== undefined && k.line !== undefined && d.line !== k.line)
      diffs.push(`error line: docker=${d.line} kiln=${k.line}`);
    if (expect === undefined) diffs.push(`unexpected failure in both: ${failure('docker', docker)}`);
    else if (d.kind !== expect)
      diffs.push(`expected error kind ${expect}, docker gave ${d.kind}: ${d.message}`);
    return diffs;
  }
  if (expect !== undefined) diffs.push(`expected error kind ${expect}, but both builds succeeded`);
  diffs.push(
    ...diffConfigs(normalizeConfig(docker.config!), normalizeConfig(kiln.config!)).map((d) => `config ${d}`),
  );
  diffs.push(...diffTrees(docker.fs!, kiln.fs!).map((d) => `fs ${d}`));
  return diffs;
}

/** Builds one case with both builders (concurrently) and compares them. */
export async function runCase(c: Case, kilnRoot: string, tmp: string = os.tmpdir()): Promise<CaseResult> {
  const work = await mkdtemp(path.join(tmp, `kiln-diff-${c.name}-`));
  const services = await startServices(c.spec, work);
  try {
    // The two builders run at the same time: docker's build mostly waits on dockerd.
    const [docker, kiln] = await Promise.all([
      buildWithDocker(c, work, services.args),
      buildWithKiln(c, work, kilnRoot, services.args),
    ]);
    const differences = compareOutcomes(c, docker, kiln);
    return { name: c.name, same: differences.length === 0, differences, docker, kiln };
  } finally {
    await services.close();
    await rm(work, { recursive: true, force: true });
  }
}

/** A fixed set of Kiln roots handed out one at a time (a Kiln root takes one build at a time). */
export class RootPool {
  #free: string[];
  #waiting: ((root: string) => void)[] = [];
  constructor(roots: string[]) {
    this.#free = [...roots];
  }
  async use<T>(fn: (root: string) => Promise<T>): Promise<T> {
    const root = this.#free.pop() ?? (await new Promise<string>((resolve) => this.#waiting.push(resolve)));
    try {
      return await fn(root);
    } finally {
      const next = this.#waiting.shift();
      if (next) next(root);
      else this.#free.push(root);
    }
  }
}

// ---------------------------------------------------------------- direct run

async function main(names: string[]): Promise<void> {
  if (!dockerAvailable()) throw new Error('docker info failed: the docker daemon is not available');
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'kiln-diff-'));
  const roots = [path.join(tmp, 'root-a'), path.join(tmp, 'root-b')];
  try {
    const base = await prepareBase(tmp);
    for (const r of roots) await prepareKilnRoot(r, base);
    const pool = new RootPool(roots);
    const cases = (await loadCorpus()).filter((c) => names.length === 0 || names.includes(c.name));
    const results = await Promise.all(
      cases.map((c) =>
        c.spec.skipReason ? Promise.resolve(undefined) : pool.use((root) => runCase(c, root, tmp)),
      ),
    );
    for (const [i, c] of cases.entries()) {
      const r = results[i];
      if (!r) {
        console.log(`SKIP ${c.name}: ${c.spec.skipReason}`);
        continue;
      }
      const tag = r.same ? 'PASS' : c.spec.knownDifference ? 'TODO' : 'FAIL';
      console.log(`${tag} ${c.name}${r.docker.ok ? '' : ` (both failed: ${r.docker.error?.kind})`}`);
      for (const d of r.differences) console.log(`    ${d}`);
    }
  } finally {
    for (const r of roots) await removeKilnRoot(r);
    await rm(tmp, { recursive: true, force: true });
  }
}

if (import.meta.main) await main(process.argv.slice(2));
