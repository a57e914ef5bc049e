/**
 * Dockerfile conversion details found by the differential corpus
 * (test/differential) to differ from docker 20.10's BuildKit, checked on
 * the converted LLB: --from naming a later stage resolves to that stage and
 * a cycle fails with BuildKit's message; the context source sends `dir`
 * (no trailing slash) for `COPY dir/ …`, so a symlink `dir` and its target
 * are sent.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import type { ImageConfig } from '../../src/core/images/types.ts';
import { convertDockerfile } from '../../src/frontend/dockerfile/convert.ts';
import { parseDefinition, type pb } from '../../src/llb/index.ts';

const EMPTY: ImageConfig = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } };

async function convert(text: string) {
  const resolved: string[] = [];
  const r = await convertDockerfile(text, {
    imageResolver: async (ref) => {
      resolved.push(ref);
      return { config: structuredClone(EMPTY) };
    },
    buildPlatform: 'linux/amd64',
  });
  const g = parseDefinition(r.definition);
  const sources = g.vertices
    .filter((v) => v.op.op.case === 'source')
    .map((v) => (v.op.op.value as pb.SourceOp).identifier);
  return { r, g, sources, resolved };
}

describe('convert: stage references as BuildKit', () => {
  it('COPY --from names a stage defined later: that stage, not an image', async () => {
    const { sources, resolved } = await convert(`FROM busybox AS a
COPY --from=b /x /x

FROM alpine AS b
RUN echo x > /x
`);
    assert.ok(sources.includes('docker-image://docker.io/library/alpine:latest'), sources.join(' '));
    assert.ok(!sources.some((s) => s.includes('library/b:')), sources.join(' '));
    assert.ok(!resolved.includes('b'));
  });

  it('stages that depend on each other fail with "circular dependency detected on stage"', async () => {
    const cases: Array<[string, string]> = [
      ['FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n', 'a'],
      ['FROM busybox AS self\nCOPY --from=self /x /x\n', 'self'],
      ['FROM busybox AS a\nRUN --mount=from=c,target=/m true\nFROM a AS b\nFROM b AS c\n', 'a'],
    ];
    for (const [text, stage] of cases) {
      await assert.rejects(
        convert(text),
        (err: unknown) =>
          isKilnError(err, 'InvalidArgument') &&
          err.message === `circular dependency detected on stage: ${stage}`,
        text,
      );
    }
  });

  it('an index --from still refers only to an earlier stage (not the current one)', async () => {
    await assert.rejects(
      convert('FROM busybox AS a\nFROM busybox AS b\nCOPY --from=1 /x /x\n'),
      /refers to current or future build stage/,
    );
  });
});

describe('convert: context paths', () => {
  it('COPY dir/ sends "dir" without its trailing slash', async () => {
    const { g } = await convert('FROM busybox\nCOPY link-to-dir/ /d/\nCOPY other/sub/ /e/\n');
    const ctx = g.vertices
      .map((v) => v.op.op.value as pb.SourceOp)
      .find((s) => s.identifier === 'local://context')!;
    assert.equal(ctx.attrs['local.followpaths'], JSON.stringify(['link-to-dir', 'other/sub']));
  });
});
