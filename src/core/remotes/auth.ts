/**
 * Registry authentication (distribution "token authentication" and Basic).
 *
 * Flow: a request is first sent with whatever authorization is cached for
 * the host and the scopes it needs (`repository:<path>:pull[,push]`). On 401
 * the transport hands the `WWW-Authenticate` challenge to `Authorizer.
 * onChallenge`: for `Bearer realm=…,service=…,scope=…` it gets a token from
 * the realm (GET with Basic credentials or anonymously; POST with
 * `grant_type=refresh_token` when the credential is an identity token),
 * for `Basic` it uses the credentials; then the request is retried once.
 * Tokens are cached per host and scope set until `expires_in` (default 60 s).
 *
 * Credentials come from a docker config file (`$DOCKER_CONFIG/config.json`,
 * else `~/.docker/config.json`): `credHelpers[host]`, then `credsStore`, via
 * the helper protocol (`docker-credential-<x> get`, server URL on stdin, JSON
 * `{Username, Secret}` on stdout), then `auths[host]` (`auth` = base64
 * "user:password", or `username`/`password`, or `identitytoken`).
 * Token requests go through the HttpClient the caller passes (the
 * registry transport's, so the realm gets the same per-host TLS files), else
 * the Authorizer's own. Limits: no OAuth2 password grant; the token realm
 * must be http(s).
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { errInvalidArgument, isErrno, KilnError } from '../errors.ts';
import { HttpClient, type HttpResponse } from './http.ts';

export interface Credentials {
  username?: string;
  password?: string;
  /** OAuth2 refresh token (docker `identitytoken`, or helper Username `<token>`). */
  identityToken?: string;
}

export type CredentialsFn = (host: string) => Promise<Credentials | undefined>;

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header value into its challenges (RFC 7235). */
export function parseWWWAuthenticate(header: string): Challenge[] {
  const out: Challenge[] = [];
  const re = /\s*(?:,\s*)*([A-Za-z0-9!#$%&'*+.^_`|~-]+)(?:\s+|$|(?=,))/y;
  const paramRe = /\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?/y;
  let pos = 0;
  while (pos < header.length) {
    re.lastIndex = pos;
    const m = re.exec(header);
    if (!m) break;
    pos = re.lastIndex;
    const challenge: Challenge = { scheme: m[1]!.toLowerCase(), params: {} };
    out.push(challenge);
    for (;;) {
      paramRe.lastIndex = pos;
      const p = paramRe.exec(header);
      if (!p) break;
      // A token followed by a space and another token starts the next challenge.
      challenge.params[p[1]!.toLowerCase()] =
        p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
      pos = paramRe.lastIndex;
    }
  }
  return out;
}

/** `repository:<path>:<actions>` scopes merged: one entry per resource, actions united and sorted. */
export function mergeScopes(scopes: Iterable<string>): string[] {
  const byResource = new Map<string, Set<string>>();
  for (const scope of scopes) {
    for (const s of scope.split(' ')) {
      if (!s) continue;
      const i = s.lastIndexOf(':');
      if (i < 0) continue;
      const resource = s.slice(0, i);
      const set = byResource.get(resource) ?? new Set<string>();
      for (const a of s.slice(i + 1).split(',')) if (a) set.add(a);
      byResource.set(resource, set);
    }
  }
  return [...byResource.entries()].map(([r, acts]) => `${r}:${[...acts].sort().join(',')}`).sort();
}

export function repositoryScope(path: string, push: boolean): string {
  return `repository:${path}:${push ? 'pull,push' : 'pull'}`;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

const DOCKER_HUB_KEYS = [
  'https://index.docker.io/v1/',
  'index.docker.io',
  'docker.io',
  'registry-1.docker.io',
];

function hostKey(key: string): string {
  return key.replace(/^[a-z]+:\/\//, '').replace(/\/.*$/, '');
}

/** Runs `docker-credential-<helper> get` for `serverURL`; undefined when it has no credentials. */
export async function runCredentialHelper(
  helper: string,
  serverURL: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Credentials | undefined> {
  const program = `docker-credential-${helper}`;
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>(
    (resolve, reject) => {
      const child = spawn(program, ['get'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (c: string) => {
        stdout += c;
      });
      child.stderr.setEncoding('utf8').on('data', (c: string) => {
        stderr += c;
      });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.on('error', () => {}); // the helper may exit without reading; 'close' reports it
      child.stdin.end(serverURL);
    },
  ).catch((err: unknown) => {
    throw new KilnError(
      isErrno(err, 'ENOENT') ? 'NotFound' : 'Internal',
      `run credential helper "${program}" for "${serverURL}": ${(err as Error).message}`,
      { cause: err },
    );
  });
  if (code !== 0) {
    const msg = (stdout + stderr).trim();
    if (/credentials not found/i.test(msg)) return undefined;
    throw new KilnError(
      'Unauthenticated',
      `credential helper "${program}" failed for "${serverURL}" (exit ${code}): ${msg}`,
    );
  }
  let parsed: { Username?: unknown; Secret?: unknown };
  try {
    parsed = JSON.parse(stdout) as typeof parsed;
  } catch (err) {
    throw errInvalidArgument(`credential helper "${program}" printed invalid JSON for "${serverURL}"`, err);
  }
  const username = typeof parsed.Username === 'string' ? parsed.Username : '';
  const secret = typeof parsed.Secret === 'string' ? parsed.Secret : '';
  if (username === '<token>') return { identityToken: secret };
  return { username, password: secret };
}

/**
 * Credentials lookup from a docker config file. `path` defaults to
 * `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`; a missing file
 * means no credentials. `host` is a registry host (`localhost:5000`,
 * `registry-1.docker.io`; docker.io's aliases map to its v1 key).
 */
export function dockerConfigCredentials(
  options: { path?: string; env?: NodeJS.ProcessEnv } = {},
): CredentialsFn {
  const env = options.env ?? process.env;
  const path =
    options.path ?? join(env.DOCKER_CONFIG ?? join(env.HOME ?? homedir(), '.docker'), 'config.json');
  let loaded: Promise<DockerConfigFile> | undefined;
  const load = async (): Promise<DockerConfigFile> => {
    try {
      return JSON.parse(await readFile(path, 'utf8')) as DockerConfigFile;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return {};
      throw errInvalidArgument(`read docker config "${path}": ${(err as Error).message}`, err);
    }
  };
  return async (host: string) => {
    loaded ??= load();
    const cfg = await loaded;
    const isHub = DOCKER_HUB_KEYS.includes(host);
    const serverURL = isHub ? DOCKER_HUB_KEYS[0]! : host;
    const helper =
      cfg.credHelpers?.[host] ??
      (isHub ? DOCKER_HUB_KEYS.map((k) => cfg.credHelpers?.[k]).find(Boolean) : undefined);
    if (helper) return runCredentialHelper(helper, serverURL, env);
    if (cfg.credsStore) {
      const c = await runCredentialHelper(cfg.credsStore, serverURL, env);
      if (c) return c;
    }
    for (const [key, entry] of Object.entries(cfg.auths ?? {})) {
      const k = hostKey(key);
      if (k !== host && !(isHub && DOCKER_HUB_KEYS.map(hostKey).includes(k))) continue;
      if (entry.identitytoken) return { identityToken: entry.identitytoken };
      if (entry.auth) {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const i = decoded.indexOf(':');
        if (i < 0)
          throw errInvalidArgument(
            `docker config "${path}": auth for "${key}" is not base64 "user:password"`,
          );
        return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
      }
      if (entry.username !== undefined) return { username: entry.username, password: entry.password ?? '' };
    }
    return undefined;
  };
}

interface CachedToken {
  header: string;
  expiresAt: number;
}

export interface AuthorizerOptions {
  credentials?: CredentialsFn;
  /** Client for token requests when a call does not pass one (default: a new one, docker's certs.d). */
  http?: HttpClient;
  /** OAuth client id sent with refresh-token requests. */
  clientId?: string;
}

/** Per-process cache of challenges and tokens; one instance can serve many registries. */
export class Authorizer {
  readonly #credentials: CredentialsFn;
  #http: HttpClient | undefined;
  readonly #clientId: string;
  readonly #challenges = new Map<string, Challenge>();
  readonly #tokens = new Map<string, CachedToken>();
  /** Token requests in flight, so concurrent requests for one scope set share one. */
  readonly #inflight = new Map<string, Promise<string | undefined>>();
  readonly #basic = new Map<string, string>();

  constructor(options: AuthorizerOptions = {}) {
    this.#credentials = options.credentials ?? (async () => undefined);
    this.#http = options.http;
    this.#clientId = options.clientId ?? 'kiln';
  }

  /**
   * The Authorization header value to send to `host` for `scopes`, if any is
   * known. `http` is the client for a token request, if one is needed.
   */
  async authorization(host: string, scopes: string[], http?: HttpClient): Promise<string | undefined> {
    const ch = this.#challenges.get(host);
    if (!ch) return undefined;
    if (ch.scheme === 'basic') return this.#basic.get(host);
    const key = `${host} ${mergeScopes(scopes).join(' ')}`;
    const cached = this.#tokens.get(key);
    if (cached && cached.expiresAt > Date.now()) return cached.header;
    // Known Bearer host, new scope set: get a token up front rather than after a 401.
    return this.#token(host, ch, scopes, http);
  }

  /**
   * Handles a 401's `WWW-Authenticate` value for a request that carried
   * `sent` (or no Authorization). Returns true when other authorization is
   * now available and the request is worth retrying.
   */
  async onChallenge(
    host: string,
    header: string | null,
    scopes: string[],
    sent?: string,
    http?: HttpClient,
  ): Promise<boolean> {
    const challenges = parseWWWAuthenticate(header ?? '');
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    const basic = challenges.find((c) => c.scheme === 'basic');
    if (bearer) {
      if (!bearer.params.realm) return false;
      this.#challenges.set(host, bearer);
      const key = `${host} ${mergeScopes(scopes).join(' ')}`;
      const cached = this.#tokens.get(key);
      // A concurrent request may have got a token meanwhile: retry with it.
      if (cached && cached.header !== sent && cached.expiresAt > Date.now()) return true;
      this.#tokens.delete(key); // the token sent was refused (or expired)
      const allScopes = bearer.params.scope ? [...scopes, bearer.params.scope] : scopes;
      const token = await this.#token(host, bearer, allScopes, http);
      if (token === undefined || token === sent) return false;
      const fresh = this.#tokens.get(`${host} ${mergeScopes(allScopes).join(' ')}`);
      if (fresh) this.#tokens.set(key, fresh); // found again by authorization(host, scopes)
      return true;
    }
    if (basic) {
      const creds = await this.#credentials(host);
      if (!creds || creds.username === undefined) return false;
      const value = `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64')}`;
      this.#challenges.set(host, basic);
      this.#basic.set(host, value);
      return value !== sent; // the same credentials were already refused
    }
    return false;
  }

  #token(host: string, ch: Challenge, scopes: string[], http?: HttpClient): Promise<string | undefined> {
    const key = `${host} ${mergeScopes(scopes).join(' ')}`;
    let p = this.#inflight.get(key);
    if (!p) {
      p = this.#fetchToken(host, ch, scopes, http).finally(() => this.#inflight.delete(key));
      this.#inflight.set(key, p);
    }
    return p;
  }

  async #fetchToken(
    host: string,
    ch: Challenge,
    scopes: string[],
    httpIn?: HttpClient,
  ): Promise<string | undefined> {
    const merged = mergeScopes(scopes);
    const realm = ch.params.realm!;
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw errInvalidArgument(`registry "${host}" sent an invalid token realm "${realm}"`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw errInvalidArgument(`registry "${host}" sent a token realm "${realm}" that is not http(s)`);
    }
    const creds = await this.#credentials(host);
    if (!httpIn) this.#http ??= new HttpClient();
    const http = httpIn ?? this.#http!;
    let res: HttpResponse;
    try {
      res = await this.#tokenRequest(http, url, merged, ch, creds);
    } catch (err) {
      throw new KilnError(
        'Unavailable',
        `get token for "${host}" from "${url.origin}${url.pathname}": ${(err as Error).message}`,
        { cause: err },
      );
    }
    const text = await res.text(1 << 20).catch(() => '');
    if (res.status === 401 || res.status === 403) {
      throw new KilnError(
        res.status === 401 ? 'Unauthenticated' : 'PermissionDenied',
        `get token for "${host}" (scope "${merged.join(' ')}") from "${url.origin}${url.pathname}": ` +
          `HTTP ${res.status}: credentials ${creds ? 'refused' : 'required'}`,
      );
    }
    if (res.status < 200 || res.status > 299) {
      throw new KilnError(
        'Unavailable',
        `get token for "${host}" from "${url.origin}${url.pathname}": HTTP ${res.status}: ${text.slice(0, 200)}`,
      );
    }
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse(text) as typeof body;
    } catch (err) {
      throw errInvalidArgument(`token server "${url.origin}${url.pathname}" returned invalid JSON`, err);
    }
    const token = typeof body.token === 'string' ? body.token : body.access_token;
    if (typeof token !== 'string' || !token) {
      throw errInvalidArgument(`token server "${url.origin}${url.pathname}" returned no token`);
    }
    const ttl = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60;
    const header = `Bearer ${token}`;
    // Renew 5 s early so a token does not expire in flight.
    this.#tokens.set(`${host} ${merged.join(' ')}`, { header, expiresAt: Date.now() + (ttl - 5) * 1000 });
    return header;
  }

  /** GET with Basic credentials (or none), or POST of the refresh-token grant for an identity token. */
  #tokenRequest(
    http: HttpClient,
    url: URL,
    merged: string[],
    ch: Challenge,
    creds: Credentials | undefined,
  ): Promise<HttpResponse> {
    if (creds?.identityToken) {
      const form = new URLSearchParams({
        grant_type: 'refresh_token',
        refresh_token: creds.identityToken,
        client_id: this.#clientId,
      });
      if (ch.params.service) form.set('service', ch.params.service);
      if (merged.length) form.set('scope', merged.join(' '));
      return http.send(url, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded;charset=UTF-8' },
        body: Buffer.from(form.toString()),
      });
    }
    if (ch.params.service) url.searchParams.set('service', ch.params.service);
    for (const s of merged) url.searchParams.append('scope', s);
    const headers: Record<string, string> = {};
    if (creds?.username !== undefined) {
      headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64')}`;
    }
    return http.send(url, { method: 'GET', headers });
  }
}
