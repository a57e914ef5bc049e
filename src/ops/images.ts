/**
 * The image store adapter for image sources: `StoreImageResolver` resolves a
 * reference to a committed snapshot of its root filesystem through the core's
 * image store, pull and unpack (src/core/images).
 *
 * - The image record named by the normalized reference is used when present
 *   (resolve mode `local` or default); otherwise (or with mode `pull`) the
 *   image is pulled from its registry.
 * - An index target is narrowed to the manifest for the op's platform (the
 *   host's when absent).
 * - The manifest is unpacked (existing chain snapshots are reused, so an
 *   unpacked image costs a few stats) and the top chain ID is the snapshot
 *   name (`sha256:<chainid>`); the manifest digest identifies the image in
 *   cache keys.
 */
import { readAll } from '../core/images/content.ts';
import { selectManifest } from '../core/images/platform.ts';
import { type PullOptions, pull } from '../core/images/pull.ts';
import { parseReference } from '../core/images/reference.ts';
import {
  type Descriptor,
  type Platform as OciPlatform,
  parseImageConfig,
  parseIndex,
  parseManifest,
} from '../core/images/types.ts';
import { unpack } from '../core/images/unpack.ts';
import { errNotFound, isKilnError } from '../core/errors.ts';
import type { Core } from '../core/metadata/index.ts';
import type { Platform } from '../gen/kiln/llb/v1/llb_pb.ts';
import type { ImageResolver, ResolvedImage } from './env.ts';

const INDEX_TYPES = new Set([
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
]);

function toOci(p: Platform | undefined): OciPlatform | undefined {
  if (!p?.os || !p.architecture) return undefined;
  return { os: p.os, architecture: p.architecture, ...(p.variant ? { variant: p.variant } : {}) };
}

export interface StoreImageResolverOptions {
  /** `pull`: always ask the registry; `local`: never; default: local first. */
  mode?: 'pull' | 'local' | 'default';
  /** Passed to pull (registry options, mirrors). */
  pull?: Omit<PullOptions, 'platform' | 'signal'>;
}

export class StoreImageResolver implements ImageResolver {
  readonly #core: Core;
  readonly #opts: StoreImageResolverOptions;

  constructor(core: Core, opts: StoreImageResolverOptions = {}) {
    this.#core = core;
    this.#opts = opts;
  }

  async resolve(ref: string, platform: Platform | undefined, signal: AbortSignal): Promise<ResolvedImage> {
    const want = toOci(platform);
    const name = parseReference(ref).full;
    const mode = this.#opts.mode ?? 'default';
    let target: Descriptor | undefined;
    if (mode !== 'pull') {
      try {
        target = this.#core.images.get(name).target;
      } catch (err) {
        if (!isKilnError(err, 'NotFound')) throw err;
        if (mode === 'local') throw errNotFound(`resolve image "${ref}": not in the local image store`, err);
      }
    }
    if (!target) {
      const res = await pull(this.#core, ref, {
        ...this.#opts.pull,
        ...(want ? { platform: want } : {}),
        signal,
      });
      target = res.target;
    }
    let manifestDesc = target;
    if (INDEX_TYPES.has(target.mediaType)) {
      const index = parseIndex(await readAll(this.#core.content, target.digest));
      const picked = selectManifest(index.manifests, want);
      if (!picked) throw errNotFound(`resolve image "${ref}": no manifest for the requested platform`);
      manifestDesc = picked;
    }
    const manifest = parseManifest(await readAll(this.#core.content, manifestDesc.digest));
    const config = parseImageConfig(await readAll(this.#core.content, manifest.config.digest));
    const unpacked = await unpack(this.#core, manifestDesc, { signal });
    return {
      digest: manifestDesc.digest,
      config: config.config,
      topChainSnapshot: unpacked.chainID ?? '',
    };
  }
}
