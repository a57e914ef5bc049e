/**
 * Namespaces: every record (content, snapshots, images, leases) belongs to
 * one. Names follow containerd: `[a-z0-9]+([._-][a-z0-9]+)*`, at most 76
 * characters. A namespace can only be deleted once it holds nothing
 * (FailedPrecondition otherwise); `ensure` creates one on first use.
 */
import type { Labels } from '../content/types.ts';
import { errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound } from '../errors.ts';
import { applyLabelUpdate, decodeLabels, encodeLabels, type MetadataDB, validateLabels } from './db.ts';

export interface NamespaceInfo {
  name: string;
  labels: Labels;
  createdAt: Date;
  updatedAt: Date;
}

const NAME_RE = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;
export const MAX_NAMESPACE_LENGTH = 76;

/** Throws InvalidArgument unless `name` is a valid namespace name. */
export function validateNamespace(name: string): void {
  if (typeof name !== 'string' || name.length === 0) {
    throw errInvalidArgument('invalid namespace "": must not be empty');
  }
  if (name.length > MAX_NAMESPACE_LENGTH) {
    throw errInvalidArgument(
      `invalid namespace "${name}": longer than ${MAX_NAMESPACE_LENGTH} characters (${name.length})`,
    );
  }
  if (!NAME_RE.test(name)) {
    throw errInvalidArgument(
      `invalid namespace "${name}": want lower-case letters and digits separated by single ".", "_" or "-"`,
    );
  }
}

interface Row {
  name: string;
  labels: string;
  created_at: number;
  updated_at: number;
}

function toInfo(row: Row): NamespaceInfo {
  return {
    name: row.name,
    labels: decodeLabels(row.labels),
    createdAt: new Date(row.created_at),
    updatedAt: new Date(row.updated_at),
  };
}

export class NamespaceStore {
  readonly #db: MetadataDB;

  constructor(db: MetadataDB) {
    this.#db = db;
  }

  create(name: string, labels: Labels = {}): NamespaceInfo {
    validateNamespace(name);
    validateLabels(labels, `create namespace "${name}"`);
    return this.#db.transaction(() => {
      if (this.#db.get('SELECT 1 FROM namespaces WHERE name = ?', name)) {
        throw errAlreadyExists(`create namespace "${name}": already exists`);
      }
      const now = Date.now();
      this.#db.run(
        'INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES (?, ?, ?, ?)',
        name,
        encodeLabels(labels),
        now,
        now,
      );
      return this.get(name);
    });
  }

  /** Creates the namespace if it does not exist yet; returns it either way. */
  ensure(name: string): NamespaceInfo {
    validateNamespace(name);
    return this.#db.transaction(() => {
      const now = Date.now();
      this.#db.run(
        'INSERT OR IGNORE INTO namespaces (name, labels, created_at, updated_at) VALUES (?, ?, ?, ?)',
        name,
        '{}',
        now,
        now,
      );
      return this.get(name);
    });
  }

  get(name: string): NamespaceInfo {
    const row = this.#db.get<Row>('SELECT * FROM namespaces WHERE name = ?', name);
    if (!row) throw errNotFound(`get namespace "${name}": not found`);
    return toInfo(row);
  }

  list(): NamespaceInfo[] {
    return this.#db.all<Row>('SELECT * FROM namespaces ORDER BY name').map(toInfo);
  }

  /** Updates labels (fieldpaths as for content: ['labels'] or ['labels.k']). */
  update(name: string, labels: Labels, fieldpaths?: string[]): NamespaceInfo {
    validateLabels(labels, `update namespace "${name}"`);
    return this.#db.transaction(() => {
      const cur = this.get(name);
      const next = applyLabelUpdate(cur.labels, labels, fieldpaths, `namespace "${name}"`);
      this.#db.run(
        'UPDATE namespaces SET labels = ?, updated_at = ? WHERE name = ?',
        encodeLabels(next),
        Date.now(),
        name,
      );
      return this.get(name);
    });
  }

  /** Deletes an empty namespace; FailedPrecondition if it still holds anything. */
  delete(name: string): void {
    this.#db.transaction(() => {
      this.get(name);
      const held: string[] = [];
      for (const [table, what] of [
        ['content', 'content'],
        ['snapshots', 'snapshots'],
        ['images', 'images'],
        ['leases', 'leases'],
        ['ingests', 'ingests'],
      ] as const) {
        const n = this.#db.get<{ n: number }>(`SELECT count(*) AS n FROM ${table} WHERE ns = ?`, name)!.n;
        if (n > 0) held.push(`${n} ${what}`);
      }
      if (held.length > 0) {
        throw errFailedPrecondition(
          `delete namespace "${name}": namespace is not empty (${held.join(', ')})`,
        );
      }
      this.#db.run('DELETE FROM namespaces WHERE name = ?', name);
    });
  }
}
