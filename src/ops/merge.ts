/**
 * Merge and diff ops (LLB MergeOp, DiffOp).
 *
 * merge(inputs): the inputs' trees layered in order, the first at the bottom.
 * What is done: a snapshot is prepared with the first input as its parent
 * (overlayfs stacks it: nothing of the first input is copied). Then, for
 * each further input, its snapshot chain (the input and its committed
 * parents) is replayed layer by layer: each layer's own changes (the diff
 * service's layer from its parent to it, uncompressed, through the content
 * store under the op's lease) are applied in order, whiteouts included, so
 * an input's deletions apply to what is below it, as when layers are
 * stacked. Layers the input shares with the first input's chain (a common
 * base image) are already present and are skipped. On overlayfs a layer is
 * applied by hard-linking its own directory's entries into the merge's
 * upper directory (core/diff/link.ts): no file data is read or written, only
 * directories and links are made; except for a layer that may hold inodes of
 * a build context that the merge's chain may already hold (labels, see
 * ops/copylink.ts), which is applied as a copy so that no inode is in the
 * chain twice. The merge's snapshot lists the contexts it received inodes
 * of. Elsewhere, or when a layer's directory is not known, it goes through
 * one uncompressed tar stream (the diff service).
 * Stacking the inputs as overlay lowerdirs with no links at all would need
 * multi-parent snapshots in the snapshotter (future work).
 *
 * diff(lower, upper): the layer from lower to upper (the diff service, with
 * the overlay upperdir fast path when upper sits directly on lower), applied
 * onto an empty snapshot; whiteouts have nothing to delete there, so the
 * result holds what was added or changed. An absent lower is the empty tree.
 */
import { apply, compare } from '../core/diff/index.ts';
import { snapshotOwnDir, snapshotUpperDir } from '../core/mount/mount.ts';
import type { DiffOp as DiffOpPb, MergeOp as MergeOpPb } from '../gen/kiln/llb/v1/llb_pb.ts';
import type { CacheMap, Op, OpContext, Result } from '../solver/types.ts';
import type { OpEnv } from './env.ts';
import { linkLayer } from '../core/diff/link.ts';
import { snapshotChain } from '../core/snapshots/chain.ts';
import { heldKeys, linkedKeysLabels } from '../core/snapshots/links.ts';
import { OpSession, snapshotOf } from './refs.ts';

async function layerOnto(
  session: OpSession,
  lowerSnap: string | undefined,
  upperSnap: string,
  targetMounts: Parameters<typeof apply>[2],
  signal: AbortSignal,
): Promise<void> {
  const lower = lowerSnap === undefined ? [] : await session.view(lowerSnap);
  const upper = await session.view(upperSnap);
  const desc = await compare(lower, upper, session.core.content, {
    compression: 'none',
    signal,
  });
  session.core.leases.addResource(session.lease, { type: 'content', id: desc.digest });
  await apply(desc, session.core.content, targetMounts, { signal });
  await session.core.content.delete(desc.digest).catch(() => {});
}

export class MergeOp implements Op {
  readonly #env: OpEnv;
  readonly #op: MergeOpPb;
  readonly #digest: string;

  constructor(env: OpEnv, op: MergeOpPb, digest: string) {
    this.#env = env;
    this.#op = op;
    this.#digest = digest;
  }

  async cacheMap(_ctx: OpContext, _index: number): Promise<CacheMap> {
    return { digest: this.#digest, deps: [] };
  }

  async exec(ctx: OpContext, inputs: readonly Result[]): Promise<Result[]> {
    const snaps = this.#op.inputs.map((m) => snapshotOf(inputs[m.input]));
    const session = await OpSession.open(this.#env.core, `merge ${this.#digest}`);
    try {
      const { key, mounts } = await session.prepare(snaps[0] ?? '');
      const baseChain = snaps[0] ? await snapshotChain(session.sn, snaps[0]) : [];
      const base = new Set(baseChain.map((b) => b.name));
      // Context inodes the merge's chain may already hold (ops/copylink.ts): a layer that may hold
      // some of the same context's inodes is applied as a copy, so no inode is in the chain twice.
      const held = new Set(baseChain.flatMap((b) => heldKeys(b.labels)));
      const linked = new Set<string>();
      const upper = session.sn.name === 'overlayfs' ? snapshotUpperDir(mounts) : undefined;
      for (const s of snaps.slice(1)) {
        const chain = await snapshotChain(session.sn, s);
        for (let i = 0; i < chain.length; i++) {
          const layer = chain[i]!;
          if (base.has(layer.name)) continue;
          const keys = heldKeys(layer.labels);
          const own =
            upper === undefined || keys.some((k) => held.has(k))
              ? undefined
              : snapshotOwnDir(await session.view(layer.name));
          if (upper !== undefined && own !== undefined) {
            await linkLayer(own, upper, ctx.signal);
            for (const k of keys) {
              held.add(k);
              linked.add(k);
            }
          } else await layerOnto(session, chain[i - 1]?.name, layer.name, mounts, ctx.signal);
        }
      }
      return [await session.commitResult(key, this.#digest, linkedKeysLabels(linked))];
    } finally {
      await session.close();
    }
  }
}

export class DiffOp implements Op {
  readonly #env: OpEnv;
  readonly #op: DiffOpPb;
  readonly #digest: string;

  constructor(env: OpEnv, op: DiffOpPb, digest: string) {
    this.#env = env;
    this.#op = op;
    this.#digest = digest;
  }

  async cacheMap(_ctx: OpContext, _index: number): Promise<CacheMap> {
    return { digest: this.#digest, deps: [] };
  }

  async exec(ctx: OpContext, inputs: readonly Result[]): Promise<Result[]> {
    const lowerIdx = this.#op.lower?.input;
    const upperIdx = this.#op.upper?.input;
    const session = await OpSession.open(this.#env.core, `diff ${this.#digest}`);
    try {
      const { key, mounts } = await session.prepare('');
      if (upperIdx !== undefined) {
        const lower = lowerIdx !== undefined ? snapshotOf(inputs[lowerIdx]) : undefined;
        await layerOnto(session, lower, snapshotOf(inputs[upperIdx]), mounts, ctx.signal);
      }
      return [await session.commitResult(key, this.#digest)];
    } finally {
      await session.close();
    }
  }
}
