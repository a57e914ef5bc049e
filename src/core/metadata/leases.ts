/**
 * Leases (containerd's leases.Manager): a lease protects the resources
 * attached to it from garbage collection while it exists and has not
 * expired. Resources are content digests (`content`), ingest refs
 * (`ingests`) and snapshot keys (`snapshots/<snapshotter>`), all in the
 * lease's namespace. An expired lease protects nothing; GC deletes it.
 * Leases are per namespace; ids are caller-chosen or generated.
 */
import { randomBytes } from 'node:crypto';
import type { Filters, Labels } from '../content/types.ts';
import { compileFilters, fieldLookup } from '../content/filters.ts';
import { errAlreadyExists, errInvalidArgument, errNotFound } from '../errors.ts';
import { decodeLabels, encodeLabels, type MetadataDB, validateLabels } from './db.ts';
import { validateNamespace } from './namespaces.ts';

export interface Lease {
  id: string;
  labels: Labels;
  createdAt: Date;
  /** After this instant the lease protects nothing. */
  expiresAt?: Date;
}

export type LeaseResourceType = 'content' | 'ingests' | `snapshots/${string}`;

export interface LeaseResource {
  type: LeaseResourceType;
  /** Digest, ingest ref or snapshot key. */
  id: string;
}

export interface CreateLeaseOptions {
  id?: string;
  labels?: Labels;
  /** Absolute expiry. */
  expiresAt?: Date;
  /** Expiry relative to now, in milliseconds. */
  ttlMs?: number;
}

interface Row {
  id: string;
  labels: string;
  created_at: number;
  expires_at: number | null;
}

function toLease(row: Row): Lease {
  const lease: Lease = { id: row.id, labels: decodeLabels(row.labels), createdAt: new Date(row.created_at) };
  if (row.expires_at !== null) lease.expiresAt = new Date(row.expires_at);
  return lease;
}

function validateResource(r: LeaseResource, what: string): void {
  if (!r || typeof r.id !== 'string' || r.id === '')
    throw errInvalidArgument(`${what}: resource id is empty`);
  if (r.type !== 'content' && r.type !== 'ingests' && !/^snapshots\/[a-z0-9_-]+$/.test(r.type)) {
    throw errInvalidArgument(`${what}: unknown resource type "${r.type}"`);
  }
}

export class LeaseManager {
  readonly #db: MetadataDB;
  readonly namespace: string;

  constructor(db: MetadataDB, namespace: string) {
    this.#db = db;
    validateNamespace(namespace);
    this.namespace = namespace;
  }

  create(options: CreateLeaseOptions = {}): Lease {
    const id = options.id ?? `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
    if (id === '' || id.length > 256)
      throw errInvalidArgument(`create lease "${id}": id must be 1-256 characters`);
    validateLabels(options.labels, `create lease "${id}"`);
    const now = Date.now();
    let expires: number | null = null;
    if (options.expiresAt) expires = options.expiresAt.getTime();
    else if (options.ttlMs !== undefined) expires = now + options.ttlMs;
    if (expires !== null && !Number.isFinite(expires)) {
      throw errInvalidArgument(`create lease "${id}": invalid expiry`);
    }
    return this.#db.transaction(() => {
      if (this.#db.get('SELECT 1 FROM leases WHERE ns = ? AND id = ?', this.namespace, id)) {
        throw errAlreadyExists(`create lease "${id}": already exists`);
      }
      this.#db.ensureNamespace(this.namespace);
      this.#db.run(
        'INSERT INTO leases (ns, id, labels, created_at, expires_at) VALUES (?, ?, ?, ?, ?)',
        this.namespace,
        id,
        encodeLabels(options.labels),
        now,
        expires,
      );
      return this.get(id);
    });
  }

  get(id: string): Lease {
    const row = this.#db.get<Row>('SELECT * FROM leases WHERE ns = ? AND id = ?', this.namespace, id);
    if (!row) throw errNotFound(`get lease "${id}": not found in namespace "${this.namespace}"`);
    return toLease(row);
  }

  /** Leases of the namespace; filters on `id` and `labels.<k>`. */
  list(filters?: Filters): Lease[] {
    const match = compileFilters(filters);
    return this.#db
      .all<Row>('SELECT * FROM leases WHERE ns = ? ORDER BY created_at, id', this.namespace)
      .map(toLease)
      .filter((l) => match(fieldLookup({ id: l.id }, l.labels)));
  }

  /** Deletes the lease; its resources lose its protection (GC collects them if nothing else holds them). */
  delete(id: string): void {
    this.#db.transaction(() => {
      const r = this.#db.run('DELETE FROM leases WHERE ns = ? AND id = ?', this.namespace, id);
      if (Number(r.changes) === 0) {
        throw errNotFound(`delete lease "${id}": not found in namespace "${this.namespace}"`);
      }
    });
  }

  addResource(id: string, resource: LeaseResource): void {
    validateResource(resource, `add resource to lease "${id}"`);
    this.#db.transaction(() => {
      this.get(id);
      this.#db.run(
        'INSERT OR IGNORE INTO lease_resources (ns, lease, type, id) VALUES (?, ?, ?, ?)',
        this.namespace,
        id,
        resource.type,
        resource.id,
      );
    });
  }

  removeResource(id: string, resource: LeaseResource): void {
    validateResource(resource, `remove resource from lease "${id}"`);
    this.#db.transaction(() => {
      this.get(id);
      this.#db.run(
        'DELETE FROM lease_resources WHERE ns = ? AND lease = ? AND type = ? AND id = ?',
        this.namespace,
        id,
        resource.type,
        resource.id,
      );
    });
  }

  listResources(id: string): LeaseResource[] {
    this.get(id);
    return this.#db
      .all<LeaseResource>(
        'SELECT type, id FROM lease_resources WHERE ns = ? AND lease = ? ORDER BY type, id',
        this.namespace,
        id,
      )
      .map((r) => ({ type: r.type, id: r.id }));
  }
}
