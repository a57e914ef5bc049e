/**
 * The build memo: a build repeated with the same inputs is answered without
 * converting the Dockerfile, solving or exporting again (./build.ts).
 *
 * After a successful build whose outputs are all images in the store, the
 * build records, under a key of its inputs (`memoKey`: the code's identity,
 * namespace, snapshotter, host architecture, context directory, Dockerfile
 * name and bytes, .dockerignore, build args, labels, target, platform,
 * SOURCE_DATE_EPOCH, network, registry settings, outputs):
 * - the frontend's image lookups (reference and platform → manifest digest);
 * - the definition's source ops (their bytes) and the cache-map digest the
 *   solver got for each: for a local source, the content checksum of its
 *   files; for an image, its manifest digest;
 * - the root vertex's definition key and the result ids recorded under it;
 * - the image (manifest descriptor, names), the summary lines, the steps.
 *
 * A later build with the same key is answered from the entry when every
 * image lookup gives the same digest (in the image store only: an image
 * that is not there is a miss, never a pull) and every source's cache map the same
 * digest (then the Dockerfile converts to the same definition, as the
 * conversion depends on nothing else, and its root has the same definition
 * key: other ops' cache maps are their definitions), the cache record under
 * the root key still holds the same results (a prune, or a removed result
 * snapshot, ends the entry), every name still points to the image, and the
 * image is unpacked. The solver would then have answered from that record,
 * and the export would have made the same image (the config's times come
 * from the layers' snapshots, `fromClock` is false). The build shows its
 * steps as cached and writes what a normal build writes (iidfile, metadata
 * file). Anything else, or any error on the way, is a miss: the build runs
 * as it would without the memo.
 *
 * Not recorded: builds with secrets or ssh, `--no-cache`,
 * `--no-cache-filter` and `--pull`, a context or Dockerfile from stdin or a git context,
 * outputs other than the image store (files and registries have to be
 * written anyway), definitions with sources other than local directories
 * and images (git, http), and images whose config took a time from the clock.
 * The code's identity comes from the caller: the CLI's and kilnd's bundles
 * carry a digest of the sources they were made from (`bundledCodeId`); run
 * from the sources, there is none, and no memo.
 *
 * Entries live in the cache index (../solver/cache.ts `getMemo`/`putMemo`):
 * at most MEMO_LIMIT, least recently used dropped first; `Worker.prune`
 * removes those whose root record it removed.
 */
import { sha256 } from '../core/digest.ts';
import type { Descriptor, Platform } from '../core/images/types.ts';
import type { Core } from '../core/metadata/index.ts';
import type { OutputSpec } from '../exporter/index.ts';
import type { CacheManager } from '../solver/cache.ts';
import type { BuildContext } from './context.ts';
import type { BuildParams } from './params.ts';

/** Replaced by the bundler (scripts/build-cli.mjs) with a digest of the sources. */
declare const KILN_CODE_ID: string | undefined;

/** The identity of the running code when it is a bundle (see the module comment), else undefined. */
export function bundledCodeId(): string | undefined {
  return typeof KILN_CODE_ID === 'string' && KILN_CODE_ID !== '' ? KILN_CODE_ID : undefined;
}

export interface MemoStep {
  /** The vertex digest (an LLB op's), or undefined for a step outside the solve. */
  digest?: string;
  name: string;
}

export interface MemoEntry {
  v: 1;
  images: { ref: string; platform: Platform; digest: string }[];
  /** Source ops: bytes (base64) and the digest of their cache map. */
  sources: { op: string; key: string }[];
  root: { key: string; ids: string[] };
  target: Descriptor;
  names: string[];
  /** The steps after the build definition's, in the order they were first shown. */
  steps: MemoStep[];
  results: string[];
  warnings: string[];
  imageId?: string;
  /** The metadata file's contents. */
  meta: Record<string, unknown>;
}

export interface MemoKeyInput {
  codeId: string | undefined;
  core: Core;
  params: BuildParams;
  context: BuildContext;
  outputs: readonly OutputSpec[];
  epoch: number | undefined;
}

const sorted = (r: Record<string, string>): [string, string][] =>
  Object.entries(r).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));

/** The memo key of a build, or undefined when its result is not to be memoised. */
export function memoKey(input: MemoKeyInput): string | undefined {
  const { codeId, core, params, context, outputs } = input;
  if (!codeId || context.kind !== 'dir') return undefined;
  // --pull asks the registry for every image anyway: the memo would save little, and a lookup
  // that pulls belongs to the build.
  if (params.noCache || params.noCacheFilter.length > 0 || params.pull) return undefined;
  if (Object.keys(params.secrets).length > 0 || Object.keys(params.ssh ?? {}).length > 0) return undefined;
  if (outputs.length === 0) return undefined;
  for (const o of outputs) if (o.type !== 'image' || o.push || o.names.length === 0) return undefined;
  const material = JSON.stringify([
    'kiln-build-memo-1',
    codeId,
    core.namespace,
    core.defaultSnapshotter,
    process.arch,
    context.dir,
    context.dockerfileName,
    context.dockerfile,
    context.dockerignore,
    sorted(params.buildArgs),
    sorted(params.labels),
    params.target ?? null,
    params.platform ?? null,
    input.epoch ?? null,
    params.network ?? null,
    params.insecureRegistries,
    params.certsDirs,
    outputs,
  ]);
  return sha256(material);
}

export interface MemoLookupEnv {
  core: Core;
  cache: CacheManager;
  /** The frontend's image lookup, in the image store only (never a pull). */
  image(ref: string, platform: Platform): Promise<{ digest: string }>;
  /** The digest of a source op's cache map (../worker/worker.ts `sourceCacheMap`). */
  sourceKey(op: Uint8Array, signal: AbortSignal): Promise<string>;
  /** Unpacks the image for the snapshotter if it is not (a failure is a miss). */
  unpack(target: MemoEntry['target']): Promise<void>;
  signal: AbortSignal;
}

function parseEntry(raw: string): MemoEntry | undefined {
  try {
    const e = JSON.parse(raw) as MemoEntry;
    return e.v === 1 ? e : undefined;
  } catch {
    return undefined;
  }
}

const sameIds = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * The entry under `key` if it still answers the build (see the module
 * comment), else undefined; an entry that can never answer again (its
 * record is gone, or it does not parse) is deleted.
 */
export async function lookupMemo(key: string, env: MemoLookupEnv): Promise<MemoEntry | undefined> {
  const { cache } = env;
  if (!cache.getMemo) return undefined;
  const raw = await cache.getMemo(key);
  if (raw === undefined) return undefined;
  const entry = parseEntry(raw);
  if (!entry) {
    await cache.deleteMemo?.(key);
    return undefined;
  }
  try {
    // Images first, from the store only: a source's image lookup may pull when the image is not
    // there, and a pull (and its failure) belongs to the build that follows a miss, once.
    // Each group at once: they wait on different files.
    const sameImages = await Promise.all(
      entry.images.map(async (img) => (await env.image(img.ref, img.platform)).digest === img.digest),
    );
    if (!sameImages.every(Boolean)) return undefined;
    const sameSources = await Promise.all(
      entry.sources.map(
        async (s) => (await env.sourceKey(Buffer.from(s.op, 'base64'), env.signal)) === s.key,
      ),
    );
    if (!sameSources.every(Boolean)) return undefined;
    const ids = await cache.load(entry.root.key);
    if (!ids) {
      await cache.deleteMemo?.(key);
      return undefined;
    }
    if (!sameIds(ids, entry.root.ids)) return undefined;
    for (const name of entry.names) {
      if (env.core.images.get(name).target.digest !== entry.target.digest) return undefined;
    }
    await env.unpack(entry.target);
  } catch {
    // Whatever failed here fails again, with its proper report, in the build that follows.
    env.signal.throwIfAborted();
    return undefined;
  }
  return entry;
}

/** Collects, during a build, what an entry records. */
export class MemoRecorder {
  readonly images: MemoEntry['images'] = [];
  /** Cache-map digest by source vertex digest. */
  readonly sourceKeys = new Map<string, string>();
  readonly steps: MemoStep[] = [];
  /** The root vertex's definition key and the results recorded under it. */
  rootKey: string | undefined;
  rootIds: string[] = [];
  /** A source that the memo cannot check again (git, http) took part. */
  unmemoisable = false;

  /** The cache map the solver got for a source vertex (`identifier`: its op's, e.g. `local://context`). */
  source(digest: string, identifier: string, key: string): void {
    if (!identifier.startsWith('local://') && !identifier.startsWith('docker-image://'))
      this.unmemoisable = true;
    this.sourceKeys.set(digest, key);
  }

  image(ref: string, platform: Platform, digest: string): void {
    if (!this.images.some((i) => i.ref === ref && JSON.stringify(i.platform) === JSON.stringify(platform)))
      this.images.push({ ref, platform, digest });
  }

  /** A step shown for the first time (`internal`: a step outside the solve). */
  step(digest: string, name: string, internal: boolean): void {
    this.steps.push(internal ? { name } : { digest, name });
  }
}

/** Writes an entry; a failure costs only the memo. */
export async function recordMemo(cache: CacheManager, key: string, entry: MemoEntry): Promise<void> {
  await cache.putMemo?.(key, entry.root.key, JSON.stringify(entry)).catch(() => undefined);
}
