/**
 * Layer blob compression conversion inside one content store: the shared
 * code behind "compress uncompressed layers for push" (./push.ts) and the
 * exporter's reuse of a layer blob of another compression
 * (src/exporter/layers.ts).
 *
 * - `blobCompression(mediaType)` / `sniffCompression(head)`: gzip, zstd or
 *   none from a layer media type or from a blob's first bytes (gzip magic
 *   1f 8b, zstd frame magic 28 b5 2f fd, else none).
 * - `compressedMediaType(mediaType, to)`: the media type of the same layer
 *   under another compression, OCI (`…layer.v1.tar[+gzip|+zstd]`) or Docker
 *   schema 2 (`…rootfs.diff.tar[.gzip]`; zstd has no Docker type).
 * - `recompressBlob(store, digest, to, opts)`: streams the blob, decompresses
 *   it (by its bytes) and compresses it to `to` (gzip level 6 / zstd level 3
 *   by default, node:zlib, deterministic bytes), writing one new blob with
 *   `containerd.io/uncompressed` = `diffID` and `opts.labels`. One pass: the
 *   content store writer is the only hash of the output; the input is not
 *   re-hashed (the store verified it when it was committed). Returns the new
 *   blob's digest and size; a blob that already exists is success (its
 *   labels are merged).
 *
 * Limits: whole-blob streams only (no resumable conversion: an interrupted
 * one is aborted and starts over); one compression stream per blob (callers
 * run several blobs in parallel for more cores).
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import type { ContentStore, Labels } from '../content/types.ts';
import type { Digest } from '../digest.ts';
import { errInvalidArgument, isKilnError, wrap } from '../errors.ts';

export type BlobCompression = 'gzip' | 'zstd' | 'none';

/** Label on a layer blob naming the digest of its uncompressed tar (the diff ID). */
export const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';

const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';
const DOCKER_LAYER = 'application/vnd.docker.image.rootfs.diff.tar';

/** The compression a layer media type states, or undefined for a type that is not a tar layer. */
export function blobCompression(mediaType: string): BlobCompression | undefined {
  if (mediaType === OCI_LAYER || mediaType === DOCKER_LAYER) return 'none';
  if (mediaType === `${OCI_LAYER}+gzip` || mediaType === `${DOCKER_LAYER}.gzip`) return 'gzip';
  if (mediaType === `${OCI_LAYER}+zstd`) return 'zstd';
  if (mediaType.endsWith('+gzip') || mediaType.endsWith('.tar.gzip')) return 'gzip';
  if (mediaType.endsWith('+zstd')) return 'zstd';
  if (mediaType.endsWith('.tar')) return 'none';
  return undefined;
}

/** The compression of a blob from its first bytes (at least 4 for zstd). */
export function sniffCompression(head: Uint8Array): BlobCompression {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

/** The media type of a layer of `mediaType` once compressed to `to` (see the module comment). */
export function compressedMediaType(mediaType: string, to: BlobCompression): string {
  const docker = mediaType.startsWith(DOCKER_LAYER);
  if (!docker && !mediaType.startsWith(OCI_LAYER)) {
    throw errInvalidArgument(`convert layer: media type "${mediaType}" is not a tar layer`);
  }
  if (docker) {
    if (to === 'zstd') throw errInvalidArgument('convert layer: zstd has no Docker media type');
    return to === 'gzip' ? `${DOCKER_LAYER}.gzip` : DOCKER_LAYER;
  }
  return to === 'none' ? OCI_LAYER : `${OCI_LAYER}+${to}`;
}

/** The first bytes of a blob (up to 4). */
export async function blobHead(store: Pick<ContentStore, 'read'>, digest: Digest): Promise<Uint8Array> {
  for await (const c of store.read(digest, { start: 0, end: 4 })) return c;
  return new Uint8Array();
}

export interface RecompressOptions {
  /** The blob's diff ID (label `containerd.io/uncompressed` of the result). */
  diffID: Digest;
  /** gzip 0..9 (default 6), zstd 1..22 (default 3). */
  level?: number;
  /** The input's compression when known (else sniffed from its bytes). */
  from?: BlobCompression;
  /** Extra labels for the new blob. */
  labels?: Labels;
  signal?: AbortSignal;
}

function compressStream(to: BlobCompression, level: number | undefined): NodeJS.ReadWriteStream | undefined {
  if (to === 'gzip') {
    const l = level ?? 6;
    if (!(Number.isInteger(l) && l >= 0 && l <= 9))
      throw errInvalidArgument(`convert layer: gzip level ${l}`);
    return zlib.createGzip({ level: l, chunkSize: 256 << 10 });
  }
  if (to === 'zstd') {
    const l = level ?? 3;
    if (!(Number.isInteger(l) && l >= 1 && l <= 22))
      throw errInvalidArgument(`convert layer: zstd level ${l}`);
    return zlib.createZstdCompress({
      params: { [zlib.constants.ZSTD_c_compressionLevel]: l },
      chunkSize: 256 << 10,
    });
  }
  return undefined;
}

/** Recompresses blob `digest` to `to` (see the module comment). */
export async function recompressBlob(
  store: ContentStore,
  digest: Digest,
  to: BlobCompression,
  opts: RecompressOptions,
): Promise<{ digest: Digest; size: number }> {
  const action = `convert layer ${digest} to ${to}`;
  const from = opts.from ?? sniffCompression(await blobHead(store, digest));
  const stages: (NodeJS.ReadableStream | NodeJS.ReadWriteStream)[] = [
    Readable.from(store.read(digest), { objectMode: false }),
  ];
  if (from === 'gzip') stages.push(zlib.createGunzip({ chunkSize: 256 << 10 }));
  if (from === 'zstd') stages.push(zlib.createZstdDecompress({ chunkSize: 256 << 10 }));
  const c = compressStream(to, opts.level);
  if (c) stages.push(c);
  const ref = `convert-${digest.slice(7, 19)}-${to}-${randomBytes(4).toString('hex')}`;
  const w = await store.writer({ ref, ...(opts.signal ? { signal: opts.signal } : {}) });
  let committed = false;
  try {
    // pipeline's typed overloads do not cover a list of stages built at run time.
    const run = pipeline as unknown as (...streams: unknown[]) => Promise<void>;
    await run(...stages, async (src: AsyncIterable<Buffer>) => {
      for await (const chunk of src) await w.write(chunk);
    });
    const size = w.offset;
    const out = w.digest();
    const labels: Labels = { ...opts.labels, [LABEL_UNCOMPRESSED]: opts.diffID };
    try {
      await w.commit({ size, expected: out, labels });
    } catch (err) {
      if (!isKilnError(err, 'AlreadyExists')) throw err;
      await store.update(
        { digest: out, labels },
        Object.keys(labels).map((k) => `labels.${k}`),
      );
    }
    committed = true;
    return { digest: out, size };
  } catch (err) {
    throw wrap(err, action);
  } finally {
    if (!committed) {
      await w.close().catch(() => {});
      await store.abort(ref).catch(() => {});
    }
  }
}
