/**
 * Base images for `kiln build`: one resolver that answers both the
 * Dockerfile frontend (reference → manifest digest + image config) and the
 * worker's image sources (reference → unpacked top chain snapshot).
 *
 * Lookup order for a reference: a reference pinned by digest whose manifest
 * (or index) is already in the content store is used as is (the frontend
 * pins every FROM to the manifest it resolved, so the worker never asks the
 * registry again); else the image record named exactly as written, then by
 * its normalized name (`busybox` → `docker.io/library/busybox:latest`); else
 * the image is pulled from its registry (`pull` in src/core/images) unless
 * the mode is `local`. With mode `pull` the registry is always asked first.
 * An index is narrowed to the manifest of the wanted platform.
 *
 * Answers are memoised per (reference, platform) for the resolver's lifetime
 * (one build), so a build sees one consistent image per reference.
 */
import type { Digest } from '../core/digest.ts';
import { errNotFound, isKilnError, KilnError } from '../core/errors.ts';
import { readManifestAndConfig, unpack } from '../core/images/index.ts';
import { formatPlatform, hostPlatform, selectManifest } from '../core/images/platform.ts';
import { type PullOptions, type PullProgress, pull } from '../core/images/pull.ts';
import { parseReference } from '../core/images/reference.ts';
import {
  type Descriptor,
  type ImageConfig,
  isIndexMediaType,
  type Platform,
  parseIndex,
} from '../core/images/types.ts';
import type { Core } from '../core/metadata/index.ts';
import { readAll } from '../core/images/content.ts';
import type { Platform as LlbPlatform } from '../gen/kiln/llb/v1/llb_pb.ts';
import type { ImageResolver as OpsImageResolver, ResolvedImage as OpsResolvedImage } from '../ops/env.ts';

export interface BuildImageResolverOptions {
  /** `local`: never pull; `pull`: always ask the registry; default: local first. */
  mode?: 'local' | 'pull' | 'default';
  pull?: Omit<PullOptions, 'platform' | 'signal' | 'name'>;
}

interface Found {
  manifest: Descriptor;
  config: ImageConfig;
}

function toOci(p: LlbPlatform | Platform | undefined): Platform | undefined {
  if (!p?.os || !p.architecture) return undefined;
  return { os: p.os, architecture: p.architecture, ...(p.variant ? { variant: p.variant } : {}) };
}

export class BuildImageResolver implements OpsImageResolver {
  readonly #core: Core;
  readonly #opts: BuildImageResolverOptions;
  readonly #memo = new Map<string, Promise<Found>>();

  constructor(core: Core, opts: BuildImageResolverOptions = {}) {
    this.#core = core;
    this.#opts = opts;
  }

  /**
   * The frontend's resolver (`convertDockerfile({ imageResolver })`);
   * `progress` hears the blobs of a pull this lookup starts.
   */
  frontend(): (
    ref: string,
    platform: Platform,
    progress?: (p: PullProgress) => void,
  ) => Promise<{ digest: string; config: ImageConfig }> {
    return async (ref, platform, progress) => {
      const f = await this.#find(ref, platform, undefined, progress);
      return { digest: f.manifest.digest, config: f.config };
    };
  }

  /**
   * The frontend's lookup in the image store only (never a pull; an image
   * that is not there is an error), for the build memo's check
   * (./memo.ts). Outside `pull` mode its answers are the ones `frontend()`
   * and `resolve()` then give without looking again.
   */
  inStore(): (ref: string, platform: Platform) => Promise<{ digest: string }> {
    return async (ref, platform) => {
      const f = await this.#find(ref, platform, undefined, undefined, 'local');
      return { digest: f.manifest.digest };
    };
  }

  /** The worker's resolver: unpacks the image (existing snapshots are reused). */
  async resolve(
    ref: string,
    platform: LlbPlatform | undefined,
    signal: AbortSignal,
  ): Promise<OpsResolvedImage> {
    const f = await this.#find(ref, toOci(platform), signal);
    const unpacked = await unpack(this.#core, f.manifest, { signal });
    return { digest: f.manifest.digest, config: f.config.config, topChainSnapshot: unpacked.chainID ?? '' };
  }

  #find(
    ref: string,
    platform: Platform | undefined,
    signal: AbortSignal | undefined,
    progress?: (p: PullProgress) => void,
    only?: 'local',
  ): Promise<Found> {
    const want = platform ?? hostPlatform();
    const mode = only ?? this.#opts.mode ?? 'default';
    // An answer from the store is the same in every mode that looks there first.
    const key = `${mode === 'pull' ? 'registry' : 'store'}\n${ref}\n${formatPlatform(want)}`;
    let p = this.#memo.get(key);
    if (!p) {
      p = this.#lookup(ref, want, mode, signal, progress);
      this.#memo.set(key, p);
      p.catch(() => this.#memo.delete(key));
    }
    return p;
  }

  async #lookup(
    ref: string,
    want: Platform,
    mode: 'local' | 'pull' | 'default',
    /** The pull's; without one (the frontend's lookups), a pull gets 30 minutes. */
    signal: AbortSignal | undefined,
    progress?: (p: PullProgress) => void,
  ): Promise<Found> {
    const parsed = parseReference(ref);
    let target: Descriptor | undefined;
    if (mode !== 'pull') {
      target =
        (parsed.digest && (await this.#byDigest(parsed.digest))) ||
        this.#byName([ref, parsed.full, parsed.familiar]);
      if (!target && mode === 'local') {
        throw errNotFound(`resolve image "${ref}": not in the local image store`);
      }
    }
    if (!target) {
      try {
        const res = await pull(this.#core, parsed, {
          ...this.#opts.pull,
          platform: want,
          // Made here, for a pull only: AbortSignal.timeout costs ~1 ms cold.
          signal: signal ?? AbortSignal.timeout(30 * 60_000),
          ...(progress ? { progress } : {}),
        });
        target = res.target;
      } catch (err) {
        const code = isKilnError(err) ? err.code : 'Unavailable';
        throw new KilnError(
          code,
          `not in the local image store, and the pull failed: ${(err as Error).message}`,
          { cause: err },
        );
      }
    }
    let manifest = target;
    if (isIndexMediaType(target.mediaType)) {
      const index = parseIndex(await readAll(this.#core.content, target.digest));
      const picked = selectManifest(index.manifests, want);
      if (!picked) {
        throw errNotFound(`resolve image "${ref}": no manifest for platform "${formatPlatform(want)}"`);
      }
      manifest = picked;
    }
    const { config } = await readManifestAndConfig(this.#core.content, manifest);
    return { manifest, config };
  }

  /** A manifest or index already in the content store, by digest. */
  async #byDigest(digest: Digest): Promise<Descriptor | undefined> {
    let size: number;
    try {
      size = (await this.#core.content.info(digest)).size;
    } catch (err) {
      if (isKilnError(err, 'NotFound')) return undefined;
      throw err;
    }
    // The media type is not stored with the blob: read it from the JSON itself.
    const doc = JSON.parse(Buffer.from(await readAll(this.#core.content, digest)).toString('utf8')) as {
      mediaType?: string;
      manifests?: unknown;
    };
    const mediaType =
      doc.mediaType ??
      (doc.manifests
        ? 'application/vnd.oci.image.index.v1+json'
        : 'application/vnd.oci.image.manifest.v1+json');
    return { mediaType, digest, size };
  }

  #byName(names: string[]): Descriptor | undefined {
    for (const name of names) {
      try {
        return this.#core.images.get(name).target as Descriptor;
      } catch (err) {
        if (!isKilnError(err, 'NotFound')) throw err;
      }
    }
    return undefined;
  }
}
