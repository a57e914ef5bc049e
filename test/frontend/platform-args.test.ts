/**
 * The predefined platform build arguments as docker 20.10's BuildKit shows
 * them (observed with `docker build --platform linux/arm64`: TARGETPLATFORM
 * `linux/arm64`, TARGETVARIANT empty): arm64's default variant v8 is left
 * out, other variants are kept, and a stage's `FROM --platform` does not
 * change TARGET* (they are the build's target).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parsePlatform } from '../../src/core/images/platform.ts';
import { convertDockerfile } from '../../src/frontend/dockerfile/convert.ts';
import { platformArgs } from '../../src/frontend/dockerfile/platform-args.ts';
import { parseDefinition, type pb } from '../../src/llb/index.ts';

test('arm64 has no variant in the platform args; arm/v7 keeps its variant', () => {
  const a = platformArgs(parsePlatform('linux/amd64'), parsePlatform('linux/arm64'));
  assert.equal(a.get('TARGETPLATFORM'), 'linux/arm64');
  assert.equal(a.get('TARGETARCH'), 'arm64');
  assert.equal(a.get('TARGETVARIANT'), '');
  assert.equal(a.get('BUILDPLATFORM'), 'linux/amd64');
  assert.equal(a.get('BUILDARCH'), 'amd64');
  const v7 = platformArgs(parsePlatform('linux/arm64/v8'), parsePlatform('linux/arm/v7'));
  assert.equal(v7.get('TARGETPLATFORM'), 'linux/arm/v7');
  assert.equal(v7.get('TARGETVARIANT'), 'v7');
  assert.equal(v7.get('BUILDPLATFORM'), 'linux/arm64');
  assert.equal(v7.get('BUILDVARIANT'), '');
});

test('FROM --platform runs that stage for arm64 while TARGETARCH stays the build target', async () => {
  const r = await convertDockerfile(
    'FROM --platform=linux/arm64 busybox\nARG TARGETARCH BUILDARCH\nRUN echo $TARGETARCH $BUILDARCH\n',
    {
      buildPlatform: 'linux/amd64',
      imageResolver: async (_ref, p) => ({
        config: { architecture: p.architecture, os: p.os, rootfs: { type: 'layers', diff_ids: [] } },
      }),
    },
  );
  const exec = parseDefinition(r.definition).vertices.find((v) => v.op.op.case === 'exec')!;
  assert.equal(exec.op.platform?.architecture, 'arm64');
  const env = (exec.op.op.value as pb.ExecOp).meta!.env;
  assert.ok(env.includes('TARGETARCH=amd64'), env.join(' '));
  assert.ok(env.includes('BUILDARCH=amd64'), env.join(' '));
  assert.equal(r.imageConfig.architecture, 'arm64');
});
