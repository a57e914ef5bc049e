/**
 * One Dockerfile build on an open core, shared by the embedded `kiln build`
 * and by kilnd's Build call (./server.ts): context → frontend → solve on an
 * in-process worker → outputs, with progress as events.
 *
 * `BuildParams` holds what the caller resolved already: build-arg values
 * taken from the caller's environment, secret values, the ssh agent sockets,
 * paths (absolute for kilnd, whose working directory is not the client's).
 * A failure never throws: it comes back as `summary.error` (with the failing
 * step and its Dockerfile lines when there is one), the way printers show it.
 */
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { errInvalidArgument, isKilnError } from '../core/errors.ts';
import { writeOutputFile } from '../core/fs/safe.ts';
import { parsePlatform } from '../core/images/platform.ts';
import { parseReference } from '../core/images/reference.ts';
import type { Core } from '../core/metadata/index.ts';
import {
  Authorizer,
  defaultCertsDirs,
  dockerConfigCredentials,
  type RemoteOptions,
} from '../core/remotes/index.ts';
import { DockerfileSyntaxError, convertDockerfile } from '../frontend/dockerfile/index.ts';
import type { Definition } from '../gen/kiln/llb/v1/llb_pb.ts';
import { SCRATCH, snapshotOf } from '../ops/refs.ts';
import { now, type ProgressEvent } from '../solver/progress.ts';
import type { CacheManager } from '../solver/cache.ts';
import { KEY_WORK_MS, SolveError } from '../solver/solver.ts';
import type { Result, Vertex } from '../solver/types.ts';
import { Worker } from '../worker/worker.ts';
import type { BuildSummary, ErrorReport } from './report.ts';
import { type BuildContext, prepareContext } from './context.ts';
import { markNoCache, nameContextSource, sourceExcerpt, withNetwork } from './definition.ts';
import { BuildImageResolver } from './images.ts';
import { type ExportRecord, parseOutputs, runOutputs } from './outputs.ts';
import { layerOptionsFor } from '../exporter/index.ts';
import { type LayerOptions, prepareLayer } from '../exporter/layers.ts';
import { layerChain } from '../llb/chain.ts';
import { parseDefinition } from '../llb/definition.ts';
import { sha256 } from '../core/digest.ts';
import { unpack } from '../core/images/unpack.ts';
import { lookupMemo, type MemoEntry, MemoRecorder, memoKey, recordMemo } from './memo.ts';
import type { BuildParams } from './params.ts';

/** Digest prefix of the progress steps a build shows outside the solve. */
const INTERNAL = 'kiln-internal:';

export type { BuildParams } from './params.ts';

export interface BuildIO {
  /** The state root (for the default certificate directories). */
  root: string;
  emit(ev: ProgressEvent): void;
  /** Where outputs with `dest=-` go; without it such an output is refused. */
  stdout?: Writable;
  /** Where a `-` context or Dockerfile is read from. */
  stdin?: Readable;
  signal: AbortSignal;
  /** The cache index to use (kilnd keeps one per namespace); default one opened for this build. */
  cache?: CacheManager;
  /** The running code's identity, for the build memo (./memo.ts); without one, no memo. */
  codeId?: string;
}

export interface BuildOutcome {
  summary: BuildSummary;
  /** The exported image's ID (config digest), when an output made an image. */
  imageId?: string;
  canceled: boolean;
  /** Answered from the build memo (./memo.ts). */
  memo?: boolean;
  /** The failure's stack, for KILN_DEBUG. */
  stack?: string;
}

function epochOf(params: BuildParams): number | undefined {
  const raw = params.buildArgs.SOURCE_DATE_EPOCH ?? params.sourceDateEpoch;
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d+$/.test(raw))
    throw errInvalidArgument(`invalid SOURCE_DATE_EPOCH "${raw}": want seconds since 1970`);
  return Number(raw);
}

function fullName(ref: string): string {
  try {
    return parseReference(ref).full;
  } catch {
    return ref;
  }
}

/** Writes `data` to `file` atomically (temp + fsync + rename). */
async function writeAtomic(file: string, data: string): Promise<void> {
  // Temp file and rename, except onto a device or FIFO (e.g. /dev/null), which is written in place.
  await writeOutputFile(file, (fh) => fh.writeFile(data));
}

/** Turns any failure into the report the printers show. */
function errorReport(err: unknown, def: Definition | undefined, dockerfile: string | undefined): ErrorReport {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof SolveError) {
    const source = def ? sourceExcerpt(def, err.vertex.digest) : undefined;
    return { message, vertex: err.vertex, ...(source ? { source } : {}) };
  }
  if (err instanceof DockerfileSyntaxError && err.line > 0 && dockerfile !== undefined) {
    return {
      message,
      source: { filename: err.file, start: err.line, end: err.line, lines: dockerfile.split('\n') },
    };
  }
  // Errors from the frontend's image resolution carry `Dockerfile:N:` in front.
  const m = /^(\S+?):(\d+): /.exec(message);
  if (m && dockerfile !== undefined) {
    const line = Number(m[2]);
    return { message, source: { filename: m[1]!, start: line, end: line, lines: dockerfile.split('\n') } };
  }
  return { message };
}

/**
 * The solver stops at the first cache hit on the way down, so the ancestors
 * of a cached vertex send no event; like BuildKit, show them as CACHED too
 * (inputs first).
 */
function reportSkipped(
  worker: Worker,
  def: Definition,
  seen: Set<string>,
  emit: (ev: ProgressEvent) => void,
): void {
  const edge = worker.loadDefinition(def);
  if (!edge) return;
  const done = new Set<string>();
  const order: Vertex[] = [];
  const visit = (v: Vertex): void => {
    if (done.has(v.digest)) return;
    done.add(v.digest);
    for (const i of v.inputs) visit(i.vertex);
    order.push(v);
  };
  visit(edge.vertex);
  const t = now();
  for (const v of order) {
    if (!seen.has(v.digest))
      emit({ type: 'vertex', digest: v.digest, name: v.name, cached: true, started: t, completed: t });
  }
}

/**
 * The solver hook that computes the layers of the image's chain
 * (../llb/chain.ts) as their steps finish, while later steps run, so the
 * export finds them done (../exporter/layers.ts `prepareLayer`). Undefined
 * when no output makes an image. A layer that fails here is computed again
 * by the export, which reports the error.
 */
function aheadOfExport(
  core: Core,
  def: Definition,
  layerOpts: LayerOptions | undefined,
  opts: { signal: AbortSignal; started: (p: Promise<void>) => void },
): ((vertex: Vertex, ids: readonly string[]) => void) | undefined {
  if (!layerOpts) return undefined;
  let chain: Map<string, number> | undefined;
  return (vertex, ids) => {
    // Parsed on the first step that runs: a build answered from the cache never needs it.
    chain ??= layerChain(parseDefinition(def));
    const index = chain.get(vertex.digest);
    const id = index === undefined ? undefined : ids[index];
    if (id === undefined || opts.signal.aborted) return;
    opts.started(prepareLayer(core, id, { ...layerOpts, signal: opts.signal }).catch(() => undefined));
  };
}

/** Writes `--iidfile` (when there is an image) and `--metadata-file`. */
async function writeResultFiles(
  params: BuildParams,
  cwd: string,
  imageId: string | undefined,
  meta: Record<string, unknown>,
): Promise<void> {
  if (imageId !== undefined && params.iidfile) await writeAtomic(path.resolve(cwd, params.iidfile), imageId);
  if (params.metadataFile)
    await writeAtomic(path.resolve(cwd, params.metadataFile), `${JSON.stringify(meta, null, 2)}\n`);
}

/**
 * The memo entry of a build that just succeeded, or undefined when it is not
 * to be memoised (./memo.ts): one image output whose config took no time
 * from the clock, every source op a local directory or an image, each with
 * the cache map the solver got for it.
 */
function memoEntry(
  recorder: MemoRecorder,
  def: Definition,
  records: readonly ExportRecord[],
  summary: BuildSummary,
  meta: Record<string, unknown>,
): MemoEntry | undefined {
  const image = records[0];
  const target = image?.descriptor as MemoEntry['target'] | undefined;
  if (records.length !== 1 || !image || image.type !== 'image' || image.fromClock !== false || !target)
    return undefined;
  if (!recorder.rootKey || recorder.rootIds.length === 0 || recorder.unmemoisable) return undefined;
  const sources: MemoEntry['sources'] = [];
  for (const bytes of def.def) {
    const key = recorder.sourceKeys.get(sha256(bytes));
    if (key !== undefined) sources.push({ op: Buffer.from(bytes).toString('base64'), key });
  }
  if (sources.length !== recorder.sourceKeys.size) return undefined;
  return {
    v: 1,
    images: recorder.images,
    sources,
    root: { key: recorder.rootKey, ids: recorder.rootIds },
    target: { mediaType: target.mediaType, digest: target.digest, size: target.size },
    names: image.names,
    steps: recorder.steps,
    results: [...summary.results],
    warnings: [...summary.warnings],
    ...(image.configDigest ? { imageId: image.configDigest } : {}),
    meta,
  };
}

/** Runs one build (see the module comment); never throws. */
export async function executeBuild(core: Core, params: BuildParams, io: BuildIO): Promise<BuildOutcome> {
  const summary: BuildSummary = { results: [], warnings: [] };
  const seen = new Set<string>();
  /** What the build memo records, when this build may be memoised. */
  let recorder: MemoRecorder | undefined;
  const emit = (ev: ProgressEvent): void => {
    if (ev.type === 'vertex') {
      if (!seen.has(ev.digest)) recorder?.step(ev.digest, ev.name, ev.digest.startsWith(INTERNAL));
      seen.add(ev.digest);
    } else seen.add(ev.vertex);
    io.emit(ev);
  };
  let internal = 0;
  /** A step outside the solve, shown in the progress like a solver vertex. */
  const step = async <T>(name: string, fn: (vertex: string) => Promise<T>): Promise<T> => {
    const digest = `${INTERNAL}${++internal}`;
    const started = now();
    emit({ type: 'vertex', digest, name, started });
    try {
      const r = await fn(digest);
      emit({ type: 'vertex', digest, name, started, completed: now() });
      return r;
    } catch (err) {
      emit({ type: 'vertex', digest, name, started, completed: now(), error: (err as Error).message });
      throw err;
    }
  };

  let bctx: BuildContext | undefined;
  let def: Definition | undefined;
  let worker: Worker | undefined;
  let result: Result | undefined;
  let imageId: string | undefined;
  /** Layers computed while the build goes on (see `aheadOfExport`). */
  const ahead: Promise<void>[] = [];
  const stopAhead = new AbortController();
  try {
    const epoch = epochOf(params);
    if (params.network !== undefined && !['default', 'host', 'none'].includes(params.network)) {
      throw errInvalidArgument(`invalid --network "${params.network}": want default, host or none`);
    }
    const platform = params.platform ? parsePlatform(params.platform) : undefined;
    const cwd = params.cwd ?? process.cwd();
    const outputs = parseOutputs(params.outputs, params.tags);
    if (params.cwd) {
      for (const o of outputs) if (o.dest !== undefined && o.dest !== '-') o.dest = path.resolve(cwd, o.dest);
    }
    if (!io.stdout) {
      const toStdout = outputs.find((o) => o.dest === '-');
      if (toStdout) {
        throw errInvalidArgument(
          `-o type=${toStdout.type},dest=-: this build has no standard output to write to (through kilnd, give dest=FILE)`,
        );
      }
    }
    const remote: RemoteOptions = {
      insecure: params.insecureRegistries,
      certsDirs:
        params.certsDirs.length > 0
          ? params.certsDirs.map((d) => path.resolve(cwd, d))
          : defaultCertsDirs(io.root),
      authorizer: new Authorizer({ credentials: dockerConfigCredentials() }),
    };
    const resolver = new BuildImageResolver(core, {
      mode: params.pull ? 'pull' : 'default',
      pull: { remote },
    });

    bctx = await step(
      `[internal] load build definition from ${params.file && params.file !== '-' ? path.basename(params.file) : 'Dockerfile'}`,
      () =>
        prepareContext(params.context, {
          cwd,
          ...(params.file ? { file: params.file } : {}),
          ...(io.stdin ? { stdin: io.stdin } : {}),
        }),
    );
    const context = bctx;
    const frontendResolver = resolver.frontend();
    const memo = memoKey({ codeId: io.codeId, core, params, context, outputs, epoch });
    /** Set once the definition is known (see `aheadOfExport`). */
    let onExecuted: ((vertex: Vertex, ids: readonly string[]) => void) | undefined;
    worker = new Worker({
      core,
      images: resolver,
      sessions: {
        locals: { context: context.dir },
        secrets: params.secrets,
        ...(params.ssh ? { sshAgents: params.ssh } : {}),
      },
      onExecuted: (vertex, ids) => onExecuted?.(vertex, ids),
      ...(memo !== undefined
        ? {
            onSourceCacheMap: (vertex: Vertex, identifier: string, map: { digest: string }) =>
              recorder?.source(vertex.digest, identifier, map.digest),
          }
        : {}),
      ...(io.cache ? { cache: io.cache } : {}),
    });
    if (memo !== undefined) {
      const w = worker;
      const entry = await lookupMemo(memo, {
        core,
        cache: w.cache,
        image: resolver.inStore(),
        sourceKey: (op, signal) => w.sourceCacheMap(op, signal),
        unpack: async (target) => {
          await unpack(core, target, { signal: io.signal });
        },
        signal: io.signal,
      });
      if (entry) {
        for (const s of entry.steps) {
          if (s.digest === undefined) await step(s.name, async () => undefined);
          else {
            // A source's cache map that the check computed shows its time, as in a solve.
            const t = now();
            const ms = w.sourceWorkMs(s.digest) ?? 0;
            const started = ms >= KEY_WORK_MS ? t - ms : t;
            emit({ type: 'vertex', digest: s.digest, name: s.name, cached: true, started, completed: t });
          }
        }
        summary.results.push(...entry.results);
        summary.warnings.push(...entry.warnings);
        await writeResultFiles(params, cwd, entry.imageId, entry.meta);
        return { summary, ...(entry.imageId ? { imageId: entry.imageId } : {}), canceled: false, memo: true };
      }
      recorder = new MemoRecorder();
    }
    const converted = await convertDockerfile(context.dockerfile, {
      filename: context.dockerfileName,
      buildArgs: params.buildArgs,
      labels: params.labels,
      contextName: 'context',
      dockerignore: context.dockerignore,
      ...(params.target ? { target: params.target } : {}),
      ...(platform ? { platform } : {}),
      ...(epoch !== undefined ? { created: new Date(epoch * 1000) } : {}),
      imageResolver: (ref, p) =>
        step(`[internal] load metadata for ${fullName(ref)}`, async (vertex) => {
          const found = await frontendResolver(ref, p, (pp) => {
            if (pp.status !== 'done' && pp.status !== 'exists' && pp.status !== 'unpacked') return;
            const t = now();
            emit({
              type: 'status',
              vertex,
              id: `${pp.kind} ${pp.digest} ${pp.status}`,
              current: pp.offset,
              total: pp.total,
              completed: t,
              timestamp: t,
            });
          });
          recorder?.image(ref, p, found.digest);
          return found;
        }),
    });
    for (const w of converted.warnings)
      summary.warnings.push(`${context.dockerfileName}:${w.line}: ${w.message}`);
    def = converted.definition;
    nameContextSource(def, 'context');
    if (params.network === 'host' || params.network === 'none') def = withNetwork(def, params.network);
    if (params.noCache) markNoCache(def);
    else if (params.noCacheFilter.length > 0) {
      const wanted = params.noCacheFilter.flatMap((s) => s.split(',')).filter(Boolean);
      const known = new Set(converted.stages.map((s) => s.name.toLowerCase()));
      for (const s of wanted) {
        if (!known.has(s.toLowerCase()))
          throw errInvalidArgument(`--no-cache-filter: no stage named "${s}" in ${context.dockerfileName}`);
      }
      markNoCache(def, wanted);
    }

    onExecuted = aheadOfExport(core, def, layerOptionsFor(outputs, epoch), {
      signal: AbortSignal.any([io.signal, stopAhead.signal]),
      started: (p) => ahead.push(p),
    });
    const rec = recorder;
    result = await worker.solveDefinition(def, {
      signal: io.signal,
      progress: { write: emit },
      ...(rec
        ? {
            rootRecord: (key: string, ids: string[]) => {
              rec.rootKey = key;
              rec.rootIds = ids;
            },
          }
        : {}),
    });
    reportSkipped(worker, def, seen, emit);

    if (outputs.length > 0) {
      const records: ExportRecord[] = await runOutputs(core, outputs, {
        snapshot: result === SCRATCH ? undefined : snapshotOf(result),
        imageConfig: converted.imageConfig,
        ...(epoch !== undefined ? { sourceDateEpoch: epoch } : {}),
        remote,
        ...(io.stdout ? { stdout: io.stdout } : {}),
        step,
        emit,
        signal: io.signal,
      });
      const image =
        records.find((r) => r.type === 'image' || r.type === 'registry') ??
        records.find((r) => r.manifestDigest);
      for (const r of records) summary.results.push(...r.lines);
      imageId = image?.configDigest;
      const meta: Record<string, unknown> = {};
      if (image) {
        meta['containerimage.digest'] = image.manifestDigest;
        meta['containerimage.config.digest'] = image.configDigest;
        if (image.descriptor) meta['containerimage.descriptor'] = image.descriptor;
        const names = [...new Set(image.names)];
        if (names.length > 0) meta['image.name'] = names.join(',');
      }
      await writeResultFiles(params, cwd, image ? (image.configDigest ?? '') : undefined, meta);
      if (recorder && memo !== undefined && result !== SCRATCH) {
        const entry = memoEntry(recorder, def, records, summary, meta);
        if (entry) await recordMemo(worker.cache, memo, entry);
      }
    } else {
      summary.warnings.push(
        'No output specified: the build result will only remain in the build cache. Use -t NAME to make an image, or -o to export it.',
      );
      if (params.iidfile) summary.warnings.push('--iidfile: no image output, nothing written');
      if (params.metadataFile) await writeAtomic(path.resolve(cwd, params.metadataFile), '{}\n');
    }
    return { summary, ...(imageId ? { imageId } : {}), canceled: false };
  } catch (err) {
    summary.error = errorReport(err, def, bctx?.dockerfile);
    return {
      summary,
      canceled: io.signal.aborted || isKilnError(err, 'Canceled'),
      ...(err instanceof Error && err.stack ? { stack: err.stack } : {}),
    };
  } finally {
    // Layers still computing ahead are of no use to a build that failed; an export waited for its own.
    stopAhead.abort();
    await Promise.all(ahead);
    await result?.release().catch(() => undefined);
    worker?.close();
    await bctx?.cleanup();
  }
}
