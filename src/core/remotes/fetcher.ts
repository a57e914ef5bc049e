/**
 * Fetcher: manifests and blobs of one repository by descriptor, verified.
 *
 * `fetch(desc)` streams the content; it throws DataLoss as soon as more
 * bytes than `desc.size` arrive, and after the last byte if the size or the
 * digest differ, so a consumer that commits only after the iteration ends
 * never keeps bad bytes. A blob download broken midway (connection reset,
 * premature end) is resumed with `Range: bytes=<received>-`; a server that
 * answers 200 instead of 206 is read from the start with the received
 * prefix skipped. Manifests (by digest) are fetched whole with an Accept of
 * their media type. `fetchToWriter` fills a content-store Writer, resuming
 * from the bytes it already holds; the writer's commit checks the digest.
 */
import { createHash, type Hash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Writer } from '../content/types.ts';
import { parseDigest } from '../digest.ts';
import { errDataLoss, KilnError } from '../errors.ts';
import type { Descriptor } from '../images/types.ts';
import { isIndexMediaType, isManifestMediaType, MediaType } from '../images/types.ts';
import type { RegistryTransport } from './transport.ts';

export const MANIFEST_ACCEPT = [
  MediaType.OciManifest,
  MediaType.OciIndex,
  MediaType.DockerManifest,
  MediaType.DockerManifestList,
].join(', ');

/** Largest manifest read into memory (4 MiB, as registries commonly enforce). */
export const MAX_MANIFEST_SIZE = 4 << 20;

export interface FetchOptions {
  signal?: AbortSignal;
  /** Start at this byte (blobs only); the digest is then not checked here. */
  offset?: number;
  /**
   * Hash the bytes and check the digest (default true). A caller that writes into a
   * content store, whose commit checks size and digest anyway, turns it off.
   */
  verify?: boolean;
}

function newHash(desc: Descriptor): Hash {
  return createHash(parseDigest(desc.digest).algorithm);
}

function isManifestLike(desc: Descriptor): boolean {
  return isManifestMediaType(desc.mediaType) || isIndexMediaType(desc.mediaType);
}

export class Fetcher {
  readonly transport: RegistryTransport;

  constructor(transport: RegistryTransport) {
    this.transport = transport;
  }

  #action(desc: Descriptor): string {
    return `fetch ${isManifestLike(desc) ? 'manifest' : 'blob'} ${desc.digest}`;
  }

  /** Streams the content of `desc`, verifying size and digest (see module comment). */
  async *fetch(desc: Descriptor, options: FetchOptions = {}): AsyncGenerator<Uint8Array> {
    const manifest = isManifestLike(desc);
    const start = options.offset ?? 0;
    if (start < 0 || start > desc.size) {
      throw new KilnError(
        'InvalidArgument',
        `${this.#action(desc)}: offset ${start} is outside 0..${desc.size}`,
      );
    }
    const hash = start === 0 && options.verify !== false ? newHash(desc) : undefined;
    let pos = start;
    let resumes = 0;
    const action = this.#action(desc);
    for (;;) {
      const res = await this.transport.request({
        method: 'GET',
        path: `${manifest ? 'manifests' : 'blobs'}/${desc.digest}`,
        headers: {
          ...(manifest ? { accept: `${desc.mediaType}, ${MANIFEST_ACCEPT}` } : {}),
          ...(pos > 0 ? { range: `bytes=${pos}-` } : {}),
        },
        expect: pos > 0 ? [200, 206] : [200],
        action,
        signal: options.signal,
      });
      let skip = 0;
      if (pos > 0 && res.status === 206) {
        const cr = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '');
        if (!cr || Number(cr[1]) !== pos) {
          await res.body?.cancel();
          throw errDataLoss(
            `${action} for "${this.transport.ref.full}": asked for bytes ${pos}- but got Content-Range ` +
              `"${res.headers.get('content-range') ?? ''}"`,
          );
        }
      } else if (pos > 0) {
        skip = pos; // 200: the whole blob again
      }
      const body = res.body;
      let broken: unknown;
      if (body) {
        const reader = body.getReader();
        try {
          for (;;) {
            let chunk: Uint8Array;
            try {
              const r = await reader.read();
              if (r.done) break;
              chunk = r.value;
            } catch (err) {
              broken = err;
              break;
            }
            if (skip > 0) {
              const n = Math.min(skip, chunk.byteLength);
              skip -= n;
              chunk = chunk.subarray(n);
              if (chunk.byteLength === 0) continue;
            }
            if (pos + chunk.byteLength > desc.size) {
              throw errDataLoss(
                `${action} for "${this.transport.ref.full}": got more than the expected ${desc.size} bytes`,
              );
            }
            pos += chunk.byteLength;
            hash?.update(chunk);
            yield chunk;
          }
        } finally {
          reader.releaseLock();
          if (broken === undefined) await body.cancel().catch(() => {});
        }
      }
      if (pos === desc.size && broken === undefined) break;
      options.signal?.throwIfAborted();
      if (pos === desc.size) break; // all bytes arrived; the connection broke only after them
      if (manifest || resumes >= this.transport.options.maxResumes) {
        const why =
          broken instanceof Error
            ? `${broken.message}${broken.cause ? ` (${String(broken.cause)})` : ''}`
            : 'premature end of body';
        throw new KilnError(
          broken === undefined ? 'DataLoss' : 'Unavailable',
          `${action} for "${this.transport.ref.full}": got ${pos} of ${desc.size} bytes: ${why}` +
            (manifest ? '' : `; gave up after ${resumes} resumptions`),
          { cause: broken },
        );
      }
      resumes++;
      await sleep(this.transport.options.backoffMs * 2 ** (resumes - 1), undefined, {
        signal: options.signal,
      });
    }
    if (hash) {
      const got = `${parseDigest(desc.digest).algorithm}:${hash.digest('hex')}`;
      if (got !== desc.digest) {
        throw errDataLoss(
          `${action} for "${this.transport.ref.full}": content has digest "${got}", want "${desc.digest}"`,
        );
      }
    }
  }

  /** The whole (verified) content in memory; refuses manifests over MAX_MANIFEST_SIZE and blobs over `maxSize`. */
  async fetchBytes(
    desc: Descriptor,
    options: { signal?: AbortSignal; maxSize?: number } = {},
  ): Promise<Uint8Array> {
    const max = options.maxSize ?? (isManifestLike(desc) ? MAX_MANIFEST_SIZE : 64 << 20);
    if (desc.size > max) {
      throw new KilnError(
        'ResourceExhausted',
        `${this.#action(desc)} for "${this.transport.ref.full}": size ${desc.size} is over the limit ${max}`,
      );
    }
    const out = new Uint8Array(desc.size);
    let n = 0;
    for await (const chunk of this.fetch(desc, { signal: options.signal })) {
      out.set(chunk, n);
      n += chunk.byteLength;
    }
    return out;
  }

  /**
   * Writes `desc` into a content-store writer, continuing after the bytes it
   * already has, and commits it (size and digest checked by the store).
   */
  async fetchToWriter(
    desc: Descriptor,
    writer: Writer,
    options: { signal?: AbortSignal } = {},
  ): Promise<void> {
    const offset = isManifestLike(desc) || writer.offset > desc.size ? 0 : writer.offset;
    if (offset !== writer.offset) {
      throw new KilnError(
        'FailedPrecondition',
        `${this.#action(desc)}: writer "${writer.ref}" holds ${writer.offset} bytes; abort it to restart`,
      );
    }
    for await (const chunk of this.fetch(desc, { offset, signal: options.signal })) await writer.write(chunk);
    await writer.commit({ size: desc.size, expected: desc.digest });
  }
}
