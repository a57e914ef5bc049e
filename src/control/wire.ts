/**
 * Build requests, progress events and build outcomes between their engine
 * form (./build.ts, src/solver/progress.ts) and their wire form
 * (kiln.control.v1). Both directions live here so a round trip is tested in
 * one place; the module holds types and pure functions only.
 */
import { create } from '@bufbuild/protobuf';
import type { BuildOutcome, BuildParams } from './build.ts';
import {
  type BuildRequest,
  BuildRequestSchema,
  type BuildResponse,
  BuildResponseSchema,
  type BuildResult,
} from '../gen/kiln/control/v1/control_pb.ts';
import type { ProgressEvent } from '../solver/progress.ts';

export type { BuildOutcome } from './build.ts';

/** A build's parameters as a request; `namespace` and `cwd` are the client's. */
export function toProtoRequest(p: BuildParams, client: { namespace: string; cwd: string }): BuildRequest {
  return create(BuildRequestSchema, {
    context: p.context,
    dockerfile: p.file ?? '',
    tags: p.tags,
    buildArgs: p.buildArgs,
    labels: p.labels,
    target: p.target ?? '',
    platform: p.platform ?? '',
    secrets: p.secrets,
    ssh: p.ssh ?? {},
    noCache: p.noCache,
    noCacheFilter: p.noCacheFilter,
    network: p.network ?? '',
    outputs: p.outputs,
    pull: p.pull,
    insecureRegistries: p.insecureRegistries,
    certsDirs: p.certsDirs,
    iidfile: p.iidfile ?? '',
    metadataFile: p.metadataFile ?? '',
    namespace: client.namespace,
    sourceDateEpoch: p.sourceDateEpoch ?? '',
    cwd: client.cwd,
  });
}

/** A request's build parameters (empty strings and maps are absent options). */
export function fromProtoRequest(req: BuildRequest): BuildParams {
  const p: BuildParams = {
    context: req.context,
    tags: [...req.tags],
    buildArgs: { ...req.buildArgs },
    labels: { ...req.labels },
    secrets: { ...req.secrets },
    noCache: req.noCache,
    noCacheFilter: [...req.noCacheFilter],
    outputs: [...req.outputs],
    pull: req.pull,
    insecureRegistries: [...req.insecureRegistries],
    certsDirs: [...req.certsDirs],
  };
  if (req.dockerfile) p.file = req.dockerfile;
  if (req.target) p.target = req.target;
  if (req.platform) p.platform = req.platform;
  if (req.network) p.network = req.network;
  if (req.iidfile) p.iidfile = req.iidfile;
  if (req.metadataFile) p.metadataFile = req.metadataFile;
  if (req.sourceDateEpoch) p.sourceDateEpoch = req.sourceDateEpoch;
  if (Object.keys(req.ssh).length > 0) p.ssh = { ...req.ssh };
  if (req.cwd) p.cwd = req.cwd;
  return p;
}

/** An engine event as a stream message. */
export function toProtoEvent(ev: ProgressEvent): BuildResponse {
  switch (ev.type) {
    case 'vertex':
      return create(BuildResponseSchema, {
        event: {
          case: 'vertex',
          value: {
            digest: ev.digest,
            name: ev.name,
            cached: ev.cached ?? false,
            ...(ev.started !== undefined ? { started: ev.started } : {}),
            ...(ev.completed !== undefined ? { completed: ev.completed } : {}),
            ...(ev.error !== undefined ? { error: ev.error } : {}),
          },
        },
      });
    case 'log':
      return create(BuildResponseSchema, {
        event: {
          case: 'log',
          value: { vertex: ev.vertex, stream: ev.stream, data: ev.data, timestamp: ev.timestamp },
        },
      });
    case 'status':
      return create(BuildResponseSchema, {
        event: {
          case: 'status',
          value: {
            vertex: ev.vertex,
            id: ev.id,
            current: ev.current,
            timestamp: ev.timestamp,
            ...(ev.total !== undefined ? { total: ev.total } : {}),
            ...(ev.started !== undefined ? { started: ev.started } : {}),
            ...(ev.completed !== undefined ? { completed: ev.completed } : {}),
          },
        },
      });
  }
}

/** A stream message's event in engine form (undefined for a result or an unknown case). */
export function fromProtoEvent(ev: BuildResponse['event']): ProgressEvent | undefined {
  switch (ev.case) {
    case 'vertex': {
      const v = ev.value;
      return {
        type: 'vertex',
        digest: v.digest,
        name: v.name,
        ...(v.cached ? { cached: true } : {}),
        ...(v.started !== undefined ? { started: v.started } : {}),
        ...(v.completed !== undefined ? { completed: v.completed } : {}),
        ...(v.error !== undefined ? { error: v.error } : {}),
      };
    }
    case 'log': {
      const l = ev.value;
      return {
        type: 'log',
        vertex: l.vertex,
        stream: l.stream === 1 ? 1 : 2,
        data: l.data,
        timestamp: l.timestamp,
      };
    }
    case 'status': {
      const s = ev.value;
      return {
        type: 'status',
        vertex: s.vertex,
        id: s.id,
        current: s.current,
        timestamp: s.timestamp,
        ...(s.total !== undefined ? { total: s.total } : {}),
        ...(s.started !== undefined ? { started: s.started } : {}),
        ...(s.completed !== undefined ? { completed: s.completed } : {}),
      };
    }
    default:
      return undefined;
  }
}

/** A build's outcome as the stream's last message. */
export function toProtoResult(outcome: BuildOutcome): BuildResponse {
  const e = outcome.summary.error;
  return create(BuildResponseSchema, {
    event: {
      case: 'result',
      value: {
        results: outcome.summary.results,
        warnings: outcome.summary.warnings,
        imageId: outcome.imageId ?? '',
        canceled: outcome.canceled,
        ...(e
          ? {
              error: {
                message: e.message,
                vertexDigest: e.vertex?.digest ?? '',
                vertexName: e.vertex?.name ?? '',
                ...(e.source ? { source: e.source } : {}),
              },
            }
          : {}),
      },
    },
  });
}

export function fromProtoResult(r: BuildResult): BuildOutcome {
  const e = r.error;
  return {
    summary: {
      results: [...r.results],
      warnings: [...r.warnings],
      ...(e
        ? {
            error: {
              message: e.message,
              ...(e.vertexDigest ? { vertex: { digest: e.vertexDigest, name: e.vertexName } } : {}),
              ...(e.source
                ? {
                    source: {
                      filename: e.source.filename,
                      start: e.source.start,
                      end: e.source.end,
                      lines: [...e.source.lines],
                    },
                  }
                : {}),
            },
          }
        : {}),
    },
    ...(r.imageId ? { imageId: r.imageId } : {}),
    canceled: r.canceled,
  };
}
