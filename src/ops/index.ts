/**
 * Public entry of the ops layer: LLB ops executed on snapshots for the
 * solver (source, exec, file, merge, diff), the result handles, the content
 * checksums for content-based cache keys, and the session/resolver types.
 * `resolveLlbOp` picks the implementation for one decoded LLB op.
 */
import { errInvalidArgument } from '../core/errors.ts';
import type { Op as OpPb } from '../gen/kiln/llb/v1/llb_pb.ts';
import type { Op } from '../solver/types.ts';
import type { OpEnv } from './env.ts';
import { ExecOp } from './exec.ts';
import { FileOp } from './file.ts';
import { DiffOp, MergeOp } from './merge.ts';
import { SourceOp } from './source.ts';

export { ContentChecksums, checksumTree } from './checksum.ts';
export type { ImageResolver, OpEnv, ResolvedImage, Sessions } from './env.ts';
export { ExecOp, summarizeArgs } from './exec.ts';
export { FileOp } from './file.ts';
export { StoreImageResolver, type StoreImageResolverOptions } from './images.ts';
export { DiffOp, MergeOp } from './merge.ts';
export { matchGlob, PatternMatcher } from './patterns.ts';
export {
  EMPTY_SNAPSHOT,
  LABEL_RESULT,
  OpSession,
  RESULT_PREFIX,
  SCRATCH,
  SnapshotRef,
  snapshotOf,
} from './refs.ts';
export { SourceOp } from './source.ts';

/** The op implementation for one LLB op (`digest` is the op's digest). */
export function resolveLlbOp(env: OpEnv, op: OpPb, digest: string): Op {
  switch (op.op.case) {
    case 'source':
      return new SourceOp(env, op.op.value, digest, op.platform);
    case 'exec':
      return new ExecOp(env, op.op.value, digest, op.platform);
    case 'file':
      return new FileOp(env, op.op.value, digest);
    case 'merge':
      return new MergeOp(env, op.op.value, digest);
    case 'diff':
      return new DiffOp(env, op.op.value, digest);
    default:
      throw errInvalidArgument(`resolve LLB op ${digest}: unsupported operation "${op.op.case}"`);
  }
}
