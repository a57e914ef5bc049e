/**
 * Child processes started with posix_spawn (the addon's `spawnPiped`) instead of Node's
 * child_process, for the OCI runtime processes a container start or a RUN step waits for.
 *
 * Why: Node's child_process forks. Copying the page tables of a Kiln process (100-200 MB
 * resident during a build) takes 1.5-3.5 ms per process, during which the event loop is
 * blocked; a container start spawns the runtime once or twice. glibc's posix_spawn lets the
 * child share the parent's memory until it execs (see native/kiln_native.c).
 *
 * `PipedChild` has the part of ChildProcess's interface that Kiln's runtime driver uses:
 * `pid`, `stdin` (null unless asked for), `stdout`, `stderr`, `kill`, `exitCode`,
 * `signalCode`, and the events 'exit' (code, signal), 'close' (code, signal: after 'exit' and
 * once stdout and stderr have ended) and 'error' (the program could not be started; emitted
 * asynchronously, as child_process does, and then neither 'exit' nor 'close' follows).
 */
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';
import os from 'node:os';
import { Readable, Writable } from 'node:stream';
import { native } from './index.ts';

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(
  Object.entries(os.constants.signals).map(([name, n]) => [n, name as NodeJS.Signals]),
);

export interface SpawnPipedOptions {
  /** 'pipe': `stdin` is a writable pipe to the child; 'ignore': the child reads /dev/null. */
  stdin: 'pipe' | 'ignore';
  /** The child's environment; this process's when absent. */
  env?: NodeJS.ProcessEnv;
}

export class PipedChild extends EventEmitter {
  /** The child's pid; undefined when it could not be started. */
  readonly pid: number | undefined;
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  #exited = false;

  constructor(argv: readonly string[], opts: SpawnPipedOptions) {
    super();
    let fds: [number, number, number, number];
    try {
      const env = opts.env
        ? Object.entries(opts.env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]))
        : null;
      fds = native().spawnPiped(argv[0]!, [...argv], env, opts.stdin === 'pipe', (code, signal) =>
        this.#onExit(code, signal),
      );
    } catch (err) {
      this.pid = undefined;
      this.stdin = opts.stdin === 'pipe' ? new Writable({ write: (_c, _e, cb) => cb() }) : null;
      this.stdout = Readable.from([]);
      this.stderr = Readable.from([]);
      this.#exited = true;
      process.nextTick(() => this.emit('error', Object.assign(err as Error, { spawnargs: argv.slice(1) })));
      return;
    }
    const [pid, stdinFd, stdoutFd, stderrFd] = fds;
    this.pid = pid;
    this.stdin = stdinFd >= 0 ? new Socket({ fd: stdinFd, readable: false, writable: true }) : null;
    this.stdout = new Socket({ fd: stdoutFd, readable: true, writable: false });
    this.stderr = new Socket({ fd: stderrFd, readable: true, writable: false });
  }

  #onExit(code: number, signal: number): void {
    this.#exited = true;
    this.exitCode = code >= 0 ? code : null;
    this.signalCode = signal ? (SIGNAL_NAMES.get(signal) ?? null) : null;
    this.emit('exit', this.exitCode, this.signalCode);
    const ended = (s: Readable): Promise<void> =>
      s.readableEnded || s.destroyed
        ? Promise.resolve()
        : new Promise((resolve) => {
            s.once('end', resolve);
            s.once('close', resolve);
          });
    void Promise.all([ended(this.stdout), ended(this.stderr)]).then(() =>
      this.emit('close', this.exitCode, this.signalCode),
    );
  }

  /** Sends a signal unless the process has been reaped; false when it was not sent. */
  kill(signal: NodeJS.Signals | number = 'SIGTERM'): boolean {
    if (this.#exited || this.pid === undefined) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }
}

/** Starts argv[0] (searched on PATH) with argv, `opts.env` or this process's environment, and piped stdio. */
export function spawnPiped(argv: readonly string[], opts: SpawnPipedOptions): PipedChild {
  return new PipedChild(argv, opts);
}
