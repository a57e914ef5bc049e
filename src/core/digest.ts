/**
 * OCI digests (`algorithm:hex`). Only sha256 is produced; sha512 is accepted
 * when parsing so that foreign descriptors validate, but stores reject it.
 */
import { createHash, type Hash } from 'node:crypto';
import { errInvalidArgument } from './errors.ts';

/** A validated digest string such as `sha256:e3b0…`. */
export type Digest = `${string}:${string}`;

const DIGEST_RE = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;
const HEX_LEN: Record<string, number> = { sha256: 64, sha512: 128 };

export function parseDigest(value: string): { algorithm: string; hex: string; digest: Digest } {
  const m = DIGEST_RE.exec(value);
  if (!m) throw errInvalidArgument(`invalid digest "${value}"`);
  const [, algorithm, hex] = m as unknown as [string, string, string];
  const len = HEX_LEN[algorithm];
  if (len === undefined)
    throw errInvalidArgument(`unsupported digest algorithm "${algorithm}" in "${value}"`);
  if (hex.length !== len || !/^[a-f0-9]+$/.test(hex)) {
    throw errInvalidArgument(`invalid ${algorithm} digest "${value}": want ${len} lower-case hex characters`);
  }
  return { algorithm, hex, digest: value as Digest };
}

export function isDigest(value: string): value is Digest {
  try {
    parseDigest(value);
    return true;
  } catch {
    return false;
  }
}

export function sha256(data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Incremental sha256 digester. */
export class Digester {
  readonly #hash: Hash = createHash('sha256');
  #size = 0;

  update(chunk: Uint8Array): void {
    this.#hash.update(chunk);
    this.#size += chunk.byteLength;
  }

  get size(): number {
    return this.#size;
  }

  /** Final digest; the digester cannot be used afterwards. */
  digest(): Digest {
    return `sha256:${this.#hash.digest('hex')}`;
  }

  /** Digest so far, leaving the digester usable. */
  peek(): Digest {
    return `sha256:${this.#hash.copy().digest('hex')}`;
  }
}

export const EMPTY_SHA256: Digest = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
