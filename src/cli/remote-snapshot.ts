/**
 * Entry of the thin client's V8 start-up snapshot (`kiln --host … build`,
 * ./remote.ts): scripts/build-cli.mjs bundles it as one CommonJS file and
 * runs `node --build-snapshot` on it, as for the full CLI (./snapshot.ts,
 * whose rules apply here too); bin/kiln starts the thin client from it when
 * it is current.
 *
 * Before the snapshot is taken, `warmUp` encodes and decodes a build request
 * and one stream message of each kind: protobuf-es builds its readers and
 * field tables per message type on first use, and those are then in the
 * snapshot. A no-change build of workload 1 through kilnd (bench/build-suite)
 * took 71.3 ms from the bundle, 68.5 from a snapshot without the warm-up and
 * 59.9 with it (medians of 21 alternating runs; BuildKit 71.0 in the same
 * runs). It also loads node:net, the client's transport.
 */
import { startupSnapshot } from 'node:v8';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { startCli } from './program.ts';
import { runRemote } from './remote.ts';
import type { BuildOutcome, BuildParams } from '../control/build.ts';
import {
  fromProtoEvent,
  fromProtoResult,
  toProtoEvent,
  toProtoRequest,
  toProtoResult,
} from '../control/wire.ts';
import { BuildRequestSchema, BuildResponseSchema } from '../gen/kiln/control/v1/control_pb.ts';

function warmUp(): void {
  // The transport (../client/http1.ts) is node:net, which a snapshot can hold (node:http cannot):
  // loaded here, the first connection costs ~0.7 ms instead of ~2.3.
  process.getBuiltinModule('node:net');
  const params: BuildParams = {
    context: 'warm-up',
    tags: ['warm-up.invalid/app:1'],
    buildArgs: { MODE: 'release' },
    labels: { purpose: 'warm-up' },
    secrets: {},
    noCache: false,
    noCacheFilter: [],
    outputs: ['type=image'],
    pull: false,
    insecureRegistries: [],
    certsDirs: [],
  };
  const request = toProtoRequest(params, { namespace: 'default', cwd: '/' });
  fromBinary(BuildRequestSchema, toBinary(BuildRequestSchema, request));
  const outcome: BuildOutcome = {
    summary: { results: ['image sha256:0 named warm-up.invalid/app:1'], warnings: [] },
    imageId: 'sha256:0',
    canceled: false,
  };
  const messages = [
    toProtoEvent({ type: 'vertex', digest: 'sha256:0', name: 'RUN true', started: 1, completed: 2 }),
    toProtoEvent({ type: 'log', vertex: 'sha256:0', stream: 1, data: new Uint8Array([10]), timestamp: 1 }),
    toProtoEvent({ type: 'status', vertex: 'sha256:0', id: 'layer', current: 1, total: 2, timestamp: 1 }),
    toProtoResult(outcome),
  ];
  for (const m of messages) {
    const back = fromBinary(BuildResponseSchema, toBinary(BuildResponseSchema, m));
    if (back.event.case === 'result') fromProtoResult(back.event.value);
    else fromProtoEvent(back.event);
  }
}

startupSnapshot.setDeserializeMainFunction(() => startCli(runRemote));
warmUp();
