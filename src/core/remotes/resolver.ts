/**
 * Resolver: turns a reference into the descriptor of its manifest or index
 * (`HEAD /v2/<name>/manifests/<tag|digest>` with an Accept for OCI
 * manifest+index and Docker manifest v2+list), and hands out a Fetcher or a
 * Pusher for the reference's repository. If HEAD lacks Docker-Content-Digest
 * or Content-Length (allowed by the spec), or the content type is not a
 * known manifest type, it GETs the manifest and computes the digest. A
 * reference with a digest must resolve to that digest (DataLoss otherwise).
 * One Resolver (and its Authorizer and HttpClient, i.e. its keep-alive
 * connections and TLS files) can be shared by many pulls and pushes.
 */
import { sha256 } from '../digest.ts';
import { errDataLoss, KilnError } from '../errors.ts';
import { parseReference, type Reference, referenceObject } from '../images/reference.ts';
import {
  type Descriptor,
  detectManifestMediaType,
  isIndexMediaType,
  isManifestMediaType,
} from '../images/types.ts';
import { Fetcher, MANIFEST_ACCEPT, MAX_MANIFEST_SIZE } from './fetcher.ts';
import { HttpClient } from './http.ts';
import { Pusher } from './pusher.ts';
import { type RemoteOptions, RegistryTransport } from './transport.ts';

export interface Resolved {
  ref: Reference;
  descriptor: Descriptor;
}

export class Resolver {
  readonly options: RemoteOptions;
  /** Connections and TLS files shared by every transport of this resolver. */
  readonly http: HttpClient;

  constructor(options: RemoteOptions = {}) {
    this.options = options;
    this.http = options.http ?? new HttpClient(options.certsDirs ? { certsDirs: options.certsDirs } : {});
  }

  #transport(ref: Reference, push: boolean): RegistryTransport {
    return new RegistryTransport(ref, push, this.options, this.http);
  }

  #ref(ref: string | Reference): Reference {
    return typeof ref === 'string' ? parseReference(ref) : ref;
  }

  async resolve(refIn: string | Reference, options: { signal?: AbortSignal } = {}): Promise<Resolved> {
    const ref = this.#ref(refIn);
    const t = this.#transport(ref, false);
    const path = `manifests/${referenceObject(ref)}`;
    const action = 'resolve';
    const head = await t.request({
      method: 'HEAD',
      path,
      headers: { accept: MANIFEST_ACCEPT },
      expect: [200],
      action,
      signal: options.signal,
    });
    const digest = head.headers.get('docker-content-digest');
    const length = head.headers.get('content-length');
    const type = (head.headers.get('content-type') ?? '').split(';')[0]!.trim();
    let descriptor: Descriptor;
    if (
      digest &&
      length &&
      /^[0-9]+$/.test(length) &&
      (isManifestMediaType(type) || isIndexMediaType(type)) &&
      (ref.digest === undefined || digest === ref.digest)
    ) {
      descriptor = { mediaType: type, digest: digest as Descriptor['digest'], size: Number(length) };
    } else {
      const res = await t.request({
        method: 'GET',
        path,
        headers: { accept: MANIFEST_ACCEPT },
        expect: [200],
        action,
        signal: options.signal,
      });
      const bytes = await res.bytes(MAX_MANIFEST_SIZE + 1);
      if (bytes.byteLength > MAX_MANIFEST_SIZE) {
        throw new KilnError(
          'ResourceExhausted',
          `resolve "${ref.full}": manifest of ${bytes.byteLength} bytes is too large`,
        );
      }
      const got = sha256(bytes);
      if (ref.digest?.startsWith('sha256:') && got !== ref.digest) {
        throw errDataLoss(`resolve "${ref.full}": registry returned a manifest with digest "${got}"`);
      }
      const resType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
      const mediaType =
        isManifestMediaType(resType) || isIndexMediaType(resType) ? resType : detectManifestMediaType(bytes);
      descriptor = { mediaType, digest: ref.digest ?? got, size: bytes.byteLength };
    }
    return { ref, descriptor };
  }

  fetcher(ref: string | Reference): Fetcher {
    return new Fetcher(this.#transport(this.#ref(ref), false));
  }

  pusher(ref: string | Reference): Pusher {
    return new Pusher(this.#transport(this.#ref(ref), true));
  }
}
