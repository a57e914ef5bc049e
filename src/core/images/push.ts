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
 * Blob content is read from the store and checked against its digest by the
 * pusher before the upload completes. After a successful push, blobs get the
 * distribution-source label of the destination, so a later push elsewhere on
 * that registry can mount them. Progress: one event per blob and manifest.
 */
import type { Digest } from '../digest.ts';
import { errInvalidArgument, errNotFound, isKilnError } from '../errors.ts';
import type { Core, Image } from '../metadata/index.ts';
import type { PushResult as BlobPushResult } from '../remotes/pusher.ts';
import { Resolver } from '../remotes/resolver.ts';
import type { RemoteOptions } from '../remotes/transport.ts';
import {
  addLabels,
  isManifestLike,
  LABEL_DISTRIBUTION_SOURCE,
  limiter,
  readAll,
  readJsonBlob,
  settleAll,
  walkImage,
} from './content.ts';
import { formatPlatform, selectManifest } from './platform.ts';
import { parseReference, type Reference } from './reference.ts';
import { type Descriptor, isIndexMediaType, type Platform, parseIndex } from './types.ts';

export interface PushProgress {
  digest: Digest;
  kind: 'blob' | 'manifest';
  status: 'pushing' | 'exists' | 'mounted' | 'uploaded' | 'done';
  total: number;
}

export interface PushOptions {
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
