/**
 * `State`: an immutable handle on one result of the build graph plus the
 * settings later ops inherit (env, working directory, user, platform,
 * network, hostname, extra hosts), in the spirit of BuildKit's llb.State.
 *
 * Every method returns a new State; none changes its receiver, so a state
 * can be shared and branched freely. Creating states builds a graph in
 * memory only; `marshal` (or `state.marshal()`) serializes it.
 *
 * Settings apply when an op is created: `image('x').addEnv('A', '1').run(…)`
 * runs with A=1; setting env after `run` changes later runs only. Relative
 * paths (`dir`, `run({ cwd })`, mount targets, file action paths) are
 * resolved against the current working directory (default "/").
 */
import { posix } from 'node:path';
import { errInvalidArgument, errNotFound } from '../core/errors.ts';
import type { Platform } from '../core/images/types.ts';
import type { Definition } from '../gen/kiln/llb/v1/llb_pb.ts';
import {
  type CacheSharingName,
  ExecVertex,
  execCaps,
  type NetworkModeName,
  type ResolvedMount,
  type SecurityModeName,
} from './exec.ts';
import { type FileActions, FileVertex } from './file.ts';
import { type MarshalOptions, marshal } from './marshal.ts';
import { toPlatform } from './platform.ts';
import { type OpOptions, type Output, type StateRef, vertexMetadata } from './vertex.ts';

/** An /etc/hosts entry added to execs. */
export interface HostIP {
  host: string;
  ip: string;
}

/** The settings a state carries for the ops created from it. */
export interface StateMeta {
  readonly env: ReadonlyMap<string, string>;
  readonly cwd: string;
  readonly user: string;
  readonly platform: Platform | undefined;
  readonly network: NetworkModeName;
  readonly security: SecurityModeName;
  readonly hostname: string;
  readonly extraHosts: readonly HostIP[];
}

const DEFAULT_META: StateMeta = {
  env: new Map(),
  cwd: '/',
  user: '',
  platform: undefined,
  network: 'sandbox',
  security: 'sandbox',
  hostname: '',
  extraHosts: [],
};

/** A mount of another state's tree (writable by default; its result is `getMount(target)`). */
export interface BindMount {
  type?: 'bind';
  target: string;
  /** The tree to mount; default: an empty directory. */
  source?: State;
  /** Mount this path of the source instead of its root. */
  selector?: string;
  readonly?: boolean;
}

/** A directory that persists across builds, e.g. for package manager caches. */
export interface CacheMount {
  type: 'cache';
  target: string;
  /** Cache identity; default: the target path. */
  id?: string;
  /** How concurrent builds use the cache; default "shared". */
  sharing?: CacheSharingName;
  /** Initial contents for a new cache. */
  source?: State;
  selector?: string;
  readonly?: boolean;
}

/** An in-memory filesystem. */
export interface TmpfsMount {
  type: 'tmpfs';
  target: string;
  /** Size limit in bytes; default: the kernel's. */
  size?: number;
}

/** A secret from the client session, as a file. */
export interface SecretMount {
  type: 'secret';
  target: string;
  /** Secret name; default: the target's base name. */
  id?: string;
  uid?: number;
  gid?: number;
  /** Default 0o400. */
  mode?: number;
  /** A missing secret leaves the mount out instead of failing the run. */
  optional?: boolean;
}

/** A socket to an SSH agent of the client session. */
export interface SshMount {
  type: 'ssh';
  target: string;
  /** Agent name; default "default". */
  id?: string;
  uid?: number;
  gid?: number;
  /** Default 0o600. */
  mode?: number;
  optional?: boolean;
}

export type MountSpec = BindMount | CacheMount | TmpfsMount | SecretMount | SshMount;

/** A secret from the client session, as an environment variable of the process only. */
export interface SecretEnvSpec {
  /** Environment variable name. */
  name: string;
  /** Secret name; default: the variable name. */
  id?: string;
  /** A missing secret leaves the variable unset instead of failing the run. */
  optional?: boolean;
}

/** Options of `state.run`. Exactly one of `args` and `shell` is required. */
export interface RunOptions extends OpOptions {
  /** The command, executed directly (no shell). */
  args?: readonly string[];
  /** A shell command line, run as `/bin/sh -c <shell>`. */
  shell?: string;
  /** Variables added to (or replacing) the state's env for this run only. */
  env?: Readonly<Record<string, string>>;
  /** Working directory; relative to the state's. */
  cwd?: string;
  /** `user[:group]` by name or id; default: the state's user. */
  user?: string;
  /** Default: the state's network (initially "sandbox"). */
  network?: NetworkModeName;
  /** Default: the state's (initially "sandbox"). */
  security?: SecurityModeName;
  hostname?: string;
  /** Added to the state's extra hosts. */
  extraHosts?: readonly HostIP[];
  mounts?: readonly MountSpec[];
  /**
   * Session secrets set as environment variables of the process (never in
   * the state's env, the result or the op beyond the id and the name).
   * A secret variable overrides an env variable of the same name.
   */
  secretEnv?: readonly SecretEnvSpec[];
  /** Exit codes that count as success; default only 0. */
  validExitCodes?: readonly number[];
}

function checkNetwork(mode: string): NetworkModeName {
  if (mode !== 'sandbox' && mode !== 'host' && mode !== 'none') {
    throw errInvalidArgument(`invalid network mode "${mode}": want sandbox, host or none`);
  }
  return mode;
}

function checkSecurity(mode: string): SecurityModeName {
  if (mode !== 'sandbox' && mode !== 'insecure') {
    throw errInvalidArgument(`invalid security mode "${mode}": want sandbox or insecure`);
  }
  return mode;
}

function checkEnvName(key: string): void {
  if (key === '' || key.includes('=') || key.includes('\0')) {
    throw errInvalidArgument(`invalid environment variable name "${key}"`);
  }
}

function checkId(what: string, v: number | undefined, dflt: number, max = 0xffffffff): number {
  const n = v ?? dflt;
  if (!Number.isInteger(n) || n < 0 || n > max) throw errInvalidArgument(`invalid ${what} "${v}"`);
  return n;
}

/**
 * An immutable build state: a result of the graph (or the empty tree) plus
 * the settings later ops inherit.
 *
 * @example
 * ```ts
 * const built = image('busybox')
 *   .addEnv('GREETING', 'hello')
 *   .dir('/work')
 *   .run({ shell: 'echo "$GREETING" > out.txt' })
 *   .root();
 * const def = built.marshal({ platform: 'linux/amd64' });
 * ```
 */
export class State implements StateRef {
  readonly #output: Output | undefined;
  readonly #meta: StateMeta;

  /**
   * @internal States come from `scratch()`, `image()`, `local()`, `git()`,
   * `http()`, `merge()`, `diff()` and the methods of other states.
   */
  constructor(output: Output | undefined, meta: StateMeta = DEFAULT_META) {
    this.#output = output;
    this.#meta = meta;
  }

  /** The graph output this state stands for; undefined for the empty tree. */
  output(): Output | undefined {
    return this.#output;
  }

  /** True for the empty tree (`scratch()` and states derived from it by settings only). */
  isScratch(): boolean {
    return this.#output === undefined;
  }

  /** @internal The settings, for builders in this package. */
  get meta(): StateMeta {
    return this.#meta;
  }

  /** The same result with other settings. */
  #withMeta(change: Partial<StateMeta>): State {
    return new State(this.#output, { ...this.#meta, ...change });
  }

  /** @internal The same settings on another result. */
  withOutput(output: Output | undefined): State {
    return new State(output, this.#meta);
  }

  // ------------------------------------------------------------ settings

  /** The value of an environment variable, or undefined. */
  getEnv(key: string): string | undefined {
    return this.#meta.env.get(key);
  }

  /** All environment variables, sorted by name. */
  env(): Record<string, string> {
    return Object.fromEntries([...this.#meta.env].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)));
  }

  /** Sets (or replaces) an environment variable for later execs. */
  addEnv(key: string, value: string): State {
    checkEnvName(key);
    const env = new Map(this.#meta.env);
    env.set(key, String(value));
    return this.#withMeta({ env });
  }

  /** Removes an environment variable. */
  delEnv(key: string): State {
    const env = new Map(this.#meta.env);
    env.delete(key);
    return this.#withMeta({ env });
  }

  /** The working directory (absolute). */
  getDir(): string {
    return this.#meta.cwd;
  }

  /** Changes the working directory; a relative path is resolved against the current one. */
  dir(path: string): State {
    if (typeof path !== 'string' || path === '')
      throw errInvalidArgument(`invalid working directory "${path}"`);
    return this.#withMeta({ cwd: posix.resolve(this.#meta.cwd, path) });
  }

  /** The user later execs run as (`""` is root). */
  getUser(): string {
    return this.#meta.user;
  }

  /** Sets the user (`name`, `uid`, `name:group`, `uid:gid`) for later execs. */
  user(user: string): State {
    return this.#withMeta({ user });
  }

  /** The platform set on this state, or undefined (marshal's default applies). */
  getPlatform(): Platform | undefined {
    return this.#meta.platform;
  }

  /** Sets the platform for later execs (`"linux/arm64"` or a Platform). */
  platform(p: Platform | string): State {
    return this.#withMeta({ platform: toPlatform(p) });
  }

  getNetwork(): NetworkModeName {
    return this.#meta.network;
  }

  /** Sets the network mode for later execs. */
  network(mode: NetworkModeName): State {
    return this.#withMeta({ network: checkNetwork(mode) });
  }

  getSecurity(): SecurityModeName {
    return this.#meta.security;
  }

  /** Sets the security mode for later execs. */
  security(mode: SecurityModeName): State {
    return this.#withMeta({ security: checkSecurity(mode) });
  }

  getHostname(): string {
    return this.#meta.hostname;
  }

  /** Sets the hostname for later execs. */
  hostname(name: string): State {
    return this.#withMeta({ hostname: name });
  }

  getExtraHosts(): readonly HostIP[] {
    return this.#meta.extraHosts;
  }

  /** Adds an /etc/hosts entry for later execs. */
  addExtraHost(host: string, ip: string): State {
    if (host === '' || ip === '') throw errInvalidArgument(`invalid extra host "${host}" → "${ip}"`);
    return this.#withMeta({ extraHosts: [...this.#meta.extraHosts, { host, ip }] });
  }

  // ------------------------------------------------------------ ops

  /**
   * Runs a command on this state's tree. The result's root is the changed
   * tree; writable bind mounts are results of their own (`getMount`).
   *
   * @example
   * ```ts
   * const out = image('node:22')
   *   .dir('/app')
   *   .run({
   *     args: ['npm', 'ci'],
   *     mounts: [
   *       { target: '/app', source: local('context') },
   *       { type: 'cache', target: '/root/.npm', sharing: 'locked' },
   *       { type: 'secret', target: '/run/secrets/npmrc', id: 'npmrc' },
   *     ],
   *     network: 'host',
   *   });
   * const appTree = out.getMount('/app');
   * ```
   */
  run(opts: RunOptions): ExecState {
    let args: string[];
    if (opts.args !== undefined && opts.shell !== undefined) {
      throw errInvalidArgument('run: give either args or shell, not both');
    } else if (opts.shell !== undefined) {
      args = ['/bin/sh', '-c', opts.shell];
    } else if (opts.args !== undefined && opts.args.length > 0) {
      args = [...opts.args];
    } else {
      throw errInvalidArgument('run: the command is empty (want args or shell)');
    }
    const m = this.#meta;
    const env = new Map(m.env);
    for (const [k, v] of Object.entries(opts.env ?? {})) {
      checkEnvName(k);
      env.set(k, String(v));
    }
    const cwd = opts.cwd === undefined ? m.cwd : posix.resolve(m.cwd, opts.cwd);
    const mounts: ResolvedMount[] = [];
    const sources = new Map<string, State | undefined>();
    let nextOutput = 1;
    for (const spec of opts.mounts ?? []) {
      if (typeof spec.target !== 'string' || spec.target === '') {
        throw errInvalidArgument(`run: mount target "${spec.target}" is empty`);
      }
      const dest = posix.resolve(cwd, spec.target);
      if (dest === '/') throw errInvalidArgument('run: cannot mount over "/" (run on the state instead)');
      if (sources.has(dest)) throw errInvalidArgument(`run: two mounts target "${dest}"`);
      const where = `run: mount "${dest}"`;
      switch (spec.type) {
        case undefined:
        case 'bind': {
          const ro = spec.readonly ?? false;
          const source = spec.source?.output();
          mounts.push({
            dest,
            type: 'bind',
            source,
            selector: spec.selector ?? '',
            readonly: ro,
            output: ro ? undefined : nextOutput++,
          });
          sources.set(dest, spec.source);
          break;
        }
        case 'cache': {
          const sharing = spec.sharing ?? 'shared';
          if (sharing !== 'shared' && sharing !== 'private' && sharing !== 'locked') {
            throw errInvalidArgument(
              `${where}: invalid cache sharing "${sharing}": want shared, private or locked`,
            );
          }
          mounts.push({
            dest,
            type: 'cache',
            source: spec.source?.output(),
            selector: spec.selector ?? '',
            readonly: spec.readonly ?? false,
            cache: { id: spec.id || dest, sharing },
          });
          sources.set(dest, undefined);
          break;
        }
        case 'tmpfs': {
          const size = spec.size ?? 0;
          if (!Number.isSafeInteger(size) || size < 0)
            throw errInvalidArgument(`${where}: invalid tmpfs size "${size}"`);
          mounts.push({ dest, type: 'tmpfs', selector: '', readonly: false, tmpfs: { size } });
          sources.set(dest, undefined);
          break;
        }
        case 'secret':
        case 'ssh': {
          const isSecret = spec.type === 'secret';
          const id = spec.id || (isSecret ? posix.basename(dest) : 'default');
          const opt = {
            id,
            uid: checkId(`${where}: uid`, spec.uid, 0),
            gid: checkId(`${where}: gid`, spec.gid, 0),
            mode: checkId(`${where}: mode`, spec.mode, isSecret ? 0o400 : 0o600, 0o7777),
            optional: spec.optional ?? false,
          };
          mounts.push({ dest, type: spec.type, selector: '', readonly: true, [spec.type]: opt });
          sources.set(dest, undefined);
          break;
        }
        default:
          throw errInvalidArgument(`${where}: unknown mount type "${(spec as { type: string }).type}"`);
      }
    }
    const secretEnv: { id: string; name: string; optional: boolean }[] = [];
    for (const se of opts.secretEnv ?? []) {
      checkEnvName(se.name);
      if (secretEnv.some((e) => e.name === se.name))
        throw errInvalidArgument(`run: two secrets set environment variable "${se.name}"`);
      secretEnv.push({ id: se.id || se.name, name: se.name, optional: se.optional ?? false });
    }
    for (const code of opts.validExitCodes ?? []) {
      if (!Number.isInteger(code) || code < 0 || code > 255)
        throw errInvalidArgument(`run: invalid exit code "${code}"`);
    }
    const spec = {
      root: this.#output,
      args,
      env,
      cwd,
      user: opts.user ?? m.user,
      hostname: opts.hostname ?? m.hostname,
      extraHosts: [...m.extraHosts, ...(opts.extraHosts ?? [])],
      validExitCodes: [...(opts.validExitCodes ?? [])],
      network: checkNetwork(opts.network ?? m.network),
      security: checkSecurity(opts.security ?? m.security),
      mounts,
      secretEnv,
      platform: m.platform,
    };
    const vertex = new ExecVertex(spec, vertexMetadata(opts, execCaps(spec)));
    return new ExecState({ vertex, index: 0 }, m, cwd, mounts, sources);
  }

  /**
   * Applies a chain of file actions to this state.
   *
   * @example
   * ```ts
   * const etc = image('busybox').file(
   *   mkdir('/etc/app', 0o755, { parents: true })
   *     .mkfile('/etc/app/config.json', 0o644, '{"debug":false}', { owner: 'nobody' })
   *     .rm('/etc/motd', { allowNotFound: true }),
   * );
   * ```
   */
  file(actions: FileActions, opts?: OpOptions): State {
    const vertex = new FileVertex(this.#output, this.#meta.cwd, actions, vertexMetadata(opts));
    return this.withOutput({ vertex, index: 0 });
  }

  /** Serializes the graph behind this state (see `marshal`). */
  marshal(opts?: MarshalOptions): Definition {
    return marshal(this, opts);
  }
}

/**
 * The result of `state.run`: itself the root filesystem after the command,
 * with access to the mounts' results.
 */
export class ExecState extends State {
  readonly #vertexOutput: Output;
  readonly #cwd: string;
  readonly #mounts: readonly ResolvedMount[];
  readonly #sources: ReadonlyMap<string, State | undefined>;

  /** @internal Created by `State.run`. */
  constructor(
    root: Output,
    meta: StateMeta,
    cwd: string,
    mounts: readonly ResolvedMount[],
    sources: ReadonlyMap<string, State | undefined>,
  ) {
    super(root, meta);
    this.#vertexOutput = root;
    this.#cwd = cwd;
    this.#mounts = mounts;
    this.#sources = sources;
  }

  /** The root filesystem after the command, as a plain State. */
  root(): State {
    return this.withOutput(this.#vertexOutput);
  }

  /**
   * The tree at a mount target after the command: a writable bind mount's
   * result, or, for a read-only one, its unchanged source. Throws NotFound
   * for an unknown target and InvalidArgument for cache, tmpfs, secret and
   * ssh mounts (their contents are not results). A relative target is
   * resolved against the run's working directory, as in `run`.
   */
  getMount(target: string): State {
    const dest = posix.resolve(this.#cwd, target);
    const m = this.#mounts.find((x) => x.dest === dest);
    if (!m) throw errNotFound(`get mount "${target}": the run has no mount at "${dest}"`);
    if (m.type !== 'bind') {
      throw errInvalidArgument(`get mount "${target}": a ${m.type} mount has no result`);
    }
    const src = this.#sources.get(dest);
    if (m.output === undefined) return src ?? scratch();
    return new State({ vertex: this.#vertexOutput.vertex, index: m.output }, src?.meta ?? DEFAULT_META);
  }
}

/**
 * The empty tree: the start of images built from nothing.
 *
 * @example
 * ```ts
 * const hello = scratch().file(mkfile('/hello.txt', 0o644, 'hello\n'));
 * ```
 */
export function scratch(): State {
  return new State(undefined, DEFAULT_META);
}

/** @internal A state for a new output with default settings (and a platform). */
export function newState(output: Output | undefined, meta: Partial<StateMeta> = {}): State {
  return new State(output, { ...DEFAULT_META, ...meta });
}
