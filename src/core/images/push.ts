/**
 * Push: an image from the namespace's store to a registry reference.
 *
 * The image (a name in the image store, or a target descriptor) is walked
 * from its target: an index and all its manifests (or, with `platform`, only
 * the matching manifest, which is then pushed as the target), each manifest's
 * config and layers. Every child must be in the content store
 * (FailedPrecondition naming it otherwise). Then:
 *
 * 1. blobs (configs and layers), at most `concurrency` (default 5) at a time
 *    (../remotes/pusher.ts): HEAD first, skipped when the registry has it;
 *    else a cross-repository mount from each repository of the same registry
 *    the blob came from (labels `containerd.io/distribution.source.<host>`
 *    written by pull); else an upload: monolithic (one PUT) for blobs up to
 *    1 MiB, else PATCH chunks of up to `chunkSize` (default 8 MiB) and a
 *    closing PUT; content is read from the store only when an upload is
 *    needed;
 * 2. manifests below the target, by digest (skipped when present);
 * 3. the target, under the reference's tag (or by digest when the reference
 *    has only a digest).
 *
 * Layer compression (`layerCompression`; default: 'gzip' when the target
 * carries the label `kiln.dev/push.compression` = gzip, which the image
 * exporter writes on images it stores with uncompressed layers, else
 * 'keep'): with 'gzip', before step 1, every uncompressed tar layer
 * (`…layer.v1.tar`, `…rootfs.diff.tar`) of the target's manifests is
 * compressed to gzip (level 6, ./convert.ts), as `docker push` does; layers
 * in parallel, at most `compressConcurrency` (default: the CPU count) at a
 * time. The gzip blob is stored with `containerd.io/uncompressed` = the
 * layer's digest and linked from the uncompressed blob by the GC label
 * `containerd.io/gc.ref.content.kiln.push.gzip`, so a later push reuses it
 * and GC keeps it while the image exists. The manifests (and an index above
 * them) are rewritten (layer mediaType, digest and size; everything else,
 * config and diff IDs included, unchanged), stored with their GC labels and
 * linked from the originals by the same label; the rewritten target is the
 * one pushed (PushResult.target). The local image record is not changed.
 * A reference with a digest is always pushed as stored.
 *
 * Blob content is read from the store and checked against its digest by the
 * pusher before the upload completes. After a successful push, blobs get the
 * distribution-source label of the destination, so a later push elsewhere on
 * that registry can mount them. Progress: one event per blob and manifest.
 */
import { availableParallelism } from 'node:os';
import type { ContentStore, Labels } from '../content/types.ts';
import type { Digest } from '../digest.ts';
import { errInvalidArgument, errNotFound, isKilnError } from '../errors.ts';
import type { Core, Image } from '../metadata/index.ts';
import type { PushResult as BlobPushResult } from '../remotes/pusher.ts';
import { Resolver } from '../remotes/resolver.ts';
import type { RemoteOptions } from '../remotes/transport.ts';
import {
  addLabels,
  encodeJson,
  indexGCLabels,
  isManifestLike,
  jsonDescriptor,
  LABEL_DISTRIBUTION_SOURCE,
  LABEL_GC_REF_CONTENT,
  limiter,
  manifestGCLabels,
  readAll,
  readJsonBlob,
  settleAll,
  walkImage,
  writeBlob,
} from './content.ts';
import { blobCompression, compressedMediaType, recompressBlob } from './convert.ts';
import { formatPlatform, selectManifest } from './platform.ts';
import { parseReference, type Reference } from './reference.ts';
import {
  type Descriptor,
  isIndexMediaType,
  isManifestMediaType,
  type Platform,
  parseIndex,
} from './types.ts';

export interface PushProgress {
  digest: Digest;
  kind: 'blob' | 'manifest';
  status: 'pushing' | 'exists' | 'mounted' | 'uploaded' | 'done';
  total: number;
}

/** Label on a target manifest: compress its uncompressed layers when pushing (value: gzip). */
export const LABEL_PUSH_COMPRESSION = 'kiln.dev/push.compression';
/** Label on an uncompressed layer, manifest or index: its gzip form made for a push (a GC reference). */
export const LABEL_PUSH_GZIP = `${LABEL_GC_REF_CONTENT}.kiln.push.gzip`;

export interface PushOptions {
  /** 'gzip': compress uncompressed layers; 'keep': push as stored; default: as the target's label asks. */
  layerCompression?: 'gzip' | 'keep';
  /** Layers compressed at once (default: the CPU count). */
  compressConcurrency?: number;
  /** Push only this platform's manifest of an index (as the target). */
  platform?: Platform;
  /** Blobs pushed at once (default 5, as docker's max-concurrent-uploads). */
  concurrency?: number;
  /** Size of PATCH chunks (default 8 MiB: reading and sending interleave, memory stays small). */
  chunkSize?: number;
  remote?: RemoteOptions;
  resolver?: Resolver;
  progress?: (p: PushProgress) => void;
  signal?: AbortSignal;
}

export interface PushResult {
  ref: Reference;
  target: Descriptor;
  blobs: { digest: Digest; size: number; result: BlobPushResult }[];
  manifests: Digest[];
}

const DEFAULT_CHUNK = 8 << 20;
const SMALL_BLOB = 1 << 20;

/** Image `image` of the store: by exact name, else by its normalized reference (`busybox` → `docker.io/library/busybox:latest`). */
export function resolveImage(core: Core, image: string): Image {
  try {
    return core.images.get(image);
  } catch (err) {
    if (!isKilnError(err, 'NotFound')) throw err;
    let full: string | undefined;
    try {
      full = parseReference(image).full;
    } catch {
      throw err;
    }
    if (full === image) throw err;
    try {
      return core.images.get(full);
    } catch {
      throw errNotFound(`image "${image}" not found in namespace "${core.namespace}" (nor "${full}")`);
    }
  }
}

/** The target descriptor of image `image` (see resolveImage). */
export function imageTarget(core: Core, image: string): Descriptor {
  return resolveImage(core, image).target as Descriptor;
}

async function wantsGzip(
  core: Core,
  target: Descriptor,
  mode: PushOptions['layerCompression'],
): Promise<boolean> {
  if (mode !== undefined) return mode === 'gzip';
  try {
    return (await core.content.info(target.digest)).labels[LABEL_PUSH_COMPRESSION] === 'gzip';
  } catch (err) {
    if (isKilnError(err, 'NotFound')) return false; // walkImage reports it
    throw err;
  }
}

export interface GzipContext {
  limit: <T>(fn: () => Promise<T>) => Promise<T>;
  /** Layer digest → its gzip form, once per push. */
  memo: Map<Digest, Promise<{ digest: Digest; size: number }>>;
  signal?: AbortSignal;
}

/** The gzip form recorded on blob `digest` (label LABEL_PUSH_GZIP), if both are in the store. */
async function recordedGzip(
  store: ContentStore,
  digest: Digest,
): Promise<{ digest: Digest; size: number } | undefined> {
  try {
    const to = (await store.info(digest)).labels[LABEL_PUSH_GZIP] as Digest | undefined;
    if (!to) return undefined;
    return { digest: to, size: (await store.info(to)).size };
  } catch (err) {
    if (isKilnError(err, 'NotFound')) return undefined;
    throw err;
  }
}

/** The gzip form of uncompressed layer `layer`: recorded, else made and recorded. */
function gzipLayer(
  store: ContentStore,
  layer: Descriptor,
  ctx: GzipContext,
): Promise<{ digest: Digest; size: number }> {
  let p = ctx.memo.get(layer.digest);
  if (!p) {
    p = ctx.limit(async () => {
      const known = await recordedGzip(store, layer.digest);
      if (known) return known;
      const out = await recompressBlob(store, layer.digest, 'gzip', {
        diffID: layer.digest,
        from: 'none',
        ...(ctx.signal ? { signal: ctx.signal } : {}),
      });
      await addLabels(store, layer.digest, { [LABEL_PUSH_GZIP]: out.digest });
      return out;
    });
    ctx.memo.set(layer.digest, p);
  }
  return p;
}

/** Stores rewritten JSON `value` of `orig`'s media type with `gcLabels` and links it from `orig`. */
async function storeRewritten(
  store: ContentStore,
  orig: Descriptor,
  value: unknown,
  gcLabels: Labels,
): Promise<Descriptor> {
  const bytes = encodeJson(value);
  const desc = jsonDescriptor(orig.mediaType, bytes);
  await writeBlob(store, desc, bytes, gcLabels);
  await addLabels(store, orig.digest, { [LABEL_PUSH_GZIP]: desc.digest });
  return { ...orig, digest: desc.digest, size: desc.size };
}

/**
 * `target` with its uncompressed layers compressed to gzip (see the module
 * comment); `target` itself when nothing needs it. Exported for tests.
 */
export async function gzipForPush(
  store: ContentStore,
  target: Descriptor,
  ctx: GzipContext,
): Promise<Descriptor> {
  const known = await recordedGzip(store, target.digest);
  if (known) return { ...target, digest: known.digest, size: known.size };
  if (isIndexMediaType(target.mediaType)) {
    const bytes = await readJsonBlob(store, target, 'index');
    const raw = JSON.parse(Buffer.from(bytes).toString('utf8')) as { manifests: Descriptor[] };
    const children = await settleAll(raw.manifests.map((m) => gzipForPush(store, m, ctx)));
    if (children.every((c, i) => c.digest === raw.manifests[i]!.digest)) return target;
    raw.manifests = children;
    return storeRewritten(store, target, raw, indexGCLabels(children.entries()));
  }
  if (!isManifestMediaType(target.mediaType)) return target;
  const bytes = await readJsonBlob(store, target, 'manifest');
  const raw = JSON.parse(Buffer.from(bytes).toString('utf8')) as { config: Descriptor; layers: Descriptor[] };
  let changed = false;
  const layers = await settleAll(
    raw.layers.map(async (l) => {
      if (blobCompression(l.mediaType) !== 'none') return l;
      changed = true;
      const gz = await gzipLayer(store, l, ctx);
      return { ...l, mediaType: compressedMediaType(l.mediaType, 'gzip'), digest: gz.digest, size: gz.size };
    }),
  );
  if (!changed) return target;
  raw.layers = layers;
  return storeRewritten(store, target, raw, manifestGCLabels(raw.config, layers));
}

/** Pushes `image` (name or target) to `reference` (default: the image name). */
export async function push(
  core: Core,
  image: string | Descriptor,
  reference?: string | Reference,
  options: PushOptions = {},
): Promise<PushResult> {
  const refIn = reference ?? (typeof image === 'string' ? image : undefined);
  if (refIn === undefined)
    throw errInvalidArgument('push: a reference is required when pushing a descriptor');
  const ref = typeof refIn === 'string' ? parseReference(refIn) : refIn;
  let target = typeof image === 'string' ? imageTarget(core, image) : image;
  const resolver = options.resolver ?? new Resolver(options.remote ?? {});
  const pusher = resolver.pusher(ref);
  const signal = options.signal;
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK;

  if (options.platform && isIndexMediaType(target.mediaType)) {
    const idx = parseIndex(await readJsonBlob(core.content, target, 'index'));
    const m = selectManifest(idx.manifests, options.platform);
    if (!m) {
      throw errNotFound(
        `push "${ref.full}": no manifest for platform "${formatPlatform(options.platform)}" in index ${target.digest}`,
      );
    }
    target = m;
  }
  if (ref.digest !== undefined && ref.digest !== target.digest) {
    throw errInvalidArgument(
      `push to "${ref.full}": the image is ${target.digest}, not the reference's digest`,
    );
  }
  if (ref.digest === undefined && (await wantsGzip(core, target, options.layerCompression))) {
    target = await gzipForPush(core.content, target, {
      limit: limiter(Math.max(1, options.compressConcurrency ?? availableParallelism())),
      memo: new Map(),
      ...(signal ? { signal } : {}),
    });
  }
  const nodes = await walkImage(core.content, target);
  const blobs = nodes.filter((n) => !isManifestLike(n.desc));
  const manifests = nodes.filter((n) => isManifestLike(n.desc));
  const sourceKey = `${LABEL_DISTRIBUTION_SOURCE}.${ref.domain}`;
  const limit = limiter(options.concurrency ?? 5);
  const report = (desc: Descriptor, kind: PushProgress['kind'], status: PushProgress['status']): void =>
    options.progress?.({ digest: desc.digest, kind, status, total: desc.size });

  const inner = new AbortController();
  const onAbort = (): void => inner.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const results = await settleAll(
      blobs.map(({ desc }) =>
        limit(async () => {
          inner.signal.throwIfAborted();
          report(desc, 'blob', 'pushing');
          const info = await core.content.info(desc.digest);
          const mountFrom = (info.labels[sourceKey] ?? '').split(',').filter((r) => r && r !== ref.path);
          // Small blobs go in one PUT; larger ones are read lazily (only if the registry needs them)
          // and sent as PATCH chunks of up to chunkSize.
          const content =
            desc.size <= SMALL_BLOB
              ? await readAll(core.content, desc.digest)
              : core.content.read(desc.digest);
          const result = await pusher.pushBlob(desc, content, { mountFrom, chunkSize, signal: inner.signal });
          report(desc, 'blob', result);
          return { digest: desc.digest, size: desc.size, result };
        }).catch((err: unknown) => {
          inner.abort(err);
          throw err;
        }),
      ),
    );
    const pushed: Digest[] = [];
    for (const { desc, bytes } of manifests) {
      const isTarget = desc.digest === target.digest;
      report(desc, 'manifest', 'pushing');
      if (!isTarget && (await pusher.manifestExists(desc, signal))) {
        report(desc, 'manifest', 'exists');
        continue;
      }
      await pusher.pushManifest(
        desc,
        bytes!,
        isTarget && ref.tag !== undefined && !ref.digest ? ref.tag : undefined,
        signal,
      );
      pushed.push(desc.digest);
      report(desc, 'manifest', 'done');
    }
    for (const n of nodes) {
      await addLabels(core.content, n.desc.digest, { [sourceKey]: ref.path }, new Set([sourceKey])).catch(
        () => {},
      );
    }
    return { ref, target, blobs: results, manifests: pushed };
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}
