/**
 * HTTP transport to one registry repository, on ./http.ts (node:http and
 * node:https request streams with keep-alive agents per origin).
 *
 * - Scheme: HTTPS, except plain HTTP for loopback hosts (`localhost`,
 *   127.0.0.0/8, `[::1]`) and hosts listed in `insecure` (host[:port]).
 *   docker.io is served by `registry-1.docker.io`.
 * - TLS: Node's default roots plus, per host, the CA files and client
 *   certificate of a certs.d folder (`certsDirs`, default docker's
 *   `/etc/docker/certs.d`; see ./certs.ts). A TLS failure is not retried and
 *   its message says what to put where.
 * - Auth: each request carries the Authorization the Authorizer has for the
 *   request's scopes; a 401 is given to the Authorizer once, then retried.
 *   Token requests go through the same HTTP client (same TLS files).
 * - Redirects are followed; the registry's Authorization is not sent to
 *   another origin (blob storage).
 * - Retries: network errors, 429 and 5xx are retried with exponential
 *   backoff (honouring a small `Retry-After`), at most `retries` times, and
 *   only for requests whose body can be sent again (none or bytes).
 * - Errors: RegistryError (a KilnError) naming the action, the reference,
 *   the method and URL path and the HTTP status, with the registry's own
 *   `errors[].code/message`; 401 Unauthenticated, 403 PermissionDenied,
 *   404 NotFound, 429 ResourceExhausted, 5xx, network and TLS Unavailable.
 * One HttpClient (connection pool) is shared by the transports of a
 * Resolver; pass `http` in RemoteOptions to share it wider.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { type ErrorCode, KilnError } from '../errors.ts';
import { DEFAULT_DOMAIN, type Reference } from '../images/reference.ts';
import { Authorizer, repositoryScope } from './auth.ts';
import { HttpClient, HttpNetworkError, type HttpResponse } from './http.ts';

export interface RemoteOptions {
  /** Hosts (host[:port]) reached over plain HTTP besides loopback ones. */
  insecure?: string[];
  authorizer?: Authorizer;
  /** Retries after the first attempt for network errors, 429 and 5xx (default 4). */
  retries?: number;
  /** First backoff delay in ms, doubled each retry (default 200). */
  backoffMs?: number;
  /** Longest single wait in ms, including Retry-After (default 5000). */
  maxBackoffMs?: number;
  /** Resumptions of one broken blob download (default 5). */
  maxResumes?: number;
  userAgent?: string;
  /**
   * certs.d-style directories with per-registry CA files and client
   * certificates (default: `/etc/docker/certs.d`); ignored when `http` is given.
   */
  certsDirs?: string[];
  /** HTTP client (connection pool and TLS files) to use; default one per Resolver. */
  http?: HttpClient;
}

export class RegistryError extends KilnError {
  readonly status: number | undefined;
  readonly reference: string;
  readonly method: string;
  readonly urlPath: string;

  constructor(
    code: ErrorCode,
    message: string,
    fields: { status?: number; reference: string; method: string; urlPath: string },
    cause?: unknown,
  ) {
    super(code, message, { cause });
    this.name = 'RegistryError';
    this.status = fields.status;
    this.reference = fields.reference;
    this.method = fields.method;
    this.urlPath = fields.urlPath;
  }
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/:[0-9]+$/, '').replace(/^\[(.*)\]$/, '$1');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** `scheme://host` of the registry API for a reference's domain. */
export function registryBaseURL(domain: string, insecure: readonly string[] = []): string {
  const host = domain === DEFAULT_DOMAIN ? 'registry-1.docker.io' : domain;
  const plain = isLoopbackHost(host) || insecure.includes(host) || insecure.includes(domain);
  return `${plain ? 'http' : 'https'}://${host}`;
}

export interface RegistryRequest {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Path below /v2/<name>/ (e.g. `manifests/latest`), or an absolute URL (upload locations). */
  path: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Uint8Array;
  /** Statuses that are success; others become RegistryError. */
  expect: number[];
  /** Words for errors, e.g. `fetch blob sha256:…`. */
  action: string;
  /** Extra scopes needed (e.g. pull on the source repository of a mount). */
  extraScopes?: string[];
  signal?: AbortSignal;
}

const STATUS_TEXT: Record<number, [ErrorCode, string]> = {
  401: ['Unauthenticated', 'authentication required or credentials refused'],
  403: ['PermissionDenied', 'access denied by the registry'],
  404: ['NotFound', 'not found'],
  429: ['ResourceExhausted', 'too many requests: the registry is rate-limiting'],
};

function isRetryableStatus(status: number): boolean {
  return status === 429 || status === 408 || (status >= 500 && status !== 501 && status !== 505);
}

/** Registry error body `{"errors":[{"code","message"}]}` as "CODE: message; …", if any. */
function registryErrorDetail(text: string): string {
  try {
    const body = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] };
    if (Array.isArray(body.errors) && body.errors.length) {
      return body.errors.map((e) => `${String(e.code ?? '')}: ${String(e.message ?? '')}`).join('; ');
    }
  } catch {
    // not JSON: use the text
  }
  return text.trim().slice(0, 200);
}

export class RegistryTransport {
  readonly ref: Reference;
  readonly baseURL: string;
  readonly host: string;
  readonly push: boolean;
  readonly options: Required<
    Omit<RemoteOptions, 'insecure' | 'authorizer' | 'userAgent' | 'certsDirs' | 'http'>
  >;
  readonly http: HttpClient;
  readonly #authorizer: Authorizer;
  readonly #userAgent: string;

  /** `http` (else `options.http`, else a new client for `options.certsDirs`) carries the requests. */
  constructor(ref: Reference, push: boolean, options: RemoteOptions = {}, http?: HttpClient) {
    this.ref = ref;
    this.push = push;
    this.baseURL = registryBaseURL(ref.domain, options.insecure);
    this.host = new URL(this.baseURL).host;
    this.#authorizer = options.authorizer ?? new Authorizer();
    this.http =
      http ?? options.http ?? new HttpClient(options.certsDirs ? { certsDirs: options.certsDirs } : {});
    this.#userAgent = options.userAgent ?? 'kiln/0.1';
    this.options = {
      retries: options.retries ?? 4,
      backoffMs: options.backoffMs ?? 200,
      maxBackoffMs: options.maxBackoffMs ?? 5000,
      maxResumes: options.maxResumes ?? 5,
    };
  }

  /** Absolute URL of `path` below /v2/<name>/, or of an upload location. */
  url(path: string, query?: Record<string, string>): URL {
    const u = /^https?:\/\//.test(path)
      ? new URL(path)
      : path.startsWith('/')
        ? new URL(path, this.baseURL)
        : new URL(`/v2/${this.ref.path}/${path}`, this.baseURL);
    for (const [k, v] of Object.entries(query ?? {})) u.searchParams.set(k, v);
    return u;
  }

  #error(
    req: RegistryRequest,
    url: URL,
    status: number | undefined,
    detail: string,
    cause?: unknown,
  ): RegistryError {
    const [code, what] =
      status === undefined
        ? ([
            'Unavailable',
            cause instanceof HttpNetworkError && cause.tls ? 'TLS error' : 'network error',
          ] as [ErrorCode, string])
        : (STATUS_TEXT[status] ??
          (status >= 500
            ? (['Unavailable', 'registry server error'] as [ErrorCode, string])
            : (['Internal', 'unexpected response'] as [ErrorCode, string])));
    const where = `${req.method} ${url.pathname}${status !== undefined ? `: HTTP ${status}` : ''}`;
    return new RegistryError(
      code,
      `${req.action} for "${this.ref.full}": ${what} (${where})${detail ? `: ${detail}` : ''}`,
      { status, reference: this.ref.full, method: req.method, urlPath: url.pathname },
      cause,
    );
  }

  #delay(attempt: number, retryAfter: string | null): number {
    let ms = this.options.backoffMs * 2 ** attempt;
    if (retryAfter && /^[0-9]+$/.test(retryAfter)) ms = Math.max(ms, Number(retryAfter) * 1000);
    return Math.min(ms, this.options.maxBackoffMs) * (0.8 + Math.random() * 0.4);
  }

  /** Sends a request with auth and retries; returns the response (body unread) on an expected status. */
  async request(req: RegistryRequest): Promise<HttpResponse> {
    const url = this.url(req.path, req.query);
    const scopes = [repositoryScope(this.ref.path, this.push), ...(req.extraScopes ?? [])];
    let authRetried = false;
    for (let attempt = 0; ; attempt++) {
      req.signal?.throwIfAborted();
      const headers: Record<string, string> = { 'user-agent': this.#userAgent, ...req.headers };
      const auth = await this.#authorizer.authorization(this.host, scopes, this.http);
      if (auth) headers.authorization = auth;
      let res: HttpResponse;
      try {
        res = await this.http.send(url, {
          method: req.method,
          headers,
          ...(req.body ? { body: req.body } : {}),
          ...(req.signal ? { signal: req.signal } : {}),
        });
      } catch (err) {
        if (req.signal?.aborted) throw err;
        if (err instanceof KilnError) throw err; // e.g. unreadable TLS files: not the network
        if (err instanceof HttpNetworkError && err.tls)
          throw this.#error(req, url, undefined, err.message, err);
        if (attempt < this.options.retries) {
          await sleep(this.#delay(attempt, null), undefined, { signal: req.signal });
          continue;
        }
        const msg = err instanceof Error ? err.message : String(err);
        throw this.#error(req, url, undefined, `${msg}; gave up after ${attempt + 1} attempts`, err);
      }
      if (req.expect.includes(res.status)) return res;
      // Read to the end, so that a retry can reuse the connection.
      const text =
        req.method === 'HEAD' ? await res.drain().then(() => '') : await res.text().catch(() => '');
      if (res.status === 401 && !authRetried) {
        authRetried = true;
        if (
          await this.#authorizer.onChallenge(
            this.host,
            res.headers.get('www-authenticate'),
            scopes,
            auth,
            this.http,
          )
        ) {
          attempt--; // an auth round trip is not a failure
          continue;
        }
      }
      if (isRetryableStatus(res.status) && attempt < this.options.retries) {
        await sleep(this.#delay(attempt, res.headers.get('retry-after')), undefined, { signal: req.signal });
        continue;
      }
      let detail = registryErrorDetail(text);
      if (isRetryableStatus(res.status))
        detail += `${detail ? '; ' : ''}gave up after ${attempt + 1} attempts`;
      throw this.#error(req, url, res.status, detail);
    }
  }
}
