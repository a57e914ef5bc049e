/**
 * Build-wide options applied to a converted LLB definition, and the source
 * excerpt of a failing op:
 *
 * - `markNoCache(def, stages?)`: sets `ignoreCache` in the op metadata of
 *   every op (`--no-cache`) or of the ops of the named stages
 *   (`--no-cache-filter`) and their dependents. A stage's ops are recognised by their progress
 *   name, which the Dockerfile frontend makes `[<stage> <i>/<n>] …` (an
 *   unnamed stage is `stage-<index>`).
 * - `withNetwork(def, mode)`: `--network host|none` for every exec op that
 *   did not choose one itself (`RUN --network=…` wins). Changing an op
 *   changes its digest, so the graph is re-encoded in order with its inputs,
 *   metadata and source locations moved to the new digests.
 * - `sourceExcerpt(def, digest)`: the Dockerfile lines an op came from.
 */
import { create, fromBinary } from '@bufbuild/protobuf';
import { sha256 } from '../core/digest.ts';
import {
  type Definition,
  DefinitionSchema,
  NetworkMode,
  OpMetadataSchema,
  OpSchema,
  type OpMetadata,
} from '../gen/kiln/llb/v1/llb_pb.ts';
import { parseDefinition } from '../llb/definition.ts';
import { encodeOp } from '../llb/encoding.ts';
import type { SourceExcerpt } from './report.ts';

function stageOf(meta: OpMetadata | undefined): string | undefined {
  const name = meta?.description['llb.customname'];
  const m = name ? /^\[(\S+) \d+\/\d+\]/.exec(name) : null;
  return m?.[1];
}

/**
 * Marks ops to be run even when cached: all of them when `stages` is
 * undefined, else the ops of those stages and every op that depends on them
 * (the solver stops at the first cache hit on the way down, so a cached
 * dependent would otherwise hide the stage). Returns how many were marked.
 */
export function markNoCache(def: Definition, stages?: readonly string[]): number {
  const want = stages ? new Set(stages.map((s) => s.toLowerCase())) : undefined;
  const marked = new Set<string>();
  for (const bytes of def.def.slice(0, -1)) {
    const digest = sha256(bytes);
    const meta = def.metadata[digest];
    if (want) {
      const op = fromBinary(OpSchema, bytes);
      const stage = stageOf(meta);
      // A stage's base image is shared with other stages built on it: not a seed.
      const inStage = stage !== undefined && want.has(stage.toLowerCase()) && op.op.case !== 'source';
      const dependent = op.inputs.some((i) => marked.has(i.digest));
      if (!inStage && !dependent) continue;
    }
    marked.add(digest);
    def.metadata[digest] = create(OpMetadataSchema, { ...(meta ?? {}), ignoreCache: true });
  }
  return marked.size;
}

/** A copy of `def` whose exec ops without a network mode use `mode`. */
export function withNetwork(def: Definition, mode: 'host' | 'none'): Definition {
  const graph = parseDefinition(def);
  if (!graph.output) return def;
  const renamed = new Map<string, string>();
  const out: Uint8Array[] = [];
  const metadata: Definition['metadata'] = {};
  const locations: Record<string, NonNullable<Definition['source']>['locations'][string]> = {};
  const ops = [...graph.vertices.map((v) => ({ digest: v.digest, op: v.op })), undefined];
  for (const entry of ops) {
    // The terminal op (last in def.def) is not a vertex of the graph; rebuild it from its input.
    // structuredClone: a full copy of a proto3 message, natively (see llb/encoding.ts).
    const op = entry ? structuredClone(entry.op) : fromBinary(OpSchema, def.def.at(-1)!);
    for (const input of op.inputs) input.digest = renamed.get(input.digest) ?? input.digest;
    if (op.op.case === 'exec' && op.op.value.network === NetworkMode.UNSPECIFIED) {
      op.op.value.network = mode === 'host' ? NetworkMode.HOST : NetworkMode.NONE;
    }
    const bytes = encodeOp(op);
    const digest = sha256(bytes);
    out.push(bytes);
    if (entry) {
      renamed.set(entry.digest, digest);
      const meta = def.metadata[entry.digest];
      if (meta) metadata[digest] = meta;
      const loc = def.source?.locations[entry.digest];
      if (loc) locations[digest] = loc;
    }
  }
  return create(DefinitionSchema, {
    def: out,
    metadata,
    ...(def.source ? { source: { infos: def.source.infos, locations } } : {}),
  });
}

/** The source lines that produced op `digest`, when the definition carries them. */
export function sourceExcerpt(def: Definition, digest: string): SourceExcerpt | undefined {
  const locs = def.source?.locations[digest]?.locations ?? [];
  for (const loc of locs) {
    const info = def.source?.infos[loc.sourceIndex];
    const range = loc.ranges[0];
    if (!info || !range?.start) continue;
    const lines = new TextDecoder().decode(info.data).split('\n');
    const start = range.start.line;
    const end = Math.max(start, range.end?.line ?? start);
    return { filename: info.filename, start, end, lines };
  }
  return undefined;
}

/** Names the build context's local source `[internal] load build context` (BuildKit's name) when it has no name. */
export function nameContextSource(def: Definition, contextName: string): void {
  for (const bytes of def.def.slice(0, -1)) {
    const op = fromBinary(OpSchema, bytes);
    if (op.op.case !== 'source' || op.op.value.identifier !== `local://${contextName}`) continue;
    const digest = sha256(bytes);
    const meta = def.metadata[digest];
    if (meta?.description['llb.customname']) continue;
    def.metadata[digest] = create(OpMetadataSchema, {
      ...(meta ?? {}),
      description: { ...(meta?.description ?? {}), 'llb.customname': '[internal] load build context' },
    });
  }
}
