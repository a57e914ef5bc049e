/**
 * The persistent file hash cache of local sources (one file per op state
 * directory, `<stateDir>/local-checksums.json`), a `FileHashCache` for
 * `checksumTree`.
 *
 * Keys are the walk's `<host path>\0<size>\0<mtime ns>\0<ctime ns>\0<inode>`.
 * Entries are stored per host path: `{ "v": 2, "files": { path: "<stamp>\0<hash>" } }`,
 * so a changed file replaces its entry instead of adding one (the file stays
 * as large as the set of paths seen, not the set of versions). A key whose
 * stamp differs from the recorded one is a miss.
 *
 * Costs, for a 20,000-file context: one JSON parse on first use per process
 * (the parsed object is the lookup table, nothing is copied), one string
 * slice per lookup. `save()` writes (temp file, fsync, rename) only when an
 * entry was added or replaced since the last save; an unchanged tree never
 * rewrites the file. Entries of paths that disappeared stay until the file
 * holds more than MAX_ENTRIES paths; then only the paths used by this
 * process are kept.
 *
 * Limits: one process owns a state directory (the CLI's root lock); two
 * processes saving at once keep the last writer's entries (a lost entry only
 * costs a re-read). A file in the old flat format (before v2) is ignored and
 * replaced at the next save.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../core/runtime/spec.ts';
import type { FileHashCache } from './checksum.ts';

/** Paths kept before unused ones are dropped at save. */
export const MAX_ENTRIES = 200_000;

interface FileV2 {
  v: 2;
  files: Record<string, string>;
}

export class PersistentHashCache implements FileHashCache {
  readonly file: string;
  /** host path → `<stamp>\0<hash>` (keys are absolute paths: see `load`). */
  #files: Record<string, string> = Object.create(null) as Record<string, string>;
  #count = 0;
  /** Paths looked up or set by this process (for pruning past MAX_ENTRIES). */
  #touched: string[] = [];
  #dirty = false;
  /** Number of saves that wrote the file (for tests and benchmarks). */
  writes = 0;

  constructor(file: string) {
    this.file = file;
  }

  /** Loads the file; a missing, unreadable or old-format file starts an empty cache. */
  async load(): Promise<void> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch {
      return;
    }
    try {
      const parsed = JSON.parse(text) as Partial<FileV2>;
      if (parsed.v !== 2 || typeof parsed.files !== 'object' || parsed.files === null) {
        this.#dirty = true; // replace the old format at the next save
        return;
      }
      // Used as parsed (no copy): keys are absolute paths, so they never
      // meet Object.prototype's property names.
      this.#files = parsed.files;
      this.#count = Object.keys(this.#files).length;
    } catch {
      this.#dirty = true; // corrupt: rewrite it
    }
  }

  get size(): number {
    return this.#count;
  }

  get(key: string): string | undefined {
    const cut = key.indexOf('\0');
    const file = key.slice(0, cut);
    const rec = this.#files[file];
    if (rec === undefined) return undefined;
    this.#touch(file);
    // rec = stamp + '\0' + 64 hex; the key's stamp is key.slice(cut + 1).
    const stampLen = key.length - cut - 1;
    if (rec.length !== stampLen + 65 || !key.endsWith(rec.slice(0, stampLen))) return undefined;
    return rec.slice(stampLen + 1);
  }

  set(key: string, hash: string): void {
    const cut = key.indexOf('\0');
    const file = key.slice(0, cut);
    if (this.#files[file] === undefined) this.#count++;
    this.#files[file] = `${key.slice(cut + 1)}\0${hash}`;
    this.#touch(file);
    this.#dirty = true;
  }

  #touch(file: string): void {
    this.#touched.push(file);
    // A long-lived process re-walking unchanged trees never saves: keep the list bounded.
    if (this.#touched.length > 4 * MAX_ENTRIES) this.#touched = [...new Set(this.#touched)];
  }

  /** Writes the file if anything changed since the last load or save. */
  async save(): Promise<void> {
    if (!this.#dirty) return;
    if (this.#count > MAX_ENTRIES) {
      const keep = Object.create(null) as Record<string, string>;
      let n = 0;
      for (const f of new Set(this.#touched)) {
        const rec = this.#files[f];
        if (rec !== undefined) {
          keep[f] = rec;
          n++;
        }
      }
      this.#files = keep;
      this.#count = n;
    }
    this.#touched = [];
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    const body: FileV2 = { v: 2, files: this.#files };
    await writeFileAtomic(this.file, JSON.stringify(body));
    this.#dirty = false;
    this.writes++;
  }
}

const caches = new Map<string, Promise<PersistentHashCache>>();

/** The process-wide cache of a state directory, loaded once. */
export function hashCacheFor(stateDir: string): Promise<PersistentHashCache> {
  const file = path.join(stateDir, 'local-checksums.json');
  let p = caches.get(file);
  if (!p) {
    const c = new PersistentHashCache(file);
    p = c.load().then(() => c);
    caches.set(file, p);
    p.catch(() => caches.delete(file));
  }
  return p;
}
