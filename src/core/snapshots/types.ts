/**
 * The snapshotter contract (containerd's snapshots.Snapshotter). Snapshots
 * are filesystem trees named by key. `prepare` makes an active (writable)
 * snapshot on top of a committed parent, `view` a read-only one, `commit`
 * freezes an active snapshot under a new name. Mounts are *returned*, not
 * performed: the caller mounts them (../mount) and unmounts when done.
 * Drivers: overlayfs (overlay.ts) and native (copying, native.ts); the
 * namespaced view lives in ../metadata/snapshots.ts. All must pass
 * test/core/snapshotter-conformance.ts.
 */
import type { Labels } from '../content/types.ts';
import type { Mount } from '../mount/mount.ts';

export type Kind = 'view' | 'active' | 'committed';

export interface SnapshotInfo {
  kind: Kind;
  /** The key (active, view) or the committed name. */
  name: string;
  /** Name of the committed parent, if any. */
  parent?: string;
  labels: Labels;
  createdAt: Date;
  updatedAt: Date;
}

export interface Usage {
  /** Bytes used by this snapshot alone (not its parents). */
  size: number;
  inodes: number;
}

/** Mount lists are the mount layer's type. */
export type { Mount } from '../mount/mount.ts';

export interface SnapshotOptions {
  labels?: Labels;
}

export interface Snapshotter {
  /** Driver name, e.g. 'overlayfs' or 'native'. */
  readonly name: string;
  stat(key: string): Promise<SnapshotInfo>;
  /** Updates labels: fieldpaths ['labels'] or ['labels.<k>']; none means all labels. */
  update(info: Pick<SnapshotInfo, 'name' | 'labels'>, fieldpaths?: string[]): Promise<SnapshotInfo>;
  usage(key: string): Promise<Usage>;
  /** Mounts of an active or view snapshot. */
  mounts(key: string): Promise<Mount[]>;
  prepare(key: string, parent?: string, options?: SnapshotOptions): Promise<Mount[]>;
  view(key: string, parent?: string, options?: SnapshotOptions): Promise<Mount[]>;
  commit(name: string, key: string, options?: SnapshotOptions): Promise<void>;
  /** Refused with FailedPrecondition while the snapshot has children. */
  remove(key: string): Promise<void>;
  /** Filters as in content/types.ts: `name`, `parent`, `kind`, `labels.<k>`. */
  walk(fn: (info: SnapshotInfo) => void | Promise<void>, filters?: string[]): Promise<void>;
  close(): Promise<void>;
}
