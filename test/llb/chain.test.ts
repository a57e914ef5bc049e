/**
 * layerChain: the steps whose results become an image's layers. Through the
 * Dockerfile frontend (only the target stage's steps, from the top; a COPY
 * --from another stage does not pull that stage in) and through the builder
 * API (an exec's other writable mount is not on the chain; a file op's
 * actions chained to each other lead to its input; merge and scratch end it).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ImageConfig } from '../../src/core/images/types.ts';
import { convertDockerfile } from '../../src/frontend/dockerfile/convert.ts';
import { layerChain } from '../../src/llb/chain.ts';
import {
  copy,
  type DefinitionGraph,
  image,
  local,
  marshal,
  merge,
  mkdir,
  parseDefinition,
  type State,
  scratch,
} from '../../src/llb/index.ts';

const BASE: ImageConfig = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } };

function graphOf(state: State): DefinitionGraph {
  return parseDefinition(marshal(state, { platform: 'linux/amd64' }));
}

/** The chain as [step name or op kind, output index], top first. */
function named(g: DefinitionGraph): [string, number][] {
  return [...layerChain(g)].map(([digest, index]) => {
    const v = g.get(digest)!;
    return [v.metadata?.description?.['llb.customname'] ?? String(v.op.op.case), index];
  });
}

describe('layerChain', () => {
  test("a multi-stage Dockerfile: the target stage's steps, not the stage it copies from", async () => {
    const r = await convertDockerfile(
      [
        'FROM busybox AS build',
        'WORKDIR /src',
        'COPY . .',
        'RUN make',
        'FROM busybox',
        'COPY --from=build /src/app /app',
        'ENV A=1',
        'RUN --mount=type=cache,target=/c app > /out',
        '',
      ].join('\n'),
      { imageResolver: async () => ({ config: structuredClone(BASE) }), buildPlatform: 'linux/amd64' },
    );
    assert.deepEqual(named(parseDefinition(r.definition)), [
      ['[stage-1 3/3] RUN --mount=type=cache,target=/c app > /out', 0],
      ['[stage-1 2/3] COPY --from=build /src/app /app', 0],
    ]);
  });

  test("an exec's root output continues the chain; another mount's output is not on it", () => {
    const base = image('busybox').file(mkdir('/work', 0o755));
    const run = base.run({ args: ['make'], mounts: [{ target: '/out' }] });
    const root = graphOf(run.root());
    assert.deepEqual(
      named(root).map(([kind, index]) => [kind.split(' ')[0], index]),
      [
        ['exec', 0],
        ['file', 0],
      ],
    );
    assert.deepEqual(named(graphOf(run.getMount('/out'))), [], 'the /out tree is not on top of the image');
  });

  test("a file op's chained actions lead to its input; merge and scratch end the chain", () => {
    const ctx = local('context');
    const base = image('busybox')
      .run({ args: ['true'] })
      .root();
    const chained = base.file(mkdir('/a', 0o755).mkdir('/a/b', 0o755).copy(ctx, '/x', '/a/b/'));
    assert.deepEqual(
      named(graphOf(chained)).map(([kind, index]) => [kind.split(' ')[0], index]),
      [
        ['file', 0],
        ['exec', 0],
      ],
    );
    assert.deepEqual(
      named(graphOf(scratch().file(copy(ctx, '/x', '/x')))).length,
      1,
      'ends at the empty tree',
    );
    const merged = merge([base, scratch().file(copy(ctx, '/x', '/x'))]).file(mkdir('/m', 0o755));
    assert.deepEqual(
      named(graphOf(merged)).map(([kind]) => kind),
      ['file'],
      'stops at the merge',
    );
  });
});
