/**
 * Whole small blobs (manifests, indexes, configs) from any content store:
 * through its `readBlob` when it has one (which may answer from memory), else
 * streamed with `read` and checked against the digest here. Same errors
 * either way: NotFound, ResourceExhausted over `maxSize`, DataLoss when the
 * bytes do not match the digest.
 */
import { type Digest, sha256 } from '../digest.ts';
import { errDataLoss, KilnError } from '../errors.ts';
import type { ContentStore } from './types.ts';

export function readWholeBlob(
  store: Pick<ContentStore, 'read' | 'readBlob'>,
  digest: Digest,
  maxSize: number,
): Promise<Uint8Array> {
  return store.readBlob ? store.readBlob(digest, maxSize) : streamVerified(store, digest, maxSize);
}

/** `read` whole, refusing more than `maxSize` bytes, then the digest check. */
export async function streamVerified(
  store: Pick<ContentStore, 'read'>,
  digest: Digest,
  maxSize: number,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const c of store.read(digest)) {
    size += c.byteLength;
    if (size > maxSize) {
      throw new KilnError(
        'ResourceExhausted',
        `read of content "${digest}": size over the limit of ${maxSize} bytes`,
      );
    }
    parts.push(c);
  }
  const bytes = Buffer.concat(parts);
  if (sha256(bytes) !== digest) {
    throw errDataLoss(`read of content "${digest}": stored bytes do not match the digest`);
  }
  return bytes;
}
