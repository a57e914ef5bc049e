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
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { type Digest, sha256 } from '../core/digest.ts';
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

export async function hashFile(file: string, signal?: AbortSignal): Promise<string> {
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

/** Feeds one entry and everything below it into `out`. */
async function walk(host: string, rel: string, out: string[], opts: WalkOptions): Promise<void> {
  opts.signal?.throwIfAborted();
  const st = await lstatMaybe(host);
  if (!st) {
    out.push(`missing ${JSON.stringify(rel)}`);
    return;
  }
  const isDir = st.isDirectory();
  const selected = rel === '' || !opts.filter || opts.filter(rel, isDir);
  if (!selected && !(isDir && opts.descend?.(rel))) return;
  const meta = `${Number(st.mode).toString(8)} ${st.uid}:${st.gid}`;
  if (isDir) {
    if (selected) out.push(`dir ${JSON.stringify(rel)} ${meta}`);
    for (const name of (await fs.readdir(host)).sort()) {
      await walk(path.join(host, name), rel === '' ? name : `${rel}/${name}`, out, opts);
    }
  } else if (st.isSymbolicLink()) {
    out.push(`link ${JSON.stringify(rel)} ${meta} ${JSON.stringify(await fs.readlink(host))}`);
  } else if (st.isFile()) {
    const key = `${host}\0${st.size}\0${st.mtimeNs}\0${st.ctimeNs}\0${st.ino}`;
    let h = opts.cache?.get(key);
    if (h === undefined) {
      h = await hashFile(host, opts.signal);
      opts.cache?.set(key, h);
    }
    out.push(`file ${JSON.stringify(rel)} ${meta} ${h}`);
  } else {
    out.push(`special ${JSON.stringify(rel)} ${meta} ${st.rdev}`);
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
  const lines: string[] = [];
  for (const sel of parseSelector(selector)) {
    const paths = hasGlob(sel) ? await expandGlob(root, sel) : [sel];
    lines.push(`select ${JSON.stringify(sel)} ${paths.length}`);
    for (const p of paths) {
      lines.push(`path ${JSON.stringify(p)}`);
      await walk(await resolveInRoot(root, p), '', lines, opts);
    }
  }
  return sha256(lines.join('\n'));
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
