/**
 * Public entry of src/exporter: build results to images and files.
 *
 * - `parseOutputSpec('type=oci,dest=out.tar,compression=zstd')` parses a
 *   `-o/--output` value (BuildKit's CSV syntax: comma-separated `key=value`
 *   fields; a field in double quotes may hold commas, e.g.
 *   `"name=a:1,b:2"`). Keys: `type` (image, registry, oci, docker, local,
 *   tar), `dest`, `name` (comma list, repeatable), `push`, `unpack`,
 *   `compression` (gzip, zstd, uncompressed), `compression-level`,
 *   `oci-mediatypes`, `force-compression`. Shorthands: `-` is
 *   `type=tar,dest=-`; a value without `=` or comma is `type=local,dest=<it>`.
 *   Errors (InvalidArgument) quote the bad key or value.
 * - `exportResult(core, {snapshot, config, outputs})` runs each output in
 *   turn. Layer compression without `compression=` (defaultCompression):
 *   `type=image` without push and `type=docker` write layers uncompressed
 *   (only the diff ID is computed; a blob made before for the same snapshot,
 *   of any compression, is reused), the rest gzip; outputs without
 *   `compression=` in one build share one image (gzip if one of them needs
 *   it, as that costs the compression anyway). An image stored so is
 *   marked to have its uncompressed layers compressed to gzip when pushed
 *   (../core/images/push.ts), as `docker push` does; an explicit
 *   `compression=uncompressed` pushes them as they are. The image is built (./image.ts) once per distinct set of image
 *   options and only when an output needs it (local and tar do not); all of
 *   it is held by one lease, deleted at the end (what an image record does
 *   not hold is then left to GC, except layer blobs, which the result's
 *   snapshots keep for reuse).
 * - `sourceDateEpochFrom(value)` parses SOURCE_DATE_EPOCH.
 */
import type { Writable } from 'node:stream';
import type { Compression } from '../core/diff/index.ts';
import { errInvalidArgument } from '../core/errors.ts';
import type { ImageConfig } from '../core/images/types.ts';
import type { Core, SnapshotterName } from '../core/metadata/index.ts';
import type { RemoteOptions } from '../core/remotes/transport.ts';
import { type ExporterName, type ExportResult, type ExportSource, getExporter } from './exporters.ts';
import { type BuiltImage, buildImage } from './image.ts';
import { exportLease, type LayerOptions, type SnapshotLayer } from './layers.ts';

export {
  type Exporter,
  type ExporterName,
  type ExportOptions,
  type ExportResult,
  type ExportSource,
  getExporter,
} from './exporters.ts';
export { type BuildImageOptions, type BuiltImage, buildImage, formatTime } from './image.ts';
export { EMPTY_LAYER_DIFF_ID, type LayerOptions, type SnapshotLayer, snapshotLayers } from './layers.ts';

export interface OutputSpec {
  type: ExporterName;
  /** File or directory; '-' is stdout. */
  dest?: string;
  names: string[];
  push?: boolean;
  unpack?: boolean;
  compression?: Compression;
  compressionLevel?: number;
  ociMediaTypes?: boolean;
  forceCompression?: boolean;
}

const TYPES: readonly ExporterName[] = ['image', 'registry', 'oci', 'docker', 'local', 'tar'];
const IMAGE_TYPES: readonly ExporterName[] = ['image', 'registry', 'oci', 'docker'];
/** Keys and the types they apply to. */
const KEYS: Record<string, readonly ExporterName[]> = {
  type: TYPES,
  dest: ['oci', 'docker', 'local', 'tar'],
  name: IMAGE_TYPES,
  push: ['image', 'registry'],
  unpack: ['image', 'registry'],
  compression: IMAGE_TYPES,
  'compression-level': IMAGE_TYPES,
  'oci-mediatypes': IMAGE_TYPES,
  'force-compression': IMAGE_TYPES,
};

/** Splits a CSV line: commas separate fields, double quotes group (and are removed). */
function splitCsv(spec: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < spec.length; i++) {
    const c = spec[i]!;
    if (c === '"') {
      if (quoted && spec[i + 1] === '"') {
        cur += '"';
        i++;
      } else quoted = !quoted;
    } else if (c === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  if (quoted) throw errInvalidArgument(`parse output "${spec}": unterminated quote`);
  out.push(cur);
  return out;
}

function parseBool(spec: string, key: string, value: string): boolean {
  const v = value.toLowerCase();
  if (v === 'true' || v === '1' || v === '') return true;
  if (v === 'false' || v === '0') return false;
  throw errInvalidArgument(`parse output "${spec}": key "${key}" wants true or false, not "${value}"`);
}

/** Parses one `-o/--output` value (see the module comment). */
export function parseOutputSpec(spec: string): OutputSpec {
  const s = spec.trim();
  if (s === '') throw errInvalidArgument('parse output "": empty output spec');
  if (s === '-') return { type: 'tar', dest: '-', names: [] };
  if (!s.includes('=') && !s.includes(',')) return { type: 'local', dest: s, names: [] };
  const fields = new Map<string, string[]>();
  for (const f of splitCsv(s)) {
    if (f.trim() === '') continue;
    const eq = f.indexOf('=');
    const key = (eq < 0 ? f : f.slice(0, eq)).trim().toLowerCase();
    const value = eq < 0 ? '' : f.slice(eq + 1).trim();
    if (!(key in KEYS)) {
      throw errInvalidArgument(
        `parse output "${spec}": unknown key "${key}" (want ${Object.keys(KEYS).join(', ')})`,
      );
    }
    if (eq < 0 && !['push', 'unpack', 'oci-mediatypes', 'force-compression'].includes(key)) {
      throw errInvalidArgument(`parse output "${spec}": key "${key}" needs a value (${key}=...)`);
    }
    if (key !== 'name' && fields.has(key)) {
      throw errInvalidArgument(`parse output "${spec}": key "${key}" is given twice`);
    }
    fields.set(key, [...(fields.get(key) ?? []), value]);
  }
  const typeValue = fields.get('type')?.[0];
  if (typeValue === undefined) throw errInvalidArgument(`parse output "${spec}": key "type" is required`);
  if (!(TYPES as readonly string[]).includes(typeValue)) {
    throw errInvalidArgument(
      `parse output "${spec}": unknown type "${typeValue}" (want one of ${TYPES.join(', ')})`,
    );
  }
  const type = typeValue as ExporterName;
  for (const key of fields.keys()) {
    if (!KEYS[key]!.includes(type)) {
      throw errInvalidArgument(`parse output "${spec}": key "${key}" does not apply to type=${type}`);
    }
  }
  const one = (k: string): string | undefined => fields.get(k)?.[0];
  const out: OutputSpec = { type, names: [] };
  const dest = one('dest');
  if (dest !== undefined) {
    if (dest === '') throw errInvalidArgument(`parse output "${spec}": key "dest" is empty`);
    out.dest = dest;
  }
  for (const v of fields.get('name') ?? []) {
    for (const n of v.split(',')) {
      const name = n.trim();
      if (name !== '' && !out.names.includes(name)) out.names.push(name);
    }
  }
  const bool = (k: string): boolean | undefined => {
    const v = one(k);
    return v === undefined ? undefined : parseBool(spec, k, v);
  };
  const push = bool('push');
  if (push !== undefined) out.push = push;
  const unpack = bool('unpack');
  if (unpack !== undefined) out.unpack = unpack;
  const oci = bool('oci-mediatypes');
  if (oci !== undefined) out.ociMediaTypes = oci;
  const force = bool('force-compression');
  if (force !== undefined) out.forceCompression = force;
  const comp = one('compression');
  if (comp !== undefined) {
    const c = comp.toLowerCase();
    if (c === 'gzip' || c === 'zstd') out.compression = c;
    else if (c === 'uncompressed' || c === 'none') out.compression = 'none';
    else {
      throw errInvalidArgument(
        `parse output "${spec}": key "compression" wants gzip, zstd or uncompressed, not "${comp}"`,
      );
    }
  }
  const level = one('compression-level');
  if (level !== undefined) {
    const n = Number(level);
    const zstd = out.compression === 'zstd';
    const [lo, hi] = zstd ? [1, 22] : [0, 9];
    if (!/^\d+$/.test(level) || n < lo || n > hi) {
      throw errInvalidArgument(
        `parse output "${spec}": key "compression-level" wants an integer ${lo}..${hi} for ${zstd ? 'zstd' : 'gzip'}, not "${level}"`,
      );
    }
    out.compressionLevel = n;
  }
  if (out.compression === 'zstd' && out.ociMediaTypes === false) {
    throw errInvalidArgument(`parse output "${spec}": compression=zstd needs oci-mediatypes=true`);
  }
  if (type === 'local' && out.dest === undefined) {
    throw errInvalidArgument(`parse output "${spec}": type=local needs dest=<directory>`);
  }
  if (type === 'registry' && out.names.length === 0) {
    throw errInvalidArgument(`parse output "${spec}": type=registry needs name=<registry>/<repo>:<tag>`);
  }
  if (out.push && out.names.length === 0) {
    throw errInvalidArgument(`parse output "${spec}": push=true needs name=<registry>/<repo>:<tag>`);
  }
  return out;
}

/**
 * The layer compression of the outputs without `compression=`, one for all
 * of them (so they share one image, the one --metadata-file names): gzip
 * when one of them leaves the machine compressed (push, registry, oci
 * tars); else none: the image store (docker's store keeps layers
 * uncompressed too; a later push compresses them) and docker tars (whose
 * consumer, `docker load`, stores them uncompressed).
 */
export function defaultCompression(
  outputs: readonly Pick<OutputSpec, 'type' | 'push' | 'compression'>[],
): Compression {
  const gz = outputs.some(
    (o) =>
      o.compression === undefined &&
      (o.type === 'oci' || o.type === 'registry' || (o.type === 'image' && o.push === true)),
  );
  return gz ? 'gzip' : 'none';
}

/**
 * The layer options the export of these outputs will use for its first
 * image (as `exportResult` and ./image.ts choose them), for layers computed
 * ahead of it (./layers.ts `prepareLayer`); undefined when no output makes
 * an image.
 */
export function layerOptionsFor(
  outputs: readonly OutputSpec[],
  sourceDateEpoch?: number,
): LayerOptions | undefined {
  const out = outputs.find((o) => IMAGE_TYPES.includes(o.type));
  if (!out) return undefined;
  return {
    compression: out.compression ?? defaultCompression(outputs),
    dockerMediaTypes: !(out.ociMediaTypes ?? true),
    ...(out.compressionLevel !== undefined ? { level: out.compressionLevel } : {}),
    ...(out.forceCompression ? { forceCompression: true } : {}),
    ...(sourceDateEpoch !== undefined ? { sourceDateEpoch } : {}),
  };
}

/** Parses SOURCE_DATE_EPOCH (seconds since the epoch); undefined or '' gives undefined. */
export function sourceDateEpochFrom(value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw errInvalidArgument(`SOURCE_DATE_EPOCH "${value}" is not a whole number of seconds`);
  }
  return Number(value);
}

export interface ExportResultOptions {
  /** The result: a committed snapshot name; undefined for an empty result. */
  snapshot: string | undefined;
  /** The image config from the frontend. */
  config: ImageConfig;
  outputs: OutputSpec[];
  sourceDateEpoch?: number;
  snapshotter?: SnapshotterName;
  remote?: RemoteOptions;
  stdout?: Writable;
  concurrency?: number;
  signal?: AbortSignal;
  progress?: (layer: SnapshotLayer) => void;
}

/** Exports a build result to every output (see the module comment). */
export async function exportResult(core: Core, options: ExportResultOptions): Promise<ExportResult[]> {
  const lease = exportLease(core);
  const snapshotter = options.snapshotter ?? core.defaultSnapshotter;
  const built = new Map<string, Promise<BuiltImage>>();
  const sde = options.sourceDateEpoch;
  try {
    const results: ExportResult[] = [];
    const byDefault = defaultCompression(options.outputs);
    for (const out of options.outputs) {
      const compression = out.compression ?? byDefault;
      const compressOnPush = out.compression === undefined && compression === 'none' && out.type === 'image';
      const key = JSON.stringify([
        compression,
        out.compressionLevel,
        out.ociMediaTypes ?? true,
        out.forceCompression ?? false,
        compressOnPush,
      ]);
      const source: ExportSource = {
        core,
        snapshot: options.snapshot,
        snapshotter,
        image() {
          let p = built.get(key);
          if (!p) {
            p = buildImage(core, {
              snapshot: options.snapshot,
              config: options.config,
              snapshotter,
              lease,
              compression,
              ...(compressOnPush ? { compressOnPush: true } : {}),
              ...(out.compressionLevel !== undefined ? { level: out.compressionLevel } : {}),
              ...(out.ociMediaTypes !== undefined ? { ociMediaTypes: out.ociMediaTypes } : {}),
              ...(out.forceCompression ? { forceCompression: true } : {}),
              ...(sde !== undefined ? { sourceDateEpoch: sde } : {}),
              ...(options.concurrency !== undefined ? { concurrency: options.concurrency } : {}),
              ...(options.signal ? { signal: options.signal } : {}),
              ...(options.progress ? { progress: options.progress } : {}),
            });
            built.set(key, p);
          }
          return p;
        },
      };
      results.push(
        await getExporter(out.type).export(source, {
          names: out.names,
          ...(out.dest !== undefined ? { dest: out.dest } : {}),
          ...(out.push !== undefined ? { push: out.push } : {}),
          ...(out.compression === 'none' ? { pushCompression: 'keep' as const } : {}),
          ...(out.unpack !== undefined ? { unpack: out.unpack } : {}),
          ...(sde !== undefined ? { sourceDateEpoch: sde } : {}),
          ...(options.remote ? { remote: options.remote } : {}),
          ...(options.stdout ? { stdout: options.stdout } : {}),
          ...(options.signal ? { signal: options.signal } : {}),
        }),
      );
    }
    return results;
  } finally {
    core.leases.delete(lease);
  }
}
