/**
 * Unpacks an OCI layer (tar, tar+gzip or tar+zstd, detected by magic bytes)
 * into a directory, honouring whiteouts, and returns the layer's diffID
 * (sha256 of the uncompressed tar, including any bytes after the end
 * marker) and uncompressed size.
 *
 * Modes:
 * - 'plain' (default): the target is the merged view (a mounted overlay or a
 *   plain copy of the lower layers). `.wh.<name>` deletes `<name>`;
 *   `<dir>/.wh..wh..opq` deletes everything in `<dir>` that this layer did
 *   not create itself.
 * - 'overlay-upper': the target is an overlayfs upperdir. `.wh.<name>`
 *   becomes a 0/0 character device, `.wh..wh..opq` sets
 *   `trusted.overlay.opaque=y` on the directory.
 *
 * Restores modes, owners (lchown, when privileged), xattrs (overlay's own
 * `trusted.overlay.*`/`user.overlay.*` from the archive are dropped),
 * mtimes (lutimes; directories' modes and mtimes last), hard links, symlinks, fifos and, when
 * privileged, devices (unprivileged: PermissionDenied naming the entry).
 * An existing node is replaced unless both are directories (then only the
 * metadata is updated).
 *
 * Safety (every error names the entry; nothing is written outside root):
 * - names are taken relative to the root: a leading '/' is dropped (as GNU
 *   tar and containerd do); any `..` component is rejected.
 * - parent paths are resolved one component at a time below the root,
 *   without following anything out: a relative symlink in a parent path is
 *   followed only while it stays below the root; an absolute symlink, or one
 *   whose `..` climbs above the root, is rejected; more than 40 symlinks is
 *   rejected as a loop. The final component is never followed (an existing
 *   symlink there is replaced, not written through).
 * - hard link targets are resolved the same way (never created), must exist
 *   below the root and must not be directories.
 * Limits: in 'overlay-upper' mode a hard link's target must already be in
 * the upperdir (a link to a file of a lower layer fails with NotFound: Kiln's
 * own layers only link among their own entries) and overlays mounted with
 * `userxattr` (user.overlay.opaque) are not supported.
 * The resolution assumes nobody else modifies the target while applying (it
 * checks, then acts: there is no openat(2) in Node). Files are not fsynced
 * one by one: callers that need durability sync the snapshot afterwards.
 */
import { constants as FS } from 'node:fs';
import {
  lchown,
  link,
  lutimes,
  mkdir,
  open,
  readdir,
  readlink,
  realpath,
  symlink,
  chmod,
} from 'node:fs/promises';
import * as path from 'node:path';
import { Readable, pipeline } from 'node:stream';
import * as zlib from 'node:zlib';
import { readTar, type TarHeader } from '../archive/tar.ts';
import { type Digest, Digester } from '../digest.ts';
import { errDataLoss, errInvalidArgument, isErrno, isKilnError, KilnError, wrap } from '../errors.ts';
import { removeTree } from '../fs/safe.ts';
import { native } from '../native/index.ts';
import { OPAQUE_WHITEOUT, WHITEOUT_PREFIX } from './compare.ts';
import { isWhiteout, lstatMaybe } from './tree.ts';

export type ApplyMode = 'plain' | 'overlay-upper';

export interface ApplyOptions {
  mode?: ApplyMode;
  /**
   * May devices be created and owners set? Default: running as root.
   * Unprivileged, owners are left as they are and devices are refused.
   */
  privileged?: boolean;
  signal?: AbortSignal;
}

export interface ApplyResult {
  /** sha256 of the uncompressed tar. */
  diffID: Digest;
  /** Size of the uncompressed tar. */
  size: number;
}

const MAX_SYMLINKS = 40;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;

/** Detects gzip/zstd by magic bytes and decompresses; plain tar passes through. */
async function* decompress(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const it = source[Symbol.asyncIterator]();
  const head: Uint8Array[] = [];
  let have = 0;
  let done = false;
  while (have < 4) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    head.push(r.value);
    have += r.value.length;
  }
  const first = Buffer.concat(head);
  async function* all(): AsyncGenerator<Uint8Array> {
    try {
      if (first.length) yield first;
      while (!done) {
        const r = await it.next();
        if (r.done) done = true;
        else yield r.value;
      }
    } finally {
      // Stopped early (an error or a hostile entry): release the source (e.g. a file handle).
      if (!done) await it.return?.();
    }
  }
  let dec: zlib.Gunzip | zlib.ZstdDecompress | undefined;
  if (first[0] === 0x1f && first[1] === 0x8b) dec = zlib.createGunzip({ chunkSize: 256 << 10 });
  else if (first[0] === 0x28 && first[1] === 0xb5 && first[2] === 0x2f && first[3] === 0xfd) {
    dec = zlib.createZstdDecompress({ chunkSize: 256 << 10 });
  }
  if (!dec) {
    yield* all();
    return;
  }
  const out = pipeline(Readable.from(all(), { objectMode: false }), dec, () => {
    // Errors surface through iteration of `out`.
  });
  for await (const chunk of out as AsyncIterable<Uint8Array>) yield chunk;
}

/** Splits an entry name into safe components ('' root → []). */
function components(name: string, entry: string, what: string): string[] {
  const parts = name.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) {
    throw errInvalidArgument(
      `apply layer: entry "${entry}": ${what} "${name}" contains ".." and would escape the root`,
    );
  }
  return parts;
}

class Applier {
  readonly root: string;
  readonly mode: ApplyMode;
  readonly privileged: boolean;
  /** Resolved directories: rel path → absolute path below root. */
  readonly #dirs = new Map<string, string>();
  /** Paths (rel) created by this layer: an opaque whiteout keeps them. */
  readonly #created = new Set<string>();
  /** Directories whose mtime is set at the end. */
  readonly #dirTimes = new Map<string, { mtime: number; mode: number }>();

  constructor(root: string, mode: ApplyMode, privileged: boolean) {
    this.root = root;
    this.mode = mode;
    this.privileged = privileged;
  }

  /**
   * Resolves directory components below root, creating missing ones when
   * `create`, following only relative symlinks that stay below root.
   */
  async resolveDir(parts: string[], entry: string, create: boolean): Promise<string> {
    const key = parts.join('/');
    const cached = this.#dirs.get(key);
    if (cached) return cached;
    let cur = this.root;
    let curRel: string[] = [];
    const todo = [...parts];
    let hops = 0;
    while (todo.length) {
      const c = todo.shift()!;
      const p = path.join(cur, c);
      const st = await lstatMaybe(p);
      if (!st) {
        if (!create)
          throw new KilnError(
            'NotFound',
            `apply layer: entry "${entry}": "${[...curRel, c].join('/')}" does not exist`,
          );
        await mkdir(p, { mode: 0o755 });
        this.#created.add([...curRel, c].join('/'));
        cur = p;
        curRel.push(c);
        continue;
      }
      if (st.isDirectory()) {
        cur = p;
        curRel.push(c);
        continue;
      }
      const where = [...curRel, c].join('/');
      if (!st.isSymbolicLink()) {
        throw errInvalidArgument(`apply layer: entry "${entry}": parent "${where}" is not a directory`);
      }
      const target = await readlink(p);
      if (path.isAbsolute(target)) {
        throw errInvalidArgument(
          `apply layer: entry "${entry}": parent "${where}" is a symlink to the absolute path "${target}", which leads outside the root`,
        );
      }
      if (++hops > MAX_SYMLINKS)
        throw errInvalidArgument(`apply layer: entry "${entry}": too many symlinks in its path`);
      const next = [...curRel];
      for (const t of target.split('/')) {
        if (t === '' || t === '.') continue;
        if (t === '..') {
          if (next.length === 0) {
            throw errInvalidArgument(
              `apply layer: entry "${entry}": parent "${where}" is a symlink to "${target}", which leads outside the root`,
            );
          }
          next.pop();
        } else next.push(t);
      }
      // Restart from the root along the symlink's target, then the rest.
      todo.unshift(...next);
      cur = this.root;
      curRel = [];
    }
    this.#dirs.set(key, cur);
    return cur;
  }

  /** Removes a node (recursively for directories) without following symlinks or crossing a mount. */
  async remove(abs: string): Promise<void> {
    await removeTree(abs);
    this.#dirs.clear();
  }

  async entry(h: TarHeader, body: AsyncIterable<Uint8Array>): Promise<void> {
    const parts = components(h.name, h.name, 'name');
    if (parts.length === 0) {
      // The root itself: only its metadata, and only for a directory entry.
      if (h.type === 'directory') await this.metadata(this.root, h, true);
      return;
    }
    const base = parts[parts.length - 1]!;
    const parentParts = parts.slice(0, -1);
    if (base.startsWith(WHITEOUT_PREFIX)) {
      const parent = await this.resolveDir(parentParts, h.name, true);
      if (base === OPAQUE_WHITEOUT) await this.opaque(parent, parentParts, h.name);
      else {
        const victim = base.slice(WHITEOUT_PREFIX.length);
        if (victim === '' || victim === '.' || victim === '..') {
          throw errInvalidArgument(`apply layer: entry "${h.name}": invalid whiteout`);
        }
        await this.whiteout(parent, victim, [...parentParts, victim].join('/'), h.name);
      }
      return;
    }
    const parent = await this.resolveDir(parentParts, h.name, true);
    const abs = path.join(parent, base);
    const rel = parts.join('/');
    const existing = await lstatMaybe(abs);
    if (existing) {
      if (h.type === 'directory' && existing.isDirectory()) {
        await this.metadata(abs, h, true);
        return;
      }
      await this.remove(abs);
    }
    this.#created.add(rel);
    switch (h.type) {
      case 'file': {
        const fh = await open(abs, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600);
        try {
          for await (const chunk of body) await fh.write(chunk);
        } finally {
          await fh.close();
        }
        break;
      }
      case 'directory':
        await mkdir(abs, { mode: 0o700 });
        // In an upperdir, a directory that replaces a whiteout must hide the lower one.
        if (this.mode === 'overlay-upper' && existing && isWhiteout(existing)) {
          native().lsetxattr(abs, 'trusted.overlay.opaque', Buffer.from('y'), 0);
        }
        break;
      case 'symlink':
        await symlink(h.linkname ?? '', abs);
        break;
      case 'link': {
        const tparts = components(h.linkname ?? '', h.name, 'hard link target');
        if (tparts.length === 0)
          throw errInvalidArgument(`apply layer: entry "${h.name}": empty hard link target`);
        const tdir = await this.resolveDir(tparts.slice(0, -1), h.name, false).catch((err: unknown) => {
          if (!isKilnError(err, 'NotFound')) throw err;
          return undefined;
        });
        const tabs = tdir === undefined ? undefined : path.join(tdir, tparts[tparts.length - 1]!);
        const tst = tabs === undefined ? undefined : await lstatMaybe(tabs);
        if (!tst) {
          throw new KilnError(
            'NotFound',
            `apply layer: entry "${h.name}": hard link target "${h.linkname}" does not exist`,
          );
        }
        if (tst.isDirectory()) {
          throw errInvalidArgument(
            `apply layer: entry "${h.name}": hard link target "${h.linkname}" is a directory`,
          );
        }
        await link(tabs!, abs);
        return; // a hard link shares its target's metadata
      }
      case 'char':
      case 'block':
      case 'fifo': {
        if (h.type !== 'fifo' && !this.privileged) {
          throw new KilnError(
            'PermissionDenied',
            `apply layer: entry "${h.name}": creating a ${h.type} device needs privileges (run as root)`,
          );
        }
        const kind = h.type === 'char' ? S_IFCHR : h.type === 'block' ? S_IFBLK : S_IFIFO;
        native().mknod(abs, kind | (h.mode & 0o777), h.devmajor ?? 0, h.devminor ?? 0);
        break;
      }
    }
    await this.metadata(abs, h, h.type === 'directory');
  }

  async metadata(abs: string, h: TarHeader, isDir: boolean): Promise<void> {
    if (this.privileged) await lchown(abs, h.uid, h.gid);
    // Directories get their mode at the end, so that a read-only directory can still be filled.
    if (h.type !== 'symlink' && !isDir) await chmod(abs, h.mode & 0o7777);
    if (h.xattrs) {
      for (const [name, value] of h.xattrs) {
        if (name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.')) continue;
        try {
          native().lsetxattr(abs, name, Buffer.from(value), 0);
        } catch (err) {
          // user.* xattrs are not allowed on symlinks; tar skips them too.
          if (h.type === 'symlink' && name.startsWith('user.') && isErrno(err, 'EPERM')) continue;
          throw wrap(err, `apply layer: entry "${h.name}": set xattr "${name}"`);
        }
      }
    }
    const mtime = h.mtime + (h.mtimeNsec ?? 0) / 1e9;
    if (isDir) this.#dirTimes.set(abs, { mtime, mode: h.mode & 0o7777 });
    else await lutimes(abs, mtime, mtime);
  }

  async whiteout(parent: string, name: string, rel: string, entry: string): Promise<void> {
    const abs = path.join(parent, name);
    if (await lstatMaybe(abs)) await this.remove(abs);
    if (this.mode === 'overlay-upper') {
      if (!this.privileged) {
        throw new KilnError(
          'PermissionDenied',
          `apply layer: entry "${entry}": creating an overlay whiteout needs privileges`,
        );
      }
      native().mknod(abs, S_IFCHR, 0, 0);
      this.#created.add(rel);
    }
  }

  async opaque(parent: string, parentParts: string[], entry: string): Promise<void> {
    const prefix = parentParts.join('/');
    for (const name of await readdir(parent)) {
      const rel = prefix ? `${prefix}/${name}` : name;
      if (!this.#created.has(rel)) await this.remove(path.join(parent, name));
    }
    if (this.mode === 'overlay-upper') {
      try {
        native().lsetxattr(parent, 'trusted.overlay.opaque', Buffer.from('y'), 0);
      } catch (err) {
        throw wrap(err, `apply layer: entry "${entry}": mark directory opaque`);
      }
    }
  }

  async finish(): Promise<void> {
    for (const [abs, { mtime, mode }] of this.#dirTimes) {
      // Skip directories that a later entry removed or replaced.
      const st = await lstatMaybe(abs);
      if (!st?.isDirectory()) continue;
      await chmod(abs, mode);
      await lutimes(abs, mtime, mtime);
    }
  }
}

/** Unpacks `layer` into `targetDir`. See the module comment for the rules. */
export async function applyLayer(
  layer: AsyncIterable<Uint8Array>,
  targetDir: string,
  options: ApplyOptions = {},
): Promise<ApplyResult> {
  const root = await realpath(targetDir).catch((err: unknown) => {
    throw wrap(err, `apply layer: target "${targetDir}"`);
  });
  const privileged = options.privileged ?? process.getuid?.() === 0;
  const applier = new Applier(root, options.mode ?? 'plain', privileged);
  const digester = new Digester();
  const signal = options.signal;
  async function* tee(): AsyncGenerator<Uint8Array> {
    try {
      for await (const c of decompress(layer)) {
        digester.update(c);
        yield c;
      }
    } catch (err) {
      // zlib's errors (Z_DATA_ERROR, Z_BUF_ERROR, ZSTD_error_*) mean a corrupt layer.
      const code = (err as { code?: unknown }).code;
      if (typeof code === 'string' && (code.startsWith('Z_') || code.startsWith('ZSTD_'))) {
        throw errDataLoss(`apply layer: cannot decompress the layer: ${(err as Error).message}`, err);
      }
      throw err;
    }
  }
  const stream = tee();
  for await (const { header, body } of readTar(stream)) {
    if (signal?.aborted) throw new KilnError('Canceled', 'apply layer: canceled', { cause: signal.reason });
    try {
      await applier.entry(header, body);
    } catch (err) {
      if (isKilnError(err) && err.message.includes(`entry "${header.name}"`)) throw err;
      throw wrap(err, `apply layer: entry "${header.name}"`);
    }
  }
  // readTar has read the whole stream (also what follows the end marker): the diffID covers it all.
  await applier.finish();
  return { diffID: digester.digest(), size: digester.size };
}
