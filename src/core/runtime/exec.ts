/**
 * `exec`: runs an additional process in a running container (runtime-spec
 * has no exec; crun and runc both offer `exec --process <process.json>`),
 * in the foreground, with the same stdio contract as `OciRuntime.run`:
 *
 * - stdin: a stream, a Buffer/string, or nothing (= a pipe closed at once,
 *   never the host's /dev/null, see runtime.ts; with a tty an open pipe that
 *   never sends anything); stdout/stderr: writable streams or
 *   nothing (= discarded). With `process.terminal` the terminal comes
 *   through crun's `--console-socket` (./console.ts; runc takes one only when
 *   it detaches, so its foreground console is given a pseudo-terminal by
 *   util-linux `script`); output then arrives on stdout only.
 * - resolves with the process's exit code (128+N and the signal's name when
 *   it died of signal N); a command that cannot be started resolves with
 *   docker's 126/127 and message in `startError`, and the runtime's own error
 *   lines are kept out of stderr (held back until the pid file exists).
 * - an AbortSignal kills the exec'd process (SIGKILL) and rejects with
 *   'Canceled'. Other runtime failures (e.g. the container is not running)
 *   reject with a KilnError.
 *
 * Limits: the exec'd process is not tracked after it ends (no exec ids in the
 * runtime); window size changes are not forwarded.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { KilnError, wrap } from '../errors.ts';
import {
  classifyStartError,
  errorsFromLog,
  type OciRuntime,
  type RunResult,
  SIGNAL_NAMES,
  underTerminal,
} from './runtime.ts';
import { attachConsole, consoleSocketFor } from './console.ts';
import { type OciSpec, writeFileAtomic } from './spec.ts';
import { type PipedChild, spawnPiped } from '../native/spawn.ts';

export interface ExecOptions {
  stdin?: Readable | Buffer | string;
  stdout?: Writable;
  stderr?: Writable;
  signal?: AbortSignal;
}

/** Copies src to dest with backpressure; with `held`, output waits until `ready()` (then flushes). */
function pump(src: Readable | null, dest: Writable | undefined, ready: (() => boolean) | null) {
  const held: Buffer[] = [];
  let open = ready === null;
  const ended = new Promise<void>((resolve) => {
    if (!src) return resolve();
    src.on('end', resolve);
    src.on('close', resolve);
  });
  const write = (b: Buffer): void => {
    if (!dest || dest.write(b) || !src) return;
    src.pause();
    dest.once('drain', () => src.resume());
  };
  src?.on('data', (b: Buffer) => {
    if (!open && ready?.()) {
      open = true;
      for (const h of held.splice(0)) write(h);
    }
    if (open) write(b);
    else held.push(b);
  });
  return async (drop: boolean): Promise<void> => {
    await ended;
    if (!drop) for (const h of held.splice(0)) write(h);
  };
}

/** Runs `proc` in the running container `id` (see the module comment). */
export async function execInContainer(
  runtime: OciRuntime,
  id: string,
  proc: OciSpec['process'],
  opts: ExecOptions = {},
): Promise<RunResult> {
  if (opts.signal?.aborted)
    throw new KilnError('Canceled', `exec in container "${id}": aborted before start`);
  await runtime.init();
  const token = randomBytes(4).toString('hex');
  const base = path.join(runtime.stateDir, 'logs', `exec-${id}-${token}`);
  const processFile = `${base}.json`;
  const logFile = `${base}.log`;
  const pidFile = `${base}.pid`;
  const command = proc.args[0] ?? '';
  try {
    await writeFileAtomic(processFile, JSON.stringify(proc), 0o600);
    const sock = proc.terminal ? consoleSocketFor(runtime, token) : undefined;
    let child: PipedChild;
    try {
      let argv = await runtime.commandLine(
        [
          'exec',
          ...(sock ? ['--console-socket', sock.path] : []),
          '--process',
          processFile,
          '--pid-file',
          pidFile,
          id,
        ],
        logFile,
      );
      if (proc.terminal && !sock) argv = underTerminal(argv);
      child = spawnPiped(argv, { stdin: 'pipe' });
    } catch (err) {
      sock?.close();
      throw err;
    }
    let aborted = false;
    const onAbort = (): void => {
      aborted = true;
      readFile(pidFile, 'utf8')
        .then((pid) => process.kill(Number(pid.trim()), 'SIGKILL'))
        .catch(() => child.kill('SIGKILL'));
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (child.stdin) {
        child.stdin.on('error', () => undefined);
        const src = opts.stdin;
        if (sock)
          child.stdin.end(); // the input goes to the terminal
        else if (typeof src === 'string' || Buffer.isBuffer(src)) child.stdin.end(src);
        else if (src) src.pipe(child.stdin);
        else if (!proc.terminal) child.stdin.end(); // no input: EOF at once
      }
      const outDone = pump(child.stdout, sock ? undefined : opts.stdout, null);
      const errDone = pump(
        child.stderr,
        opts.stderr,
        proc.terminal && !sock ? null : () => existsSync(pidFile),
      );
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
        (resolve, reject) => {
          child.on('error', (e) => reject(wrap(e, `exec in container "${id}": start ${runtime.name}`)));
          child.on('close', (c, s) => resolve({ code: c, signal: s }));
        },
      );
      // The wait for the terminal's end is bounded: a process the exec'd one started in the
      // background may hold the terminal.
      const { code, signal } = sock ? await attachConsole(sock, exited, opts, 2000) : await exited;
      if (
        !sock &&
        opts.stdin &&
        typeof opts.stdin !== 'string' &&
        !Buffer.isBuffer(opts.stdin) &&
        child.stdin
      ) {
        opts.stdin.unpipe(child.stdin);
      }
      child.stdin?.destroy();
      const started = existsSync(pidFile);
      await Promise.all([outDone(false), errDone(code !== 0 && !started)]);
      if (aborted) throw new KilnError('Canceled', `exec in container "${id}": aborted`);
      if (code === null) {
        throw new KilnError('Internal', `exec in container "${id}": ${runtime.name} was killed by ${signal}`);
      }
      if (!started && code !== 0) {
        const errors = errorsFromLog(await readFile(logFile, 'utf8').catch(() => ''));
        const msg = errors.at(-1) ?? `${runtime.name} exited with ${code}`;
        const start = classifyStartError(msg, command);
        if (start) return { id, exitCode: start.exitCode, signal: null, startError: start.message };
        const notRunning = /not running|does not exist|not found|no such/i.test(msg);
        throw new KilnError(
          notRunning ? 'FailedPrecondition' : 'Internal',
          `exec in container "${id}": ${runtime.name}: ${msg}`,
        );
      }
      return { id, exitCode: code, signal: code > 128 ? (SIGNAL_NAMES[code - 128] ?? null) : null };
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  } finally {
    await Promise.all([processFile, logFile, pidFile].map((f) => rm(f, { force: true })));
  }
}
