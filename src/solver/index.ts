/**
 * Public entry of the generic solver: types (the op seam), the Solver, the
 * cache index and the progress stream. See solver.ts for the design.
 */
export type { CacheManager, CacheRecord, ExistsFunc } from './cache.ts';
export { MemoryCacheManager, SqliteCacheManager } from './cache.ts';
export { edgeKey, vertexId, vertexKey } from './keys.ts';
export type {
  LogEvent,
  ProgressEvent,
  ProgressSink,
  ProgressWriter,
  StatusEvent,
  VertexEvent,
} from './progress.ts';
export { now, ProgressChannel } from './progress.ts';
export type { SolveOptions, SolverOptions } from './solver.ts';
export { SolveError, Solver } from './solver.ts';
export type {
  CacheMap,
  CacheMapDep,
  Edge,
  Op,
  OpContext,
  ResolveOp,
  Result,
  Vertex,
  VertexOptions,
} from './types.ts';
