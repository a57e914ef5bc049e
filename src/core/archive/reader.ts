/**
 * Streaming tar reader (private part of ./tar.ts): an async iterable of
 * entries, each with a body stream that must be read (or abandoned) before
 * asking for the next entry; unread bodies are skipped.
 *
 * Understands ustar (with `prefix`), old GNU and v7 headers, pax `x`
 * (per-entry) and `g` (global) extended headers incl. binary-safe
 * `SCHILY.xattr.*` and `LIBARCHIVE.xattr.*`, GNU `L`/`K` long names, and GNU
 * base-256 numeric fields. Every header checksum is verified (unsigned or
 * the historical signed sum); a mismatch throws DataLoss naming the offset.
 * Link, symlink, device, directory and fifo entries are header-only (any size
 * field is ignored), as Go's archive/tar does. Not supported (throws):
 * GNU sparse files and multi-volume archives. The end of the archive is two
 * zero blocks, a single one, or the end of input at a header boundary; what
 * follows the end marker is read and discarded.
 */
import { errDataLoss, KilnError } from '../errors.ts';
import { ByteReader } from './bytes.ts';
import { BLOCK, type EntryType, paddingFor, type TarHeader } from './header.ts';

function errNotImplemented(message: string): KilnError {
  return new KilnError('NotImplemented', message);
}

export interface TarEntry {
  header: TarHeader;
  /** The entry's data (only 'file' entries have any); read it before asking for the next entry. */
  body: AsyncIterable<Uint8Array>;
}

const dec = new TextDecoder();

function cstring(b: Uint8Array, off: number, len: number): string {
  let end = off;
  const max = off + len;
  while (end < max && b[end] !== 0) end++;
  return dec.decode(b.subarray(off, end));
}

function parseNumber(b: Uint8Array, off: number, len: number, what: string, at: number): number {
  const first = b[off]!;
  if (first & 0x80) {
    // GNU base-256: big-endian; 0xff as first byte means a negative two's complement value.
    let v = BigInt(first === 0xff ? 0xff : first & 0x7f);
    for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(b[off + i]!);
    if (first === 0xff) v -= 1n << BigInt(8 * len);
    const n = Number(v);
    if (!Number.isSafeInteger(n)) throw errDataLoss(`read tar: ${what} at offset ${at} is out of range`);
    return n;
  }
  let s = '';
  for (let i = off; i < off + len; i++) {
    const c = b[i]!;
    if (c === 0) break;
    s += String.fromCharCode(c);
  }
  s = s.trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw errDataLoss(`read tar: invalid ${what} "${s}" in header at offset ${at}`);
  return Number.parseInt(s, 8);
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function verifyChecksum(b: Uint8Array, at: number): void {
  const stored = parseNumber(b, 148, 8, 'checksum', at);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[i]!;
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  if (stored !== unsigned && stored !== signed) {
    const name = cstring(b, 0, 100);
    throw errDataLoss(
      `read tar: header checksum mismatch at offset ${at} (entry "${name}"): stored ${stored}, computed ${unsigned}`,
    );
  }
}

interface PaxValues {
  path?: string;
  linkpath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  uname?: string;
  gname?: string;
  mtime?: [number, number];
  xattrs: Map<string, Uint8Array>;
  other: Record<string, string>;
}

function parseTime(s: string, at: number): [number, number] {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(s);
  if (!m) throw errDataLoss(`read tar: invalid pax mtime "${s}" at offset ${at}`);
  const sec = Number(m[2]);
  const frac = (m[3] ?? '').slice(0, 9).padEnd(9, '0');
  const nsec = Number(frac);
  if (m[1] === '-') return nsec ? [-sec - 1, 1e9 - nsec] : [-sec, 0];
  return [sec, nsec];
}

function parsePax(data: Uint8Array, at: number, into: PaxValues): void {
  let o = 0;
  while (o < data.length) {
    if (data[o] === 0) break; // trailing NULs
    let sp = o;
    while (sp < data.length && data[sp] !== 0x20) sp++;
    const len = Number(dec.decode(data.subarray(o, sp)));
    if (!Number.isSafeInteger(len) || len <= 0 || o + len > data.length || data[o + len - 1] !== 0x0a) {
      throw errDataLoss(`read tar: malformed pax record at offset ${at + BLOCK + o}`);
    }
    let eq = sp + 1;
    while (eq < o + len && data[eq] !== 0x3d) eq++;
    if (eq >= o + len) throw errDataLoss(`read tar: pax record without "=" at offset ${at + BLOCK + o}`);
    const key = dec.decode(data.subarray(sp + 1, eq));
    const raw = data.slice(eq + 1, o + len - 1);
    o += len;
    applyPaxRecord(into, key, raw, at);
  }
}

function applyPaxRecord(into: PaxValues, key: string, raw: Uint8Array, at: number): void {
  if (key.startsWith('SCHILY.xattr.')) {
    into.xattrs.set(key.slice('SCHILY.xattr.'.length), raw);
    return;
  }
  if (key.startsWith('LIBARCHIVE.xattr.')) {
    const name = decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length));
    into.xattrs.set(name, Buffer.from(dec.decode(raw), 'base64'));
    return;
  }
  const value = dec.decode(raw);
  const num = (what: string): number => {
    if (!/^\d+$/.test(value)) throw errDataLoss(`read tar: invalid pax ${what} "${value}" at offset ${at}`);
    return Number(value);
  };
  switch (key) {
    case 'path':
      into.path = value;
      break;
    case 'linkpath':
      into.linkpath = value;
      break;
    case 'size':
      into.size = num('size');
      break;
    case 'uid':
      into.uid = num('uid');
      break;
    case 'gid':
      into.gid = num('gid');
      break;
    case 'uname':
      into.uname = value;
      break;
    case 'gname':
      into.gname = value;
      break;
    case 'mtime':
      into.mtime = parseTime(value, at);
      break;
    default:
      if (key.startsWith('GNU.sparse.')) {
        throw errNotImplemented(
          `read tar: GNU sparse files are not supported (pax record "${key}" at offset ${at})`,
        );
      }
      into.other[key] = value;
  }
}

function emptyPax(): PaxValues {
  return { xattrs: new Map(), other: {} };
}

function typeOf(flag: number, name: string, at: number): EntryType {
  switch (flag) {
    case 0:
    case 0x30:
    case 0x37:
      return 'file';
    case 0x31:
      return 'link';
    case 0x32:
      return 'symlink';
    case 0x33:
      return 'char';
    case 0x34:
      return 'block';
    case 0x35:
      return 'directory';
    case 0x36:
      return 'fifo';
    default:
      throw errNotImplemented(
        `read tar: entry "${name}" at offset ${at} has unsupported type "${String.fromCharCode(flag)}"`,
      );
  }
}

async function readData(r: ByteReader, size: number, what: string, at: number): Promise<Uint8Array> {
  if (size > 64 * 1024 * 1024)
    throw errDataLoss(`read tar: ${what} at offset ${at} is too large (${size} bytes)`);
  const data = await r.read(size);
  if (data.length !== size)
    throw errDataLoss(`read tar: unexpected end of archive in ${what} at offset ${at}`);
  if ((await r.skip(paddingFor(size))) !== paddingFor(size)) {
    throw errDataLoss(`read tar: unexpected end of archive after ${what} at offset ${at}`);
  }
  return data;
}

/** Reads a tar stream entry by entry. */
export async function* readTar(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntry, void, undefined> {
  const r = new ByteReader(source);
  const global = emptyPax();
  let local = emptyPax();
  let longName: string | undefined;
  let longLink: string | undefined;
  let ended = false;
  try {
    for (;;) {
      const at = r.offset;
      const block = await r.read(BLOCK);
      if (block.length === 0) {
        ended = true;
        return;
      }
      if (block.length < BLOCK)
        throw errDataLoss(`read tar: unexpected end of archive in header at offset ${at}`);
      if (isZero(block)) {
        // End of archive: the second zero block and any trailer are read and
        // discarded, so that a digest over the input covers every byte.
        ended = true;
        await r.drain();
        return;
      }
      verifyChecksum(block, at);
      const flag = block[156]!;
      const magic = cstring(block, 257, 6);
      const version = dec.decode(block.subarray(263, 265));
      const ustar = magic === 'ustar' && version === '00';
      let name = cstring(block, 0, 100);
      if (ustar) {
        const prefix = cstring(block, 345, 155);
        if (prefix) name = `${prefix}/${name}`;
      }
      const size = parseNumber(block, 124, 12, 'size', at);

      if (flag === 0x78 /* x */ || flag === 0x67 /* g */) {
        const data = await readData(r, size, 'pax header', at);
        parsePax(data, at, flag === 0x78 ? local : global);
        continue;
      }
      if (flag === 0x4c /* L */ || flag === 0x4b /* K */) {
        const data = await readData(r, size, 'GNU long name', at);
        let end = data.indexOf(0);
        if (end < 0) end = data.length;
        const value = dec.decode(data.subarray(0, end));
        if (flag === 0x4c) longName = value;
        else longLink = value;
        continue;
      }
      if (flag === 0x56 /* V: volume label */) {
        await r.skip(size + paddingFor(size));
        continue;
      }
      if (flag === 0x4d /* M */ || flag === 0x53 /* S */) {
        throw errNotImplemented(
          `read tar: entry "${name}" at offset ${at}: GNU multi-volume and sparse entries are not supported`,
        );
      }

      const pax: PaxValues = {
        ...global,
        ...Object.fromEntries(Object.entries(local).filter(([, v]) => v !== undefined)),
        xattrs: new Map([...global.xattrs, ...local.xattrs]),
        other: { ...global.other, ...local.other },
      };
      local = emptyPax();
      const type = typeOf(flag, pax.path ?? longName ?? name, at);
      const header: TarHeader = {
        name: pax.path ?? longName ?? name,
        type,
        mode: parseNumber(block, 100, 8, 'mode', at) & 0o7777,
        uid: pax.uid ?? parseNumber(block, 108, 8, 'uid', at),
        gid: pax.gid ?? parseNumber(block, 116, 8, 'gid', at),
        size: pax.size ?? size,
        mtime: pax.mtime ? pax.mtime[0] : parseNumber(block, 136, 12, 'mtime', at),
      };
      if (pax.mtime?.[1]) header.mtimeNsec = pax.mtime[1];
      const linkname = pax.linkpath ?? longLink ?? cstring(block, 157, 100);
      if (linkname) header.linkname = linkname;
      longName = undefined;
      longLink = undefined;
      const uname = pax.uname ?? cstring(block, 265, 32);
      const gname = pax.gname ?? cstring(block, 297, 32);
      if (uname) header.uname = uname;
      if (gname) header.gname = gname;
      if (type === 'char' || type === 'block') {
        header.devmajor = parseNumber(block, 329, 8, 'devmajor', at);
        header.devminor = parseNumber(block, 337, 8, 'devminor', at);
      }
      if (pax.xattrs.size) header.xattrs = pax.xattrs;
      if (Object.keys(pax.other).length) header.pax = pax.other;

      const bodySize = type === 'file' ? header.size : 0;
      if (type !== 'file') header.size = 0;
      let remaining = bodySize;
      const entryName = header.name;
      async function* body(): AsyncGenerator<Uint8Array, void, undefined> {
        while (remaining > 0) {
          const chunk = await r.readSome(Math.min(remaining, 1 << 20));
          if (!chunk) throw errDataLoss(`read tar: unexpected end of archive in the body of "${entryName}"`);
          remaining -= chunk.length;
          yield chunk;
        }
      }
      yield { header, body: body() };
      if (remaining > 0) {
        if ((await r.skip(remaining)) !== remaining) {
          throw errDataLoss(`read tar: unexpected end of archive in the body of "${entryName}"`);
        }
        remaining = 0;
      }
      const pad = paddingFor(bodySize);
      if ((await r.skip(pad)) !== pad) {
        throw errDataLoss(`read tar: unexpected end of archive after the body of "${entryName}"`);
      }
    }
  } finally {
    // On an error or an early stop, stop the source too.
    if (!ended) await r.close();
  }
}
