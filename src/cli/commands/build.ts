/**
 * `kiln build [options] PATH|URL|-`: Dockerfile → LLB (src/frontend) →
 * solve on the in-process worker (src/worker, src/solver) → exporters
 * (src/exporter), with live progress on standard error.
 *
 * - Context: a directory, `-` (a tar or a lone Dockerfile on stdin), or a
 *   git URL (see src/cli/buildctx/context.ts).
 * - Base images: the local image store first, else pulled from their
 *   registry (src/cli/buildctx/images.ts); `--pull` always asks the registry.
 * - Outputs: `-o type=image|registry|oci|docker|local|tar,…` (several
 *   allowed, exported in one step so they share one image), `-t NAME` is
 *   shorthand for `-o type=image,name=NAME` (rule in
 *   src/cli/buildctx/outputs.ts). Without -t or -o the result stays in the
 *   build cache only, with a warning (as buildx does).
 * - `--no-cache` runs every step; `--no-cache-filter STAGE` the steps of
 *   those stages and of everything built on them; `--network host|none`
 *   applies to every RUN without its own `--network`
 *   (src/cli/buildctx/definition.ts). Default: no network (`none`).
 * - `-q` prints nothing but errors, and the image ID on success.
 * - `--iidfile` gets the image ID (config digest); `--metadata-file` gets
 *   JSON with `containerimage.digest`, `containerimage.config.digest`,
 *   `containerimage.descriptor` and `image.name`, like buildx.
 * - `SOURCE_DATE_EPOCH` (environment or `--build-arg`) pins the image's
 *   timestamps, so identical inputs give identical image digests.
 * - Progress: `--progress auto|tty|plain|rawjson|quiet` (src/cli/progress).
 *   A failed build prints the failing step, its last output lines and the
 *   Dockerfile lines it came from, and exits with 1; SIGINT/SIGTERM cancel
 *   the solve (running processes are killed, mounts released) and exit 130/143.
 *
 * Limits: `--platform` selects base images and the platform args, but a
 * foreign platform's RUN needs binfmt emulation on the host; one ssh agent
 * socket per `--ssh` id (no key files).
 */
import { writeOutputFile } from '../../core/fs/safe.ts';
import path from 'node:path';
import type { Command } from 'commander';
import { errInvalidArgument, isKilnError, KilnError } from '../../core/errors.ts';
import { parsePlatform } from '../../core/images/platform.ts';
import { parseReference } from '../../core/images/reference.ts';
import type { Definition } from '../../gen/kiln/llb/v1/llb_pb.ts';
import { convertDockerfile, DockerfileSyntaxError } from '../../frontend/dockerfile/index.ts';
import { SCRATCH, snapshotOf } from '../../ops/refs.ts';
import type { OutputSpec } from '../../exporter/index.ts';
import {
  Authorizer,
  defaultCertsDirs,
  dockerConfigCredentials,
  type RemoteOptions,
} from '../../core/remotes/index.ts';
import { now, type ProgressEvent } from '../../solver/progress.ts';
import { SolveError } from '../../solver/solver.ts';
import type { Result, Vertex } from '../../solver/types.ts';
import { Worker } from '../../worker/worker.ts';
import { type BuildContext, prepareContext } from '../buildctx/context.ts';
import { markNoCache, nameContextSource, sourceExcerpt, withNetwork } from '../buildctx/definition.ts';
import { BuildImageResolver } from '../buildctx/images.ts';
import { type ExportRecord, parseOutputs, runOutputs } from '../buildctx/outputs.ts';
import { parseSecrets, parseSsh } from '../buildctx/sessions.ts';
import type { CliContext } from '../context.ts';
import { collect } from '../format.ts';
import { type BuildSummary, createPrinter, type ErrorReport, parseProgressMode } from '../progress/index.ts';

export interface BuildOptions {
  file?: string;
  tag?: string[];
  buildArg?: string[];
  target?: string;
  platform?: string;
  secret?: string[];
  ssh?: string[];
  cache: boolean;
  /** `--no-cache-filter` values (commander names a `--no-*` option after its positive form; `true` when absent). */
  cacheFilter?: string[] | boolean;
  network?: string;
  label?: string[];
  progress: string;
  output?: string[];
  iidfile?: string;
  metadataFile?: string;
  pull?: boolean;
  quiet?: boolean;
  insecureRegistry?: string[];
  certsDir?: string[];
}

// main() maps a thrown error to exit code 1 and prints it; a build failure is
// already reported by the printer, so the action returns and sets the code here.
let finalExitCode: number | undefined;
function setExitCode(code: number): void {
  if (finalExitCode === undefined) {
    process.on('exit', () => {
      if (finalExitCode !== undefined) process.exitCode = finalExitCode;
    });
  }
  finalExitCode = code;
}

function buildArgs(items: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items ?? []) {
    const eq = item.indexOf('=');
    if (eq === 0) throw errInvalidArgument(`invalid --build-arg "${item}": want KEY=VALUE or KEY`);
    if (eq < 0) {
      // KEY alone: the value of the environment variable, skipped when unset (docker's rule).
      const v = process.env[item];
      if (v !== undefined) out[item] = v;
    } else out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

function keyValues(items: string[] | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items ?? []) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw errInvalidArgument(`invalid ${what} "${item}": want KEY=VALUE`);
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

function sourceDateEpoch(args: Record<string, string>): number | undefined {
  const raw = args.SOURCE_DATE_EPOCH ?? process.env.SOURCE_DATE_EPOCH;
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d+$/.test(raw))
    throw errInvalidArgument(`invalid SOURCE_DATE_EPOCH "${raw}": want seconds since 1970`);
  return Number(raw);
}

function fullName(ref: string): string {
  try {
    return parseReference(ref).full;
  } catch {
    return ref;
  }
}

/** Writes `data` to `file` atomically (temp + fsync + rename). */
async function writeAtomic(file: string, data: string): Promise<void> {
  // Temp file and rename, except onto a device or FIFO (e.g. /dev/null), which is written in place.
  await writeOutputFile(path.resolve(file), (fh) => fh.writeFile(data));
}

/** Turns any failure into the report the printers show. */
function errorReport(err: unknown, def: Definition | undefined, dockerfile: string | undefined): ErrorReport {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof SolveError) {
    const source = def ? sourceExcerpt(def, err.vertex.digest) : undefined;
    return { message, vertex: err.vertex, ...(source ? { source } : {}) };
  }
  if (err instanceof DockerfileSyntaxError && err.line > 0 && dockerfile !== undefined) {
    return {
      message,
      source: { filename: err.file, start: err.line, end: err.line, lines: dockerfile.split('\n') },
    };
  }
  // Errors from the frontend's image resolution carry `Dockerfile:N:` in front.
  const m = /^(\S+?):(\d+): /.exec(message);
  if (m && dockerfile !== undefined) {
    const line = Number(m[2]);
    return { message, source: { filename: m[1]!, start: line, end: line, lines: dockerfile.split('\n') } };
  }
  return { message };
}

/**
 * The solver stops at the first cache hit on the way down, so the ancestors
 * of a cached vertex send no event; like BuildKit, show them as CACHED too
 * (inputs first).
 */
function reportSkipped(
  worker: Worker,
  def: Definition,
  seen: Set<string>,
  emit: (ev: ProgressEvent) => void,
): void {
  const edge = worker.loadDefinition(def);
  if (!edge) return;
  const done = new Set<string>();
  const order: Vertex[] = [];
  const visit = (v: Vertex): void => {
    if (done.has(v.digest)) return;
    done.add(v.digest);
    for (const i of v.inputs) visit(i.vertex);
    order.push(v);
  };
  visit(edge.vertex);
  const t = now();
  for (const v of order) {
    if (!seen.has(v.digest))
      emit({ type: 'vertex', digest: v.digest, name: v.name, cached: true, started: t, completed: t });
  }
}

/** Runs one build; returns the exit code. */
export async function runBuild(ctx: CliContext, contextArg: string, opts: BuildOptions): Promise<number> {
  const mode = opts.quiet ? 'quiet' : parseProgressMode(opts.progress);
  const printer = createPrinter(mode, process.stderr);
  const summary: BuildSummary = { results: [], warnings: [] };
  const seen = new Set<string>();
  const emit = (ev: ProgressEvent): void => {
    seen.add(ev.type === 'vertex' ? ev.digest : ev.vertex);
    printer.write(ev);
  };
  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void =>
    abort.abort(new KilnError('Canceled', `build canceled by ${sig}`));
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  for (const s of signals) process.on(s, onSignal);

  let internal = 0;
  /** A CLI-side step shown in the progress like a solver vertex. */
  const step = async <T>(name: string, fn: (vertex: string) => Promise<T>): Promise<T> => {
    const digest = `kiln-internal:${++internal}`;
    const started = now();
    emit({ type: 'vertex', digest, name, started });
    try {
      const r = await fn(digest);
      emit({ type: 'vertex', digest, name, started, completed: now() });
      return r;
    } catch (err) {
      emit({ type: 'vertex', digest, name, started, completed: now(), error: (err as Error).message });
      throw err;
    }
  };

  let bctx: BuildContext | undefined;
  let def: Definition | undefined;
  let worker: Worker | undefined;
  let result: Result | undefined;
  try {
    const args = buildArgs(opts.buildArg);
    const epoch = sourceDateEpoch(args);
    const labels = keyValues(opts.label, '--label');
    const secrets = await parseSecrets(opts.secret ?? []);
    const ssh = parseSsh(opts.ssh ?? []);
    if (opts.network !== undefined && !['default', 'host', 'none'].includes(opts.network)) {
      throw errInvalidArgument(`invalid --network "${opts.network}": want default, host or none`);
    }
    const platform = opts.platform ? parsePlatform(opts.platform) : undefined;
    const outputs: OutputSpec[] = parseOutputs(opts.output ?? [], opts.tag ?? []);
    const remote: RemoteOptions = {
      insecure: opts.insecureRegistry ?? [],
      certsDirs: opts.certsDir?.length ? opts.certsDir : defaultCertsDirs(ctx.globals().root),
      authorizer: new Authorizer({ credentials: dockerConfigCredentials() }),
    };
    const core = await ctx.core();
    const resolver = new BuildImageResolver(core, { mode: opts.pull ? 'pull' : 'default', pull: { remote } });

    bctx = await step(
      `[internal] load build definition from ${opts.file && opts.file !== '-' ? path.basename(opts.file) : 'Dockerfile'}`,
      () => prepareContext(contextArg, { ...(opts.file ? { file: opts.file } : {}) }),
    );
    const context = bctx;
    const frontendResolver = resolver.frontend();
    const converted = await convertDockerfile(context.dockerfile, {
      filename: context.dockerfileName,
      buildArgs: args,
      labels,
      contextName: 'context',
      dockerignore: context.dockerignore,
      ...(opts.target ? { target: opts.target } : {}),
      ...(platform ? { platform } : {}),
      ...(epoch !== undefined ? { created: new Date(epoch * 1000) } : {}),
      imageResolver: (ref, p) =>
        step(`[internal] load metadata for ${fullName(ref)}`, (vertex) =>
          frontendResolver(ref, p, (pp) => {
            if (pp.status !== 'done' && pp.status !== 'exists' && pp.status !== 'unpacked') return;
            const t = now();
            emit({
              type: 'status',
              vertex,
              id: `${pp.kind} ${pp.digest} ${pp.status}`,
              current: pp.offset,
              total: pp.total,
              completed: t,
              timestamp: t,
            });
          }),
        ),
    });
    for (const w of converted.warnings)
      summary.warnings.push(`${context.dockerfileName}:${w.line}: ${w.message}`);
    def = converted.definition;
    nameContextSource(def, 'context');
    if (opts.network === 'host' || opts.network === 'none') def = withNetwork(def, opts.network);
    if (!opts.cache) markNoCache(def);
    else if (Array.isArray(opts.cacheFilter) && opts.cacheFilter.length > 0) {
      const wanted = opts.cacheFilter.flatMap((s) => s.split(',')).filter(Boolean);
      const known = new Set(converted.stages.map((s) => s.name.toLowerCase()));
      for (const s of wanted) {
        if (!known.has(s.toLowerCase()))
          throw errInvalidArgument(`--no-cache-filter: no stage named "${s}" in ${context.dockerfileName}`);
      }
      markNoCache(def, wanted);
    }

    worker = new Worker({
      core,
      images: resolver,
      sessions: { locals: { context: context.dir }, secrets, ...(ssh ? { sshAgents: ssh } : {}) },
    });
    result = await worker.solveDefinition(def, { signal: abort.signal, progress: { write: emit } });
    reportSkipped(worker, def, seen, emit);

    if (outputs.length > 0) {
      const records: ExportRecord[] = await runOutputs(core, outputs, {
        snapshot: result === SCRATCH ? undefined : snapshotOf(result),
        imageConfig: converted.imageConfig,
        ...(epoch !== undefined ? { sourceDateEpoch: epoch } : {}),
        remote,
        stdout: process.stdout,
        step,
        emit,
        signal: abort.signal,
      });
      const image =
        records.find((r) => r.type === 'image' || r.type === 'registry') ??
        records.find((r) => r.manifestDigest);
      for (const r of records) summary.results.push(...r.lines);
      if (image && opts.iidfile) await writeAtomic(opts.iidfile, image.configDigest ?? '');
      // docker build -q prints the image ID on standard output.
      if (image?.configDigest && opts.quiet) process.stdout.write(`${image.configDigest}\n`);
      if (opts.metadataFile) {
        const meta: Record<string, unknown> = {};
        if (image) {
          meta['containerimage.digest'] = image.manifestDigest;
          meta['containerimage.config.digest'] = image.configDigest;
          if (image.descriptor) meta['containerimage.descriptor'] = image.descriptor;
          const names = [...new Set(image.names)];
          if (names.length > 0) meta['image.name'] = names.join(',');
        }
        await writeAtomic(opts.metadataFile, `${JSON.stringify(meta, null, 2)}\n`);
      }
    } else {
      summary.warnings.push(
        'No output specified: the build result will only remain in the build cache. Use -t NAME to make an image, or -o to export it.',
      );
      if (opts.iidfile) summary.warnings.push('--iidfile: no image output, nothing written');
      if (opts.metadataFile) await writeAtomic(opts.metadataFile, '{}\n');
    }
    await printer.finish(summary);
    return 0;
  } catch (err) {
    const canceled = abort.signal.aborted || isKilnError(err, 'Canceled');
    summary.error = errorReport(err, def, bctx?.dockerfile);
    await printer.finish(summary);
    if (process.env.KILN_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    if (canceled) return String(abort.signal.reason).includes('SIGTERM') ? 143 : 130;
    return 1;
  } finally {
    for (const s of signals) process.removeListener(s, onSignal);
    await result?.release().catch(() => undefined);
    worker?.close();
    await bctx?.cleanup();
  }
}

export function registerBuildCommand(program: Command, ctx: CliContext): void {
  program
    .command('build')
    .description('build an image from a Dockerfile and a context')
    .argument('<context>', 'context: a directory, a git URL, or - (a tar or a Dockerfile on stdin)')
    .option('-f, --file <path>', 'the Dockerfile (default: PATH/Dockerfile; - reads it from stdin)')
    .option('-t, --tag <name>', 'name the image (shorthand for -o type=image,name=NAME); repeatable', collect)
    .option(
      '--build-arg <key=value>',
      'set a build-time variable (KEY alone: from the environment); repeatable',
      collect,
    )
    .option('--target <stage>', 'build this stage (default: the last one)')
    .option('--platform <os/arch[/variant]>', 'target platform (default: this host)')
    .option(
      '--secret <spec>',
      'id=ID,src=FILE or id=ID,env=VAR: a secret for RUN --mount=type=secret; repeatable',
      collect,
    )
    .option(
      '--ssh <spec>',
      'default|ID[=SOCKET]: an ssh agent socket for RUN --mount=type=ssh,id=ID (default: $SSH_AUTH_SOCK); repeatable',
      collect,
    )
    .option('--no-cache', 'do not use the build cache')
    .option(
      '--no-cache-filter <stages>',
      'do not use the cache for these stages (comma-separated); repeatable',
      (v: string, prev: unknown) => [...(Array.isArray(prev) ? (prev as string[]) : []), v],
    )
    .option('--network <mode>', 'network for RUN: default (none), host or none')
    .option('--label <key=value>', 'set an image label; repeatable', collect)
    .option('--progress <mode>', 'progress output: auto, tty, plain, rawjson, quiet', 'auto')
    .option(
      '-o, --output <spec>',
      'type=image|registry|oci|docker|local|tar[,dest=…][,name=…][,push=true][,compression=gzip|zstd|uncompressed][,compression-level=N][,oci-mediatypes=true|false]; repeatable',
      collect,
    )
    .option('--iidfile <file>', 'write the image ID (config digest) to this file')
    .option('--metadata-file <file>', 'write build result metadata (JSON) to this file')
    .option('--pull', 'always ask the registry for base images')
    .option(
      '--insecure-registry <host>',
      'use plain HTTP for this registry host[:port] (repeatable)',
      collect,
    )
    .option(
      '--certs-dir <dir>',
      'per-registry TLS files, <dir>/<host[:port]>/{*.crt,*.cert,*.key} (repeatable; ' +
        'default <root>/certs.d, then /etc/docker/certs.d)',
      collect,
    )
    .option('-q, --quiet', 'no progress output; print the image ID on success')
    .addHelpText(
      'after',
      `
Without -t or -o, the result only stays in the build cache.
SOURCE_DATE_EPOCH (environment or --build-arg) pins timestamps for reproducible images.

Examples:
  kiln build -t hello:latest examples/hello
  kiln build --progress=plain -f Dockerfile.dev --target test .
  kiln build -o type=oci,dest=app.tar -o type=local,dest=out .
  tar -C app -c . | kiln build -t app -
  kiln build -t app 'https://example.com/app.git#main:subdir'`,
    )
    .action(async (contextArg: string, opts: BuildOptions) => {
      const code = await runBuild(ctx, contextArg, opts);
      if (code !== 0) setExitCode(code);
    });
}
