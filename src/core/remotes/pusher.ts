/**
 * Pusher: blobs and manifests into one repository (distribution spec
 * "push"). `pushBlob`:
 *   1. HEAD /v2/<name>/blobs/<digest>: present → 'exists', nothing sent;
 *   2. for each `mountFrom` repository on the same registry,
 *      POST …/blobs/uploads/?mount=<digest>&from=<repo>: 201 → 'mounted'
 *      (a 202 opens an ordinary upload session, which is then used);
 *   3. upload: bytes up to `chunkSize` (default 16 MiB) go monolithically
 *      (POST, then PUT <location>?digest=… with the body); larger content or
 *      a stream goes in PATCH chunks with Content-Range, then an empty PUT.
 * Content is checked against the descriptor's size and sha256 before the
 * final PUT (DataLoss). `pushManifest` PUTs by tag or by digest and checks
 * the registry's Docker-Content-Digest. Limits: a failed chunk is not
 * resumed from the registry's upload offset; the whole push must be redone.
 */
import { Digester } from '../digest.ts';
import { errDataLoss, errInvalidArgument, KilnError } from '../errors.ts';
import type { Descriptor } from '../images/types.ts';
import { repositoryScope } from './auth.ts';
import type { HttpResponse } from './http.ts';
import type { RegistryTransport } from './transport.ts';

export type BlobSource = Uint8Array | AsyncIterable<Uint8Array>;
export type PushResult = 'exists' | 'mounted' | 'uploaded';

export interface PushBlobOptions {
  /** Repository paths on the same registry to try mounting from. */
  mountFrom?: string[];
  /** Upload chunk size; bytes no larger than this go in one request. */
  chunkSize?: number;
  signal?: AbortSignal;
}

const DEFAULT_CHUNK = 16 << 20;

export class Pusher {
  readonly transport: RegistryTransport;

  constructor(transport: RegistryTransport) {
    this.transport = transport;
  }

  get #ref(): string {
    return this.transport.ref.full;
  }

  async blobExists(desc: Descriptor, signal?: AbortSignal): Promise<boolean> {
    const res = await this.transport.request({
      method: 'HEAD',
      path: `blobs/${desc.digest}`,
      expect: [200, 404],
      action: `check blob ${desc.digest}`,
      signal,
    });
    return res.status === 200;
  }

  async manifestExists(desc: Descriptor, signal?: AbortSignal): Promise<boolean> {
    const res = await this.transport.request({
      method: 'HEAD',
      path: `manifests/${desc.digest}`,
      headers: { accept: desc.mediaType },
      expect: [200, 404],
      action: `check manifest ${desc.digest}`,
      signal,
    });
    return res.status === 200;
  }

  async pushBlob(desc: Descriptor, content: BlobSource, options: PushBlobOptions = {}): Promise<PushResult> {
    const { signal } = options;
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK;
    if (!(chunkSize > 0)) throw errInvalidArgument(`push blob: chunk size ${chunkSize} must be positive`);
    if (!desc.digest.startsWith('sha256:')) {
      throw new KilnError(
        'NotImplemented',
        `push blob "${desc.digest}" to "${this.#ref}": only sha256 is supported`,
      );
    }
    if (await this.blobExists(desc, signal)) return 'exists';

    let location: string | undefined;
    for (const from of options.mountFrom ?? []) {
      if (from === this.transport.ref.path) continue;
      const res = await this.transport.request({
        method: 'POST',
        path: 'blobs/uploads/',
        query: { mount: desc.digest, from },
        expect: [201, 202],
        action: `mount blob ${desc.digest} from "${from}"`,
        extraScopes: [repositoryScope(from, false)],
        signal,
      });
      res.discard();
      if (res.status === 201) return 'mounted';
      location = this.#location(res, 'mount');
      break;
    }
    if (location === undefined) {
      const res = await this.transport.request({
        method: 'POST',
        path: 'blobs/uploads/',
        expect: [202],
        action: `start upload of blob ${desc.digest}`,
        signal,
      });
      res.discard();
      location = this.#location(res, 'start upload');
    }

    const digester = new Digester();
    const check = (): void => {
      if (digester.size !== desc.size) {
        throw errDataLoss(
          `push blob ${desc.digest} to "${this.#ref}": content has ${digester.size} bytes, want ${desc.size}`,
        );
      }
      const got = digester.digest();
      if (got !== desc.digest) {
        throw errDataLoss(`push blob ${desc.digest} to "${this.#ref}": content has digest "${got}"`);
      }
    };

    if (content instanceof Uint8Array && content.byteLength <= chunkSize) {
      digester.update(content);
      check();
      await this.#finish(location, desc, content, signal);
      return 'uploaded';
    }

    let offset = 0;
    const sendChunk = async (chunk: Uint8Array): Promise<void> => {
      const res = await this.transport.request({
        method: 'PATCH',
        path: location!,
        headers: {
          'content-type': 'application/octet-stream',
          'content-range': `${offset}-${offset + chunk.byteLength - 1}`,
        },
        body: chunk,
        expect: [202],
        action: `upload blob ${desc.digest} bytes ${offset}-${offset + chunk.byteLength - 1}`,
        signal,
      });
      res.discard();
      location = this.#location(res, 'upload chunk');
      offset += chunk.byteLength;
    };
    const pending: Uint8Array[] = [];
    let pendingBytes = 0;
    const flush = async (): Promise<void> => {
      if (pendingBytes === 0) return;
      const buf = Buffer.concat(pending, pendingBytes);
      pending.length = 0;
      pendingBytes = 0;
      await sendChunk(buf);
    };
    const source: Iterable<Uint8Array> | AsyncIterable<Uint8Array> =
      content instanceof Uint8Array ? [content] : content;
    for await (const piece of source) {
      digester.update(piece);
      if (digester.size > desc.size) {
        throw errDataLoss(
          `push blob ${desc.digest} to "${this.#ref}": content is larger than ${desc.size} bytes`,
        );
      }
      let rest = piece;
      while (rest.byteLength > 0) {
        const take = Math.min(chunkSize - pendingBytes, rest.byteLength);
        pending.push(rest.slice(0, take)); // a copy: the source may reuse its buffer
        pendingBytes += take;
        rest = rest.subarray(take);
        if (pendingBytes === chunkSize) await flush();
      }
    }
    check(); // before the last chunk, so a bad blob is never completed
    await flush();
    await this.#finish(location, desc, undefined, signal);
    return 'uploaded';
  }

  async #finish(
    location: string,
    desc: Descriptor,
    body: Uint8Array | undefined,
    signal?: AbortSignal,
  ): Promise<void> {
    const res = await this.transport.request({
      method: 'PUT',
      path: location,
      query: { digest: desc.digest },
      headers: { 'content-type': 'application/octet-stream' },
      body: body ?? new Uint8Array(0),
      expect: [201, 204],
      action: `complete upload of blob ${desc.digest}`,
      signal,
    });
    res.discard();
    const got = res.headers.get('docker-content-digest');
    if (got && got !== desc.digest) {
      throw errDataLoss(`push blob ${desc.digest} to "${this.#ref}": registry stored digest "${got}"`);
    }
  }

  #location(res: HttpResponse, step: string): string {
    const loc = res.headers.get('location');
    if (!loc) {
      throw new KilnError(
        'Internal',
        `${step} for "${this.#ref}": registry sent HTTP ${res.status} without a Location`,
      );
    }
    return this.transport.url(loc).toString();
  }

  /** PUTs a manifest or index under `tag` (default: its digest). */
  async pushManifest(desc: Descriptor, bytes: Uint8Array, tag?: string, signal?: AbortSignal): Promise<void> {
    const d = new Digester();
    d.update(bytes);
    if (bytes.byteLength !== desc.size || d.digest() !== desc.digest) {
      throw errDataLoss(`push manifest ${desc.digest} to "${this.#ref}": bytes do not match the descriptor`);
    }
    const res = await this.transport.request({
      method: 'PUT',
      path: `manifests/${tag ?? desc.digest}`,
      headers: { 'content-type': desc.mediaType },
      body: bytes,
      expect: [201, 200, 204],
      action: `push manifest ${desc.digest}${tag ? ` as tag "${tag}"` : ''}`,
      signal,
    });
    res.discard();
    const got = res.headers.get('docker-content-digest');
    if (got && got !== desc.digest) {
      throw errDataLoss(`push manifest ${desc.digest} to "${this.#ref}": registry computed digest "${got}"`);
    }
  }
}
