/**
 * The persistent file hash cache of local sources, a `FileHashCache` for
 * `checksumTree`: one file per local directory in an op state directory,
 * `<stateDir>/local-checksums/<sha256 of the directory's path, 32 hex>.bin`,
 * so a build loads, and after a change rewrites, only its own context's
 * entries, not those of every project built on the same root. At most
 * MAX_CACHE_FILES such files are kept: a save past that removes the least
 * recently written (their contexts are only re-read when built again). The
 * single file of every context before this (`<stateDir>/local-checksums.bin`)
 * is removed at the first save.
 *
 * One entry per host path: the file's stamp (size, mtime and ctime in
 * seconds + nanoseconds, inode) and the sha256 of its content. A lookup
 * whose stamp differs from the recorded one is a miss; a changed file
 * replaces its entry (the file stays as large as the set of paths seen, not
 * the set of versions).
 *
 * File format (binary, little-endian as the machine that wrote it; read
 * back only on the same machine):
 *   0   8  magic "KILNHC\x01\x00"
 *   8   4  u32 entry count n
 *   12  4  u32 CRC-32 of everything after the header
 *   16  48n  f64 × 6 per entry: size, mtimeSec, mtimeNsec, ctimeSec, ctimeNsec, ino
 *   ..  64n  hex sha256 per entry (ASCII)
 *   ..       the n host paths, UTF-8, joined by NUL
 * Loading is one read, one CRC, one copy of the stamp block and one decode
 * of each text block. Entries are saved in the order they were last used,
 * so the next walk of the same tree asks for them in file order: a lookup
 * compares the path with the entry after the previous hit and six numbers;
 * the Map of all paths is built only when that guess misses (a walk in
 * another order, a new file). (The JSON format before it, local-checksums.json,
 * cost a JSON parse and a string build per lookup; it is ignored and removed
 * at the next save, so the first build after the change re-reads the files.)
 *
 * `save()` writes (temp file, fsync, rename) only when an entry was added or
 * replaced since the last load or save; an unchanged tree never rewrites the
 * file. Entries of paths that disappeared stay until the file holds more
 * than MAX_ENTRIES paths; then only the paths used by this process are kept.
 * A missing, truncated, corrupt (CRC) or foreign file starts an empty cache.
 *
 * Limits: one process owns a state directory (the CLI's root lock); two
 * processes saving at once keep the last writer's entries (a lost entry only
 * costs a re-read). Paths cannot hold NUL (no host path can).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { wrap } from '../core/errors.ts';
import type { FileHashCache, FileStamp } from './checksum.ts';

/** Paths kept before unused ones are dropped at save. */
export const MAX_ENTRIES = 200_000;
/** Cache files (local directories) kept in one state directory. */
export const MAX_CACHE_FILES = 256;

const MAGIC = Buffer.from('KILNHC\x01\x00', 'latin1');
const HEADER = 16;
/** Numbers per entry in the stamp block. */
const F = 6;
const HEX = 64;

export class PersistentHashCache implements FileHashCache {
  readonly file: string;
  /** host path → slot; built on the first lookup the cursor misses (see `#slotOf`). */
  #index: Map<string, number> | undefined = new Map<string, number>();
  #paths: string[] = [];
  /** Hashes set since the load; a loaded slot's hash is sliced from `#hex` when first asked. */
  #hashes: (string | undefined)[] = [];
  /** The loaded hex block (64 characters per loaded slot). */
  #hex = '';
  /** The slot after the last one found: walks look files up in the order they were saved. */
  #cursor = 0;
  /** F numbers per slot (see the module comment). */
  #stamps = new Float64Array(F * 256);
  /** Slots looked up or set since the load or save (for pruning past MAX_ENTRIES), and their order. */
  #used = new Uint8Array(256);
  #order = new Int32Array(256);
  #orderLen = 0;
  #dirty = false;
  /** Number of saves that wrote the file (for tests and benchmarks). */
  writes = 0;
  #obsolete: readonly string[];
  readonly #maxSiblings: number | undefined;

  /**
   * `obsolete`: files removed at the first save that writes (an older layout's).
   * `maxSiblings`: at most this many `*.bin` files are kept in the file's
   * directory; a save past it removes the least recently written others.
   */
  constructor(file: string, opts: { obsolete?: readonly string[]; maxSiblings?: number } = {}) {
    this.file = file;
    this.#obsolete = opts.obsolete ?? [];
    this.#maxSiblings = opts.maxSiblings;
  }

  /** Loads the file; a missing or unusable file starts an empty cache (see the module comment). */
  async load(): Promise<void> {
    let buf: Buffer;
    try {
      buf = await fs.readFile(this.file);
    } catch {
      return;
    }
    if (!this.#decode(buf)) this.#dirty = true; // replace it at the next save
  }

  #decode(buf: Buffer): boolean {
    if (buf.length < HEADER || !buf.subarray(0, 8).equals(MAGIC)) return false;
    const n = buf.readUInt32LE(8);
    const stampEnd = HEADER + F * 8 * n;
    const hexEnd = stampEnd + HEX * n;
    if (hexEnd > buf.length || crc32(buf.subarray(HEADER)) !== buf.readUInt32LE(12)) return false;
    const paths = n === 0 ? [] : buf.toString('utf8', hexEnd).split('\0');
    if (paths.length !== n) return false;
    const stamps = new Float64Array(Math.max(F * 256, F * n));
    new Uint8Array(stamps.buffer).set(buf.subarray(HEADER, stampEnd));
    this.#hex = buf.toString('latin1', stampEnd, hexEnd);
    this.#index = undefined;
    this.#paths = paths;
    this.#hashes = new Array<string | undefined>(n);
    this.#stamps = stamps;
    this.#used = new Uint8Array(Math.max(256, n));
    this.#orderLen = 0;
    this.#cursor = 0;
    return true;
  }

  get size(): number {
    return this.#paths.length;
  }

  /**
   * The slot of a path. A walk asks in the order the file was saved in (see
   * `save`), so the slot after the previous hit is tried first; the Map of
   * all paths is built only when that guess misses.
   */
  #slotOf(file: string): number | undefined {
    const c = this.#cursor;
    if (c < this.#paths.length && this.#paths[c] === file) {
      this.#cursor = c + 1;
      return c;
    }
    // A new walk of the same tree starts over at the first slot.
    if (this.#paths.length > 0 && this.#paths[0] === file) {
      this.#cursor = 1;
      return 0;
    }
    const slot = this.#indexOrBuild().get(file);
    if (slot !== undefined) this.#cursor = slot + 1;
    return slot;
  }

  /** Number of times the path index was built (for tests and benchmarks). */
  indexBuilds = 0;

  #indexOrBuild(): Map<string, number> {
    if (!this.#index) {
      this.indexBuilds++;
      const index = new Map<string, number>();
      for (let i = 0; i < this.#paths.length; i++) index.set(this.#paths[i]!, i);
      this.#index = index;
    }
    return this.#index;
  }

  get(file: string, st: Readonly<FileStamp>): string | undefined {
    // The cursor's guess inline (this runs once per file of every walk, often on cold code).
    let slot: number | undefined = this.#cursor;
    if (slot < this.#paths.length && this.#paths[slot] === file) this.#cursor = slot + 1;
    else slot = this.#slotOf(file);
    if (slot === undefined) return undefined;
    if (!this.#used[slot]) this.#use(slot);
    const s = this.#stamps;
    const o = slot * F;
    if (
      s[o] !== st.size ||
      s[o + 1] !== st.mtimeSec ||
      s[o + 2] !== st.mtimeNsec ||
      s[o + 3] !== st.ctimeSec ||
      s[o + 4] !== st.ctimeNsec ||
      s[o + 5] !== st.ino
    )
      return undefined;
    return this.#hashes[slot] ?? this.#hex.slice(slot * HEX, (slot + 1) * HEX);
  }

  set(file: string, st: Readonly<FileStamp>, hash: string): void {
    if (hash.length !== HEX) throw new Error(`hash cache: "${hash}" is not a hex sha256`);
    const index = this.#indexOrBuild();
    let slot = index.get(file);
    if (slot === undefined) {
      slot = this.#paths.length;
      if (F * (slot + 1) > this.#stamps.length) {
        const grown = new Float64Array(this.#stamps.length * 2);
        grown.set(this.#stamps);
        this.#stamps = grown;
        const used = new Uint8Array(this.#used.length * 2);
        used.set(this.#used);
        this.#used = used;
      }
      this.#paths.push(file);
      this.#hashes.push(hash);
      index.set(file, slot);
    } else this.#hashes[slot] = hash;
    const o = slot * F;
    const s = this.#stamps;
    s[o] = st.size;
    s[o + 1] = st.mtimeSec;
    s[o + 2] = st.mtimeNsec;
    s[o + 3] = st.ctimeSec;
    s[o + 4] = st.ctimeNsec;
    s[o + 5] = st.ino;
    this.#use(slot);
    this.#dirty = true;
  }

  /** Marks a slot used, remembering the order of first use (the order `save` writes). */
  #use(slot: number): void {
    if (this.#used[slot]) return;
    this.#used[slot] = 1;
    if (this.#order.length === this.#orderLen) {
      const grown = new Int32Array(Math.max(256, this.#order.length * 2));
      grown.set(this.#order);
      this.#order = grown;
    }
    this.#order[this.#orderLen++] = slot;
  }

  /**
   * Lays the slots out in the order this process first used them (the next
   * walk of the same tree then finds each file at the cursor), followed by
   * the unused ones unless `dropUnused` (past MAX_ENTRIES).
   */
  #reorder(dropUnused: boolean): void {
    const order = Array.from(this.#order.subarray(0, this.#orderLen));
    if (!dropUnused) for (let i = 0; i < this.#paths.length; i++) if (!this.#used[i]) order.push(i);
    const n = order.length;
    const paths = new Array<string>(n);
    const hashes = new Array<string>(n);
    const stamps = new Float64Array(Math.max(F * 256, F * n));
    for (let j = 0; j < n; j++) {
      const i = order[j]!;
      paths[j] = this.#paths[i]!;
      hashes[j] = this.#hashes[i] ?? this.#hex.slice(i * HEX, (i + 1) * HEX);
      stamps.set(this.#stamps.subarray(i * F, (i + 1) * F), j * F);
    }
    this.#paths = paths;
    this.#hashes = hashes;
    this.#hex = '';
    this.#stamps = stamps;
    this.#index = undefined;
    this.#cursor = 0;
    this.#used = new Uint8Array(Math.max(256, n));
    this.#orderLen = 0;
  }

  #encode(): Buffer {
    const n = this.#paths.length;
    const joined = this.#paths.join('\0');
    const stampEnd = HEADER + F * 8 * n;
    const hexEnd = stampEnd + HEX * n;
    const buf = Buffer.alloc(hexEnd + Buffer.byteLength(joined));
    MAGIC.copy(buf, 0);
    buf.writeUInt32LE(n, 8);
    buf.set(new Uint8Array(this.#stamps.buffer, 0, F * 8 * n), HEADER);
    buf.write(this.#hashes.join(''), stampEnd, 'latin1');
    buf.write(joined, hexEnd, 'utf8');
    buf.writeUInt32LE(crc32(buf.subarray(HEADER)), 12);
    return buf;
  }

  /** Writes the file if anything changed since the last load or save. */
  async save(): Promise<void> {
    if (!this.#dirty) return;
    this.#reorder(this.#paths.length > MAX_ENTRIES);
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    await writeAtomic(this.file, this.#encode());
    for (const f of this.#obsolete) await fs.rm(f, { force: true });
    this.#obsolete = [];
    if (this.#maxSiblings !== undefined) await pruneSiblings(this.file, this.#maxSiblings);
    this.#dirty = false;
    this.writes++;
  }
}

/** Removes the least recently written `*.bin` files beside `file` (never it) past `max`. */
async function pruneSiblings(file: string, max: number): Promise<void> {
  const dir = path.dirname(file);
  const names = (await fs.readdir(dir)).filter((n) => n.endsWith('.bin'));
  if (names.length <= max) return;
  const own = path.basename(file);
  const dated: { name: string; mtimeMs: number }[] = [];
  for (const name of names) {
    if (name === own) continue;
    const st = await fs.stat(path.join(dir, name)).catch(() => undefined);
    if (st) dated.push({ name, mtimeMs: st.mtimeMs });
  }
  dated.sort((a, b) => a.mtimeMs - b.mtimeMs);
  for (const { name } of dated.slice(0, names.length - max))
    await fs.rm(path.join(dir, name), { force: true });
}

/** Temp file in the same directory, fsync, rename. */
async function writeAtomic(file: string, data: Buffer): Promise<void> {
  const tmp = `${file}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    const fh = await fs.open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw wrap(err, `write the hash cache "${file}"`);
  }
}

const caches = new Map<string, Promise<PersistentHashCache>>();

/** Where the hashes of the files under local directory `dir` are kept in `stateDir`. */
export function hashCacheFile(stateDir: string, dir: string): string {
  const name = createHash('sha256').update(path.resolve(dir)).digest('hex').slice(0, 32);
  return path.join(stateDir, 'local-checksums', `${name}.bin`);
}

/** The process-wide cache of local directory `dir` in a state directory, loaded once. */
export function hashCacheFor(stateDir: string, dir: string): Promise<PersistentHashCache> {
  const file = hashCacheFile(stateDir, dir);
  let p = caches.get(file);
  if (!p) {
    const c = new PersistentHashCache(file, {
      // The layouts before this one: one file of every directory, binary, and before it JSON.
      obsolete: [path.join(stateDir, 'local-checksums.bin'), path.join(stateDir, 'local-checksums.json')],
      maxSiblings: MAX_CACHE_FILES,
    });
    p = c.load().then(() => c);
    caches.set(file, p);
    p.catch(() => caches.delete(file));
  }
  return p;
}
