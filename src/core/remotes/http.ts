/**
 * HTTP/1.1 client for registries, on `node:http`/`node:https` request
 * streams (not `fetch`: a response body is the socket's own chunks, with no
 * copy per chunk).
 *
 * - Connections: one keep-alive Agent per origin (`scheme://host:port`),
 *   at most `maxSockets` sockets each; idle sockets close after
 *   `idleTimeoutMs` and never keep the process alive. A GET or HEAD whose
 *   reused keep-alive socket turns out closed is sent once more at once.
 * - TLS: per host from the certs directories (./certs.ts): extra CA roots
 *   (`*.crt`, added to Node's defaults) and a client certificate
 *   (`*.cert` + `*.key`), used for that host only. Without a folder for the
 *   host, Node's defaults apply (including NODE_EXTRA_CA_CERTS).
 * - Redirects (301, 302, 303, 307, 308; registries send blob GETs to
 *   storage): followed up to `maxRedirects` times; Authorization is dropped
 *   when the origin changes; 303 (and 301/302 after POST) become a GET
 *   without body. Other headers (Range) are kept.
 * - Failures before a response reject with HttpNetworkError, which names the
 *   host, tells TLS failures apart (`tls`: not worth retrying) and says what
 *   to do about an untrusted certificate, a missing client certificate or a
 *   server that speaks plain HTTP. A failure while a body streams is an
 *   'error' on `response.body` (e.g. ECONNRESET "aborted").
 * - `signal` aborts the request and its body at any time.
 * - A response's body must be read or `discard()`ed (HEAD, 204 and
 *   Content-Length 0 responses are discarded here), so that its socket can
 *   serve the next request.
 */
import type http from 'node:http';
import type https from 'node:https';
import { createRequire } from 'node:module';
import { DEFAULT_CERTS_DIRS, caBundle, type HostTLS, loadHostTLS } from './certs.ts';

// Loaded on first use with require, not by an ESM import: the ESM facade of node:http reads every
// export, including lazy ones that load undici, and node:https loads tls (~30 ms of start-up for
// every command, registry or not).
const require = createRequire(import.meta.url);
let httpLoaded: typeof http | undefined;
let httpsLoaded: typeof https | undefined;
const httpMod = (): typeof http => (httpLoaded ??= require('node:http') as typeof http);
const httpsMod = (): typeof https => (httpsLoaded ??= require('node:https') as typeof https);

export interface HttpClientOptions {
  /** certs.d-style directories searched per host (default: docker's `/etc/docker/certs.d`). */
  certsDirs?: readonly string[];
  /** Bytes a response buffers before its socket is paused (default 1 MiB). */
  highWaterMark?: number;
  /** Sockets per origin (default 16). */
  maxSockets?: number;
  /** Idle keep-alive sockets close after this many ms (default 30 s). */
  idleTimeoutMs?: number;
  /** Redirects followed per request (default 10). */
  maxRedirects?: number;
}

export interface HttpRequest {
  method: string;
  /** Header names in lower case. */
  headers: Record<string, string>;
  body?: Uint8Array;
  signal?: AbortSignal;
}

/** Read-only response headers, looked up case-insensitively. */
export class HeaderMap {
  readonly #raw: http.IncomingHttpHeaders;

  constructor(raw: http.IncomingHttpHeaders) {
    this.#raw = raw;
  }

  get(name: string): string | null {
    const v = this.#raw[name.toLowerCase()];
    if (v === undefined) return null;
    return Array.isArray(v) ? v.join(', ') : v;
  }
}

export class HttpResponse {
  readonly status: number;
  /** The URL that answered (after redirects). */
  readonly url: URL;
  readonly headers: HeaderMap;
  readonly body: http.IncomingMessage;
  /** The first error the body stream reported, if any. */
  error: Error | undefined;

  constructor(res: http.IncomingMessage, url: URL, method: string) {
    this.status = res.statusCode ?? 0;
    this.url = url;
    this.headers = new HeaderMap(res.headers);
    this.body = res;
    // Always listened to, so that a body error is never an uncaught exception.
    res.on('error', (err) => {
      this.error ??= err;
    });
    if (
      method === 'HEAD' ||
      this.status === 204 ||
      this.status === 304 ||
      res.headers['content-length'] === '0'
    ) {
      res.resume();
    }
  }

  /** Content-Length, when the server sent a valid one. */
  get contentLength(): number | undefined {
    const v = this.headers.get('content-length');
    return v !== null && /^[0-9]+$/.test(v) ? Number(v) : undefined;
  }

  /** Drops the body: read to the end when small (the socket is reused), else the connection is closed. */
  discard(): void {
    const n = this.contentLength;
    if (this.body.complete || (n !== undefined && n <= 64 << 10)) this.body.resume();
    else this.body.destroy();
  }

  /** Reads the body to its end, dropping it (for small bodies: the socket is then free for the next request). */
  async drain(): Promise<void> {
    if (this.body.readableEnded || this.body.destroyed) return;
    const ended = new Promise<void>((resolve) => {
      this.body.once('end', resolve);
      this.body.once('close', resolve);
    });
    this.body.resume();
    await ended;
  }

  /** The body, at most `max` bytes of it (the rest is discarded); rejects on a broken body. */
  async bytes(max = 64 << 20): Promise<Buffer> {
    const parts: Buffer[] = [];
    let n = 0;
    for await (const c of this.body as AsyncIterable<Buffer>) {
      const take = Math.min(c.byteLength, max - n);
      if (take > 0) parts.push(take === c.byteLength ? c : c.subarray(0, take));
      n += take;
      if (n >= max) {
        this.discard();
        break;
      }
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** The body as UTF-8, at most `max` bytes of it. */
  async text(max = 64 << 10): Promise<string> {
    return (await this.bytes(max)).toString('utf8');
  }
}

/** A request that failed before a response arrived (connection, TLS, protocol). */
export class HttpNetworkError extends Error {
  readonly host: string;
  /** True for TLS handshake and certificate failures, which retrying does not cure. */
  readonly tls: boolean;
  readonly code: string | undefined;

  constructor(
    message: string,
    fields: { host: string; tls: boolean; code: string | undefined },
    cause: unknown,
  ) {
    super(message, { cause });
    this.name = 'HttpNetworkError';
    this.host = fields.host;
    this.tls = fields.tls;
    this.code = fields.code;
  }
}

const UNTRUSTED = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);
/** Alerts a server sends when it wants (another) client certificate, e.g. `ERR_SSL_SSL/TLS_ALERT_BAD_CERTIFICATE`. */
const CLIENT_CERT =
  /^ERR_SSL_.*ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|HANDSHAKE_FAILURE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|DECRYPT_ERROR|ACCESS_DENIED)$/;
const PLAIN_HTTP = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'EPROTO']);

function isTLSCode(code: string | undefined): boolean {
  return (
    code !== undefined &&
    (UNTRUSTED.has(code) ||
      CLIENT_CERT.test(code) ||
      PLAIN_HTTP.has(code) ||
      code.startsWith('ERR_SSL_') ||
      code.startsWith('ERR_TLS_') ||
      code.startsWith('CERT_') ||
      code === 'HOSTNAME_MISMATCH')
  );
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

export class HttpClient {
  readonly certsDirs: readonly string[];
  readonly #options: Required<Omit<HttpClientOptions, 'certsDirs'>>;
  readonly #agents = new Map<string, Promise<{ agent: http.Agent; tls: HostTLS | undefined }>>();

  constructor(options: HttpClientOptions = {}) {
    this.certsDirs = options.certsDirs ?? DEFAULT_CERTS_DIRS;
    this.#options = {
      highWaterMark: options.highWaterMark ?? 1 << 20,
      maxSockets: options.maxSockets ?? 16,
      idleTimeoutMs: options.idleTimeoutMs ?? 30_000,
      maxRedirects: options.maxRedirects ?? 10,
    };
  }

  /** The agent (and TLS files) for `url`'s origin, made on first use. */
  #agent(url: URL): Promise<{ agent: http.Agent; tls: HostTLS | undefined }> {
    const key = `${url.protocol}//${url.host}`;
    let p = this.#agents.get(key);
    if (!p) {
      // highWaterMark reaches net.connect(), and a response's buffer is its socket's readable one.
      const common: http.AgentOptions & { highWaterMark: number } = {
        keepAlive: true,
        maxSockets: this.#options.maxSockets,
        timeout: this.#options.idleTimeoutMs,
        scheduling: 'lifo',
        highWaterMark: this.#options.highWaterMark,
      };
      p =
        url.protocol === 'https:'
          ? loadHostTLS(url.host, this.certsDirs).then((tls) => ({
              tls,
              agent: new (httpsMod().Agent)({
                ...common,
                ...(tls && tls.ca.length > 0 ? { ca: caBundle(tls.ca) } : {}),
                ...(tls?.client ? { cert: tls.client.cert, key: tls.client.key } : {}),
              }),
            }))
          : Promise.resolve({ tls: undefined, agent: new (httpMod().Agent)(common) });
      p.catch(() => this.#agents.delete(key)); // a bad certs folder is read again next time
      this.#agents.set(key, p);
    }
    return p;
  }

  /** Sends a request, following redirects (see the module comment). */
  async send(url: URL, req: HttpRequest): Promise<HttpResponse> {
    let current = url;
    let method = req.method;
    let body = req.body;
    const headers = { ...req.headers };
    for (let hop = 0; ; hop++) {
      const res = await this.#sendOnce(current, method, headers, body, req.signal, hop > 0);
      const location = res.headers.get('location');
      if (!REDIRECTS.has(res.status) || location === null) return res;
      res.discard();
      if (hop >= this.#options.maxRedirects) {
        throw new HttpNetworkError(
          `${method} ${current.origin}${current.pathname}: more than ${this.#options.maxRedirects} redirects`,
          { host: current.host, tls: false, code: undefined },
          undefined,
        );
      }
      let next: URL;
      try {
        next = new URL(location, current);
      } catch (err) {
        throw new HttpNetworkError(
          `${method} ${current.origin}${current.pathname}: invalid redirect location "${location}"`,
          { host: current.host, tls: false, code: undefined },
          err,
        );
      }
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new HttpNetworkError(
          `${method} ${current.origin}${current.pathname}: redirect to unsupported URL "${location}"`,
          { host: current.host, tls: false, code: undefined },
          undefined,
        );
      }
      // The registry's credentials are for the registry: never sent to storage elsewhere.
      if (next.origin !== current.origin) delete headers.authorization;
      if (
        (res.status === 303 && method !== 'HEAD') ||
        ((res.status === 301 || res.status === 302) && method === 'POST')
      ) {
        method = 'GET';
        body = undefined;
        delete headers['content-type'];
        delete headers['content-length'];
      }
      current = next;
    }
  }

  async #sendOnce(
    url: URL,
    method: string,
    headers: Record<string, string>,
    body: Uint8Array | undefined,
    signal: AbortSignal | undefined,
    redirected: boolean,
  ): Promise<HttpResponse> {
    const { agent } = await this.#agent(url);
    const mod = url.protocol === 'https:' ? httpsMod() : httpMod();
    const h = body !== undefined ? { ...headers, 'content-length': String(body.byteLength) } : headers;
    for (let attempt = 0; ; attempt++) {
      signal?.throwIfAborted();
      const sock = { reused: false };
      try {
        return await new Promise<HttpResponse>((resolve, reject) => {
          const r = mod.request(
            url,
            {
              method,
              headers: h,
              agent,
              ...(signal ? { signal } : {}),
            },
            (res) => resolve(new HttpResponse(res, url, method)),
          );
          r.on('error', reject);
          r.on('socket', () => {
            sock.reused = r.reusedSocket;
          });
          r.end(body);
        });
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        // A keep-alive socket the server had closed: not the server's fault, send again at once.
        if (sock.reused && attempt === 0 && (method === 'GET' || method === 'HEAD')) continue;
        throw this.#networkError(err, url, redirected);
      }
    }
  }

  #networkError(err: unknown, url: URL, redirected: boolean): HttpNetworkError {
    const code = (err as { code?: unknown }).code;
    const c = typeof code === 'string' ? code : undefined;
    const msg = err instanceof Error ? err.message : String(err);
    const host = url.host;
    if (!(url.protocol === 'https:' && isTLSCode(c))) {
      const where = redirected ? `redirected to ${url.origin}${url.pathname}: ` : '';
      return new HttpNetworkError(`${where}${msg}`, { host, tls: false, code: c }, err);
    }
    const folder = `${this.certsDirs[0] ?? DEFAULT_CERTS_DIRS[0]}/${host}/`;
    let hint: string;
    if (c && UNTRUSTED.has(c)) {
      hint = `the certificate of "${host}" is not signed by a trusted CA; put the CA certificate in "${folder}ca.crt"`;
    } else if (c && CLIENT_CERT.test(c)) {
      hint = `"${host}" refused the TLS handshake, probably because it requires a client certificate; put one in "${folder}client.cert" with its key in "${folder}client.key"`;
    } else if (c && PLAIN_HTTP.has(c)) {
      hint = `"${host}" does not speak TLS; if it is a plain HTTP registry, mark it insecure`;
    } else if (c === 'ERR_TLS_CERT_ALTNAME_INVALID' || c === 'HOSTNAME_MISMATCH') {
      hint = `the certificate of "${host}" is not valid for that name`;
    } else {
      hint = `TLS with "${host}" failed`;
    }
    // OpenSSL's own message is long ("…:error:0A000412:SSL routines:…"): its reason is enough.
    const reason = (err as { reason?: unknown }).reason;
    const routine = /SSL routines:[^:]*:([^:]+)/.exec(msg)?.[1];
    const why =
      typeof reason === 'string' && reason
        ? reason
        : (routine ?? msg.split('\n')[0]!.replace(/; if the root CA is installed locally.*$/, ''));
    return new HttpNetworkError(`${hint} (${c}: ${why})`, { host, tls: true, code: c }, err);
  }

  /** Closes every socket (idle ones close by themselves after `idleTimeoutMs`). */
  async close(): Promise<void> {
    const agents = [...this.#agents.values()];
    this.#agents.clear();
    for (const p of agents) (await p.catch(() => undefined))?.agent.destroy();
  }
}
