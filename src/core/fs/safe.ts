/**
 * File-system operations that must never reach outside the tree they are
 * meant for: the host around a rootfs, a bind-mounted host directory, a
 * device node given as an output path.
 *
 * - `resolveInRoot(root, p, followLast)`: the host path of container path
 *   `p`, following symlinks as if `root` were `/` (an absolute target
 *   restarts at root, `..` never climbs above it); the result is always
 *   `root` or below it. More than 255 links: InvalidArgument.
 * - `realDirsBelow(root, rel)`: true when every component of `rel` below
 *   `root` that exists is a real directory (no symlink), so a path joined
 *   from them cannot lead out of root (checked, then used: the caller must
 *   not race a writer of the tree).
 * - `mountsAtOrBelow(p)`: mount points (from /proc/self/mountinfo) at or
 *   below `p` (symlinks in `p` resolved).
 * - `removeTree(p)`: `rm -rf` that never follows a symlink (the top one is
 *   removed itself) and never crosses a mount: a directory with anything
 *   mounted at or below it is refused with FailedPrecondition, nothing
 *   removed. Missing: nothing to do.
 * - `openOutputFile(file)` / `writeOutputFile(file, fill)`: write a
 *   user-given output path (an export tar, an --iidfile). A
 *   missing path or a regular file is written crash-safely (temp file in the
 *   same directory, fsync, rename); a symlink is followed to its target
 *   (the link is kept); an existing non-regular file (a character device
 *   such as /dev/null, a FIFO) is written in place and never replaced; a
 *   directory is InvalidArgument.
 *
 * Limits: checks are made before acting (Node has no openat2/unlinkat with
 * RESOLVE_IN_ROOT): a concurrent writer of the tree can race them. Mount
 * checks see this process's mount namespace only.
 */
import { randomBytes } from 'node:crypto';
import { constants, lstatSync, readlinkSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { errFailedPrecondition, errInvalidArgument, isErrno, wrap } from '../errors.ts';
import { canonicalPath, isAtOrBelow, readMountinfoSync } from '../mount/mountinfo.ts';

const MAX_LINKS = 255;

/** True when `p` is `root` or below it (lexically, both made absolute). */
export function isWithin(p: string, root: string): boolean {
  return isAtOrBelow(p, root);
}

// One lstat per path component, on the calling thread: microseconds in the kernel, where a
// thread-pool round trip costs ~0.1 ms (a container start resolves a dozen paths).
function readlinkMaybe(p: string): string | undefined {
  try {
    const st = lstatSync(p, { throwIfNoEntry: false });
    return st?.isSymbolicLink() ? readlinkSync(p) : undefined;
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

/** Host path of container path `p` inside `root` (see the module comment). */
export async function resolveInRoot(root: string, p: string, followLast = true): Promise<string> {
  let pending = p.split('/').filter((c) => c !== '' && c !== '.');
  const cur: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const comp = pending.shift()!;
    if (comp === '..') {
      cur.pop();
      continue;
    }
    if (pending.length === 0 && !followLast) {
      cur.push(comp);
      break;
    }
    const target = readlinkMaybe(path.join(root, ...cur, comp));
    if (target === undefined) {
      cur.push(comp);
      continue;
    }
    if (++links > MAX_LINKS) throw errInvalidArgument(`resolve "${p}": too many levels of symbolic links`);
    if (target.startsWith('/')) cur.length = 0;
    pending = [...target.split('/').filter((c) => c !== '' && c !== '.'), ...pending];
  }
  return path.join(root, ...cur);
}

/** True when each existing component of `rel` below `root` is a real directory (see the module comment). */
export async function realDirsBelow(root: string, rel: string): Promise<boolean> {
  let cur = path.resolve(root);
  for (const c of rel.split('/').filter((x) => x !== '' && x !== '.')) {
    if (c === '..') return false;
    cur = path.join(cur, c);
    let st: import('node:fs').Stats;
    try {
      st = await fs.lstat(cur);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return true;
      throw err;
    }
    if (!st.isDirectory()) return false;
  }
  return true;
}

/** Mount points at or below `p` (see the module comment). */
export async function mountsAtOrBelow(p: string): Promise<string[]> {
  const target = canonicalPath(p);
  // One small procfs read: on the calling thread (a thread-pool read costs more in round trips).
  return readMountinfoSync()
    .map((m) => m.mountPoint)
    .filter((mp) => isAtOrBelow(mp, target));
}

/** rm -rf that neither follows symlinks nor crosses mounts (see the module comment). */
export async function removeTree(p: string): Promise<void> {
  const abs = path.resolve(p);
  let st: import('node:fs').Stats;
  try {
    st = await fs.lstat(abs);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw wrap(err, `remove "${abs}"`);
  }
  if (st.isDirectory()) {
    // canonicalPath resolves symlinks in the parents; `abs` itself is a real directory.
    const mounted = await mountsAtOrBelow(abs);
    if (mounted.length > 0) {
      throw errFailedPrecondition(
        `remove "${abs}": "${mounted[0]}" is mounted at or below it; refusing to delete through a mount`,
      );
    }
  }
  // fs.rm does not follow symlinks: a link is removed, not its target.
  await fs.rm(abs, { recursive: true, force: true });
}

/** Where and how to write an output path (see the module comment). */
async function outputTarget(file: string): Promise<{ path: string; inPlace: boolean }> {
  const abs = path.resolve(file);
  let st: import('node:fs').Stats;
  try {
    st = await fs.stat(abs); // follows a symlink to what it names
  } catch (err) {
    if (isErrno(err, 'ENOENT')) {
      // Missing, or a dangling symlink: write where the link points, keep the link.
      const real = await fs.lstat(abs).then(
        async (l) => (l.isSymbolicLink() ? path.resolve(path.dirname(abs), await fs.readlink(abs)) : abs),
        () => abs,
      );
      return { path: real, inPlace: false };
    }
    throw wrap(err, `write "${abs}"`);
  }
  if (st.isDirectory()) throw errInvalidArgument(`write "${abs}": is a directory`);
  if (!st.isFile()) return { path: abs, inPlace: true };
  return { path: await fs.realpath(abs), inPlace: false };
}

/** An output file being written (see `openOutputFile`). */
export interface OutputFile {
  /** The path being written: `file`, or a symlink's target. */
  readonly path: string;
  readonly handle: fs.FileHandle;
  /** Syncs, closes and (for a temp file) renames into place. */
  commit(): Promise<void>;
  /** Closes and removes the temp file; a device or FIFO is left as it is. */
  abort(): Promise<void>;
}

/**
 * Opens a user-given output path for writing (see the module comment): a
 * temp file committed by rename, or the existing device/FIFO itself.
 */
export async function openOutputFile(file: string, mode = 0o644): Promise<OutputFile> {
  const target = await outputTarget(file);
  if (target.inPlace) {
    // O_TRUNC is harmless on a device or FIFO; no O_CREAT: never make a new node.
    const handle = await fs.open(target.path, constants.O_WRONLY | constants.O_TRUNC);
    let closed = false;
    const close = async (): Promise<void> => {
      if (closed) return;
      closed = true;
      await handle.close();
    };
    return { path: target.path, handle, commit: close, abort: close };
  }
  const dir = path.dirname(target.path);
  await fs.mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(target.path)}.tmp-${randomBytes(4).toString('hex')}`);
  const handle = await fs.open(tmp, 'wx', mode);
  let closed = false;
  return {
    path: target.path,
    handle,
    async commit() {
      await handle.sync();
      closed = true;
      await handle.close();
      await fs.rename(tmp, target.path);
      const dh = await fs.open(dir, 'r');
      try {
        await dh.sync();
      } finally {
        await dh.close();
      }
    },
    async abort() {
      if (!closed) {
        closed = true;
        await handle.close().catch(() => {});
      }
      await fs.rm(tmp, { force: true });
    },
  };
}

/**
 * Writes `file` through `fill(fh)` with `openOutputFile`; returns the path
 * actually written (a symlink's target for a link).
 */
export async function writeOutputFile(
  file: string,
  fill: (fh: fs.FileHandle) => Promise<void>,
  mode = 0o644,
): Promise<string> {
  const out = await openOutputFile(file, mode);
  try {
    await fill(out.handle);
    await out.commit();
  } catch (err) {
    await out.abort();
    throw err;
  }
  return out.path;
}
