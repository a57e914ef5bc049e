/**
 * The namespaced content store: a view of the shared local store (one copy
 * of each blob on disk) through per-namespace records in SQLite (digest,
 * size, labels, created, updated). info/walk/update/read see only the
 * namespace's records; a namespace gets a record only when one of its
 * writers commits (bytes written and verified), even if the blob is
 * already in the shared store — then the written bytes are checked against
 * the digest and discarded. `delete` drops the record; the blob is removed
 * by GC once no namespace records it. Ingest refs are namespaced: the
 * backend sees `<namespace>/<ref>`.
 *
 * `withLease(id)` gives a view whose writers attach their ingest ref and the
 * committed digest to that lease (in the same transaction as the record),
 * so GC cannot collect work in flight. Commits hold the metadata GC lock
 * shared between the backend commit and the record insert.
 * Labels live only in the records; the backend's own labels are not used.
 */
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
} from '../content/types.ts';
import { compileFilters, fieldLookup } from '../content/filters.ts';
import type { Digest } from '../digest.ts';
import {
  errAlreadyExists,
  errDataLoss,
  errInvalidArgument,
  errNotFound,
  isKilnError,
  KilnError,
} from '../errors.ts';
import { applyLabelUpdate, decodeLabels, encodeLabels, type MetadataDB, validateLabels } from './db.ts';
import { validateNamespace } from './namespaces.ts';

interface Row {
  digest: string;
  size: number;
  labels: string;
  created_at: number;
  updated_at: number;
}

function toInfo(row: Row): Info {
  return {
    digest: row.digest as Digest,
    size: row.size,
    labels: decodeLabels(row.labels),
    createdAt: new Date(row.created_at),
    updatedAt: new Date(row.updated_at),
  };
}

export interface NamespacedContentStoreOptions {
  db: MetadataDB;
  namespace: string;
  /** The shared local store. */
  backend: ContentStore;
  /** Lease that writers of this view attach their work to. */
  lease?: string;
}

export class NamespacedContentStore implements ContentStore {
  readonly namespace: string;
  readonly lease: string | undefined;
  readonly #db: MetadataDB;
  readonly #backend: ContentStore;

  constructor(options: NamespacedContentStoreOptions) {
    this.#db = options.db;
    validateNamespace(options.namespace);
    this.namespace = options.namespace;
    this.#backend = options.backend;
    this.lease = options.lease;
  }

  /** A view of the same namespace whose writes are held by lease `id`. */
  withLease(id: string): NamespacedContentStore {
    return new NamespacedContentStore({
      db: this.#db,
      namespace: this.namespace,
      backend: this.#backend,
      lease: id,
    });
  }

  #row(digest: string): Row | undefined {
    return this.#db.get<Row>('SELECT * FROM content WHERE ns = ? AND digest = ?', this.namespace, digest);
  }

  #mustRow(digest: string, action: string): Row {
    const row = this.#row(digest);
    if (!row) throw errNotFound(`${action} ${digest}: content not found in namespace "${this.namespace}"`);
    return row;
  }

  #backendRef(ref: string): string {
    return `${this.namespace}/${ref}`;
  }

  async info(digest: Digest): Promise<Info> {
    return toInfo(this.#mustRow(digest, 'get info of'));
  }

  async update(info: Pick<Info, 'digest' | 'labels'>, fieldpaths?: string[]): Promise<Info> {
    validateLabels(info.labels, `update content ${info.digest}`);
    return this.#db.transaction(() => {
      const row = this.#mustRow(info.digest, 'update');
      const labels = applyLabelUpdate(
        decodeLabels(row.labels),
        info.labels ?? {},
        fieldpaths,
        `content ${info.digest}`,
      );
      this.#db.run(
        'UPDATE content SET labels = ?, updated_at = ? WHERE ns = ? AND digest = ?',
        encodeLabels(labels),
        Math.max(Date.now(), row.updated_at),
        this.namespace,
        info.digest,
      );
      return toInfo(this.#mustRow(info.digest, 'update'));
    });
  }

  async walk(fn: (info: Info) => void | Promise<void>, filters?: Filters): Promise<void> {
    const match = compileFilters(filters);
    const rows = this.#db.all<Row>('SELECT * FROM content WHERE ns = ? ORDER BY digest', this.namespace);
    for (const row of rows) {
      const info = toInfo(row);
      if (!match(fieldLookup({ digest: info.digest, size: String(info.size) }, info.labels))) continue;
      await fn(info);
    }
  }

  async delete(digest: Digest): Promise<void> {
    this.#db.transaction(() => {
      const r = this.#db.run('DELETE FROM content WHERE ns = ? AND digest = ?', this.namespace, digest);
      if (Number(r.changes) === 0) {
        throw errNotFound(`delete content ${digest}: not found in namespace "${this.namespace}"`);
      }
      // Tells GC the blob may go now, without waiting for the orphan grace period.
      this.#db.run(
        'INSERT OR REPLACE INTO deleted_content (digest, deleted_at) VALUES (?, ?)',
        digest,
        Date.now(),
      );
    });
  }

  async readerAt(digest: Digest): Promise<ReaderAt> {
    this.#mustRow(digest, 'read');
    return this.#backend.readerAt(digest);
  }

  async *read(digest: Digest, range?: { start?: number; end?: number }): AsyncIterable<Uint8Array> {
    this.#mustRow(digest, 'read');
    yield* this.#backend.read(digest, range);
  }

  async readBlob(digest: Digest, maxSize: number): Promise<Uint8Array> {
    // The row, not the shared store's memory, says whether this namespace has the blob.
    this.#mustRow(digest, 'read');
    return this.#backend.readBlob(digest, maxSize);
  }

  async writer(options: WriterOptions): Promise<Writer> {
    const ref = options.ref;
    if (typeof ref !== 'string' || ref === '') throw errInvalidArgument('open writer: ref must not be empty');
    if (options.expected && this.#row(options.expected)) {
      throw errAlreadyExists(`open writer "${ref}": content ${options.expected} already exists`);
    }
    if (this.lease !== undefined) this.#requireLease(`open writer "${ref}"`);
    const backendOptions: WriterOptions = { ...options, ref: this.#backendRef(ref) };
    let inner: Writer;
    try {
      try {
        inner = await this.#backend.writer(backendOptions);
      } catch (err) {
        if (!isKilnError(err, 'AlreadyExists') || !options.expected) throw err;
        // The blob is in the shared store but not in this namespace: the bytes
        // must still be written; they are verified and dropped at commit.
        const { expected: _drop, ...rest } = backendOptions;
        inner = await this.#backend.writer(rest);
      }
    } catch (err) {
      throw this.unprefix(err, ref);
    }
    if (this.lease !== undefined) {
      const lease = this.lease;
      try {
        this.#db.transaction(() => {
          this.#requireLease(`open writer "${ref}"`);
          this.#db.ensureNamespace(this.namespace);
          this.#db.run(
            'INSERT OR REPLACE INTO ingests (ns, ref, lease, created_at) VALUES (?, ?, ?, ?)',
            this.namespace,
            ref,
            lease,
            Date.now(),
          );
          this.#db.run(
            'INSERT OR IGNORE INTO lease_resources (ns, lease, type, id) VALUES (?, ?, ?, ?)',
            this.namespace,
            lease,
            'ingests',
            ref,
          );
        });
      } catch (err) {
        await inner.close();
        throw err;
      }
    }
    return new NamespacedWriter(this, inner, ref, options);
  }

  /** @internal Rewrites a backend error so that it names the caller's ref, not the namespaced one. */
  unprefix(err: unknown, ref: string): unknown {
    if (!(err instanceof KilnError)) return err;
    const backendRef = `"${this.#backendRef(ref)}"`;
    if (!err.message.includes(backendRef)) return err;
    return new KilnError(err.code, err.message.split(backendRef).join(`"${ref}"`), { cause: err });
  }

  #requireLease(action: string): void {
    if (!this.#db.get('SELECT 1 FROM leases WHERE ns = ? AND id = ?', this.namespace, this.lease!)) {
      throw errNotFound(`${action}: lease "${this.lease}" not found in namespace "${this.namespace}"`);
    }
  }

  /** @internal Called by NamespacedWriter.commit. */
  async commitWriter(w: NamespacedWriter, inner: Writer, options: CommitOptions = {}): Promise<Digest> {
    const labels: Labels = options.labels ?? {};
    validateLabels(labels, `commit "${w.ref}"`);
    return this.#db.gcLock.shared(async () => {
      const expected = options.expected ?? w.expected;
      const total = options.size ?? w.total;
      const written = inner.digest();
      const writtenSize = inner.offset;
      let digest: Digest;
      try {
        // Always verify against what the caller expects, also when the backend
        // writer was opened without it (blob already in the shared store).
        const backendOptions: CommitOptions = {};
        if (total !== undefined && total > 0) backendOptions.size = total;
        if (options.size !== undefined) backendOptions.size = options.size;
        if (expected !== undefined) backendOptions.expected = expected;
        digest = await inner.commit(backendOptions);
      } catch (err) {
        if (!isKilnError(err, 'AlreadyExists')) throw this.unprefix(err, w.ref);
        // Already in the shared store: the bytes we were given must be those.
        if (expected !== undefined && written !== expected) {
          throw errDataLoss(`commit "${w.ref}": unexpected digest ${written}, want ${expected}`, err);
        }
        if (total !== undefined && total > 0 && writtenSize !== total) {
          throw errDataLoss(`commit "${w.ref}": unexpected size ${writtenSize}, want ${total}`, err);
        }
        digest = expected ?? written;
      }
      const info = await this.#backend.info(digest);
      const existed = this.#db.transaction(() => {
        // The backend consumed the ingest either way.
        this.#db.run('DELETE FROM ingests WHERE ns = ? AND ref = ?', this.namespace, w.ref);
        if (this.#row(digest)) return true;
        const now = Date.now();
        this.#db.ensureNamespace(this.namespace);
        this.#db.run(
          'INSERT INTO content (ns, digest, size, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)',
          this.namespace,
          digest,
          info.size,
          encodeLabels(labels),
          now,
          now,
        );
        if (this.lease !== undefined) {
          this.#requireLease(`commit "${w.ref}"`);
          this.#db.run(
            'INSERT OR IGNORE INTO lease_resources (ns, lease, type, id) VALUES (?, ?, ?, ?)',
            this.namespace,
            this.lease,
            'content',
            digest,
          );
        }
        return false;
      });
      if (existed) throw errAlreadyExists(`commit "${w.ref}": content ${digest} already exists`);
      return digest;
    });
  }

  async status(ref: string): Promise<Status> {
    try {
      const s = await this.#backend.status(this.#backendRef(ref));
      return { ...s, ref };
    } catch (err) {
      if (isKilnError(err, 'NotFound')) {
        throw errNotFound(`get status of ref "${ref}": not found in namespace "${this.namespace}"`, err);
      }
      throw this.unprefix(err, ref);
    }
  }

  async listStatuses(filters?: Filters): Promise<Status[]> {
    const prefix = `${this.namespace}/`;
    const match = compileFilters(filters);
    const all = await this.#backend.listStatuses();
    return all
      .filter((s) => s.ref.startsWith(prefix))
      .map((s) => ({ ...s, ref: s.ref.slice(prefix.length) }))
      .filter((s) =>
        match(
          fieldLookup(
            { ref: s.ref, expected: s.expected, offset: String(s.offset), total: String(s.total) },
            {},
          ),
        ),
      );
  }

  async abort(ref: string): Promise<void> {
    try {
      await this.#backend.abort(this.#backendRef(ref));
    } catch (err) {
      if (isKilnError(err, 'NotFound')) {
        throw errNotFound(`abort ref "${ref}": not found in namespace "${this.namespace}"`, err);
      }
      throw this.unprefix(err, ref);
    } finally {
      this.#db.transaction(() => {
        this.#db.run('DELETE FROM ingests WHERE ns = ? AND ref = ?', this.namespace, ref);
      });
    }
  }
}

class NamespacedWriter implements Writer {
  readonly ref: string;
  readonly expected: Digest | undefined;
  readonly total: number | undefined;
  readonly #store: NamespacedContentStore;
  readonly #inner: Writer;

  constructor(store: NamespacedContentStore, inner: Writer, ref: string, options: WriterOptions) {
    this.#store = store;
    this.#inner = inner;
    this.ref = ref;
    this.expected = options.expected;
    this.total = options.total;
  }

  get offset(): number {
    return this.#inner.offset;
  }

  async write(chunk: Uint8Array): Promise<void> {
    try {
      await this.#inner.write(chunk);
    } catch (err) {
      throw this.#store.unprefix(err, this.ref);
    }
  }

  digest(): Digest {
    return this.#inner.digest();
  }

  async commit(options?: CommitOptions): Promise<Digest> {
    try {
      return await this.#store.commitWriter(this, this.#inner, options);
    } catch (err) {
      if (err instanceof KilnError) throw err;
      throw new KilnError(
        'Internal',
        `commit "${this.ref}": ${err instanceof Error ? err.message : String(err)}`,
        {
          cause: err,
        },
      );
    }
  }

  async close(): Promise<void> {
    try {
      await this.#inner.close();
    } catch (err) {
      throw this.#store.unprefix(err, this.ref);
    }
  }
}
