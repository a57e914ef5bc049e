/**
 * Container records (containerd's containers.Store, plus the last known task
 * state): one row per namespace and id in the metadata database's
 * `containers` table (migration 2 in ../metadata/db.ts). A record is only
 * metadata: the image it came from, the snapshot that is its root
 * filesystem, the process and mount settings (`ContainerSpec`, from which
 * the OCI runtime spec is generated when a task starts), labels, and
 * whether it is removed when its task ends (`--rm`). Task fields (status,
 * exit code, times) are written by the process that runs the task.
 *
 * Ids: 1-64 characters `[A-Za-z0-9][A-Za-z0-9_-]*` (no dots, so the runtime
 * id `<namespace>.<id>` is unambiguous).
 */
import type { Labels } from '../content/types.ts';
import { errAlreadyExists, errInvalidArgument, errNotFound } from '../errors.ts';
import { decodeLabels, encodeLabels, type MetadataDB, validateLabels } from '../metadata/db.ts';
import type { ExtraMount } from '../runtime/spec.ts';

export type Network = 'host' | 'none';

/** What a container runs and with which settings (not the OCI spec itself; see the module comment). */
export interface ContainerSpec {
  args: string[];
  /** KEY=VALUE, image env merged with the caller's. */
  env: string[];
  cwd?: string;
  user?: string;
  tty: boolean;
  network: Network;
  readonlyRootfs: boolean;
  mounts: ExtraMount[];
  hostname?: string;
}

export type TaskStatus = 'created' | 'running' | 'stopped';

export interface Container {
  id: string;
  namespace: string;
  image: string;
  snapshotter: string;
  snapshotKey: string;
  runtime: string;
  spec: ContainerSpec;
  labels: Labels;
  autoRemove: boolean;
  status: TaskStatus;
  exitCode: number | null;
  createdAt: Date;
  updatedAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
}

export interface ContainerInput {
  id: string;
  image: string;
  snapshotter: string;
  snapshotKey: string;
  runtime: string;
  spec: ContainerSpec;
  labels?: Labels;
  autoRemove?: boolean;
}

interface Row {
  ns: string;
  id: string;
  image: string;
  snapshotter: string;
  snapshot_key: string;
  runtime: string;
  spec: string;
  labels: string;
  auto_remove: number;
  status: string;
  exit_code: number | null;
  started_at: number | null;
  finished_at: number | null;
  created_at: number;
  updated_at: number;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export function validateContainerId(id: string): void {
  if (!ID_RE.test(id)) {
    throw errInvalidArgument(
      `container id "${id}" is invalid: want 1-64 of [A-Za-z0-9_-], not starting with _ or -`,
    );
  }
}

function toContainer(r: Row): Container {
  return {
    id: r.id,
    namespace: r.ns,
    image: r.image,
    snapshotter: r.snapshotter,
    snapshotKey: r.snapshot_key,
    runtime: r.runtime,
    spec: JSON.parse(r.spec) as ContainerSpec,
    labels: decodeLabels(r.labels),
    autoRemove: r.auto_remove !== 0,
    status: r.status as TaskStatus,
    exitCode: r.exit_code,
    createdAt: new Date(r.created_at),
    updatedAt: new Date(r.updated_at),
    startedAt: r.started_at === null ? null : new Date(r.started_at),
    finishedAt: r.finished_at === null ? null : new Date(r.finished_at),
  };
}

export class ContainerStore {
  readonly #db: MetadataDB;
  readonly namespace: string;

  constructor(db: MetadataDB, namespace: string) {
    this.#db = db;
    this.namespace = namespace;
  }

  get(id: string): Container {
    const row = this.#db.get<Row>('SELECT * FROM containers WHERE ns = ? AND id = ?', this.namespace, id);
    if (!row) throw errNotFound(`container "${id}" not found in namespace "${this.namespace}"`);
    return toContainer(row);
  }

  has(id: string): boolean {
    return this.#db.get('SELECT 1 FROM containers WHERE ns = ? AND id = ?', this.namespace, id) !== undefined;
  }

  list(): Container[] {
    return this.#db
      .all<Row>('SELECT * FROM containers WHERE ns = ? ORDER BY created_at, id', this.namespace)
      .map(toContainer);
  }

  create(input: ContainerInput): Container {
    validateContainerId(input.id);
    validateLabels(input.labels, `create container "${input.id}"`);
    const now = Date.now();
    return this.#db.transaction(() => {
      if (this.has(input.id)) {
        throw errAlreadyExists(
          `create container "${input.id}": already exists in namespace "${this.namespace}"`,
        );
      }
      this.#db.ensureNamespace(this.namespace);
      this.#db.run(
        `INSERT INTO containers (ns, id, image, snapshotter, snapshot_key, runtime, spec, labels, auto_remove,
           status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'created', ?, ?)`,
        this.namespace,
        input.id,
        input.image,
        input.snapshotter,
        input.snapshotKey,
        input.runtime,
        JSON.stringify(input.spec),
        encodeLabels(input.labels),
        input.autoRemove ? 1 : 0,
        now,
        now,
      );
      return this.get(input.id);
    });
  }

  /** Records a task state change; NotFound when the record is gone (e.g. removed meanwhile). */
  setStatus(id: string, status: TaskStatus, exitCode: number | null = null): Container {
    const now = Date.now();
    return this.#db.transaction(() => {
      const r =
        status === 'running'
          ? this.#db.run(
              `UPDATE containers SET status = 'running', exit_code = NULL, started_at = ?, finished_at = NULL,
                 updated_at = ? WHERE ns = ? AND id = ?`,
              now,
              now,
              this.namespace,
              id,
            )
          : this.#db.run(
              'UPDATE containers SET status = ?, exit_code = ?, finished_at = ?, updated_at = ? WHERE ns = ? AND id = ?',
              status,
              exitCode,
              now,
              now,
              this.namespace,
              id,
            );
      if (Number(r.changes) === 0) {
        throw errNotFound(`update container "${id}": not found in namespace "${this.namespace}"`);
      }
      return this.get(id);
    });
  }

  /** Deletes the record; false when it did not exist. */
  delete(id: string): boolean {
    return this.#db.transaction(
      () =>
        Number(this.#db.run('DELETE FROM containers WHERE ns = ? AND id = ?', this.namespace, id).changes) >
        0,
    );
  }

  /** Namespaces that have container records (for recovery). */
  static namespaces(db: MetadataDB): string[] {
    return db.all<{ ns: string }>('SELECT DISTINCT ns FROM containers').map((r) => r.ns);
  }
}
