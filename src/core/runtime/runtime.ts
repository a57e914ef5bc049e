/**
 * Driver for the OCI runtimes `crun` (preferred) and `runc` (fallback), both
 * run as root with a state directory per Kiln root:
 * `--root <stateDir>/<crun|runc>`, e.g. `/var/lib/kiln/runtime/runc`.
 *
 * Operations map one to one to the runtime CLI (runtime-spec runtime.md
 * lifecycle): `create` (bundle with config.json, `--pid-file`), `start`,
 * `state` (JSON), `kill` (signal), `delete` (`--force`), `list`; and `run`,
 * which runs a bundle in the foreground and returns how its process ended.
 *
 * `run` contract:
 * - stdio over pipes (stdin: a stream, a Buffer/string, or nothing = a pipe
 *   closed at once, so the process reads EOF; with a tty and no input an open
 *   pipe that never sends anything, like docker's `-t` without `-i`;
 *   stdout/stderr: writable streams or nothing = discarded).
 * - "No stdin" is never the host's /dev/null: if that was ever deleted and
 *   re-created as a regular file by some `> /dev/null`, every process that
 *   "discards" output appends it there, and a container given /dev/null as
 *   stdin (crun passes it through; runc copies it into its own stdin pipe)
 *   would read other processes' output. A closed pipe has no such failure.
 * - `tty: true` (config.json must then have `process.terminal: true`): the
 *   runtime gets `--console-socket` and sends the master of the terminal it
 *   made for the container (received with the native addon: Node cannot
 *   receive descriptors); Kiln copies the master to stdout and stdin to it,
 *   and finishes only when the master reports the end, so the output of a
 *   process that exits at once is not lost (the runtimes' own foreground
 *   copying, under util-linux `script`, lost it in about one run in six).
 *   runc accepts a console socket only when it detaches, so with runc the
 *   foreground console mode under `script` stays (and so does its loss).
 *   The container sees a real tty, output arrives on stdout only (a tty
 *   merges the streams) with tty line discipline (CRLF, echo). The size is
 *   Kiln's stdout's when that is a terminal; changes are not forwarded (gap).
 *   Details in console.ts, which `exec` (exec.ts) uses too.
 * - exitCode is the process's exit code, or 128+N when it died of signal N;
 *   `signal` is then that signal's name. As with docker, a process that calls
 *   `exit(137)` is indistinguishable from one killed by SIGKILL.
 * - a command that cannot be started resolves, like docker, with 127 and
 *   `exec: "foo": executable file not found in $PATH` (or `... no such file
 *   or directory`), 126 with `exec: "foo": permission denied`, in
 *   `startError`; the runtime's own error lines are kept out of stderr (stderr
 *   is held back until the runtime has written the pid file). Other runtime
 *   failures reject with a KilnError carrying the runtime's message.
 * - an AbortSignal kills the container with SIGKILL, deletes it, and rejects
 *   with a KilnError 'Canceled'.
 * - the container is deleted when `run` returns, whatever happened.
 *
 * Stale containers: each create/run writes an owner record
 * (`<stateDir>/owners/<runtime>-<id>`: pid and start time of this Kiln
 * process); `cleanupStale()` kills and deletes containers whose owner is gone
 * (or that have no record), e.g. after Kiln was killed.
 *
 * crun on a hybrid cgroup layout: crun 1.8 refuses to run at all when the
 * cgroup2 hierarchy mounted at /sys/fs/cgroup/unified has controllers
 * ("cgroups in hybrid mode not supported"). `probeRuntime` then falls back to
 * runc. The opt-in `hideUnifiedCgroup` runs every crun command in a private
 * mount namespace where that cgroup2 mount is covered by an empty tmpfs, so
 * crun uses the v1 controllers like runc does; nothing changes on the host.
 * The namespace is made by the helper build/kiln-mntns (native/kiln_mntns.c,
 * ~0.5 ms), or, where it was not built, by util-linux `unshare`, a shell and
 * mount(8) (~3 ms per runtime command).
 *
 * Exec into a running container: exec.ts (through `commandLine`). Not here
 * (yet): pause/resume, events and stats, console size, a shim. Without a shim, a Kiln process killed hard
 * leaves the runtime process and its container running (their stdio pipes
 * broken) until `cleanupStale` kills and deletes them.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants as fsConstants, existsSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { ownerAlive, writeOwner } from './owner.ts';
import { errAlreadyExists, errInvalidArgument, errUnavailable, KilnError, wrap } from '../errors.ts';
import { detectCgroups } from './cgroups.ts';
import { removeTree } from '../fs/safe.ts';
import { generateSpec, writeSpec } from './spec.ts';
import { attachConsole, type ConsoleSocket, consoleSocketFor } from './console.ts';
import { type PipedChild, spawnPiped } from '../native/spawn.ts';

export type RuntimeName = 'crun' | 'runc';

export interface RuntimeOptions {
  name: RuntimeName;
  /** Kiln's runtime state directory, e.g. `<kilnroot>/runtime`; the runtime's `--root` is `<stateDir>/<name>`. */
  stateDir: string;
  /** Path or name of the runtime binary; default `name`. */
  binary?: string;
  /** crun only: hide a hybrid layout's cgroup2 mount from crun (see the module comment). */
  hideUnifiedCgroup?: boolean;
  /**
   * The program that makes the namespace hiding it: build/kiln-mntns by default, used when it is
   * executable; null for util-linux `unshare` with a shell and mount(8).
   */
  namespaceHelper?: string | null;
}

export type ContainerStatus = 'creating' | 'created' | 'running' | 'paused' | 'stopped';

export interface ContainerState {
  ociVersion: string;
  id: string;
  status: ContainerStatus;
  pid: number;
  bundle: string;
  created?: string;
  annotations?: Record<string, string>;
}

export interface RunOptions {
  /** Container id; default `kiln-<random>`. */
  id?: string;
  stdin?: Readable | Buffer | string;
  stdout?: Writable;
  stderr?: Writable;
  tty?: boolean;
  signal?: AbortSignal;
}

export interface RunResult {
  id: string;
  exitCode: number;
  /** The signal that ended the process (inferred from a 128+N exit code), or null. */
  signal: NodeJS.Signals | null;
  /** docker's message when the command could not be started (exit 126 or 127). */
  startError?: string;
}

export interface CreateOptions {
  pidFile?: string;
  /**
   * stdio for the container's process (inherited through the runtime);
   * default 'ignore' for all three. 'ignore' for stdin is a pipe closed at
   * once (EOF, never the host's /dev/null: see the module comment); for
   * stdout/stderr it is /dev/null.
   */
  stdio?: [StdioFd, StdioFd, StdioFd];
}

type StdioFd = 'ignore' | 'inherit' | number;

interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export const SIGNAL_NAMES: Record<number, NodeJS.Signals> = {
  1: 'SIGHUP',
  2: 'SIGINT',
  3: 'SIGQUIT',
  4: 'SIGILL',
  5: 'SIGTRAP',
  6: 'SIGABRT',
  7: 'SIGBUS',
  8: 'SIGFPE',
  9: 'SIGKILL',
  10: 'SIGUSR1',
  11: 'SIGSEGV',
  12: 'SIGUSR2',
  13: 'SIGPIPE',
  14: 'SIGALRM',
  15: 'SIGTERM',
  16: 'SIGSTKFLT',
  17: 'SIGCHLD',
  18: 'SIGCONT',
  19: 'SIGSTOP',
  20: 'SIGTSTP',
  21: 'SIGTTIN',
  22: 'SIGTTOU',
  23: 'SIGURG',
  24: 'SIGXCPU',
  25: 'SIGXFSZ',
  26: 'SIGVTALRM',
  27: 'SIGPROF',
  28: 'SIGWINCH',
  29: 'SIGIO',
  30: 'SIGPWR',
  31: 'SIGSYS',
};

/** The mount-namespace helper (native/kiln_mntns.c), found as the native addon is. */
export const MNTNS_HELPER = fileURLToPath(new URL('../../../build/kiln-mntns', import.meta.url));

function isExecutable(file: string): boolean {
  try {
    accessSync(file, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

function checkId(id: string): void {
  if (!ID_RE.test(id)) throw errInvalidArgument(`container id "${id}" is invalid`);
}

/** A small file's text (a runtime's log), or `fallback` when it cannot be read. */
function readTextOr(file: string, fallback: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Turns a runtime's start failure into docker's message and exit code (the
 * wording runc gives, which docker passes on), or null when the failure is
 * not about the command itself. crun's wording differs ("executable file `x`
 * not found in $PATH", "open executable: Permission denied") and maps to the
 * same results.
 */
export function classifyStartError(
  message: string,
  command: string,
): { exitCode: number; message: string } | null {
  const q = JSON.stringify(command);
  const notFound =
    /executable file (.* )?not found in \$PATH/.test(message) ||
    /exec: ".*": stat .*: no such file or directory/.test(message);
  if (notFound) {
    // A command with a slash is not looked up in PATH: docker reports the stat failure.
    return command.includes('/')
      ? { exitCode: 127, message: `exec: ${q}: stat ${command}: no such file or directory` }
      : { exitCode: 127, message: `exec: ${q}: executable file not found in $PATH` };
  }
  if (
    /exec: ".*": permission denied|open executable: (permission denied|operation not permitted)/i.test(
      message,
    )
  ) {
    return { exitCode: 126, message: `exec: ${q}: permission denied` };
  }
  return null;
}

/** The error messages in a runtime's JSON log (or its plain lines). */
export function errorsFromLog(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const entry = JSON.parse(line) as { level?: string; msg?: string };
      if ((entry.level === 'error' || entry.level === 'fatal') && entry.msg) out.push(entry.msg);
    } catch {
      out.push(line.trim());
    }
  }
  return out;
}

/**
 * Runs `argv` under util-linux script(1), which gives it a terminal: the runtimes'
 * foreground console mode needs one on their own stdin.
 */
export function underTerminal(argv: string[]): string[] {
  return [
    'script',
    '--quiet',
    '--return',
    '--flush',
    '--command',
    argv.map(shellQuote).join(' '),
    '/dev/null',
  ];
}

export class OciRuntime {
  readonly name: RuntimeName;
  readonly stateDir: string;
  /** The runtime's `--root`. */
  readonly root: string;
  readonly binary: string;
  readonly hideUnifiedCgroup: boolean;
  /** The cgroup2 mount to hide from crun, or null when not hiding. */
  #unifiedMount: string | null = null;
  /** The helper that hides it (RuntimeOptions.namespaceHelper); null after init() when not executable. */
  #mntns: string | null;
  #ready: Promise<void> | null = null;

  constructor(opts: RuntimeOptions) {
    this.name = opts.name;
    this.stateDir = path.resolve(opts.stateDir);
    this.root = path.join(this.stateDir, opts.name);
    this.binary = opts.binary ?? opts.name;
    this.hideUnifiedCgroup = opts.name === 'crun' && (opts.hideUnifiedCgroup ?? false);
    this.#mntns = opts.namespaceHelper === undefined ? MNTNS_HELPER : opts.namespaceHelper;
  }

  /**
   * Creates the state directories and, when hiding the unified cgroup, finds
   * its mount point (hiding is off when the layout is not hybrid). Called by
   * every operation; runs once.
   */
  async init(): Promise<void> {
    this.#ready ??= (async () => {
      await mkdir(this.root, { recursive: true, mode: 0o700 });
      await mkdir(path.join(this.stateDir, 'owners'), { recursive: true, mode: 0o700 });
      await mkdir(path.join(this.stateDir, 'logs'), { recursive: true, mode: 0o700 });
      if (this.hideUnifiedCgroup) {
        const layout = await detectCgroups();
        this.#unifiedMount = layout.mode === 'hybrid' ? (layout.unifiedMount ?? null) : null;
        if (this.#mntns !== null && !isExecutable(this.#mntns)) this.#mntns = null;
      }
    })();
    try {
      await this.#ready;
    } catch (err) {
      this.#ready = null;
      throw wrap(err, `prepare ${this.name} state directory "${this.root}"`);
    }
  }

  /** argv (program first) to run the runtime with the given arguments. */
  #argv(args: string[], logFile?: string): string[] {
    const global = ['--root', this.root];
    if (logFile) global.push('--log', logFile, '--log-format', 'json');
    const cmd = [this.binary, ...global, ...args];
    if (this.#unifiedMount === null) return cmd;
    if (this.#mntns) return [this.#mntns, this.#unifiedMount, ...cmd];
    return [
      'unshare',
      '--mount',
      '--propagation',
      'private',
      '--',
      'sh',
      '-c',
      'mount -t tmpfs -o size=64k,mode=0755 kiln-hide-cgroup2 "$0" && exec "$@"',
      this.#unifiedMount,
      ...cmd,
    ];
  }

  /** argv (program first) that runs the runtime with `args`, for drivers of other commands (exec.ts). */
  async commandLine(args: string[], logFile?: string): Promise<string[]> {
    await this.init();
    return this.#argv(args, logFile);
  }

  /** Runs a runtime command to completion, capturing its output. */
  async #exec(args: string[], what: string): Promise<ExecResult> {
    await this.init();
    const argv = this.#argv(args);
    return await new Promise<ExecResult>((resolve, reject) => {
      const child = spawnPiped(argv, { stdin: 'ignore' });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.on('error', (e) => reject(wrap(e, `${what}: start ${this.name}`)));
      child.on('close', (code, signal) =>
        resolve({
          code,
          signal,
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
        }),
      );
    });
  }

  async #execOk(args: string[], what: string): Promise<string> {
    const r = await this.#exec(args, what);
    if (r.code !== 0) {
      const msg =
        r.stderr.trim().replace(/^time="[^"]*" level=\w+ msg="(.*)"$/s, '$1') || `exit ${r.code ?? r.signal}`;
      const code = /does not exist|no such file or directory|not found/i.test(msg) ? 'NotFound' : 'Internal';
      throw new KilnError(code, `${what}: ${this.name}: ${msg}`);
    }
    return r.stdout;
  }

  /** Refuses an id that is in use, before any state (owner record, cleanup) is touched for it. */
  #checkFree(id: string, action: string): void {
    if (existsSync(path.join(this.root, id))) {
      throw errAlreadyExists(
        `${action} container "${id}": a container with this id exists in "${this.root}"`,
      );
    }
  }

  #ownerFile(id: string): string {
    return path.join(this.stateDir, 'owners', `${this.name}-${id}`);
  }

  async #writeOwner(id: string): Promise<void> {
    await writeOwner(this.#ownerFile(id), 0o644);
  }

  #removeOwner(id: string): void {
    rmSync(this.#ownerFile(id), { force: true });
  }

  /** Creates a container from a bundle (directory with config.json); its process waits for `start`. */
  async create(id: string, bundle: string, opts: CreateOptions = {}): Promise<void> {
    checkId(id);
    await this.init();
    this.#checkFree(id, 'create');
    await this.#writeOwner(id);
    const logFile = path.join(this.stateDir, 'logs', `${id}-${randomBytes(4).toString('hex')}.log`);
    const args = ['create', '--bundle', path.resolve(bundle)];
    if (opts.pidFile) args.push('--pid-file', path.resolve(opts.pidFile));
    args.push(id);
    const argv = this.#argv(args, logFile);
    try {
      // The container's process inherits the stdio given to the runtime, so
      // `create` must not wait for those to close: wait for the runtime's exit.
      const [stdin, stdout, stderr] = opts.stdio ?? ['ignore', 'ignore', 'ignore'];
      const code = await new Promise<number | null>((resolve, reject) => {
        const child = spawn(argv[0], argv.slice(1), {
          stdio: [stdin === 'ignore' ? 'pipe' : stdin, stdout, stderr],
        });
        // No input: end the pipe now; the process keeps the read end and sees EOF.
        child.stdin?.on('error', () => undefined);
        child.stdin?.end(() => child.stdin?.destroy());
        child.on('error', (e) => reject(wrap(e, `create container "${id}": start ${this.name}`)));
        child.on('exit', (c) => resolve(c));
      });
      if (code !== 0) {
        const errors = errorsFromLog(readTextOr(logFile, ''));
        // The id was free before: whatever the runtime left under it is ours to remove.
        if (existsSync(path.join(this.root, id)))
          await this.delete(id, { force: true }).catch(() => undefined);
        this.#removeOwner(id);
        const msg = errors.at(-1) ?? `exit ${code}`;
        throw new KilnError(
          /exists/.test(msg) ? 'AlreadyExists' : 'Internal',
          `create container "${id}": ${this.name}: ${msg}`,
        );
      }
    } finally {
      await rm(logFile, { force: true });
    }
  }

  /** Starts the process of a created container. */
  async start(id: string): Promise<void> {
    checkId(id);
    await this.#execOk(['start', id], `start container "${id}"`);
  }

  /** The runtime's state of a container; NotFound when it does not exist. */
  async state(id: string): Promise<ContainerState> {
    checkId(id);
    const out = await this.#execOk(['state', id], `state of container "${id}"`);
    try {
      return JSON.parse(out) as ContainerState;
    } catch (err) {
      throw wrap(err, `state of container "${id}": parse ${this.name} output`);
    }
  }

  /** Sends a signal (name like 'SIGTERM' or 'TERM', or a number) to the container's init process. */
  async kill(
    id: string,
    signal: NodeJS.Signals | string | number = 'SIGTERM',
    opts: { all?: boolean } = {},
  ): Promise<void> {
    checkId(id);
    const sig = typeof signal === 'number' ? String(signal) : signal.replace(/^SIG/, '');
    const args = ['kill'];
    if (opts.all) args.push('--all');
    args.push(id, sig);
    await this.#execOk(args, `kill container "${id}" with ${sig}`);
  }

  /** Deletes a container; `force` kills a running one first. Deleting a missing container is not an error. */
  async delete(id: string, opts: { force?: boolean } = {}): Promise<void> {
    checkId(id);
    const args = ['delete'];
    if (opts.force) args.push('--force');
    args.push(id);
    const r = await this.#exec(args, `delete container "${id}"`);
    if (r.code !== 0 && existsSync(path.join(this.root, id))) {
      throw new KilnError('Internal', `delete container "${id}": ${this.name}: ${r.stderr.trim()}`);
    }
    this.#removeOwner(id);
  }

  /** Containers known to this runtime root. */
  async list(): Promise<ContainerState[]> {
    const out = await this.#execOk(['list', '--format', 'json'], `list containers in "${this.root}"`);
    try {
      return (JSON.parse(out.trim() || 'null') as ContainerState[] | null) ?? [];
    } catch (err) {
      throw wrap(err, `list containers in "${this.root}": parse ${this.name} output`);
    }
  }

  /**
   * Kills and deletes containers whose owning Kiln process is gone (or that
   * have no owner record); removes owner records without a container.
   * Returns the ids of the containers deleted.
   */
  async cleanupStale(): Promise<string[]> {
    await this.init();
    const removed: string[] = [];
    const containers = await this.list();
    const ids = new Set(containers.map((c) => c.id));
    for (const c of containers) {
      if (await ownerAlive(this.#ownerFile(c.id))) continue;
      await this.kill(c.id, 'KILL', { all: true }).catch(() => undefined);
      await this.delete(c.id, { force: true });
      removed.push(c.id);
    }
    const prefix = `${this.name}-`;
    for (const f of await readdir(path.join(this.stateDir, 'owners'))) {
      if (f.startsWith(prefix) && !ids.has(f.slice(prefix.length)))
        await rm(path.join(this.stateDir, 'owners', f), { force: true });
    }
    return removed;
  }

  /** Runs a bundle in the foreground; see the module comment for the contract. */
  async run(bundle: string, opts: RunOptions = {}): Promise<RunResult> {
    const id = opts.id ?? `kiln-${randomBytes(8).toString('hex')}`;
    checkId(id);
    if (opts.signal?.aborted) {
      throw new KilnError('Canceled', `run container "${id}": aborted before start`, {
        cause: opts.signal.reason,
      });
    }
    bundle = path.resolve(bundle);
    let command = '';
    try {
      const config = JSON.parse(readFileSync(path.join(bundle, 'config.json'), 'utf8')) as {
        process?: { args?: string[]; terminal?: boolean };
      };
      command = config.process?.args?.[0] ?? '';
      if (Boolean(config.process?.terminal) !== Boolean(opts.tty)) {
        throw errInvalidArgument(
          `run container "${id}": tty is ${opts.tty ? 'on' : 'off'} but config.json has process.terminal ${Boolean(config.process?.terminal)}`,
        );
      }
    } catch (err) {
      if (err instanceof KilnError) throw err;
      throw wrap(err, `run container "${id}": read "${bundle}/config.json"`);
    }
    await this.init();
    this.#checkFree(id, 'run');
    const token = randomBytes(4).toString('hex');
    const logFile = path.join(this.stateDir, 'logs', `${id}-${token}.log`);
    const pidFile = path.join(this.stateDir, 'logs', `${id}-${token}.pid`);
    await this.#writeOwner(id);

    // With a terminal, the runtime sends the terminal's master over a console socket and Kiln
    // copies between it and the caller's streams (the runtime's own foreground copying lost
    // the output of processes that exited at once).
    const consoleSock = opts.tty ? consoleSocketFor(this, token) : undefined;
    let argv = this.#argv(
      [
        'run',
        ...(consoleSock ? ['--console-socket', consoleSock.path] : []),
        '--bundle',
        bundle,
        '--pid-file',
        pidFile,
        id,
      ],
      logFile,
    );
    // The runtime's foreground console mode needs a terminal on its own stdin.
    if (opts.tty && !consoleSock) argv = underTerminal(argv);
    // stdin is always a pipe of ours, never 'ignore' (= the host's /dev/null, see the module
    // comment). Without input it is ended at once; under `script` with a tty and no input it
    // stays open (docker's `-t` without `-i`): at EOF `script` would type an end-of-file
    // character into the container's terminal.
    let child: PipedChild;
    try {
      child = spawnPiped(argv, { stdin: 'pipe' });
    } catch (err) {
      consoleSock?.close();
      throw err;
    }

    let aborted = false;
    const onAbort = (): void => {
      aborted = true;
      this.kill(id, 'KILL', { all: true }).catch(() => {
        // Not created yet or already gone: kill the runtime itself.
        child.kill('SIGKILL');
      });
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    try {
      const done = consoleSock
        ? this.#waitConsole(child, opts, pidFile, consoleSock)
        : this.#wait(child, opts, pidFile);
      if (opts.signal?.aborted) onAbort();
      const { code, signal } = await done;
      const errors = errorsFromLog(readTextOr(logFile, ''));
      if (aborted) {
        throw new KilnError('Canceled', `run container "${id}": aborted`, { cause: opts.signal?.reason });
      }
      if (code === null) {
        throw new KilnError('Internal', `run container "${id}": ${this.name} was killed by ${signal}`);
      }
      if (!existsSync(pidFile) && code !== 0) {
        // The process never started: a runtime error, not the container's exit code.
        const msg = errors.at(-1) ?? `${this.name} exited with ${code}`;
        const start = classifyStartError(msg, command);
        if (start) return { id, exitCode: start.exitCode, signal: null, startError: start.message };
        throw new KilnError('Internal', `run container "${id}": ${this.name}: ${msg}`);
      }
      const sig = code > 128 ? (SIGNAL_NAMES[code - 128] ?? null) : null;
      return { id, exitCode: code, signal: sig };
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      if (existsSync(path.join(this.root, id))) await this.delete(id, { force: true }).catch(() => undefined);
      this.#removeOwner(id);
      rmSync(logFile, { force: true });
      rmSync(pidFile, { force: true });
    }
  }

  /**
   * With a terminal: takes the master from the console socket once the runtime sends it, copies
   * it to `opts.stdout` (and `opts.stdin` to it), and waits for the runtime to exit and for the
   * master to report the end (EIO once every process of the container has closed the terminal),
   * so nothing the container printed before exiting is lost.
   */
  async #waitConsole(
    child: PipedChild,
    opts: RunOptions,
    pidFile: string,
    sock: ConsoleSocket,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    child.stdin?.on('error', () => undefined);
    child.stdin?.end();
    const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      child.on('error', (e) => reject(wrap(e, `run container: start ${this.name}`)));
      child.on('close', (code, signal) => resolve({ code, signal }));
    });
    const gate = { started: false, pidFile };
    const stdout = forward(child.stdout, undefined, null);
    const stderr = forward(child.stderr, opts.stderr, gate);
    // Unbounded wait for the terminal's end: the container's init exited, so the kernel killed
    // the rest of its processes.
    const result = await attachConsole(sock, exit, opts);
    const dropHeld = result.code !== 0 && !existsSync(pidFile);
    await Promise.all([stdout.finish(false), stderr.finish(dropHeld)]);
    return result;
  }

  /** Wires stdio and waits for the runtime process and its pipes to close. */
  async #wait(
    child: PipedChild,
    opts: RunOptions,
    pidFile: string,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const stdin = child.stdin;
    if (stdin) {
      stdin.on('error', () => undefined); // EPIPE when the process does not read its input
      const src = opts.stdin;
      if (typeof src === 'string' || Buffer.isBuffer(src)) stdin.end(src);
      else if (src) src.pipe(stdin);
      else if (!opts.tty) stdin.end(); // no input: EOF at once
    }
    const stdout = forward(child.stdout, opts.stdout, null);
    const gate = { started: false, pidFile };
    const stderr = forward(child.stderr, opts.stderr, opts.tty ? null : gate);
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
      (resolve, reject) => {
        child.on('error', (e) => reject(wrap(e, `run container: start ${this.name}`)));
        child.on('close', (code, signal) => resolve({ code, signal }));
      },
    );
    if (opts.stdin && typeof opts.stdin !== 'string' && !Buffer.isBuffer(opts.stdin))
      opts.stdin.unpipe(stdin ?? undefined);
    stdin?.destroy();
    // A runtime that failed before writing the pid file wrote only its own errors to stderr: drop them.
    const dropHeld = exit.code !== 0 && !existsSync(pidFile);
    await Promise.all([stdout.finish(false), stderr.finish(dropHeld)]);
    return exit;
  }
}

interface Gate {
  started: boolean;
  pidFile: string;
}

interface Forwarder {
  /** Resolves when the source has ended; held output is flushed unless `dropHeld`. */
  finish(dropHeld: boolean): Promise<void>;
}

/**
 * Copies a child's output to a destination with backpressure (output without
 * a destination is read and discarded). With a gate, output is held back
 * until the pid file exists (the container's process has been started), so
 * a runtime's start-up errors can be dropped instead of reaching the caller.
 */
function forward(src: Readable | null, dest: Writable | undefined, gate: Gate | null): Forwarder {
  const held: Buffer[] = [];
  const ended = new Promise<void>((resolve) => {
    if (!src) return resolve();
    src.on('end', resolve);
    src.on('close', resolve);
  });
  let waitingDrain = false;
  const write = (b: Buffer): void => {
    if (!dest || dest.write(b) || !src || waitingDrain) return;
    waitingDrain = true;
    src.pause();
    dest.once('drain', () => {
      waitingDrain = false;
      src.resume();
    });
  };
  const flush = (): void => {
    for (const b of held.splice(0)) write(b);
  };
  src?.on('data', (b: Buffer) => {
    if (gate && !gate.started) {
      if (!existsSync(gate.pidFile)) {
        held.push(b);
        return;
      }
      gate.started = true;
      flush();
    }
    write(b);
  });
  return {
    async finish(dropHeld: boolean): Promise<void> {
      await ended;
      if (dropHeld) held.length = 0;
      else flush();
    },
  };
}

/** Result of probing which runtime works on this host. */
export interface ProbeResult {
  runtime: OciRuntime;
  /** Every runtime tried, with its error when it did not work. */
  tried: { name: RuntimeName; error?: string }[];
}

/**
 * Picks a runtime: `prefer` when given and working, else crun, else runc,
 * by running a tiny container once with a generated spec (an empty rootfs
 * with the host's /usr bind-mounted read-only, running `/usr/bin/true`).
 * Throws Unavailable when none works.
 */
export async function probeRuntime(opts: {
  stateDir: string;
  prefer?: RuntimeName;
  hideUnifiedCgroup?: boolean;
}): Promise<ProbeResult> {
  const order: RuntimeName[] = opts.prefer === 'runc' ? ['runc', 'crun'] : ['crun', 'runc'];
  const tried: ProbeResult['tried'] = [];
  await mkdir(opts.stateDir, { recursive: true, mode: 0o700 });
  const dir = await mkdtemp(path.join(opts.stateDir, 'probe-'));
  try {
    const rootfs = path.join(dir, 'rootfs');
    await mkdir(rootfs);
    for (const d of ['usr', 'proc', 'sys', 'dev', 'etc', 'tmp']) await mkdir(path.join(rootfs, d));
    for (const l of ['bin', 'lib', 'lib64', 'sbin']) await symlink(`usr/${l}`, path.join(rootfs, l));
    const { spec } = await generateSpec({
      rootfs,
      args: ['/usr/bin/true'],
      filesDir: dir,
      readonlyRootfs: true,
      mounts: [{ type: 'bind', source: '/usr', destination: '/usr', readonly: true }],
    });
    await writeSpec(dir, spec);
    for (const name of order) {
      const runtime = new OciRuntime({
        name,
        stateDir: opts.stateDir,
        hideUnifiedCgroup: opts.hideUnifiedCgroup,
      });
      try {
        const r = await runtime.run(dir, { id: `kiln-probe-${randomBytes(4).toString('hex')}` });
        if (r.exitCode !== 0) throw new Error(r.startError ?? `exit code ${r.exitCode}`);
        tried.push({ name });
        return { runtime, tried };
      } catch (err) {
        tried.push({ name, error: err instanceof Error ? err.message : String(err) });
      }
    }
  } finally {
    await removeTree(dir);
  }
  throw errUnavailable(
    `probe OCI runtimes: none works: ${tried.map((t) => `${t.name}: ${t.error}`).join('; ')}`,
  );
}

/** True when the runtime binary can be executed. */
export async function runtimeAvailable(name: RuntimeName): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const child = spawn(name, ['--version'], { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('close', (code) => resolve(code === 0));
  });
}
