/**
 * Forwards a unix socket to another one: the ssh agent sockets that an exec
 * gets for `RUN --mount=type=ssh` (BuildKit forwards the client's agent
 * through its session the same way).
 *
 * `forwardSocket(listen, target, { uid, gid, mode })` listens on the new
 * socket `listen` (its parent directory must exist; the path must not),
 * gives it the owner and permission bits asked (so a process running as that
 * user can connect, whatever the agent's own socket allows), and pipes every
 * connection to a fresh connection to `target`, byte for byte in both
 * directions. A failed connection to `target` closes the client's.
 * `close()` stops listening, destroys the open connections and removes the
 * socket file.
 *
 * Limits: the forward lives in this process: it serves only while the event
 * loop runs (an exec awaits its process, so it does). No protocol filtering:
 * whatever the agent answers reaches the client.
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import { KilnError } from '../core/errors.ts';

export interface SocketForward {
  /** The listening socket's path. */
  readonly path: string;
  close(): Promise<void>;
}

export interface ForwardOptions {
  uid: number;
  gid: number;
  /** Permission bits of the listening socket. */
  mode: number;
}

/** Listens on `listen` and forwards each connection to the unix socket `target`. */
export async function forwardSocket(
  listen: string,
  target: string,
  opts: ForwardOptions,
): Promise<SocketForward> {
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target);
    open.add(client);
    open.add(upstream);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new KilnError('Unavailable', `forward ssh agent socket: listen on "${listen}"`, { cause: err })),
    );
    server.listen(listen, () => resolve());
  });
  try {
    await fs.chown(listen, opts.uid, opts.gid);
    await fs.chmod(listen, opts.mode & 0o7777);
  } catch (err) {
    server.close();
    throw err;
  }
  return {
    path: listen,
    async close() {
      for (const s of open) s.destroy();
      open.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await fs.rm(listen, { force: true });
    },
  };
}
