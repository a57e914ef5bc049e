/**
 * The exec op (LLB ExecOp): runs a process through the OCI runtime on a
 * root filesystem and mounts made from snapshots.
 *
 * - root: a writable snapshot prepared on the root input (or empty).
 * - bind: read-only mounts view their input's snapshot (a selector binds a
 *   sub-path, and an input used only that way is a content-based cache dep
 *   on the selected paths); writable mounts prepare their own snapshot, which becomes an
 *   output. A selector resolves inside the input's tree (symlinks followed
 *   as if it were `/`), never to a host path. Outputs are committed as results after the process exits 0 (or a
 *   code in `validExitCodes`).
 * - cache: a persistent directory per cache id under
 *   `<stateDir>/cache-mounts/`, bound into the container; never part of any
 *   result. Sharing: `shared` (default) lets concurrent execs use one
 *   directory; `locked` serializes them (in this process); `private` gives an
 *   exec that finds the directory busy a directory of its own (kept for
 *   later private users).
 * - secret: the caller's secret written into a private tmpfs outside the
 *   rootfs with the uid/gid/mode asked, bound read-only; a missing secret is
 *   an error unless optional. Never in a result (the tmpfs is not in the
 *   rootfs) nor in the cache key (only the secret id is in the op).
 * - tmpfs: a tmpfs of `size` bytes (0: unlimited).
 * - secret env (`ExecOp.secretEnv`): the caller's secret, read at run time,
 *   set in the process environment only (it overrides a same-named env
 *   entry); a missing secret is an error naming the id unless optional (the
 *   variable is then unset). The OCI bundle (whose config.json then holds
 *   the value) is a private tmpfs, so the value never reaches the disk; it
 *   is in no result, no cache key (the op carries only id and name), and
 *   the frontend puts it in no image config or history.
 * - ssh: the session's agent socket for the mount's id (`sshAgents[id]`,
 *   else `ssh` for every id) is forwarded through a socket of this process
 *   (ssh-forward.ts) created in the bundle's secrets tmpfs with the mount's
 *   uid/gid/mode and bound at the target; missing → error naming the id
 *   unless optional.
 * - network: host or none; `sandbox` (the default) runs on the host network,
 *   so RUN steps can reach the network as with BuildKit's default, until an
 *   isolated network exists; extra hosts are appended to /etc/hosts.
 * - mount points the runtime had to create in the rootfs are pruned after
 *   the run when still empty, only below the rootfs, never through a
 *   symlink or a mount (`missingMountPoints` / `removeStubs`).
 * - platform: an op for another architecture runs when a binfmt_misc
 *   handler (qemu-user, flag F) can run its binaries, else fails before
 *   anything is mounted, naming the platform and the handler (emulation.ts).
 * - stdout/stderr go to the vertex progress as logs 1/2.
 * - a failing process: KilnError naming the command and the exit code; a
 *   command that cannot be started counts as exit code 1 (the OCI runtime's
 *   failure, as in BuildKit), with the start error in the message.
 * - abort: the runtime kills and deletes the container; mounts are
 *   unmounted, snapshots removed, the lease deleted (OpSession.close).
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, rmdirSync, unlinkSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { bundlesDir } from './bundles.ts';
import type { Mount as CoreMount } from '../core/mount/mount.ts';
import { errNotFound, KilnError } from '../core/errors.ts';
import { lstatOrUndefined } from '../core/fs/meta.ts';
import { isWithin, mountsAtOrBelow, realDirsBelow, removeTree, resolveInRoot } from '../core/fs/safe.ts';
import { mountAll, unmountAll } from '../core/mount/mount.ts';
import { type ExtraMount, generateSpec, writeFileAtomic, writeSpec } from '../core/runtime/spec.ts';
import {
  CacheSharing,
  type ExecOp as ExecOpPb,
  type Mount as MountPb,
  MountType,
  NetworkMode,
  type Platform as PlatformPb,
} from '../gen/kiln/llb/v1/llb_pb.ts';
import type { CacheMap, CacheMapDep, Op, OpContext, Result } from '../solver/types.ts';
import { checkExecPlatform } from './emulation.ts';
import type { OpEnv } from './env.ts';
import { copyEntry, lstatMaybe } from './fsutil.ts';
import { OpSession, type SnapshotRef, snapshotOf } from './refs.ts';
import { forwardSocket, type SocketForward } from './ssh-forward.ts';
import { noteLeftover } from '../core/lock.ts';

const MAX_SUMMARY = 60;

/** "sh -c echo hi" style summary of a command, for names and errors. */
export function summarizeArgs(args: readonly string[]): string {
  const s = args.join(' ');
  return s.length > MAX_SUMMARY ? `${s.slice(0, MAX_SUMMARY - 3)}...` : s;
}

/** In-process locks for `locked` cache mounts and the busy set for `private` ones. */
const cacheLocks = new Map<string, Promise<void>>();
const busyCaches = new Map<string, number>();

async function lockCache(dir: string): Promise<() => void> {
  for (;;) {
    const held = cacheLocks.get(dir);
    if (!held) break;
    await held;
  }
  let release!: () => void;
  cacheLocks.set(
    dir,
    new Promise<void>((r) => {
      release = r;
    }),
  );
  return () => {
    cacheLocks.delete(dir);
    release();
  };
}

function cacheDirName(id: string): string {
  return Buffer.from(id).toString('base64url').slice(0, 200) || '_';
}

/**
 * The top-most missing path of each mount point, relative to `rootfs`: the
 * runtime creates these in the rootfs as mount targets, and they are removed
 * again after the run (when still empty) so they do not end up in the
 * result. Destinations resolve inside the rootfs as the runtime resolves
 * them (symlinks followed as if `rootfs` were `/`), so a stub is never a
 * host path reached through an absolute symlink in the image.
 */
export async function missingMountPoints(rootfs: string, dests: string[]): Promise<string[]> {
  const out = new Set<string>();
  for (const dest of dests) {
    let cur = '';
    for (const part of dest.split('/').filter(Boolean)) {
      cur = `${cur}/${part}`;
      const host = await resolveInRoot(rootfs, cur);
      if (lstatOrUndefined(host)) continue;
      // The top-most missing component of the resolved path (a symlink may lead several levels deep).
      let rel = '';
      for (const c of path.relative(rootfs, host).split(path.sep)) {
        rel = rel ? `${rel}/${c}` : c;
        if (!lstatOrUndefined(path.join(rootfs, rel))) break;
      }
      out.add(rel);
      break;
    }
  }
  return [...out].filter((s) => s !== '' && !s.startsWith('..'));
}

/**
 * Removes mount stubs that hold only empty files and directories. A stub
 * whose parents are no longer real directories of the rootfs (the process
 * replaced one with a symlink during the run) is left alone, as is anything
 * with a mount at or below it; nothing is followed out of the rootfs.
 */
export async function removeStubs(rootfs: string, stubs: string[]): Promise<void> {
  // Stubs are a few empty entries: removed on the calling thread (microseconds per call).
  const prune = async (abs: string): Promise<boolean> => {
    const st = lstatOrUndefined(abs);
    if (!st) return true;
    if (st.isFile() && st.size === 0n) {
      unlinkSync(abs);
      return true;
    }
    if (!st.isDirectory()) return false;
    if ((await mountsAtOrBelow(abs)).length > 0) return false;
    let empty = true;
    for (const name of readdirSync(abs)) if (!(await prune(path.join(abs, name)))) empty = false;
    if (empty) rmdirSync(abs);
    return empty;
  };
  for (const s of stubs) {
    const abs = path.join(rootfs, s);
    if (!isWithin(abs, rootfs) || abs === path.resolve(rootfs)) continue;
    if (!(await realDirsBelow(rootfs, path.dirname(s)))) continue;
    await prune(abs).catch(() => false);
  }
}

function tmpfs(...options: string[]): CoreMount {
  return { type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'noexec', ...options] };
}

export class ExecOp implements Op {
  readonly #env: OpEnv;
  readonly #op: ExecOpPb;
  readonly #digest: string;
  readonly #platform: PlatformPb | undefined;

  /** `platform`: the op's (Op.platform); a foreign one runs through binfmt_misc emulation. */
  constructor(env: OpEnv, op: ExecOpPb, digest: string, platform?: PlatformPb) {
    this.#env = env;
    this.#op = op;
    this.#digest = digest;
    this.#platform = platform;
  }

  get command(): string {
    return summarizeArgs(this.#op.meta?.args ?? []);
  }

  /**
   * The op digest; an input used only by read-only bind mounts with a
   * selector (not the root) gets a content-based dep on the selected paths.
   */
  async cacheMap(_ctx: OpContext, _index: number): Promise<CacheMap> {
    const used = new Map<number, { selectors: string[]; plain: boolean }>();
    for (const m of this.#op.mounts) {
      if (m.input === undefined) continue;
      const u = used.get(m.input) ?? { selectors: [], plain: false };
      const contentBased = m.type === MountType.BIND && m.readonly && m.dest !== '/' && m.selector !== '';
      if (contentBased) u.selectors.push(path.posix.normalize(`/${m.selector}`));
      else u.plain = true;
      used.set(m.input, u);
    }
    const count = used.size === 0 ? 0 : Math.max(...used.keys()) + 1;
    const deps: CacheMapDep[] = [];
    for (let i = 0; i < count; i++) {
      const u = used.get(i);
      if (!u || u.plain || u.selectors.length === 0) deps.push({});
      else {
        deps.push({
          selector: u.selectors.length === 1 ? u.selectors[0] : JSON.stringify(u.selectors),
          computeDigestFunc: (r, sel, signal) => this.#env.checksums.forResult(r, sel, signal),
        });
      }
    }
    return { digest: this.#digest, deps };
  }

  /** `NAME=value` for each secret env entry whose secret the session has (missing → error unless optional). */
  #secretEnv(): string[] {
    const out: string[] = [];
    for (const se of this.#op.secretEnv) {
      const value = this.#env.sessions.secrets[se.id];
      if (value === undefined) {
        if (se.optional) continue;
        throw errNotFound(`secret env "${se.name}": secret "${se.id}" not found in the session`);
      }
      out.push(`${se.name}=${typeof value === 'string' ? value : Buffer.from(value).toString('utf8')}`);
    }
    return out;
  }

  /** A new cache directory, filled from the mount's input (at its selector) when it has one. */
  async #seedCache(session: OpSession, dir: string, m: MountPb, inputs: readonly Result[]): Promise<void> {
    const tmp = `${dir}.seed-${randomBytes(4).toString('hex')}`;
    await fs.mkdir(path.dirname(dir), { recursive: true });
    try {
      if (m.input !== undefined) {
        const src = await session.mount(await session.view(snapshotOf(inputs[m.input])));
        // The selector resolves inside the input's tree: a symlink in it never reaches host files.
        await copyEntry(await resolveInRoot(src, m.selector), tmp, { links: new Map() });
        await session.unmount(src);
      } else await fs.mkdir(tmp, { mode: 0o755 });
      await fs.rename(tmp, dir).catch(async (err: unknown) => {
        if (!(await lstatMaybe(dir))) throw err; // else: a concurrent exec made it first
      });
    } finally {
      await removeTree(tmp);
    }
  }

  async exec(ctx: OpContext, inputs: readonly Result[]): Promise<Result[]> {
    const meta = this.#op.meta!;
    await checkExecPlatform(this.#platform);
    const session = await OpSession.open(this.#env.core, `exec ${this.command}`);
    const bundle = path.join(bundlesDir(this.#env.runDir), randomBytes(8).toString('hex'));
    const releases: (() => void)[] = [];
    const outputs: { index: number; key: string; dir: string }[] = [];
    const results: SnapshotRef[] = [];
    let secretsDir: string | undefined;
    let bundleTmpfs = false;
    const forwards: SocketForward[] = [];
    const privateDir = async (): Promise<string> => {
      if (!secretsDir) {
        secretsDir = path.join(bundle, 'secrets');
        await fs.mkdir(secretsDir, { mode: 0o700 });
        await mountAll([tmpfs('mode=0755', 'size=16m')], secretsDir);
      }
      return secretsDir;
    };
    try {
      await fs.mkdir(bundle, { recursive: true, mode: 0o700 });
      // Secret values in the process env end up in config.json: keep the whole bundle in memory.
      const secretEnv = this.#secretEnv();
      if (secretEnv.length > 0) {
        await mountAll([tmpfs('mode=0700', 'size=16m')], bundle);
        bundleTmpfs = true;
      }
      const snapOf = (m: MountPb): string => (m.input !== undefined ? snapshotOf(inputs[m.input]) : '');
      const extra: ExtraMount[] = [];
      let rootfs = '';
      let readonlyRoot = false;
      for (const m of this.#op.mounts) {
        ctx.signal.throwIfAborted();
        const what = `mount "${m.dest}"`;
        switch (m.type) {
          case MountType.BIND: {
            let dir: string;
            if (m.readonly && m.output === undefined) {
              dir = await session.mount(await session.view(snapOf(m)));
            } else {
              const { key, mounts } = await session.prepare(snapOf(m));
              dir = await session.mount(mounts);
              if (m.output !== undefined) outputs.push({ index: m.output, key, dir });
            }
            if (m.dest === '/') {
              rootfs = dir;
              readonlyRoot = m.readonly;
              break;
            }
            // Resolved inside the snapshot: `x -> /` in the input must not bind the host's `/etc`
            // (writable, for a rw mount) into the container.
            const source = m.selector ? await resolveInRoot(dir, m.selector) : dir;
            extra.push({ type: 'bind', source, destination: m.dest, readonly: m.readonly });
            break;
          }
          case MountType.CACHE: {
            const id = m.cache?.id ?? m.dest;
            const base = path.join(this.#env.stateDir, 'cache-mounts', cacheDirName(id));
            let dir = base;
            const sharing = m.cache?.sharing ?? CacheSharing.UNSPECIFIED;
            if (sharing === CacheSharing.LOCKED) releases.push(await lockCache(base));
            else if (sharing === CacheSharing.PRIVATE) {
              for (let n = 1; (busyCaches.get(dir) ?? 0) > 0; n++) dir = `${base}.${n}`;
            }
            busyCaches.set(dir, (busyCaches.get(dir) ?? 0) + 1);
            const d = dir;
            releases.push(() => {
              const left = (busyCaches.get(d) ?? 1) - 1;
              if (left <= 0) busyCaches.delete(d);
              else busyCaches.set(d, left);
            });
            if (!(await lstatMaybe(dir))) await this.#seedCache(session, dir, m, inputs);
            extra.push({ type: 'bind', source: dir, destination: m.dest });
            break;
          }
          case MountType.TMPFS:
            extra.push({
              type: 'tmpfs',
              destination: m.dest,
              ...(m.tmpfs?.size ? { size: Number(m.tmpfs.size) } : {}),
            });
            break;
          case MountType.SECRET: {
            const opt = m.secret!;
            const value = this.#env.sessions.secrets[opt.id];
            if (value === undefined) {
              if (opt.optional) break;
              throw errNotFound(`${what}: secret "${opt.id}" not found in the session`);
            }
            const file = path.join(await privateDir(), randomBytes(8).toString('hex'));
            await fs.writeFile(file, value, { mode: 0o600 });
            await fs.chown(file, opt.uid, opt.gid);
            await fs.chmod(file, opt.mode & 0o7777 || 0o400);
            extra.push({ type: 'bind', source: file, destination: m.dest, readonly: true });
            break;
          }
          case MountType.SSH: {
            const opt = m.ssh!;
            const sessions = this.#env.sessions;
            const sock = sessions.sshAgents?.[opt.id] ?? sessions.ssh;
            if (!sock) {
              if (opt.optional) break;
              throw errNotFound(`${what}: no ssh agent socket in the session for id "${opt.id}"`);
            }
            const st = await lstatMaybe(sock);
            if (!st?.isSocket()) {
              if (opt.optional) break;
              throw errNotFound(`${what}: ssh agent socket "${sock}" for id "${opt.id}" is not a socket`);
            }
            const fwd = await forwardSocket(
              path.join(await privateDir(), randomBytes(8).toString('hex')),
              sock,
              {
                uid: opt.uid,
                gid: opt.gid,
                mode: opt.mode || 0o600,
              },
            );
            forwards.push(fwd);
            extra.push({ type: 'bind', source: fwd.path, destination: m.dest });
            break;
          }
          default:
            throw new KilnError('InvalidArgument', `${what}: unsupported mount type ${m.type}`);
        }
      }
      if (!rootfs) throw new KilnError('InvalidArgument', 'exec has no root mount');
      // BuildKit's default (sandbox) network has connectivity; until Kiln has an isolated
      // network with its own namespace and NAT, sandbox runs on the host network.
      const network = this.#op.network === NetworkMode.NONE ? 'none' : 'host';
      const { spec } = await generateSpec({
        rootfs,
        readonlyRootfs: readonlyRoot,
        args: [...meta.args],
        env: [...meta.env, ...secretEnv],
        cwd: meta.cwd || '/',
        user: meta.user,
        network,
        ...(meta.hostname ? { hostname: meta.hostname } : {}),
        filesDir: bundle,
        mounts: extra,
      });
      if (meta.extraHosts.length > 0) {
        const hostsMount = spec.mounts.find((m) => m.destination === '/etc/hosts');
        const base = hostsMount ? await fs.readFile(hostsMount.source, 'utf8').catch(() => '') : '';
        const file = path.join(bundle, 'hosts.extra');
        const lines = meta.extraHosts.map((h) => `${h.ip}\t${h.host}\n`).join('');
        await writeFileAtomic(file, `${base}${base.endsWith('\n') || base === '' ? '' : '\n'}${lines}`);
        if (hostsMount) {
          hostsMount.source = file;
          hostsMount.options = ['rbind', 'rprivate', 'ro'];
        }
      }
      await writeSpec(bundle, spec);
      const stubs = await missingMountPoints(
        rootfs,
        spec.mounts.map((m) => m.destination),
      );
      const runtime = await this.#env.runtime();
      const sink = (stream: 1 | 2): Writable =>
        new Writable({
          write(chunk: Buffer, _enc, cb) {
            ctx.progress.log(stream, new Uint8Array(chunk));
            cb();
          },
        });
      const res = await runtime.run(bundle, {
        id: `kiln-exec-${randomBytes(6).toString('hex')}`,
        stdout: sink(1),
        stderr: sink(2),
        signal: ctx.signal,
      });
      const valid = meta.validExitCodes.length > 0 ? meta.validExitCodes : [0];
      // A process that could not be started is the OCI runtime's failure, exit code 1 (as in
      // BuildKit), not the 126/127 `docker run` reports.
      const exitCode = res.startError ? 1 : res.exitCode;
      if (!valid.includes(exitCode)) {
        const why = res.startError ? `: ${res.startError}` : '';
        throw new KilnError(
          res.startError || exitCode === 127 || exitCode === 126 ? 'NotFound' : 'Internal',
          `process "${this.command}" did not complete successfully: exit code ${exitCode}${why}`,
        );
      }
      await removeStubs(rootfs, stubs);
      // Unmount before committing: outputs are read through their snapshots from now on.
      for (const f of forwards.splice(0)) await f.close();
      if (secretsDir) await unmountAll(secretsDir);
      const byIndex = [...outputs].sort((a, b) => a.index - b.index);
      for (const o of byIndex) {
        await session.unmount(o.dir);
        results.push(await session.commitResult(o.key, this.#digest));
      }
      return results;
    } catch (err) {
      await Promise.all(results.map((r) => r.release()));
      throw err;
    } finally {
      for (const r of releases.reverse()) r();
      for (const f of forwards) await f.close().catch(() => {});
      if (secretsDir || bundleTmpfs) await unmountAll(bundle).catch(noteLeftover);
      await session.close();
      // Refused (and left for recovery) if the secrets tmpfs could not be unmounted.
      await removeTree(bundle).catch(noteLeftover);
    }
  }
}
