/**
 * File-system helpers shared by the ops, all scoped to a root directory (a
 * mounted snapshot) the way a container sees it:
 *
 * - `resolveInRoot(root, p, followLast)`: the host path of container path
 *   `p`, following symlinks as if `root` were `/` (an absolute link target
 *   restarts at the root, `..` never climbs above it). Missing components
 *   are kept as they are. More than 255 links: InvalidArgument.
 * - `copyEntry(src, dst, opts)`: copies one tree (file, directory, symlink,
 *   fifo, device) with modes, owners, timestamps and xattrs; hard links
 *   between files of the same copy stay hard links (`opts.links`); an
 *   existing destination directory is merged into, any other existing
 *   destination is replaced. `filter(rel, isDir)` can skip paths. The
 *   entries of a directory are copied concurrently (COPY_CONCURRENCY), its
 *   own metadata is set after all of them.
 * - `resolveOwner(root, chown)`: a ChownOpt to numeric ids, names looked up
 *   in `root`'s /etc/passwd and /etc/group.
 *
 * Limits: sockets are skipped; xattrs that cannot be set (e.g. `trusted.*`
 * on some filesystems) are ignored, as are xattrs on symlinks.
 */
import { constants, type BigIntStats, lstatSync, type Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { errInvalidArgument, errNotFound, isErrno, wrap } from '../core/errors.ts';
import { resolveInRoot } from '../core/fs/safe.ts';
import { lutimesNs, native } from '../core/native/index.ts';
import { readUserDb } from '../core/runtime/user.ts';
import type { ChownOpt } from '../gen/kiln/llb/v1/llb_pb.ts';

/** Host path of `p` inside `root` (shared with the core: ../core/fs/safe.ts). */
export { resolveInRoot };

export async function lstatMaybe(p: string): Promise<BigIntStats | undefined> {
  try {
    return await fs.lstat(p, { bigint: true });
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

export interface CopyOptions {
  /** uid/gid for every copied entry; absent keeps the source's. */
  owner?: { uid: number; gid: number };
  /** Permission bits for every copied entry except symlinks; absent keeps the source's. */
  mode?: number;
  /** mtime/atime for every copied entry, in seconds; absent keeps the source's. */
  timestamp?: number;
  /** Follow a symlink at the top of the copy. */
  followTop?: boolean;
  /** Is this path (relative to the copy's top, '' for the top) selected? Default: all. */
  filter?: (rel: string, isDir: boolean) => boolean;
  /** For a directory the filter did not select: may something below it be selected? Default false. */
  descend?: (rel: string) => boolean;
  /** Hard link tracking (dev:ino → copied path), shared across one copy action. */
  links?: Map<string, string>;
  signal?: AbortSignal;
}

function copyXattrs(src: string, dst: string): void {
  const n = native();
  let names: string[];
  try {
    names = n.llistxattr(src);
  } catch {
    return;
  }
  for (const name of names) {
    try {
      const v = n.lgetxattr(src, name);
      if (v) n.lsetxattr(dst, name, v, 0);
    } catch {
      // not supported on the destination (see the module comment)
    }
  }
}

async function setMeta(dst: string, st: BigIntStats, opts: CopyOptions, isLink: boolean): Promise<void> {
  const uid = opts.owner?.uid ?? Number(st.uid);
  const gid = opts.owner?.gid ?? Number(st.gid);
  await fs.lchown(dst, uid, gid);
  if (!isLink) {
    const perm = opts.mode !== undefined ? opts.mode : Number(st.mode) & 0o7777;
    await fs.chmod(dst, perm);
  }
  if (opts.timestamp !== undefined) await fs.lutimes(dst, opts.timestamp, opts.timestamp);
  else lutimesNs(dst, st.atimeNs, st.mtimeNs);
}

const noop = async (): Promise<void> => {};

/**
 * Entries of one directory copied at once. A copy is a sequence of small
 * syscalls per entry (lstat, copy, chown, chmod, utimes, xattrs), each a
 * thread-pool round trip: copying siblings concurrently keeps the pool busy
 * instead of waiting on one entry at a time.
 */
const COPY_CONCURRENCY = 8;

/** Copies of hard-linked files in flight, per `links` map (dev:ino → promise). */
const copyingLinks = new WeakMap<Map<string, string>, Map<string, Promise<void>>>();

/**
 * Runs `fn` over `items`, at most `limit` at a time; after a failure no new
 * item starts, the running ones are awaited, and the first error is thrown
 * (nothing is left running when it returns).
 */
async function forEachLimit<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | undefined;
  const lane = async (): Promise<void> => {
    while (!failure && next < items.length) {
      const item = items[next++] as T;
      try {
        await fn(item);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (failure) throw failure.err;
}

/**
 * Whether something exists at `p` (not following a last symlink), without
 * the cost of a thrown ENOENT: a copy asks this of every destination path,
 * which is almost always absent.
 */
function lstatQuiet(p: string): Stats | undefined {
  try {
    return lstatSync(p, { throwIfNoEntry: false });
  } catch (err) {
    if (isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

/**
 * Copies `src` to `dst` (see the module comment). Returns whether anything
 * was created (false when the filter selected nothing).
 */
export async function copyEntry(
  src: string,
  dst: string,
  opts: CopyOptions,
  rel = '',
  ensureParent: () => Promise<void> = noop,
): Promise<boolean> {
  opts.signal?.throwIfAborted();
  let st = await fs.lstat(src, { bigint: true });
  if (st.isSymbolicLink() && rel === '' && opts.followTop) st = await fs.stat(src, { bigint: true });
  const isDir = st.isDirectory();
  const selected = !opts.filter || opts.filter(rel, isDir);
  if (isDir) {
    if (!selected && !(opts.descend?.(rel) ?? false)) return false;
    // Memoized: children copied concurrently may all ask for it at once.
    let made: Promise<void> | undefined;
    const ensureSelf = (): Promise<void> =>
      (made ??= (async () => {
        await ensureParent();
        const existing = lstatQuiet(dst);
        if (!existing?.isDirectory()) {
          if (existing) await fs.rm(dst, { recursive: true, force: true });
          await fs.mkdir(dst);
        }
      })());
    if (selected) await ensureSelf();
    await forEachLimit((await fs.readdir(src)).sort(), COPY_CONCURRENCY, (name) => {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      return copyEntry(path.join(src, name), path.join(dst, name), opts, childRel, ensureSelf);
    });
    if (!made) return false;
    await made;
    await setMeta(dst, st, opts, false);
    copyXattrs(src, dst);
    return true;
  }
  if (!selected) return false;
  if (st.isSocket()) return false;
  await ensureParent();
  if (lstatQuiet(dst)) await fs.rm(dst, { recursive: true, force: true });
  if (st.isSymbolicLink()) {
    await fs.symlink(await fs.readlink(src), dst);
    await setMeta(dst, st, opts, true);
    return true;
  }
  if (st.isFile()) {
    const links = st.nlink > 1n ? opts.links : undefined;
    if (links) {
      const key = `${st.dev}:${st.ino}`;
      let pending = copyingLinks.get(links);
      if (!pending) {
        pending = new Map();
        copyingLinks.set(links, pending);
      }
      // Another link to this inode being copied concurrently: wait, then link to it.
      for (let p = pending.get(key); p; p = pending.get(key)) await p.catch(() => {});
      const linked = links.get(key);
      if (linked !== undefined) {
        await fs.link(linked, dst);
        return true;
      }
      const copying = fs.copyFile(src, dst, constants.COPYFILE_FICLONE).then(() => {
        links.set(key, dst);
      });
      pending.set(key, copying);
      try {
        await copying;
      } finally {
        pending.delete(key);
      }
    } else await fs.copyFile(src, dst, constants.COPYFILE_FICLONE);
  } else if (st.isFIFO()) {
    native().mknod(dst, 0o010000 | (Number(st.mode) & 0o7777), 0, 0);
  } else {
    const rdev = Number(st.rdev);
    const major = Math.floor(rdev / 256) & 0xfff;
    const minor = (rdev & 0xff) | ((Math.floor(rdev / 4096) >>> 0) & ~0xff);
    const type = st.isCharacterDevice() ? 0o020000 : 0o060000;
    native().mknod(dst, type | (Number(st.mode) & 0o7777), major, minor);
  }
  await setMeta(dst, st, opts, false);
  copyXattrs(src, dst);
  return true;
}

/** Numeric owner for a ChownOpt, names resolved in `root`'s user databases. */
export async function resolveOwner(
  root: string,
  chown: ChownOpt | undefined,
): Promise<{ uid: number; gid: number } | undefined> {
  if (!chown?.user?.user.case && !chown?.group?.user.case) return undefined;
  const db = await readUserDb(root);
  let uid = 0;
  let gid = 0;
  const u = chown.user?.user;
  if (u?.case === 'id') {
    uid = u.value;
    gid = u.value;
  } else if (u?.case === 'name') {
    const e = db.passwd.find((p) => p.name === u.value);
    if (!e) throw errNotFound(`resolve owner "${u.value}": no such user in /etc/passwd`);
    uid = e.uid;
    gid = e.gid;
  }
  const g = chown.group?.user;
  if (g?.case === 'id') gid = g.value;
  else if (g?.case === 'name') {
    const e = db.groups.find((x) => x.name === g.value);
    if (!e) throw errNotFound(`resolve group "${g.value}": no such group in /etc/group`);
    gid = e.gid;
  }
  return { uid, gid };
}

/** mkdir -p inside a root, new directories 0755 owned by `owner` (or root). */
export async function mkdirAllInRoot(
  root: string,
  p: string,
  owner?: { uid: number; gid: number },
  mode = 0o755,
): Promise<string> {
  const parts = p.split('/').filter((c) => c !== '' && c !== '.');
  let cur = '/';
  for (const part of parts) {
    cur = path.posix.join(cur, part);
    const host = await resolveInRoot(root, cur);
    const st = await lstatMaybe(host);
    if (st?.isDirectory()) continue;
    if (st) throw errInvalidArgument(`mkdir "${p}": "${cur}" exists and is not a directory`);
    try {
      await fs.mkdir(host, { mode });
      await fs.chmod(host, mode);
      if (owner) await fs.lchown(host, owner.uid, owner.gid);
    } catch (err) {
      throw wrap(err, `mkdir "${cur}"`);
    }
  }
  return resolveInRoot(root, p);
}
