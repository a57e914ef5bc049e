/**
 * Pull: resolve a reference, fetch what it needs into the namespace's
 * content store under a lease, unpack it, record the image.
 *
 * 1. Resolve the reference to a manifest or index descriptor (../remotes).
 * 2. Under the lease `pull-<sha256 of name and digest>` (created, or reused
 *    from an interrupted earlier pull; expires after 24 h), walk the image:
 *    an index keeps the manifest best matching `platform` (host by default)
 *    or, with `allPlatforms`, every manifest; a manifest needs its config
 *    and layers. Manifests, indexes and configs are fetched whole, verified
 *    and stored with containerd's GC labels (index → `gc.ref.content.m.<i>`,
 *    manifest → `gc.ref.content.config` and `gc.ref.content.l.<i>`). Layers
 *    are streamed into the store (Fetcher.fetchToWriter: large batched
 *    writes), at most `concurrency` downloads at a time (a commit, which
 *    fsyncs the blob, does not hold a download slot), each under
 *    the ingest ref `pull-<digest>` so that a rerun resumes from the bytes an
 *    interrupted one left (HTTP Range; a connection broken midway is resumed
 *    the same way within one pull); the store hashes what it writes, and a
 *    blob whose size or digest is wrong is refused at commit and its ingest
 *    aborted, so it never enters the store. Blobs get `containerd.io/uncompressed` (the
 *    config's diff ID) and `containerd.io/distribution.source.<host>` = repo
 *    (used by push to mount across repositories). Blobs the namespace already
 *    has are not fetched.
 * 3. Unless `unpack: false`, the platform's manifest is unpacked (./unpack.ts)
 *    while its layers download: layer n is applied as soon as it and layer
 *    n-1 are ready.
 * 4. The image record `name` (default: the normalized reference) is created
 *    or pointed at the new target; then the lease is deleted. On failure the
 *    lease is kept so that GC does not take what was already fetched.
 *
 * Mirrors: `mirrors` are tried in order before the reference's own registry
 * (the first that resolves serves the whole pull).
 *
 * Progress: `progress(event)` per blob (waiting, downloading with offsets,
 * exists, done) and per unpacked layer. Errors name the reference, the blob
 * and the registry's status (see ../remotes/transport.ts).
 */
import type { Labels, Writer } from '../content/types.ts';
import { type Digest, sha256 } from '../digest.ts';
import { errDataLoss, errNotFound, isKilnError, KilnError, wrap } from '../errors.ts';
import type { Core, Image, SnapshotterName } from '../metadata/index.ts';
import type { Fetcher } from '../remotes/fetcher.ts';
import { Resolver } from '../remotes/resolver.ts';
import { RegistryError, type RemoteOptions } from '../remotes/transport.ts';
import {
  addLabels,
  indexGCLabels,
  LABEL_DISTRIBUTION_SOURCE,
  LABEL_UNCOMPRESSED,
  limiter,
  manifestGCLabels,
  readJsonBlob,
  settleAll,
  writeBlob,
} from './content.ts';
import { formatPlatform, hostPlatform, selectManifest } from './platform.ts';
import { parseReference, type Reference } from './reference.ts';
import {
  type Descriptor,
  type ImageConfig,
  isConfigMediaType,
  isIndexMediaType,
  isManifestMediaType,
  type Platform,
  parseImageConfig,
  parseIndex,
  parseManifest,
} from './types.ts';
import { type UnpackResult, unpackLayers } from './unpack.ts';

export type BlobKind = 'index' | 'manifest' | 'config' | 'layer';

export interface PullProgress {
  digest: Digest;
  kind: BlobKind;
  status: 'waiting' | 'downloading' | 'exists' | 'done' | 'unpacking' | 'unpacked';
  /** Bytes in the store so far (downloading, done). */
  offset: number;
  total: number;
}

export interface PullOptions {
  /** Image record name; default the normalized reference (`ref.full`). */
  name?: string;
  platform?: Platform;
  allPlatforms?: boolean;
  /** Default true. */
  unpack?: boolean;
  snapshotter?: SnapshotterName;
  /**
   * Layer downloads at once (default 6, as skopeo; containerd uses 3): on a
   * loaded machine or a registry that serves each stream slowly, parallel
   * streams are what fills the pipe.
   */
  concurrency?: number;
  /** Registry options (insecure hosts, auth, retries); ignored when `resolver` is given. */
  remote?: RemoteOptions;
  resolver?: Resolver;
  /**
   * Registry hosts (host[:port], optionally with a path prefix) tried first,
   * in order, for the reference's repository; the image keeps its own name.
   */
  mirrors?: string[];
  /** Told why a mirror was skipped. */
  onMirrorError?: (mirror: string, err: KilnError) => void;
  progress?: (p: PullProgress) => void;
  signal?: AbortSignal;
}

export interface PullResult {
  image: Image;
  ref: Reference;
  target: Descriptor;
  /** Platform manifests fetched. */
  manifests: Descriptor[];
  unpacked?: UnpackResult;
  /** Bytes downloaded from the registry in this call. */
  bytesFetched: number;
  blobsFetched: number;
  blobsReused: number;
}

const LEASE_TTL_MS = 24 * 3600 * 1000;
const DEFAULT_CONCURRENCY = 6;

class PullJob {
  readonly core: Core;
  readonly fetcher: Fetcher;
  readonly ref: Reference;
  readonly options: PullOptions;
  readonly lease: string;
  readonly store: Core['content'];
  readonly limit: <T>(fn: () => Promise<T>) => Promise<T>;
  readonly sourceLabel: Labels;
  readonly signal: AbortSignal;
  readonly manifests: Descriptor[] = [];
  unpacked: UnpackResult | undefined;
  /** The manifest to unpack: the one chosen for the platform (the host's by default). */
  unpackTarget: Digest | undefined;
  bytesFetched = 0;
  blobsFetched = 0;
  blobsReused = 0;

  constructor(
    core: Core,
    fetcher: Fetcher,
    ref: Reference,
    lease: string,
    options: PullOptions,
    signal: AbortSignal,
  ) {
    this.core = core;
    this.fetcher = fetcher;
    this.ref = ref;
    this.options = options;
    this.lease = lease;
    this.store = core.content.withLease(lease);
    this.limit = limiter(options.concurrency ?? DEFAULT_CONCURRENCY);
    this.sourceLabel = { [`${LABEL_DISTRIBUTION_SOURCE}.${ref.domain}`]: ref.path };
    this.signal = signal;
  }

  #progress(desc: Descriptor, kind: BlobKind, status: PullProgress['status'], offset: number): void {
    this.options.progress?.({ digest: desc.digest, kind, status, offset, total: desc.size });
  }

  async #has(digest: Digest): Promise<boolean> {
    try {
      await this.store.info(digest);
      return true;
    } catch (err) {
      if (isKilnError(err, 'NotFound')) return false;
      throw err;
    }
  }

  /** Holds an existing blob under the lease and adds labels. */
  async #reuse(desc: Descriptor, kind: BlobKind, labels: Labels): Promise<void> {
    this.core.leases.addResource(this.lease, { type: 'content', id: desc.digest });
    await addLabels(this.store, desc.digest, labels, new Set(Object.keys(this.sourceLabel)));
    this.blobsReused++;
    this.#progress(desc, kind, 'exists', desc.size);
  }

  /** A manifest, index or config: from the store if the namespace has it, else fetched (not stored yet). */
  async fetchJson(desc: Descriptor, kind: BlobKind): Promise<{ bytes: Uint8Array; have: boolean }> {
    if (await this.#has(desc.digest))
      return { bytes: await readJsonBlob(this.store, desc, kind), have: true };
    this.#progress(desc, kind, 'downloading', 0);
    const bytes = await this.fetcher.fetchBytes(desc, { signal: this.signal });
    this.bytesFetched += bytes.byteLength;
    return { bytes, have: false };
  }

  /** Stores what fetchJson returned (or adds the labels to what the store has). */
  async storeJson(
    desc: Descriptor,
    kind: BlobKind,
    got: { bytes: Uint8Array; have: boolean },
    labels: Labels,
  ): Promise<void> {
    const all = { ...labels, ...this.sourceLabel };
    if (got.have) return this.#reuse(desc, kind, all);
    await writeBlob(this.store, desc, got.bytes, all, `pull-${desc.digest}`);
    this.blobsFetched++;
    this.#progress(desc, kind, 'done', desc.size);
  }

  /**
   * Streams a layer into the store, resuming an interrupted ingest of the same
   * blob. Only the download holds one of the `concurrency` slots: the commit
   * (which fsyncs the whole blob) runs outside it, so the next download starts
   * while the disk catches up.
   */
  async layer(desc: Descriptor, labels: () => Promise<Labels>): Promise<void> {
    this.#progress(desc, 'layer', 'waiting', 0);
    const ref = `pull-${desc.digest}`;
    for (;;) {
      const w = await this.limit(() => this.#download(desc, ref));
      if (!w) return this.#reuse(desc, 'layer', { ...(await labels()), ...this.sourceLabel });
      try {
        await w.commit({
          size: desc.size,
          expected: desc.digest,
          labels: { ...(await labels()), ...this.sourceLabel },
        });
        this.blobsFetched++;
        this.#progress(desc, 'layer', 'done', desc.size);
        return;
      } catch (err) {
        if (isKilnError(err, 'AlreadyExists')) continue;
        if (isKilnError(err, 'DataLoss')) {
          // Bad bytes are never kept, not even for a resume.
          await w.close().catch(() => {});
          await this.store.abort(ref).catch(() => {});
        }
        throw err;
      } finally {
        await w.close().catch(() => {});
      }
    }
  }

  /**
   * Opens the layer's ingest and fills it (all bytes written, not committed);
   * undefined when the store already has the blob. On failure the writer is
   * closed, keeping its bytes for a resume unless they are known bad.
   */
  async #download(desc: Descriptor, ref: string): Promise<Writer | undefined> {
    for (let attempt = 0; ; attempt++) {
      this.signal.throwIfAborted();
      if (await this.#has(desc.digest)) return undefined;
      let w: Writer;
      try {
        w = await this.store.writer({ ref, expected: desc.digest, total: desc.size });
      } catch (err) {
        if (isKilnError(err, 'AlreadyExists')) continue;
        // Another pull is writing this blob: wait for it (up to ~10 min).
        if (isKilnError(err, 'Unavailable') && attempt < 6000) {
          await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        throw err;
      }
      try {
        if (w.offset > desc.size) {
          await w.close();
          await this.store.abort(ref);
          continue;
        }
        this.#progress(desc, 'layer', 'downloading', w.offset);
        // Large batched writes, whatever arrived kept on failure; no second hash: the
        // store hashes what it writes and its commit checks size and digest.
        this.bytesFetched += await this.fetcher.fetchToWriter(desc, w, {
          signal: this.signal,
          commit: false,
          progress: (offset) => this.#progress(desc, 'layer', 'downloading', offset),
        });
        return w;
      } catch (err) {
        await w.close().catch(() => {});
        if (isKilnError(err, 'DataLoss')) await this.store.abort(ref).catch(() => {});
        throw err;
      }
    }
  }

  /** Fetches what `desc` needs; returns after everything below it is stored (and unpacked, for `unpackThis`). */
  async node(desc: Descriptor, path: string, top = false): Promise<void> {
    if (isIndexMediaType(desc.mediaType)) {
      const got = await this.fetchJson(desc, 'index');
      const idx = parseIndex(got.bytes);
      const entries = idx.manifests.map((d, i) => [i, d] as [number, Descriptor]);
      let chosen: [number, Descriptor][];
      if (this.options.allPlatforms) {
        chosen = entries.filter(([, d]) => isManifestMediaType(d.mediaType) || isIndexMediaType(d.mediaType));
      } else {
        const want = this.options.platform ?? hostPlatform();
        const best = selectManifest(idx.manifests, want);
        if (!best) {
          const have = idx.manifests.filter((d) => d.platform).map((d) => formatPlatform(d.platform!));
          throw errNotFound(
            `pull "${this.ref.full}": no manifest for platform "${formatPlatform(want)}" in index ${desc.digest} (has: ${have.join(', ') || 'none'})`,
          );
        }
        chosen = entries.filter(([, d]) => d === best);
      }
      if (top)
        this.unpackTarget = selectManifest(idx.manifests, this.options.platform ?? hostPlatform())?.digest;
      await settleAll(chosen.map(([i, d]) => this.node(d, `${path}[${i}]`)));
      // Children first, then the index that refers to them.
      await this.storeJson(desc, 'index', got, indexGCLabels(chosen));
      return;
    }
    if (!isManifestMediaType(desc.mediaType)) {
      throw new KilnError(
        'NotImplemented',
        `pull "${this.ref.full}": ${path} has unsupported media type "${desc.mediaType}"`,
      );
    }
    this.manifests.push(desc);
    if (top) this.unpackTarget = desc.digest;
    const got = await this.fetchJson(desc, 'manifest');
    const manifest = parseManifest(got.bytes);
    // The config and the layers download together; layers need the config's diff IDs only to label their blob.
    const configP = (async (): Promise<ImageConfig | undefined> => {
      const c = await this.fetchJson(manifest.config, 'config');
      await this.storeJson(manifest.config, 'config', c, {});
      if (!isConfigMediaType(manifest.config.mediaType)) return undefined;
      const config = parseImageConfig(c.bytes);
      if (config.rootfs.diff_ids.length !== manifest.layers.length) {
        throw errDataLoss(
          `pull "${this.ref.full}": manifest ${desc.digest} has ${manifest.layers.length} layers but its config lists ${config.rootfs.diff_ids.length} diff_ids`,
        );
      }
      return config;
    })();
    const fetches = manifest.layers.map((l, i) =>
      this.layer(l, async (): Promise<Labels> => {
        const d = (await configP)?.rootfs.diff_ids[i];
        return d ? { [LABEL_UNCOMPRESSED]: d } : {};
      }),
    );
    // Everything runs in parallel; a failure stops the others (their bytes are kept for a rerun).
    const tasks: Promise<unknown>[] = [configP, ...fetches].map((p) =>
      p.catch((err: unknown) => this.fail(err)),
    );
    if (this.options.unpack !== false && this.unpackTarget === desc.digest) {
      tasks.push(
        configP
          .then((config) => {
            if (!config) return;
            return unpackLayers(this.core, manifest, config, {
              lease: this.lease,
              ...(this.options.snapshotter ? { snapshotter: this.options.snapshotter } : {}),
              layerReady: (i) => fetches[i]!,
              progress: (p) =>
                this.#progress(
                  manifest.layers[p.index]!,
                  'layer',
                  p.status === 'exists' ? 'unpacked' : p.status,
                  manifest.layers[p.index]!.size,
                ),
              signal: this.signal,
            }).then((r) => {
              this.unpacked = r;
            });
          })
          .catch((err: unknown) => this.fail(err)),
      );
    }
    await settleAll(tasks);
    // Children first, then the manifest that refers to them.
    await this.storeJson(desc, 'manifest', got, manifestGCLabels(manifest.config, manifest.layers));
  }

  /** Set by run(): aborts the other tasks and rethrows. */
  fail: (err: unknown) => never = (err) => {
    throw err;
  };
}

/** Resolves on each mirror in turn (a failure moves on), then on the reference's own registry. */
async function resolveWithMirrors(
  resolver: Resolver,
  ref: Reference,
  options: PullOptions,
): Promise<{ ref: Reference; target: Descriptor }> {
  const sig = options.signal ? { signal: options.signal } : {};
  for (const mirror of options.mirrors ?? []) {
    let m: Reference;
    try {
      m = parseReference(
        `${mirror}/${ref.path}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`,
      );
    } catch (err) {
      throw wrap(err, `pull "${ref.full}": mirror "${mirror}"`);
    }
    try {
      const r = await resolver.resolve(m, sig);
      return { ref: m, target: r.descriptor };
    } catch (err) {
      options.signal?.throwIfAborted();
      if (!(err instanceof KilnError)) throw err;
      options.onMirrorError?.(mirror, err);
    }
  }
  const r = await resolver.resolve(ref, sig);
  return { ref, target: r.descriptor };
}

/** Pulls `reference` into `core` (see the module comment). */
export async function pull(
  core: Core,
  reference: string | Reference,
  options: PullOptions = {},
): Promise<PullResult> {
  const wanted = typeof reference === 'string' ? parseReference(reference) : reference;
  const resolver = options.resolver ?? new Resolver(options.remote ?? {});
  const name = options.name ?? wanted.full;
  const { ref, target } = await resolveWithMirrors(resolver, wanted, options);
  const leaseId = `pull-${sha256(`${core.namespace}\n${name}\n${target.digest}`).slice(7, 39)}`;
  try {
    core.leases.create({ id: leaseId, ttlMs: LEASE_TTL_MS, labels: { 'kiln.dev/pull': name } });
  } catch (err) {
    if (!isKilnError(err, 'AlreadyExists')) throw err; // an interrupted pull of the same image: reuse
  }
  const inner = new AbortController();
  const onAbort = (): void => inner.abort(options.signal?.reason);
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const job = new PullJob(core, resolver.fetcher(ref), ref, leaseId, options, inner.signal);
  let firstError: unknown;
  job.fail = (err: unknown): never => {
    if (firstError === undefined) {
      firstError = err;
      inner.abort(err);
    }
    throw err;
  };
  try {
    try {
      await job.node(target, target.digest, true);
    } catch (err) {
      throw firstError ?? err;
    }
    let image: Image;
    try {
      image = core.images.create({ name, target });
    } catch (err) {
      if (!isKilnError(err, 'AlreadyExists')) throw err;
      image = core.images.update({ name, target }, ['target']);
    }
    core.leases.delete(leaseId);
    const result: PullResult = {
      image,
      ref,
      target,
      manifests: job.manifests,
      bytesFetched: job.bytesFetched,
      blobsFetched: job.blobsFetched,
      blobsReused: job.blobsReused,
    };
    if (job.unpacked) result.unpacked = job.unpacked;
    return result;
  } catch (err) {
    if (err instanceof KilnError && !(err instanceof RegistryError) && !err.message.startsWith('pull ')) {
      throw new KilnError(err.code, `pull "${ref.full}": ${err.message}`, { cause: err });
    }
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}
