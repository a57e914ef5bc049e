/**
 * Copy by hard link (private to the file op): on overlayfs, a COPY from a
 * committed snapshot (typically the build context) into an active snapshot
 * links each regular file's backing inode into the active snapshot's upper
 * directory instead of writing its bytes again. Committed snapshots are
 * never changed in place (overlayfs copies a file up before any write, and
 * the local sync adds new snapshots on top), so a shared inode cannot change
 * under either side. No file data is written and no inode is allocated.
 *
 * `makeLinker` returns the CopyOptions.linkFile hook (ops/fsutil.ts). It
 * links only when everything is certain, and otherwise says "copy":
 * - the file's link count is 1: its inode is in the source snapshot only.
 *   So an inode is in at most one layer of any chain (the source's, or the
 *   one copy that linked it; a later copy of it gets its own inode) and
 *   everything that finds hard links by inode in a mounted tree (the copy's
 *   own link groups, the tar and local exporters) sees only real groups: two
 *   COPYs of one context file give two files, as in BuildKit. Hard-linked
 *   source files are copied (their groups kept by the copy);
 * - the source's backing file is the topmost entry for its path among the
 *   view's layer directories, a regular file whose inode, size and mtime
 *   are those the mounted view shows, and that layer is not one of the
 *   destination's own lower layers;
 * - the destination's parent is in the upper directory (a directory only in
 *   the lower layers is copied up first, through the overlay, by a chown to
 *   its own owner); nothing but a whiteout (left by replacing a lower entry)
 *   is at the destination in the upper directory;
 * - link(2) succeeds (not EXDEV, EMLINK, EPERM);
 * - overlayfs' metacopy is off (the default; `/sys/module/overlay/parameters/
 *   metacopy`): with it, an upper file may hold only metadata and take its
 *   data from below, and a link to it would carry no data.
 * fsutil offers only files whose owner, mode and times the copy would keep.
 * The file op does not link from a local-source snapshot whose context had
 * hard links of its own (label `kiln.io/local.hardlinks`): the next sync on
 * it could not tell its link groups from the links made here.
 *
 * The caller must not read the destination tree through its overlay mount
 * after linking (the mount does not see entries added to its upper
 * directory behind its back; it is unmounted and committed next). Visible
 * difference from a copy: such a file's link count is one more per
 * snapshot that shares it (a RUN step sees 2 or more).
 */
import { type BigIntStats, lchownSync, linkSync, lstatSync, readFileSync, renameSync } from 'node:fs';
import path from 'node:path';
import { isErrno } from '../core/errors.ts';
import { lstatOrUndefined } from '../core/fs/meta.ts';

let metacopy: boolean | undefined;

/** Whether overlayfs makes metadata-only copy-ups by default on this kernel. */
function metacopyOn(): boolean {
  if (metacopy === undefined) {
    try {
      metacopy = readFileSync('/sys/module/overlay/parameters/metacopy', 'utf8').trim() === 'Y';
    } catch {
      metacopy = true; // unknown: assume the worst
    }
  }
  return metacopy;
}

/** Whether `rel` (from path.relative) stays inside its base. */
function inside(rel: string): boolean {
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

/**
 * The linkFile hook for a copy from the mounted view `srcDir` (backed by
 * `srcLayers`, topmost first) into the mounted active snapshot `destDir`
 * (whose upper directory is `upperDir`, over `destLowers`).
 */
export function makeLinker(
  srcDir: string,
  srcLayers: readonly string[],
  destDir: string,
  upperDir: string,
  destLowers: readonly string[],
): ((src: string, dst: string, st: BigIntStats) => boolean) | undefined {
  if (metacopyOn()) return undefined;
  return (src, dst, st) => {
    // Only an inode no other snapshot holds yet (see the module comment).
    if (st.nlink !== 1n) return false;
    const relS = path.relative(srcDir, src);
    const relD = path.relative(destDir, dst);
    if (!inside(relS) || !inside(relD)) return false;
    let backing: string | undefined;
    for (const layer of srcLayers) {
      const p = path.join(layer, relS);
      const b = lstatOrUndefined(p);
      if (!b) continue;
      if (!b.isFile() || b.ino !== st.ino || b.size !== st.size || b.mtimeNs !== st.mtimeNs) return false;
      if (destLowers.includes(layer)) return false; // already in the destination's chain
      backing = p;
      break;
    }
    if (backing === undefined) return false;
    const target = path.join(upperDir, relD);
    const parent = path.dirname(target);
    if (!lstatOrUndefined(parent)?.isDirectory()) {
      // Copy the parent up (with its ancestors) through the overlay: a chown to its own owner.
      const viewParent = path.dirname(dst);
      const pst = lstatSync(viewParent);
      lchownSync(viewParent, pst.uid, pst.gid);
      if (!lstatOrUndefined(parent)?.isDirectory()) return false;
    }
    const existing = lstatOrUndefined(target);
    if (existing && !(existing.isCharacterDevice() && existing.rdev === 0n)) return false;
    // Over a whiteout: link beside it, then rename over it (the whiteout stays if linking fails).
    const linkAt = existing ? `${target}.kiln-link-${process.pid}` : target;
    try {
      linkSync(backing, linkAt);
    } catch (err) {
      if (isErrno(err, 'EXDEV') || isErrno(err, 'EMLINK') || isErrno(err, 'EPERM')) return false;
      throw err;
    }
    if (existing) renameSync(linkAt, target);
    return true;
  };
}
