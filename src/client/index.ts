/**
 * The TypeScript client of kilnd (src/daemon, src/control/server.ts): its API
 * (proto/kiln/control/v1/control.proto) over a unix socket, in the Connect
 * protocol over HTTP/1.1 (./connect.ts says why not gRPC over HTTP/2; kilnd
 * answers both, so other gRPC clients work too).
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
 * `close()` ends the calls in flight, which cancels them on the daemon.
 */
import { create, fromBinary, type MessageInitShape, toBinary } from '@bufbuild/protobuf';
import {
  BuildRequestSchema,
  BuildResponseSchema,
  InfoRequestSchema,
  type InfoResponse,
  InfoResponseSchema,
} from '../gen/kiln/control/v1/control_pb.ts';
import { type ErrorCode, KilnError } from '../core/errors.ts';
import type { ProgressEvent } from '../solver/progress.ts';
import { type BuildOutcome, fromProtoEvent, fromProtoResult } from '../control/wire.ts';
import { RpcError, serverStreamCall, unaryCall } from './connect.ts';

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

/** Connect protocol codes → the engine's (src/core/errors.ts); others are Internal. */
const CODES: Record<string, ErrorCode> = {
  canceled: 'Canceled',
  invalid_argument: 'InvalidArgument',
  not_found: 'NotFound',
  already_exists: 'AlreadyExists',
  permission_denied: 'PermissionDenied',
  resource_exhausted: 'ResourceExhausted',
  failed_precondition: 'FailedPrecondition',
  unimplemented: 'NotImplemented',
  unavailable: 'Unavailable',
  data_loss: 'DataLoss',
  unauthenticated: 'Unauthenticated',
};

const SERVICE = '/kiln.control.v1.Control';

export interface BuildCallOptions {
  /** Called with every progress event, in order. */
  onEvent?: (ev: ProgressEvent) => void;
  /** Aborting cancels the build on the daemon. */
  signal?: AbortSignal;
}

export class KilnClient {
  readonly address: string;
  readonly #path: string;
  readonly #calls = new Set<AbortController>();

  constructor(address: string) {
    this.address = address;
    this.#path = socketPath(address);
  }

  /** What the daemon is and where it keeps its state. */
  async info(): Promise<InfoResponse> {
    const call = this.#call();
    try {
      const reply = await unaryCall(
        this.#path,
        `${SERVICE}/Info`,
        toBinary(InfoRequestSchema, create(InfoRequestSchema, {})),
        { signal: call.signal },
      );
      return fromBinary(InfoResponseSchema, reply);
    } catch (err) {
      throw this.#wrap(err);
    } finally {
      this.#calls.delete(call);
    }
  }

  /** Runs a build on the daemon; resolves with its outcome (a failed build included). */
  async build(request: BuildRequestInit, opts: BuildCallOptions = {}): Promise<BuildOutcome> {
    const call = this.#call();
    const signal = opts.signal ? AbortSignal.any([opts.signal, call.signal]) : call.signal;
    try {
      const body = toBinary(BuildRequestSchema, create(BuildRequestSchema, request));
      for await (const bytes of serverStreamCall(this.#path, `${SERVICE}/Build`, body, { signal })) {
        const ev = fromBinary(BuildResponseSchema, bytes).event;
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
    } finally {
      this.#calls.delete(call);
    }
    throw new KilnError('Internal', `kilnd at ${this.address}: the build stream ended without a result`);
  }

  /** Ends the calls in flight (the daemon cancels them). */
  close(): void {
    for (const c of this.#calls) c.abort();
    this.#calls.clear();
  }

  #call(): AbortController {
    const c = new AbortController();
    this.#calls.add(c);
    return c;
  }

  #wrap(err: unknown): Error {
    if (!(err instanceof RpcError)) return err instanceof Error ? err : new Error(String(err));
    if (err.unreachable) {
      return new KilnError(
        'Unavailable',
        `cannot reach kilnd at ${this.address}: ${err.message} (is kilnd running? start it with: kilnd --addr ${this.address})`,
        { cause: err },
      );
    }
    return new KilnError(CODES[err.code] ?? 'Internal', `kilnd at ${this.address}: ${err.message}`, {
      cause: err,
    });
  }
}
