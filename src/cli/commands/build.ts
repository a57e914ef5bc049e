/**
 * `kiln build [options] PATH|URL|-`: Dockerfile → LLB (src/frontend) →
 * solve on the in-process worker (src/worker, src/solver) → exporters
 * (src/exporter), with live progress on standard error.
 *
 * - Context: a directory, `-` (a tar or a lone Dockerfile on stdin), or a
 *   git URL (see src/control/context.ts).
 * - Base images: the local image store first, else pulled from their
 *   registry (src/control/images.ts); `--pull` always asks the registry.
 * - Outputs: `-o type=image|registry|oci|docker|local|tar,…` (several
 *   allowed, exported in one step so they share one image), `-t NAME` is
 *   shorthand for `-o type=image,name=NAME` (rule in
 *   src/control/outputs.ts). Without -t or -o the result stays in the
 *   build cache only, with a warning (as buildx does).
 * - `--no-cache` runs every step; `--no-cache-filter STAGE` the steps of
 *   those stages and of everything built on them; `--network host|none`
 *   applies to every RUN without its own `--network`
 *   (src/control/definition.ts). Default: no network (`none`).
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
 * With --host / KILN_HOST the build runs on that kilnd (src/control/server.ts),
 * which opens the paths given here itself; a context or Dockerfile on stdin
 * and outputs to stdout are refused there.
 *
 * Limits: `--platform` selects base images and the platform args, but a
 * foreign platform's RUN needs binfmt emulation on the host; one ssh agent
 * socket per `--ssh` id (no key files).
 */
import path from 'node:path';
import type { Command } from 'commander';
import type { BuildOutcome, BuildParams } from '../../control/build.ts';
import type { CliContext } from '../context.ts';
import { KilnError, errInvalidArgument } from '../../core/errors.ts';
import type { ProgressEvent } from '../../solver/progress.ts';
import { collect } from '../format.ts';
import { createPrinter, parseProgressMode } from '../progress/index.ts';
import { noteLeftover } from '../../core/lock.ts';

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

/** Runs one build; returns the exit code. */
/** The build's parameters from the command line, with what only this process has resolved. */
async function paramsFrom(contextArg: string, opts: BuildOptions): Promise<BuildParams> {
  // Loaded only when used: its node:fs import costs the thin client (src/cli/remote.ts) ~5 ms.
  const sessions =
    (opts.secret?.length ?? 0) + (opts.ssh?.length ?? 0) > 0
      ? await import('../buildctx/sessions.ts')
      : undefined;
  const params: BuildParams = {
    context: contextArg,
    tags: opts.tag ?? [],
    buildArgs: buildArgs(opts.buildArg),
    labels: keyValues(opts.label, '--label'),
    secrets: sessions ? await sessions.parseSecrets(opts.secret ?? []) : {},
    noCache: !opts.cache,
    noCacheFilter: Array.isArray(opts.cacheFilter) ? opts.cacheFilter : [],
    outputs: opts.output ?? [],
    pull: opts.pull ?? false,
    insecureRegistries: opts.insecureRegistry ?? [],
    certsDirs: opts.certsDir ?? [],
  };
  const ssh = sessions?.parseSsh(opts.ssh ?? []);
  if (ssh) params.ssh = ssh;
  if (opts.file !== undefined) params.file = opts.file;
  if (opts.target !== undefined) params.target = opts.target;
  if (opts.platform !== undefined) params.platform = opts.platform;
  if (opts.network !== undefined) params.network = opts.network;
  if (opts.iidfile !== undefined) params.iidfile = opts.iidfile;
  if (opts.metadataFile !== undefined) params.metadataFile = opts.metadataFile;
  if (process.env.SOURCE_DATE_EPOCH !== undefined) params.sourceDateEpoch = process.env.SOURCE_DATE_EPOCH;
  return params;
}

/** Sends the build to kilnd at `host`. */
async function remoteBuild(
  host: string,
  namespace: string,
  params: BuildParams,
  emit: (ev: ProgressEvent) => void,
  signal: AbortSignal,
): Promise<BuildOutcome> {
  if (params.context === '-' || params.file === '-') {
    throw errInvalidArgument(
      `--host ${host}: a context or Dockerfile on standard input (-) cannot be sent to kilnd; give a path`,
    );
  }
  const { KilnClient } = await import('../../client/index.ts');
  const client = new KilnClient(host);
  try {
    // Agent sockets are opened by kilnd: absolute paths.
    const sent = params.ssh
      ? {
          ...params,
          ssh: Object.fromEntries(Object.entries(params.ssh).map(([k, v]) => [k, path.resolve(v)])),
        }
      : params;
    const { toProtoRequest } = await import('../../control/wire.ts');
    return await client.build(toProtoRequest(sent, { namespace, cwd: process.cwd() }), {
      onEvent: emit,
      signal,
    });
  } finally {
    client.close();
  }
}

/** Runs one build, in this process or on kilnd (--host); returns the exit code. */
export async function runBuild(ctx: CliContext, contextArg: string, opts: BuildOptions): Promise<number> {
  const mode = opts.quiet ? 'quiet' : parseProgressMode(opts.progress);
  const printer = createPrinter(mode, process.stderr);
  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void =>
    abort.abort(new KilnError('Canceled', `build canceled by ${sig}`));
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  for (const s of signals) process.on(s, onSignal);
  const emit = (ev: ProgressEvent): void => printer.write(ev);
  try {
    let outcome: BuildOutcome;
    try {
      const params = await paramsFrom(contextArg, opts);
      const g = ctx.globals();
      if (g.host) {
        outcome = await remoteBuild(g.host, g.namespace, params, emit, abort.signal);
      } else {
        const { executeBuild } = await import('../../control/build.ts');
        const codeId = (await import('../../control/memo.ts')).bundledCodeId();
        outcome = await executeBuild(await ctx.core(), params, {
          root: g.root,
          emit,
          stdout: process.stdout,
          // process.stdin is made on first use (~3 ms): only for a context or Dockerfile on stdin.
          ...(params.context === '-' || params.file === '-' ? { stdin: process.stdin } : {}),
          signal: abort.signal,
          ...(codeId ? { codeId } : {}),
        });
      }
    } catch (err) {
      outcome = {
        summary: { results: [], warnings: [], error: { message: (err as Error).message } },
        canceled: abort.signal.aborted,
        ...(err instanceof Error && err.stack ? { stack: err.stack } : {}),
      };
    }
    // docker build -q prints the image ID on standard output.
    if (!outcome.summary.error && opts.quiet && outcome.imageId) process.stdout.write(`${outcome.imageId}\n`);
    await printer.finish(outcome.summary);
    if (!outcome.summary.error) return 0;
    if (process.env.KILN_DEBUG && outcome.stack) process.stderr.write(`${outcome.stack}\n`);
    if (outcome.canceled || abort.signal.aborted)
      return String(abort.signal.reason).includes('SIGTERM') ? 143 : 130;
    return 1;
  } finally {
    for (const s of signals) process.removeListener(s, onSignal);
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
  kiln build -t app 'https://example.com/app.git#main:subdir'
  kiln --host unix:///run/kiln/kilnd.sock build -t app .    (on a running kilnd)`,
    )
    .action(async (contextArg: string, opts: BuildOptions) => {
      const code = await runBuild(ctx, contextArg, opts);
      if (code !== 0) {
        noteLeftover(); // a failed build may have left cleanup undone: the next start recovers
        setExitCode(code);
      }
    });
}
