/**
 * Chain snapshots of a built image made from the build's own snapshots, so
 * the image exporter's unpack (../core/images/unpack.ts) does not apply
 * layer tars the build already has as trees: `chainFromBuild(core, img,
 * opts)`.
 *
 * The image store wants layer n of an image as the committed snapshot named
 * by its chain ID (what `kiln run` and later builds FROM the image use).
 * For a layer Kiln computed from build snapshot S (SnapshotLayer.snapshot),
 * the layer is the overlay upper directory of S itself (the overlay fast
 * path of ./layers.ts). When S's parent is the snapshot chainID[n-1] stands
 * for (the same driver snapshot: the usual case, as each build step's
 * snapshot sits on the previous one and the first on the base image's chain
 * snapshot), chainID[n] is recorded as S itself (`share` of
 * ../core/metadata/snapshots.ts): O(1), nothing linked or copied, and the
 * tree is S's with the same inodes and link counts. Otherwise (a layer
 * above an empty one the image leaves out, or above a layer made as below),
 * with the `overlayfs` driver, the chain snapshot
 * is `prepare(chainID[n-1])` + S's own directory linked into the new upper
 * directory (core/diff/link.ts `linkLayer`: directories are new with their
 * modes, owners, times and xattrs incl. opaque markers; every other entry,
 * whiteouts included, is a hard link to S's inode, so hard links within the
 * layer stay links; no file data is written) +
 * `commit(chainID[n])` with the labels unpack writes
 * (`containerd.io/snapshot.ref`, `containerd.io/uncompressed`). That is the
 * tree applying the layer would give, without writing, reading and parsing
 * a tar, and through no overlay mount. The one visible difference of a
 * linked chain snapshot: while the build cache keeps S, a file of such a layer shows a link count one higher
 * (`stat` in a `kiln run` container); a deliberate trade for not writing the
 * layer's data a second time (workload 5 of bench/build-suite: export step
 * 9.7 -> 4.8 s).
 *
 * Done from the bottom up, stopping at the first layer it cannot make
 * (those and the ones above are left to unpack): linking only with
 * `overlayfs` (sharing with any driver: a `native` snapshot's directory is
 * its whole tree, which is the chain's tree too); not for a layer reused
 * from an unpacked image; not with SOURCE_DATE_EPOCH (the layer's mtimes
 * are clamped, the tree's are not). Snapshots are held by `lease`. Returns
 * the number of chain snapshots made.
 */
import { randomBytes } from 'node:crypto';
import type { Digest } from '../core/digest.ts';
import { isKilnError, wrap } from '../core/errors.ts';
import { linkLayer } from '../core/diff/link.ts';
import { chainIDs } from '../core/images/unpack.ts';
import type { Core } from '../core/metadata/index.ts';
import { snapshotOwnDir as ownDir, snapshotUpperDir as upperDir } from '../core/mount/mount.ts';
import { heldKeys, linkedKeysLabels } from '../core/snapshots/links.ts';
import type { BuiltImage } from './image.ts';

const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';

export interface ChainOptions {
  lease: string;
  sourceDateEpoch?: number;
  signal?: AbortSignal;
}

async function exists(sn: { stat(name: string): Promise<unknown> }, name: string): Promise<boolean> {
  try {
    await sn.stat(name);
    return true;
  } catch (err) {
    if (isKilnError(err, 'NotFound')) return false;
    throw err;
  }
}

/** Makes the image's missing chain snapshots from the build snapshots (see the module comment). */
export async function chainFromBuild(core: Core, img: BuiltImage, opts: ChainOptions): Promise<number> {
  if (opts.sourceDateEpoch !== undefined) return 0;
  const sn = (await core.snapshotter(img.snapshotter)).withLease(opts.lease);
  const chain = chainIDs(img.layers.map((l) => l.diffID));
  let made = 0;
  for (let i = 0; i < img.layers.length; i++) {
    opts.signal?.throwIfAborted();
    const chainID = chain[i]!;
    if (await exists(sn, chainID)) {
      core.leases.addResource(opts.lease, { type: `snapshots/${sn.name}`, id: chainID });
      continue;
    }
    const layer = img.layers[i]!;
    if (layer.source === 'unpacked') break;
    // It holds the build snapshot's inodes, context ones included (ops/copylink.ts).
    const linkedLabels = linkedKeysLabels(heldKeys((await sn.stat(layer.snapshot)).labels));
    const labels = { [LABEL_SNAPSHOT_REF]: chainID, [LABEL_UNCOMPRESSED]: layer.diffID, ...linkedLabels };
    try {
      await sn.share(chainID, layer.snapshot, i === 0 ? undefined : chain[i - 1], { labels });
      made++;
      continue;
    } catch (err) {
      if (isKilnError(err, 'AlreadyExists')) continue; // a concurrent unpack won
      if (!isKilnError(err, 'FailedPrecondition')) {
        throw wrap(err, `make chain snapshot ${chainID} from build snapshot "${layer.snapshot}"`);
      }
    }
    if (img.snapshotter !== 'overlayfs') break;
    const tag = randomBytes(6).toString('hex');
    const viewKey = `export-chain-${tag}-view`;
    const key = `extract-${tag} ${chainID}`;
    let committed = false;
    let made1 = false;
    let viewed = false;
    try {
      // The export saw the snapshot's own directory when it computed the layer; else a view finds it.
      let src = layer.dir;
      if (src === undefined) {
        viewed = true;
        src = ownDir(await sn.view(viewKey, layer.snapshot));
      }
      const active = await sn.prepare(key, i === 0 ? undefined : (chain[i - 1] as Digest), {
        labels: { [LABEL_SNAPSHOT_REF]: chainID },
      });
      const dst = upperDir(active);
      if (src === undefined || dst === undefined) break;
      await linkLayer(src, dst, opts.signal);
      try {
        await sn.commit(chainID, key, { labels });
        made1 = true;
      } catch (err) {
        if (!isKilnError(err, 'AlreadyExists')) throw err; // a concurrent unpack won
      }
      committed = true;
    } catch (err) {
      throw wrap(err, `make chain snapshot ${chainID} from build snapshot "${layer.snapshot}"`);
    } finally {
      if (!committed) await sn.remove(key).catch(() => {});
      if (viewed) await sn.remove(viewKey).catch(() => {});
    }
    if (made1) made++;
  }
  return made;
}
