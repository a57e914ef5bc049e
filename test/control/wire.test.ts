/**
 * The wire form of build requests, progress events and build outcomes (src/control/wire.ts):
 * every event kind and an outcome with and without an error survive a round
 * trip through protobuf bytes unchanged (optional fields stay absent).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import type { BuildOutcome, BuildParams } from '../../src/control/build.ts';
import {
  fromProtoEvent,
  fromProtoRequest,
  fromProtoResult,
  toProtoEvent,
  toProtoRequest,
  toProtoResult,
} from '../../src/control/wire.ts';
import { BuildRequestSchema, BuildResponseSchema } from '../../src/gen/kiln/control/v1/control_pb.ts';
import type { ProgressEvent } from '../../src/solver/progress.ts';

const wire = (ev: ReturnType<typeof toProtoEvent>) =>
  fromBinary(BuildResponseSchema, toBinary(BuildResponseSchema, ev));

test('progress events survive the wire', () => {
  const events: ProgressEvent[] = [
    { type: 'vertex', digest: 'sha256:a', name: 'RUN x', started: 1.5 },
    { type: 'vertex', digest: 'sha256:a', name: 'RUN x', started: 1.5, completed: 2.25, cached: true },
    { type: 'vertex', digest: 'sha256:b', name: 'RUN y', started: 0, completed: 3, error: 'exit code 1' },
    { type: 'log', vertex: 'sha256:a', stream: 2, data: new Uint8Array([0, 1, 255]), timestamp: 7.125 },
    { type: 'status', vertex: 'sha256:a', id: 'layer x', current: 5, timestamp: 8 },
    {
      type: 'status',
      vertex: 'sha256:a',
      id: 'layer y',
      current: 5,
      total: 10,
      started: 1,
      completed: 2,
      timestamp: 9,
    },
  ];
  for (const ev of events) assert.deepEqual(fromProtoEvent(wire(toProtoEvent(ev)).event), ev);
});

test('build outcomes survive the wire', () => {
  const ok: BuildOutcome = {
    summary: { results: ['image: image sha256:c named x'], warnings: ['w'] },
    imageId: 'sha256:c',
    canceled: false,
  };
  const failed: BuildOutcome = {
    summary: {
      results: [],
      warnings: [],
      error: {
        message: 'boom',
        vertex: { digest: 'sha256:d', name: 'RUN false' },
        source: { filename: 'Dockerfile', start: 2, end: 3, lines: ['FROM x', 'RUN \\', '  false'] },
      },
    },
    canceled: true,
  };
  const plain: BuildOutcome = {
    summary: { results: [], warnings: [], error: { message: 'no such file' } },
    canceled: false,
  };
  for (const o of [ok, failed, plain]) {
    const back = wire(toProtoResult(o)).event;
    assert.equal(back.case, 'result');
    assert.deepEqual(fromProtoResult(back.value), o);
  }
});

test('build parameters survive the wire, absent options staying absent', () => {
  const full: BuildParams = {
    context: 'ctx',
    file: 'Dockerfile.dev',
    tags: ['a:1', 'b:2'],
    buildArgs: { A: '1' },
    labels: { l: 'v' },
    target: 'test',
    platform: 'linux/arm64',
    secrets: { s: new Uint8Array([1, 2]) },
    ssh: { default: '/run/agent.sock' },
    noCache: true,
    noCacheFilter: ['build'],
    network: 'host',
    outputs: ['type=local,dest=out'],
    pull: true,
    insecureRegistries: ['127.0.0.1:5000'],
    certsDirs: ['certs'],
    iidfile: 'iid',
    metadataFile: 'meta.json',
    sourceDateEpoch: '0',
    cwd: '/src',
  };
  const minimal: BuildParams = {
    context: '/ctx',
    tags: [],
    buildArgs: {},
    labels: {},
    secrets: {},
    noCache: false,
    noCacheFilter: [],
    outputs: [],
    pull: false,
    insecureRegistries: [],
    certsDirs: [],
    cwd: '/',
  };
  for (const p of [full, minimal]) {
    const req = toProtoRequest(p, { namespace: 'ns', cwd: p.cwd! });
    const back = fromBinary(BuildRequestSchema, toBinary(BuildRequestSchema, req));
    assert.equal(back.namespace, 'ns');
    assert.deepEqual(fromProtoRequest(back), p);
  }
});
