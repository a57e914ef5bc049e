/**
 * Source states: trees that come from outside the graph (images, the
 * client's local directories, git repositories, HTTP files).
 *
 * Each call makes a SourceOp with an identifier and string attributes; the
 * identifier schemes and the attribute keys (`ATTR`) are the contract with
 * the source implementations in ops/. Only image sources carry a platform
 * (an image index resolves per platform); local, git and http sources are
 * the same tree on every platform, so their digests do not depend on it.
 * List-valued attributes (include/exclude patterns) are JSON arrays kept in
 * the caller's order (pattern order can matter, e.g. `!` exceptions).
 */
import { create } from '@bufbuild/protobuf';
import { parseDigest } from '../core/digest.ts';
import { errInvalidArgument } from '../core/errors.ts';
import { parseReference } from '../core/images/reference.ts';
import type { ContainerConfig, Platform } from '../core/images/types.ts';
import { SourceOpSchema } from '../gen/kiln/llb/v1/llb_pb.ts';
import { pbPlatform, toPlatform } from './platform.ts';
import { newState, type State } from './state.ts';
import {
  type MarshalContext,
  type OpBody,
  type OpOptions,
  type Output,
  type Vertex,
  type VertexMetadata,
  vertexMetadata,
} from './vertex.ts';

/** Source attribute keys understood by the source ops. */
export const ATTR = {
  /** image: "pull" (always ask the registry) or "local" (only the local store); absent: local first. */
  imageResolveMode: 'image.resolvemode',
  /** local: JSON array of patterns; only matching paths are sent. */
  localInclude: 'local.include',
  /** local: JSON array of patterns not to send. */
  localExclude: 'local.exclude',
  /** local: JSON array of paths (and their parents) to send, resolving symlinks. */
  localFollowPaths: 'local.followpaths',
  /** local: a key under which transfers of this directory share cached state. */
  localSharedKeyHint: 'local.sharedkeyhint',
  /** git: the URL to fetch from, as given (may hold credentials or an ssh form). */
  gitFullUrl: 'git.fullurl',
  /** git: "true" keeps the .git directory in the result. */
  gitKeepGitDir: 'git.keepgitdir',
  /** git: only this directory of the repository becomes the result. */
  gitSubdir: 'git.subdir',
  /** http: the expected digest of the downloaded file. */
  httpChecksum: 'http.checksum',
  /** http: the file's name in the result (default: from the URL). */
  httpFilename: 'http.filename',
  /** http: the file's permission bits, as an octal string ("0644"). */
  httpPerm: 'http.perm',
} as const;

/** A source op; `platform: true` asks for the marshal platform when none is set. */
class SourceVertex implements Vertex {
  readonly inputs: readonly Output[] = [];
  readonly metadata: VertexMetadata;
  readonly #identifier: string;
  readonly #attrs: Readonly<Record<string, string>>;
  readonly #platform: Platform | boolean;

  constructor(
    identifier: string,
    attrs: Record<string, string>,
    platform: Platform | boolean,
    md: VertexMetadata,
  ) {
    this.#identifier = identifier;
    this.#attrs = attrs;
    this.#platform = platform;
    this.metadata = md;
  }

  toOp(ctx: MarshalContext): OpBody {
    const op = create(SourceOpSchema, { identifier: this.#identifier, attrs: { ...this.#attrs } });
    const p = this.#platform === true ? ctx.platform : this.#platform === false ? undefined : this.#platform;
    return { op: { case: 'source', value: op }, platform: p && pbPlatform(p) };
  }
}

export interface ImageOptions extends OpOptions {
  /** Which platform's image to use (also the state's platform for later execs). */
  platform?: Platform | string;
  /** "pull" always asks the registry; "local" never does; default: local first. */
  resolveMode?: 'default' | 'pull' | 'local';
  /**
   * The image's config, when the caller has resolved it: its Env, WorkingDir
   * and User become the state's settings (as a Dockerfile FROM does).
   */
  config?: Pick<ContainerConfig, 'Env' | 'WorkingDir' | 'User'>;
}

/**
 * An image from a registry or the local image store. The reference is
 * normalized (`busybox` → `docker.io/library/busybox:latest`).
 *
 * @example
 * ```ts
 * const base = image('busybox:1.36', { platform: 'linux/arm64' });
 * const pinned = image('alpine@sha256:…');
 * ```
 */
export function image(ref: string, opts: ImageOptions = {}): State {
  const parsed = parseReference(ref);
  const attrs: Record<string, string> = {};
  const mode = opts.resolveMode ?? 'default';
  if (mode !== 'default' && mode !== 'pull' && mode !== 'local') {
    throw errInvalidArgument(`image "${ref}": invalid resolve mode "${mode}": want default, pull or local`);
  }
  if (mode !== 'default') attrs[ATTR.imageResolveMode] = mode;
  const platform = opts.platform === undefined ? undefined : toPlatform(opts.platform);
  const vertex = new SourceVertex(
    `docker-image://${parsed.full}`,
    attrs,
    platform ?? true,
    vertexMetadata(opts),
  );
  const env = new Map<string, string>();
  for (const kv of opts.config?.Env ?? []) {
    const i = kv.indexOf('=');
    if (i > 0) env.set(kv.slice(0, i), kv.slice(i + 1));
    else if (i < 0 && kv !== '') env.set(kv, '');
  }
  return newState(
    { vertex, index: 0 },
    {
      env,
      cwd: opts.config?.WorkingDir || '/',
      user: opts.config?.User ?? '',
      platform,
    },
  );
}

export interface LocalOptions extends OpOptions {
  /** Only send paths matching one of these patterns (relative to the directory). */
  include?: readonly string[];
  /** Do not send paths matching these patterns (e.g. from .dockerignore). */
  exclude?: readonly string[];
  /** Send only these paths (and what their symlinks point to). */
  followPaths?: readonly string[];
  /** Transfers with the same hint may reuse each other's cached state. */
  sharedKeyHint?: string;
}

function jsonList(what: string, list: readonly string[]): string {
  for (const p of list)
    if (typeof p !== 'string' || p === '') throw errInvalidArgument(`${what}: invalid pattern "${p}"`);
  return JSON.stringify(list);
}

/**
 * A directory the client sends in its session, by name (e.g. the build
 * context). Only the named directory's selected paths are transferred.
 *
 * @example
 * ```ts
 * const ctx = local('context', { exclude: ['node_modules', '.git'] });
 * ```
 */
export function local(name: string, opts: LocalOptions = {}): State {
  if (typeof name !== 'string' || name === '' || name.includes('\0')) {
    throw errInvalidArgument(`local: invalid name "${name}"`);
  }
  const attrs: Record<string, string> = {};
  if (opts.include?.length) attrs[ATTR.localInclude] = jsonList(`local "${name}" include`, opts.include);
  if (opts.exclude?.length) attrs[ATTR.localExclude] = jsonList(`local "${name}" exclude`, opts.exclude);
  if (opts.followPaths?.length) {
    attrs[ATTR.localFollowPaths] = jsonList(`local "${name}" followPaths`, opts.followPaths);
  }
  if (opts.sharedKeyHint) attrs[ATTR.localSharedKeyHint] = opts.sharedKeyHint;
  return newState({
    vertex: new SourceVertex(`local://${name}`, attrs, false, vertexMetadata(opts)),
    index: 0,
  });
}

export interface GitOptions extends OpOptions {
  /** Keep the .git directory in the result. */
  keepGitDir?: boolean;
  /** Only this directory of the repository becomes the result. */
  subdir?: string;
}

/** `host/path` of a git remote, without scheme or credentials. */
function gitRemote(url: string): string {
  const scp = /^[A-Za-z0-9._-]+@([A-Za-z0-9.-]+):(?!\/\/)(.+)$/.exec(url);
  if (scp) return `${scp[1]}/${scp[2]}`;
  const m = /^(?:https?|git|ssh|git\+ssh):\/\/(?:[^@/]*@)?(.+)$/.exec(url);
  if (m) return m[1]!;
  if (/^[A-Za-z0-9.-]+\.[A-Za-z]+(?::[0-9]+)?\/.+/.test(url)) return url;
  throw errInvalidArgument(
    `git: unsupported repository URL "${url}": want https://, ssh://, git:// or user@host:path`,
  );
}

/**
 * A git repository at a branch, tag or commit (empty `ref`: the default
 * branch).
 *
 * @example
 * ```ts
 * const src = git('https://github.com/moby/buildkit.git', 'v0.12.0', { subdir: 'docs' });
 * ```
 */
export function git(url: string, ref = '', opts: GitOptions = {}): State {
  if (url.includes('#')) throw errInvalidArgument(`git: URL "${url}" contains "#": pass the ref separately`);
  const remote = gitRemote(url);
  if (/[\s#]/.test(ref)) throw errInvalidArgument(`git "${url}": invalid ref "${ref}"`);
  const attrs: Record<string, string> = {};
  const bare = !/^[a-z+]+:\/\//.test(url) && !/^[^/]+@[^/]+:/.test(url);
  attrs[ATTR.gitFullUrl] = bare ? `https://${url}` : url;
  if (opts.keepGitDir) attrs[ATTR.gitKeepGitDir] = 'true';
  if (opts.subdir) {
    if (opts.subdir.split('/').includes('..'))
      throw errInvalidArgument(`git "${url}": invalid subdir "${opts.subdir}"`);
    attrs[ATTR.gitSubdir] = opts.subdir;
  }
  const identifier = `git://${remote}${ref ? `#${ref}` : ''}`;
  return newState({ vertex: new SourceVertex(identifier, attrs, false, vertexMetadata(opts)), index: 0 });
}

export interface HttpOptions extends OpOptions {
  /** Expected digest of the file ("sha256:…"); a mismatch fails the build. */
  checksum?: string;
  /** The file's name in the result; default: the last path segment of the URL. */
  filename?: string;
  /** Permission bits of the file; default 0o600 (as BuildKit). */
  chmod?: number;
}

/**
 * A single file downloaded over HTTP(S), as a tree holding that file.
 *
 * @example
 * ```ts
 * const tarball = http('https://example.com/tool.tar.gz', {
 *   checksum: 'sha256:…',
 *   filename: 'tool.tar.gz',
 * });
 * ```
 */
export function http(url: string, opts: HttpOptions = {}): State {
  let u: URL;
  try {
    u = new URL(url);
  } catch (err) {
    throw errInvalidArgument(`http: invalid URL "${url}"`, err);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw errInvalidArgument(`http: unsupported URL scheme in "${url}": want http or https`);
  }
  const attrs: Record<string, string> = {};
  if (opts.checksum !== undefined) attrs[ATTR.httpChecksum] = parseDigest(opts.checksum).digest;
  if (opts.filename !== undefined) {
    if (
      opts.filename === '' ||
      opts.filename.includes('/') ||
      opts.filename === '.' ||
      opts.filename === '..'
    ) {
      throw errInvalidArgument(`http "${url}": invalid filename "${opts.filename}"`);
    }
    attrs[ATTR.httpFilename] = opts.filename;
  }
  if (opts.chmod !== undefined) {
    if (!Number.isInteger(opts.chmod) || opts.chmod < 0 || opts.chmod > 0o7777) {
      throw errInvalidArgument(`http "${url}": invalid chmod "${opts.chmod}"`);
    }
    attrs[ATTR.httpPerm] = `0${opts.chmod.toString(8)}`;
  }
  return newState({ vertex: new SourceVertex(url, attrs, false, vertexMetadata(opts)), index: 0 });
}
