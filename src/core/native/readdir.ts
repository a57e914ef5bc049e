/**
 * One directory's entries with their lstat data, from the addon's
 * `readdirStat` (open + getdents64 + fstatat/readlinkat relative to the
 * directory's descriptor, all in one native call), decoded lazily from the
 * one packed Buffer it returns: no Stats object and no path string per entry.
 *
 * Entries come sorted as `Array.prototype.sort` sorts their names (UTF-16
 * code units), `.` and `..` left out. Times are exact (seconds and
 * nanoseconds); sizes, inode and device numbers are doubles (exact below
 * 2^53). An entry that vanished between the listing and its lstat, or whose
 * name is not valid UTF-8 (a JavaScript string cannot name it exactly), is
 * `gone(i)`; its other fields are zero.
 *
 * Limits: a directory is read whole into memory (about 80 bytes plus the
 * name per entry), so a walk over a tree holds one listing per level of
 * depth, never the whole tree. Errors are Node-style system errors naming
 * the directory or entry (`code`, `syscall`, `path`); a directory that is a
 * symlink fails with ENOTDIR or ELOOP (it is not followed).
 */
import { native } from './index.ts';

const HEADER = 8;
/** Bytes before an entry's name (see `DirListing.raw`). */
export const FIXED = 80;
/**
 * Entry flags (u32 field 7): vanished; name not UTF-8; name plain ASCII;
 * name needs no JSON escape (no control character, quote or backslash).
 */
export const GONE = 1;
export const NOT_UTF8 = 2;
export const ASCII = 4;
export const JSON_PLAIN = 8;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/** The decoded view of one `readdirStat` result (see the module comment). */
export class DirListing {
  readonly count: number;
  readonly #buf: Buffer;
  readonly #f64: Float64Array;
  readonly #u32: Uint32Array;
  /** Byte offset of each record. */
  readonly #off: Uint32Array;
  /**
   * Raw fields for hot loops that cannot afford a method call per field
   * (cold code runs in the interpreter): entry i's record starts at byte
   * `off[i]`; its numbers are `f64[off[i] / 8 + k]` (k: 0 size, 1 mtimeSec,
   * 2 ctimeSec, 3 ino, 4 dev, 5 rdev) and `u32[off[i] / 4 + 12 + k]` (k: 0
   * mode, 1 uid, 2 gid, 3 mtimeNsec, 4 ctimeNsec, 5 name length, 6 link
   * length, 7 flags). Read-only by contract.
   */
  readonly raw: { buf: Buffer; f64: Float64Array; u32: Uint32Array; off: Uint32Array };

  constructor(raw: Buffer) {
    // Typed views need 8-byte alignment; the addon's buffers start at 0, copy otherwise.
    const buf = raw.byteOffset % 8 === 0 ? raw : Buffer.from(new Uint8Array(raw));
    this.#buf = buf;
    this.#f64 = new Float64Array(buf.buffer, buf.byteOffset, buf.length >> 3);
    this.#u32 = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >> 2);
    const n = this.#u32[0]!;
    this.count = n;
    this.#off = new Uint32Array(n);
    let off = HEADER;
    for (let i = 0; i < n; i++) {
      this.#off[i] = off;
      const u = (off + 48) >> 2;
      off += (FIXED + this.#u32[u + 5]! + this.#u32[u + 6]! + 7) & ~7;
    }
    if (off !== buf.length)
      throw new Error(`readdirStat: malformed result (${buf.length} bytes, ${n} entries)`);
    this.raw = { buf, f64: this.#f64, u32: this.#u32, off: this.#off };
  }

  #u(i: number, k: number): number {
    return this.#u32[((this.#off[i]! + 48) >> 2) + k]!;
  }

  #f(i: number, k: number): number {
    return this.#f64[(this.#off[i]! >> 3) + k]!;
  }

  name(i: number): string {
    const start = this.#off[i]! + FIXED;
    const end = start + this.#u(i, 5);
    return this.#u(i, 7) & ASCII
      ? this.#buf.toString('latin1', start, end)
      : this.#buf.toString('utf8', start, end);
  }

  /** The symlink's target ('' for other entries). */
  linkTarget(i: number): string {
    const start = this.#off[i]! + FIXED + this.#u(i, 5);
    return this.#buf.toString('utf8', start, start + this.#u(i, 6));
  }

  /** Vanished since the listing, or a name that is not UTF-8 (see the module comment). */
  gone(i: number): boolean {
    return (this.#u(i, 7) & (GONE | NOT_UTF8)) !== 0;
  }

  size(i: number): number {
    return this.#f(i, 0);
  }
  mtimeSec(i: number): number {
    return this.#f(i, 1);
  }
  ctimeSec(i: number): number {
    return this.#f(i, 2);
  }
  ino(i: number): number {
    return this.#f(i, 3);
  }
  dev(i: number): number {
    return this.#f(i, 4);
  }
  rdev(i: number): number {
    return this.#f(i, 5);
  }
  /** st_mode: type and permission bits. */
  mode(i: number): number {
    return this.#u(i, 0);
  }
  uid(i: number): number {
    return this.#u(i, 1);
  }
  gid(i: number): number {
    return this.#u(i, 2);
  }
  mtimeNsec(i: number): number {
    return this.#u(i, 3);
  }
  ctimeNsec(i: number): number {
    return this.#u(i, 4);
  }
  isDirectory(i: number): boolean {
    return (this.#u(i, 0) & S_IFMT) === S_IFDIR;
  }
  isFile(i: number): boolean {
    return (this.#u(i, 0) & S_IFMT) === S_IFREG;
  }
  isSymbolicLink(i: number): boolean {
    return (this.#u(i, 0) & S_IFMT) === S_IFLNK;
  }
}

/** Lists directory `dir` with each entry's lstat data (see the module comment). */
export function readDirStat(dir: string): DirListing {
  const addon = native();
  if (typeof addon.readdirStat !== 'function')
    throw new Error('the native addon predates readdirStat; run "npm run build:native"');
  return new DirListing(addon.readdirStat(dir));
}
