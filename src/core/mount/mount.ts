/**
 * Mounting the Mount lists that snapshotters return (../snapshots/types.ts).
 *
 * - `mountAll(mounts, target)` mounts each entry in order on `target` (or on
 *   `target/<m.target>`): bind/rbind (read-only through a bind remount, as
 *   the kernel ignores MS_RDONLY on the first bind), overlay, and any other
 *   filesystem type (tmpfs, proc, ...) through mount(2) with the usual
 *   mount(8) flag names. Overlay options use the standard `lowerdir=a:b:c`
 *   form (`\:` and `\,` escape those characters in paths); when the option
 *   string does not fit in mount(2)'s one page, the overlay is made with the
 *   native `mountOverlay` (one `lowerdir+` per layer). On failure, whatever
 *   this call mounted is unmounted again.
 * - `unmountAll(target)` unmounts everything at or below `target`, children
 *   first, from /proc/self/mountinfo; EBUSY is retried for about two seconds,
 *   then the mount is detached (MNT_DETACH).
 * - `withTempMount(mounts, fn)` mounts into a fresh directory
 *   `<root>/m-<pid>-XXXXXX` (root: `setTempMountRoot`, default
 *   `$TMPDIR/kiln-mounts`), runs fn, and always unmounts and removes the
 *   directory. Active temp mounts are kept in a registry that is unmounted
 *   synchronously on process exit and on SIGINT/SIGTERM/SIGHUP; a signal is
 *   re-raised after cleanup unless the application has its own listener for
 *   it (then the application decides, and the exit hook cleans up).
 *
 * Limits: Linux, root (or CAP_SYS_ADMIN in the mount namespace); `ro` on an
 * rbind makes only the top mount read-only, not submounts it carried along
 * (no mount_setattr(AT_RECURSIVE) in the addon); a relative
 * `target` of a Mount must not contain `..` and is checked not to resolve
 * outside `target` through symlinks (checked, then mounted: not race-free
 * against a concurrent writer of the tree).
 */
import { readdirSync, rmdirSync } from 'node:fs';
import { mkdir, mkdtemp, realpath, rmdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { errInvalidArgument, errUnavailable, isErrno, wrap } from '../errors.ts';
import { MNT, MS, native } from '../native/index.ts';
import { isAtOrBelow, mountsUnder, readMountinfoSync } from './mountinfo.ts';
import { noteLeftover } from '../lock.ts';

/** One mount, as mount(8) would take it; snapshotters return lists of these. */
export interface Mount {
  /** 'bind', 'overlay', 'tmpfs', ... */
  type: string;
  source: string;
  /** Relative path below the mount target; '' or undefined for the target itself. */
  target?: string;
  /** mount(8)-style options: 'ro', 'rbind', 'lowerdir=…', 'upperdir=…', 'workdir=…', ... */
  options: string[];
}

const MS_EXTRA = {
  SYNCHRONOUS: 0x10,
  MANDLOCK: 0x40,
  DIRSYNC: 0x80,
  NODIRATIME: 0x800,
  UNBINDABLE: 1 << 17,
  RELATIME: 1 << 21,
  STRICTATIME: 1 << 24,
} as const;

/** mount(8) flag options: [set?, flag]. */
const FLAG_OPTIONS: Record<string, [boolean, number]> = {
  ro: [true, MS.RDONLY],
  rw: [false, MS.RDONLY],
  nosuid: [true, MS.NOSUID],
  suid: [false, MS.NOSUID],
  nodev: [true, MS.NODEV],
  dev: [false, MS.NODEV],
  noexec: [true, MS.NOEXEC],
  exec: [false, MS.NOEXEC],
  noatime: [true, MS.NOATIME],
  atime: [false, MS.NOATIME],
  nodiratime: [true, MS_EXTRA.NODIRATIME],
  diratime: [false, MS_EXTRA.NODIRATIME],
  relatime: [true, MS_EXTRA.RELATIME],
  norelatime: [false, MS_EXTRA.RELATIME],
  strictatime: [true, MS_EXTRA.STRICTATIME],
  sync: [true, MS_EXTRA.SYNCHRONOUS],
  async: [false, MS_EXTRA.SYNCHRONOUS],
  dirsync: [true, MS_EXTRA.DIRSYNC],
  mand: [true, MS_EXTRA.MANDLOCK],
  nomand: [false, MS_EXTRA.MANDLOCK],
  defaults: [false, 0],
};

const PROPAGATION: Record<string, number> = {
  private: MS.PRIVATE,
  rprivate: MS.PRIVATE | MS.REC,
  shared: MS.SHARED,
  rshared: MS.SHARED | MS.REC,
  slave: MS.SLAVE,
  rslave: MS.SLAVE | MS.REC,
  unbindable: MS_EXTRA.UNBINDABLE,
  runbindable: MS_EXTRA.UNBINDABLE | MS.REC,
};

/** Flags that a bind remount can change on one mount. */
const PER_MOUNT =
  MS.RDONLY |
  MS.NOSUID |
  MS.NODEV |
  MS.NOEXEC |
  MS.NOATIME |
  MS_EXTRA.NODIRATIME |
  MS_EXTRA.RELATIME |
  MS_EXTRA.STRICTATIME;

/** mount(2) copies at most one page of option data, NUL included. */
const MAX_OPTION_BYTES = 4095;

interface ParsedOptions {
  flags: number;
  propagation: number[];
  bind: boolean;
  recursive: boolean;
  data: string[];
}

function parseOptions(options: string[]): ParsedOptions {
  const out: ParsedOptions = { flags: 0, propagation: [], bind: false, recursive: false, data: [] };
  for (const o of options) {
    if (o === 'bind' || o === 'rbind') {
      out.bind = true;
      out.recursive ||= o === 'rbind';
      continue;
    }
    const f = FLAG_OPTIONS[o];
    if (f) {
      out.flags = f[0] ? out.flags | f[1] : out.flags & ~f[1];
      continue;
    }
    const p = PROPAGATION[o];
    if (p !== undefined) {
      out.propagation.push(p);
      continue;
    }
    out.data.push(o);
  }
  return out;
}

/** Escapes a path for overlay's `lowerdir=a:b` / `upperdir=` option syntax. */
export function escapeOverlayPath(p: string): string {
  return p.replace(/[\\:,]/g, (c) => `\\${c}`);
}

/** Splits an overlay `lowerdir` value into paths, honouring `\` escapes. */
export function splitLowerdir(value: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && i + 1 < value.length) {
      cur += value[++i];
    } else if (c === ':') {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out.filter((s) => s !== '');
}

/** An overlay mount's `lowerdir` list, topmost first: [] without one, undefined for `lowerdir+` chains. */
function overlayLowerdirs(m: Mount): string[] | undefined {
  if (m.options.some((o) => o.startsWith('lowerdir+='))) return undefined;
  const lo = m.options.find((o) => o.startsWith('lowerdir='));
  return lo === undefined ? [] : splitLowerdir(lo.slice('lowerdir='.length));
}

/**
 * The directories a read-only view shows, topmost first: a bind mount's
 * source, or the `lowerdir` list of an overlay without upperdir (none for
 * other shapes, e.g. `lowerdir+` chains).
 */
export function snapshotLayerDirs(view: Mount[]): string[] | undefined {
  if (view.length !== 1) return undefined;
  const m = view[0]!;
  if (m.type === 'bind') return [m.source];
  if (m.type !== 'overlay' || m.options.some((o) => o.startsWith('upperdir='))) return undefined;
  const dirs = overlayLowerdirs(m);
  return dirs?.length ? dirs : undefined;
}

/** The own directory of a snapshot, from the mounts of a view of it: the topmost of its layer directories. */
export function snapshotOwnDir(view: Mount[]): string | undefined {
  return snapshotLayerDirs(view)?.[0];
}

/** The lower directories of an active snapshot's overlay, topmost first ([] for a bind mount). */
export function snapshotLowerDirs(active: Mount[]): string[] | undefined {
  if (active.length !== 1) return undefined;
  const m = active[0]!;
  if (m.type === 'bind') return [];
  return m.type === 'overlay' ? overlayLowerdirs(m) : undefined;
}

/** The directory an active snapshot writes to: its overlay's upperdir, or its bind mount's source (no parent). */
export function snapshotUpperDir(active: Mount[]): string | undefined {
  if (active.length !== 1) return undefined;
  const m = active[0]!;
  if (m.type === 'bind') return m.source;
  if (m.type !== 'overlay') return undefined;
  const up = m.options.find((o) => o.startsWith('upperdir='));
  return up === undefined ? undefined : unescapeOverlayValue(up.slice('upperdir='.length));
}

function unescapeOverlayValue(value: string): string {
  return value.replace(/\\(.)/g, '$1');
}

function mountOverlay(m: Mount, dest: string, opts: ParsedOptions, made: string[]): void {
  const data = opts.data.join(',');
  if (Buffer.byteLength(data) <= MAX_OPTION_BYTES) {
    native().mount(m.source || 'overlay', dest, 'overlay', opts.flags, data);
    made.push(dest);
    return;
  }
  let lowers: string[] = [];
  let upper: string | null = null;
  let work: string | null = null;
  const rest: string[] = [];
  for (const o of opts.data) {
    if (o.startsWith('lowerdir=')) lowers = splitLowerdir(o.slice('lowerdir='.length));
    else if (o.startsWith('upperdir=')) upper = unescapeOverlayValue(o.slice('upperdir='.length));
    else if (o.startsWith('workdir=')) work = unescapeOverlayValue(o.slice('workdir='.length));
    else rest.push(o);
  }
  try {
    native().mountOverlay(dest, lowers, upper, work, rest, (opts.flags & MS.RDONLY) !== 0);
  } catch (err) {
    throw wrap(
      err,
      `mount overlay on "${dest}" with ${lowers.length} lower layers (options too long for mount(2), lowerdir+ failed)`,
    );
  }
  made.push(dest);
  // fsmount only set read-only; apply the other per-mount flags by remount.
  if ((opts.flags & PER_MOUNT & ~MS.RDONLY) !== 0) {
    native().mount(null, dest, null, MS.REMOUNT | MS.BIND | (opts.flags & PER_MOUNT), null);
  }
}

/** Mounts `m` on `dest`; `dest` is pushed to `made` as soon as the mount exists (a later step may still fail). */
function mountOne(m: Mount, dest: string, made: string[]): void {
  const opts = parseOptions(m.options);
  if (m.type === 'bind' || opts.bind) {
    native().mount(m.source, dest, null, MS.BIND | (opts.recursive ? MS.REC : 0), null);
    made.push(dest);
    if ((opts.flags & PER_MOUNT) !== 0) {
      native().mount(null, dest, null, MS.REMOUNT | MS.BIND | (opts.flags & PER_MOUNT), null);
    }
  } else if (m.type === 'overlay') {
    mountOverlay(m, dest, opts, made);
  } else {
    native().mount(
      m.source || m.type,
      dest,
      m.type,
      opts.flags,
      opts.data.length ? opts.data.join(',') : null,
    );
    made.push(dest);
  }
  for (const p of opts.propagation) native().mount(null, dest, null, p, null);
}

async function resolveDest(target: string, sub: string | undefined): Promise<string> {
  if (!sub || sub === '' || sub === '.' || sub === '/') return target;
  const parts = sub.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.includes('..')) throw errInvalidArgument(`mount target "${sub}" must not contain ".."`);
  const dest = path.join(target, ...parts);
  await mkdir(dest, { recursive: true });
  const [realDest, realTarget] = await Promise.all([realpath(dest), realpath(target)]);
  if (!isAtOrBelow(realDest, realTarget)) {
    throw errInvalidArgument(`mount target "${sub}" resolves outside "${target}" (to "${realDest}")`);
  }
  return realDest;
}

/** Mounts `mounts` in order on `target`; on failure unmounts what it mounted and throws. */
export async function mountAll(mounts: Mount[], target: string): Promise<void> {
  // Where each mount was made, newest last: a failure unmounts exactly those, newest first
  // (mounts stacked on one path come off in turn), and no mountinfo is read when all succeed.
  const made: string[] = [];
  for (const m of mounts) {
    try {
      mountOne(m, await resolveDest(target, m.target), made);
    } catch (err) {
      for (const p of made.reverse()) await unmountPath(p).catch(noteLeftover);
      throw wrap(err, `mount ${m.type} "${m.source}" on "${path.join(target, m.target ?? '')}"`);
    }
  }
}

type Attempt = 'ok' | 'busy' | 'gone';

function tryUnmount(p: string, flags: number): Attempt {
  try {
    native().umount2(p, flags);
    return 'ok';
  } catch (err) {
    if (isErrno(err, 'EBUSY')) return 'busy';
    if (isErrno(err, 'EINVAL') || isErrno(err, 'ENOENT')) return 'gone';
    throw wrap(err, `unmount "${p}"`);
  }
}

const BUSY_RETRIES = 8;
const busyDelay = (attempt: number): number => 10 * 2 ** Math.min(attempt, 6);

async function unmountPath(p: string): Promise<void> {
  for (let attempt = 0; attempt < BUSY_RETRIES; attempt++) {
    if (tryUnmount(p, 0) !== 'busy') return;
    await sleep(busyDelay(attempt));
  }
  tryUnmount(p, MNT.DETACH);
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function unmountPathSync(p: string, retries: number): void {
  for (let attempt = 0; attempt < retries; attempt++) {
    if (tryUnmount(p, 0) !== 'busy') return;
    sleepSync(busyDelay(attempt));
  }
  tryUnmount(p, MNT.DETACH);
}

const MAX_ROUNDS = 64;

/**
 * The common case without reading mountinfo: `target` is a mount point with
 * nothing mounted below it (a container's rootfs). A mount that has mounts
 * below it cannot be unmounted (EBUSY), so when umount2 succeeds until
 * `target` is no mount point any more and the directory left is empty, no
 * mount can remain at or below it. False means: look at mountinfo.
 */
function unmountLeaf(t: string): boolean {
  if (tryUnmount(t, 0) !== 'ok') return false;
  for (let i = 0; i < MAX_ROUNDS; i++) {
    const r = tryUnmount(t, 0);
    if (r === 'busy') return false;
    if (r === 'gone') {
      try {
        return readdirSync(t).length === 0;
      } catch {
        return false;
      }
    }
  }
  return false;
}

/** Unmounts everything at or below `target`, deepest first. */
export async function unmountAll(target: string): Promise<void> {
  const t = path.resolve(target);
  if (unmountLeaf(t)) return;
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const left = mountsUnder(readMountinfoSync(), t);
    if (left.length === 0) return;
    for (const m of left) await unmountPath(m.mountPoint);
  }
  const left = mountsUnder(readMountinfoSync(), t);
  if (left.length > 0) {
    throw errUnavailable(`unmount "${t}": ${left.length} mounts remain (first "${left[0].mountPoint}")`);
  }
}

/** Synchronous unmountAll, for exit and signal handlers; busy mounts are detached sooner. */
export function unmountAllSync(target: string): void {
  const t = path.resolve(target);
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const left = mountsUnder(readMountinfoSync(), t);
    if (left.length === 0) return;
    for (const m of left) unmountPathSync(m.mountPoint, 3);
  }
}

// ---- temporary mounts ----

/** Directory names of temporary mounts: `m-<pid>-XXXXXX`. */
export const TEMP_MOUNT_PATTERN = /^m-(\d+)-[A-Za-z0-9]{6}$/;

// Read when first needed, not at load (TMPDIR of this process; see cli/snapshot.ts).
let tempRoot: string | undefined;

/** Sets the kiln-owned directory that holds temporary mount points (e.g. `<state>/mounts`). */
export function setTempMountRoot(dir: string): void {
  tempRoot = path.resolve(dir);
}

export function tempMountRoot(): string {
  tempRoot ??= path.join(os.tmpdir(), 'kiln-mounts');
  return tempRoot;
}

const activeTemp = new Set<string>();

/** True when `dir` is a temporary mount of this process that is in use. */
export function isActiveTempMount(dir: string): boolean {
  return activeTemp.has(path.resolve(dir));
}

/** Unmounts and removes every registered temporary mount, synchronously. */
export function cleanupTempMountsSync(): void {
  for (const dir of activeTemp) {
    try {
      unmountAllSync(dir);
      rmdirSync(dir);
      activeTemp.delete(dir);
    } catch {
      // Best effort at exit: recoverMounts() handles what is left.
      noteLeftover();
    }
  }
}

let handlersInstalled = false;
const HANDLED_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupTempMountsSync);
  for (const sig of HANDLED_SIGNALS) {
    const handler = (): void => {
      // Someone else handles this signal: let them; the exit hook cleans up.
      if (process.listenerCount(sig) > 1) return;
      cleanupTempMountsSync();
      process.removeListener(sig, handler);
      process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

export interface TempMountOptions {
  /** Parent directory of the temporary mount point; default `tempMountRoot()`. */
  root?: string;
}

/**
 * Mounts `mounts` on a fresh temporary directory, runs `fn(dir)`, then
 * unmounts everything below the directory and removes it, also when fn throws.
 */
export async function withTempMount<T>(
  mounts: Mount[],
  fn: (dir: string) => Promise<T> | T,
  options: TempMountOptions = {},
): Promise<T> {
  const root = path.resolve(options.root ?? tempMountRoot());
  await mkdir(root, { recursive: true, mode: 0o700 });
  installHandlers();
  const dir = await mkdtemp(path.join(root, `m-${process.pid}-`));
  activeTemp.add(dir);
  try {
    await mountAll(mounts, dir);
  } catch (err) {
    await rmdir(dir).catch(noteLeftover);
    activeTemp.delete(dir);
    throw err;
  }
  try {
    return await fn(dir);
  } finally {
    await unmountAll(dir);
    await rmdir(dir);
    activeTemp.delete(dir);
  }
}
