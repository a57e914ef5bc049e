/**
 * A snapshot driver's own metadata (the role of containerd's
 * snapshots/storage MetaStore): `<root>/metadata.db`, a small node:sqlite
 * database in WAL mode with synchronous=NORMAL (durable at each checkpoint
 * and at close, like ../metadata/db.ts), one per driver root.
 *
 * Each snapshot has a short numeric id (its directory name on disk, stable
 * across commit), a key (the active/view key or the committed name; keys of
 * all kinds share one namespace), a kind, a parent (by id, so a commit's
 * rename does not touch children), labels, times, and for committed
 * snapshots the usage measured at commit.
 *
 * All methods are synchronous: node:sqlite is, and keeping a transaction
 * from spanning an `await` is what makes it atomic in a process shared by
 * many async tasks. `transaction(fn)` runs fn inside BEGIN IMMEDIATE/COMMIT
 * (ROLLBACK when it throws); drivers do their directory renames inside it so
 * a record and its directory appear and disappear together (a crash in
 * between leaves a directory without a record, which startup removes).
 * Limit: one process writes a driver root at a time (the engine's lock).
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { closeDatabase, statementCache } from '../sqlite.ts';
import type { Labels } from '../content/types.ts';
import { errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound, wrap } from '../errors.ts';
import type { Kind, SnapshotInfo, Usage } from './types.ts';

export interface SnapshotRecord {
  id: number;
  key: string;
  kind: Kind;
  parentId?: number;
  /** Key of the parent (always committed). */
  parent?: string;
  labels: Labels;
  created: number;
  updated: number;
  /** Usage stored at commit; undefined for active and view snapshots. */
  usage?: Usage;
}

const SCHEMA_VERSION = 1;
const SCHEMA = `
  CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    parent_id INTEGER REFERENCES snapshots(id),
    labels TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    size INTEGER,
    inodes INTEGER
  );
  CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
`;

type Row = {
  id: number;
  key: string;
  kind: Kind;
  parent_id: number | null;
  parent_key: string | null;
  labels: string;
  created: number;
  updated: number;
  size: number | null;
  inodes: number | null;
};

const SELECT = `SELECT s.id, s.key, s.kind, s.parent_id, p.key AS parent_key, s.labels, s.created, s.updated,
  s.size, s.inodes FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id`;

function toRecord(r: Row): SnapshotRecord {
  const rec: SnapshotRecord = {
    id: r.id,
    key: r.key,
    kind: r.kind,
    labels: JSON.parse(r.labels) as Labels,
    created: r.created,
    updated: r.updated,
  };
  if (r.parent_id !== null) {
    rec.parentId = r.parent_id;
    rec.parent = r.parent_key ?? undefined;
  }
  if (r.size !== null && r.inodes !== null) rec.usage = { size: r.size, inodes: r.inodes };
  return rec;
}

export function toInfo(rec: SnapshotRecord): SnapshotInfo {
  const info: SnapshotInfo = {
    kind: rec.kind,
    name: rec.key,
    labels: { ...rec.labels },
    createdAt: new Date(rec.created),
    updatedAt: new Date(rec.updated),
  };
  if (rec.parent !== undefined) info.parent = rec.parent;
  return info;
}

function checkLabels(labels: Labels | undefined, action: string): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(labels ?? {})) {
    if (typeof v !== 'string') throw errInvalidArgument(`${action}: label "${k}" must be a string`);
    out[k] = v;
  }
  return out;
}

function checkKey(key: string, action: string): void {
  if (typeof key !== 'string' || key === '') throw errInvalidArgument(`${action}: empty snapshot key`);
}

export class MetaStore {
  readonly path: string;
  #db: DatabaseSync;
  #depth = 0;
  /** Prepared statements, compiled once per SQL text (core/sqlite.ts). */
  readonly #prep: (sql: string) => StatementSync;

  private constructor(file: string, db: DatabaseSync) {
    this.path = file;
    this.#db = db;
    this.#prep = statementCache(db);
  }

  /** Opens (creating if needed) `<root>/metadata.db`. */
  static open(root: string): MetaStore {
    mkdirSync(root, { recursive: true, mode: 0o700 });
    const file = path.join(root, 'metadata.db');
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(file, { timeout: 5000 });
      db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;');
      const v = (db.prepare('PRAGMA user_version').get() as { user_version: number }).user_version;
      if (v > SCHEMA_VERSION) {
        throw errFailedPrecondition(
          `open snapshot metadata "${file}": schema version ${v} is newer than supported ${SCHEMA_VERSION}`,
        );
      }
      if (v < SCHEMA_VERSION) {
        db.exec('BEGIN IMMEDIATE');
        db.exec(SCHEMA);
        db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
        db.exec('COMMIT');
      }
    } catch (err) {
      throw wrap(err, `open snapshot metadata "${file}"`);
    }
    return new MetaStore(file, db);
  }

  /** Runs fn in a write transaction (nested calls join the outer one). */
  transaction<T>(fn: () => T): T {
    if (this.#depth > 0) {
      this.#depth++;
      try {
        return fn();
      } finally {
        this.#depth--;
      }
    }
    this.#db.exec('BEGIN IMMEDIATE');
    this.#depth = 1;
    try {
      const out = fn();
      this.#db.exec('COMMIT');
      return out;
    } catch (err) {
      this.#db.exec('ROLLBACK');
      throw err;
    } finally {
      this.#depth = 0;
    }
  }

  get(key: string): SnapshotRecord | undefined {
    const row = this.#prep(`${SELECT} WHERE s.key = ?`).get(key) as Row | undefined;
    return row ? toRecord(row) : undefined;
  }

  /** The record of `key`, or NotFound naming the action. */
  mustGet(key: string, action: string): SnapshotRecord {
    const rec = this.get(key);
    if (!rec) throw errNotFound(`${action}: snapshot "${key}" does not exist`);
    return rec;
  }

  byId(id: number): SnapshotRecord | undefined {
    const row = this.#prep(`${SELECT} WHERE s.id = ?`).get(id) as Row | undefined;
    return row ? toRecord(row) : undefined;
  }

  list(): SnapshotRecord[] {
    return (this.#prep(`${SELECT} ORDER BY s.id`).all() as Row[]).map(toRecord);
  }

  ids(): Set<number> {
    const rows = this.#prep('SELECT id FROM snapshots').all() as { id: number }[];
    return new Set(rows.map((r) => r.id));
  }

  /** Ids of the parent chain of `id`, nearest parent first (excluding `id`). */
  parentIds(id: number): number[] {
    const rows = this.#prep(
      `WITH RECURSIVE chain(id, parent_id, depth) AS (
           SELECT id, parent_id, 0 FROM snapshots WHERE id = ?
           UNION ALL
           SELECT s.id, s.parent_id, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent_id
         ) SELECT id FROM chain WHERE depth > 0 ORDER BY depth`,
    ).all(id) as { id: number }[];
    return rows.map((r) => r.id);
  }

  /**
   * Deletes the records of `ids` and of all their descendants (startup recovery: records whose
   * directory is gone); returns the keys deleted.
   */
  removeWithDescendants(ids: readonly number[]): string[] {
    if (ids.length === 0) return [];
    return this.transaction(() => {
      const rows = this.#prep(
        `WITH RECURSIVE doomed(id) AS (
             SELECT value FROM json_each(?)
             UNION SELECT s.id FROM snapshots s JOIN doomed d ON s.parent_id = d.id
           ) SELECT s.id, s.key FROM snapshots s JOIN doomed d ON s.id = d.id`,
      ).all(JSON.stringify(ids)) as { id: number; key: string }[];
      // Children first (parent_id references).
      const order = new Map(rows.map((r) => [r.id, this.parentIds(r.id).length]));
      rows.sort((a, b) => order.get(b.id)! - order.get(a.id)!);
      for (const r of rows) this.#prep('DELETE FROM snapshots WHERE id = ?').run(r.id);
      return rows.map((r) => r.key);
    });
  }

  children(id: number): number {
    return (this.#prep('SELECT COUNT(*) AS n FROM snapshots WHERE parent_id = ?').get(id) as { n: number }).n;
  }

  /** Creates an active or view snapshot record. */
  create(kind: 'active' | 'view', key: string, parent: string | undefined, labels?: Labels): SnapshotRecord {
    const action = `${kind === 'view' ? 'view' : 'prepare'} "${key}"`;
    checkKey(key, action);
    const l = checkLabels(labels, action);
    return this.transaction(() => {
      if (this.get(key)) throw errAlreadyExists(`${action}: snapshot "${key}" already exists`);
      let parentId: number | null = null;
      if (parent !== undefined && parent !== '') {
        const p = this.get(parent);
        if (!p) throw errNotFound(`${action}: parent snapshot "${parent}" does not exist`);
        if (p.kind !== 'committed') {
          throw errInvalidArgument(`${action}: parent snapshot "${parent}" is ${p.kind}, not committed`);
        }
        parentId = p.id;
      }
      const now = Date.now();
      const r = this.#prep(
        'INSERT INTO snapshots (key, kind, parent_id, labels, created, updated) VALUES (?, ?, ?, ?, ?, ?)',
      ).run(key, kind, parentId, JSON.stringify(l), now, now);
      return this.byId(Number(r.lastInsertRowid))!;
    });
  }

  /** Turns active `key` into committed `name`, keeping its id; `usage` may be measured later (setUsage). */
  commit(key: string, name: string, usage: Usage | undefined, labels?: Labels): SnapshotRecord {
    const action = `commit "${key}" as "${name}"`;
    checkKey(name, action);
    const l = checkLabels(labels, action);
    return this.transaction(() => {
      const rec = this.mustGet(key, action);
      if (rec.kind !== 'active') {
        throw errFailedPrecondition(`${action}: snapshot "${key}" is ${rec.kind}, not active`);
      }
      if (this.get(name)) throw errAlreadyExists(`${action}: snapshot "${name}" already exists`);
      const now = Date.now();
      this.#prep(
        `UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created = ?, updated = ?, size = ?,
           inodes = ? WHERE id = ?`,
      ).run(name, JSON.stringify(l), now, now, usage?.size ?? null, usage?.inodes ?? null, rec.id);
      return this.byId(rec.id)!;
    });
  }

  /** Records the measured usage of committed snapshot `id` (immutable, so measured once). */
  setUsage(id: number, usage: Usage): void {
    this.#prep(`UPDATE snapshots SET size = ?, inodes = ? WHERE id = ? AND kind = 'committed'`).run(
      usage.size,
      usage.inodes,
      id,
    );
  }

  /** Deletes the record of `key`; refused while it has children. */
  remove(key: string): SnapshotRecord {
    const action = `remove snapshot "${key}"`;
    return this.transaction(() => {
      const rec = this.mustGet(key, action);
      const n = this.children(rec.id);
      if (n > 0) {
        throw errFailedPrecondition(
          `cannot remove snapshot "${key}": it has ${n} ${n === 1 ? 'child' : 'children'}`,
        );
      }
      this.#prep('DELETE FROM snapshots WHERE id = ?').run(rec.id);
      return rec;
    });
  }

  /**
   * Updates labels: fieldpaths ['labels'] (or none) replace them all,
   * ['labels.<k>'] sets or (when absent from `labels`) deletes one key.
   */
  updateLabels(key: string, labels: Labels, fieldpaths?: string[]): SnapshotRecord {
    const action = `update snapshot "${key}"`;
    const given = checkLabels(labels, action);
    return this.transaction(() => {
      const rec = this.mustGet(key, action);
      let next: Labels;
      if (!fieldpaths || fieldpaths.length === 0) next = given;
      else {
        next = { ...rec.labels };
        for (const fp of fieldpaths) {
          if (fp === 'labels') next = { ...given };
          else if (fp.startsWith('labels.') && fp.length > 'labels.'.length) {
            const k = fp.slice('labels.'.length);
            if (k in given) next[k] = given[k];
            else delete next[k];
          } else throw errInvalidArgument(`${action}: cannot update field "${fp}"`);
        }
      }
      this.#prep('UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?').run(
        JSON.stringify(next),
        Date.now(),
        rec.id,
      );
      return this.byId(rec.id)!;
    });
  }

  /** Checkpoints the WAL (which syncs it) and closes. */
  /** See core/sqlite.ts `closeDatabase`. */
  close(): void {
    closeDatabase(this.#db, this.path);
  }
}
