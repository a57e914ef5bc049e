/**
 * One HTTP/1.1 request on a unix socket and its response as a stream, on
 * node:net alone: the transport of the Connect client (./connect.ts).
 *
 * Why not node:http: its modules cannot be held in a start-up snapshot (the
 * snapshot builder fails on their handles), so every `kiln --host … build`
 * compiled them (~8 ms) and made its first request through them (~2 ms more):
 * ~10 ms of the ~75 ms that a no-change build through kilnd takes, all of it
 * in the client. node:net is in the client's snapshot already.
 *
 * Scope, all that a Connect call needs: one request per connection
 * (`Connection: close`), its body sent whole with a Content-Length; a
 * response body framed by Content-Length, by the chunked transfer coding
 * (chunk extensions and trailers read and dropped), or by the end of the
 * connection. Interim 1xx responses are skipped; no upgrade, no pipelining.
 * A malformed response fails the call with a message that says what was
 * wrong; a connection that ends before the response does too.
 */
import type { Socket } from 'node:net';

export interface Http1Request {
  method: string;
  path: string;
  /** Header names and values (Host, Content-Length and Connection are added). */
  headers: Record<string, string>;
  body: Uint8Array;
  /** Aborting closes the connection; the call fails with `abortError()`. */
  signal?: AbortSignal;
  abortError?: () => Error;
}

export interface Http1Response {
  readonly statusCode: number;
  readonly statusMessage: string;
  /** Lower-case names; a repeated header's values joined with ", ". */
  readonly headers: ReadonlyMap<string, string>;
  /** The body as it arrives; it throws if the response breaks off. */
  readonly body: AsyncIterable<Buffer>;
  /** True once the whole body has arrived. */
  readonly complete: boolean;
  /** Closes the connection (the server sees the call cancelled). */
  destroy(err?: Error): void;
}

/** A failure of the socket itself: `code` and `syscall` as Node gives them (`connect` when nothing answered). */
export type Http1SocketError = NodeJS.ErrnoException;

const MAX_HEAD = 64 * 1024;
/** The socket is paused while this much of the body waits for its reader. */
const HIGH_WATER = 1024 * 1024;

interface Head {
  statusCode: number;
  statusMessage: string;
  headers: Map<string, string>;
}

type State =
  | { kind: 'head' }
  | { kind: 'length'; left: number }
  | { kind: 'chunk-size' }
  | { kind: 'chunk-data'; left: number }
  | { kind: 'chunk-end' }
  | { kind: 'trailers' }
  | { kind: 'until-close' }
  | { kind: 'done' };

/** What one `push` produced: the response head (once), body bytes, and whether the body ended. */
export interface ParsedPart {
  head?: Head;
  data: Buffer[];
  done: boolean;
}

/** An HTTP/1.1 response parser fed with the bytes of a connection as they come (exported for the tests). */
export class ResponseParser {
  #buf: Buffer = Buffer.alloc(0);
  #state: State = { kind: 'head' };

  get done(): boolean {
    return this.#state.kind === 'done';
  }

  /** Adds bytes; throws an Error naming what is malformed. */
  push(chunk: Buffer): ParsedPart {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const out: ParsedPart = { data: [], done: false };
    for (;;) {
      const s = this.#state;
      if (s.kind === 'done') {
        if (this.#buf.length > 0) throw new Error('bytes after the end of the response');
        out.done = true;
        return out;
      }
      if (s.kind === 'head') {
        const end = this.#buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (this.#buf.length > MAX_HEAD) throw new Error(`a response head over ${MAX_HEAD} bytes`);
          return out;
        }
        const head = parseHead(this.#buf.subarray(0, end).toString('latin1'));
        this.#buf = this.#buf.subarray(end + 4);
        if (head.statusCode >= 100 && head.statusCode < 200) continue; // interim: the real head follows
        out.head = head;
        this.#state = bodyState(head);
        continue;
      }
      if (s.kind === 'length' || s.kind === 'chunk-data') {
        if (this.#buf.length === 0) return out;
        const n = Math.min(s.left, this.#buf.length);
        out.data.push(this.#buf.subarray(0, n));
        this.#buf = this.#buf.subarray(n);
        s.left -= n;
        if (s.left === 0) this.#state = s.kind === 'length' ? { kind: 'done' } : { kind: 'chunk-end' };
        continue;
      }
      if (s.kind === 'until-close') {
        if (this.#buf.length > 0) out.data.push(this.#buf);
        this.#buf = Buffer.alloc(0);
        return out;
      }
      // Line-based states: chunk sizes, the CRLF after a chunk, trailers.
      const eol = this.#buf.indexOf('\r\n');
      if (eol < 0) {
        if (this.#buf.length > MAX_HEAD) throw new Error('a chunk-size or trailer line that does not end');
        return out;
      }
      const line = this.#buf.subarray(0, eol).toString('latin1');
      this.#buf = this.#buf.subarray(eol + 2);
      if (s.kind === 'chunk-end') {
        if (line !== '') throw new Error('a chunk not followed by CRLF');
        this.#state = { kind: 'chunk-size' };
      } else if (s.kind === 'chunk-size') {
        const hex = line.split(';', 1)[0]!.trim();
        if (!/^[0-9a-fA-F]{1,8}$/.test(hex)) throw new Error(`a bad chunk size "${line}"`);
        const size = Number.parseInt(hex, 16);
        this.#state = size === 0 ? { kind: 'trailers' } : { kind: 'chunk-data', left: size };
      } else if (line === '') {
        this.#state = { kind: 'done' }; // the empty line after the trailers
      }
    }
  }

  /** The connection ended: throws unless the response was complete (or is framed by the end). */
  end(): void {
    if (this.#state.kind === 'until-close') this.#state = { kind: 'done' };
    if (this.#state.kind !== 'done') {
      throw new Error(
        this.#state.kind === 'head'
          ? 'the connection closed before a response'
          : 'the connection closed in the middle of the response body',
      );
    }
  }
}

function parseHead(text: string): Head {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(lines[0]!);
  if (!m) throw new Error(`not an HTTP/1.1 status line: "${lines[0]!.slice(0, 80)}"`);
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`a malformed header line: "${line.slice(0, 80)}"`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const prev = headers.get(name);
    headers.set(name, prev === undefined ? value : `${prev}, ${value}`);
  }
  return { statusCode: Number(m[1]), statusMessage: m[2] ?? '', headers };
}

function bodyState(head: Head): State {
  if (head.statusCode === 204 || head.statusCode === 304) return { kind: 'done' };
  const te = head.headers.get('transfer-encoding');
  if (te !== undefined) {
    if (te.toLowerCase() !== 'chunked') throw new Error(`an unsupported transfer coding "${te}"`);
    return { kind: 'chunk-size' };
  }
  const cl = head.headers.get('content-length');
  if (cl !== undefined) {
    if (!/^\d+$/.test(cl)) throw new Error(`a bad Content-Length "${cl}"`);
    const left = Number(cl);
    return left === 0 ? { kind: 'done' } : { kind: 'length', left };
  }
  return { kind: 'until-close' };
}

/**
 * Sends `req` on a new connection to the unix socket `socketPath`; resolves once the response head
 * is in. Rejects with the socket's error (a `connect` syscall when nothing answered) or an Error
 * naming a malformed response.
 */
export function request(socketPath: string, req: Http1Request): Promise<Http1Response> {
  const socket: Socket = process.getBuiltinModule('node:net').connect(socketPath);
  const parser = new ResponseParser();
  const queue: Buffer[] = [];
  let queued = 0;
  let failure: Error | undefined;
  let ended = false;
  let wake: (() => void) | undefined;
  // Settled by the first of: the response head, a failure (later ones are no-ops).
  const head = Promise.withResolvers<Head>();

  const notify = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const fail = (err: Error): void => {
    if (failure || ended) return;
    failure = err;
    socket.destroy();
    head.reject(err);
    notify();
  };

  socket.on('data', (chunk: Buffer) => {
    if (failure || ended) return;
    let part: ParsedPart;
    try {
      part = parser.push(chunk);
    } catch (err) {
      fail(err as Error);
      return;
    }
    if (part.head) head.resolve(part.head);
    for (const d of part.data) {
      queue.push(d);
      queued += d.length;
    }
    if (part.done) {
      ended = true;
      socket.destroy();
    } else if (queued > HIGH_WATER) socket.pause();
    notify();
  });
  socket.on('end', () => {
    if (failure || ended) return;
    try {
      parser.end();
      ended = true;
      notify();
    } catch (err) {
      fail(err as Error);
    }
  });
  socket.on('error', (err) => fail(err));
  socket.on('close', () => {
    if (!ended) fail(new Error('the connection closed before the end of the response'));
  });

  if (req.signal) {
    const { signal } = req;
    const onAbort = (): void => fail(req.abortError?.() ?? new Error('the request was aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('close', () => signal.removeEventListener('abort', onAbort));
  }

  const lines = [`${req.method} ${req.path} HTTP/1.1`, 'Host: kilnd', 'Connection: close'];
  for (const [k, v] of Object.entries(req.headers)) lines.push(`${k}: ${v}`);
  lines.push(`Content-Length: ${req.body.length}`, '', '');
  socket.write(lines.join('\r\n'), 'latin1');
  socket.write(req.body);

  async function* body(): AsyncGenerator<Buffer> {
    for (;;) {
      if (queue.length > 0) {
        const d = queue.shift()!;
        queued -= d.length;
        if (queued <= HIGH_WATER && socket.isPaused()) socket.resume();
        yield d;
        continue;
      }
      if (failure) throw failure;
      if (ended) return;
      await new Promise<void>((r) => {
        wake = r;
      });
    }
  }

  const response = (h: Head): Http1Response => ({
    statusCode: h.statusCode,
    statusMessage: h.statusMessage,
    headers: h.headers,
    body: body(),
    get complete() {
      return ended;
    },
    destroy(err?: Error) {
      fail(err ?? new Error('the request was aborted'));
    },
  });

  return head.promise.then(response);
}
