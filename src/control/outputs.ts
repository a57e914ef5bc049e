/**
 * Outputs of `kiln build`: `-o/--output` specs (parsed by src/exporter's
 * `parseOutputSpec`) and `-t` names turned into exporter requests, and
 * their execution through `exportResult`, one output at a time, each shown
 * as a progress step (`exporting to image`, with one status per layer).
 *
 * `-t` rule: the names go to every image-like output (image, registry,
 * oci, docker) that has none; when no output is of type image or registry,
 * an image output with those names is added (so `-t x -o type=local,…`
 * both names an image and writes the directory).
 */
import type { Writable } from 'node:stream';
import type { ImageConfig } from '../core/images/types.ts';
import type { Core } from '../core/metadata/index.ts';
import type { RemoteOptions } from '../core/remotes/index.ts';
import { type ExportResult, exportResult, type OutputSpec, parseOutputSpec } from '../exporter/index.ts';
import { now, type ProgressEvent } from '../solver/progress.ts';

/** What the build reports about its outputs (summary lines, iidfile, metadata file). */
export interface ExportRecord {
  type: string;
  names: string[];
  manifestDigest?: string;
  configDigest?: string;
  descriptor?: unknown;
  lines: string[];
  /** See ../exporter/exporters.ts `ExportResult.fromClock`. */
  fromClock?: boolean;
}

export interface RunOutputsOptions {
  /** The result snapshot (undefined for an empty result). */
  snapshot: string | undefined;
  imageConfig: ImageConfig;
  sourceDateEpoch?: number;
  remote?: RemoteOptions;
  stdout?: Writable;
  /** A CLI step in the progress view; `vertex` is its digest for status events. */
  step: <T>(name: string, fn: (vertex: string) => Promise<T>) => Promise<T>;
  emit: (ev: ProgressEvent) => void;
  signal: AbortSignal;
}

const IMAGE_LIKE = new Set(['image', 'registry', 'oci', 'docker']);

export function parseOutputs(specs: readonly string[], tags: readonly string[]): OutputSpec[] {
  const out = specs.map((s) => parseOutputSpec(s));
  if (tags.length === 0) return out;
  for (const o of out) {
    if (IMAGE_LIKE.has(o.type) && o.names.length === 0) o.names = [...tags];
  }
  if (!out.some((o) => o.type === 'image' || o.type === 'registry')) {
    out.push({ type: 'image', names: [...tags] });
  }
  return out;
}

function describe(o: OutputSpec): string {
  switch (o.type) {
    case 'image':
      return o.push ? 'exporting to image and pushing' : 'exporting to image';
    case 'registry':
      return 'exporting to registry';
    default:
      return `exporting to ${o.type}${o.dest && o.dest !== '-' ? ` ${o.dest}` : ' (stdout)'}`;
  }
}

function record(o: OutputSpec, r: ExportResult): ExportRecord {
  const names = r.images?.map((i) => i.name) ?? (o.type === 'registry' ? (r.pushed ?? []) : o.names);
  const lines: string[] = [];
  if (r.manifest && r.config) {
    const named = names.length > 0 ? ` named ${names.join(', ')}` : '';
    lines.push(`${o.type}: image ${r.config.digest} (manifest ${r.manifest.digest})${named}`);
  }
  for (const p of r.pushed ?? []) lines.push(`${o.type}: pushed ${p}`);
  if (r.dest !== undefined) lines.push(`${o.type}: written to ${r.dest === '-' ? 'stdout' : r.dest}`);
  return {
    type: o.type,
    names,
    ...(r.manifest ? { manifestDigest: r.manifest.digest, descriptor: r.manifest } : {}),
    ...(r.config ? { configDigest: r.config.digest } : {}),
    lines,
    ...(r.fromClock !== undefined ? { fromClock: r.fromClock } : {}),
  };
}

/** Exports the result to every output, in order, as one progress step (the image is built once). */
export async function runOutputs(
  core: Core,
  outputs: readonly OutputSpec[],
  opts: RunOutputsOptions,
): Promise<ExportRecord[]> {
  const name =
    outputs.length === 1 ? describe(outputs[0]!) : `exporting to ${outputs.map((o) => o.type).join(', ')}`;
  const results = await opts.step(name, (vertex) =>
    exportResult(core, {
      snapshot: opts.snapshot,
      config: opts.imageConfig,
      outputs: [...outputs],
      signal: opts.signal,
      ...(opts.sourceDateEpoch !== undefined ? { sourceDateEpoch: opts.sourceDateEpoch } : {}),
      ...(opts.remote ? { remote: opts.remote } : {}),
      ...(opts.stdout ? { stdout: opts.stdout } : {}),
      progress: (layer) => {
        const t = now();
        opts.emit({
          type: 'status',
          vertex,
          id: `layer ${layer.descriptor.digest} (${layer.source})`,
          current: layer.descriptor.size,
          total: layer.descriptor.size,
          started: t,
          completed: t,
          timestamp: t,
        });
      },
    }),
  );
  return results.map((r, i) => record(outputs[i]!, r));
}
