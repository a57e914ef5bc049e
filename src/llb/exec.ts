/**
 * The exec vertex: a process run on a root filesystem plus mounts.
 *
 * This module holds the resolved form only (absolute paths, merged env,
 * output numbers already assigned); `State.run` (state.ts) validates user
 * options and builds it. Outputs: 0 is the root filesystem, then each
 * writable bind mount in mount order. Env is encoded sorted by name, so the
 * order in which variables were set never changes an op's digest; so are
 * secret env entries (only their ids and names: never a value). Mounts
 * keep their order (a later mount may cover an earlier one).
 */
import { create } from '@bufbuild/protobuf';
import type { Platform } from '../core/images/types.ts';
import {
  CacheOptSchema,
  CacheSharing,
  ExecOpSchema,
  MountSchema,
  MountType,
  NetworkMode,
  SecretEnvSchema,
  SecretOptSchema,
  SecurityMode,
  SSHOptSchema,
  TmpfsOptSchema,
} from '../gen/kiln/llb/v1/llb_pb.ts';
import { compareKeys } from './encoding.ts';
import { pbPlatform } from './platform.ts';
import type { MarshalContext, OpBody, Output, Vertex, VertexMetadata } from './vertex.ts';

export type NetworkModeName = 'sandbox' | 'host' | 'none';
export type SecurityModeName = 'sandbox' | 'insecure';
export type CacheSharingName = 'shared' | 'private' | 'locked';

/** A mount after validation, as the exec op will carry it. */
export interface ResolvedMount {
  readonly dest: string;
  readonly type: 'bind' | 'cache' | 'tmpfs' | 'secret' | 'ssh';
  readonly source?: Output;
  readonly selector: string;
  readonly readonly: boolean;
  /** Output index, for writable bind mounts. */
  readonly output?: number;
  readonly cache?: { readonly id: string; readonly sharing: CacheSharingName };
  readonly secret?: { readonly id: string; uid: number; gid: number; mode: number; optional: boolean };
  readonly ssh?: { readonly id: string; uid: number; gid: number; mode: number; optional: boolean };
  readonly tmpfs?: { readonly size: number };
}

/** A secret exposed as an environment variable, after validation. */
export interface ResolvedSecretEnv {
  readonly id: string;
  readonly name: string;
  readonly optional: boolean;
}

export interface ExecSpec {
  readonly root: Output | undefined;
  readonly args: readonly string[];
  /** name → value; encoded sorted by name. */
  readonly env: ReadonlyMap<string, string>;
  readonly cwd: string;
  readonly user: string;
  readonly hostname: string;
  readonly extraHosts: readonly { readonly host: string; readonly ip: string }[];
  readonly validExitCodes: readonly number[];
  readonly network: NetworkModeName;
  readonly security: SecurityModeName;
  readonly mounts: readonly ResolvedMount[];
  /** Session secrets given to the process as environment variables; encoded sorted by name. */
  readonly secretEnv: readonly ResolvedSecretEnv[];
  /** Undefined: the marshal default. */
  readonly platform: Platform | undefined;
}

const NETWORK = { sandbox: NetworkMode.UNSPECIFIED, host: NetworkMode.HOST, none: NetworkMode.NONE } as const;
const SECURITY = { sandbox: SecurityMode.UNSPECIFIED, insecure: SecurityMode.INSECURE } as const;
const SHARING = {
  shared: CacheSharing.UNSPECIFIED,
  private: CacheSharing.PRIVATE,
  locked: CacheSharing.LOCKED,
} as const;
const MOUNT_TYPE = {
  bind: MountType.BIND,
  cache: MountType.CACHE,
  tmpfs: MountType.TMPFS,
  secret: MountType.SECRET,
  ssh: MountType.SSH,
} as const;

/** Capability names an exec needs, recorded in its metadata. */
export function execCaps(spec: ExecSpec): string[] {
  const caps = new Set<string>();
  for (const m of spec.mounts) caps.add(`exec.mount.${m.type}`);
  if (spec.mounts.some((m) => m.selector !== '')) caps.add('exec.mount.selector');
  if (spec.network !== 'sandbox') caps.add(`exec.network.${spec.network}`);
  if (spec.security === 'insecure') caps.add('exec.security.insecure');
  if (spec.hostname) caps.add('exec.meta.hostname');
  if (spec.secretEnv.length > 0) caps.add('exec.secret.env');
  return [...caps].sort();
}

export class ExecVertex implements Vertex {
  readonly inputs: readonly Output[];
  readonly metadata: VertexMetadata;
  readonly #spec: ExecSpec;

  constructor(spec: ExecSpec, metadata: VertexMetadata) {
    this.#spec = spec;
    this.metadata = metadata;
    const inputs: Output[] = [];
    if (spec.root) inputs.push(spec.root);
    for (const m of spec.mounts) if (m.source) inputs.push(m.source);
    this.inputs = inputs;
  }

  toOp(ctx: MarshalContext, inputIndex: (o: Output) => number): OpBody {
    const s = this.#spec;
    const env = [...s.env].sort((a, b) => compareKeys(a[0], b[0])).map(([k, v]) => `${k}=${v}`);
    const root = create(MountSchema, { dest: '/', type: MountType.BIND, output: 0 });
    if (s.root) root.input = inputIndex(s.root);
    const mounts = [root];
    for (const m of s.mounts) {
      const pb = create(MountSchema, {
        dest: m.dest,
        type: MOUNT_TYPE[m.type],
        selector: m.selector,
        readonly: m.readonly,
      });
      if (m.source) pb.input = inputIndex(m.source);
      if (m.output !== undefined) pb.output = m.output;
      if (m.cache) pb.cache = create(CacheOptSchema, { id: m.cache.id, sharing: SHARING[m.cache.sharing] });
      if (m.secret) pb.secret = create(SecretOptSchema, { ...m.secret });
      if (m.ssh) pb.ssh = create(SSHOptSchema, { ...m.ssh });
      if (m.tmpfs) pb.tmpfs = create(TmpfsOptSchema, { size: BigInt(m.tmpfs.size) });
      mounts.push(pb);
    }
    const exec = create(ExecOpSchema, {
      meta: {
        args: [...s.args],
        env,
        cwd: s.cwd,
        user: s.user,
        hostname: s.hostname,
        extraHosts: s.extraHosts.map((h) => ({ host: h.host, ip: h.ip })),
        validExitCodes: [...s.validExitCodes],
      },
      mounts,
      network: NETWORK[s.network],
      security: SECURITY[s.security],
      secretEnv: [...s.secretEnv]
        .sort((a, b) => compareKeys(a.name, b.name))
        .map((e) => create(SecretEnvSchema, { id: e.id, name: e.name, optional: e.optional })),
    });
    return { op: { case: 'exec', value: exec }, platform: pbPlatform(s.platform ?? ctx.platform) };
  }
}
