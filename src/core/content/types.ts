/**
 * The content store contract (containerd's content.Store, in TypeScript).
 * Blobs are immutable and named by digest. Writers are named by a
 * caller-chosen ref; an interrupted write keeps its bytes and a later writer
 * of the same ref resumes from `offset`. Implementations: the local
 * filesystem store (store.ts) and the namespaced, metadata-backed view of it
 * (../metadata/content.ts). Both must pass test/core/content-conformance.ts.
 */
import type { Digest } from '../digest.ts';

export type Labels = Record<string, string>;

export interface Info {
  digest: Digest;
  size: number;
  createdAt: Date;
  updatedAt: Date;
  labels: Labels;
}

/** State of an ingest in progress. */
export interface Status {
  ref: string;
  /** Bytes written so far. */
  offset: number;
  /** Expected total size, 0 when unknown. */
  total: number;
  expected?: Digest;
  startedAt: Date;
  updatedAt: Date;
}

/**
 * Filters, containerd style: each string is `field==value`, `field!=value`,
 * `field~=regexp` or a bare `field` (present). Fields: `digest`, `size`,
 * `labels.<key>`; for statuses `ref`. Several strings are OR-ed; within one
 * string, comma-separated clauses are AND-ed.
 */
export type Filters = string[];

export interface WriterOptions {
  ref: string;
  /** Expected total size; the commit fails if the bytes differ. */
  total?: number;
  /** Expected digest; the commit fails if the bytes differ. */
  expected?: Digest;
  signal?: AbortSignal;
}

export interface CommitOptions {
  /** Size to verify, when not given to writer(). */
  size?: number;
  /** Digest to verify, when not given to writer(). */
  expected?: Digest;
  labels?: Labels;
}

export interface Writer {
  readonly ref: string;
  /** Bytes written so far, including those kept from an earlier, interrupted writer. */
  readonly offset: number;
  write(chunk: Uint8Array): Promise<void>;
  /** Digest of the bytes written so far. */
  digest(): Digest;
  /**
   * Verifies size and digest, fsyncs and renames into place, releases the
   * ref. If the blob already exists, the ingest is discarded and AlreadyExists
   * is thrown (callers usually treat that as success).
   */
  commit(options?: CommitOptions): Promise<Digest>;
  /** Stops writing and releases the ref, keeping the bytes for a later resume. */
  close(): Promise<void>;
}

/** Random access to one blob. */
export interface ReaderAt {
  readonly size: number;
  /** Reads up to `length` bytes at `offset`; fewer only at the end of the blob. */
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

export interface ContentStore {
  info(digest: Digest): Promise<Info>;
  /**
   * Updates mutable fields. `fieldpaths` like ['labels'] (replace all labels)
   * or ['labels.foo'] (set or, with an empty value, remove one label);
   * no fieldpaths means all labels. Returns the new info.
   */
  update(info: Pick<Info, 'digest' | 'labels'>, fieldpaths?: string[]): Promise<Info>;
  walk(fn: (info: Info) => void | Promise<void>, filters?: Filters): Promise<void>;
  delete(digest: Digest): Promise<void>;

  readerAt(digest: Digest): Promise<ReaderAt>;
  /** Streams the blob, or the byte range [start, end) of it. */
  read(digest: Digest, range?: { start?: number; end?: number }): AsyncIterable<Uint8Array>;
  /**
   * Reads a whole blob of at most `maxSize` bytes (a manifest, index or
   * config) and checks it against its digest: NotFound when absent,
   * ResourceExhausted when larger, DataLoss when the bytes do not match. The
   * result is the caller's own copy. A store may serve it from memory
   * (content never changes under its digest), so a blob another process
   * deleted since may still be returned: existence is `info`'s answer.
   */
  readBlob(digest: Digest, maxSize: number): Promise<Uint8Array>;

  /**
   * Opens a writer for `ref`. Throws Unavailable ("ref … is in use") if
   * another writer, in this or another process, holds the ref; AlreadyExists
   * if `expected` is already in the store.
   */
  writer(options: WriterOptions): Promise<Writer>;
  status(ref: string): Promise<Status>;
  listStatuses(filters?: Filters): Promise<Status[]>;
  /** Discards an ingest and its bytes. */
  abort(ref: string): Promise<void>;
}
