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
 * links only when everything is certain, and otherwise says "copy". The
 * invariant it keeps: an inode is in at most one layer of any chain, so
 * everything that finds hard links by inode in a mounted tree (the copy's
 * own link groups, the tar and local exporters) sees only real groups: two
 * COPYs of one context file into one chain give two files, as in BuildKit.
 * A file is linked when
 * - its link count is 1: its inode is in the source layer only; or
 * - its inode was born in a context increment (a local-source snapshot whose
 *   context had no hard links of its own, labelled LABEL_LINKS_TRACKED), and
 *   no layer of the destination's chain may hold that inode: every snapshot
 *   that receives such an inode by a link (this copy, the merge op, the
 *   image exporter's chain snapshots) records the context's key in its label
 *   `kiln.io/links.local` (core/snapshots/links.ts); this copy also records,
 *   per key, the common context path of the files it linked
 *   (`kiln.io/links.local.paths`; the others count as the whole context).
 *   The linker is given, per key, the paths the destination chain's labels
 *   name (`LinkLineage.destHeld`), and links a file only when its context
 *   path is below none of them. A context has no hard links of its own, so
 *   a path outside those holds an inode that no layer of the chain holds.
 *   This is what lets the COPY of a rebuild link the unchanged files that
 *   the previous build's COPY layer (in another chain) already holds, also
 *   after an earlier COPY from the same context into the same chain (a
 *   lockfile before the sources). What it linked is collected in
 *   `LinkLineage.linked` (key → common path), for the new layer's labels;
 *   the file op adds it to what later actions into the same tree avoid.
 *   Other hard-linked source files are copied (their groups kept by the copy);
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
import { commonPath, pathCovers } from '../core/snapshots/links.ts';

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

/** Where linked inodes come from and where they may go (see the module comment). */
export interface LinkLineage {
  /** Source layer directory → its context's key, for context increments without hard links of their own. */
  localKeys: ReadonlyMap<string, string>;
  /**
   * Context key → the context paths below which the destination may hold that context's
   * inodes ('' = all of it): what its chain's labels name (core/snapshots/links.ts) and what
   * earlier actions linked into the same tree.
   */
  destHeld: ReadonlyMap<string, readonly string[]>;
  /** Filled in: context key → the common context path of the inodes linked into this tree. */
  linked: Map<string, string>;
}

/** Whether the destination may hold the inode at context path `rel` of context `key`. */
function mayHold(lineage: LinkLineage, key: string, rel: string): boolean {
  return lineage.destHeld.get(key)?.some((p) => pathCovers(p, rel)) ?? false;
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
  lineage?: LinkLineage,
): ((src: string, dst: string, st: BigIntStats, fresh: boolean) => boolean) | undefined {
  if (metacopyOn()) return undefined;
  // Layers are committed (they do not change during the copy): whether a layer has a
  // directory is looked up once per directory, not once per file and layer (a context
  // made of a full copy and 16 increments has 17 layers, most without the file's directory).
  const dirIn = srcLayers.map(() => new Map<string, boolean>());
  const hasDir = (i: number, relDir: string): boolean => {
    const seen = dirIn[i]!.get(relDir);
    if (seen !== undefined) return seen;
    const has = lstatOrUndefined(path.join(srcLayers[i]!, relDir))?.isDirectory() ?? false;
    dirIn[i]!.set(relDir, has);
    return has;
  };
  // Parent directories known to be in the upper directory (they stay there once made).
  const upperDirs = new Set<string>();
  return (src, dst, st, fresh) => {
    // Shared inodes only from a context (see the module comment).
    if (st.nlink !== 1n && (lineage === undefined || lineage.localKeys.size === 0)) return false;
    const relS = path.relative(srcDir, src);
    const relD = path.relative(destDir, dst);
    if (!inside(relS) || !inside(relD)) return false;
    const relDirS = path.dirname(relS);
    let backing: string | undefined;
    let key: string | undefined;
    for (let i = 0; i < srcLayers.length; i++) {
      if (!hasDir(i, relDirS)) continue;
      const layer = srcLayers[i]!;
      const p = path.join(layer, relS);
      const b = lstatOrUndefined(p);
      if (!b) continue;
      if (!b.isFile() || b.ino !== st.ino || b.size !== st.size || b.mtimeNs !== st.mtimeNs) return false;
      if (destLowers.includes(layer)) return false; // already in the destination's chain
      key = lineage?.localKeys.get(layer);
      if (st.nlink !== 1n && (key === undefined || mayHold(lineage!, key, relS))) return false;
      backing = p;
      break;
    }
    if (backing === undefined) return false;
    const target = path.join(upperDir, relD);
    const parent = path.dirname(target);
    if (!upperDirs.has(parent)) {
      if (!lstatOrUndefined(parent)?.isDirectory()) {
        // Copy the parent up (with its ancestors) through the overlay: a chown to its own owner.
        const viewParent = path.dirname(dst);
        const pst = lstatSync(viewParent);
        lchownSync(viewParent, pst.uid, pst.gid);
        if (!lstatOrUndefined(parent)?.isDirectory()) return false;
      }
      upperDirs.add(parent);
    }
    // A directory this copy made holds nothing yet (its upper directory is new and empty).
    const existing = fresh ? undefined : lstatOrUndefined(target);
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
    if (key !== undefined) {
      const before = lineage!.linked.get(key);
      lineage!.linked.set(key, before === undefined ? relS : commonPath(before, relS));
    }
    return true;
  };
}
