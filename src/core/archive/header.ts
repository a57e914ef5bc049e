/**
 * Tar header encoding (private helper of ./tar.ts): turns a TarHeader into
 * the 512-byte blocks that precede an entry's body, in POSIX pax format
 * (ustar blocks, plus one `x` extended header when a value does not fit).
 *
 * Rules, in the spirit of POSIX.1-2001 (pax) and what GNU tar reads:
 * - the path goes in `name` when it fits in 100 bytes, else it is split at a
 *   `/` into `prefix` (<= 155 bytes) and `name` (<= 100); when neither works
 *   or the path is not ASCII, a pax `path` record carries it (the ustar
 *   field keeps a truncated copy). Link names over 100 bytes or non-ASCII
 *   use `linkpath`.
 * - uid/gid above 0o7777777, size above 0o77777777777 and mtimes out of the
 *   ustar range (or sub-second, when `subsecond` is asked) use pax records;
 *   device numbers out of range use GNU base-256.
 * - xattrs become `SCHILY.xattr.<name>` records whose values are raw bytes
 *   (binary safe: security.capability survives).
 * - output is deterministic: records sorted by key, the extended header's
 *   own name is `PaxHeaders/<base name>` and its mtime is the entry's.
 * Names and link names are JavaScript strings, encoded as UTF-8: file names
 * that are not valid UTF-8 cannot be represented (a known limit).
 */
import { errInvalidArgument } from '../errors.ts';

export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'directory' | 'fifo';

export interface TarHeader {
  /** Path inside the archive; directories conventionally end with '/'. */
  name: string;
  type: EntryType;
  /** Permission bits including setuid, setgid and sticky (0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Body size; 0 for everything but 'file'. */
  size: number;
  /** Modification time, whole seconds since the epoch. */
  mtime: number;
  /** Nanoseconds part of the modification time (0..999999999). */
  mtimeNsec?: number;
  /** Target of a symlink or hard link. */
  linkname?: string;
  uname?: string;
  gname?: string;
  devmajor?: number;
  devminor?: number;
  /** Extended attributes; values are raw bytes. */
  xattrs?: Map<string, Uint8Array>;
  /** Other pax records read from the archive (not written). */
  pax?: Record<string, string>;
}

export interface EncodeOptions {
  /** Write the sub-second part of mtime as a pax record when it is not zero. */
  subsecond?: boolean;
}

export const BLOCK = 512;

const TYPEFLAG: Record<EntryType, number> = {
  file: 0x30,
  link: 0x31,
  symlink: 0x32,
  char: 0x33,
  block: 0x34,
  directory: 0x35,
  fifo: 0x36,
};

const MAX_OCTAL_8 = 0o7777777;
const MAX_OCTAL_12 = 0o77777777777;
const enc = new TextEncoder();

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7e || s.charCodeAt(i) < 0x20) return false;
  return true;
}

function writeString(buf: Uint8Array, off: number, len: number, value: string): void {
  const bytes = enc.encode(value);
  buf.set(bytes.subarray(0, len), off);
}

/** Octal, zero padded to len-1 digits and NUL terminated (as GNU tar writes). */
function writeOctal(buf: Uint8Array, off: number, len: number, value: number): void {
  const s = Math.trunc(value)
    .toString(8)
    .padStart(len - 1, '0');
  writeString(buf, off, len - 1, s);
  buf[off + len - 1] = 0;
}

/** GNU base-256: high bit of the first byte set, big-endian two's complement. */
function writeBase256(buf: Uint8Array, off: number, len: number, value: number): void {
  let v = BigInt(Math.trunc(value));
  for (let i = len - 1; i >= 1; i--) {
    buf[off + i] = Number(v & 0xffn);
    v >>= 8n;
  }
  buf[off] = value < 0 ? 0xff : 0x80;
}

function writeNumber(buf: Uint8Array, off: number, len: number, value: number, max: number): void {
  if (value >= 0 && value <= max) writeOctal(buf, off, len, value);
  else writeBase256(buf, off, len, value);
}

/** One pax record `"<len> <key>=<value>\n"`; the length counts itself. */
function paxRecord(key: string, value: Uint8Array): Uint8Array {
  const k = enc.encode(key);
  const rest = k.length + value.length + 3; // ' ' '=' '\n'
  let len = rest + String(rest).length;
  if (String(len).length !== String(rest).length) len = rest + String(len).length;
  const out = new Uint8Array(len);
  let o = 0;
  const ls = enc.encode(`${len} `);
  out.set(ls, o);
  o += ls.length;
  out.set(k, o);
  o += k.length;
  out[o++] = 0x3d;
  out.set(value, o);
  o += value.length;
  out[o] = 0x0a;
  return out;
}

/** Splits a long ASCII path into ustar prefix and name, or returns undefined. */
function splitUstar(path: string): [prefix: string, name: string] | undefined {
  if (path.length <= 100) return ['', path];
  if (path.length > 256) return undefined;
  // The name part must be <= 100 bytes and the prefix <= 155, split at a '/'.
  for (let i = path.length - 101; i < path.length; i++) {
    if (i < 1) continue;
    if (path[i] !== '/') continue;
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (prefix.length <= 155 && name.length <= 100 && name.length > 0) return [prefix, name];
  }
  return undefined;
}

function checksum(block: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  return sum;
}

function ustarBlock(
  h: TarHeader,
  typeflag: number,
  name: string,
  prefix: string,
  linkname: string,
  size: number,
): Uint8Array {
  const b = new Uint8Array(BLOCK);
  writeString(b, 0, 100, name);
  writeOctal(b, 100, 8, h.mode & 0o7777);
  writeNumber(b, 108, 8, h.uid <= MAX_OCTAL_8 ? h.uid : 0, MAX_OCTAL_8);
  writeNumber(b, 116, 8, h.gid <= MAX_OCTAL_8 ? h.gid : 0, MAX_OCTAL_8);
  writeNumber(b, 124, 12, size <= MAX_OCTAL_12 ? size : 0, MAX_OCTAL_12);
  const mt = h.mtime >= 0 && h.mtime <= MAX_OCTAL_12 ? h.mtime : 0;
  writeOctal(b, 136, 12, mt);
  b[156] = typeflag;
  writeString(b, 157, 100, linkname);
  writeString(b, 257, 6, 'ustar');
  b[263] = 0x30;
  b[264] = 0x30;
  writeString(b, 265, 32, h.uname ?? '');
  writeString(b, 297, 32, h.gname ?? '');
  if (h.type === 'char' || h.type === 'block') {
    writeNumber(b, 329, 8, h.devmajor ?? 0, MAX_OCTAL_8);
    writeNumber(b, 337, 8, h.devminor ?? 0, MAX_OCTAL_8);
  } else {
    writeOctal(b, 329, 8, 0);
    writeOctal(b, 337, 8, 0);
  }
  writeString(b, 345, 155, prefix);
  const sum = checksum(b);
  writeString(b, 148, 7, sum.toString(8).padStart(6, '0') + '\0');
  b[155] = 0x20;
  return b;
}

function baseName(path: string): string {
  const trimmed = path.endsWith('/') ? path.slice(0, -1) : path;
  const i = trimmed.lastIndexOf('/');
  return i < 0 ? trimmed : trimmed.slice(i + 1);
}

function formatTime(sec: number, nsec: number): string {
  if (!nsec) return String(sec);
  const frac = String(nsec).padStart(9, '0').replace(/0+$/, '');
  if (sec >= 0) return `${sec}.${frac}`;
  // Negative times: -1.25 means 1.25 s before the epoch.
  const total = -(sec * 1e9 + nsec);
  const s = Math.floor(total / 1e9);
  const n = total - s * 1e9;
  return `-${s}.${String(n).padStart(9, '0').replace(/0+$/, '')}`;
}

/** Size of the zero padding that follows a body of `size` bytes. */
export function paddingFor(size: number): number {
  const r = size % BLOCK;
  return r === 0 ? 0 : BLOCK - r;
}

/** Encodes the header blocks (pax extended header, if needed, and the ustar block) for one entry. */
export function encodeHeader(h: TarHeader, options: EncodeOptions = {}): Uint8Array {
  const typeflag = TYPEFLAG[h.type];
  if (typeflag === undefined) throw errInvalidArgument(`encode tar header: unknown entry type "${h.type}"`);
  if (!h.name) throw errInvalidArgument('encode tar header: empty entry name');
  const size = h.type === 'file' ? h.size : 0;
  if (!Number.isSafeInteger(size) || size < 0) {
    throw errInvalidArgument(`encode tar header for "${h.name}": invalid size ${h.size}`);
  }
  const records = new Map<string, Uint8Array>();

  let name = h.name;
  let prefix = '';
  const split = isAscii(h.name) ? splitUstar(h.name) : undefined;
  if (split) [prefix, name] = split;
  else {
    records.set('path', enc.encode(h.name));
    name = truncateUtf8(h.name, 100);
  }
  let linkname = h.linkname ?? '';
  if (linkname && (!isAscii(linkname) || linkname.length > 100)) {
    records.set('linkpath', enc.encode(linkname));
    linkname = truncateUtf8(linkname, 100);
  }
  if (h.uid > MAX_OCTAL_8 || h.uid < 0) records.set('uid', enc.encode(String(h.uid)));
  if (h.gid > MAX_OCTAL_8 || h.gid < 0) records.set('gid', enc.encode(String(h.gid)));
  if (size > MAX_OCTAL_12) records.set('size', enc.encode(String(size)));
  const nsec = options.subsecond ? (h.mtimeNsec ?? 0) : 0;
  if (nsec !== 0 || h.mtime < 0 || h.mtime > MAX_OCTAL_12) {
    records.set('mtime', enc.encode(formatTime(h.mtime, nsec)));
  }
  if (h.uname && (!isAscii(h.uname) || h.uname.length > 32)) records.set('uname', enc.encode(h.uname));
  if (h.gname && (!isAscii(h.gname) || h.gname.length > 32)) records.set('gname', enc.encode(h.gname));
  if (h.xattrs) {
    for (const [k, v] of h.xattrs) {
      if (!k || k.includes('=') || k.includes('\0')) {
        throw errInvalidArgument(`encode tar header for "${h.name}": invalid xattr name "${k}"`);
      }
      records.set(`SCHILY.xattr.${k}`, v);
    }
  }

  const main = ustarBlock(h, typeflag, name, prefix, linkname, size);
  if (records.size === 0) return main;

  const keys = [...records.keys()].sort();
  const parts = keys.map((k) => paxRecord(k, records.get(k)!));
  const paxLen = parts.reduce((n, p) => n + p.length, 0);
  const paxName = truncateUtf8(`PaxHeaders/${baseName(h.name)}`, 100);
  const paxHeader: TarHeader = {
    name: paxName,
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: paxLen,
    mtime: h.mtime >= 0 && h.mtime <= MAX_OCTAL_12 ? h.mtime : 0,
  };
  const xblock = ustarBlock(paxHeader, 0x78 /* 'x' */, paxName, '', '', paxLen);
  const out = new Uint8Array(BLOCK + paxLen + paddingFor(paxLen) + BLOCK);
  out.set(xblock, 0);
  let o = BLOCK;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  out.set(main, BLOCK + paxLen + paddingFor(paxLen));
  return out;
}

/** Cuts a string to at most `max` UTF-8 bytes without splitting a character. */
function truncateUtf8(s: string, max: number): string {
  const bytes = enc.encode(s);
  if (bytes.length <= max) return s;
  let end = max;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return new TextDecoder().decode(bytes.subarray(0, end));
}

/** The two zero blocks that end an archive. */
export const END_OF_ARCHIVE: Uint8Array = new Uint8Array(2 * BLOCK);
