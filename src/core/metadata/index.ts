/**
 * Composition of the containerd-like core for one state directory:
 * `<root>/metadata.db`, the shared local content store in `<root>/content`,
 * snapshot drivers in `<root>/snapshots/<driver>`, all seen through one
 * namespace. `openCore` creates the namespace on first use (as containerd
 * does). `withNamespace` gives another namespace's view over the same
 * database, stores and drivers (open one Core per root and process: the GC
 * lock is per Core family). `gc()` collects across all namespaces and all
 * drivers present on disk.
 */
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { LocalContentStore } from '../content/store.ts';
import type { ContentStore } from '../content/types.ts';
import { errInvalidArgument } from '../errors.ts';
import { createSnapshotter } from '../snapshots/index.ts';
import type { Snapshotter } from '../snapshots/types.ts';
import { NamespacedContentStore } from './content.ts';
import { MetadataDB } from './db.ts';
import { collectGarbage, type GCResult } from './gc.ts';
import { ImageStore } from './images.ts';
import { LeaseManager } from './leases.ts';
import { NamespaceStore, validateNamespace } from './namespaces.ts';
import { NamespacedSnapshotter } from './snapshots.ts';

export type SnapshotterName = 'overlayfs' | 'native';
const DRIVERS: readonly SnapshotterName[] = ['overlayfs', 'native'];

export interface CoreOptions {
  root: string;
  namespace: string;
  /** Default snapshotter for `snapshotter()`. Default 'overlayfs'. */
  snapshotter?: SnapshotterName;
}

export interface Core {
  readonly root: string;
  readonly namespace: string;
  readonly db: MetadataDB;
  readonly namespaces: NamespaceStore;
  /** The namespace's content. */
  readonly content: NamespacedContentStore;
  /** The shared, un-namespaced blob store (for GC and diagnostics; prefer `content`). */
  readonly localContent: ContentStore;
  readonly images: ImageStore;
  readonly leases: LeaseManager;
  readonly defaultSnapshotter: SnapshotterName;
  /** The namespace's view of a snapshot driver (the default one when no name is given). */
  snapshotter(name?: SnapshotterName): Promise<NamespacedSnapshotter>;
  /** The raw, un-namespaced driver (for GC, recovery and diagnostics; prefer `snapshotter`). */
  driver(name?: SnapshotterName): Promise<Snapshotter>;
  /** A view of another namespace sharing this Core's database, stores and drivers. */
  withNamespace(namespace: string): Core;
  /** Collects garbage across all namespaces; `now` overrides the clock used for lease expiry. */
  gc(options?: { now?: () => number }): Promise<GCResult>;
  /** Closes drivers and the database (for every view of this Core family). */
  close(): Promise<void>;
}

/** State shared by all namespace views of one root. */
class Shared {
  readonly root: string;
  readonly db: MetadataDB;
  readonly local: ContentStore;
  readonly drivers = new Map<SnapshotterName, Promise<Snapshotter>>();
  closed = false;

  constructor(root: string, db: MetadataDB, local: ContentStore) {
    this.root = root;
    this.db = db;
    this.local = local;
  }

  driver(name: SnapshotterName): Promise<Snapshotter> {
    if (!DRIVERS.includes(name)) throw errInvalidArgument(`open snapshotter "${name}": unknown driver`);
    const cached = this.drivers.get(name);
    if (cached) return cached;
    const p = createSnapshotter(name, path.join(this.root, 'snapshots', name));
    this.drivers.set(name, p);
    p.catch(() => this.drivers.delete(name));
    return p;
  }

  /** Drivers with state on disk or records in the database. */
  async presentDrivers(): Promise<Map<string, Snapshotter>> {
    const names = new Set<SnapshotterName>();
    for (const r of this.db.all<{ snapshotter: string }>('SELECT DISTINCT snapshotter FROM snapshots')) {
      if ((DRIVERS as readonly string[]).includes(r.snapshotter)) names.add(r.snapshotter as SnapshotterName);
    }
    try {
      for (const e of await readdir(path.join(this.root, 'snapshots'))) {
        if ((DRIVERS as readonly string[]).includes(e)) names.add(e as SnapshotterName);
      }
    } catch {
      // no snapshots directory yet
    }
    for (const n of this.drivers.keys()) names.add(n);
    const out = new Map<string, Snapshotter>();
    for (const n of names) {
      try {
        out.set(n, await this.driver(n));
      } catch {
        // A driver that cannot open here (e.g. no overlayfs) is left alone.
      }
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.drivers.values()) {
      try {
        await (await p).close();
      } catch {
        // already failed to open
      }
    }
    this.db.close();
  }
}

function makeCore(shared: Shared, namespace: string, defaultSnapshotter: SnapshotterName): Core {
  validateNamespace(namespace);
  const namespaces = new NamespaceStore(shared.db);
  namespaces.ensure(namespace);
  const core: Core = {
    root: shared.root,
    namespace,
    db: shared.db,
    namespaces,
    content: new NamespacedContentStore({ db: shared.db, namespace, backend: shared.local }),
    localContent: shared.local,
    images: new ImageStore(shared.db, namespace),
    leases: new LeaseManager(shared.db, namespace),
    defaultSnapshotter,
    async snapshotter(name?: SnapshotterName) {
      const backend = await shared.driver(name ?? defaultSnapshotter);
      return new NamespacedSnapshotter({ db: shared.db, namespace, backend });
    },
    driver(name?: SnapshotterName) {
      return shared.driver(name ?? defaultSnapshotter);
    },
    withNamespace(ns: string) {
      return makeCore(shared, ns, defaultSnapshotter);
    },
    async gc(options?: { now?: () => number }) {
      return collectGarbage({
        db: shared.db,
        content: shared.local,
        snapshotters: await shared.presentDrivers(),
        ...(options?.now ? { now: options.now } : {}),
      });
    },
    close() {
      return shared.close();
    },
  };
  return core;
}

export async function openCore(options: CoreOptions): Promise<Core> {
  validateNamespace(options.namespace);
  const root = path.resolve(options.root);
  await mkdir(root, { recursive: true });
  const db = new MetadataDB(root);
  try {
    const local = new LocalContentStore(path.join(root, 'content'));
    return makeCore(new Shared(root, db, local), options.namespace, options.snapshotter ?? 'overlayfs');
  } catch (err) {
    db.close();
    throw err;
  }
}

export { NamespacedContentStore } from './content.ts';
export { MetadataDB } from './db.ts';
export {
  collectGarbage,
  type GCResult,
  LABEL_GC_REF_CONTENT,
  LABEL_GC_REF_SNAPSHOT,
  LABEL_GC_ROOT,
} from './gc.ts';
export { type Descriptor, type Image, ImageStore } from './images.ts';
export { type Lease, LeaseManager, type LeaseResource } from './leases.ts';
export { type NamespaceInfo, NamespaceStore, validateNamespace } from './namespaces.ts';
export { NamespacedSnapshotter } from './snapshots.ts';
