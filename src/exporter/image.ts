/**
 * A build result as an image in the content store: `buildImage(core, opts)`
 * computes (or reuses) the layers of the result snapshot chain (./layers.ts),
 * completes the frontend's image config and writes config and manifest.
 *
 * - Layers: every snapshot of the chain, root first. When the history's
 *   non-empty entries match the snapshots one to one (a Dockerfile build),
 *   every layer is kept, empty ones (no change) included, as BuildKit does
 *   (a COPY whose wildcard matched nothing still records a layer);
 *   otherwise empty layers are left out.
 * - Config: `rootfs.diff_ids` = the layers' diff IDs (the frontend's list is
 *   replaced). Times follow BuildKit: a history entry without `created`
 *   takes the commit time of its layer's snapshot, or, without a layer, the
 *   time of the entry before it; the config's `created` is the last entry's.
 *   A rebuild answered from the cache thus gives the same image ID. With
 *   SOURCE_DATE_EPOCH, new entries and `created` get it instead and later
 *   times are clamped to it. `now` is used only when there is no history.
 *   History is made consistent with the layers: surplus non-empty entries
 *   (from the last) become `empty_layer` and missing ones are appended (created_by
 *   names the snapshot, comment `kiln.exporter.image.v0`).
 * - Manifest: OCI media types by default, Docker schema 2 ones with
 *   `ociMediaTypes: false` (zstd needs OCI). Layer descriptors carry only
 *   mediaType, digest and size.
 * - Blobs: config without labels; manifest with containerd's GC labels
 *   (`containerd.io/gc.ref.content.config` / `.l.<i>`) to config and layers,
 *   and, with `compressOnPush` and an uncompressed layer, the label
 *   `kiln.dev/push.compression` = gzip that makes a push compress its
 *   uncompressed layers (../core/images/push.ts).
 *   JSON is serialised with a fixed key order, so identical inputs with the
 *   same SOURCE_DATE_EPOCH give byte-identical blobs and the same digest.
 *
 * Everything is held by `lease` (the caller's, else a new one with a one
 * hour expiry, returned in the result: delete it once the image is referred
 * to, or let it expire).
 */
import type { ContentStore, Labels } from '../core/content/types.ts';
import type { Compression } from '../core/diff/index.ts';
import { type Digest, sha256 } from '../core/digest.ts';
import { errInvalidArgument, isKilnError } from '../core/errors.ts';
import { blobCompression } from '../core/images/convert.ts';
import { LABEL_PUSH_COMPRESSION } from '../core/images/push.ts';
import { chainIDs } from '../core/images/unpack.ts';
import {
  type Descriptor,
  type HistoryEntry,
  type ImageConfig,
  type Manifest,
  MediaType,
} from '../core/images/types.ts';
import type { Core, SnapshotterName } from '../core/metadata/index.ts';
import { exportLease, type SnapshotLayer, snapshotLayers } from './layers.ts';

export const LABEL_GC_REF_CONTENT = 'containerd.io/gc.ref.content';
const DOCKER_LAYER_TAR = 'application/vnd.docker.image.rootfs.diff.tar';

export interface BuildImageOptions {
  /** The result: a committed snapshot name; undefined for an image without layers. */
  snapshot?: string | undefined;
  /** The image config from the frontend. */
  config: ImageConfig;
  /** Default 'gzip'; 'uncompressed' is the same as 'none'. */
  compression?: Compression | 'uncompressed';
  level?: number;
  forceCompression?: boolean;
  /** Default true; false writes Docker schema 2 media types. */
  ociMediaTypes?: boolean;
  /** Seconds since the epoch (SOURCE_DATE_EPOCH). */
  sourceDateEpoch?: number;
  snapshotter?: SnapshotterName;
  lease?: string;
  concurrency?: number;
  signal?: AbortSignal;
  progress?: (layer: SnapshotLayer) => void;
  /**
   * Mark the manifest so that a push compresses its uncompressed layers to
   * gzip (label LABEL_PUSH_COMPRESSION, read by ../core/images/push.ts): set
   * by the store export, whose layers are uncompressed by default.
   */
  compressOnPush?: boolean;
  /** Clock for `created` without SOURCE_DATE_EPOCH (tests). */
  now?: () => Date;
}

export interface BuiltImage {
  manifest: Manifest;
  manifestDesc: Descriptor;
  manifestBytes: Uint8Array;
  config: ImageConfig;
  configDesc: Descriptor;
  configBytes: Uint8Array;
  /** The image's layers, in manifest order (see the module comment for empty ones). */
  layers: SnapshotLayer[];
  /** Chain ID of the top layer (the rootfs snapshot name unpack uses), if any. */
  chainID: Digest | undefined;
  snapshot: string | undefined;
  snapshotter: SnapshotterName;
  /** Lease holding the blobs (the caller's or one made here). */
  lease: string;
  /**
   * A time in the config came from the clock (no SOURCE_DATE_EPOCH, and no
   * layer to take it from): the same build exported again gives another image.
   */
  fromClock: boolean;
}

/** RFC 3339 time of `d` (whole seconds without a fraction). */
export function formatTime(d: Date): string {
  return d.toISOString().replace('.000Z', 'Z');
}

function encodeJson(value: unknown): Uint8Array {
  return Buffer.from(JSON.stringify(value));
}

/** Stores `bytes` as blob `desc` with `labels` (merged into an existing blob's labels). */
export async function putBlob(
  store: ContentStore,
  desc: Descriptor,
  bytes: Uint8Array,
  labels: Labels = {},
): Promise<void> {
  const ref = `exporter-${desc.digest}`;
  let w: Awaited<ReturnType<ContentStore['writer']>> | undefined;
  try {
    w = await store.writer({ ref, expected: desc.digest, total: desc.size });
    if (w.offset > 0) {
      await w.close();
      await store.abort(ref);
      w = await store.writer({ ref, expected: desc.digest, total: desc.size });
    }
    await w.write(bytes);
    await w.commit({ size: desc.size, expected: desc.digest, labels });
  } catch (err) {
    if (!isKilnError(err, 'AlreadyExists')) throw err;
    const keys = Object.keys(labels);
    if (keys.length > 0) {
      await store.update(
        { digest: desc.digest, labels },
        keys.map((k) => `labels.${k}`),
      );
    }
  } finally {
    await w?.close().catch(() => {});
  }
}

/** The layers an image gets (see the module comment): all when the history accounts for each, else the non-empty ones. */
function keptLayers(history: readonly HistoryEntry[], all: SnapshotLayer[]): SnapshotLayer[] {
  if (history.filter((h) => !h.empty_layer).length === all.length) return all;
  return all.filter((l) => !l.empty);
}

/** Makes the history agree with the layers (see the module comment). */
function normalizeHistory(
  history: HistoryEntry[],
  all: SnapshotLayer[],
  fallback: string,
  sourceDateEpoch: number | undefined,
): HistoryEntry[] {
  const out = history.map((h) => ({ ...h }));
  const nonEmpty = (): HistoryEntry[] => out.filter((h) => !h.empty_layer);
  const layers = keptLayers(history, all);
  const now = nonEmpty();
  for (let i = layers.length; i < now.length; i++) now[i]!.empty_layer = true;
  // Layers without a history entry are the base image's (an image made without history):
  // describe them first, by content, so that the same inputs give the same config.
  const missing = layers.length - now.length;
  if (missing > 0) {
    out.unshift(
      ...layers.slice(0, missing).map((l) => ({
        created_by: `layer ${l.diffID}`,
        comment: 'kiln.exporter.image.v0',
      })),
    );
  }
  if (sourceDateEpoch !== undefined) {
    // Every new entry gets SOURCE_DATE_EPOCH; later ones (a base image's) are clamped to it.
    const limit = sourceDateEpoch * 1000;
    for (const h of out) {
      if (h.created === undefined) h.created = fallback;
      else {
        const t = Date.parse(h.created);
        if (!Number.isNaN(t) && t > limit) h.created = fallback;
      }
    }
  } else {
    // As BuildKit: a new layer's entry takes the time its snapshot was committed, so that a
    // build answered from the cache gives the same config (and image ID) again; an entry
    // without a layer takes the time of the entry before it.
    let layer = 0;
    let last: string | undefined;
    for (const h of out) {
      if (!h.empty_layer) {
        const at = layers[layer++]?.createdAt;
        if (h.created === undefined && at !== undefined) h.created = formatTime(at);
      }
      h.created ??= last ?? fallback;
      last = h.created;
    }
  }
  // A fixed key order for deterministic bytes.
  return out.map((h) => {
    const e: HistoryEntry = {};
    if (h.created !== undefined) e.created = h.created;
    if (h.created_by !== undefined) e.created_by = h.created_by;
    if (h.author !== undefined) e.author = h.author;
    if (h.comment !== undefined) e.comment = h.comment;
    if (h.empty_layer) e.empty_layer = true;
    return e;
  });
}

function layerMediaType(desc: Descriptor, oci: boolean): string {
  if (oci) return desc.mediaType;
  if (desc.mediaType === MediaType.OciLayerGzip) return MediaType.DockerLayerGzip;
  if (desc.mediaType === MediaType.OciLayer) return DOCKER_LAYER_TAR;
  throw errInvalidArgument(`export with Docker media types: layer ${desc.digest} is ${desc.mediaType}`);
}

/** Builds the image of a result snapshot (see the module comment). */
export async function buildImage(core: Core, opts: BuildImageOptions): Promise<BuiltImage> {
  const oci = opts.ociMediaTypes ?? true;
  const sde = opts.sourceDateEpoch;
  if (sde !== undefined && !(Number.isSafeInteger(sde) && sde >= 0)) {
    throw errInvalidArgument(`build image: SOURCE_DATE_EPOCH "${String(sde)}" is not a non-negative integer`);
  }
  const snapshotter = opts.snapshotter ?? core.defaultSnapshotter;
  const lease = opts.lease ?? exportLease(core);
  const store = core.content.withLease(lease);
  const all =
    opts.snapshot === undefined
      ? []
      : await snapshotLayers(core, opts.snapshot, {
          snapshotter,
          lease,
          dockerMediaTypes: !oci,
          ...(opts.compression
            ? { compression: opts.compression === 'uncompressed' ? 'none' : opts.compression }
            : {}),
          ...(opts.level !== undefined ? { level: opts.level } : {}),
          ...(opts.forceCompression ? { forceCompression: true } : {}),
          ...(sde !== undefined ? { sourceDateEpoch: sde } : {}),
          ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}),
          ...(opts.signal ? { signal: opts.signal } : {}),
          ...(opts.progress ? { progress: opts.progress } : {}),
        });
  const layers = keptLayers(opts.config.history ?? [], all);
  const fallback = formatTime(sde !== undefined ? new Date(sde * 1000) : (opts.now?.() ?? new Date()));
  const src = opts.config;
  const history = normalizeHistory(src.history ?? [], all, fallback, sde);
  // As BuildKit: the image was created when its last history entry was (SOURCE_DATE_EPOCH, if set).
  const created = sde === undefined ? (history.at(-1)?.created ?? fallback) : fallback;
  const diffIDs = layers.map((l) => l.diffID);
  // `created` first, then the frontend's fields in their order, then rootfs and history.
  const { created: _created, rootfs: _rootfs, history: _history, ...rest } = src;
  const config: ImageConfig = {
    created,
    ...rest,
    rootfs: { type: 'layers', diff_ids: diffIDs },
    history,
  };
  const configBytes = encodeJson(config);
  const configDesc: Descriptor = {
    mediaType: oci ? MediaType.OciConfig : MediaType.DockerConfig,
    digest: sha256(configBytes),
    size: configBytes.byteLength,
  };
  await putBlob(store, configDesc, configBytes);
  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: oci ? MediaType.OciManifest : MediaType.DockerManifest,
    config: configDesc,
    layers: layers.map((l) => ({
      mediaType: layerMediaType(l.descriptor, oci),
      digest: l.descriptor.digest,
      size: l.descriptor.size,
    })),
  };
  const manifestBytes = encodeJson(manifest);
  const manifestDesc: Descriptor = {
    mediaType: manifest.mediaType!,
    digest: sha256(manifestBytes),
    size: manifestBytes.byteLength,
  };
  const labels: Labels = { [`${LABEL_GC_REF_CONTENT}.config`]: configDesc.digest };
  if (opts.compressOnPush && manifest.layers.some((l) => blobCompression(l.mediaType) === 'none')) {
    labels[LABEL_PUSH_COMPRESSION] = 'gzip';
  }
  manifest.layers.forEach((l, i) => {
    labels[`${LABEL_GC_REF_CONTENT}.l.${i}`] = l.digest;
  });
  await putBlob(store, manifestDesc, manifestBytes, labels);
  return {
    manifest,
    manifestDesc,
    manifestBytes,
    config,
    configDesc,
    configBytes,
    layers,
    chainID: chainIDs(diffIDs).at(-1),
    snapshot: opts.snapshot,
    snapshotter,
    lease,
    fromClock: sde === undefined && (created === fallback || history.some((h) => h.created === fallback)),
  };
}
