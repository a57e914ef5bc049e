/**
 * Computes the changes between two filesystem trees as the entries of an OCI
 * layer (image-spec "layer.md": changesets, whiteouts, opaque whiteouts).
 *
 * - `compareDirs(lower, upper, emit)`: the generic two-tree walk. `lower`
 *   undefined means an empty lower (the whole upper is added).
 * - `compareOverlayUpper(upperDir, lowerDirs, emit)`: the overlayfs fast
 *   path. Reads the upperdir directly (a 0/0 char device is a whiteout,
 *   `trusted.overlay.opaque=y` / `user.overlay.opaque=y` an opaque dir) and
 *   looks into the lowers only for the paths the upper touches. For the same
 *   change it emits exactly the entries of the generic walk over the mounted
 *   trees, so both give the same layer bytes.
 *
 * What is emitted (in order, one call of `emit` per tar entry):
 * - added or changed regular files, directories, symlinks, char/block
 *   devices and fifos with mode (incl. setuid/setgid/sticky), uid/gid, mtime
 *   and xattrs (incl. security.capability; overlay's own `trusted.overlay.*`
 *   and `user.overlay.*` are dropped). A node is unchanged when type, mode,
 *   owner, mtime (ns), size, link target, device number and xattrs are equal;
 *   when the mtime has no sub-second part, equal files are also compared by
 *   content (coarse timestamps cannot be trusted).
 * - the second and later names of a hard-linked file, among the emitted
 *   entries, as link entries to the first name;
 * - `.wh.<name>` for a name of the lower that the upper lacks;
 * - `<dir>/.wh..wh..opq` right after `<dir>/` when none of the lower
 *   directory's names survive in the upper (instead of one whiteout per
 *   name); the directory's new contents then follow as additions.
 * - every emitted entry's parent directories before it (also when only
 *   their mtime changed). The root itself is never emitted.
 * Order: depth first, siblings sorted by the byte order of their entry name
 * (`.wh.x` sorts as such), so a directory's contents directly follow it.
 * Entry names have no leading `./`; directories end with '/'. Whiteout
 * entries have mode 0, uid/gid 0 and mtime 0. `sourceDateEpoch` clamps
 * mtimes to at most that value. Sub-second mtimes are kept in the headers
 * (the tar writer writes them only when asked).
 */
import { open, readlink } from 'node:fs/promises';
import * as path from 'node:path';
import type { TarHeader } from '../archive/tar.ts';
import { wrap } from '../errors.ts';
import { native } from '../native/index.ts';
import {
  isOpaqueDir,
  isWhiteout,
  joinRel,
  type Node,
  OverlayLowerTree,
  PlainTree,
  type TreeView,
} from './tree.ts';

export interface LayerEntry {
  header: TarHeader;
  /** Absolute path of the file whose bytes form the body ('file' entries with a size). */
  source?: string;
}

export type EmitFn = (entry: LayerEntry) => Promise<void> | void;

export interface CompareOptions {
  /** Clamp every mtime to at most this many seconds since the epoch. */
  sourceDateEpoch?: number;
}

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_WHITEOUT = '.wh..wh..opq';

/** xattrs that belong to overlayfs itself and never go into a layer. */
function isOverlayXattr(name: string): boolean {
  return name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.');
}

export function readXattrs(abs: string): Map<string, Uint8Array> | undefined {
  let names: string[];
  try {
    names = native().llistxattr(abs);
  } catch (err) {
    throw wrap(err, `list xattrs of "${abs}"`);
  }
  if (names.length === 0) return undefined;
  const out = new Map<string, Uint8Array>();
  for (const n of names.filter((n) => !isOverlayXattr(n)).sort()) {
    const v = native().lgetxattr(abs, n);
    if (v) out.set(n, v);
  }
  return out.size ? out : undefined;
}

function sameXattrs(a: Map<string, Uint8Array> | undefined, b: Map<string, Uint8Array> | undefined): boolean {
  if ((a?.size ?? 0) !== (b?.size ?? 0)) return false;
  if (!a || !b) return true;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w || Buffer.compare(v, w) !== 0) return false;
  }
  return true;
}

const S_IFMT = 0o170000n;

async function sameContent(a: string, b: string, size: bigint): Promise<boolean> {
  if (size === 0n) return true;
  const fa = await open(a, 'r');
  try {
    const fb = await open(b, 'r');
    try {
      const ba = Buffer.allocUnsafe(1 << 20);
      const bb = Buffer.allocUnsafe(1 << 20);
      for (;;) {
        const [ra, rb] = await Promise.all([fa.read(ba, 0, ba.length), fb.read(bb, 0, bb.length)]);
        if (ra.bytesRead !== rb.bytesRead) return false;
        if (ra.bytesRead === 0) return true;
        if (ba.compare(bb, 0, rb.bytesRead, 0, ra.bytesRead) !== 0) return false;
      }
    } finally {
      await fb.close();
    }
  } finally {
    await fa.close();
  }
}

/** Whether the upper node is unchanged with respect to the lower one. */
async function sameNode(lower: Node, upper: Node): Promise<boolean> {
  const l = lower.st;
  const u = upper.st;
  if ((l.mode & S_IFMT) !== (u.mode & S_IFMT)) return false;
  if (l.mode !== u.mode || l.uid !== u.uid || l.gid !== u.gid || l.mtimeNs !== u.mtimeNs) return false;
  if (u.isCharacterDevice() || u.isBlockDevice()) {
    if (l.rdev !== u.rdev) return false;
  }
  if (u.isFile() && l.size !== u.size) return false;
  if (u.isSymbolicLink()) {
    const [a, b] = await Promise.all([readlink(lower.abs, 'buffer'), readlink(upper.abs, 'buffer')]);
    if (!a.equals(b)) return false;
  }
  if (!sameXattrs(readXattrs(lower.abs), readXattrs(upper.abs))) return false;
  if (u.isFile() && u.mtimeNs % 1_000_000_000n === 0n) return sameContent(lower.abs, upper.abs, u.size);
  return true;
}

function devParts(rdev: bigint): [number, number] {
  // glibc's gnu_dev_major / gnu_dev_minor encoding.
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return [Number(major), Number(minor)];
}

interface WalkState {
  emit: EmitFn;
  options: CompareOptions;
  /** Directory entries waiting to be emitted as parents of a later entry. */
  pending: LayerEntry[];
  /** dev:ino → first emitted name, for hard links. */
  links: Map<string, string>;
  /** true: `upper` is an overlay upperdir (whiteouts and opaque markers are interpreted). */
  overlay: boolean;
  lower: TreeView | undefined;
  upper: PlainTree;
}

async function put(s: WalkState, entry: LayerEntry): Promise<void> {
  if (s.pending.length) {
    const parents = s.pending;
    s.pending = [];
    for (const p of parents) await s.emit(p);
  }
  await s.emit(entry);
}

function headerFor(s: WalkState, rel: string, node: Node, linkTarget?: string): TarHeader {
  const st = node.st;
  let sec = Number(st.mtimeNs / 1_000_000_000n);
  let nsec = Number(st.mtimeNs % 1_000_000_000n);
  if (nsec < 0) {
    sec -= 1;
    nsec += 1e9;
  }
  const epoch = s.options.sourceDateEpoch;
  if (epoch !== undefined && sec >= epoch) {
    sec = epoch;
    nsec = 0;
  }
  const h: TarHeader = {
    name: rel,
    type: 'file',
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: 0,
    mtime: sec,
  };
  if (nsec) h.mtimeNsec = nsec;
  const xattrs = readXattrs(node.abs);
  if (xattrs) h.xattrs = xattrs;
  if (st.isDirectory()) {
    h.type = 'directory';
    h.name = `${rel}/`;
  } else if (st.isSymbolicLink()) {
    h.type = 'symlink';
    h.linkname = linkTarget ?? '';
  } else if (st.isCharacterDevice() || st.isBlockDevice()) {
    h.type = st.isCharacterDevice() ? 'char' : 'block';
    [h.devmajor, h.devminor] = devParts(st.rdev);
  } else if (st.isFIFO()) {
    h.type = 'fifo';
  } else if (st.isFile()) {
    h.size = Number(st.size);
  } else {
    throw wrap(new Error('sockets and other special files cannot be put in a layer'), `export "${node.abs}"`);
  }
  return h;
}

function whiteout(dir: string, name: string): LayerEntry {
  return {
    header: { name: joinRel(dir, name), type: 'file', mode: 0, uid: 0, gid: 0, size: 0, mtime: 0 },
  };
}

/** Emits one added or changed non-directory node. */
async function emitLeaf(s: WalkState, rel: string, node: Node): Promise<void> {
  const st = node.st;
  if (st.isSocket()) return; // sockets do not go into layers (as other tools)
  if (st.isFile() && st.nlink > 1n) {
    const key = `${st.dev}:${st.ino}`;
    const first = s.links.get(key);
    if (first !== undefined) {
      const h = headerFor(s, rel, node);
      h.type = 'link';
      h.size = 0;
      h.linkname = first;
      await put(s, { header: h });
      return;
    }
    s.links.set(key, rel);
  }
  const target = st.isSymbolicLink() ? await readlink(node.abs) : undefined;
  const h = headerFor(s, rel, node, target);
  await put(s, h.type === 'file' && h.size > 0 ? { header: h, source: node.abs } : { header: h });
}

interface Child {
  /** Sort key: the entry's base name in UTF-8. */
  key: Buffer;
  name: string;
  whiteout: boolean;
}

/**
 * Visits directory `rel` of the upper. `lowerDir` is true when the lower
 * (view) has a directory at `rel`; `emitSelf` says whether the directory
 * entry is emitted for its own sake (new or changed) or only as a parent.
 */
async function visitDir(
  s: WalkState,
  rel: string,
  node: Node,
  lowerDir: boolean,
  emitSelf: boolean,
): Promise<void> {
  const self: LayerEntry = { header: headerFor(s, rel, node) };
  const mark = s.pending.length;
  if (rel !== '') {
    if (emitSelf) await put(s, self);
    else s.pending.push(self);
  }

  const real: string[] = [];
  const whiteouts = new Set<string>();
  if (s.overlay) {
    // Only a character device can be a whiteout: other entries need no lstat here.
    for (const { name, charDevice } of await s.upper.listKinds(rel)) {
      const child = charDevice ? await s.upper.lookup(joinRel(rel, name)) : undefined;
      if (child && isWhiteout(child.st)) whiteouts.add(name);
      else real.push(name);
    }
  } else real.push(...(await s.upper.list(rel)));

  const opaqueInUpper = s.overlay && rel !== '' && isOpaqueDir(node.abs);
  const lowerNames = lowerDir && s.lower ? new Set(await s.lower.list(rel)) : new Set<string>();
  // Names of the merged (upper) view that the lower also has.
  const realSet = new Set(real);
  let common = 0;
  for (const n of real) if (lowerNames.has(n)) common++;
  if (s.overlay && !opaqueInUpper) {
    for (const n of lowerNames) if (!whiteouts.has(n) && !realSet.has(n)) common++;
  }
  const makeOpaque = rel !== '' && lowerNames.size > 0 && common === 0;

  const children: Child[] = real.map((name) => ({ key: Buffer.from(name), name, whiteout: false }));
  if (makeOpaque) {
    if (!emitSelf) {
      s.pending.pop();
      await put(s, self);
    }
    await put(s, whiteout(rel, OPAQUE_WHITEOUT));
  } else {
    // Names the upper lost: in the generic walk (and below an opaque
    // upperdir directory), lower names missing from the upper; otherwise in
    // the overlay fast path, whiteouts over a lower name.
    const gone =
      s.overlay && !opaqueInUpper
        ? [...whiteouts].filter((n) => lowerNames.has(n))
        : [...lowerNames].filter((n) => !realSet.has(n));
    for (const name of gone)
      children.push({ key: Buffer.from(WHITEOUT_PREFIX + name), name, whiteout: true });
  }
  children.sort((a, b) => Buffer.compare(a.key, b.key));

  for (const c of children) {
    const childRel = joinRel(rel, c.name);
    if (c.whiteout) {
      await put(s, whiteout(rel, WHITEOUT_PREFIX + c.name));
      continue;
    }
    const up = await s.upper.lookup(childRel);
    if (!up) continue; // vanished while walking
    const low = !makeOpaque && lowerNames.has(c.name) && s.lower ? await s.lower.lookup(childRel) : undefined;
    if (up.st.isDirectory()) {
      const lowIsDir = low?.st.isDirectory() ?? false;
      const changed = !low || !lowIsDir || !(await sameNode(low, up));
      await visitDir(s, childRel, up, lowIsDir, changed);
    } else if (!low || !(await sameNode(low, up))) {
      await emitLeaf(s, childRel, up);
    }
  }
  if (s.pending.length > mark) s.pending.length = mark;
}

async function run(s: WalkState): Promise<void> {
  const root = await s.upper.lookup('');
  if (!root?.st.isDirectory()) throw wrap(new Error('not a directory'), `compare "${s.upper.root}"`);
  const lowerRoot = s.lower ? await s.lower.lookup('') : undefined;
  await visitDir(s, '', root, lowerRoot?.st.isDirectory() ?? false, false);
}

/** Generic walk: the changes that turn `lowerDir` (undefined: empty) into `upperDir`. */
export async function compareDirs(
  lowerDir: string | undefined,
  upperDir: string,
  emit: EmitFn,
  options: CompareOptions = {},
): Promise<void> {
  await run({
    emit,
    options,
    pending: [],
    links: new Map(),
    overlay: false,
    lower: lowerDir === undefined ? undefined : new PlainTree(path.resolve(lowerDir)),
    upper: new PlainTree(path.resolve(upperDir)),
  });
}

/**
 * Overlay fast path: the changes recorded in an overlayfs upperdir over the
 * union of `lowerDirs` (topmost first, as in `lowerdir=`; empty: no lower).
 */
export async function compareOverlayUpper(
  upperDir: string,
  lowerDirs: string[],
  emit: EmitFn,
  options: CompareOptions = {},
): Promise<void> {
  await run({
    emit,
    options,
    pending: [],
    links: new Map(),
    overlay: true,
    lower: lowerDirs.length ? new OverlayLowerTree(lowerDirs.map((d) => path.resolve(d))) : undefined,
    upper: new PlainTree(path.resolve(upperDir)),
  });
}
