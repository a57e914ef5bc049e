/**
 * Metadata of tree entries, synchronously (for walks that do one entry at a
 * time and must not pay a thread-pool round trip per file):
 * - `lstatOrUndefined`: exact (bigint, ns) lstat, undefined when the path
 *   or a parent is missing.
 * - `readXattrs` / `sameXattrs`: an entry's extended attributes, except
 *   those `skip` rejects; unreadable ones count as absent.
 * - `syncDirMeta`: makes a directory's owner, mode, xattrs and times those
 *   of another, changing only what differs; xattrs that cannot be set or
 *   removed on the destination are ignored (as the copy op does).
 */
import { type BigIntStats, chmodSync, lchownSync, lstatSync } from 'node:fs';
import { isErrno } from '../errors.ts';
import { lutimesNs, native } from '../native/index.ts';

export function lstatOrUndefined(p: string): BigIntStats | undefined {
  try {
    return lstatSync(p, { bigint: true, throwIfNoEntry: false });
  } catch (err) {
    if (isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

/** overlayfs's own attributes: they describe a layer's overlay, never the tree. */
export function isOverlayXattr(name: string): boolean {
  return name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.');
}

export function readXattrs(p: string, skip: (name: string) => boolean = isOverlayXattr): Map<string, Buffer> {
  const n = native();
  const out = new Map<string, Buffer>();
  let names: string[];
  try {
    names = n.llistxattr(p);
  } catch {
    return out;
  }
  for (const name of names) {
    if (skip(name)) continue;
    try {
      const v = n.lgetxattr(p, name);
      if (v) out.set(name, v);
    } catch {
      // vanished or unreadable: treated as absent
    }
  }
  return out;
}

export function sameXattrs(a: Map<string, Buffer>, b: Map<string, Buffer>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w?.equals(v)) return false;
  }
  return true;
}

/**
 * Sets directory `dst`'s owner, mode, xattrs and times from `src` (stat `s`)
 * where they differ; returns whether anything changed. `srcSkip` and
 * `dstSkip` choose the xattrs compared on each side (default: all but
 * overlayfs's own), e.g. to carry an opaque marker but never remove one.
 */
export function syncDirMeta(
  src: string,
  s: BigIntStats,
  dst: string,
  opts: { srcSkip?: (name: string) => boolean; dstSkip?: (name: string) => boolean } = {},
): boolean {
  const d = lstatSync(dst, { bigint: true });
  const n = native();
  let changed = false;
  const sx = readXattrs(src, opts.srcSkip);
  const dx = readXattrs(dst, opts.dstSkip);
  if (s.uid !== d.uid || s.gid !== d.gid) {
    // lchown clears set-id bits: the mode is set after it.
    lchownSync(dst, Number(s.uid), Number(s.gid));
    changed = true;
  }
  if (changed || s.mode !== d.mode) {
    chmodSync(dst, Number(s.mode & 0o7777n));
    changed = true;
  }
  if (!sameXattrs(sx, dx)) {
    for (const name of dx.keys()) {
      if (sx.has(name)) continue;
      try {
        n.lremovexattr(dst, name);
      } catch {
        // not removable on the destination
      }
    }
    for (const [name, v] of sx) {
      try {
        n.lsetxattr(dst, name, v, 0);
      } catch {
        // not supported on the destination
      }
    }
    changed = true;
  }
  if (changed || s.mtimeNs !== d.mtimeNs) {
    lutimesNs(dst, s.atimeNs, s.mtimeNs);
    changed = true;
  }
  return changed;
}
