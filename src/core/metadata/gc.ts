/**
 * Garbage collection, mark and sweep over the metadata records in the
 * containerd model, across all namespaces (references never cross one).
 *
 * Roots: image targets; resources of leases that have not expired; content
 * and snapshots labelled `containerd.io/gc.root`.
 * Edges: labels `containerd.io/gc.ref.content[.<suffix>]` = digest and
 * `containerd.io/gc.ref.snapshot.<snapshotter>[.<suffix>]` = key on content
 * and snapshots; snapshot → parent; and, for blobs reached as OCI/Docker
 * indexes or manifests (by the media type of the descriptor that reached
 * them, starting at image targets), the descriptors they list.
 *
 * Sweep, in one BEGIN IMMEDIATE transaction: unmarked content and snapshot
 * records, expired leases. Then, outside the transaction but still under
 * the exclusive GC lock (writers that create backend objects hold it
 * shared): blobs of the local store that no namespace records (at once when
 * their last record was swept or deleted, after a minute for orphans), driver
 * snapshots that no record names (children before parents), childless
 * records older than a minute whose driver snapshot is missing (a crash
 * mid-way), and ingests
 * started under a lease that no longer holds them. Unleased ingests are
 * never collected (abort them). Limit: backend sweeps assume this process
 * owns the state directory.
 */
import type { ContentStore } from '../content/types.ts';
import type { Digest } from '../digest.ts';
import { isKilnError, KilnError } from '../errors.ts';
import type { Snapshotter } from '../snapshots/types.ts';
import { decodeLabels, type MetadataDB } from './db.ts';

export const LABEL_GC_ROOT = 'containerd.io/gc.root';
export const LABEL_GC_REF_CONTENT = 'containerd.io/gc.ref.content';
export const LABEL_GC_REF_SNAPSHOT = 'containerd.io/gc.ref.snapshot';

const INDEX_TYPES = new Set([
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
]);
const MANIFEST_TYPES = new Set([
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
]);
/**
 * A record whose driver snapshot is missing is only treated as broken once
 * it is this old: another process may be between recording and creating it.
 */
const BROKEN_GRACE_MS = 60_000;
/** Likewise for a blob no record names, unless its record was deleted or swept. */
const ORPHAN_GRACE_MS = 60_000;
/** Larger "manifests" are not parsed (labels still apply). */
const MAX_MANIFEST_SIZE = 4 << 20;

export interface GCOptions {
  db: MetadataDB;
  /** The shared local content store (not a namespaced view). */
  content: ContentStore;
  /** Snapshot drivers by name (not namespaced views). */
  snapshotters: Map<string, Snapshotter>;
  /** Clock, for lease expiry. */
  now?: () => number;
}

export interface GCResult {
  /** Content records removed (one per namespace and digest). */
  removedContent: number;
  /** Blobs deleted from the local store. */
  removedBlobs: number;
  /** Snapshot records removed. */
  removedSnapshots: number;
  /** Driver snapshots removed (those of removed records and orphans). */
  removedBackendSnapshots: number;
  /** Leased ingests aborted. */
  removedIngests: number;
  /** Expired leases deleted. */
  removedLeases: number;
  removed: {
    content: { namespace: string; digest: Digest }[];
    snapshots: { namespace: string; snapshotter: string; key: string }[];
    blobs: Digest[];
    ingests: { namespace: string; ref: string }[];
  };
  durationMs: number;
}

interface ChildDescriptor {
  mediaType: string;
  digest: string;
}

interface ContentRow {
  ns: string;
  digest: string;
  labels: string;
}
interface SnapshotRow {
  ns: string;
  snapshotter: string;
  name: string;
  parent: string | null;
  labels: string;
  backend_key: string;
}

const cKey = (ns: string, digest: string) => `c\0${ns}\0${digest}`;
const sKey = (ns: string, snapshotter: string, name: string) => `s\0${ns}\0${snapshotter}\0${name}`;

/** Node keys referenced by an object's labels, in namespace `ns`. */
function labelRefs(ns: string, labels: Record<string, string>): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(labels)) {
    if (k === LABEL_GC_REF_CONTENT || k.startsWith(`${LABEL_GC_REF_CONTENT}.`)) {
      out.push(cKey(ns, v));
    } else if (k.startsWith(`${LABEL_GC_REF_SNAPSHOT}.`)) {
      const rest = k.slice(LABEL_GC_REF_SNAPSHOT.length + 1);
      const snapshotter = rest.split('.')[0]!;
      if (snapshotter !== '') out.push(sKey(ns, snapshotter, v));
    }
  }
  return out;
}

class Retry extends Error {}

async function readSmallBlob(store: ContentStore, digest: Digest): Promise<Uint8Array | undefined> {
  const info = await store.info(digest);
  if (info.size > MAX_MANIFEST_SIZE) return undefined;
  const chunks: Uint8Array[] = [];
  for await (const chunk of store.read(digest)) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Descriptors listed by an index or manifest blob; [] when it is not one or does not parse. */
function manifestChildren(mediaType: string, bytes: Uint8Array): ChildDescriptor[] {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return [];
  }
  if (typeof doc !== 'object' || doc === null) return [];
  const d = doc as { manifests?: unknown; config?: unknown; layers?: unknown; subject?: unknown };
  const out: ChildDescriptor[] = [];
  const take = (x: unknown) => {
    if (typeof x !== 'object' || x === null) return;
    const desc = x as { mediaType?: unknown; digest?: unknown };
    if (typeof desc.digest === 'string') {
      out.push({ digest: desc.digest, mediaType: typeof desc.mediaType === 'string' ? desc.mediaType : '' });
    }
  };
  if (INDEX_TYPES.has(mediaType) && Array.isArray(d.manifests)) d.manifests.forEach(take);
  if (MANIFEST_TYPES.has(mediaType)) {
    take(d.config);
    if (Array.isArray(d.layers)) d.layers.forEach(take);
  }
  return out;
}

/**
 * Reads, outside the database transaction, every index/manifest reachable
 * from image targets, and returns their children by digest.
 */
async function loadManifests(
  db: MetadataDB,
  store: ContentStore,
  cache: Map<string, ChildDescriptor[]>,
): Promise<void> {
  const images = db.all<{ ns: string; media_type: string; digest: string }>(
    'SELECT ns, media_type, digest FROM images',
  );
  const queue: { ns: string; mediaType: string; digest: string }[] = images.map((i) => ({
    ns: i.ns,
    mediaType: i.media_type,
    digest: i.digest,
  }));
  const seen = new Set<string>();
  while (queue.length > 0) {
    const { ns, mediaType, digest } = queue.pop()!;
    if (!INDEX_TYPES.has(mediaType) && !MANIFEST_TYPES.has(mediaType)) continue;
    const key = `${mediaType}\0${digest}`;
    if (seen.has(`${ns}\0${key}`)) continue;
    seen.add(`${ns}\0${key}`);
    if (!cache.has(key)) {
      if (!db.get('SELECT 1 FROM content WHERE ns = ? AND digest = ?', ns, digest)) continue;
      let children: ChildDescriptor[] = [];
      try {
        const bytes = await readSmallBlob(store, digest as Digest);
        if (bytes) children = manifestChildren(mediaType, bytes);
      } catch (err) {
        if (!isKilnError(err, 'NotFound')) throw err;
      }
      cache.set(key, children);
    }
    for (const c of cache.get(key)!) queue.push({ ns, mediaType: c.mediaType, digest: c.digest });
  }
}

/** Runs one collection. Safe to call while other tasks work: see the module comment. */
export async function collectGarbage(options: GCOptions): Promise<GCResult> {
  const { db } = options;
  const now = options.now ?? Date.now;
  const started = performance.now();
  return db.gcLock.exclusive(async () => {
    const manifests = new Map<string, ChildDescriptor[]>();
    let swept: ReturnType<typeof markAndSweep> | undefined;
    for (let attempt = 0; attempt < 5 && !swept; attempt++) {
      await loadManifests(db, options.content, manifests);
      try {
        swept = db.transaction(() => markAndSweep(db, manifests, now()));
      } catch (err) {
        if (!(err instanceof Retry)) throw err;
      }
    }
    if (!swept) throw new KilnError('Unavailable', 'garbage collect: images kept changing during the run');

    const releasedKeys = swept.releasedKeys;
    const result: GCResult = {
      removedContent: swept.content.length,
      removedBlobs: 0,
      removedSnapshots: swept.snapshots.length,
      removedBackendSnapshots: 0,
      removedIngests: 0,
      removedLeases: swept.leases,
      removed: { content: swept.content, snapshots: swept.snapshots, blobs: [], ingests: [] },
      durationMs: 0,
    };

    // Blobs that no namespace records: those whose records were just swept or
    // deleted, and older ones (orphaned by a crash between blob and record;
    // young ones may be another process's commit in progress).
    const released = new Set<string>(swept.content.map((c) => c.digest));
    for (const r of db.all<{ digest: string }>('SELECT digest FROM deleted_content')) released.add(r.digest);
    const orphanBefore = now() - ORPHAN_GRACE_MS;
    const unreferenced: Digest[] = [];
    await options.content.walk((info) => {
      if (db.get('SELECT 1 FROM content WHERE digest = ? LIMIT 1', info.digest)) return;
      if (released.has(info.digest) || info.createdAt.getTime() < orphanBefore)
        unreferenced.push(info.digest);
    });
    for (const digest of unreferenced) {
      try {
        await options.content.delete(digest);
        result.removed.blobs.push(digest);
      } catch (err) {
        if (!isKilnError(err, 'NotFound')) throw err;
      }
    }
    result.removedBlobs = result.removed.blobs.length;
    db.transaction(() => {
      for (const d of released) db.run('DELETE FROM deleted_content WHERE digest = ?', d);
    });

    // Ingests whose lease is gone.
    for (const ing of swept.ingests) {
      try {
        await options.content.abort(`${ing.ns}/${ing.ref}`);
      } catch (err) {
        if (!isKilnError(err, 'NotFound')) continue; // in use: retried by a later GC
      }
      db.transaction(() => db.run('DELETE FROM ingests WHERE ns = ? AND ref = ?', ing.ns, ing.ref));
      result.removed.ingests.push({ namespace: ing.ns, ref: ing.ref });
    }
    result.removedIngests = result.removed.ingests.length;

    // Driver snapshots no record names, deepest first; records whose driver snapshot is gone.
    for (const [name, backend] of options.snapshotters) {
      const swept = await sweepBackendSnapshots(db, name, backend, {
        brokenBefore: now() - BROKEN_GRACE_MS,
        orphanBefore: now() - ORPHAN_GRACE_MS,
        released: (key) => releasedKeys.has(`${name}\0${key}`),
      });
      result.removedBackendSnapshots += swept.removed;
      for (const b of swept.broken) {
        result.removed.snapshots.push({ namespace: b.ns, snapshotter: name, key: b.name });
      }
    }
    result.removedSnapshots = result.removed.snapshots.length;
    result.durationMs = performance.now() - started;
    return result;
  });
}

function markAndSweep(db: MetadataDB, manifests: Map<string, ChildDescriptor[]>, now: number) {
  const content = db.all<ContentRow>('SELECT ns, digest, labels FROM content');
  const snapshots = db.all<SnapshotRow>(
    'SELECT ns, snapshotter, name, parent, labels, backend_key FROM snapshots',
  );
  const images = db.all<{ ns: string; media_type: string; digest: string }>(
    'SELECT ns, media_type, digest FROM images',
  );
  const leases = db.all<{ ns: string; id: string; expires_at: number | null }>(
    'SELECT ns, id, expires_at FROM leases',
  );
  const active = new Set(
    leases.filter((l) => l.expires_at === null || l.expires_at > now).map((l) => `${l.ns}\0${l.id}`),
  );
  const resources = db.all<{ ns: string; lease: string; type: string; id: string }>(
    'SELECT ns, lease, type, id FROM lease_resources',
  );

  const edges = new Map<string, string[]>();
  const addEdge = (from: string, to: string) => {
    const list = edges.get(from);
    if (list) list.push(to);
    else edges.set(from, [to]);
  };
  const roots: string[] = [];
  const visited = new Set<string>(); // content node + media type it was parsed as

  for (const c of content) {
    const labels = decodeLabels(c.labels);
    const key = cKey(c.ns, c.digest);
    if (labels[LABEL_GC_ROOT] !== undefined) roots.push(key);
    for (const ref of labelRefs(c.ns, labels)) addEdge(key, ref);
  }
  for (const s of snapshots) {
    const labels = decodeLabels(s.labels);
    const key = sKey(s.ns, s.snapshotter, s.name);
    if (labels[LABEL_GC_ROOT] !== undefined) roots.push(key);
    for (const ref of labelRefs(s.ns, labels)) addEdge(key, ref);
    if (s.parent !== null) addEdge(key, sKey(s.ns, s.snapshotter, s.parent));
  }
  for (const r of resources) {
    if (!active.has(`${r.ns}\0${r.lease}`)) continue;
    if (r.type === 'content') roots.push(cKey(r.ns, r.id));
    else if (r.type.startsWith('snapshots/')) roots.push(sKey(r.ns, r.type.slice('snapshots/'.length), r.id));
  }

  // Images: their targets are roots; indexes and manifests are followed by media type.
  const manifestQueue: { ns: string; mediaType: string; digest: string }[] = [];
  for (const img of images) {
    roots.push(cKey(img.ns, img.digest));
    manifestQueue.push({ ns: img.ns, mediaType: img.media_type, digest: img.digest });
  }
  const recorded = new Set(content.map((c) => cKey(c.ns, c.digest)));
  while (manifestQueue.length > 0) {
    const { ns, mediaType, digest } = manifestQueue.pop()!;
    if (!INDEX_TYPES.has(mediaType) && !MANIFEST_TYPES.has(mediaType)) continue;
    const node = cKey(ns, digest);
    const tkey = `${mediaType}\0${digest}`;
    if (visited.has(`${node}\0${mediaType}`)) continue;
    visited.add(`${node}\0${mediaType}`);
    if (!recorded.has(node)) continue;
    const children = manifests.get(tkey);
    if (!children) throw new Retry(); // an image or blob arrived after loadManifests
    for (const c of children) {
      addEdge(node, cKey(ns, c.digest));
      manifestQueue.push({ ns, mediaType: c.mediaType, digest: c.digest });
    }
  }

  // Mark.
  const marked = new Set<string>();
  const stack = [...roots];
  while (stack.length > 0) {
    const n = stack.pop()!;
    if (marked.has(n)) continue;
    marked.add(n);
    for (const m of edges.get(n) ?? []) if (!marked.has(m)) stack.push(m);
  }

  // Sweep records.
  const removedContent: { namespace: string; digest: Digest }[] = [];
  for (const c of content) {
    if (marked.has(cKey(c.ns, c.digest))) continue;
    db.run('DELETE FROM content WHERE ns = ? AND digest = ?', c.ns, c.digest);
    removedContent.push({ namespace: c.ns, digest: c.digest as Digest });
  }
  const removedSnapshots: { namespace: string; snapshotter: string; key: string }[] = [];
  const releasedKeys = new Set<string>(); // `<snapshotter>\0<backend key>` of swept records
  for (const s of snapshots) {
    if (marked.has(sKey(s.ns, s.snapshotter, s.name))) continue;
    db.run(
      'DELETE FROM snapshots WHERE ns = ? AND snapshotter = ? AND name = ?',
      s.ns,
      s.snapshotter,
      s.name,
    );
    removedSnapshots.push({ namespace: s.ns, snapshotter: s.snapshotter, key: s.name });
    releasedKeys.add(`${s.snapshotter}\0${s.backend_key}`);
  }
  let removedLeases = 0;
  for (const l of leases) {
    if (active.has(`${l.ns}\0${l.id}`)) continue;
    db.run('DELETE FROM leases WHERE ns = ? AND id = ?', l.ns, l.id);
    removedLeases++;
  }
  const ingests = db
    .all<{ ns: string; ref: string; lease: string | null }>('SELECT ns, ref, lease FROM ingests')
    .filter((i) => i.lease !== null && !active.has(`${i.ns}\0${i.lease}`));
  return {
    content: removedContent,
    snapshots: removedSnapshots,
    releasedKeys,
    leases: removedLeases,
    ingests,
  };
}

/**
 * Removes the driver's snapshots that no record names, children before
 * parents, and the childless records whose driver snapshot does not exist
 * (a crash between recording and creating, or during a commit).
 */
async function sweepBackendSnapshots(
  db: MetadataDB,
  name: string,
  backend: Snapshotter,
  opts: { brokenBefore: number; orphanBefore: number; released: (backendKey: string) => boolean },
): Promise<{ removed: number; broken: { ns: string; name: string }[] }> {
  const { brokenBefore } = opts;
  const parents = new Map<string, string | undefined>();
  const young = new Set<string>();
  await backend.walk((info) => {
    parents.set(info.name, info.parent);
    if (Math.max(info.createdAt.getTime(), info.updatedAt.getTime()) >= opts.orphanBefore)
      young.add(info.name);
  });
  const broken = db.transaction(() => {
    const rows = db.all<{ ns: string; name: string; backend_key: string }>(
      `SELECT ns, name, backend_key FROM snapshots s WHERE snapshotter = ? AND created_at < ? AND NOT EXISTS
         (SELECT 1 FROM snapshots c WHERE c.ns = s.ns AND c.snapshotter = s.snapshotter AND c.parent = s.name)`,
      name,
      brokenBefore,
    );
    const gone = rows.filter((r) => !parents.has(r.backend_key));
    for (const r of gone) {
      db.run('DELETE FROM snapshots WHERE ns = ? AND snapshotter = ? AND name = ?', r.ns, name, r.name);
    }
    return gone.map((r) => ({ ns: r.ns, name: r.name }));
  });
  const known = new Set(
    db
      .all<{ backend_key: string }>('SELECT backend_key FROM snapshots WHERE snapshotter = ?', name)
      .map((r) => r.backend_key),
  );
  const depth = (key: string): number => {
    let d = 0;
    for (let p = parents.get(key); p !== undefined && d < 10_000; p = parents.get(p)) d++;
    return d;
  };
  const orphans = [...parents.keys()].filter((k) => !known.has(k));
  // A young orphan may be another process's snapshot about to be recorded;
  // keep it, and its ancestors, until the grace period has passed.
  const keep = new Set<string>();
  for (const k of orphans) {
    if (!young.has(k) || opts.released(k)) continue;
    for (let p: string | undefined = k; p !== undefined && !keep.has(p); p = parents.get(p)) keep.add(p);
  }
  orphans.sort((a, b) => depth(b) - depth(a));
  let removed = 0;
  for (const key of orphans) {
    if (keep.has(key)) continue;
    try {
      await backend.remove(key);
      removed++;
    } catch (err) {
      // A child still known to the records keeps its parent; busy snapshots wait for the next run.
      if (!isKilnError(err)) throw err;
    }
  }
  return { removed, broken };
}
