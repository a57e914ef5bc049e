/**
 * The metadata database: `<root>/metadata.db`, opened with node:sqlite in WAL
 * mode with a busy timeout and foreign keys on. The schema is versioned
 * (`schema_version` table) and migrated forward on open, each migration in
 * its own transaction.
 *
 * Writes go through `transaction(fn)` (BEGIN IMMEDIATE, so the write lock is
 * taken up front and another process waits up to the busy timeout; COMMIT,
 * or ROLLBACK when fn throws). `fn` is synchronous on purpose: one
 * connection is shared by every async task in the process, so a transaction
 * must never stay open across an `await`. Nested calls run as savepoints.
 *
 * Durability: `synchronous=NORMAL` (a commit is not fsynced; the WAL is
 * synced at each checkpoint, and `close()` checkpoints; in the CLI it syncs
 * the WAL instead: core/sqlite.ts `closeDatabase`). A commit survives a
 * process crash or kill (the WAL is in the page cache); after a power loss
 * or kernel crash the database is intact but may lack the transactions of
 * the command that was running, which leaves only what a crash between a
 * backend write and its record already leaves (backend objects without a
 * record, removed by GC and startup recovery). Every finished command is
 * durable: the CLI closes its stores (syncing their WALs) before it exits. A build makes a few
 * hundred small transactions; fsyncing each cost ~15% of a small build.
 *
 * `gcLock` is the in-process lock that makes a GC run safe against work in
 * flight: writers that first create backend objects (blobs, snapshots) and
 * then record them hold it shared around both steps; GC holds it exclusive
 * from mark to the last backend deletion. Limit: the lock is per process;
 * the engine is expected to own its state directory (one process at a time
 * writes backends), SQLite's own lock covers the records.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import { closeDatabase, statementCache } from '../sqlite.ts';
import { errInvalidArgument, wrap } from '../errors.ts';
import type { Labels } from '../content/types.ts';

/** Migrations, applied in order; index + 1 is the schema version they lead to (exported for the migration tests). */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE namespaces (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
  );
  CREATE TABLE content (
    ns TEXT NOT NULL REFERENCES namespaces(name),
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (ns, digest)
  );
  CREATE INDEX content_digest ON content(digest);
  CREATE TABLE ingests (
    ns TEXT NOT NULL REFERENCES namespaces(name),
    ref TEXT NOT NULL,
    lease TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (ns, ref)
  );
  CREATE TABLE snapshots (
    ns TEXT NOT NULL REFERENCES namespaces(name),
    snapshotter TEXT NOT NULL,
    name TEXT NOT NULL,
    backend_key TEXT NOT NULL,
    parent TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (ns, snapshotter, name),
    UNIQUE (snapshotter, backend_key)
  );
  CREATE INDEX snapshots_parent ON snapshots(ns, snapshotter, parent);
  CREATE TABLE images (
    ns TEXT NOT NULL REFERENCES namespaces(name),
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    annotations TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (ns, name)
  );
  CREATE TABLE leases (
    ns TEXT NOT NULL REFERENCES namespaces(name),
    id TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (ns, id)
  );
  CREATE TABLE lease_resources (
    ns TEXT NOT NULL,
    lease TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (ns, lease, type, id),
    FOREIGN KEY (ns, lease) REFERENCES leases(ns, id) ON DELETE CASCADE
  );
  CREATE TABLE deleted_content (
    digest TEXT PRIMARY KEY,
    deleted_at INTEGER NOT NULL
  );
  CREATE TABLE sequences (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
  );
  `,
  // 2: container records (../containers/store.ts).
  `
  CREATE TABLE containers (
    ns TEXT NOT NULL REFERENCES namespaces(name),
    id TEXT NOT NULL,
    image TEXT NOT NULL,
    snapshotter TEXT NOT NULL,
    snapshot_key TEXT NOT NULL,
    runtime TEXT NOT NULL,
    spec TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    auto_remove INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'created',
    exit_code INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (ns, id)
  );
  `,
  // 3: several records may name one driver snapshot (NamespacedSnapshotter.share), so
  // (snapshotter, backend_key) is indexed, no longer unique. SQLite drops a constraint only by
  // copying the table.
  `
  CREATE TABLE snapshots_v3 (
    ns TEXT NOT NULL REFERENCES namespaces(name),
    snapshotter TEXT NOT NULL,
    name TEXT NOT NULL,
    backend_key TEXT NOT NULL,
    parent TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (ns, snapshotter, name)
  );
  INSERT INTO snapshots_v3 (ns, snapshotter, name, backend_key, parent, kind, labels, created_at, updated_at)
    SELECT ns, snapshotter, name, backend_key, parent, kind, labels, created_at, updated_at FROM snapshots;
  DROP TABLE snapshots;
  ALTER TABLE snapshots_v3 RENAME TO snapshots;
  CREATE INDEX snapshots_parent ON snapshots(ns, snapshotter, parent);
  CREATE INDEX snapshots_backend ON snapshots(snapshotter, backend_key);
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Async reader/writer lock (in-process). Shared holders run together; exclusive waits for all. */
export class RWLock {
  #shared = 0;
  #exclusive = false;
  #queue: { exclusive: boolean; resolve: () => void }[] = [];

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    await this.#acquire(false);
    try {
      return await fn();
    } finally {
      this.#release(false);
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    await this.#acquire(true);
    try {
      return await fn();
    } finally {
      this.#release(true);
    }
  }

  #acquire(exclusive: boolean): Promise<void> {
    // Writers waiting block new readers, so GC is not starved.
    if (this.#queue.length === 0 && !this.#exclusive && (exclusive ? this.#shared === 0 : true)) {
      if (exclusive) this.#exclusive = true;
      else this.#shared++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#queue.push({ exclusive, resolve }));
  }

  #release(exclusive: boolean): void {
    if (exclusive) this.#exclusive = false;
    else this.#shared--;
    while (this.#queue.length > 0 && !this.#exclusive) {
      const next = this.#queue[0]!;
      if (next.exclusive) {
        if (this.#shared > 0) break;
        this.#queue.shift();
        this.#exclusive = true;
        next.resolve();
        break;
      }
      this.#queue.shift();
      this.#shared++;
      next.resolve();
    }
  }
}

export interface MetadataDBOptions {
  /** Milliseconds to wait for another connection's write lock. Default 5000. */
  busyTimeout?: number;
}

export class MetadataDB {
  readonly path: string;
  readonly sqlite: DatabaseSync;
  readonly gcLock = new RWLock();
  #depth = 0;
  /** Prepared statements, compiled once per SQL text (core/sqlite.ts). */
  readonly #stmt: (sql: string) => StatementSync;

  constructor(root: string, options: MetadataDBOptions = {}) {
    mkdirSync(root, { recursive: true });
    this.path = path.join(root, 'metadata.db');
    try {
      this.sqlite = new DatabaseSync(this.path, { timeout: options.busyTimeout ?? 5000 });
      this.#stmt = statementCache(this.sqlite);
      this.sqlite.exec('PRAGMA journal_mode = WAL');
      this.sqlite.exec('PRAGMA synchronous = NORMAL');
      this.sqlite.exec('PRAGMA foreign_keys = ON');
    } catch (err) {
      throw wrap(err, `open metadata database "${this.path}"`);
    }
    this.#migrate();
  }

  /** Current schema version of the open database. */
  get version(): number {
    const row = this.sqlite.prepare('SELECT max(version) AS v FROM schema_version').get() as {
      v: number | null;
    };
    return row.v ?? 0;
  }

  #migrate(): void {
    this.transaction(() => {
      this.sqlite.exec(
        'CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)',
      );
    });
    const current = this.version;
    if (current > MIGRATIONS.length) {
      throw errInvalidArgument(
        `open metadata database "${this.path}": schema version ${current} is newer than this kiln (${MIGRATIONS.length})`,
      );
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.transaction(() => {
        // Re-check under the write lock: another process may have migrated meanwhile.
        if (this.version > v) return;
        this.sqlite.exec(MIGRATIONS[v]!);
        this.run('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)', v + 1, Date.now());
      });
    }
  }

  /**
   * Runs fn in a write transaction (BEGIN IMMEDIATE … COMMIT, ROLLBACK on
   * throw). fn must be synchronous; nested calls become savepoints.
   */
  transaction<T>(fn: () => T): T {
    if (this.#depth > 0) {
      const sp = `sp${this.#depth}`;
      this.sqlite.exec(`SAVEPOINT ${sp}`);
      this.#depth++;
      try {
        const result = fn();
        this.sqlite.exec(`RELEASE ${sp}`);
        return result;
      } catch (err) {
        this.sqlite.exec(`ROLLBACK TO ${sp}`);
        this.sqlite.exec(`RELEASE ${sp}`);
        throw err;
      } finally {
        this.#depth--;
      }
    }
    this.sqlite.exec('BEGIN IMMEDIATE');
    this.#depth++;
    try {
      const result = fn();
      if (result instanceof Promise) throw new TypeError('transaction(fn): fn must be synchronous');
      this.sqlite.exec('COMMIT');
      return result;
    } catch (err) {
      if (this.sqlite.isTransaction) this.sqlite.exec('ROLLBACK');
      throw err;
    } finally {
      this.#depth--;
    }
  }

  run(sql: string, ...params: SQLInputValue[]): { changes: number | bigint } {
    return this.#stmt(sql).run(...params);
  }

  get<T>(sql: string, ...params: SQLInputValue[]): T | undefined {
    return this.#stmt(sql).get(...params) as T | undefined;
  }

  all<T>(sql: string, ...params: SQLInputValue[]): T[] {
    return this.#stmt(sql).all(...params) as T[];
  }

  /**
   * Creates namespace `ns` if missing. Writers call it inside their
   * transaction, so a namespace deleted meanwhile comes back on first use
   * (containerd does the same) instead of failing on the foreign key.
   */
  ensureNamespace(ns: string): void {
    const now = Date.now();
    this.run(
      "INSERT OR IGNORE INTO namespaces (name, labels, created_at, updated_at) VALUES (?, '{}', ?, ?)",
      ns,
      now,
      now,
    );
  }

  /** Next value of a named counter (used for unique backend snapshot keys). */
  nextSequence(name: string): number {
    return this.transaction(() => {
      this.run(
        'INSERT INTO sequences (name, value) VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1',
        name,
      );
      return this.get<{ value: number }>('SELECT value FROM sequences WHERE name = ?', name)!.value;
    });
  }

  /** Checkpoints the WAL (which syncs it: see Durability above) and closes; see core/sqlite.ts `closeDatabase`. */
  close(): void {
    closeDatabase(this.sqlite, this.path);
  }
}

/** Labels column codec. */
export function encodeLabels(labels: Labels | undefined): string {
  return JSON.stringify(labels ?? {});
}

export function decodeLabels(text: string | null | undefined): Labels {
  if (!text) return {};
  return JSON.parse(text) as Labels;
}

/**
 * Applies a label update the way every store does: no fieldpaths or
 * ['labels'] replace all labels; ['labels.k'] sets k, or removes it when the
 * new value is empty or absent. Other fieldpaths are rejected.
 */
export function applyLabelUpdate(
  current: Labels,
  next: Labels,
  fieldpaths: string[] | undefined,
  what: string,
): Labels {
  if (!fieldpaths || fieldpaths.length === 0) return { ...next };
  const out: Labels = { ...current };
  for (const fp of fieldpaths) {
    if (fp === 'labels') return { ...next };
    if (!fp.startsWith('labels.')) throw errInvalidArgument(`update ${what}: cannot update field "${fp}"`);
    const key = fp.slice('labels.'.length);
    const value = next[key];
    if (value === undefined || value === '') delete out[key];
    else out[key] = value;
  }
  return out;
}

/** Validates label keys and values (containerd limits: key+value ≤ 4096 bytes, key non-empty). */
export function validateLabels(labels: Labels | undefined, what: string): void {
  if (!labels) return;
  for (const [k, v] of Object.entries(labels)) {
    if (k === '') throw errInvalidArgument(`${what}: label key must not be empty`);
    if (typeof v !== 'string') throw errInvalidArgument(`${what}: label "${k}" must be a string`);
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > 4096) {
      throw errInvalidArgument(`${what}: label "${k}" exceeds 4096 bytes`);
    }
  }
}
