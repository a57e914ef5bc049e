/**
 * Content checksums for content-based cache keys (the solver's
 * `computeDigestFunc`) and for local sources.
 *
 * `checksumTree(root, selector)`: sha256 over the selected paths of a tree,
 * covering each entry's relative path, type, permission bits, uid/gid, link
 * target, device number and file content, never timestamps. The selector is
 * one container path, or a JSON array of paths; paths may hold wildcards
 * (Go filepath.Match per component); `/` or '' selects everything. A missing
 * path contributes a "missing" marker (so it appearing later changes the sum).
 *
 * File contents are hashed through an optional `FileHashCache` keyed by
 * host path and stamp: size, mtime and ctime (nanoseconds), inode
 * (unchanged files are not re-read). Directories are listed with their
 * entries' lstat data in one native call each (core/native/readdir.ts).
 * The lines hashed, one per entry in name order (UTF-16 order, as
 * `Array.prototype.sort`), are `dir|file|link|special <JSON rel path>
 * <octal st_mode> <uid>:<gid>` followed by the content sha256 (file), the
 * JSON link target (link) or the device number (special); `missing <JSON
 * path>` for a selected path that does not exist or an entry that vanished
 * during the walk (or whose name is not UTF-8).
 *
 * `ContentChecksums.forResult(result, selector)`: mounts the result's
 * committed snapshot read-only and checksums it; memoized by snapshot name +
 * selector, since committed snapshots never change.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, readlinkSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Digest } from '../core/digest.ts';
import { isErrno } from '../core/errors.ts';
import { lstatOrUndefined } from '../core/fs/meta.ts';
import { ColdReads } from '../core/fs/readahead.ts';
import type { Core } from '../core/metadata/index.ts';
import { ASCII, FIXED, GONE, JSON_PLAIN, NOT_UTF8, readDirStat } from '../core/native/readdir.ts';
import type { Result } from '../solver/types.ts';
import { lstatMaybe, resolveInRoot } from './fsutil.ts';
import { hasGlob, matchGlob, type PatternMatcher } from './patterns.ts';
import { OpSession, snapshotOf } from './refs.ts';

/** What identifies an unchanged regular file: size, exact mtime and ctime, inode. */
export interface FileStamp {
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
  ino: number;
}

/** Hashes of file contents (hex sha256), by host path and stamp. */
export interface FileHashCache {
  /** The hash recorded for `file` if it was recorded with an equal stamp. */
  get(file: string, stamp: Readonly<FileStamp>): string | undefined;
  /** Records a hash. `stamp` is an object the walk reuses: copy its fields, do not keep it. */
  set(file: string, stamp: Readonly<FileStamp>, hash: string): void;
}

/** Files up to this size are hashed from one synchronous read (a stream costs more than the read). */
const SMALL_FILE = 64 << 10;

/** The small-file read buffer: only used between an open and a close with no await between them. */
const smallBuf = Buffer.allocUnsafe(SMALL_FILE);
const READ_CHUNK = 1 << 20;

/**
 * sha256 of `file`'s bytes, in hex. `cold` (a walk's): small files read slowly get their
 * directory read ahead (../core/fs/readahead.ts).
 */
export async function hashFile(
  file: string,
  signal?: AbortSignal,
  size?: number,
  cold?: ColdReads,
): Promise<string> {
  const h = createHash('sha256');
  if (size !== undefined && size <= SMALL_FILE) {
    // One synchronous read into a shared buffer: a context of 20,000 files leaves no garbage behind.
    const readAll = (): void => {
      const fd = openSync(file, 'r');
      try {
        let n = 0;
        for (;;) {
          const got = readSync(fd, smallBuf, 0, SMALL_FILE, n);
          if (got === 0) break;
          h.update(smallBuf.subarray(0, got));
          n += got;
        }
      } finally {
        closeSync(fd);
      }
    };
    if (cold) cold.read(file, readAll);
    else readAll();
    return h.digest('hex');
  }
  // 1 MiB reads (a 50 MB file hashes in half the time of 64 KiB ones: one thread-pool trip each),
  // into one buffer per file: the hash copies what it is given, so the buffer is free again at once,
  // and three 50 MB files leave 3 MiB of garbage instead of 150.
  const fh = await fs.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(READ_CHUNK);
    let pos = 0;
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await fh.read(buf, 0, READ_CHUNK, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

export interface WalkOptions {
  cache?: FileHashCache;
  signal?: AbortSignal;
  /** Only paths (relative to the walked top) the filter accepts; dirs it rejects are still descended when `descend` says so. */
  filter?: (rel: string, isDir: boolean) => boolean;
  descend?: (rel: string) => boolean;
}

/** Entries visited between two yields to the event loop. */
const YIELD_EVERY = 512;

/**
 * sha256 of lines joined by '\n', fed to the hash in pieces of about 64 KiB
 * at line boundaries: the same digest as hashing the joined text, without
 * keeping every line of a large tree alive.
 */
class LineDigest {
  readonly #hash = createHash('sha256');
  #buf = '';
  #first = true;

  push(line: string): void {
    if (this.#first) {
      this.#first = false;
      this.#buf = line;
    } else this.#buf += `\n${line}`;
    if (this.#buf.length >= 1 << 16) {
      this.#hash.update(this.#buf);
      this.#buf = '';
    }
  }

  digest(): Digest {
    this.#hash.update(this.#buf);
    return `sha256:${this.#hash.digest('hex')}` as Digest;
  }
}

interface WalkState {
  /** Entries visited since the last yield. */
  since: number;
  /** The walk's reused stamp (see FileHashCache.set). */
  stamp: FileStamp;
  /** The last `<mode octal> <uid>:<gid>` text and what it was made of (most entries repeat it). */
  metaMode: number;
  metaUid: number;
  metaGid: number;
  meta: string;
  /** Small files not in the page cache: their directories are read ahead. */
  cold: ColdReads;
}

function metaOf(state: WalkState, mode: number, uid: number, gid: number): string {
  if (mode !== state.metaMode || uid !== state.metaUid || gid !== state.metaGid) {
    state.metaMode = mode;
    state.metaUid = uid;
    state.metaGid = gid;
    state.meta = `${mode.toString(8)} ${uid}:${gid}`;
  }
  return state.meta;
}

/** Reads and hashes a file whose hash is not cached, and records it. */
async function hashMiss(
  host: string,
  opts: WalkOptions,
  stamp: Readonly<FileStamp>,
  cold: ColdReads,
): Promise<string> {
  const saved: FileStamp = { ...stamp };
  const hash = await hashFile(host, opts.signal, saved.size, cold);
  opts.cache?.set(host, saved, hash);
  return hash;
}

/**
 * Feeds the walked top path and everything below it into `out`. The top is
 * lstat'ed by Node; directories are listed by the addon's `readdirStat`
 * (one native call per directory gives every entry's lstat data, see
 * core/native/readdir.ts), so a tree of unchanged files costs no Stats
 * object and no syscall through the thread pool per file. The walk yields to
 * the event loop every YIELD_EVERY entries so other work (and abort
 * signals) keep running.
 */
async function walk(
  host: string,
  rel: string,
  out: LineDigest,
  opts: WalkOptions,
  state: WalkState,
): Promise<void> {
  opts.signal?.throwIfAborted();
  const st = lstatOrUndefined(host);
  if (!st) {
    out.push(`missing ${JSON.stringify(rel)}`);
    return;
  }
  const isDir = st.isDirectory();
  const selected = rel === '' || !opts.filter || opts.filter(rel, isDir);
  if (!selected && !(isDir && opts.descend?.(rel))) return;
  const meta = metaOf(state, Number(st.mode), Number(st.uid), Number(st.gid));
  const quoted = JSON.stringify(rel);
  if (isDir) {
    if (selected) out.push(`dir ${quoted} ${meta}`);
    await walkDir(host, rel, out, opts, state);
  } else if (st.isSymbolicLink()) {
    out.push(`link ${quoted} ${meta} ${JSON.stringify(readlinkSync(host))}`);
  } else if (st.isFile()) {
    const s = state.stamp;
    s.size = Number(st.size);
    s.mtimeSec = Number(st.mtimeNs / 1_000_000_000n);
    s.mtimeNsec = Number(st.mtimeNs % 1_000_000_000n);
    s.ctimeSec = Number(st.ctimeNs / 1_000_000_000n);
    s.ctimeNsec = Number(st.ctimeNs % 1_000_000_000n);
    s.ino = Number(st.ino);
    out.push(
      `file ${quoted} ${meta} ${opts.cache?.get(host, s) ?? (await hashMiss(host, opts, s, state.cold))}`,
    );
  } else {
    out.push(`special ${quoted} ${meta} ${st.rdev}`);
  }
}

/**
 * The entries of a directory, in name order, and everything below them.
 * Fields are read from the listing's raw arrays inline (see
 * `DirListing.raw`): on a fresh process this loop runs cold, where every
 * accessor call would cost as much as the work.
 */
async function walkDir(
  host: string,
  rel: string,
  out: LineDigest,
  opts: WalkOptions,
  state: WalkState,
): Promise<void> {
  const raw = readDirStat(host).raw;
  const { f64, u32, off } = raw;
  const buf = raw.buf as Buffer & RawSlices;
  const n = off.length;
  const { filter, descend } = opts;
  const stamp = state.stamp;
  const prefix = rel === '' ? '' : `${rel}/`;
  // JSON.stringify(prefix + name) is this plus the name and a quote when the name needs no escape.
  const quotedPrefix = JSON.stringify(prefix).slice(0, -1);
  const hostPrefix = host.endsWith('/') ? host : `${host}/`;
  const cache = opts.cache;
  // This directory's lines since the last flush, each preceded by '\n'
  // (one push per run of lines instead of one per line).
  let text = '';
  for (let i = 0; i < n; i++) {
    if (++state.since >= YIELD_EVERY) {
      state.since = 0;
      await new Promise<void>((resolve) => setImmediate(resolve));
      opts.signal?.throwIfAborted();
    }
    const o = off[i]!;
    const u = (o >> 2) + 12;
    const f = o >> 3;
    const nameLen = u32[u + 5]!;
    const flags = u32[u + 7]!;
    const name =
      flags & ASCII
        ? buf.latin1Slice(o + FIXED, o + FIXED + nameLen)
        : buf.utf8Slice(o + FIXED, o + FIXED + nameLen);
    const childRel = prefix + name;
    const quoted = flags & JSON_PLAIN ? `${quotedPrefix}${name}"` : JSON.stringify(childRel);
    if (flags & (GONE | NOT_UTF8)) {
      text += `\nmissing ${quoted}`; // removed since the listing, or not nameable
      continue;
    }
    const mode = u32[u]!;
    const type = mode & S_IFMT;
    const isDir = type === S_IFDIR;
    const selected = !filter || filter(childRel, isDir);
    if (!selected && !(isDir && descend?.(childRel))) continue;
    const uid = u32[u + 1]!;
    const gid = u32[u + 2]!;
    if (mode !== state.metaMode || uid !== state.metaUid || gid !== state.metaGid)
      metaOf(state, mode, uid, gid);
    const meta = state.meta;
    if (type === S_IFREG) {
      stamp.size = f64[f]!;
      stamp.mtimeSec = f64[f + 1]!;
      stamp.mtimeNsec = u32[u + 3]!;
      stamp.ctimeSec = f64[f + 2]!;
      stamp.ctimeNsec = u32[u + 4]!;
      stamp.ino = f64[f + 3]!;
      const file = hostPrefix + name;
      const hash = cache?.get(file, stamp) ?? (await hashMiss(file, opts, stamp, state.cold));
      text += `\nfile ${quoted} ${meta} ${hash}`;
    } else if (isDir) {
      if (selected) text += `\ndir ${quoted} ${meta}`;
      if (text !== '') out.push(text.slice(1));
      text = '';
      await walkDir(hostPrefix + name, childRel, out, opts, state);
    } else if (type === S_IFLNK) {
      const start = o + FIXED + nameLen;
      const target = buf.utf8Slice(start, start + u32[u + 6]!);
      text += `\nlink ${quoted} ${meta} ${JSON.stringify(target)}`;
    } else {
      text += `\nspecial ${quoted} ${meta} ${f64[f + 5]!}`;
    }
  }
  if (text !== '') out.push(text.slice(1));
}

/**
 * Buffer's own decoders without toString's argument normalisation (a
 * function call per name on cold code). Undocumented but present on every
 * Node Buffer since v0.x (toString calls them).
 */
interface RawSlices {
  latin1Slice(start: number, end: number): string;
  utf8Slice(start: number, end: number): string;
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/** Expands a container path with wildcards into the existing container paths it matches. */
export async function expandGlob(root: string, pattern: string): Promise<string[]> {
  const comps = pattern.split('/').filter((c) => c !== '' && c !== '.');
  let current = ['/'];
  for (const comp of comps) {
    const next: string[] = [];
    for (const dir of current) {
      if (!hasGlob(comp)) {
        next.push(path.posix.join(dir, comp));
        continue;
      }
      let names: string[];
      try {
        names = await fs.readdir(await resolveInRoot(root, dir));
      } catch (err) {
        if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) continue;
        throw err;
      }
      for (const n of names.sort()) if (matchGlob(comp, n)) next.push(path.posix.join(dir, n));
    }
    current = next;
  }
  const out: string[] = [];
  for (const p of current) if (await lstatMaybe(await resolveInRoot(root, p, false))) out.push(p);
  return out;
}

export function parseSelector(selector: string | undefined): string[] {
  if (!selector) return ['/'];
  if (selector.startsWith('[')) return JSON.parse(selector) as string[];
  return [selector];
}

/** Checksum of the selected paths of the tree at `root` (see the module comment). */
export async function checksumTree(
  root: string,
  selector: string | undefined,
  opts: WalkOptions = {},
): Promise<Digest> {
  const lines = new LineDigest();
  const state: WalkState = {
    since: 0,
    stamp: { size: 0, mtimeSec: 0, mtimeNsec: 0, ctimeSec: 0, ctimeNsec: 0, ino: 0 },
    metaMode: -1,
    metaUid: -1,
    metaGid: -1,
    meta: '',
    cold: new ColdReads(SMALL_FILE),
  };
  for (const sel of parseSelector(selector)) {
    const paths = hasGlob(sel) ? await expandGlob(root, sel) : [sel];
    lines.push(`select ${JSON.stringify(sel)} ${paths.length}`);
    for (const p of paths) {
      lines.push(`path ${JSON.stringify(p)}`);
      await walk(await resolveInRoot(root, p), '', lines, opts, state);
    }
  }
  return lines.digest();
}

/** A filter from include/exclude matchers, for walks and copies. */
export function patternFilter(
  include: PatternMatcher,
  exclude: PatternMatcher,
): { filter: (rel: string, isDir: boolean) => boolean; descend: (rel: string) => boolean } {
  if (include.empty && exclude.empty) return { filter: () => true, descend: () => true };
  return {
    filter: (rel) => rel === '' || ((include.empty || include.matches(rel)) && !exclude.matches(rel)),
    descend: (rel) => {
      const inc = include.empty || include.matches(rel);
      if (!inc && !include.mayMatchBelow(rel)) return false;
      if (exclude.matches(rel)) return exclude.hasExclusions;
      return true;
    },
  };
}

/** Memoized checksums of results' snapshots. */
export class ContentChecksums {
  readonly #core: Core;
  readonly #memo = new Map<string, Promise<Digest>>();

  constructor(core: Core) {
    this.#core = core;
  }

  forResult(result: Result, selector: string | undefined, signal: AbortSignal): Promise<string> {
    const snap = snapshotOf(result);
    const key = `${snap}\0${selector ?? ''}`;
    let p = this.#memo.get(key);
    if (!p) {
      p = this.#compute(snap, selector, signal);
      this.#memo.set(key, p);
      p.catch(() => this.#memo.delete(key));
    }
    return p;
  }

  async #compute(snapshot: string, selector: string | undefined, signal: AbortSignal): Promise<Digest> {
    const session = await OpSession.open(this.#core, `checksum ${snapshot}`);
    try {
      const dir = await session.mount(await session.view(snapshot));
      return await checksumTree(dir, selector, { signal });
    } finally {
      await session.close();
    }
  }
}
