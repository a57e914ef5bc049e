/**
 * Archive extraction for the copy action's `attemptUnpack` (Dockerfile ADD of
 * a local tar archive), after BuildKit's documented behaviour: "ADD
 * auto-extracts local tar archives with identity, gzip, bzip2 or xz
 * compression"; a file that is not such an archive is copied as a file.
 *
 * - `unpackArchive(file, root, dest, ensureDest)`: if host file `file` is a
 *   tar archive (plain, gzip, zstd via node:zlib; bzip2 and xz through the
 *   `bzip2` / `xz` programs), extracts it into container directory `dest` of
 *   tree `root` and returns true; returns false, having written nothing, when
 *   the file is not one (no known magic and no valid first tar header, or
 *   an empty archive). `ensureDest()` creates dest and is called only for an
 *   archive.
 * - Extraction follows docker's untar: owners, permission bits, mtimes and
 *   xattrs from the headers (xattrs that cannot be set are ignored); missing
 *   parents are made 0755 root-owned; an existing entry is replaced unless
 *   both are directories (then merged); hard links point at entries already
 *   extracted under dest; the archive's root entry (`./`) is skipped. Paths
 *   resolve inside `root` like a container sees them, so neither `..` nor a
 *   symlink from the archive can write outside the tree; a name that climbs
 *   above dest is InvalidArgument.
 *
 * Limits: bzip2 and xz need the `bzip2` / `xz` programs on the host PATH
 * (Unavailable otherwise); the copy's owner and mode options are not applied
 * to extracted entries; sockets cannot be in a tar.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip, createZstdDecompress } from 'node:zlib';
import { readTar, type TarEntry } from '../core/archive/tar.ts';
import { errInvalidArgument, errUnavailable, isErrno, wrap } from '../core/errors.ts';
import { lutimesNs, native } from '../core/native/index.ts';
import { lstatMaybe, mkdirAllInRoot, resolveInRoot } from './fsutil.ts';

/** The compression of a stream, from its first bytes. */
export type Compression = 'none' | 'gzip' | 'bzip2' | 'xz' | 'zstd';

const MAGICS: ReadonlyArray<readonly [Compression, readonly number[]]> = [
  ['gzip', [0x1f, 0x8b]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
];

/** Detects the compression from a stream's first bytes ('none' when no magic matches). */
export function detectCompression(head: Uint8Array): Compression {
  for (const [kind, magic] of MAGICS) if (magic.every((v, i) => head[i] === v)) return kind;
  return 'none';
}

async function readHead(file: string): Promise<Uint8Array> {
  const fh = await fs.open(file, 'r');
  try {
    const buf = new Uint8Array(8);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

interface Decompressed {
  stream: Readable;
  close(): void;
}

/** The decompressed bytes of `file`. */
function openDecompressed(file: string, kind: Compression): Decompressed {
  const raw = createReadStream(file, { highWaterMark: 1 << 20 });
  // Errors after close (a decompressor killed mid-stream) have no reader left: ignore them.
  const quiet = (...streams: Array<{ on(e: 'error', f: () => void): unknown; destroy(): unknown }>): void => {
    for (const st of streams) {
      st.on('error', () => {});
      st.destroy();
    }
  };
  if (kind === 'none') return { stream: raw, close: () => quiet(raw) };
  if (kind === 'gzip' || kind === 'zstd') {
    const z = kind === 'gzip' ? createGunzip() : createZstdDecompress();
    raw.on('error', (err) => z.destroy(err));
    raw.pipe(z);
    return {
      stream: z,
      close: () => quiet(raw, z),
    };
  }
  const prog = kind === 'bzip2' ? 'bzip2' : 'xz';
  const child: ChildProcess = spawn(prog, ['-dc'], { stdio: ['pipe', 'pipe', 'ignore'] });
  const out = child.stdout!;
  child.on('error', (err) => {
    out.destroy(
      isErrno(err, 'ENOENT') ? errUnavailable(`decompress "${file}": "${prog}" is not installed`, err) : err,
    );
  });
  child.on('exit', (code) => {
    if (code !== 0 && code !== null)
      out.destroy(new Error(`decompress "${file}": ${prog} exited with ${code}`));
  });
  child.stdin!.on('error', () => {
    // The decompressor stopped reading (done or failed): its exit status tells.
  });
  raw.on('error', (err) => out.destroy(err));
  raw.pipe(child.stdin!);
  return {
    stream: out,
    close: () => {
      quiet(raw, out);
      if (child.exitCode === null && child.signalCode === null) child.kill();
    },
  };
}

function setTimes(host: string, sec: number, nsec: number): void {
  const ns = BigInt(sec) * 1_000_000_000n + BigInt(nsec);
  lutimesNs(host, ns, ns);
}

function setXattrs(host: string, xattrs: Map<string, Uint8Array> | undefined): void {
  if (!xattrs) return;
  const n = native();
  for (const [name, value] of xattrs) {
    try {
      n.lsetxattr(host, name, Buffer.from(value.buffer, value.byteOffset, value.byteLength), 0);
    } catch {
      // not supported here (see the module comment)
    }
  }
}

/** The entry's path relative to dest ('' for the archive root), or InvalidArgument if it climbs out. */
function entryPath(name: string, what: string): string {
  const clean = path.posix.normalize(`/${name}`).replace(/^\/+/, '').replace(/\/+$/, '');
  const rel = path.posix.normalize(name.replace(/^\/+/, '') || '.');
  if (rel === '..' || rel.startsWith('../')) {
    throw errInvalidArgument(`${what}: entry "${name}" points outside the destination`);
  }
  return clean;
}

async function writeBody(host: string, entry: TarEntry): Promise<void> {
  const fh = await fs.open(host, 'wx', 0o600);
  try {
    for await (const chunk of entry.body) await fh.write(chunk);
  } finally {
    await fh.close();
  }
}

async function extractEntry(
  root: string,
  dest: string,
  entry: TarEntry,
  what: string,
  dirs: Array<{ host: string; mtime: number; nsec: number }>,
): Promise<void> {
  const h = entry.header;
  const rel = entryPath(h.name, what);
  if (rel === '') return;
  const cpath = path.posix.join(dest, rel);
  await mkdirAllInRoot(root, path.posix.dirname(cpath));
  const host = await resolveInRoot(root, cpath, false);
  const existing = await lstatMaybe(host);
  if (existing && !(existing.isDirectory() && h.type === 'directory')) {
    await fs.rm(host, { recursive: true, force: true });
  }
  switch (h.type) {
    case 'directory':
      if (!existing?.isDirectory()) await fs.mkdir(host);
      break;
    case 'file':
      await writeBody(host, entry);
      break;
    case 'symlink':
      await fs.symlink(h.linkname ?? '', host);
      break;
    case 'link': {
      const target = await resolveInRoot(
        root,
        path.posix.join(dest, entryPath(h.linkname ?? '', what)),
        false,
      );
      await fs.link(target, host);
      // A hard link shares the target's metadata.
      return;
    }
    case 'char':
    case 'block':
    case 'fifo': {
      const type = h.type === 'char' ? 0o020000 : h.type === 'block' ? 0o060000 : 0o010000;
      native().mknod(host, type | (h.mode & 0o7777), h.devmajor ?? 0, h.devminor ?? 0);
      break;
    }
  }
  await fs.lchown(host, h.uid, h.gid);
  if (h.type !== 'symlink') await fs.chmod(host, h.mode & 0o7777);
  setXattrs(host, h.xattrs);
  if (h.type === 'directory') dirs.push({ host, mtime: h.mtime, nsec: h.mtimeNsec ?? 0 });
  else setTimes(host, h.mtime, h.mtimeNsec ?? 0);
}

/** Extracts `file` into `dest` of `root` if it is a tar archive (see the module comment). */
export async function unpackArchive(
  file: string,
  root: string,
  dest: string,
  ensureDest: () => Promise<unknown>,
): Promise<boolean> {
  const what = `unpack "${path.basename(file)}" to "${dest}"`;
  const kind = detectCompression(await readHead(file));
  const src = openDecompressed(file, kind);
  const entries = readTar(src.stream);
  try {
    let first: IteratorResult<TarEntry>;
    try {
      first = await entries.next();
    } catch {
      return false; // not a (compressed) tar: copied as a file
    }
    if (first.done) return false;
    await ensureDest();
    const dirs: Array<{ host: string; mtime: number; nsec: number }> = [];
    try {
      let r: IteratorResult<TarEntry> = first;
      while (!r.done) {
        await extractEntry(root, dest, r.value, what, dirs);
        r = await entries.next();
      }
    } catch (err) {
      throw wrap(err, what);
    }
    // Directory times last: extracting into a directory changes its mtime.
    for (const d of dirs.reverse()) setTimes(d.host, d.mtime, d.nsec);
    return true;
  } finally {
    await entries.return(undefined).catch(() => {});
    src.close();
  }
}
