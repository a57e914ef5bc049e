/**
 * kilnd's API server: the Control service (proto/kiln/control/v1) on a unix
 * socket, over one engine context kept open for the daemon's life, so a
 * build pays neither process start-up nor opening the store (nor the build
 * cache index: one per namespace, shared by its builds).
 *
 * Protocols: Connect's Node server answers gRPC (and gRPC-Web and the
 * Connect protocol) over HTTP/2, and the Connect protocol over HTTP/1.1, on
 * the same socket: a connection that starts with HTTP/2's preface goes to
 * the HTTP/2 server, any other to the HTTP/1.1 one. kiln's own client uses
 * HTTP/1.1 (src/client/connect.ts says why); other gRPC clients use HTTP/2.
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
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import type { Logger } from 'pino';
import { type ErrorCode, errFailedPrecondition, KilnError } from '../core/errors.ts';
import { type Core, validateNamespace } from '../core/metadata/index.ts';
import { type BuildRequest, type BuildResponse, Control } from '../gen/kiln/control/v1/control_pb.ts';
import { ProgressChannel } from '../solver/progress.ts';
import type { SqliteCacheManager } from '../solver/cache.ts';
import { workerCache } from '../worker/worker.ts';
import { type BuildOutcome, type BuildParams, executeBuild } from './build.ts';
import { bundledCodeId } from './memo.ts';
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

/** The engine's error codes as statuses. */
const STATUS: Record<ErrorCode, Code> = {
  NotFound: Code.NotFound,
  AlreadyExists: Code.AlreadyExists,
  FailedPrecondition: Code.FailedPrecondition,
  InvalidArgument: Code.InvalidArgument,
  Unavailable: Code.Unavailable,
  Canceled: Code.Canceled,
  DataLoss: Code.DataLoss,
  PermissionDenied: Code.PermissionDenied,
  Unauthenticated: Code.Unauthenticated,
  ResourceExhausted: Code.ResourceExhausted,
  NotImplemented: Code.Unimplemented,
  Internal: Code.Internal,
};

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
  /** One cache index per namespace for every build (opened on its first build, closed with the server). */
  const caches = new Map<string, SqliteCacheManager>();
  let seq = 0;

  /** What a build needs before it starts; a refusal is a status with its code (not Internal). */
  async function admit(req: BuildRequest): Promise<{ params: BuildParams; ns: string; base: Core }> {
    try {
      if (shutdown.signal.aborted) throw errFailedPrecondition('kilnd is shutting down');
      const params = buildParams(req);
      const ns = req.namespace === '' ? g.namespace : req.namespace;
      validateNamespace(ns);
      return { params, ns, base: await g.core() };
    } catch (err) {
      if (err instanceof KilnError) throw new ConnectError(err.message, STATUS[err.code]);
      throw err;
    }
  }

  async function* build(req: BuildRequest, hctx: HandlerContext): AsyncGenerator<BuildResponse> {
    const { params, ns, base } = await admit(req);
    const core = ns === base.namespace ? base : base.withNamespace(ns);
    const id = ++seq;
    const t0 = performance.now();
    log.info({ build: id, namespace: ns, context: params.context, tags: params.tags }, 'build started');
    const signal = AbortSignal.any([hctx.signal, shutdown.signal]);
    const events = new ProgressChannel();
    let cache = caches.get(ns);
    if (!cache) {
      try {
        cache = workerCache(core);
        caches.set(ns, cache);
      } catch {
        // The build opens its own and reports why it cannot.
      }
    }
    const codeId = bundledCodeId();
    const run = executeBuild(core, params, {
      root: g.root,
      emit: (ev) => events.write(ev),
      signal,
      ...(cache ? { cache } : {}),
      ...(codeId ? { codeId } : {}),
    });
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
  const handler = connectNodeAdapter({ routes });
  const h2 = http2.createServer(handler);
  const h1 = http.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // A client that resets its connection is no error of the daemon's (the servers handle the
    // errors of the connections they took; this one covers the first bytes).
    socket.on('error', (err) => log.debug({ err: err.message }, 'connection error'));
    dispatchByPreface(socket, h1, h2);
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
        // Builds are over: the remaining connections go, HTTP/1.1 ones and those that never sent
        // a request (and so belong to neither server) included.
        for (const s of sockets) s.destroy();
        await stopped;
        for (const c of caches.values()) c.close();
        await g.close();
        rmSync(opts.socket, { force: true });
        log.info('kilnd stopped');
      })();
      return closing;
    },
  };
}

/** HTTP/2 with prior knowledge starts with this (RFC 9113, 3.4); an HTTP/1.1 request never does. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0');

/**
 * Hands a new connection to the HTTP/2 server (gRPC, the Connect protocol) or to the HTTP/1.1
 * one (the Connect protocol, which `kiln --host` uses: node:http2 costs a client ~20 ms to load),
 * by its first bytes.
 */
function dispatchByPreface(socket: net.Socket, h1: http.Server, h2: http2.Http2Server): void {
  let head = Buffer.alloc(0);
  const onData = (chunk: Buffer): void => {
    head = Buffer.concat([head, chunk]);
    const n = Math.min(head.length, H2_PREFACE.length);
    const isH2 = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
    if (isH2 && head.length < H2_PREFACE.length) return; // undecided yet
    socket.off('data', onData);
    if (!isH2) {
      socket.pause();
      socket.unshift(head);
      h1.emit('connection', socket);
      socket.resume();
      return;
    }
    // node:http2 reads a net.Socket through its native handle, past what was read here; given
    // another stream it reads through JavaScript, so the bytes read here can be put back first.
    const stream = new Duplex({
      read: () => socket.resume(),
      write: (chunk: Buffer, _enc, cb) => socket.write(chunk, cb),
      final: (cb) => socket.end(cb),
      destroy: (err, cb) => {
        socket.destroy(err ?? undefined);
        cb(err);
      },
    });
    stream.push(head);
    socket.on('data', (d: Buffer) => {
      if (!stream.push(d)) socket.pause();
    });
    socket.on('end', () => stream.push(null));
    socket.on('close', () => stream.destroy());
    socket.on('error', (err) => stream.destroy(err));
    h2.emit('connection', stream);
  };
  socket.on('data', onData);
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
