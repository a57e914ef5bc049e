/**
 * The `native` snapshot driver: plain directories, for filesystems without
 * overlay. `prepare` copies the parent's whole tree into the new snapshot's
 * `<root>/snapshots/<id>/fs`; commit only changes metadata. A view does not
 * copy: its mount is a read-only bind of the committed parent (which cannot
 * be removed while the view exists), or of its own empty `fs` without one.
 * Mounts returned: `{ type: 'bind', source, options: ['rbind', 'rw' | 'ro'] }`.
 *
 * `copyTree` preserves file types (regular, directory, symlink, character
 * and block devices, fifos, sockets), mode bits (setuid/setgid/sticky
 * included), owners, xattrs (security.capability, trusted.*, user.*,
 * POSIX ACLs as system.* xattrs), atime/mtime, and hard links within the
 * tree. Limits: timestamps go through a double in seconds (sub-microsecond
 * digits may be lost); sparse files are copied dense unless the filesystem
 * clones them (FICLONE is tried first); usage counts the whole copy, since
 * nothing is shared with the parent.
 */
import { constants } from 'node:fs';
import { chmod, copyFile, link, lchown, lstat, mkdir, readdir, readlink, symlink } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import { wrap } from '../errors.ts';
import { lutimesNs, native } from '../native/index.ts';
import { DirSnapshotter } from './driver.ts';
import type { MetaStore, SnapshotRecord } from './storage.ts';
import type { Mount } from './types.ts';

function devMajor(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}

function devMinor(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}

function copyXattrs(src: string, dst: string): void {
  const n = native();
  for (const name of n.llistxattr(src)) {
    const value = n.lgetxattr(src, name);
    if (value !== null) n.lsetxattr(dst, name, value, 0);
  }
}

async function applyMeta(src: string, dst: string, st: BigIntStats): Promise<void> {
  await lchown(dst, Number(st.uid), Number(st.gid));
  // chown clears setuid/setgid: the mode goes after it, capabilities after both.
  if (!st.isSymbolicLink()) await chmod(dst, Number(st.mode) & 0o7777);
  copyXattrs(src, dst);
}

async function applyTimes(dst: string, st: BigIntStats): Promise<void> {
  // Exact nanoseconds: a copy whose mtime drifted would look changed to the diff service.
  lutimesNs(dst, st.atimeNs, st.mtimeNs);
}

/** Runs at most `n` tasks at a time; a finished task hands its slot to the next waiter. */
function limiter(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async (fn) => {
    if (active < n) active++;
    else await new Promise<void>((resolve) => waiting.push(resolve));
    try {
      return await fn();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else active--;
    }
  };
}

/** Parallel file operations while copying: creating inodes is I/O bound. */
const COPY_CONCURRENCY = 8;

/**
 * Copies the tree at `src` into the existing directory `dst` (whose own
 * metadata is set from `src`), preserving everything listed above.
 */
export async function copyTree(src: string, dst: string): Promise<void> {
  const limit = limiter(COPY_CONCURRENCY);
  // First copy of each multiply-linked inode; later names link to it once it exists.
  const links = new Map<string, Promise<string>>();

  const copyChild = async (cs: string, cd: string): Promise<void> => {
    const cst = await limit(() => lstat(cs, { bigint: true }));
    if (cst.isDirectory()) {
      await limit(() => mkdir(cd, { mode: 0o700 }));
      await copyDir(cs, cd, cst);
      return;
    }
    let made: ((p: string) => void) | undefined;
    let failed: ((e: unknown) => void) | undefined;
    if (cst.nlink > 1n) {
      const key = `${cst.dev}:${cst.ino}`;
      const first = links.get(key);
      if (first !== undefined) {
        const target = await first;
        await limit(() => link(target, cd));
        return;
      }
      const p = new Promise<string>((resolve, reject) => {
        made = resolve;
        failed = reject;
      });
      p.catch(() => {}); // the copy's own error is reported; waiters just stop
      links.set(key, p);
    }
    try {
      await limit(async () => {
        if (cst.isFile()) await copyFile(cs, cd, constants.COPYFILE_FICLONE);
        else if (cst.isSymbolicLink()) await symlink(await readlink(cs), cd);
        else native().mknod(cd, Number(cst.mode), devMajor(cst.rdev), devMinor(cst.rdev));
        await applyMeta(cs, cd, cst);
        await applyTimes(cd, cst);
      });
      made?.(cd);
    } catch (err) {
      failed?.(err);
      throw err;
    }
  };

  const copyDir = async (s: string, d: string, st: BigIntStats): Promise<void> => {
    await limit(() => applyMeta(s, d, st));
    const names = await readdir(s);
    // allSettled: on failure no sibling is still writing when the caller cleans up.
    const results = await Promise.allSettled(
      names.map((name) => copyChild(path.join(s, name), path.join(d, name))),
    );
    const failure = results.find((r) => r.status === 'rejected');
    if (failure) throw failure.reason;
    // Last, as creating the children changed it.
    await applyTimes(d, st);
  };

  try {
    await copyDir(src, dst, await lstat(src, { bigint: true }));
  } catch (err) {
    throw wrap(err, `copy "${src}" to "${dst}"`);
  }
}

export class NativeSnapshotter extends DirSnapshotter {
  readonly name = 'native';

  private constructor(root: string, ms: MetaStore) {
    super(root, ms);
  }

  /** Opens (creating) a driver root, with startup recovery. */
  static async open(root: string): Promise<NativeSnapshotter> {
    const abs = path.resolve(root);
    return new NativeSnapshotter(abs, await DirSnapshotter.openRoot(abs));
  }

  protected async populate(
    dir: string,
    kind: 'active' | 'view',
    parent: SnapshotRecord | undefined,
  ): Promise<void> {
    const fs = path.join(dir, 'fs');
    await mkdir(fs, { mode: 0o755 });
    await chmod(fs, 0o755);
    if (kind === 'active' && parent) await copyTree(this.fsDir(parent.id), fs);
  }

  protected mountsFor(rec: SnapshotRecord): Mount[] {
    if (rec.kind === 'view' && rec.parentId !== undefined) {
      return [{ type: 'bind', source: this.fsDir(rec.parentId), options: ['rbind', 'ro'] }];
    }
    return [
      { type: 'bind', source: this.fsDir(rec.id), options: ['rbind', rec.kind === 'active' ? 'rw' : 'ro'] },
    ];
  }
}
