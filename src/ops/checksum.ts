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
 * host path + size + mtime + ctime + inode (unchanged files are not re-read).
 *
 * `ContentChecksums.forResult(result, selector)`: mounts the result's
 * committed snapshot read-only and checksums it; memoized by snapshot name +
 * selector, since committed snapshots never change.
 */
import { createHash } from 'node:crypto';
import { createReadStream, lstatSync, readdirSync, readFileSync, readlinkSync, type Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Digest } from '../core/digest.ts';
import { isErrno } from '../core/errors.ts';
import type { Core } from '../core/metadata/index.ts';
import type { Result } from '../solver/types.ts';
import { lstatMaybe, resolveInRoot } from './fsutil.ts';
import { hasGlob, matchGlob, type PatternMatcher } from './patterns.ts';
import { OpSession, snapshotOf } from './refs.ts';

/** Hashes of file contents, keyed by what identifies an unchanged file. */
export interface FileHashCache {
  get(key: string): string | undefined;
  set(key: string, value: string): void;
}

/** Files up to this size are hashed from one synchronous read (a stream costs more than the read). */
const SMALL_FILE = 64 << 10;

export async function hashFile(file: string, signal?: AbortSignal, size?: number): Promise<string> {
  if (size !== undefined && size <= SMALL_FILE) {
    const data = readFileSync(file);
    // A file that grew past the limit since its lstat is read whole anyway (still correct).
    return createHash('sha256').update(data).digest('hex');
  }
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { signal })) h.update(chunk as Buffer);
  return h.digest('hex');
}

export interface WalkOptions {
  cache?: FileHashCache;
  signal?: AbortSignal;
  /** Only paths (relative to the walked top) the filter accepts; dirs it rejects are still descended when `descend` says so. */
  filter?: (rel: string, isDir: boolean) => boolean;
  descend?: (rel: string) => boolean;
}

/**
 * lstat that answers undefined for a missing path (synchronous: see `walk`).
 * Number stats, not BigInt ones: a BigIntStats allocates a dozen BigInts,
 * which on a 20,000-file walk costs more in garbage collection than the
 * syscalls. Times lose nanoseconds (a double holds epoch milliseconds to a
 * quarter of a microsecond), finer than the filesystems' own timestamp
 * granularity; inode numbers above 2^53 would lose precision.
 */
function lstatSyncMaybe(p: string): Stats | undefined {
  try {
    return lstatSync(p, { throwIfNoEntry: false });
  } catch (err) {
    if (isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

/** Entries stat'ed between two yields to the event loop. */
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

/** Child path of a walked directory (readdir names hold no '/'; cheaper than path.join). */
function childOf(dir: string, name: string): string {
  return dir.endsWith('/') ? dir + name : `${dir}/${name}`;
}

interface WalkState {
  /** Entries stat'ed since the last yield. */
  since: number;
}

/**
 * Feeds one entry and everything below it into `out`. Directory listings
 * and lstat calls are synchronous: on a large tree of unchanged files the
 * walk is nothing but metadata calls, and a synchronous lstat costs a few
 * microseconds where an awaited one costs a thread-pool round trip (tens of
 * microseconds, serialised). The walk yields to the event loop every
 * YIELD_EVERY entries so other work (and abort signals) keep running.
 */
async function walk(
  host: string,
  rel: string,
  out: LineDigest,
  opts: WalkOptions,
  state: WalkState,
): Promise<void> {
  opts.signal?.throwIfAborted();
  const st = lstatSyncMaybe(host);
  if (!st) {
    out.push(`missing ${JSON.stringify(rel)}`);
    return;
  }
  await visit(host, rel, st, out, opts, state);
}

/**
 * Feeds one lstat'ed entry and everything below it into `out`. Returns a
 * promise only when it has to wait (a directory, a file to hash): the
 * common case, a file whose hash is cached, costs no promise.
 */
function visit(
  host: string,
  rel: string,
  st: Stats,
  out: LineDigest,
  opts: WalkOptions,
  state: WalkState,
): Promise<void> | undefined {
  const isDir = st.isDirectory();
  const selected = rel === '' || !opts.filter || opts.filter(rel, isDir);
  if (!selected && !(isDir && opts.descend?.(rel))) return undefined;
  const meta = `${st.mode.toString(8)} ${st.uid}:${st.gid}`;
  if (isDir) {
    if (selected) out.push(`dir ${JSON.stringify(rel)} ${meta}`);
    return walkDir(host, rel, out, opts, state);
  }
  if (st.isSymbolicLink()) {
    out.push(`link ${JSON.stringify(rel)} ${meta} ${JSON.stringify(readlinkSync(host))}`);
  } else if (st.isFile()) {
    const key = `${host}\0${st.size}\0${st.mtimeMs}\0${st.ctimeMs}\0${st.ino}`;
    const h = opts.cache?.get(key);
    if (h === undefined) {
      return hashFile(host, opts.signal, st.size).then((hash) => {
        opts.cache?.set(key, hash);
        out.push(`file ${JSON.stringify(rel)} ${meta} ${hash}`);
      });
    }
    out.push(`file ${JSON.stringify(rel)} ${meta} ${h}`);
  } else {
    out.push(`special ${JSON.stringify(rel)} ${meta} ${st.rdev}`);
  }
  return undefined;
}

/** The entries of a directory, in name order. */
async function walkDir(
  host: string,
  rel: string,
  out: LineDigest,
  opts: WalkOptions,
  state: WalkState,
): Promise<void> {
  for (const name of readdirSync(host).sort()) {
    if (++state.since >= YIELD_EVERY) {
      state.since = 0;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    opts.signal?.throwIfAborted();
    const child = childOf(host, name);
    const childRel = rel === '' ? name : `${rel}/${name}`;
    const st = lstatSyncMaybe(child);
    if (!st) {
      out.push(`missing ${JSON.stringify(childRel)}`); // removed since the listing
      continue;
    }
    const p = visit(child, childRel, st, out, opts, state);
    if (p) await p;
  }
}

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
  const state: WalkState = { since: 0 };
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
