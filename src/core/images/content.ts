/**
 * Private helpers of src/core/images shared by pull, push, unpack, import and
 * export: the containerd label names Kiln writes on content and snapshots,
 * a concurrency limiter, whole-blob reads from a content store, writing a
 * small blob with labels (an existing blob gets the labels merged instead),
 * the children of a manifest or index, and the descriptors of an image
 * reachable from its target in the store (post-order: children first).
 * Not part of the public entry (./index.ts).
 */
import type { ContentStore, Labels } from '../content/types.ts';
import { type Digest, sha256 } from '../digest.ts';
import { errFailedPrecondition, errInvalidArgument, isKilnError, KilnError } from '../errors.ts';
import {
  type Descriptor,
  isIndexMediaType,
  isManifestMediaType,
  MediaType,
  parseIndex,
  parseManifest,
} from './types.ts';

export const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';
export const LABEL_GC_REF_CONTENT = 'containerd.io/gc.ref.content';
export const LABEL_GC_REF_SNAPSHOT = 'containerd.io/gc.ref.snapshot';
export const LABEL_DISTRIBUTION_SOURCE = 'containerd.io/distribution.source';
export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
/** Image name annotation containerd writes into OCI layout indexes. */
export const ANNOTATION_IMAGE_NAME = 'io.containerd.image.name';

/** Largest manifest, index or config read into memory. */
export const MAX_JSON_BLOB = 4 << 20;

/** Returns `run(fn)`, which runs at most `n` functions at a time, in call order. */
export function limiter(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  if (!(n >= 1)) throw errInvalidArgument(`concurrency ${n} must be at least 1`);
  let active = 0;
  const queue: (() => void)[] = [];
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    if (active >= n) await new Promise<void>((r) => queue.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      queue.shift()?.();
    }
  };
}

/** Runs all tasks to the end (even when one fails), then throws the first error, if any. */
export async function settleAll<T>(tasks: Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(tasks);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

export async function readAll(store: Pick<ContentStore, 'read'>, digest: Digest): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of store.read(digest)) parts.push(c);
  return Buffer.concat(parts);
}

/**
 * Reads a manifest, index or config blob, checked against its digest;
 * refuses blobs over MAX_JSON_BLOB. Through the store's readBlob, so a
 * process reading the same manifest again (every build, in kilnd) gets it
 * from memory.
 */
export async function readJsonBlob(store: ContentStore, desc: Descriptor, what: string): Promise<Uint8Array> {
  if (desc.size > MAX_JSON_BLOB) {
    throw new KilnError('ResourceExhausted', `read ${what} ${desc.digest}: size ${desc.size} is too large`);
  }
  try {
    return await store.readBlob(desc.digest, MAX_JSON_BLOB);
  } catch (err) {
    if (isKilnError(err, 'NotFound')) {
      throw errFailedPrecondition(`read ${what} ${desc.digest}: content not found in the store`, err);
    }
    if (isKilnError(err, 'ResourceExhausted')) {
      throw new KilnError('ResourceExhausted', `read ${what} ${desc.digest}: the blob is too large`, {
        cause: err,
      });
    }
    if (isKilnError(err, 'DataLoss')) {
      throw new KilnError('DataLoss', `read ${what} ${desc.digest}: stored bytes do not match the digest`, {
        cause: err,
      });
    }
    throw err;
  }
}

/** Adds labels to an existing blob (values of `merge` keys are comma-joined sets). */
export async function addLabels(
  store: ContentStore,
  digest: Digest,
  labels: Labels,
  merge: ReadonlySet<string> = new Set(),
): Promise<void> {
  const keys = Object.keys(labels);
  if (keys.length === 0) return;
  const info = await store.info(digest);
  const next: Labels = {};
  for (const k of keys) {
    let v = labels[k]!;
    const cur = info.labels[k];
    if (merge.has(k) && cur) {
      const set = new Set(cur.split(','));
      set.add(v);
      v = [...set].sort().join(',');
    }
    if (cur !== v) next[k] = v;
  }
  if (Object.keys(next).length === 0) return;
  await store.update(
    { digest, labels: next },
    Object.keys(next).map((k) => `labels.${k}`),
  );
}

/**
 * Stores `bytes` as the blob `desc` with `labels`; if the namespace already
 * has it, the labels are added instead. Returns true when it was written.
 */
export async function writeBlob(
  store: ContentStore,
  desc: Descriptor,
  bytes: Uint8Array,
  labels: Labels = {},
  ref = `write-${desc.digest}`,
): Promise<boolean> {
  let w: Awaited<ReturnType<ContentStore['writer']>>;
  try {
    w = await store.writer({ ref, expected: desc.digest, total: desc.size });
  } catch (err) {
    if (!isKilnError(err, 'AlreadyExists')) throw err;
    await addLabels(store, desc.digest, labels);
    return false;
  }
  try {
    if (w.offset > 0) {
      await w.close();
      await store.abort(ref);
      return writeBlob(store, desc, bytes, labels, ref);
    }
    await w.write(bytes);
    await w.commit({ size: desc.size, expected: desc.digest, labels });
    return true;
  } catch (err) {
    if (isKilnError(err, 'AlreadyExists')) {
      await addLabels(store, desc.digest, labels);
      return false;
    }
    if (isKilnError(err, 'DataLoss')) await store.abort(ref).catch(() => {});
    throw err;
  } finally {
    await w.close().catch(() => {});
  }
}

/** The descriptor of JSON `bytes` with `mediaType`. */
export function jsonDescriptor(mediaType: string, bytes: Uint8Array): Descriptor {
  return { mediaType, digest: sha256(bytes), size: bytes.byteLength };
}

export function encodeJson(value: unknown): Uint8Array {
  return Buffer.from(JSON.stringify(value));
}

export function isManifestLike(desc: Pick<Descriptor, 'mediaType'>): boolean {
  return isManifestMediaType(desc.mediaType) || isIndexMediaType(desc.mediaType);
}

/** GC labels for a manifest's config and layers, containerd style. */
export function manifestGCLabels(config: Descriptor, layers: readonly Descriptor[]): Labels {
  const labels: Labels = { [`${LABEL_GC_REF_CONTENT}.config`]: config.digest };
  layers.forEach((l, i) => {
    labels[`${LABEL_GC_REF_CONTENT}.l.${i}`] = l.digest;
  });
  return labels;
}

/** GC labels for an index's manifests (`entries` maps position → descriptor). */
export function indexGCLabels(entries: Iterable<[number, Descriptor]>): Labels {
  const labels: Labels = {};
  for (const [i, d] of entries) labels[`${LABEL_GC_REF_CONTENT}.m.${i}`] = d.digest;
  return labels;
}

export interface ImageNode {
  desc: Descriptor;
  /** For manifests and indexes: their bytes. */
  bytes?: Uint8Array;
}

/**
 * Every descriptor reachable from `target` through indexes and manifests,
 * children before parents, each digest once. `selectIndex` may narrow an
 * index's manifests (default all); children that are not in the store make
 * FailedPrecondition naming them.
 */
export async function walkImage(
  store: ContentStore,
  target: Descriptor,
  selectIndex?: (manifests: readonly Descriptor[]) => Descriptor[],
): Promise<ImageNode[]> {
  const out: ImageNode[] = [];
  const seen = new Set<string>();
  const visit = async (desc: Descriptor, path: string): Promise<void> => {
    if (seen.has(desc.digest)) return;
    seen.add(desc.digest);
    if (isIndexMediaType(desc.mediaType)) {
      const bytes = await readJsonBlob(store, desc, `index ${path}`);
      const idx = parseIndex(bytes);
      const chosen = selectIndex ? selectIndex(idx.manifests) : idx.manifests;
      for (const m of chosen) {
        try {
          await visit(m, `${path} > ${m.digest}`);
        } catch (err) {
          if (!isKilnError(err, 'FailedPrecondition')) throw err;
          const p = m.platform ? ` (${m.platform.os}/${m.platform.architecture})` : '';
          throw errFailedPrecondition(
            `${err.message}; the index lists manifest ${m.digest}${p} that was not pulled: pull with --all-platforms or choose one platform`,
            err,
          );
        }
      }
      out.push({ desc, bytes });
    } else if (isManifestMediaType(desc.mediaType)) {
      const bytes = await readJsonBlob(store, desc, `manifest ${path}`);
      const m = parseManifest(bytes);
      for (const c of [m.config, ...m.layers]) {
        if (seen.has(c.digest)) continue;
        seen.add(c.digest);
        try {
          await store.info(c.digest);
        } catch (err) {
          if (!isKilnError(err, 'NotFound')) throw err;
          throw errFailedPrecondition(
            `image content ${c.digest} (${c.mediaType}) of manifest ${desc.digest} is not in the store`,
            err,
          );
        }
        out.push({ desc: c });
      }
      out.push({ desc, bytes });
    } else {
      out.push({ desc });
    }
  };
  await visit(target, target.digest);
  return out;
}

/** Layer media type for a compression detected from the first bytes of a blob. */
export function layerMediaTypeFor(head: Uint8Array): string {
  if (head[0] === 0x1f && head[1] === 0x8b) return MediaType.OciLayerGzip;
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd)
    return MediaType.OciLayerZstd;
  return MediaType.OciLayer;
}
