/**
 * Marshal: turns the vertex graph behind a state into a Definition.
 *
 * Walks from the state's output depth-first (inputs in the order each vertex
 * lists them), encodes every op canonically (encoding.ts) and names it by
 * the sha256 of those bytes. Ops are listed once each, inputs first, so a
 * subgraph shared by several users (or built twice by equal calls) appears
 * once. The last op is the terminal: one input (the state's output) and no
 * operation. The empty state (scratch) marshals to an empty definition.
 *
 * Every op gets a metadata entry (possibly empty); when one op is reached
 * through vertices with different metadata, the entries are merged, and so
 * are their source locations (`Definition.source`, set only when some op
 * has a location).
 */
import { create } from '@bufbuild/protobuf';
import { type Digest, sha256 } from '../core/digest.ts';
import { KilnError } from '../core/errors.ts';
import { hostPlatform } from '../core/images/platform.ts';
import type { Platform } from '../core/images/types.ts';
import {
  type Definition,
  DefinitionSchema,
  type Input,
  InputSchema,
  type Locations,
  LocationSchema,
  LocationsSchema,
  type OpMetadata,
  OpMetadataSchema,
  OpSchema,
  type SourceInfo,
  SourceInfoSchema,
  SourceSchema,
} from '../gen/kiln/llb/v1/llb_pb.ts';
import { encodeOp } from './encoding.ts';
import { toPlatform } from './platform.ts';
import type { SourceLocation, SourceMap } from './sourcemap.ts';
import { type MarshalContext, mergeMetadata, type Output, type StateRef, type Vertex } from './vertex.ts';

export interface MarshalOptions {
  /**
   * Platform for ops whose state does not set one (`"linux/arm64"` or a
   * Platform). Default: the host's platform.
   */
  platform?: Platform | string;
}

/**
 * Serializes the graph that produces `state` into a Definition.
 *
 * @example
 * ```ts
 * import { image, marshal } from './index.ts';
 * const def = marshal(image('busybox').run({ shell: 'echo hi > /hi' }).root());
 * def.def.length; // 3: the image source, the exec, the terminal
 * ```
 */
export function marshal(state: StateRef, opts: MarshalOptions = {}): Definition {
  const ctx: MarshalContext = {
    platform: opts.platform === undefined ? hostPlatform() : toPlatform(opts.platform),
  };
  const def: Uint8Array[] = [];
  const metadata: Record<string, OpMetadata> = {};
  const digests = new Map<Vertex, Digest>();
  const sourceIndex = new Map<SourceMap, number>();
  const infos: SourceInfo[] = [];
  const locations: Record<string, Locations> = {};
  const addLocations = (digest: Digest, locs: readonly SourceLocation[]): void => {
    for (const loc of locs) {
      let idx = sourceIndex.get(loc.source);
      if (idx === undefined) {
        idx = infos.length;
        sourceIndex.set(loc.source, idx);
        const { filename, data, language } = loc.source;
        infos.push(create(SourceInfoSchema, { filename, data, language }));
      }
      locations[digest] ??= create(LocationsSchema);
      locations[digest].locations.push(
        create(LocationSchema, { sourceIndex: idx, ranges: loc.ranges.map((r) => ({ ...r })) }),
      );
    }
  };

  const visit = (v: Vertex): Digest => {
    const known = digests.get(v);
    if (known) return known;
    const inputs: Input[] = [];
    const positions = new Map<string, number>();
    const keyOf = (o: Output): string => `${visit(o.vertex)}#${o.index}`;
    for (const o of v.inputs) {
      const key = keyOf(o);
      if (!positions.has(key)) {
        positions.set(key, inputs.length);
        inputs.push(create(InputSchema, { digest: digests.get(o.vertex)!, index: o.index }));
      }
    }
    const inputIndex = (o: Output): number => {
      const pos = positions.get(keyOf(o));
      if (pos === undefined)
        throw new KilnError(
          'Internal',
          'marshal LLB: a vertex refers to an output it does not list as an input',
        );
      return pos;
    };
    const op = create(OpSchema, { ...v.toOp(ctx, inputIndex), inputs });
    const bytes = encodeOp(op);
    const digest = sha256(bytes);
    digests.set(v, digest);
    let md = metadata[digest];
    if (!md) {
      md = create(OpMetadataSchema);
      metadata[digest] = md;
      def.push(bytes);
    }
    mergeMetadata(md, v.metadata);
    if (v.metadata.locations) addLocations(digest, v.metadata.locations);
    return digest;
  };

  const out = state.output();
  if (out) {
    const digest = visit(out.vertex);
    const terminal = create(OpSchema, { inputs: [create(InputSchema, { digest, index: out.index })] });
    const bytes = encodeOp(terminal);
    def.push(bytes);
    metadata[sha256(bytes)] = create(OpMetadataSchema);
  }
  const source = infos.length > 0 ? create(SourceSchema, { infos, locations }) : undefined;
  return create(DefinitionSchema, { def, metadata, source });
}
