/**
 * The client side of the Connect protocol (https://connectrpc.com/docs/protocol)
 * over HTTP/1.1 on a unix socket: what `kiln --host` speaks to kilnd.
 *
 * kilnd serves its API with Connect's Node server, which answers gRPC and
 * gRPC-Web over HTTP/2 and the Connect protocol over HTTP/1.1 and HTTP/2
 * (src/control/server.ts). Connect's own Node client needs node:http2 and
 * the WHATWG `Headers` (undici): loading them costs a process ~65 ms, which
 * is more than a whole no-change build takes on a running kilnd. The two
 * calls a client makes need only one HTTP/1.1 request per connection
 * (./http1.ts, on node:net) and this much of the protocol:
 *
 * - Unary: `POST /<service>/<method>`, `Content-Type: application/proto`,
 *   the message as the body; 200 with the reply as the body, or an error
 *   status with a JSON body `{"code": "...", "message": "..."}`.
 * - Server streaming: `Content-Type: application/connect+proto`; request and
 *   response bodies are envelopes (1 byte of flags, a 4-byte big-endian
 *   length, the message). The last response envelope has flag 0x02 and
 *   holds JSON: `{"error": {...}}` when the call failed, else no error.
 *
 * No compression is offered, so none is used. Aborting the signal closes
 * the connection, which cancels the call on the server.
 */
import { type Http1Response, request as http1Request } from './http1.ts';

/** A failed call: `code` is the Connect protocol's (snake_case gRPC code names, e.g. `invalid_argument`). */
export class RpcError extends Error {
  readonly code: string;
  /** True when the socket could not be connected to at all (nothing listening, no file, no permission). */
  readonly unreachable: boolean;

  constructor(code: string, message: string, opts: { cause?: unknown; unreachable?: boolean } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'RpcError';
    this.code = code;
    this.unreachable = opts.unreachable ?? false;
  }
}

export interface RpcOptions {
  /** Aborting closes the connection (the server cancels the call). */
  signal?: AbortSignal;
}

const FLAG_COMPRESSED = 0x01;
const FLAG_END_STREAM = 0x02;
/** Upper bound of one message: a build's events are small, but a log chunk can be a few MB. */
const MAX_MESSAGE = 64 * 1024 * 1024;
const UNREACHABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EACCES', 'ENOTSOCK', 'EPERM']);

/** One envelope: flags, big-endian length, data. */
export function envelope(data: Uint8Array, flags = 0): Buffer {
  const out = Buffer.allocUnsafe(5 + data.length);
  out[0] = flags;
  out.writeUInt32BE(data.length, 1);
  out.set(data, 5);
  return out;
}

/** Splits a byte stream into envelopes; `rest` keeps an incomplete tail. */
export class EnvelopeReader {
  #buf: Buffer = Buffer.alloc(0);

  /** Adds bytes; returns the envelopes they completed. */
  push(chunk: Buffer): { flags: number; data: Buffer }[] {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const out: { flags: number; data: Buffer }[] = [];
    while (this.#buf.length >= 5) {
      const len = this.#buf.readUInt32BE(1);
      if (len > MAX_MESSAGE)
        throw new RpcError('resource_exhausted', `message of ${len} bytes exceeds the limit`);
      if (this.#buf.length < 5 + len) break;
      out.push({ flags: this.#buf[0]!, data: this.#buf.subarray(5, 5 + len) });
      this.#buf = this.#buf.subarray(5 + len);
    }
    return out;
  }

  /** Bytes of an envelope not yet complete. */
  get pending(): number {
    return this.#buf.length;
  }
}

/** The error in a Connect error JSON (`{code, message}`), or undefined when it names none. */
function errorFromJson(value: unknown): RpcError | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const e = value as { code?: unknown; message?: unknown };
  if (typeof e.code !== 'string') return undefined;
  return new RpcError(e.code, typeof e.message === 'string' ? e.message : e.code);
}

/** The Connect code for an HTTP status without a Connect error body (the protocol's table). */
function codeOfStatus(status: number): string {
  switch (status) {
    case 400:
      return 'internal';
    case 401:
      return 'unauthenticated';
    case 403:
      return 'permission_denied';
    case 404:
      return 'unimplemented';
    case 429:
    case 502:
    case 503:
    case 504:
      return 'unavailable';
    default:
      return 'unknown';
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Sends one request; resolves with the response once its headers are in. */
async function post(
  socketPath: string,
  procedure: string,
  contentType: string,
  body: Uint8Array,
  opts: RpcOptions,
): Promise<Http1Response> {
  if (opts.signal?.aborted) throw new RpcError('canceled', 'the call was canceled before it started');
  try {
    return await http1Request(socketPath, {
      method: 'POST',
      path: procedure,
      headers: { 'Content-Type': contentType, 'Connect-Protocol-Version': '1' },
      body,
      ...(opts.signal ? { signal: opts.signal } : {}),
      abortError: () => new RpcError('canceled', 'the call was canceled'),
    });
  } catch (err) {
    if (err instanceof RpcError) throw err;
    const e = err as NodeJS.ErrnoException;
    if (e.code && UNREACHABLE.has(e.code) && e.syscall === 'connect')
      throw new RpcError('unavailable', e.message, { cause: e, unreachable: true });
    throw new RpcError('unavailable', e.message, { cause: e });
  }
}

async function readAll(res: Http1Response): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of res.body) chunks.push(c);
  return Buffer.concat(chunks);
}

/** A call with one request and one reply. */
export async function unaryCall(
  socketPath: string,
  procedure: string,
  request: Uint8Array,
  opts: RpcOptions = {},
): Promise<Uint8Array> {
  const res = await post(socketPath, procedure, 'application/proto', request, opts);
  const body = await readAll(res);
  if (res.statusCode === 200) return body;
  throw statusError(res, body);
}

/** The error of a reply that is not 200: its Connect error JSON, else its HTTP status. */
function statusError(res: Http1Response, body: Buffer): RpcError {
  return (
    errorFromJson(parseJson(body.toString('utf8'))) ??
    new RpcError(codeOfStatus(res.statusCode), `HTTP ${res.statusCode} ${res.statusMessage}`.trim())
  );
}

/** A call with one request and a stream of replies, yielded as they arrive. */
export async function* serverStreamCall(
  socketPath: string,
  procedure: string,
  request: Uint8Array,
  opts: RpcOptions = {},
): AsyncGenerator<Uint8Array> {
  const res = await post(socketPath, procedure, 'application/connect+proto', envelope(request), opts);
  try {
    if (res.statusCode !== 200) throw statusError(res, await readAll(res));
    const reader = new EnvelopeReader();
    let ended = false;
    for await (const chunk of res.body) {
      for (const env of reader.push(chunk)) {
        if (ended) throw new RpcError('internal', 'protocol error: a message after the end of the stream');
        if (env.flags & FLAG_COMPRESSED) {
          throw new RpcError('internal', 'protocol error: a compressed message, though none was offered');
        }
        if (env.flags & FLAG_END_STREAM) {
          ended = true;
          const end = parseJson(env.data.toString('utf8'));
          if (end === undefined)
            throw new RpcError('internal', 'protocol error: the end of the stream is not JSON');
          const err = errorFromJson((end as { error?: unknown }).error);
          if (err) throw err;
          continue;
        }
        yield env.data;
      }
    }
    if (opts.signal?.aborted) throw new RpcError('canceled', 'the call was canceled');
    if (!ended || reader.pending > 0)
      throw new RpcError('unavailable', 'the connection closed before the end of the stream');
  } finally {
    // Also when the consumer stops early: the server sees the connection close and cancels.
    if (!res.complete) res.destroy();
  }
}
