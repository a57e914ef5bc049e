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
 *   own metadata is set after all of them. Cost per file: the bytes go
 *   through the thread pool (one libuv copyfile: FICLONE, else
 *   copy_file_range, with the source's owner, mode and times); the rest
 *   (lstat, the metadata the copy lacks, xattrs) are synchronous syscalls,
 *   and nothing is looked up in a directory the copy itself created.
 * - `resolveOwner(root, chown)`: a ChownOpt to numeric ids, names looked up
 *   in `root`'s /etc/passwd and /etc/group.
 *
 * Limits: sockets are skipped; xattrs that cannot be set (e.g. `trusted.*`
 * on some filesystems) are ignored, as are xattrs on symlinks.
 */
import {
  type BigIntStats,
  chmodSync,
  constants,
  copyFileSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  rmSync,
  type Stats,
  statSync,
  symlinkSync,
} from 'node:fs';
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
  /**
   * Makes `dst` a hard link of the file that backs `src` instead of a copy
   * (../ops/copylink.ts decides which files qualify); offered only files
   * whose owner, mode and times the copy would keep. False: copied.
   * `fresh`: dst's directory was made by this copy, so nothing is at dst.
   */
  linkFile?: (src: string, dst: string, st: BigIntStats, fresh: boolean) => boolean;
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

/**
 * Owner, mode and times of a copied node, synchronously: each is one cheap
 * syscall, far cheaper than a thread-pool round trip. `created` is the
 * node's stat when it may already have some of them (a file copy: libuv
 * gives the copy the source's owner, mode and times where it can); only
 * what differs is set.
 */
function setMeta(
  dst: string,
  st: BigIntStats,
  opts: CopyOptions,
  isLink: boolean,
  created?: BigIntStats,
): void {
  const uid = opts.owner?.uid ?? Number(st.uid);
  const gid = opts.owner?.gid ?? Number(st.gid);
  const perm = opts.mode !== undefined ? opts.mode : Number(st.mode) & 0o7777;
  const chown = created === undefined || Number(created.uid) !== uid || Number(created.gid) !== gid;
  if (chown) lchownSync(dst, uid, gid);
  // After a chown, which clears set-id bits.
  if (!isLink && (chown || Number(created.mode & 0o7777n) !== perm)) chmodSync(dst, perm);
  if (opts.timestamp !== undefined) lutimesSync(dst, opts.timestamp, opts.timestamp);
  else if (created === undefined || created.mtimeNs !== st.mtimeNs || created.atimeNs !== st.atimeNs)
    lutimesNs(dst, st.atimeNs, st.mtimeNs);
}

/** Would the copy of a node with stat `st` keep its owner, mode and times? */
function keepsMeta(st: BigIntStats, opts: CopyOptions): boolean {
  if (opts.timestamp !== undefined) return false;
  if (opts.mode !== undefined && opts.mode !== Number(st.mode & 0o7777n)) return false;
  return !opts.owner || (opts.owner.uid === Number(st.uid) && opts.owner.gid === Number(st.gid));
}

/**
 * Entries of one directory copied at once. Everything but the copy of a
 * file's bytes is a synchronous syscall on the calling thread; the bytes go
 * through the thread pool (copy_file_range, FICLONE first), so copying
 * siblings concurrently keeps the pool busy on both the kernel's and the
 * disk's side.
 */
const COPY_CONCURRENCY = 16;

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
 * the cost of a thrown ENOENT.
 */
function lstatQuiet(p: string): Stats | undefined {
  try {
    return lstatSync(p, { throwIfNoEntry: false });
  } catch (err) {
    if (isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

/** The destination directory an entry is copied into, made on first need. */
interface DestDir {
  /** Makes sure the directory (and its parents) exist. */
  ensure(): void;
  /** Made by this copy: nothing is in it that the copy did not put there. */
  readonly fresh: boolean;
}

const EXISTING_DIR: DestDir = { ensure() {}, fresh: false };

/**
 * Copies `src` to `dst` (see the module comment). Returns whether anything
 * was created (false when the filter selected nothing). `rel` is `src`'s
 * path relative to the copy's top as the filter sees it ('' for the top).
 */
export async function copyEntry(src: string, dst: string, opts: CopyOptions, rel = ''): Promise<boolean> {
  return copyNode(src, dst, opts, rel, EXISTING_DIR);
}

async function copyNode(
  src: string,
  dst: string,
  opts: CopyOptions,
  rel: string,
  parent: DestDir,
): Promise<boolean> {
  opts.signal?.throwIfAborted();
  let st = lstatSync(src, { bigint: true });
  if (st.isSymbolicLink() && rel === '' && opts.followTop) st = statSync(src, { bigint: true });
  const isDir = st.isDirectory();
  const selected = !opts.filter || opts.filter(rel, isDir);
  if (isDir) {
    if (!selected && !(opts.descend?.(rel) ?? false)) return false;
    let made = false;
    let fresh = false;
    const self: DestDir = {
      ensure() {
        if (made) return;
        parent.ensure();
        const existing = parent.fresh ? undefined : lstatQuiet(dst);
        if (!existing?.isDirectory()) {
          if (existing) rmSync(dst, { recursive: true, force: true });
          mkdirSync(dst);
          fresh = true;
        }
        made = true;
      },
      get fresh() {
        return fresh;
      },
    };
    if (selected) self.ensure();
    await forEachLimit(readdirSync(src).sort(), COPY_CONCURRENCY, (name) => {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      return copyNode(path.join(src, name), path.join(dst, name), opts, childRel, self);
    });
    if (!made) return false;
    setMeta(dst, st, opts, false);
    copyXattrs(src, dst);
    return true;
  }
  if (!selected) return false;
  if (st.isSocket()) return false;
  parent.ensure();
  if (!parent.fresh && lstatQuiet(dst)) rmSync(dst, { recursive: true, force: true });
  if (st.isSymbolicLink()) {
    symlinkSync(readlinkSync(src), dst);
    setMeta(dst, st, opts, true);
    return true;
  }
  if (st.isFile()) {
    if (opts.linkFile && keepsMeta(st, opts) && opts.linkFile(src, dst, st, parent.fresh)) return true;
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
        linkSync(linked, dst);
        return true;
      }
      const copying = copyBytes(src, dst, st).then(() => {
        links.set(key, dst);
      });
      pending.set(key, copying);
      try {
        await copying;
      } finally {
        pending.delete(key);
      }
    } else await copyBytes(src, dst, st);
    setMeta(dst, st, opts, false, lstatSync(dst, { bigint: true }));
    copyXattrs(src, dst);
    return true;
  } else if (st.isFIFO()) {
    native().mknod(dst, 0o010000 | (Number(st.mode) & 0o7777), 0, 0);
  } else {
    const rdev = Number(st.rdev);
    const major = Math.floor(rdev / 256) & 0xfff;
    const minor = (rdev & 0xff) | ((Math.floor(rdev / 4096) >>> 0) & ~0xff);
    const type = st.isCharacterDevice() ? 0o020000 : 0o060000;
    native().mknod(dst, type | (Number(st.mode) & 0o7777), major, minor);
  }
  setMeta(dst, st, opts, false);
  copyXattrs(src, dst);
  return true;
}

/**
 * A regular file's bytes (libuv copyfile: open, FICLONE, else
 * copy_file_range) through the thread pool; an empty file on the calling
 * thread, where the round trip would cost more than the copy.
 */
async function copyBytes(src: string, dst: string, st: BigIntStats): Promise<void> {
  if (st.size === 0n) copyFileSync(src, dst, constants.COPYFILE_FICLONE);
  else await fs.copyFile(src, dst, constants.COPYFILE_FICLONE);
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
