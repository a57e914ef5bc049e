/**
 * Kiln's LLB package: build graphs in TypeScript and serialize them.
 *
 * States are immutable; each call returns a new one. Sources make states
 * (`image`, `local`, `git`, `http`, `scratch`); `run`, `file`, `merge` and
 * `diff` derive new ones; `marshal` turns the graph behind a state into a
 * `Definition` whose ops are content-addressed (sha256 of a deterministic
 * protobuf encoding). See docs/llb.md for a guide.
 *
 * @example
 * ```ts
 * import { copy, image, local, marshal, mkdir, scratch } from '../llb/index.ts';
 *
 * const ctx = local('context', { exclude: ['node_modules'] });
 * const build = image('node:22')
 *   .dir('/app')
 *   .run({
 *     shell: 'npm ci && npm run build',
 *     mounts: [
 *       { target: '/app', source: ctx },
 *       { type: 'cache', target: '/root/.npm' },
 *     ],
 *   })
 *   .getMount('/app');
 * const out = scratch().file(mkdir('/srv', 0o755).copy(build, 'dist/', '/srv/', { copyDirContentsOnly: true }));
 * const def = marshal(out, { platform: 'linux/amd64' });
 * ```
 */

export * as pb from '../gen/kiln/llb/v1/llb_pb.ts';
export {
  type DefinitionGraph,
  type DefinitionVertex,
  definitionFromBinary,
  definitionToBinary,
  parseDefinition,
} from './definition.ts';
export { canonicalBinary, digestOf, encodeOp } from './encoding.ts';
export type { CacheSharingName, NetworkModeName, SecurityModeName } from './exec.ts';
export {
  type CopyOptions,
  copy,
  FileActions,
  type MkdirOptions,
  type MkfileOptions,
  mkdir,
  mkfile,
  type Owner,
  type RmOptions,
  rm,
} from './file.ts';
export { type MarshalOptions, marshal } from './marshal.ts';
export { diff, merge } from './merge.ts';
export {
  ATTR,
  type GitOptions,
  git,
  type HttpOptions,
  http,
  type ImageOptions,
  image,
  type LocalOptions,
  local,
} from './source.ts';
export { type Position, type Range, type SourceLocation, SourceMap } from './sourcemap.ts';
export {
  type BindMount,
  type CacheMount,
  ExecState,
  type HostIP,
  type MountSpec,
  type RunOptions,
  type SecretEnvSpec,
  type SecretMount,
  type SshMount,
  State,
  type StateMeta,
  scratch,
  type TmpfsMount,
} from './state.ts';
export type { OpOptions, Output } from './vertex.ts';
