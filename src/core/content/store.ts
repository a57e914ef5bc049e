/**
 * LocalContentStore: the content store (./types.ts) on a local filesystem,
 * laid out like containerd's local store:
 *
 *   <root>/blobs/sha256/<hex>          committed blobs, mode 0444, never rewritten
 *   <root>/labels/sha256/<hex>.json    labels sidecar `{labels, updatedAt}`, replaced atomically
 *   <root>/ingest/<sha256(ref)>/       one ingest per ref:
 *     data        the bytes written so far
 *     ref         the ref itself; written last, so an ingest without it is half-made
 *     total       expected size (0 when unknown)      expected   expected digest (optional)
 *     startedat   ISO time of creation                updatedat  ISO time a writer last opened/closed
 *     lock        "<pid> <starttime>" of the holding process
 *   <root>/ingest/.trash-<random>/     an ingest being removed (renamed first, then deleted)
 *
 * Contract: see ./types.ts. Directories are created lazily: the constructor
 * does no I/O and reading an empty or missing root finds nothing.
 *
 * Locking: a writer holds its ref through the ingest's `lock` file
 * (./lockfile.ts: created with O_EXCL semantics, holds the pid; a dead
 * owner's lock is stale and taken over). Another writer, in this or another
 * process, gets Unavailable `ref "x" is in use (process N)`. Only the lock
 * holder renames or removes an ingest directory (abort and cleanup take the
 * lock first).
 *
 * Commit: verifies size and digest (mismatch: DataLoss, the ingest is
 * discarded), fdatasyncs `data`, links it to blobs/sha256/<hex> (link(2)
 * fails on an existing name, so a racing commit of the same content gets
 * AlreadyExists and never replaces a blob), writes the labels sidecar,
 * fsyncs the blobs directory and removes the ingest.
 *
 * Limits: sha256 only. Labels are updated read-modify-write, serialised
 * within a process; two processes updating one blob's labels at once may
 * lose one update (the namespaced metadata store is the source of truth for
 * labels in the engine). Labels given to commit() are written after the blob
 * appears: a crash in between leaves the blob without them. A Writer that is
 * dropped without close() keeps its ref locked until the process exits.
 * Writes to one Writer must be sequential (await each write).
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import {
  chmod,
  type FileHandle,
  link,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, Digester, parseDigest, sha256 } from '../digest.ts';
import {
  errAlreadyExists,
  errDataLoss,
  errFailedPrecondition,
  errInvalidArgument,
  errNotFound,
  isErrno,
  isKilnError,
  KilnError,
  wrap,
} from '../errors.ts';
import { compileFilters, fieldLookup } from './filters.ts';
import { acquireLock, releaseLock } from './lockfile.ts';
import type {
  CommitOptions,
  ContentStore,
  Filters,
  Info,
  Labels,
  ReaderAt,
  Status,
  Writer,
  WriterOptions,
} from './types.ts';

/** Chunk size of read() streams and of the re-hash on resume. */
const READ_CHUNK = 1 << 20;
/**
 * readBlob's memory: blobs up to SMALL_BLOB bytes (manifests and configs are
 * a few KiB), the most recently used first out of SMALL_TOTAL bytes. A build
 * reads each base image's manifest and config several times (resolve,
 * stages, unpack check, export), and kilnd reads them on every build.
 */
const SMALL_BLOB = 256 << 10;
const SMALL_TOTAL = 4 << 20;
const REHASH_CHUNK = 4 << 20;
const HEX64 = /^[a-f0-9]{64}$/;
const TRASH_PREFIX = '.trash-';

export class LocalContentStore implements ContentStore {
  readonly root: string;
  /** Per-blob promise chains serialising label updates within this process. */
  readonly #labelQueue = new Map<string, Promise<unknown>>();
  /** readBlob's verified small blobs, least recently used first (Map order). */
  readonly #small = new Map<Digest, Uint8Array>();
  #smallBytes = 0;

  constructor(root: string) {
    this.root = root;
  }

  get #blobDir(): string {
    return join(this.root, 'blobs', 'sha256');
  }
  get #labelDir(): string {
    return join(this.root, 'labels', 'sha256');
  }
  get #ingestRoot(): string {
    return join(this.root, 'ingest');
  }
  #ingestDir(ref: string): string {
    return join(this.#ingestRoot, sha256(ref).slice('sha256:'.length));
  }

  /** Validates a digest for this store and returns its hex part. */
  #hex(digest: string, action: string): string {
    const { algorithm, hex } = parseDigest(digest);
    if (algorithm !== 'sha256') {
      throw errInvalidArgument(`${action}: unsupported digest algorithm "${algorithm}" in "${digest}"`);
    }
    return hex;
  }

  async info(digest: Digest): Promise<Info> {
    const hex = this.#hex(digest, 'content info');
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      st = await stat(join(this.#blobDir, hex));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw errNotFound(`content "${digest}" not found`, err);
      throw wrap(err, `stat content "${digest}"`);
    }
    const side = await readSidecar(join(this.#labelDir, `${hex}.json`));
    return {
      digest,
      size: st.size,
      createdAt: st.mtime,
      updatedAt: side?.updatedAt ?? st.mtime,
      labels: side?.labels ?? {},
    };
  }

  async update(info: Pick<Info, 'digest' | 'labels'>, fieldpaths?: string[]): Promise<Info> {
    const { digest } = info;
    const hex = this.#hex(digest, 'update content');
    const action = `update of content "${digest}"`;
    for (const fp of fieldpaths ?? []) {
      if (fp !== 'labels' && !(fp.startsWith('labels.') && fp.length > 'labels.'.length)) {
        throw errInvalidArgument(`${action}: cannot update field "${fp}"`);
      }
    }
    const run = async (): Promise<Info> => {
      const current = await this.info(digest);
      let next: Labels = { ...current.labels };
      if (!fieldpaths || fieldpaths.length === 0) next = { ...info.labels };
      for (const fp of fieldpaths ?? []) {
        if (fp === 'labels') next = { ...info.labels };
        else {
          const key = fp.slice('labels.'.length);
          const value = info.labels[key];
          if (value === undefined || value === '') delete next[key];
          else next[key] = value;
        }
      }
      for (const [k, v] of Object.entries(next)) if (v === '') delete next[k];
      const updatedAt = new Date();
      await writeSidecar(this.#labelDir, hex, next, updatedAt);
      return { ...current, labels: next, updatedAt };
    };
    const prev = this.#labelQueue.get(hex) ?? Promise.resolve();
    const mine = prev.then(run, run);
    this.#labelQueue.set(hex, mine);
    try {
      return await mine;
    } finally {
      if (this.#labelQueue.get(hex) === mine) this.#labelQueue.delete(hex);
    }
  }

  async walk(fn: (info: Info) => void | Promise<void>, filters?: Filters): Promise<void> {
    const match = compileFilters(filters);
    for (const name of await listDir(this.#blobDir)) {
      if (!HEX64.test(name)) continue;
      let info: Info;
      try {
        info = await this.info(`sha256:${name}`);
      } catch (err) {
        if (isKilnError(err, 'NotFound')) continue; // deleted while walking
        throw err;
      }
      if (match(fieldLookup({ digest: info.digest, size: String(info.size) }, info.labels))) await fn(info);
    }
  }

  async delete(digest: Digest): Promise<void> {
    const hex = this.#hex(digest, 'delete content');
    this.#forget(digest);
    try {
      await unlink(join(this.#blobDir, hex));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw errNotFound(`delete of content "${digest}": not found`, err);
      throw wrap(err, `delete of content "${digest}"`);
    }
    await rm(join(this.#labelDir, `${hex}.json`), { force: true });
  }

  async #openBlob(digest: Digest, action: string): Promise<FileHandle> {
    const hex = this.#hex(digest, action);
    try {
      return await open(join(this.#blobDir, hex), 'r');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw errNotFound(`${action}: content "${digest}" not found`, err);
      throw wrap(err, `${action} "${digest}"`);
    }
  }

  async readBlob(digest: Digest, maxSize: number): Promise<Uint8Array> {
    const kept = this.#small.get(digest);
    if (kept && kept.length <= maxSize) {
      this.#small.delete(digest);
      this.#small.set(digest, kept);
      return Buffer.from(kept);
    }
    const fh = await this.#openBlob(digest, 'read content');
    let bytes: Buffer;
    try {
      const { size } = await fh.stat();
      if (size > maxSize) {
        throw new KilnError(
          'ResourceExhausted',
          `read of content "${digest}": size ${size} is over the limit of ${maxSize} bytes`,
        );
      }
      bytes = Buffer.allocUnsafe(size);
      const got = await readFully(fh, bytes, 0);
      if (got !== size)
        throw errDataLoss(`read of content "${digest}": blob ended at ${got} of ${size} bytes`);
    } finally {
      await fh.close();
    }
    if (sha256(bytes) !== digest) {
      throw errDataLoss(`read of content "${digest}": stored bytes do not match the digest`);
    }
    if (bytes.length <= SMALL_BLOB) {
      this.#small.set(digest, Buffer.from(bytes));
      this.#smallBytes += bytes.length;
      for (const [d] of this.#small) {
        if (this.#smallBytes <= SMALL_TOTAL) break;
        this.#forget(d);
      }
    }
    return bytes;
  }

  #forget(digest: Digest): void {
    const kept = this.#small.get(digest);
    if (!kept) return;
    this.#small.delete(digest);
    this.#smallBytes -= kept.length;
  }

  async readerAt(digest: Digest): Promise<ReaderAt> {
    const fh = await this.#openBlob(digest, 'open content');
    const { size } = await fh.stat();
    let closed = false;
    return {
      size,
      async read(offset: number, length: number): Promise<Uint8Array> {
        if (closed) throw errFailedPrecondition(`read of content "${digest}": reader is closed`);
        if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
          throw errInvalidArgument(
            `read of content "${digest}": bad range offset ${offset} length ${length}`,
          );
        }
        const n = Math.max(0, Math.min(length, size - offset));
        const buf = Buffer.allocUnsafe(n);
        const got = await readFully(fh, buf, offset);
        return got === n ? buf : buf.subarray(0, got);
      },
      async close(): Promise<void> {
        if (closed) return;
        closed = true;
        await fh.close();
      },
    };
  }

  async *read(digest: Digest, range?: { start?: number; end?: number }): AsyncIterable<Uint8Array> {
    const fh = await this.#openBlob(digest, 'read content');
    try {
      const { size } = await fh.stat();
      const start = range?.start ?? 0;
      const end = Math.min(range?.end ?? size, size);
      if (
        !Number.isSafeInteger(start) ||
        start < 0 ||
        start > size ||
        !Number.isSafeInteger(end) ||
        end < start
      ) {
        throw errInvalidArgument(
          `read of content "${digest}": bad range [${range?.start}, ${range?.end}) for size ${size}`,
        );
      }
      let pos = start;
      while (pos < end) {
        const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, end - pos));
        const got = await readFully(fh, buf, pos);
        if (got === 0)
          throw errDataLoss(`read of content "${digest}": blob ended at ${pos} of ${size} bytes`);
        pos += got;
        yield got === buf.length ? buf : buf.subarray(0, got);
      }
    } finally {
      await fh.close();
    }
  }

  async writer(options: WriterOptions): Promise<Writer> {
    const { ref, signal } = options;
    checkRef(ref, 'open writer');
    const action = `open writer for ref "${ref}"`;
    const total = options.total ?? 0;
    if (!Number.isSafeInteger(total) || total < 0) throw errInvalidArgument(`${action}: bad total ${total}`);
    const expected = options.expected;
    if (expected !== undefined) {
      const hex = this.#hex(expected, action);
      if (await exists(join(this.#blobDir, hex))) {
        throw errAlreadyExists(`${action}: content "${expected}" already exists`);
      }
    }
    checkAborted(signal, action);
    const dir = this.#ingestDir(ref);
    await acquireLock(lockPath(dir), `ref "${ref}"`);
    let fh: FileHandle | undefined;
    try {
      const meta = await readStatus(dir);
      const fresh = meta === undefined;
      if (meta && meta.ref !== ref) {
        throw new KilnError('Internal', `${action}: ingest directory holds ref "${meta.ref}"`);
      }
      if (expected && meta?.expected && meta.expected !== expected) {
        throw errFailedPrecondition(
          `${action}: the ingest in progress expects "${meta.expected}", not "${expected}"; abort it first`,
        );
      }
      if (total && meta?.total && meta.total !== total) {
        throw errFailedPrecondition(
          `${action}: the ingest in progress expects ${meta.total} bytes, not ${total}; abort it first`,
        );
      }
      const now = new Date().toISOString();
      if (fresh) {
        await writeFile(join(dir, 'total'), String(total));
        if (expected) await writeFile(join(dir, 'expected'), expected);
        await writeFile(join(dir, 'startedat'), now);
        await writeFile(join(dir, 'updatedat'), now);
      } else {
        if (total && !meta.total) await writeFile(join(dir, 'total'), String(total));
        if (expected && !meta.expected) await writeFile(join(dir, 'expected'), expected);
      }
      const dataPath = join(dir, 'data');
      // A commit that failed after its chmod leaves read-only data behind.
      if (!fresh) await chmodIfExists(dataPath, 0o644);
      fh = await open(dataPath, fsc.O_RDWR | fsc.O_CREAT | (fresh ? fsc.O_TRUNC : 0), 0o644);
      if (fresh) await writeFile(join(dir, 'ref'), ref);
      const effTotal = total || meta?.total || 0;
      let offset = (await fh.stat()).size;
      const digester = new Digester();
      if (effTotal > 0 && offset > effTotal) {
        await fh.truncate(0); // more bytes than can ever commit: start over
        offset = 0;
      }
      await rehash(fh, offset, digester, signal, action);
      if (!fresh) await writeFile(join(dir, 'updatedat'), now);
      return new LocalWriter({
        ref,
        dir,
        blobDir: this.#blobDir,
        labelDir: this.#labelDir,
        ingestRoot: this.#ingestRoot,
        fh,
        digester,
        offset,
        total: effTotal,
        expected: expected ?? meta?.expected,
        signal,
      });
    } catch (err) {
      await fh?.close();
      await releaseLock(lockPath(dir));
      throw isKilnError(err) ? err : wrap(err, action);
    }
  }

  async status(ref: string): Promise<Status> {
    checkRef(ref, 'status');
    const st = await readStatus(this.#ingestDir(ref));
    if (!st || st.ref !== ref) throw errNotFound(`status of ref "${ref}": no ingest in progress`);
    return st;
  }

  async listStatuses(filters?: Filters): Promise<Status[]> {
    const match = compileFilters(filters);
    const out: Status[] = [];
    for (const name of await listDir(this.#ingestRoot)) {
      if (!HEX64.test(name)) continue;
      const st = await readStatus(join(this.#ingestRoot, name));
      if (st && match(fieldLookup({ ref: st.ref, expected: st.expected }, {}))) out.push(st);
    }
    return out.sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0));
  }

  async abort(ref: string): Promise<void> {
    checkRef(ref, 'abort');
    const dir = this.#ingestDir(ref);
    if (!(await exists(dir))) throw errNotFound(`abort of ref "${ref}": no ingest in progress`);
    await acquireLock(lockPath(dir), `ref "${ref}"`);
    await removeIngest(dir, this.#ingestRoot);
  }

  /**
   * Startup hygiene: removes ingests not updated for `olderThanMs` whose lock
   * is free (or stale), half-made ingests of that age, and leftovers of
   * interrupted removals. Returns the refs removed (half-made ones as their
   * directory name).
   */
  async cleanupStaleIngests(olderThanMs: number): Promise<string[]> {
    const removed: string[] = [];
    const ingestRoot = this.#ingestRoot;
    const age = async (dir: string): Promise<{ ref?: string; updated: number } | undefined> => {
      const st = await readStatus(dir);
      if (st) return { ref: st.ref, updated: st.updatedAt.getTime() };
      try {
        return { updated: (await stat(dir)).mtimeMs };
      } catch (err) {
        if (isErrno(err, 'ENOENT')) return undefined;
        throw err;
      }
    };
    for (const name of await listDir(ingestRoot)) {
      const dir = join(ingestRoot, name);
      if (name.startsWith(TRASH_PREFIX)) {
        await rm(dir, { recursive: true, force: true });
        continue;
      }
      if (!HEX64.test(name)) continue;
      const before = await age(dir);
      if (!before || Date.now() - before.updated < olderThanMs) continue;
      const ref = before.ref ?? name;
      try {
        await acquireLock(lockPath(dir), `ref "${ref}"`);
      } catch (err) {
        if (isKilnError(err, 'Unavailable')) continue; // a live writer holds it
        throw err;
      }
      const after = await readStatus(dir); // it may have been resumed just before we locked it
      if (after && Date.now() - after.updatedAt.getTime() < olderThanMs) {
        await releaseLock(lockPath(dir));
        continue;
      }
      await removeIngest(dir, ingestRoot);
      removed.push(ref);
    }
    return removed;
  }
}

type WriterState = 'open' | 'committing' | 'broken' | 'closed' | 'done';

interface WriterInit {
  ref: string;
  dir: string;
  blobDir: string;
  labelDir: string;
  ingestRoot: string;
  fh: FileHandle;
  digester: Digester;
  offset: number;
  total: number;
  expected?: Digest;
  signal?: AbortSignal;
}

/** A writer holding one ingest's lock; private to this module. */
class LocalWriter implements Writer {
  readonly ref: string;
  readonly #i: WriterInit;
  #offset: number;
  #state: WriterState = 'open';
  #busy = false;
  #final: Digest | undefined;

  constructor(init: WriterInit) {
    this.ref = init.ref;
    this.#i = init;
    this.#offset = init.offset;
  }

  get offset(): number {
    return this.#offset;
  }

  #check(action: string): void {
    if (this.#state !== 'open') {
      throw errFailedPrecondition(`${action} of ref "${this.ref}": writer is ${this.#state}`);
    }
    if (this.#busy) throw errFailedPrecondition(`${action} of ref "${this.ref}": a write is in progress`);
  }

  async write(chunk: Uint8Array): Promise<void> {
    this.#check('write');
    checkAborted(this.#i.signal, `write of ref "${this.ref}"`);
    const len = chunk.byteLength;
    const { total } = this.#i;
    if (total > 0 && this.#offset + len > total) {
      throw errDataLoss(
        `write of ref "${this.ref}" failed: ${this.#offset + len} bytes exceed the expected size ${total}`,
      );
    }
    this.#busy = true;
    try {
      // The write runs on the thread pool while this thread hashes the same bytes.
      const first = this.#i.fh.write(chunk, 0, len, this.#offset);
      this.#i.digester.update(chunk);
      let done = (await first).bytesWritten;
      while (done < len) {
        done += (await this.#i.fh.write(chunk, done, len - done, this.#offset + done)).bytesWritten;
      }
      this.#offset += len;
    } catch (err) {
      this.#state = 'broken'; // the hash may be ahead of the file: only close() is left
      throw wrap(err, `write of ref "${this.ref}"`);
    } finally {
      this.#busy = false;
    }
  }

  digest(): Digest {
    return this.#final ?? this.#i.digester.peek();
  }

  async commit(options: CommitOptions = {}): Promise<Digest> {
    this.#check('commit');
    const action = `commit of ref "${this.ref}"`;
    if (options.expected !== undefined) parseDigest(options.expected);
    if (options.size !== undefined && (!Number.isSafeInteger(options.size) || options.size < 0)) {
      throw errInvalidArgument(`${action}: bad size ${options.size}`);
    }
    this.#state = 'committing';
    const { fh, dir, blobDir, labelDir, ingestRoot } = this.#i;
    try {
      const size = this.#offset;
      for (const want of [this.#i.total || undefined, options.size]) {
        if (want !== undefined && want !== size) {
          await this.#discard();
          throw errDataLoss(`${action} failed: wrote ${size} bytes, expected ${want}`);
        }
      }
      const digest = this.#i.digester.digest();
      this.#final = digest;
      for (const want of [this.#i.expected, options.expected]) {
        if (want !== undefined && want !== digest) {
          await this.#discard();
          throw errDataLoss(`${action} failed: content has digest "${digest}", expected "${want}"`);
        }
      }
      const hex = digest.slice('sha256:'.length);
      const blobPath = join(blobDir, hex);
      if (await exists(blobPath)) {
        await this.#discard();
        throw errAlreadyExists(`${action}: content "${digest}" already exists`);
      }
      const now = new Date();
      await fh.utimes(now, now);
      await fh.datasync();
      await fh.chmod(0o444);
      await fh.close();
      await mkdir(blobDir, { recursive: true });
      try {
        await link(join(dir, 'data'), blobPath);
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
        await this.#discard();
        throw errAlreadyExists(`${action}: content "${digest}" already exists`, err);
      }
      if (options.labels && Object.keys(options.labels).length > 0) {
        const labels = Object.fromEntries(Object.entries(options.labels).filter(([, v]) => v !== ''));
        await writeSidecar(labelDir, hex, labels, now);
      } else {
        await rm(join(labelDir, `${hex}.json`), { force: true }); // left by an earlier, deleted blob
      }
      await fsyncDir(blobDir);
      this.#state = 'done';
      // The blob is in place: a leftover ingest is only litter (its data is a second link), so
      // failing to remove it does not fail the commit; cleanupStaleIngests() gets it later.
      await removeIngest(dir, ingestRoot).catch(() => releaseLock(lockPath(dir)).catch(() => undefined));
      return digest;
    } catch (err) {
      if (this.#state === 'committing') {
        // Unexpected failure: keep the bytes for a later writer, release the ref.
        this.#state = 'closed';
        await fh.close().catch(() => undefined);
        await releaseLock(lockPath(dir));
      }
      throw isKilnError(err) ? err : wrap(err, action);
    }
  }

  /** Drops the ingest and its bytes; the writer is finished. */
  async #discard(): Promise<void> {
    this.#state = 'done';
    await this.#i.fh.close().catch(() => undefined);
    await removeIngest(this.#i.dir, this.#i.ingestRoot);
  }

  async close(): Promise<void> {
    if (this.#state !== 'open' && this.#state !== 'broken') return;
    this.#state = 'closed';
    const { fh, dir } = this.#i;
    try {
      await writeFile(join(dir, 'updatedat'), new Date().toISOString());
    } finally {
      await fh.close();
      await releaseLock(lockPath(dir));
    }
  }
}

/**
 * Writes a whole stream under `ref` and commits it; AlreadyExists counts as
 * success (the existing blob's labels are left as they are). When an earlier
 * writer left bytes behind, the first `writer.offset` bytes of `source` are
 * skipped. On failure before the commit the bytes written are kept for a
 * later resume. Returns the digest.
 */
export async function ingestStream(
  store: ContentStore,
  ref: string,
  source: AsyncIterable<Uint8Array>,
  options: { expected?: Digest; total?: number; labels?: Labels; signal?: AbortSignal } = {},
): Promise<Digest> {
  const { expected, total, labels, signal } = options;
  let w: Writer;
  try {
    w = await store.writer({ ref, expected, total, signal });
  } catch (err) {
    if (expected && isKilnError(err, 'AlreadyExists')) return expected;
    throw err;
  }
  try {
    let skip = w.offset;
    for await (let chunk of source) {
      checkAborted(signal, `ingest of ref "${ref}"`);
      if (skip > 0) {
        if (chunk.byteLength <= skip) {
          skip -= chunk.byteLength;
          continue;
        }
        chunk = chunk.subarray(skip);
        skip = 0;
      }
      await w.write(chunk);
    }
    if (skip > 0) {
      // The ingest holds bytes this source does not have: it cannot be this content.
      await w.close();
      await store.abort(ref);
      throw errDataLoss(
        `ingest of ref "${ref}" failed: the source ended ${skip} bytes before the ${w.offset} bytes already ingested`,
      );
    }
    try {
      return await w.commit({ labels });
    } catch (err) {
      if (isKilnError(err, 'AlreadyExists')) return w.digest();
      throw err;
    }
  } finally {
    await w.close(); // no-op after a commit or a discarded ingest
  }
}

// ---------------------------------------------------------------------------
// Private helpers.

function lockPath(ingestDir: string): string {
  return join(ingestDir, 'lock');
}

function checkRef(ref: string, action: string): void {
  if (typeof ref !== 'string' || ref === '') throw errInvalidArgument(`${action}: empty ref`);
}

function checkAborted(signal: AbortSignal | undefined, action: string): void {
  if (signal?.aborted) throw new KilnError('Canceled', `${action}: canceled`, { cause: signal.reason });
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw wrap(err, `list directory "${dir}"`);
  }
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

async function chmodIfExists(path: string, mode: number): Promise<void> {
  try {
    await chmod(path, mode);
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
}

/** Reads into `buf` from `position` until full or end of file; returns the bytes read. */
async function readFully(fh: FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let got = 0;
  while (got < buf.byteLength) {
    const { bytesRead } = await fh.read(buf, got, buf.byteLength - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

/** Rebuilds the digest state of a resumed ingest from the bytes already on disk. */
async function rehash(
  fh: FileHandle,
  size: number,
  digester: Digester,
  signal: AbortSignal | undefined,
  action: string,
): Promise<void> {
  if (size === 0) return;
  const buf = Buffer.allocUnsafe(Math.min(REHASH_CHUNK, size));
  let pos = 0;
  while (pos < size) {
    checkAborted(signal, action);
    const got = await readFully(fh, buf.subarray(0, Math.min(buf.length, size - pos)), pos);
    if (got === 0) throw errDataLoss(`${action}: ingest data shrank to ${pos} bytes while re-hashing`);
    digester.update(buf.subarray(0, got));
    pos += got;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function readStatus(dir: string): Promise<Status | undefined> {
  const ref = await readText(join(dir, 'ref'));
  if (ref === undefined) return undefined;
  const [total, expected, startedat, updatedat, data] = await Promise.all([
    readText(join(dir, 'total')),
    readText(join(dir, 'expected')),
    readText(join(dir, 'startedat')),
    readText(join(dir, 'updatedat')),
    stat(join(dir, 'data')).catch((err: unknown) => {
      if (isErrno(err, 'ENOENT')) return undefined;
      throw err;
    }),
  ]);
  const startedAt = startedat ? new Date(startedat) : new Date(0);
  const marked = updatedat ? new Date(updatedat).getTime() : startedAt.getTime();
  const st: Status = {
    ref,
    offset: data?.size ?? 0,
    total: total ? Number(total) : 0,
    startedAt,
    updatedAt: new Date(Math.max(marked, data?.mtimeMs ?? 0)),
  };
  if (expected) st.expected = expected as Digest;
  return st;
}

/** Removes an ingest directory; the caller holds its lock. Rename first so no one sees it half-deleted. */
async function removeIngest(dir: string, ingestRoot: string): Promise<void> {
  const trash = join(ingestRoot, `${TRASH_PREFIX}${randomBytes(8).toString('hex')}`);
  try {
    await rename(dir, trash);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw wrap(err, `remove ingest "${dir}"`);
  }
  await rm(trash, { recursive: true, force: true });
}

interface Sidecar {
  labels: Labels;
  updatedAt: Date;
}

async function readSidecar(path: string): Promise<Sidecar | undefined> {
  const text = await readText(path);
  if (text === undefined) return undefined;
  try {
    const raw = JSON.parse(text) as { labels?: Labels; updatedAt?: string };
    return { labels: raw.labels ?? {}, updatedAt: new Date(raw.updatedAt ?? 0) };
  } catch (err) {
    throw errDataLoss(`read labels "${path}": corrupt JSON`, err);
  }
}

async function writeSidecar(labelDir: string, hex: string, labels: Labels, updatedAt: Date): Promise<void> {
  await mkdir(labelDir, { recursive: true });
  const path = join(labelDir, `${hex}.json`);
  const tmp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const fh = await open(tmp, 'wx', 0o644);
  try {
    await fh.writeFile(JSON.stringify({ labels, updatedAt: updatedAt.toISOString() }));
    await fh.sync();
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw wrap(err, `write labels "${path}"`);
  }
  await fh.close();
  await rename(tmp, path);
  await fsyncDir(labelDir);
}
