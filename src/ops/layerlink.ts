/**
 * Applies one overlay layer onto the upper directory of an active overlay
 * snapshot without copying file data (merge on overlayfs, merge.ts):
 * `linkLayer(layerDir, upperDir, signal)`.
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
 *   owner, times and xattrs. One that replaces a non-directory (a whiteout or
 *   a file an earlier layer left) is made opaque, so what lies below in the
 *   lower chain does not show through again; an opaque one replaces what the
 *   upper directory held there; an existing opaque marker stays.
 * - a non-directory replaces whatever the upper directory held at its path.
 * Limits: `trusted.overlay.*` attributes other than the opaque marker are
 * not carried to directories (they describe the layer's own overlay, not
 * the merge's); the caller falls back to the tar path when a layer's
 * directory is not known (e.g. a chain mounted with `lowerdir+`).
 */
import { chmodSync, lchownSync, linkSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import { wrap } from '../core/errors.ts';
import { removeTree } from '../core/fs/safe.ts';
import { native } from '../core/native/index.ts';

const OPAQUE = 'trusted.overlay.opaque';
const Y = Buffer.from('y');

function isOverlayPrivate(name: string): boolean {
  return name.startsWith('trusted.overlay.');
}

/** Makes `dst`'s mode, owner and xattrs those of directory `src` (keeping dst's opaque marker). */
function syncDirMeta(
  src: string,
  dst: string,
  st: { mode: bigint; uid: bigint; gid: bigint },
  root = false,
): void {
  const n = native();
  const want = new Map<string, Buffer>();
  for (const name of n.llistxattr(src)) {
    if (isOverlayPrivate(name) && (name !== OPAQUE || root)) continue;
    const v = n.lgetxattr(src, name);
    if (v) want.set(name, v);
  }
  for (const name of n.llistxattr(dst)) {
    if (isOverlayPrivate(name)) continue;
    if (!want.has(name)) n.lremovexattr(dst, name);
  }
  for (const [name, v] of want) n.lsetxattr(dst, name, v, 0);
  // chown before chmod: chown clears set-id bits.
  lchownSync(dst, Number(st.uid), Number(st.gid));
  chmodSync(dst, Number(st.mode) & 0o7777);
}

function setTimes(dst: string, st: { atimeNs: bigint; mtimeNs: bigint }): void {
  const NS = 1_000_000_000n;
  native().lutimensat(
    dst,
    Number(st.atimeNs / NS),
    Number(st.atimeNs % NS),
    Number(st.mtimeNs / NS),
    Number(st.mtimeNs % NS),
  );
}

function lstatMaybe(p: string): BigIntStats | undefined {
  try {
    return lstatSync(p, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

async function applyDir(src: string, dst: string, signal: AbortSignal | undefined): Promise<void> {
  signal?.throwIfAborted();
  const dirs: { d: string; st: BigIntStats }[] = [];
  for (const name of readdirSync(src).sort()) {
    const s = path.join(src, name);
    const d = path.join(dst, name);
    const st = lstatSync(s, { bigint: true });
    const have = lstatMaybe(d);
    if (st.isDirectory()) {
      const opaque = native().lgetxattr(s, OPAQUE)?.equals(Y) ?? false;
      let replaced = false;
      if (have && (!have.isDirectory() || opaque)) {
        await removeTree(d);
        replaced = true;
      }
      if (!have || replaced) mkdirSync(d);
      syncDirMeta(s, d, st);
      if (replaced && !opaque) native().lsetxattr(d, OPAQUE, Y, 0);
      await applyDir(s, d, signal);
      dirs.push({ d, st });
    } else {
      if (have) await removeTree(d);
      linkSync(s, d);
    }
  }
  // Entries written above changed the directories' times: set them last.
  for (const { d, st } of dirs) setTimes(d, st);
}

/** Applies layer directory `layerDir` onto `upperDir` (see the module comment). */
export async function linkLayer(layerDir: string, upperDir: string, signal?: AbortSignal): Promise<void> {
  try {
    const st = lstatSync(layerDir, { bigint: true });
    syncDirMeta(layerDir, upperDir, st, true);
    await applyDir(layerDir, upperDir, signal);
    setTimes(upperDir, st);
  } catch (err) {
    throw wrap(err, `link layer "${layerDir}" into "${upperDir}"`);
  }
}
