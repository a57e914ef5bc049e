/**
 * Layers of a committed snapshot chain: `snapshotLayers(core, name, opts)`
 * returns one entry per snapshot of the chain, root first, each with the
 * layer blob (in the namespace's content store) that turns its parent's tree
 * into its own, or `empty` when the snapshot changed nothing.
 *
 * For each snapshot, in this order:
 * 1. a blob this module computed before: the snapshot label
 *    `containerd.io/gc.ref.content.kiln.layer.<compression>[.sde-<epoch>]`
 *    = blob digest (a GC reference too, so the blob lives as long as the
 *    snapshot and later exports reuse it). Without `forceCompression` a
 *    compressed blob of another compression is reused as is (as BuildKit
 *    does), the requested compression first; Docker media types never take
 *    zstd. Otherwise a blob of another compression found by label (e.g. the
 *    uncompressed one a store export made) is converted
 *    (../core/images/convert.ts: decompress + compress, no tree walk) and
 *    the result recorded under its own label: a compressed request never
 *    gets an uncompressed layer computed before.
 * 2. for a snapshot made by unpack (label `containerd.io/snapshot.ref`), the
 *    image layer blob it came from: a blob of the namespace labelled
 *    `containerd.io/uncompressed` = the snapshot's diff ID (base layers are
 *    never rewritten, also not under SOURCE_DATE_EPOCH). With
 *    `forceCompression`, a reused blob of another compression is
 *    recompressed (decompress + compress, no tree walk).
 * 3. otherwise `compare` (../core/diff) between read-only views of the parent
 *    and of the snapshot. With the overlayfs driver the view of a snapshot is
 *    an overlay whose first lowerdir is the snapshot's own directory (its
 *    former upperdir); that directory is handed to compare as the upperdir
 *    of an (unmounted) overlay over the parent's layers, so the overlay fast
 *    path reads just the snapshot's own directory. A snapshot without parent,
 *    or other drivers, take the generic two-tree walk. `sourceDateEpoch`
 *    clamps mtimes. The result is recorded as in (1).
 *
 * `prepareLayer(core, name, opts)` does steps 1-3 for one snapshot ahead of
 * an export (a build calls it as each step of the image's chain finishes);
 * `snapshotLayers` waits for such a layer while it is in flight, then finds
 * its label.
 *
 * Independent layers are computed in parallel, at most `concurrency` at a
 * time (default: the number of CPUs). Blobs and views are held by a lease
 * (the caller's, else a temporary one deleted at the end, after which only
 * the snapshot labels keep the blobs). An empty layer is one whose tar has
 * no entries (diff ID of 1024 zero bytes); callers omit it from images.
 * Limits: the compression level is not part of the reuse key (as in
 * BuildKit); a snapshot of another namespace is not looked at.
 */
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import type { ContentStore } from '../core/content/types.ts';
import { type Compression, compare, LABEL_UNCOMPRESSED, LAYER_MEDIA_TYPES } from '../core/diff/index.ts';
import type { Digest } from '../core/digest.ts';
import { errInvalidArgument, isKilnError, wrap } from '../core/errors.ts';
import { blobCompression, blobHead, recompressBlob, sniffCompression } from '../core/images/convert.ts';
import type { Descriptor } from '../core/images/types.ts';
import type { Core, NamespacedSnapshotter, SnapshotterName } from '../core/metadata/index.ts';
import { escapeOverlayPath, snapshotLayerDirs, snapshotOwnDir } from '../core/mount/mount.ts';
import { snapshotChain } from '../core/snapshots/chain.ts';
import type { Mount, SnapshotInfo } from '../core/snapshots/types.ts';

/** Label unpack puts on the snapshots it makes (value: the chain ID). */
export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
/** Prefix of the snapshot label that links a snapshot to a layer blob Kiln computed. */
export const LABEL_LAYER_PREFIX = 'containerd.io/gc.ref.content.kiln.layer.';
/** Diff ID of a layer without entries (a tar of just the end-of-archive blocks). */
export const EMPTY_LAYER_DIFF_ID: Digest =
  'sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef';

export interface LayerOptions {
  snapshotter?: SnapshotterName;
  /** Default 'gzip'. */
  compression?: Compression;
  /** gzip 0..9, zstd 1..22 (defaults of ../core/diff). */
  level?: number;
  /** Recompress reused blobs of another compression. Default false. */
  forceCompression?: boolean;
  /** Only blobs usable in Docker-media-type manifests (no zstd). Default false. */
  dockerMediaTypes?: boolean;
  /** Clamp mtimes of computed layers to this many seconds since the epoch. */
  sourceDateEpoch?: number;
  /** Layers computed at once (default: CPU count). */
  concurrency?: number;
  /** Lease holding blobs and views; default a temporary one. */
  lease?: string;
  signal?: AbortSignal;
  /** Called once per snapshot when its layer is known. */
  progress?: (layer: SnapshotLayer) => void;
}

export interface SnapshotLayer {
  /** Snapshot name. */
  snapshot: string;
  /** The layer blob (annotation `containerd.io/uncompressed` = diffID). */
  descriptor: Descriptor;
  diffID: Digest;
  /** No change against the parent: to be left out of an image. */
  empty: boolean;
  /** How the blob was found: 'label' (computed before), 'unpacked' (the image layer), 'computed', 'converted'. */
  source: 'label' | 'unpacked' | 'computed' | 'converted';
  /** The snapshot's own directory, when this export saw it (overlayfs, computed layers). */
  dir?: string;
  /** When the snapshot was committed: the time of its history entry (./image.ts). */
  createdAt?: Date;
}

const COMPRESSIONS: readonly Compression[] = ['gzip', 'zstd', 'none'];

/** The label key linking a snapshot to its computed layer of `compression`. */
export function layerLabel(compression: Compression, sourceDateEpoch?: number): string {
  return `${LABEL_LAYER_PREFIX}${compression}${sourceDateEpoch === undefined ? '' : `.sde-${sourceDateEpoch}`}`;
}

/** Returns `run(fn)`, which runs at most `n` functions at a time. */
function limiter(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    while (active >= n) await new Promise<void>((r) => waiting.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}

async function blobInfo(
  store: ContentStore,
  digest: string,
): Promise<{ size: number; diffID?: Digest } | undefined> {
  try {
    const info = await store.info(digest as Digest);
    const diffID = info.labels[LABEL_UNCOMPRESSED] as Digest | undefined;
    return diffID ? { size: info.size, diffID } : { size: info.size };
  } catch (err) {
    if (isKilnError(err, 'NotFound')) return undefined;
    throw err;
  }
}

function layerDesc(compression: Compression, digest: Digest, size: number, diffID: Digest): Descriptor {
  return {
    mediaType: LAYER_MEDIA_TYPES[compression],
    digest,
    size,
    annotations: { [LABEL_UNCOMPRESSED]: diffID },
  };
}

/**
 * Order in which existing blobs of each compression are reused as they are:
 * the requested compression first; without `forceCompression` also another
 * compressed one (never zstd for Docker media types). An uncompressed blob
 * computed before is not reused for a compressed request: it is compressed
 * (no tree walk), so a store export without compression never makes later
 * OCI tars or pushes uncompressed.
 */
function acceptable(opts: LayerOptions): Compression[] {
  const want = opts.compression ?? 'gzip';
  if (opts.forceCompression) return [want];
  return [want, ...COMPRESSIONS.filter((c) => c !== want && c !== 'none')].filter(
    (c) => !(opts.dockerMediaTypes && c === 'zstd'),
  );
}

/** Recompresses `desc`'s blob to `opts.compression` (../core/images/convert.ts); returns the new descriptor. */
async function convert(
  store: ContentStore,
  desc: Descriptor,
  diffID: Digest,
  opts: LayerOptions,
  from?: Compression,
): Promise<Descriptor> {
  const compression = opts.compression ?? 'gzip';
  const out = await recompressBlob(store, desc.digest, compression, {
    diffID,
    ...(from ? { from } : {}),
    ...(opts.level !== undefined ? { level: opts.level } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  return layerDesc(compression, out.digest, out.size, diffID);
}

/** A blob found through the snapshot's labels (rules 1 and 2 of the module comment). */
async function knownBlob(
  store: ContentStore,
  info: SnapshotInfo,
  opts: LayerOptions,
): Promise<{ desc: Descriptor; diffID: Digest; source: SnapshotLayer['source'] } | undefined> {
  const order = acceptable(opts);
  for (const c of order) {
    const digest = info.labels[layerLabel(c, opts.sourceDateEpoch)];
    if (!digest) continue;
    const b = await blobInfo(store, digest);
    if (b?.diffID)
      return { desc: layerDesc(c, digest as Digest, b.size, b.diffID), diffID: b.diffID, source: 'label' };
  }
  // A blob of another compression computed before: convert it rather than walk the tree again.
  for (const c of COMPRESSIONS) {
    if (order.includes(c)) continue;
    const digest = info.labels[layerLabel(c, opts.sourceDateEpoch)];
    if (!digest) continue;
    const b = await blobInfo(store, digest);
    if (!b?.diffID) continue;
    const from = layerDesc(c, digest as Digest, b.size, b.diffID);
    return { desc: await convert(store, from, b.diffID, opts, c), diffID: b.diffID, source: 'converted' };
  }
  const unpackedDiffID = info.labels[LABEL_SNAPSHOT_REF]
    ? (info.labels[LABEL_UNCOMPRESSED] as Digest)
    : undefined;
  if (!unpackedDiffID) return undefined;
  const found = new Map<Compression, Descriptor>();
  await store.walk(
    async (bi) => {
      const c = sniffCompression(await blobHead(store, bi.digest));
      if (!found.has(c)) found.set(c, layerDesc(c, bi.digest, bi.size, unpackedDiffID));
    },
    [`labels.${LABEL_UNCOMPRESSED}==${unpackedDiffID}`],
  );
  // The uncompressed layer itself may be stored without the label.
  if (!found.has('none')) {
    const b = await blobInfo(store, unpackedDiffID);
    if (b) found.set('none', layerDesc('none', unpackedDiffID, b.size, unpackedDiffID));
  }
  // Base layers are reused as they are, uncompressed ones too (unless forced).
  for (const c of opts.forceCompression ? order : [...order, 'none' as const]) {
    const d = found.get(c);
    if (d) return { desc: d, diffID: unpackedDiffID, source: 'unpacked' };
  }
  const any = [...found.entries()][0];
  if (any && opts.forceCompression) {
    return {
      desc: await convert(store, any[1], unpackedDiffID, opts, any[0]),
      diffID: unpackedDiffID,
      source: 'converted',
    };
  }
  return undefined;
}

/** The layer directories of an overlay view of a snapshot with a parent (2 or more), topmost first. */
function overlayViewDirs(view: Mount[]): string[] | undefined {
  if (view[0]?.type !== 'overlay') return undefined;
  const dirs = snapshotLayerDirs(view);
  return dirs && dirs.length >= 2 ? dirs : undefined;
}

/**
 * The upper mounts to hand to compare: for an overlay view (no upperdir, the
 * snapshot's own directory first among the lowerdirs), an unmounted overlay
 * with that directory as upperdir, so compare's fast path applies.
 * Exported for tests.
 */
export function fastUpper(view: Mount[]): Mount[] {
  const dirs = overlayViewDirs(view);
  if (!dirs) return view;
  return [
    {
      type: 'overlay',
      source: 'overlay',
      options: [
        'index=off',
        `upperdir=${escapeOverlayPath(dirs[0]!)}`,
        `lowerdir=${dirs.slice(1).map(escapeOverlayPath).join(':')}`,
      ],
    },
  ];
}

/**
 * The read-only mounts of a snapshot's parent, from an overlay view of the
 * snapshot (its own directory first among the lowerdirs, then its parent's
 * layers): what a view of the parent would give, without making one (the
 * snapshot's view holds the parent's chain). Undefined for other shapes.
 * Exported for tests.
 */
export function parentView(view: Mount[]): Mount[] | undefined {
  const dirs = overlayViewDirs(view);
  if (!dirs) return undefined;
  const rest = dirs.slice(1);
  if (rest.length === 1) return [{ type: 'bind', source: rest[0]!, options: ['rbind', 'ro'] }];
  return [
    {
      type: 'overlay',
      source: 'overlay',
      options: ['index=off', 'ro', `lowerdir=${rest.map(escapeOverlayPath).join(':')}`],
    },
  ];
}

async function computeLayer(
  sn: NamespacedSnapshotter,
  store: ContentStore,
  info: SnapshotInfo,
  opts: LayerOptions,
): Promise<{ desc: Descriptor; dir: string | undefined }> {
  const tag = randomBytes(6).toString('hex');
  const made: string[] = [];
  try {
    const k = `export-${tag}-upper`;
    const upper = await sn.view(k, info.name);
    made.push(k);
    let lower: Mount[] = [];
    if (info.parent !== undefined) {
      // A view of the parent costs a snapshot record and directory (~4 ms with its removal).
      const derived = parentView(upper);
      if (derived) lower = derived;
      else {
        const kl = `export-${tag}-lower`;
        lower = await sn.view(kl, info.parent);
        made.push(kl);
      }
    }
    const desc = await compare(lower, info.parent === undefined ? upper : fastUpper(upper), store, {
      compression: opts.compression ?? 'gzip',
      ...(opts.level !== undefined ? { level: opts.level } : {}),
      ...(opts.sourceDateEpoch !== undefined ? { sourceDateEpoch: opts.sourceDateEpoch } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    return { desc, dir: snapshotOwnDir(upper) };
  } finally {
    for (const k of made.reverse()) await sn.remove(k).catch(() => {});
  }
}

/** A temporary lease (1 h) holding an export's views and blobs until it deletes it. */
export function exportLease(core: Core): string {
  return core.leases.create({ ttlMs: 3_600_000, labels: { 'kiln.dev/purpose': 'export' } }).id;
}

/** Throws for options no export can use. */
function checkOptions(name: string, opts: LayerOptions): void {
  const compression = opts.compression ?? 'gzip';
  if (!COMPRESSIONS.includes(compression)) {
    throw errInvalidArgument(`export layers of "${name}": unknown compression "${compression}"`);
  }
  if (opts.dockerMediaTypes && compression === 'zstd') {
    throw errInvalidArgument(`export layers of "${name}": zstd compression needs OCI media types`);
  }
}

/**
 * Layers `prepareLayer` is computing in this process, by root, namespace,
 * driver, snapshot and label key. An export that needs one of them waits for
 * it and then finds the snapshot's label, instead of walking the same tree
 * a second time.
 */
const preparing = new Map<string, Promise<void>>();

function preparingKey(core: Core, name: string, opts: LayerOptions): string {
  const label = layerLabel(opts.compression ?? 'gzip', opts.sourceDateEpoch);
  return [core.root, core.namespace, opts.snapshotter ?? core.defaultSnapshotter, name, label].join('\0');
}

/** The layer of one snapshot of a chain: found through a label or the image it was unpacked from, else computed and labelled. */
async function layerOf(
  base: NamespacedSnapshotter,
  sn: NamespacedSnapshotter,
  store: ContentStore,
  info: SnapshotInfo,
  opts: LayerOptions,
): Promise<SnapshotLayer> {
  let found = await knownBlob(store, info, opts);
  let dir: string | undefined;
  if (!found) {
    const computed = await computeLayer(sn, store, info, opts);
    const desc = computed.desc;
    dir = computed.dir;
    const diffID = desc.annotations![LABEL_UNCOMPRESSED] as Digest;
    found = { desc, diffID, source: 'computed' };
  }
  if (found.source === 'computed' || found.source === 'converted') {
    const key = layerLabel(
      blobCompression(found.desc.mediaType) ?? opts.compression ?? 'gzip',
      opts.sourceDateEpoch,
    );
    await base.update({ name: info.name, labels: { [key]: found.desc.digest } }, [`labels.${key}`]);
  }
  return {
    snapshot: info.name,
    descriptor: found.desc,
    diffID: found.diffID,
    empty: found.diffID === EMPTY_LAYER_DIFF_ID,
    source: found.source,
    createdAt: info.createdAt,
    ...(dir !== undefined ? { dir } : {}),
  };
}

/**
 * Computes and labels the layer of committed snapshot `name` (its change
 * against its parent) ahead of an export, as `snapshotLayers` would: a build
 * calls it as each step of the image's chain finishes, so the layer is
 * written while later steps run. Until it settles, `snapshotLayers` in this
 * process waits for it instead of computing the same layer; afterwards the
 * label answers. A temporary lease holds its views and the blob until the
 * label does. A second call for the same layer and options returns the
 * first one's promise.
 */
export function prepareLayer(core: Core, name: string, opts: LayerOptions = {}): Promise<void> {
  checkOptions(name, opts);
  const key = preparingKey(core, name, opts);
  const running = preparing.get(key);
  if (running) return running;
  const work = (async () => {
    const lease = exportLease(core);
    try {
      const base = await core.snapshotter(opts.snapshotter);
      const info = await base.stat(name);
      if (info.kind !== 'committed') return;
      opts.signal?.throwIfAborted();
      await layerOf(base, base.withLease(lease), core.content.withLease(lease), info, opts);
    } catch (err) {
      throw wrap(err, `export layer of snapshot "${name}"`);
    } finally {
      core.leases.delete(lease);
    }
  })().finally(() => preparing.delete(key));
  preparing.set(key, work);
  return work;
}

/** The layers of the chain ending at committed snapshot `name` (see the module comment). */
export async function snapshotLayers(
  core: Core,
  name: string,
  opts: LayerOptions = {},
): Promise<SnapshotLayer[]> {
  checkOptions(name, opts);
  // Taken before the chain's labels are read: one that settles in between is still waited for.
  const ahead = new Map(preparing);
  const temporary = opts.lease === undefined;
  const lease = opts.lease ?? exportLease(core);
  try {
    const base = await core.snapshotter(opts.snapshotter);
    const sn = base.withLease(lease);
    const store = core.content.withLease(lease);
    const chain = await snapshotChain(base, name);
    const limit = limiter(Math.max(1, opts.concurrency ?? availableParallelism()));
    const tasks = chain.map((listed) =>
      limit(async (): Promise<SnapshotLayer> => {
        opts.signal?.throwIfAborted();
        try {
          let info = listed;
          const prepared = ahead.get(preparingKey(core, info.name, opts));
          if (prepared) {
            // Computed ahead (prepareLayer): its label is the answer, unless it failed.
            await prepared.catch(() => undefined);
            info = await base.stat(info.name);
          }
          const layer = await layerOf(base, sn, store, info, opts);
          opts.progress?.(layer);
          return layer;
        } catch (err) {
          throw wrap(err, `export layer of snapshot "${listed.name}"`);
        }
      }),
    );
    const settled = await Promise.allSettled(tasks);
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    return settled.map((r) => (r as PromiseFulfilledResult<SnapshotLayer>).value);
  } finally {
    if (temporary) core.leases.delete(lease);
  }
}
