/**
 * The cache index: cache key → the results of one vertex (one result id per
 * output, in output order), with created and last-used times for GC.
 *
 * `load(key)` returns the result ids only when every one of them still exists
 * (checked with the `exists` callback, e.g. "is this committed snapshot still
 * there"); a record whose results are gone is deleted and reported as a miss.
 * A successful load updates the record's last-used time. `save(key, ids)`
 * replaces the record (keeping its created time).
 *
 * Two implementations:
 * - `SqliteCacheManager`: its own database file `<root>/cache.db` (node:sqlite,
 *   WAL, `synchronous=NORMAL`: a commit survives a process crash, and a power
 *   loss can lose only the latest records, i.e. cause cache misses, never wrong
 *   hits, because a record is written only after its results are committed).
 *   It is a separate file from metadata.db so that the cache index can be
 *   dropped or rebuilt on its own; the lead may fold it in later. Schema
 *   version in `PRAGMA user_version`. One connection per instance; statements
 *   are synchronous, so concurrent async callers never interleave inside one.
 * - `MemoryCacheManager`: a Map, for tests and benchmarks.
 *
 * Limits: the index does not hold results alive by itself: whoever garbage
 * collects results must either treat the ids of `list()` as roots or delete
 * records with `deleteResult(id)` after removing a result.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { closeDatabase } from '../core/sqlite.ts';
import { errInvalidArgument, wrap } from '../core/errors.ts';

export interface CacheRecord {
  readonly key: string;
  /** One result id per output, in output order. */
  readonly results: readonly string[];
  /** Epoch milliseconds. */
  readonly createdAt: number;
  readonly lastUsedAt: number;
}

export interface CacheManager {
  /** The result ids recorded under `key`, or undefined (miss, or a result is gone). */
  load(key: string): Promise<string[] | undefined>;
  /** Records `results` (one id per output) under `key`, replacing any record. */
  save(key: string, results: readonly string[]): Promise<void>;
  /** Removes the record of `key`; no error when absent. */
  delete(key: string): Promise<void>;
  /** Removes every record that refers to `resultId`; returns how many. */
  deleteResult(resultId: string): Promise<number>;
  /** Every record, oldest last-use first. */
  list(): Promise<CacheRecord[]>;
  /**
   * Build memo entries (../control/memo.ts): the value stored under `key`,
   * marked as used now. Optional: without these methods there is no memo.
   */
  getMemo?(key: string): Promise<string | undefined>;
  /** Stores a memo entry for the result recorded under `rootKey`, replacing any under `key`. */
  putMemo?(key: string, rootKey: string, value: string): Promise<void>;
  /** Removes the memo entry under `key`; no error when absent. */
  deleteMemo?(key: string): Promise<void>;
  /** Removes the memo entries whose `rootKey` has no record any more; returns how many. */
  pruneMemos?(): Promise<number>;
  close(): void;
}

/** Memo entries kept at most (least recently used go first). */
export const MEMO_LIMIT = 500;

interface MemoEntry {
  rootKey: string;
  value: string;
  usedAt: number;
}

/** Tells whether a result id still names an existing result. */
export type ExistsFunc = (resultId: string) => boolean | Promise<boolean>;

function checkRecord(key: string, results: readonly string[]): void {
  if (key === '') throw errInvalidArgument('save cache record: empty key ""');
  if (results.length === 0) throw errInvalidArgument(`save cache record "${key}": no results`);
  for (const r of results) {
    if (typeof r !== 'string' || r === '')
      throw errInvalidArgument(`save cache record "${key}": empty result id`);
  }
}

async function allExist(ids: readonly string[], exists: ExistsFunc): Promise<boolean> {
  for (const id of ids) if (!(await exists(id))) return false;
  return true;
}

/** In-memory cache index. */
export class MemoryCacheManager implements CacheManager {
  readonly #records = new Map<string, CacheRecord>();
  readonly #memos = new Map<string, MemoEntry>();
  readonly #exists: ExistsFunc;

  constructor(opts: { exists?: ExistsFunc } = {}) {
    this.#exists = opts.exists ?? (() => true);
  }

  async load(key: string): Promise<string[] | undefined> {
    const rec = this.#records.get(key);
    if (!rec) return undefined;
    if (!(await allExist(rec.results, this.#exists))) {
      if (this.#records.get(key) === rec) this.#records.delete(key);
      return undefined;
    }
    this.#records.set(key, { ...rec, lastUsedAt: Date.now() });
    return [...rec.results];
  }

  async save(key: string, results: readonly string[]): Promise<void> {
    checkRecord(key, results);
    const t = Date.now();
    const createdAt = this.#records.get(key)?.createdAt ?? t;
    this.#records.set(key, { key, results: [...results], createdAt, lastUsedAt: t });
  }

  async delete(key: string): Promise<void> {
    this.#records.delete(key);
  }

  async deleteResult(resultId: string): Promise<number> {
    let n = 0;
    for (const [k, rec] of this.#records) {
      if (rec.results.includes(resultId)) {
        this.#records.delete(k);
        n++;
      }
    }
    return n;
  }

  async list(): Promise<CacheRecord[]> {
    return [...this.#records.values()].sort((a, b) => a.lastUsedAt - b.lastUsedAt);
  }

  async getMemo(key: string): Promise<string | undefined> {
    const m = this.#memos.get(key);
    if (m) m.usedAt = Date.now();
    return m?.value;
  }

  async putMemo(key: string, rootKey: string, value: string): Promise<void> {
    this.#memos.set(key, { rootKey, value, usedAt: Date.now() });
    if (this.#memos.size > MEMO_LIMIT) {
      let oldest: [string, MemoEntry] | undefined;
      for (const e of this.#memos) if (!oldest || e[1].usedAt < oldest[1].usedAt) oldest = e;
      this.#memos.delete(oldest![0]);
    }
  }

  async deleteMemo(key: string): Promise<void> {
    this.#memos.delete(key);
  }

  async pruneMemos(): Promise<number> {
    let n = 0;
    for (const [k, m] of this.#memos) {
      if (!this.#records.has(m.rootKey)) {
        this.#memos.delete(k);
        n++;
      }
    }
    return n;
  }

  close(): void {}
}

const SCHEMA_VERSION = 1;
/**
 * The build memo's table, made when first used (a version 1 index without it
 * stays readable by the versions before it, which do not know it).
 */
const MEMO_SCHEMA = `
  CREATE TABLE IF NOT EXISTS build_memo (
    key TEXT PRIMARY KEY,
    root_key TEXT NOT NULL,
    value TEXT NOT NULL,
    used_at INTEGER NOT NULL
  ) WITHOUT ROWID;
`;
const SCHEMA = `
  CREATE TABLE cache_records (
    key TEXT NOT NULL,
    output INTEGER NOT NULL,
    result_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    PRIMARY KEY (key, output)
  ) WITHOUT ROWID;
  CREATE INDEX cache_records_result ON cache_records(result_id);
`;

/** SQLite cache index in `<root>/cache.db`. */
export class SqliteCacheManager implements CacheManager {
  readonly path: string;
  readonly #db: DatabaseSync;
  readonly #exists: ExistsFunc;
  readonly #select: StatementSync;
  readonly #touch: StatementSync;
  readonly #insert: StatementSync;
  readonly #deleteKey: StatementSync;

  constructor(opts: { root: string; exists?: ExistsFunc }) {
    this.path = path.join(opts.root, 'cache.db');
    this.#exists = opts.exists ?? (() => true);
    try {
      mkdirSync(opts.root, { recursive: true });
      this.#db = new DatabaseSync(this.path, { timeout: 5000 });
      this.#db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
      const { user_version: version } = this.#db.prepare('PRAGMA user_version').get() as {
        user_version: number;
      };
      if (version === 0) {
        this.#tx(() => {
          this.#db.exec(SCHEMA);
          this.#db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
        });
      } else if (version !== SCHEMA_VERSION) {
        throw errInvalidArgument(
          `cache index "${this.path}" has schema version ${version}, want ${SCHEMA_VERSION}`,
        );
      }
    } catch (err) {
      throw wrap(err, `open cache index "${this.path}"`);
    }
    this.#select = this.#db.prepare(
      'SELECT output, result_id, created_at FROM cache_records WHERE key = ? ORDER BY output',
    );
    this.#touch = this.#db.prepare('UPDATE cache_records SET last_used_at = ? WHERE key = ?');
    this.#insert = this.#db.prepare(
      'INSERT INTO cache_records (key, output, result_id, created_at, last_used_at) VALUES (?, ?, ?, ?, ?)',
    );
    this.#deleteKey = this.#db.prepare('DELETE FROM cache_records WHERE key = ?');
  }

  #memoStmts:
    | {
        get: StatementSync;
        touch: StatementSync;
        put: StatementSync;
        trim: StatementSync;
        del: StatementSync;
      }
    | undefined;

  /** Prepared on first use: builds that never look at the memo do not compile them. */
  #memo() {
    if (!this.#memoStmts) this.#db.exec(MEMO_SCHEMA);
    this.#memoStmts ??= {
      get: this.#db.prepare('SELECT value FROM build_memo WHERE key = ?'),
      touch: this.#db.prepare('UPDATE build_memo SET used_at = ? WHERE key = ?'),
      put: this.#db.prepare(
        'INSERT OR REPLACE INTO build_memo (key, root_key, value, used_at) VALUES (?, ?, ?, ?)',
      ),
      trim: this.#db.prepare(
        'DELETE FROM build_memo WHERE key NOT IN (SELECT key FROM build_memo ORDER BY used_at DESC LIMIT ?)',
      ),
      del: this.#db.prepare('DELETE FROM build_memo WHERE key = ?'),
    };
    return this.#memoStmts;
  }

  #tx<T>(fn: () => T): T {
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      const out = fn();
      this.#db.exec('COMMIT');
      return out;
    } catch (err) {
      this.#db.exec('ROLLBACK');
      throw err;
    }
  }

  #rows(key: string): { output: number; result_id: string; created_at: number }[] {
    return this.#select.all(key) as { output: number; result_id: string; created_at: number }[];
  }

  async load(key: string): Promise<string[] | undefined> {
    const rows = this.#rows(key);
    if (rows.length === 0) return undefined;
    const ids = rows.map((r) => r.result_id);
    // A record is whole (outputs 0..n-1) or it is not a usable record.
    const whole = rows.every((r, i) => r.output === i);
    if (!whole || !(await allExist(ids, this.#exists))) {
      // Delete only if nobody replaced the record while we were checking.
      this.#tx(() => {
        const now = this.#rows(key);
        if (now.length === rows.length && now.every((r, i) => r.result_id === ids[i]))
          this.#deleteKey.run(key);
      });
      return undefined;
    }
    this.#touch.run(Date.now(), key);
    return ids;
  }

  async save(key: string, results: readonly string[]): Promise<void> {
    checkRecord(key, results);
    const t = Date.now();
    this.#tx(() => {
      const createdAt = this.#rows(key)[0]?.created_at ?? t;
      this.#deleteKey.run(key);
      results.forEach((id, i) => {
        this.#insert.run(key, i, id, createdAt, t);
      });
    });
  }

  async delete(key: string): Promise<void> {
    this.#deleteKey.run(key);
  }

  async deleteResult(resultId: string): Promise<number> {
    return this.#tx(() => {
      const keys = this.#db
        .prepare('SELECT DISTINCT key FROM cache_records WHERE result_id = ?')
        .all(resultId) as {
        key: string;
      }[];
      for (const { key } of keys) this.#deleteKey.run(key);
      return keys.length;
    });
  }

  async list(): Promise<CacheRecord[]> {
    const rows = this.#db
      .prepare(
        'SELECT key, output, result_id, created_at, last_used_at FROM cache_records ORDER BY key, output',
      )
      .all() as {
      key: string;
      output: number;
      result_id: string;
      created_at: number;
      last_used_at: number;
    }[];
    const byKey = new Map<
      string,
      { key: string; results: string[]; createdAt: number; lastUsedAt: number }
    >();
    for (const r of rows) {
      let rec = byKey.get(r.key);
      if (!rec) {
        rec = { key: r.key, results: [], createdAt: r.created_at, lastUsedAt: r.last_used_at };
        byKey.set(r.key, rec);
      }
      rec.results.push(r.result_id);
    }
    return [...byKey.values()].sort((a, b) => a.lastUsedAt - b.lastUsedAt);
  }

  async getMemo(key: string): Promise<string | undefined> {
    const m = this.#memo();
    const row = m.get.get(key) as { value: string } | undefined;
    if (row) m.touch.run(Date.now(), key);
    return row?.value;
  }

  async putMemo(key: string, rootKey: string, value: string): Promise<void> {
    const m = this.#memo();
    this.#tx(() => {
      m.put.run(key, rootKey, value, Date.now());
      m.trim.run(MEMO_LIMIT);
    });
  }

  async deleteMemo(key: string): Promise<void> {
    this.#memo().del.run(key);
  }

  async pruneMemos(): Promise<number> {
    this.#memo();
    const r = this.#db
      .prepare('DELETE FROM build_memo WHERE root_key NOT IN (SELECT key FROM cache_records)')
      .run();
    return Number(r.changes);
  }

  /** See core/sqlite.ts `closeDatabase`. */
  close(): void {
    closeDatabase(this.#db, this.path);
  }
}
