/**
 * Applies one overlay layer onto the upper directory of an active overlay
 * snapshot without copying file data: `linkLayer(layerDir, upperDir,
 * signal)`. Used by merge on overlayfs (ops/merge.ts) and for the image
 * store's chain snapshots of a build (exporter/chain.ts).
 *
 * `layerDir` is a committed overlayfs snapshot's own directory: its changes
 * from its parent, with overlay whiteouts (0:0 character devices) and opaque
 * directories (`trusted.overlay.opaque=y`). `upperDir` is the upper directory
 * of the active snapshot being built; it must not be mounted meanwhile. The
 * result is the tree the layer would give stacked on top, as the diff
 * service's tar apply would make it, but:
 * - every non-directory (file, symlink, whiteout, device, fifo) is a hard
 *   link to the layer's inode: no data is written. Both sides are committed
 *   snapshots, never modified in place (overlayfs copies a file up before
 *   any write). Hard links within the layer stay links. A file shows one more
 *   link while both snapshots exist.
 * - a directory is created, or updated in place, with the layer's mode,
 *   owner, times and xattrs (fs/meta.ts `syncDirMeta`: only what differs;
 *   xattrs the target cannot take are ignored, as the copy op does). One that replaces a non-directory (a whiteout or
 *   a file an earlier layer left) is made opaque, so what lies below in the
 *   lower chain does not show through again; an opaque one replaces what the
 *   upper directory held there; an existing opaque marker stays.
 * - a non-directory replaces whatever the upper directory held at its path.
 * Limits: overlayfs's attributes other than the opaque marker are not
 * carried to directories (they describe the layer's own overlay, not
 * the merge's); the caller falls back to the tar path when a layer's
 * directory is not known (e.g. a chain mounted with `lowerdir+`).
 */
import type { BigIntStats } from 'node:fs';
import { linkSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { wrap } from '../errors.ts';
import { isOverlayXattr, lstatOrUndefined, syncDirMeta } from '../fs/meta.ts';
import { removeTree } from '../fs/safe.ts';
import { lutimesNs, native } from '../native/index.ts';

const OPAQUE = 'trusted.overlay.opaque';
const Y = Buffer.from('y');

/** A layer directory's xattrs carried to the target: the tree's own, and its opaque marker. */
const carryOpaque = (name: string): boolean => name !== OPAQUE && isOverlayXattr(name);

/**
 * `fresh`: `dst` was just made here, so nothing is below it yet and no
 * target needs an lstat. A non-directory needs no lstat of its own either:
 * its directory entry's type says enough to link it.
 */
async function applyDir(
  src: string,
  dst: string,
  fresh: boolean,
  signal: AbortSignal | undefined,
): Promise<void> {
  signal?.throwIfAborted();
  const dirs: { d: string; st: BigIntStats }[] = [];
  const entries = readdirSync(src, { withFileTypes: true }).sort((a, b) =>
    a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
  );
  for (const e of entries) {
    const s = path.join(src, e.name);
    const d = path.join(dst, e.name);
    const have = fresh ? undefined : lstatOrUndefined(d);
    if (e.isDirectory()) {
      const st = lstatSync(s, { bigint: true });
      const opaque = native().lgetxattr(s, OPAQUE)?.equals(Y) ?? false;
      let replaced = false;
      if (have && (!have.isDirectory() || opaque)) {
        await removeTree(d);
        replaced = true;
      }
      if (!have || replaced) mkdirSync(d);
      // The target's own opaque marker stays: only the layer's is carried.
      syncDirMeta(s, st, d, { srcSkip: carryOpaque });
      if (replaced && !opaque) native().lsetxattr(d, OPAQUE, Y, 0);
      await applyDir(s, d, !have || replaced, signal);
      dirs.push({ d, st });
    } else {
      if (have) await removeTree(d);
      linkSync(s, d);
    }
  }
  // Entries written above changed the directories' times: set them last.
  for (const { d, st } of dirs) lutimesNs(d, st.atimeNs, st.mtimeNs);
}

/** Applies layer directory `layerDir` onto `upperDir` (see the module comment). */
export async function linkLayer(layerDir: string, upperDir: string, signal?: AbortSignal): Promise<void> {
  try {
    const st = lstatSync(layerDir, { bigint: true });
    syncDirMeta(layerDir, st, upperDir);
    await applyDir(layerDir, upperDir, false, signal);
    lutimesNs(upperDir, st.atimeNs, st.mtimeNs);
  } catch (err) {
    throw wrap(err, `link layer "${layerDir}" into "${upperDir}"`);
  }
}
