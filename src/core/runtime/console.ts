/**
 * A container's terminal through the runtime's `--console-socket`: the
 * runtime connects to a Unix socket of ours and sends the master side of the
 * terminal it made (SCM_RIGHTS, received with the native addon: Node cannot
 * receive descriptors); Kiln copies the master to the caller's stdout and
 * the caller's input to the master.
 *
 * Contract:
 * - `consoleSocketFor(runtime, token)`: a listening socket at
 *   `<stateDir>/logs/console-<token>.sock` (under /tmp when that path is
 *   too long for a socket address) for crun; undefined for runc, which takes
 *   a console socket only when it detaches (then no process of ours could
 *   wait for the container), so its foreground console mode runs under
 *   util-linux `script`. `close()` removes the socket.
 * - `attachConsole(sock, exit, io, graceMs)`, for the runtime process whose
 *   end `exit` resolves with: takes the master once the runtime sends it
 *   (polling the non-blocking socket; none if the runtime exits first,
 *   which also closes the socket), copies it as below while the process
 *   runs, and resolves with `exit`'s value once the copy finished.
 * - The copy uses plain reads and writes (fs
 *   streams close their descriptor when destroyed, and the two directions
 *   share one). The end of the input reaches the terminal as its end-of-file
 *   character (after one that completes a partial last line), as a keyboard
 *   sends it; no input leaves the terminal open and silent (docker's `-t`
 *   without `-i`). The size is Kiln's stdout's when that is a terminal.
 *   Once the process has exited, it waits for the master to
 *   report its end (EIO: every process of it closed the terminal), so the
 *   last output is never lost, stops the input and closes the master. With
 *   `graceMs` (exec: a process it started may keep the terminal open) it
 *   waits at most that long; a read still pending then ends when that
 *   process closes the terminal (it holds the terminal, not the descriptor
 *   number, which is closed).
 */
import { closeSync, read as fsReadCb, rmSync, write as fsWriteCb } from 'node:fs';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { promisify } from 'node:util';
import { native } from '../native/index.ts';

const fsRead = promisify(fsReadCb);
const fsWrite = promisify(fsWriteCb) as (
  fd: number,
  buffer: Buffer,
  offset: number,
  length: number,
) => Promise<{ bytesWritten: number; buffer: Buffer }>;

export interface ConsoleSocket {
  path: string;
  accept(): number | null;
  close(): void;
}

export function consoleSocketFor(
  runtime: { readonly name: string; readonly stateDir: string },
  token: string,
): ConsoleSocket | undefined {
  if (runtime.name !== 'crun') return undefined;
  let p = path.join(runtime.stateDir, 'logs', `console-${token}.sock`);
  if (Buffer.byteLength(p) > 100) p = path.join('/tmp', `kiln-console-${process.pid}-${token}.sock`);
  rmSync(p, { force: true });
  const fd = native().consoleListen(p);
  let open = true;
  return {
    path: p,
    accept: () => native().consoleAccept(fd),
    close: () => {
      if (!open) return;
      open = false;
      closeSync(fd);
      rmSync(p, { force: true });
    },
  };
}

export async function attachConsole<T>(
  sock: ConsoleSocket,
  exit: Promise<T>,
  io: ConsoleIO,
  graceMs?: number,
): Promise<T> {
  let exited = false;
  const settled = (): void => {
    exited = true;
  };
  exit.then(settled, settled);
  const master = await acceptConsole(sock, () => exited);
  const copy = master === null ? undefined : copyConsole(master, io);
  try {
    return await exit;
  } finally {
    await copy?.finish(graceMs);
  }
}

async function acceptConsole(sock: ConsoleSocket, done: () => boolean): Promise<number | null> {
  let master: number | null = null;
  try {
    while (master === null && !done()) {
      master = sock.accept();
      if (master === null) await new Promise((r) => setTimeout(r, 1));
    }
  } finally {
    sock.close();
  }
  return master;
}

export interface ConsoleIO {
  stdin?: Readable | string | Buffer;
  stdout?: Writable;
}

function copyConsole(master: number, io: ConsoleIO): { finish(graceMs?: number): Promise<void> } {
  if (process.stdout.isTTY && process.stdout.rows && process.stdout.columns) {
    try {
      native().setWindowSize(master, process.stdout.rows, process.stdout.columns);
    } catch {
      // a size is a nicety
    }
  }
  let closed = false;
  const copied = (async () => {
    const buf = Buffer.allocUnsafe(64 * 1024);
    for (;;) {
      let n: number;
      try {
        n = (await fsRead(master, buf, 0, buf.length, null)).bytesRead;
      } catch {
        return; // EIO: the last process holding the terminal closed it
      }
      if (n === 0 || closed) return;
      const out = io.stdout;
      if (out && !out.write(Buffer.from(buf.subarray(0, n))))
        await new Promise<void>((r) => out.once('drain', () => r()));
    }
  })();

  let stopped = false;
  let stop = (): void => {
    stopped = true;
  };
  let feeding: Promise<void> = Promise.resolve();
  const write = async (b: Buffer): Promise<void> => {
    for (let off = 0; off < b.length && !stopped; ) {
      off += (await fsWrite(master, b, off, b.length - off)).bytesWritten;
    }
  };
  const eofAfter = (last: number): Buffer => Buffer.from(last === 0x0a ? [0x04] : [0x04, 0x04]);
  const src = io.stdin;
  if (typeof src === 'string' || Buffer.isBuffer(src)) {
    const b = Buffer.from(src);
    feeding = write(Buffer.concat([b, eofAfter(b.length > 0 ? b[b.length - 1]! : 0x0a)])).catch(
      () => undefined,
    );
  } else if (src) {
    feeding = new Promise<void>((resolve) => {
      let last = 0x0a;
      let chain = Promise.resolve();
      const onData = (c: Buffer | string): void => {
        const b = Buffer.from(c);
        if (b.length === 0) return;
        last = b[b.length - 1]!;
        src.pause();
        chain = chain
          .then(() => write(b))
          .then(
            () => {
              if (!stopped) src.resume();
            },
            () => resolve(),
          );
      };
      const onEnd = (): void => {
        chain = chain
          .then(() => write(eofAfter(last)))
          .then(
            () => resolve(),
            () => resolve(),
          );
      };
      src.on('data', onData);
      src.once('end', onEnd);
      stop = () => {
        stopped = true;
        src.off('data', onData);
        src.off('end', onEnd);
        void chain.then(() => resolve());
      };
    });
  }

  return {
    async finish(graceMs?: number): Promise<void> {
      let timer: NodeJS.Timeout | undefined;
      const deadline =
        graceMs === undefined ? undefined : new Promise<void>((r) => (timer = setTimeout(r, graceMs)));
      const bounded = (p: Promise<void>): Promise<void> => (deadline ? Promise.race([p, deadline]) : p);
      await bounded(copied);
      stop();
      await bounded(feeding);
      clearTimeout(timer);
      closed = true;
      closeSync(master);
    },
  };
}
