/**
 * The TypeScript client of kilnd (src/daemon, src/control/server.ts): its gRPC API
 * (proto/kiln/control/v1/control.proto) over a unix socket.
 *
 *   const client = new KilnClient('unix:///run/kiln/kilnd.sock');
 *   const info = await client.info();
 *   const outcome = await client.build({ context: '/src/app', tags: ['app:latest'] }, {
 *     onEvent: (ev) => console.log(ev.type),
 *   });
 *   client.close();
 *
 * Addresses: `unix:///abs/path`, `unix:rel/path` or a bare path (a socket).
 * The client and kilnd share a file system (see the proto's comment).
 * Errors: a daemon that cannot be reached is `Unavailable`, naming the
 * address; a build that fails is not an error but a BuildOutcome whose
 * `summary.error` says why.
 *
 * This module loads no engine code: it is what `kiln build --host` uses.
 */
import net from 'node:net';
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { Code, ConnectError, createClient, type Client } from '@connectrpc/connect';
import {
  type BuildRequestSchema,
  Control,
  InfoRequestSchema,
  type InfoResponse,
} from '../gen/kiln/control/v1/control_pb.ts';
import { KilnError } from '../core/errors.ts';
import type { ProgressEvent } from '../solver/progress.ts';
import { type BuildOutcome, fromProtoEvent, fromProtoResult } from '../control/wire.ts';

export type { BuildOutcome } from '../control/wire.ts';
export type BuildRequestInit = MessageInitShape<typeof BuildRequestSchema>;

/** Where kilnd listens unless told otherwise (as root; like buildkitd's /run/buildkit). */
export const DEFAULT_ADDRESS = 'unix:///run/kiln/kilnd.sock';

/** The socket path of an address (see the module comment). */
export function socketPath(address: string): string {
  if (address.startsWith('unix://')) return address.slice('unix://'.length);
  if (address.startsWith('unix:')) return address.slice('unix:'.length);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(address)) {
    throw new KilnError(
      'InvalidArgument',
      `kilnd address "${address}": only unix sockets are supported (unix:///path/to/kilnd.sock)`,
    );
  }
  return address;
}

function unavailable(address: string, err: unknown): KilnError {
  const detail =
    err instanceof ConnectError ? err.rawMessage : err instanceof Error ? err.message : String(err);
  return new KilnError(
    'Unavailable',
    `cannot reach kilnd at ${address}: ${detail} (is kilnd running? start it with: kilnd --addr ${address})`,
    { cause: err },
  );
}

/** True for a failure to open the socket (nothing listening, no such file, no permission). */
function isConnectFailure(err: ConnectError): boolean {
  let e: unknown = err;
  for (let i = 0; i < 5 && e instanceof Error; i++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EACCES' || code === 'ENOTSOCK') return true;
    e = e.cause;
  }
  return /\bconnect (ENOENT|ECONNREFUSED|EACCES)\b/.test(err.rawMessage);
}

export interface BuildCallOptions {
  /** Called with every progress event, in order. */
  onEvent?: (ev: ProgressEvent) => void;
  /** Aborting cancels the build on the daemon. */
  signal?: AbortSignal;
}

export class KilnClient {
  readonly address: string;
  readonly #path: string;
  #client: Promise<Client<typeof Control>> | undefined;
  readonly #sockets = new Set<net.Socket>();

  constructor(address: string) {
    this.address = address;
    this.#path = socketPath(address);
  }

  /**
   * The gRPC client, made on first use: its transport loads node:http2, which
   * cannot be part of the CLI's start-up snapshot (src/cli/snapshot.ts).
   */
  #connect(): Promise<Client<typeof Control>> {
    this.#client ??= this.#open();
    return this.#client;
  }

  async #open(): Promise<Client<typeof Control>> {
    const { createGrpcTransport } = await import('@connectrpc/connect-node');
    const path = this.#path;
    const transport = createGrpcTransport({
      // The authority is a placeholder: the connection is the unix socket.
      baseUrl: 'http://kilnd',
      nodeOptions: {
        createConnection: () => {
          const s = net.connect(path);
          this.#sockets.add(s);
          s.on('close', () => this.#sockets.delete(s));
          return s;
        },
      },
    });
    return createClient(Control, transport);
  }

  /** What the daemon is and where it keeps its state. */
  async info(): Promise<InfoResponse> {
    try {
      return await (await this.#connect()).info(create(InfoRequestSchema, {}));
    } catch (err) {
      throw this.#wrap(err);
    }
  }

  /** Runs a build on the daemon; resolves with its outcome (a failed build included). */
  async build(request: BuildRequestInit, opts: BuildCallOptions = {}): Promise<BuildOutcome> {
    try {
      const client = await this.#connect();
      for await (const res of client.build(request, opts.signal ? { signal: opts.signal } : {})) {
        const ev = res.event;
        if (ev.case === 'result') return fromProtoResult(ev.value);
        const pe = fromProtoEvent(ev);
        if (pe) opts.onEvent?.(pe);
      }
    } catch (err) {
      if (opts.signal?.aborted) {
        return {
          summary: { results: [], warnings: [], error: { message: 'build canceled' } },
          canceled: true,
        };
      }
      throw this.#wrap(err);
    }
    throw new KilnError('Internal', `kilnd at ${this.address}: the build stream ended without a result`);
  }

  /** Closes the connections to the daemon. */
  close(): void {
    for (const s of this.#sockets) s.destroy();
  }

  #wrap(err: unknown): Error {
    if (err instanceof ConnectError && (err.code === Code.Unavailable || isConnectFailure(err))) {
      return unavailable(this.address, err);
    }
    if (err instanceof ConnectError) {
      return new KilnError('Internal', `kilnd at ${this.address}: ${err.rawMessage}`, { cause: err });
    }
    return err instanceof Error ? err : new Error(String(err));
  }
}
