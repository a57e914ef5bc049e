/**
 * kilnd's gRPC server: the Control service (proto/kiln/control/v1) on a unix
 * socket, over one engine context kept open for the daemon's life, so a
 * build pays neither process start-up nor opening the store.
 *
 * - Build: runs `executeBuild` (./build.ts) in the
 *   request's namespace and streams its events, then the result. Builds run
 *   concurrently, like BuildKit's; a client that cancels the call cancels
 *   its build.
 * - Info: version, root, snapshotter, runtime, pid.
 * - The socket: refused when a live server answers on it (another kilnd);
 *   a stale socket file is replaced. Mode 0660: whoever can connect can build
 *   as root, as with docker's socket.
 * - close(): stops accepting calls, cancels running builds and waits for
 *   them to finish (their mounts and processes released), closes the store,
 *   removes the socket.
 */
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import type { ConnectRouter, HandlerContext } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import type { Logger } from 'pino';
import { errFailedPrecondition, KilnError } from '../core/errors.ts';
import { type Core, validateNamespace } from '../core/metadata/index.ts';
import { type BuildRequest, type BuildResponse, Control } from '../gen/kiln/control/v1/control_pb.ts';
import { ProgressChannel } from '../solver/progress.ts';
import { type BuildOutcome, type BuildParams, executeBuild } from './build.ts';
import { fromProtoRequest, toProtoEvent, toProtoResult } from './wire.ts';

export const VERSION = '0.1.0';

/** The engine the server runs builds on. */
export interface Engine {
  root: string;
  /** The namespace of requests that name none. */
  namespace: string;
  snapshotter: string;
  /** The core for `namespace` (opened once, with the root's startup recovery). */
  core(): Promise<Core>;
  /** Closes the core; called by Server.close. */
  close(): Promise<void>;
}

export interface ServerOptions {
  engine: Engine;
  /** The socket's path. */
  socket: string;
  log: Logger;
  /** The OCI runtime in use, for Info. */
  runtime: string;
}

export interface Server {
  readonly socket: string;
  /** Cancels running builds, waits for them, closes the store and removes the socket. */
  close(): Promise<void>;
}

/** A request's parameters in the engine's form, with what kilnd requires of them checked. */
export function buildParams(req: BuildRequest): BuildParams {
  const p = fromProtoRequest(req);
  if (!path.isAbsolute(req.cwd)) {
    throw new KilnError('InvalidArgument', `build request: cwd "${req.cwd}" is not an absolute path`);
  }
  if (p.context === '-' || p.file === '-') {
    throw new KilnError(
      'InvalidArgument',
      'build request: a context or Dockerfile on standard input (-) cannot be sent to kilnd; give a path',
    );
  }
  return p;
}

/** Starts serving; resolves once the socket accepts connections. */
export async function serve(opts: ServerOptions): Promise<Server> {
  const { engine: g, log } = opts;
  const shutdown = new AbortController();
  const running = new Set<Promise<unknown>>();
  let seq = 0;

  async function* build(req: BuildRequest, hctx: HandlerContext): AsyncGenerator<BuildResponse> {
    if (shutdown.signal.aborted) throw errFailedPrecondition('kilnd is shutting down');
    const params = buildParams(req);
    const ns = req.namespace === '' ? g.namespace : req.namespace;
    validateNamespace(ns);
    const base = await g.core();
    const core = ns === base.namespace ? base : base.withNamespace(ns);
    const id = ++seq;
    const t0 = performance.now();
    log.info({ build: id, namespace: ns, context: params.context, tags: params.tags }, 'build started');
    const signal = AbortSignal.any([hctx.signal, shutdown.signal]);
    const events = new ProgressChannel();
    const run = executeBuild(core, params, { root: g.root, emit: (ev) => events.write(ev), signal });
    void run.finally(() => events.close());
    running.add(run);
    let outcome: BuildOutcome | undefined;
    try {
      for await (const ev of events) yield toProtoEvent(ev);
      outcome = await run;
      yield toProtoResult(outcome);
    } finally {
      // A client that went away: the build is canceled through `signal`; wait for its cleanup.
      outcome ??= await run;
      running.delete(run);
      log.info(
        {
          build: id,
          ms: Math.round(performance.now() - t0),
          ...(outcome.summary.error ? { error: outcome.summary.error.message } : {}),
          ...(outcome.canceled ? { canceled: true } : {}),
        },
        'build finished',
      );
    }
  }

  const routes = (router: ConnectRouter): void => {
    router.service(Control, {
      build,
      info: () => ({
        version: VERSION,
        root: g.root,
        snapshotter: g.snapshotter,
        runtime: opts.runtime,
        pid: process.pid,
      }),
    });
  };

  await claimSocket(opts.socket);
  const server = http2.createServer(connectNodeAdapter({ routes }));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.socket, () => {
      server.off('error', reject);
      resolve();
    });
  });
  chmodSync(opts.socket, 0o660);
  log.info({ socket: opts.socket, root: g.root, pid: process.pid }, 'kilnd serving');

  let closing: Promise<void> | undefined;
  return {
    socket: opts.socket,
    close() {
      closing ??= (async () => {
        shutdown.abort(new KilnError('Canceled', 'kilnd is shutting down'));
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        await Promise.allSettled([...running]);
        for (const s of sessions) s.close();
        await stopped;
        await g.close();
        rmSync(opts.socket, { force: true });
        log.info('kilnd stopped');
      })();
      return closing;
    },
  };
}

/** Makes the socket path free: refused while a server answers there; a stale file is removed. */
async function claimSocket(socket: string): Promise<void> {
  mkdirSync(path.dirname(socket), { recursive: true, mode: 0o755 });
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) {
    throw new KilnError('AlreadyExists', `listen on ${socket}: another server (kilnd?) is answering there`);
  }
  rmSync(socket, { force: true });
}
