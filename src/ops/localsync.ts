/**
 * Incremental local-source snapshots (the role of BuildKit's shared local
 * snapshot and fsutil's diff copy): a changed context costs what changed,
 * not a copy of the whole context.
 *
 * - Each committed local-source snapshot carries the labels
 *   `kiln.io/local.key` (a digest of the local name, the context's real
 *   path and the include / exclude / followPaths attributes: see
 *   `localSharedKey`) and `kiln.io/local.depth` (how many increments sit on
 *   the last full copy). The newest committed snapshot of the namespace with
 *   the key is the base of the next sync (`findLocalBase`). The labels are
 *   the whole mapping: a snapshot that the cache prune removed is simply no
 *   longer found (the next sync is a full copy), so nothing extra keeps it
 *   alive; the results themselves are cache (gc.root + cache record).
 * - `syncTree(src, target)` makes the mounted tree `target` (a snapshot
 *   prepared on the base, i.e. the base's content) equal to the filtered
 *   context, touching only what differs: added entries are copied, changed
 *   ones replaced, removed ones deleted. Writing through the overlay mount
 *   lets the kernel record the change (an upper dir holding only the
 *   changed files, whiteouts and opaque directories for the removed ones),
 *   so the committed snapshot is identical to a full copy when mounted.
 *   On an empty target it is a full copy.
 * - A non-directory is unchanged when type, permission bits, owner, mtime
 *   (ns), size, symlink target, device number and xattrs are equal, as
 *   rsync trusts size + mtime. When the source mtime has no sub-second part
 *   (a coarse filesystem), regular files are also compared by content.
 *   Hard-linked files (link count > 1 on either side) are always copied
 *   again, so the target's link groups are exactly the context's; except
 *   that with `externalLinks` (the base was synced from a context without
 *   hard links, label `kiln.io/local.hardlinks=none`) the target's count is
 *   not looked at: its extra links are then the copy op's (file.ts links
 *   files of a committed context into COPY layers), not groups of its own. A
 *   directory's mode, owner, xattrs and times are set again when they differ
 *   after its entries were synced.
 *
 * `localContentDigest` answers a whole-tree content checksum of such a
 * snapshot from its LABEL_LOCAL_CHECKSUM label (the copy op's cache key
 * for `COPY . /dest`), instead of reading the new snapshot's every file.
 *
 * Limits: the sync trusts size + mtime (a rewrite that restores both keeps
 * the old bytes while the cache key, a content checksum, sees the new ones);
 * xattrs that cannot be set are ignored (as copyEntry); the target's root
 * directory keeps its own metadata. Callers bound the chain (MAX_LOCAL_DEPTH).
 */
import { type BigIntStats, closeSync, openSync, readdirSync, readlinkSync, readSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { sha256 } from '../core/digest.ts';
import { lstatOrUndefined, readXattrs, sameXattrs, syncDirMeta } from '../core/fs/meta.ts';
import type { NamespacedSnapshotter } from '../core/metadata/snapshots.ts';
import { LABEL_LOCAL_KEY } from '../core/snapshots/links.ts';
import { type CopyOptions, copyEntry } from './fsutil.ts';

export { LABEL_LOCAL_KEY };
/** Label: increments since the last full copy (0 for a full copy). */
export const LABEL_LOCAL_DEPTH = 'kiln.io/local.depth';
/**
 * Label: the content checksum (checksum.ts `checksumTree` of the filtered
 * context at `/`) of what the snapshot holds, as computed for the source's
 * cache key.
 */
export const LABEL_LOCAL_CHECKSUM = 'kiln.io/local.checksum';
/**
 * Increments stacked before a full copy: every increment is one more
 * overlay lowerdir for whoever mounts the result.
 */
export const MAX_LOCAL_DEPTH = 16;
/**
 * Label: `none` when the synced context had no hard-linked file (link count
 * > 1), so that link counts above 1 in the snapshot come from outside.
 */
export const LABEL_LOCAL_HARDLINKS = 'kiln.io/local.hardlinks';

/** What is sent of a context directory (see source.ts `localSpec`). */
export interface LocalTree {
  /** The context directory. */
  dir: string;
  /** Is `rel` (relative to `dir`, no leading slash) sent? */
  filter: (rel: string, isDir: boolean) => boolean;
  /** For a directory that is not sent: may something below it be? */
  descend: (rel: string) => boolean;
}

/** The key that finds the previous snapshot of one local source. */
export function localSharedKey(parts: {
  name: string;
  dir: string;
  include?: string;
  exclude?: string;
  followPaths?: string;
}): string {
  return sha256(
    JSON.stringify([
      parts.name,
      parts.dir,
      parts.include ?? '',
      parts.exclude ?? '',
      parts.followPaths ?? '',
    ]),
  );
}

/** The newest committed snapshot labelled with `key`, with its depth. */
export async function findLocalBase(
  sn: NamespacedSnapshotter,
  key: string,
): Promise<{ name: string; depth: number; hardlinks: boolean } | undefined> {
  let best: { name: string; depth: number; at: number; hardlinks: boolean } | undefined;
  await sn.walk((info) => {
    if (info.kind !== 'committed' || info.labels[LABEL_LOCAL_KEY] !== key) return;
    const at = info.createdAt.getTime();
    const depth = Number.parseInt(info.labels[LABEL_LOCAL_DEPTH] ?? '', 10);
    if (!Number.isFinite(depth) || depth < 0) return;
    if (!best || at > best.at || (at === best.at && depth > best.depth))
      best = { name: info.name, depth, at, hardlinks: info.labels[LABEL_LOCAL_HARDLINKS] !== 'none' };
  });
  return best && { name: best.name, depth: best.depth, hardlinks: best.hardlinks };
}

/**
 * A content digest for the whole tree (selector `/`) of a local-source
 * snapshot, from its LABEL_LOCAL_CHECKSUM: the checksum its source already
 * computed of the same content, so a copy of the whole context need not
 * read every file of the new snapshot again. Undefined when the snapshot
 * has no such label. (A digest of its own domain: it never equals a
 * checksum of another tree by accident.)
 */
export async function localContentDigest(
  sn: NamespacedSnapshotter,
  snapshot: string,
): Promise<string | undefined> {
  if (!snapshot) return undefined;
  const sum = (await sn.stat(snapshot)).labels[LABEL_LOCAL_CHECKSUM];
  return sum ? sha256(`kiln local context\0${sum}`) : undefined;
}

/** What a sync did (entries are counted at the top of each copied or removed subtree). */
export interface SyncStats {
  /** Entries copied because they were missing, changed, or of another type. */
  copied: number;
  /** Entries removed from the target. */
  removed: number;
  /** Directories whose own metadata was set again. */
  dirsUpdated: number;
  /** Entries found unchanged. */
  unchanged: number;
  /** Hard-linked files (distinct inodes with link count > 1) among the context's selected files. */
  hardlinked: number;
}

export interface SyncOptions {
  signal?: AbortSignal;
  /** The target's link counts include links from outside it (see the module comment). */
  externalLinks?: boolean;
}

const S_IFMT = 0o170000n;

/** Byte-for-byte comparison of two regular files of the same size. */
function sameContent(a: string, b: string): boolean {
  const fa = openSync(a, 'r');
  try {
    const fb = openSync(b, 'r');
    try {
      const ba = Buffer.allocUnsafe(1 << 16);
      const bb = Buffer.allocUnsafe(1 << 16);
      for (;;) {
        const na = readSync(fa, ba, 0, ba.length, null);
        let nb = 0;
        while (nb < na) {
          const r = readSync(fb, bb, nb, na - nb, null);
          if (r === 0) break;
          nb += r;
        }
        if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
        if (na === 0) return true;
      }
    } finally {
      closeSync(fb);
    }
  } finally {
    closeSync(fa);
  }
}

/** Is the non-directory `dst` (stat `d`) the same as `src` (stat `s`)? */
function sameNode(src: string, s: BigIntStats, dst: string, d: BigIntStats, externalLinks: boolean): boolean {
  if ((s.mode & S_IFMT) !== (d.mode & S_IFMT)) return false;
  if (s.mode !== d.mode || s.uid !== d.uid || s.gid !== d.gid || s.mtimeNs !== d.mtimeNs) return false;
  if (s.isFile()) {
    if (s.size !== d.size || s.nlink > 1n || (!externalLinks && d.nlink > 1n)) return false;
  } else if (s.isSymbolicLink()) {
    if (readlinkSync(src) !== readlinkSync(dst)) return false;
  } else if (s.isCharacterDevice() || s.isBlockDevice()) {
    if (s.rdev !== d.rdev) return false;
  }
  if (!sameXattrs(readXattrs(src), readXattrs(dst))) return false;
  // Coarse timestamps cannot tell two versions of a file apart: look at the bytes.
  if (s.isFile() && s.mtimeNs % 1_000_000_000n === 0n && s.size > 0n) return sameContent(src, dst);
  return true;
}

interface SyncState {
  tree: LocalTree;
  links: Map<string, string>;
  signal: AbortSignal | undefined;
  externalLinks: boolean;
  stats: SyncStats;
}

function copyOpts(st: SyncState, prefix: string): CopyOptions {
  const tree = st.tree;
  return {
    filter: (rel, isDir) => tree.filter(rel === '' ? prefix : `${prefix}/${rel}`, isDir),
    descend: (rel) => tree.descend(rel === '' ? prefix : `${prefix}/${rel}`),
    links: st.links,
    ...(st.signal ? { signal: st.signal } : {}),
  };
}

async function removeEntry(p: string): Promise<void> {
  await fs.rm(p, { recursive: true, force: true });
}

/**
 * Syncs the entries of directory `src` into the existing directory `dst`;
 * returns whether `dst` holds anything (for directories sent only because
 * something below them is).
 */
async function syncDir(st: SyncState, src: string, dst: string, rel: string): Promise<boolean> {
  st.signal?.throwIfAborted();
  const names = readdirSync(src).sort();
  const kept = new Set<string>();
  for (const name of names) {
    st.signal?.throwIfAborted();
    const childRel = rel === '' ? name : `${rel}/${name}`;
    const s = lstatOrUndefined(path.join(src, name));
    if (!s || s.isSocket()) continue;
    const isDir = s.isDirectory();
    const selected = st.tree.filter(childRel, isDir);
    if (!selected && !(isDir && st.tree.descend(childRel))) continue;
    const srcChild = path.join(src, name);
    const dstChild = path.join(dst, name);
    let d = lstatOrUndefined(dstChild);
    if (d && (d.mode & S_IFMT) !== (s.mode & S_IFMT)) {
      await removeEntry(dstChild);
      st.stats.removed++;
      d = undefined;
    }
    if (!d) {
      if (await copyEntry(srcChild, dstChild, copyOpts(st, childRel))) {
        st.stats.copied++;
        kept.add(name);
      }
      continue;
    }
    if (isDir) {
      const any = await syncDir(st, srcChild, dstChild, childRel);
      if (!selected && !any) {
        // Sent only for what is below it, and nothing is any more.
        await removeEntry(dstChild);
        st.stats.removed++;
        continue;
      }
      kept.add(name);
      if (syncDirMeta(srcChild, s, dstChild)) st.stats.dirsUpdated++;
      else st.stats.unchanged++;
      continue;
    }
    kept.add(name);
    if (sameNode(srcChild, s, dstChild, d, st.externalLinks)) {
      st.stats.unchanged++;
      continue;
    }
    // copyEntry replaces the existing non-directory.
    await copyEntry(srcChild, dstChild, copyOpts(st, childRel));
    st.stats.copied++;
  }
  for (const name of readdirSync(dst)) {
    if (kept.has(name)) continue;
    st.signal?.throwIfAborted();
    await removeEntry(path.join(dst, name));
    st.stats.removed++;
  }
  return kept.size > 0;
}

/** Makes the mounted tree `target` equal to what `tree` sends (see the module comment). */
export async function syncTree(tree: LocalTree, target: string, opts: SyncOptions = {}): Promise<SyncStats> {
  const st: SyncState = {
    tree,
    links: new Map(),
    signal: opts.signal,
    externalLinks: opts.externalLinks ?? false,
    stats: { copied: 0, removed: 0, dirsUpdated: 0, unchanged: 0, hardlinked: 0 },
  };
  await syncDir(st, tree.dir, target, '');
  // Every selected source file with link count > 1 is copied (never found unchanged), and the
  // copy records its inode in `links`.
  st.stats.hardlinked = st.links.size;
  return st.stats;
}
