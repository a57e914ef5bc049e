/**
 * `kiln run`, `ps`, `exec`, `kill`, `rm` and `events`: containers in the
 * foreground, docker-style.
 *
 * `run` and `exec` parse their own flags (docker's rule: flags come before
 * IMAGE / CONTAINER; everything after it is the command, passed as is), so
 * the command's own options (`ls -l`) are never taken for Kiln's. Limit: the
 * program's global options (`--root`, `-n`, ...) are still recognised
 * anywhere by the parent command (commander without positional options);
 * put `--` after IMAGE / CONTAINER when the command uses those names.
 *
 * Exit codes of `run` and `exec`, as docker's: the process's exit code
 * (128+N when it died of signal N); 125 when Kiln itself failed (e.g. no
 * such image); 126 / 127 when the command cannot be run / was not found.
 * SIGINT, SIGTERM and SIGHUP sent to Kiln are forwarded to the container's
 * process; the task is always cleaned up (unmount, runtime delete), and
 * `--rm` removes the container when it ends.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { type ContainerService, openContainers } from '../../core/containers/index.ts';
import type { Network } from '../../core/containers/store.ts';
import { isKilnError } from '../../core/errors.ts';
import { type EventFilter, parseFilter } from '../../core/events/bus.ts';
import { EVENTS_FILE, tailEvents } from '../../core/events/log.ts';
import type { RunResult } from '../../core/runtime/runtime.ts';
import type { ExtraMount } from '../../core/runtime/spec.ts';
import type { CliContext } from '../context.ts';
import { age, printJson, table } from '../format.ts';

// ---- exit codes: main() sets 0/1 when an action returns/throws; ours wins at exit ----

let finalExitCode: number | undefined;
let exitHooked = false;

function setExitCode(code: number): void {
  finalExitCode = code;
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', () => {
    if (finalExitCode !== undefined) process.exitCode = finalExitCode;
  });
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---- docker-style flag parsing ----

interface FlagSpec {
  long: string;
  short?: string;
  value: boolean;
  repeat?: boolean;
}

type Parsed = { flags: Map<string, string[] | true>; rest: string[]; help: boolean };

/** Parses flags up to the first operand; `rest` is that operand and everything after it. */
export function parseFlags(args: string[], specs: FlagSpec[], what: string): Parsed {
  const flags = new Map<string, string[] | true>();
  const byLong = new Map(specs.map((s) => [s.long, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const set = (s: FlagSpec, v: string | undefined): void => {
    if (!s.value) {
      flags.set(s.long, true);
      return;
    }
    if (v === undefined) throw new Error(`${what}: flag --${s.long} needs a value`);
    const prev = flags.get(s.long);
    flags.set(s.long, s.repeat && Array.isArray(prev) ? [...prev, v] : [v]);
  };
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      i++;
      break;
    }
    if (a === '--help') return { flags, rest: [], help: true };
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq < 0 ? undefined : eq);
      const s = byLong.get(name);
      if (!s) throw new Error(`${what}: unknown flag "${a}"`);
      if (!s.value && eq >= 0) throw new Error(`${what}: flag --${name} takes no value`);
      set(s, eq >= 0 ? a.slice(eq + 1) : s.value ? args[++i] : undefined);
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      // Bundled short flags (-it); a value flag takes the rest of the word or the next argument.
      for (let j = 1; j < a.length; j++) {
        const s = byShort.get(a[j]!);
        if (!s) throw new Error(`${what}: unknown flag "-${a[j]}"`);
        if (s.value) {
          set(s, j + 1 < a.length ? a.slice(j + 1) : args[++i]);
          break;
        }
        set(s, undefined);
      }
      continue;
    }
    break;
  }
  return { flags, rest: args.slice(i), help: false };
}

const RUN_FLAGS: FlagSpec[] = [
  { long: 'rm', value: false },
  { long: 'interactive', short: 'i', value: false },
  { long: 'tty', short: 't', value: false },
  { long: 'env', short: 'e', value: true, repeat: true },
  { long: 'user', short: 'u', value: true },
  { long: 'workdir', short: 'w', value: true },
  { long: 'volume', short: 'v', value: true, repeat: true },
  { long: 'net', value: true },
  { long: 'network', value: true },
  { long: 'read-only', value: false },
  { long: 'name', value: true },
  { long: 'hostname', value: true },
];

const EXEC_FLAGS: FlagSpec[] = [
  { long: 'interactive', short: 'i', value: false },
  { long: 'tty', short: 't', value: false },
  { long: 'env', short: 'e', value: true, repeat: true },
  { long: 'user', short: 'u', value: true },
  { long: 'workdir', short: 'w', value: true },
];

function one(p: Parsed, name: string): string | undefined {
  const v = p.flags.get(name);
  return Array.isArray(v) ? v.at(-1) : undefined;
}

function many(p: Parsed, name: string): string[] {
  const v = p.flags.get(name);
  return Array.isArray(v) ? v : [];
}

/** `-v SRC:DST[:ro|rw]`: a bind mount; SRC is made relative to the cwd and created when missing (as docker does). */
export async function parseVolume(spec: string): Promise<ExtraMount> {
  const parts = spec.split(':');
  let readonly = false;
  if (parts.length === 3 && (parts[2] === 'ro' || parts[2] === 'rw')) {
    readonly = parts[2] === 'ro';
    parts.pop();
  }
  if (parts.length !== 2 || !parts[0] || !parts[1]) {
    throw new Error(`invalid volume "${spec}": want SRC:DST[:ro]`);
  }
  if (!parts[1].startsWith('/'))
    throw new Error(`invalid volume "${spec}": destination must be an absolute path`);
  const source = path.resolve(parts[0]);
  await mkdir(source, { recursive: true });
  return { type: 'bind', source, destination: parts[1], readonly };
}

// ---- foreground task plumbing ----

const FORWARDED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
const SIGNO: Record<string, number> = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 };

/**
 * Runs `fn` with stdin wired as asked, Kiln's SIGINT/SIGTERM/SIGHUP forwarded
 * through `forward`, and a raw local terminal for `-it`; restores all after.
 */
async function foreground(
  opts: { interactive: boolean; tty: boolean },
  forward: (sig: NodeJS.Signals, abort: AbortController) => void,
  fn: (io: {
    stdin?: NodeJS.ReadableStream & import('node:stream').Readable;
    signal: AbortSignal;
  }) => Promise<RunResult>,
): Promise<RunResult> {
  const abort = new AbortController();
  const handlers = FORWARDED.map((sig) => {
    const h = (): void => forward(sig, abort);
    process.on(sig, h);
    return [sig, h] as const;
  });
  const rawTty = opts.interactive && opts.tty && process.stdin.isTTY;
  if (rawTty) process.stdin.setRawMode(true);
  try {
    return await fn({ ...(opts.interactive ? { stdin: process.stdin } : {}), signal: abort.signal });
  } finally {
    for (const [sig, h] of handlers) process.removeListener(sig, h);
    if (rawTty) process.stdin.setRawMode(false);
    if (opts.interactive) process.stdin.destroy();
  }
}

function reportResult(r: RunResult): void {
  if (r.startError) process.stderr.write(`kiln: error: ${r.startError}\n`);
  setExitCode(r.exitCode);
}

function canceledCode(abort: { reason?: unknown }): number {
  return 128 + (SIGNO[String(abort.reason)] ?? 9);
}

async function cmdRun(ctx: CliContext, cmd: Command, args: string[]): Promise<void> {
  const p = parseFlags(args, RUN_FLAGS, 'run');
  if (p.help) {
    cmd.outputHelp();
    return;
  }
  const [image, ...command] = p.rest;
  if (!image) throw new Error('run: IMAGE is required (see kiln run --help)');
  if (command[0] === '--') command.shift(); // `kiln run IMAGE -- CMD` shields CMD's flags from the global options
  const net = one(p, 'net') ?? one(p, 'network') ?? 'none';
  if (net !== 'host' && net !== 'none') throw new Error(`run: invalid --net "${net}": want host or none`);
  const tty = p.flags.has('tty');
  const interactive = p.flags.has('interactive');
  let svc: ContainerService;
  let id: string;
  let abortReason: string | undefined;
  try {
    const mounts: ExtraMount[] = [];
    for (const v of many(p, 'volume')) mounts.push(await parseVolume(v));
    svc = await openContainers(await ctx.core());
    const user = one(p, 'user');
    const cwd = one(p, 'workdir');
    const name = one(p, 'name');
    const hostname = one(p, 'hostname');
    const c = await svc.create({
      image,
      command,
      env: many(p, 'env'),
      tty,
      network: net as Network,
      readonlyRootfs: p.flags.has('read-only'),
      mounts,
      autoRemove: p.flags.has('rm'),
      hostEnv: process.env,
      ...(user !== undefined ? { user } : {}),
      ...(cwd !== undefined ? { cwd } : {}),
      ...(name !== undefined ? { id: name } : {}),
      ...(hostname !== undefined ? { hostname } : {}),
    });
    id = c.id;
  } catch (err) {
    process.stderr.write(`kiln: error: ${errorMessage(err)}\n`);
    setExitCode(125);
    return;
  }
  try {
    const r = await foreground(
      { interactive, tty },
      (sig, abort) => {
        abortReason = sig;
        svc.kill(id, sig).catch(() => abort.abort(sig));
      },
      (io) => svc.runTask(id, { ...io, stdout: process.stdout, stderr: process.stderr }),
    );
    reportResult(r);
  } catch (err) {
    if (isKilnError(err, 'Canceled')) setExitCode(canceledCode({ reason: abortReason }));
    else {
      process.stderr.write(`kiln: error: ${errorMessage(err)}\n`);
      setExitCode(125);
    }
  } finally {
    if (svc.store.has(id) && svc.get(id).autoRemove) {
      await svc.delete(id).catch((err: unknown) => {
        process.stderr.write(`kiln: error: remove container "${id}": ${errorMessage(err)}\n`);
      });
    }
  }
}

async function cmdExec(ctx: CliContext, cmd: Command, args: string[]): Promise<void> {
  const p = parseFlags(args, EXEC_FLAGS, 'exec');
  if (p.help) {
    cmd.outputHelp();
    return;
  }
  const [id, ...command] = p.rest;
  if (command[0] === '--') command.shift();
  if (!id || command.length === 0)
    throw new Error('exec: CONTAINER and COMMAND are required (see kiln exec --help)');
  const tty = p.flags.has('tty');
  const interactive = p.flags.has('interactive');
  try {
    const svc = await openContainers(await ctx.core());
    const user = one(p, 'user');
    const cwd = one(p, 'workdir');
    const r = await foreground(
      { interactive, tty },
      (_sig, abort) => abort.abort(),
      (io) =>
        svc.exec(id, {
          args: command,
          env: many(p, 'env'),
          tty,
          ...io,
          stdout: process.stdout,
          stderr: process.stderr,
          ...(user !== undefined ? { user } : {}),
          ...(cwd !== undefined ? { cwd } : {}),
        }),
    );
    reportResult(r);
  } catch (err) {
    if (isKilnError(err, 'Canceled')) setExitCode(137);
    else {
      process.stderr.write(`kiln: error: ${errorMessage(err)}\n`);
      setExitCode(125);
    }
  }
}

function statusText(
  svcRunning: boolean,
  c: { status: string; exitCode: number | null; startedAt: Date | null; finishedAt: Date | null },
): string {
  if (svcRunning) return `Up since ${age(c.startedAt ?? new Date())}`;
  if (c.status === 'created') return 'Created';
  return `Exited (${c.exitCode ?? '?'}) ${c.finishedAt ? age(c.finishedAt) : ''}`.trim();
}

const RUN_HELP = `
Options (before IMAGE; everything after IMAGE is the command):
  --rm                     remove the container when its process ends
  -i, --interactive        pass Kiln's stdin to the process
  -t, --tty                give the process a terminal
  -e, --env KEY=VALUE      set an environment variable (KEY alone: take it from Kiln's environment); repeatable
  -u, --user USER          name, uid, uid:gid or name:group (resolved in the image's /etc/passwd and /etc/group)
  -w, --workdir DIR        working directory inside the container
  -v, --volume SRC:DST[:ro]  bind-mount a host directory (created when missing); repeatable
  --net, --network MODE    none (default: only lo) or host
  --read-only              mount the root filesystem read-only
  --name ID                container id (default: 12 random hex digits)
  --hostname NAME          hostname inside the container

Exit code: the process's (128+N for signal N); 125 when Kiln failed; 126 not executable; 127 not found.
Kiln's global options (--root, -n, ...) are recognised anywhere on the line: when the command uses
one of those names, put -- after IMAGE (kiln run busybox -- ls -n /).

Examples:
  kiln run --rm busybox echo hello
  kiln run --rm -it busybox sh
  echo data | kiln run --rm -i busybox wc -c
  kiln run --rm -e FOO=bar -u nobody -w /tmp busybox sh -c 'id; pwd; echo $FOO'
  kiln run --rm -v "$PWD":/src:ro --read-only busybox ls /src
  kiln run --name web --net host busybox httpd -f -p 8080`;

export function registerRunCommands(program: Command, ctx: CliContext): void {
  const run = program
    .command('run')
    .description('create a container from an image and run its process in the foreground')
    .usage('[options] IMAGE [COMMAND [ARG...]]')
    .argument('[image-and-command...]')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .addHelpText('after', RUN_HELP);
  run.action(async () => {
    await cmdRun(ctx, run, run.args);
  });

  const exec = program
    .command('exec')
    .description('run another process in a running container')
    .usage('[options] CONTAINER COMMAND [ARG...]')
    .argument('[container-and-command...]')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .addHelpText(
      'after',
      `
Options (before CONTAINER):
  -i, --interactive        pass Kiln's stdin to the process
  -t, --tty                give the process a terminal
  -e, --env KEY=VALUE      set an environment variable; repeatable
  -u, --user USER          name, uid or uid:gid
  -w, --workdir DIR        working directory

Examples:
  kiln exec web ps
  kiln exec -it web sh
  kiln exec -u nobody -w /tmp web sh -c 'id; pwd'`,
    );
  exec.action(async () => {
    await cmdExec(ctx, exec, exec.args);
  });

  program
    .command('ps')
    .description('list containers (running ones unless --all)')
    .option('-a, --all', 'also list containers that are not running')
    .option('-q, --quiet', 'print container ids only')
    .option('--json', 'print the records as JSON')
    .addHelpText('after', '\nExamples:\n  kiln ps\n  kiln ps -a\n  kiln rm $(kiln ps -aq)')
    .action(async (opts: { all?: boolean; quiet?: boolean; json?: boolean }) => {
      const svc = await openContainers(await ctx.core());
      const rows: string[][] = [];
      const out: unknown[] = [];
      for (const c of svc.list()) {
        const running = await svc.isRunning(c.id);
        if (!running && !opts.all) continue;
        if (opts.quiet) {
          process.stdout.write(`${c.id}\n`);
          continue;
        }
        if (opts.json) out.push({ ...c, running });
        else
          rows.push([
            c.id,
            c.image,
            JSON.stringify(c.spec.args.join(' ')),
            age(c.createdAt),
            statusText(running, c),
          ]);
      }
      if (opts.json) printJson(out);
      else if (!opts.quiet) table([['CONTAINER ID', 'IMAGE', 'COMMAND', 'CREATED', 'STATUS'], ...rows]);
    });

  program
    .command('kill')
    .description("send a signal to running containers' processes")
    .argument('<container...>')
    .option('-s, --signal <signal>', 'signal name or number', 'KILL')
    .addHelpText('after', '\nExamples:\n  kiln kill web\n  kiln kill -s TERM web')
    .action(async (ids: string[], opts: { signal: string }) => {
      const svc = await openContainers(await ctx.core());
      const sig = /^\d+$/.test(opts.signal) ? Number(opts.signal) : opts.signal.toUpperCase();
      for (const id of ids) {
        await svc.kill(id, sig);
        process.stdout.write(`${id}\n`);
      }
    });

  program
    .command('rm')
    .description('remove containers (their snapshot and records)')
    .argument('<container...>')
    .option('-f, --force', 'kill a running container first')
    .addHelpText('after', '\nExamples:\n  kiln rm web\n  kiln rm -f web')
    .action(async (ids: string[], opts: { force?: boolean }) => {
      const svc = await openContainers(await ctx.core());
      for (const id of ids) {
        await svc.delete(id, { force: opts.force ?? false });
        process.stdout.write(`${id}\n`);
      }
    });

  program
    .command('events')
    .description('stream events (containers, tasks, images, snapshots) of every Kiln process on this root')
    .option(
      '--filter <filter>',
      'topic==/tasks/* or namespace==name (comma: and; repeated: or)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--json', 'one JSON envelope per line')
    .option('--from-start', 'print the events already in the log first')
    .addHelpText(
      'after',
      `
Events are appended by every Kiln process to <root>/${EVENTS_FILE}; this command follows that file until interrupted.

Examples:
  kiln events
  kiln events --filter 'topic==/tasks/*' --json
  kiln events --filter namespace==default,topic==/containers/create`,
    )
    .action(async (opts: { filter?: string[]; json?: boolean; fromStart?: boolean }) => {
      const filters: EventFilter[] = (opts.filter ?? []).map(parseFilter);
      const abort = new AbortController();
      const stop = (): void => abort.abort();
      for (const sig of FORWARDED) process.on(sig, stop);
      try {
        const file = path.join(ctx.globals().root, EVENTS_FILE);
        for await (const env of tailEvents(file, {
          signal: abort.signal,
          filters,
          fromStart: opts.fromStart ?? false,
        })) {
          const line = opts.json
            ? JSON.stringify(env)
            : `${env.timestamp} ${env.namespace} ${env.topic} ${JSON.stringify(env.event)}`;
          process.stdout.write(`${line}\n`);
        }
      } finally {
        for (const sig of FORWARDED) process.removeListener(sig, stop);
      }
    });
}
