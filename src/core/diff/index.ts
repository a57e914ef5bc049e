/**
 * The diff service (containerd's diff.Comparer and diff.Applier), public
 * entry of src/core/diff.
 *
 * - `compare(lower, upper, store, opts)`: the layer that turns the `lower`
 *   mounts' tree into the `upper` mounts' tree, written into the content
 *   store; returns its descriptor (annotation `containerd.io/uncompressed`
 *   = diffID; the blob carries the same label). When `upper` is a single
 *   overlay mount with `upperdir=` (an active overlay snapshot) whose
 *   lowerdirs are exactly the layers `lower` shows (see overlayFastPath),
 *   the upperdir is read directly and nothing is mounted. Else both are
 *   mounted read-only on temporary directories and walked.
 * - `apply(desc, provider, mounts, opts)`: streams the blob from the
 *   provider, verifies its digest (and the diffID, when the descriptor
 *   carries one), and unpacks it into the mounted `mounts`. Returns the
 *   descriptor of the uncompressed layer (mediaType tar, digest = diffID).
 *   With `mode: 'overlay-upper'`, `mounts` must be a single bind mount of an
 *   overlay upperdir (or apply into the directory via applyLayer).
 */
import * as path from 'node:path';
import type { ContentStore } from '../content/types.ts';
import { Digester } from '../digest.ts';
import { errDataLoss } from '../errors.ts';
import type { Descriptor } from '../images/types.ts';
import { withTempMount } from '../mount/mount.ts';
import type { Mount } from '../snapshots/types.ts';
import { type ApplyOptions, applyLayer } from './apply.ts';
import { type CompareOptions, compareDirs, compareOverlayUpper } from './compare.ts';
import { LABEL_UNCOMPRESSED, type WriteLayerOptions, writeLayer } from './layer.ts';

export { type ApplyMode, type ApplyOptions, type ApplyResult, applyLayer } from './apply.ts';
export {
  type CompareOptions,
  compareDirs,
  compareOverlayUpper,
  type EmitFn,
  type LayerEntry,
  OPAQUE_WHITEOUT,
  WHITEOUT_PREFIX,
} from './compare.ts';
export {
  type Compression,
  LABEL_UNCOMPRESSED,
  LAYER_MEDIA_TYPES,
  type WriteLayerOptions,
  type WrittenLayer,
  writeLayer,
} from './layer.ts';

export interface DiffOptions extends CompareOptions, WriteLayerOptions {
  /** Use the overlay upperdir fast path when possible (default true). */
  fastPath?: boolean;
}

function unescapeOverlay(value: string): string {
  return value.replace(/\\(.)/g, '$1');
}

function splitLowers(value: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c === '\\' && i + 1 < value.length) cur += value[++i];
    else if (c === ':') {
      if (cur) out.push(cur);
      cur = '';
    } else cur += c;
  }
  if (cur) out.push(cur);
  return out;
}

/** The upperdir (if any) and lowerdirs of a single overlay mount, if `mounts` is one. */
function overlayDirs(mounts: Mount[]): { upper?: string; lowers: string[] } | undefined {
  if (mounts.length !== 1) return undefined;
  const m = mounts[0]!;
  if (m.type !== 'overlay' || (m.target && m.target !== '/' && m.target !== '.')) return undefined;
  let upper: string | undefined;
  const lowers: string[] = [];
  for (const o of m.options) {
    if (o.startsWith('upperdir=')) upper = unescapeOverlay(o.slice('upperdir='.length));
    else if (o.startsWith('lowerdir=')) lowers.push(...splitLowers(o.slice('lowerdir='.length)));
    else if (o.startsWith('lowerdir+=')) lowers.push(unescapeOverlay(o.slice('lowerdir+='.length)));
    else if (o.startsWith('redirect_dir=on') || o.startsWith('metacopy=on')) return undefined;
  }
  return { upper, lowers };
}

/** The directory layers (topmost first) that `mounts` show, when it is one bind or overlay mount. */
function layersOf(mounts: Mount[]): string[] | undefined {
  if (mounts.length !== 1) return undefined;
  const m = mounts[0]!;
  if (m.target && m.target !== '/' && m.target !== '.') return undefined;
  if (m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind')) return [m.source];
  const ov = overlayDirs(mounts);
  if (!ov) return undefined;
  return ov.upper ? [ov.upper, ...ov.lowers] : ov.lowers;
}

/**
 * The overlay fast path applies when `upper` is one overlay mount with an
 * upperdir whose lowerdirs are exactly the layers `lower` shows (one bind
 * mount of the single lower, or an overlay of the same layers). Returns the
 * upperdir and lowerdirs, or undefined when the generic walk must be used.
 */
export function overlayFastPath(
  lower: Mount[],
  upper: Mount[],
): { upper: string; lowers: string[] } | undefined {
  const ov = overlayDirs(upper);
  if (!ov?.upper || ov.lowers.length === 0) return undefined;
  const low = layersOf(lower);
  if (!low || low.length !== ov.lowers.length) return undefined;
  for (let i = 0; i < low.length; i++) {
    if (path.resolve(low[i]!) !== path.resolve(ov.lowers[i]!)) return undefined;
  }
  return { upper: ov.upper, lowers: ov.lowers };
}

function readOnly(mounts: Mount[]): Mount[] {
  return mounts.map((m) => ({ ...m, options: [...m.options.filter((o) => o !== 'rw'), 'ro'] }));
}

/** Computes the layer from `lower` to `upper` and writes it into `store`. */
export async function compare(
  lower: Mount[],
  upper: Mount[],
  store: ContentStore,
  options: DiffOptions = {},
): Promise<Descriptor> {
  const ov = options.fastPath === false ? undefined : overlayFastPath(lower, upper);
  if (ov) {
    const { descriptor } = await writeLayer(
      (emit) => compareOverlayUpper(ov.upper, ov.lowers, emit, options),
      store,
      options,
    );
    return descriptor;
  }
  const { descriptor } = await withTempMount(readOnly(upper), (upperDir) => {
    if (lower.length === 0)
      return writeLayer((emit) => compareDirs(undefined, upperDir, emit, options), store, options);
    return withTempMount(readOnly(lower), (lowerDir) =>
      writeLayer((emit) => compareDirs(lowerDir, upperDir, emit, options), store, options),
    );
  });
  return descriptor;
}

/** Applies the layer `desc` (read from `provider`) onto the tree `mounts` give. */
export async function apply(
  desc: Descriptor,
  provider: Pick<ContentStore, 'read'>,
  mounts: Mount[],
  options: ApplyOptions = {},
): Promise<Descriptor> {
  const blob = new Digester();
  async function* verified(): AsyncGenerator<Uint8Array> {
    for await (const c of provider.read(desc.digest)) {
      blob.update(c);
      yield c;
    }
    if (blob.size !== desc.size) {
      throw errDataLoss(
        `apply layer "${desc.digest}": read ${blob.size} bytes, descriptor says ${desc.size}`,
      );
    }
    const got = blob.digest();
    if (got !== desc.digest) throw errDataLoss(`apply layer "${desc.digest}": content has digest "${got}"`);
  }
  const source = verified();
  let result: Awaited<ReturnType<typeof applyLayer>>;
  try {
    result = await withTempMount(mounts, (dir) => applyLayer(source, dir, options));
  } finally {
    // When applying fails midway, decompression may not hand the early stop back to
    // our generator: end it here so the blob's file handle is closed, not left to GC.
    await source.return(undefined);
  }
  const want = desc.annotations?.[LABEL_UNCOMPRESSED];
  if (want && want !== result.diffID) {
    throw errDataLoss(
      `apply layer "${desc.digest}": uncompressed digest is "${result.diffID}", descriptor says "${want}"`,
    );
  }
  return { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: result.diffID, size: result.size };
}
