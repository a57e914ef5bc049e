/**
 * The namespaced snapshotter: a view of one driver (overlayfs, native)
 * through per-namespace records in SQLite (name, backend key, parent, kind,
 * labels, timestamps). Keys are per namespace; the driver sees the unique
 * key `<namespace>/<seq>/<key>`. Parents must be committed snapshots of the
 * same namespace. stat/walk/update are answered from the records,
 * usage/mounts by the driver. `remove` refuses while children exist
 * (FailedPrecondition `snapshot "x" has N children`), drops the record and
 * then removes the driver's snapshot (left to GC if that fails).
 *
 * `share(name, source, parent)` records a committed snapshot that is the
 * same driver snapshot as committed `source` (nothing is copied or linked):
 * allowed when `parent`'s driver snapshot is `source`'s driver parent, so
 * the two records stand for the same tree. Several records may thus name
 * one driver snapshot; `remove` (and GC) remove a driver snapshot only when
 * no record names it any more.
 *
 * Records are written before the driver creates anything and the metadata
 * GC lock is held shared meanwhile, so GC never sees half-made work;
 * driver snapshots with no record (a crash between the two steps) are
 * removed by GC. `withLease(id)` attaches created keys to a lease.
 * Labels live only in the records.
 */
import { compileFilters, fieldLookup } from '../content/filters.ts';
import {
  errAlreadyExists,
  errFailedPrecondition,
  errInvalidArgument,
  errNotFound,
  KilnError,
} from '../errors.ts';
import type { Kind, Mount, SnapshotInfo, SnapshotOptions, Snapshotter, Usage } from '../snapshots/types.ts';
import { applyLabelUpdate, decodeLabels, encodeLabels, type MetadataDB, validateLabels } from './db.ts';
import { validateNamespace } from './namespaces.ts';

interface Row {
  name: string;
  backend_key: string;
  parent: string | null;
  kind: Kind;
  labels: string;
  created_at: number;
  updated_at: number;
}

function toInfo(row: Row): SnapshotInfo {
  const info: SnapshotInfo = {
    kind: row.kind,
    name: row.name,
    labels: decodeLabels(row.labels),
    createdAt: new Date(row.created_at),
    updatedAt: new Date(row.updated_at),
  };
  if (row.parent !== null) info.parent = row.parent;
  return info;
}

export interface NamespacedSnapshotterOptions {
  db: MetadataDB;
  namespace: string;
  backend: Snapshotter;
  lease?: string;
  /** Close the backend on close(). Default false: the backend is shared. */
  ownsBackend?: boolean;
}

export class NamespacedSnapshotter implements Snapshotter {
  readonly name: string;
  readonly namespace: string;
  readonly lease: string | undefined;
  readonly #db: MetadataDB;
  readonly #backend: Snapshotter;
  readonly #ownsBackend: boolean;

  constructor(options: NamespacedSnapshotterOptions) {
    this.#db = options.db;
    validateNamespace(options.namespace);
    this.namespace = options.namespace;
    this.#backend = options.backend;
    this.name = options.backend.name;
    this.lease = options.lease;
    this.#ownsBackend = options.ownsBackend ?? false;
  }

  /** A view of the same namespace whose new snapshots are held by lease `id`. */
  withLease(id: string): NamespacedSnapshotter {
    return new NamespacedSnapshotter({
      db: this.#db,
      namespace: this.namespace,
      backend: this.#backend,
      lease: id,
    });
  }

  #row(key: string): Row | undefined {
    return this.#db.get<Row>(
      'SELECT * FROM snapshots WHERE ns = ? AND snapshotter = ? AND name = ?',
      this.namespace,
      this.name,
      key,
    );
  }

  #mustRow(key: string, action: string): Row {
    const row = this.#row(key);
    if (!row) throw errNotFound(`${action} snapshot "${key}": not found in namespace "${this.namespace}"`);
    return row;
  }

  #newBackendKey(key: string): string {
    const seq = this.#db.nextSequence(`snapshots/${this.name}`);
    return `${this.namespace}/${seq}/${key}`;
  }

  #attachToLease(key: string, action: string): void {
    if (this.lease === undefined) return;
    if (!this.#db.get('SELECT 1 FROM leases WHERE ns = ? AND id = ?', this.namespace, this.lease)) {
      throw errNotFound(`${action}: lease "${this.lease}" not found in namespace "${this.namespace}"`);
    }
    this.#db.run(
      'INSERT OR IGNORE INTO lease_resources (ns, lease, type, id) VALUES (?, ?, ?, ?)',
      this.namespace,
      this.lease,
      `snapshots/${this.name}`,
      key,
    );
  }

  async stat(key: string): Promise<SnapshotInfo> {
    return toInfo(this.#mustRow(key, 'stat'));
  }

  async update(info: Pick<SnapshotInfo, 'name' | 'labels'>, fieldpaths?: string[]): Promise<SnapshotInfo> {
    validateLabels(info.labels, `update snapshot "${info.name}"`);
    return this.#db.transaction(() => {
      const row = this.#mustRow(info.name, 'update');
      const labels = applyLabelUpdate(
        decodeLabels(row.labels),
        info.labels ?? {},
        fieldpaths,
        `snapshot "${info.name}"`,
      );
      this.#db.run(
        'UPDATE snapshots SET labels = ?, updated_at = ? WHERE ns = ? AND snapshotter = ? AND name = ?',
        encodeLabels(labels),
        Math.max(Date.now(), row.updated_at),
        this.namespace,
        this.name,
        info.name,
      );
      return toInfo(this.#mustRow(info.name, 'update'));
    });
  }

  async usage(key: string): Promise<Usage> {
    const row = this.#mustRow(key, 'get usage of');
    try {
      return await this.#backend.usage(row.backend_key);
    } catch (err) {
      throw unprefix(err, row.backend_key, key);
    }
  }

  async mounts(key: string): Promise<Mount[]> {
    const row = this.#mustRow(key, 'get mounts of');
    if (row.kind === 'committed') {
      throw errFailedPrecondition(
        `get mounts of snapshot "${key}": snapshot is committed, not active or view`,
      );
    }
    try {
      return await this.#backend.mounts(row.backend_key);
    } catch (err) {
      throw unprefix(err, row.backend_key, key);
    }
  }

  prepare(key: string, parent?: string, options?: SnapshotOptions): Promise<Mount[]> {
    return this.#create('active', key, parent, options);
  }

  view(key: string, parent?: string, options?: SnapshotOptions): Promise<Mount[]> {
    return this.#create('view', key, parent, options);
  }

  async #create(
    kind: 'active' | 'view',
    key: string,
    parent?: string,
    options?: SnapshotOptions,
  ): Promise<Mount[]> {
    const action = kind === 'active' ? 'prepare' : 'view';
    if (typeof key !== 'string' || key === '')
      throw errInvalidArgument(`${action} snapshot: key must not be empty`);
    const labels = options?.labels ?? {};
    validateLabels(labels, `${action} snapshot "${key}"`);
    return this.#db.gcLock.shared(async () => {
      const backendKey = this.#newBackendKey(key);
      let parentKey: string | undefined;
      this.#db.transaction(() => {
        if (this.#row(key)) throw errAlreadyExists(`${action} snapshot "${key}": already exists`);
        if (parent !== undefined && parent !== '') {
          const p = this.#row(parent);
          if (!p) throw errNotFound(`${action} snapshot "${key}": parent "${parent}" not found`);
          if (p.kind !== 'committed') {
            throw errInvalidArgument(
              `${action} snapshot "${key}": parent "${parent}" is ${p.kind}, not committed`,
            );
          }
          parentKey = p.backend_key;
        }
        const now = Date.now();
        this.#db.ensureNamespace(this.namespace);
        this.#db.run(
          `INSERT INTO snapshots (ns, snapshotter, name, backend_key, parent, kind, labels, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          this.namespace,
          this.name,
          key,
          backendKey,
          parent !== undefined && parent !== '' ? parent : null,
          kind,
          encodeLabels(labels),
          now,
          now,
        );
        this.#attachToLease(key, `${action} snapshot "${key}"`);
      });
      try {
        return kind === 'active'
          ? await this.#backend.prepare(backendKey, parentKey)
          : await this.#backend.view(backendKey, parentKey);
      } catch (err) {
        this.#db.transaction(() => {
          this.#db.run(
            'DELETE FROM snapshots WHERE ns = ? AND snapshotter = ? AND backend_key = ?',
            this.namespace,
            this.name,
            backendKey,
          );
        });
        throw unprefix(err, backendKey, key);
      }
    });
  }

  async commit(name: string, key: string, options?: SnapshotOptions): Promise<void> {
    if (typeof name !== 'string' || name === '')
      throw errInvalidArgument(`commit snapshot "${key}": name is empty`);
    const labels = options?.labels ?? {};
    validateLabels(labels, `commit snapshot "${key}" as "${name}"`);
    await this.#db.gcLock.shared(async () => {
      const row = this.#mustRow(key, 'commit');
      if (row.kind !== 'active') {
        throw errFailedPrecondition(`commit snapshot "${key}": snapshot is ${row.kind}, not active`);
      }
      if (this.#row(name))
        throw errAlreadyExists(`commit snapshot "${key}" as "${name}": "${name}" already exists`);
      const backendName = this.#newBackendKey(name);
      try {
        await this.#backend.commit(backendName, row.backend_key);
      } catch (err) {
        throw unprefix(unprefix(err, backendName, name), row.backend_key, key);
      }
      this.#db.transaction(() => {
        // Re-checked: another task may have raced us; the driver snapshot is then left to GC.
        if (this.#row(name))
          throw errAlreadyExists(`commit snapshot "${key}" as "${name}": "${name}" already exists`);
        this.#db.run(
          'DELETE FROM snapshots WHERE ns = ? AND snapshotter = ? AND name = ?',
          this.namespace,
          this.name,
          key,
        );
        this.#insertCommitted(name, backendName, row.parent, labels, `commit snapshot "${key}" as "${name}"`);
      });
    });
  }

  /**
   * Records committed snapshot `name` as the same driver snapshot as
   * committed `source`: the same tree, made without copying. `parent` (a
   * committed snapshot, or undefined for none) must stand for `source`'s
   * parent tree by being the same driver snapshot as that parent, else
   * FailedPrecondition (callers then make the tree another way). Labels are
   * `name`'s own. Only drivers that keep a snapshot's own tree apart from its
   * parents' matter here; the record does not look at the driver.
   */
  async share(
    name: string,
    source: string,
    parent: string | undefined,
    options?: SnapshotOptions,
  ): Promise<void> {
    const action = `share snapshot "${source}" as "${name}"`;
    if (typeof name !== 'string' || name === '') throw errInvalidArgument(`${action}: name is empty`);
    const labels = options?.labels ?? {};
    validateLabels(labels, action);
    await this.#db.gcLock.shared(async () => {
      this.#db.transaction(() => {
        const src = this.#mustRow(source, 'share');
        if (src.kind !== 'committed')
          throw errFailedPrecondition(`${action}: "${source}" is ${src.kind}, not committed`);
        if (this.#row(name)) throw errAlreadyExists(`${action}: "${name}" already exists`);
        const srcParent = src.parent === null ? undefined : this.#mustRow(src.parent, 'share').backend_key;
        let want: string | undefined;
        if (parent !== undefined && parent !== '') {
          const p = this.#row(parent);
          if (!p) throw errNotFound(`${action}: parent "${parent}" not found`);
          if (p.kind !== 'committed')
            throw errInvalidArgument(`${action}: parent "${parent}" is ${p.kind}, not committed`);
          want = p.backend_key;
        }
        if (want !== srcParent) {
          throw errFailedPrecondition(
            `${action}: parent "${parent ?? ''}" is not the same snapshot as "${source}"'s parent "${src.parent ?? ''}"`,
          );
        }
        this.#insertCommitted(
          name,
          src.backend_key,
          parent !== undefined && parent !== '' ? parent : null,
          labels,
          action,
        );
      });
    });
  }

  /** Inserts the record of committed snapshot `name` and attaches it to the lease (inside a transaction). */
  #insertCommitted(
    name: string,
    backendKey: string,
    parent: string | null,
    labels: Record<string, string>,
    action: string,
  ): void {
    const now = Date.now();
    this.#db.ensureNamespace(this.namespace);
    this.#db.run(
      `INSERT INTO snapshots (ns, snapshotter, name, backend_key, parent, kind, labels, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, 'committed', ?, ?, ?)`,
      this.namespace,
      this.name,
      name,
      backendKey,
      parent,
      encodeLabels(labels),
      now,
      now,
    );
    this.#attachToLease(name, action);
  }

  /** Whether a record (of any namespace) still names driver snapshot `backendKey`. */
  #backendInUse(backendKey: string): boolean {
    return (
      this.#db.get(
        'SELECT 1 FROM snapshots WHERE snapshotter = ? AND backend_key = ?',
        this.name,
        backendKey,
      ) !== undefined
    );
  }

  async remove(key: string): Promise<void> {
    const row = this.#db.transaction(() => {
      const r = this.#mustRow(key, 'remove');
      const n = this.#db.get<{ n: number }>(
        'SELECT count(*) AS n FROM snapshots WHERE ns = ? AND snapshotter = ? AND parent = ?',
        this.namespace,
        this.name,
        key,
      )!.n;
      if (n > 0) {
        // Same wording as the drivers (pinned by the conformance suite).
        throw errFailedPrecondition(
          `cannot remove snapshot "${key}": it has ${n} ${n === 1 ? 'child' : 'children'}`,
        );
      }
      this.#db.run(
        'DELETE FROM snapshots WHERE ns = ? AND snapshotter = ? AND name = ?',
        this.namespace,
        this.name,
        key,
      );
      return r;
    });
    // Another record (share) still names the driver snapshot: it stays.
    if (this.#backendInUse(row.backend_key)) return;
    try {
      await this.#backend.remove(row.backend_key);
    } catch {
      // The record is gone, which is what callers see; a driver snapshot
      // left behind (busy, or a crash) is removed by the next GC.
    }
  }

  async walk(fn: (info: SnapshotInfo) => void | Promise<void>, filters?: string[]): Promise<void> {
    const match = compileFilters(filters);
    const rows = this.#db.all<Row>(
      'SELECT * FROM snapshots WHERE ns = ? AND snapshotter = ? ORDER BY name',
      this.namespace,
      this.name,
    );
    for (const row of rows) {
      const info = toInfo(row);
      if (!match(fieldLookup({ name: info.name, parent: info.parent, kind: info.kind }, info.labels)))
        continue;
      await fn(info);
    }
  }

  async close(): Promise<void> {
    if (this.#ownsBackend) await this.#backend.close();
  }
}

/** Rewrites a driver error so that it names the caller's key, not the driver's. */
function unprefix(err: unknown, backendKey: string, key: string): unknown {
  if (!(err instanceof KilnError) || !err.message.includes(`"${backendKey}"`)) return err;
  return new KilnError(err.code, err.message.split(`"${backendKey}"`).join(`"${key}"`), { cause: err });
}
