/**
 * Unpack: an image manifest's layers become a chain of committed snapshots.
 *
 * Chain IDs follow the OCI image spec (config.md, "Layer ChainID"):
 * ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " +
 * DiffID(Ln)). The snapshot of layer n is committed under the name of its
 * chain ID (`sha256:<hex>`) with the previous one as parent; a snapshot that
 * already exists is reused, never unpacked again. Each layer is applied by
 * ../diff (`applyLayer`: streams the blob from the content store, which
 * verified it on the way in, and unpacks it honouring whiteouts; its
 * uncompressed digest must equal the config's diff_id, DataLoss otherwise)
 * into the mounted active snapshot `extract-<random> <chainID>`, which is then
 * committed with labels `containerd.io/snapshot.ref` = chain ID and
 * `containerd.io/uncompressed` = diff ID. A concurrent unpack committing the
 * same chain first is not an error. At the end the config blob gets
 * `containerd.io/gc.ref.snapshot.<driver>` = top chain ID, so GC keeps the
 * snapshots as long as the image (as containerd does).
 *
 * Everything is created under a lease (the caller's, or a temporary one
 * deleted at the end). `layerReady(i)` lets a caller (pull) start unpacking
 * while later layers are still downloading. Limits: layers are applied one
 * by one (each depends on its parent); an image config must be an OCI/Docker
 * image config with as many diff_ids as layers.
 */
import { randomBytes } from 'node:crypto';
import type { ContentStore } from '../content/types.ts';
import { applyLayer } from '../diff/index.ts';
import { withTempMount } from '../mount/mount.ts';
import { type Digest, sha256 } from '../digest.ts';
import { errDataLoss, errInvalidArgument, isKilnError, wrap } from '../errors.ts';
import type { Core, SnapshotterName } from '../metadata/index.ts';
import {
  addLabels,
  LABEL_GC_REF_SNAPSHOT,
  LABEL_SNAPSHOT_REF,
  LABEL_UNCOMPRESSED,
  readJsonBlob,
} from './content.ts';
import {
  type Descriptor,
  type ImageConfig,
  type Manifest,
  parseImageConfig,
  parseManifest,
} from './types.ts';

export interface UnpackProgress {
  /** Layer blob digest. */
  digest: Digest;
  index: number;
  chainID: Digest;
  status: 'unpacking' | 'unpacked' | 'exists';
}

export interface UnpackOptions {
  snapshotter?: SnapshotterName;
  /** Lease to hold the snapshots; default a temporary one. */
  lease?: string;
  /** Waits until layer `i` is in the content store (used by pull). */
  layerReady?: (i: number) => Promise<unknown>;
  progress?: (p: UnpackProgress) => void;
  signal?: AbortSignal;
}

export interface UnpackResult {
  snapshotter: string;
  /** Chain ID of the top layer (the image's root filesystem), or undefined for an image without layers. */
  chainID: Digest | undefined;
  layers: { digest: Digest; diffID: Digest; chainID: Digest; unpacked: boolean }[];
}

/** Chain IDs of a list of diff IDs (OCI image spec). */
export function chainIDs(diffIDs: readonly Digest[]): Digest[] {
  const out: Digest[] = [];
  for (const d of diffIDs) out.push(out.length === 0 ? d : sha256(`${out[out.length - 1]} ${d}`));
  return out;
}

/** Reads and parses a manifest and its config from the store. */
export async function readManifestAndConfig(
  store: ContentStore,
  manifestDesc: Descriptor,
): Promise<{ manifest: Manifest; config: ImageConfig }> {
  const manifest = parseManifest(await readJsonBlob(store, manifestDesc, 'manifest'));
  const config = parseImageConfig(await readJsonBlob(store, manifest.config, 'image config'));
  return { manifest, config };
}

/** Unpacks the manifest `manifestDesc` (its content must be in the store, or arrive per `layerReady`). */
export async function unpack(
  core: Core,
  manifestDesc: Descriptor,
  options: UnpackOptions = {},
): Promise<UnpackResult> {
  const { manifest, config } = await readManifestAndConfig(core.content, manifestDesc);
  return unpackLayers(core, manifest, config, options);
}

/**
 * The result of an unpack that has nothing to do, read without writing: the image's config names
 * its top chain snapshot for this snapshotter (the label the last unpack left) and that snapshot
 * exists (a committed snapshot's parents cannot go before it). Undefined when either is not so,
 * and the full unpack runs. A rebuild with no change unpacks its bases and its result this way,
 * without the temporary lease's four transactions.
 *
 * No lease is needed for the check: the full unpack's temporary lease ends when it returns, so a
 * caller is no more protected after it than after this.
 */
async function alreadyUnpacked(
  core: Core,
  manifest: Manifest,
  snapshotter: SnapshotterName | undefined,
  chains: readonly Digest[],
  diffIDs: readonly Digest[],
): Promise<UnpackResult | undefined> {
  const top = chains.at(-1);
  if (top === undefined) return undefined;
  const sn = await core.snapshotter(snapshotter);
  try {
    const info = await core.content.info(manifest.config.digest);
    if (info.labels[`${LABEL_GC_REF_SNAPSHOT}.${sn.name}`] !== top) return undefined;
    await sn.stat(top);
  } catch (err) {
    if (isKilnError(err, 'NotFound')) return undefined;
    throw err;
  }
  return {
    snapshotter: sn.name,
    chainID: top,
    layers: manifest.layers.map((l, i) => ({
      digest: l.digest,
      diffID: diffIDs[i]!,
      chainID: chains[i]!,
      unpacked: false,
    })),
  };
}

/** Unpacks already-parsed manifest and config (see the module comment). */
export async function unpackLayers(
  core: Core,
  manifest: Manifest,
  config: ImageConfig,
  options: UnpackOptions = {},
): Promise<UnpackResult> {
  const diffIDs = config.rootfs.diff_ids;
  if (diffIDs.length !== manifest.layers.length) {
    throw errInvalidArgument(
      `unpack image with config ${manifest.config.digest}: ${manifest.layers.length} layers but ${diffIDs.length} diff_ids`,
    );
  }
  const chains = chainIDs(diffIDs);
  const temporary = options.lease === undefined;
  if (temporary) {
    const done = await alreadyUnpacked(core, manifest, options.snapshotter, chains, diffIDs);
    if (done) {
      for (const [index, l] of done.layers.entries())
        options.progress?.({ digest: l.digest, index, chainID: l.chainID, status: 'exists' });
      return done;
    }
  }
  const lease =
    options.lease ?? core.leases.create({ ttlMs: 3_600_000, labels: { 'kiln.dev/purpose': 'unpack' } }).id;
  try {
    const sn = (await core.snapshotter(options.snapshotter)).withLease(lease);
    const content = temporary ? core.content.withLease(lease) : core.content;
    const layers: UnpackResult['layers'] = [];
    let parent: Digest | undefined;
    for (let i = 0; i < manifest.layers.length; i++) {
      options.signal?.throwIfAborted();
      const layer = manifest.layers[i]!;
      const diffID = diffIDs[i]!;
      const chainID = chains[i]!;
      const report = (status: UnpackProgress['status']): void =>
        options.progress?.({ digest: layer.digest, index: i, chainID, status });
      let exists = true;
      try {
        await sn.stat(chainID);
      } catch (err) {
        if (!isKilnError(err, 'NotFound')) throw err;
        exists = false;
      }
      if (exists) {
        // Reuse, but still hold it under the lease until the image refers to it.
        core.leases.addResource(lease, { type: `snapshots/${sn.name}`, id: chainID });
        report('exists');
      } else {
        await options.layerReady?.(i);
        report('unpacking');
        const key = `extract-${randomBytes(6).toString('hex')} ${chainID}`;
        const mounts = await sn.prepare(key, parent, { labels: { [LABEL_SNAPSHOT_REF]: chainID } });
        let committed = false;
        try {
          // The blob was verified when it entered the store; the diff ID is checked here.
          const blob = content.read(layer.digest)[Symbol.asyncIterator]();
          let res: { diffID: Digest };
          try {
            res = await withTempMount(mounts, (dir) =>
              applyLayer(
                { [Symbol.asyncIterator]: () => blob },
                dir,
                options.signal ? { signal: options.signal } : {},
              ),
            );
          } finally {
            await blob.return?.(); // closes the blob if the apply stopped early
          }
          if (res.diffID !== diffID) {
            throw errDataLoss(
              `unpack layer ${layer.digest}: diff ID is "${res.diffID}", config says "${diffID}"`,
            );
          }
          try {
            await sn.commit(chainID, key, {
              labels: { [LABEL_SNAPSHOT_REF]: chainID, [LABEL_UNCOMPRESSED]: diffID },
            });
            committed = true;
          } catch (err) {
            if (!isKilnError(err, 'AlreadyExists')) throw err; // else: a concurrent unpack won
          }
          await addLabels(content, layer.digest, { [LABEL_UNCOMPRESSED]: diffID }).catch(() => {});
        } catch (err) {
          throw wrap(err, `unpack layer ${i + 1} of ${manifest.layers.length} (${layer.digest})`);
        } finally {
          if (!committed) await sn.remove(key).catch(() => {});
        }
        report('unpacked');
      }
      layers.push({ digest: layer.digest, diffID, chainID, unpacked: !exists });
      parent = chainID;
    }
    if (parent !== undefined) {
      await addLabels(core.content, manifest.config.digest, {
        [`${LABEL_GC_REF_SNAPSHOT}.${sn.name}`]: parent,
      });
    }
    return { snapshotter: sn.name, chainID: parent, layers };
  } finally {
    if (temporary) core.leases.delete(lease);
  }
}
