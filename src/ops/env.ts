/**
 * What every op implementation gets from the worker: the core (snapshots,
 * leases, content), the caller's session (local directories, secrets, ssh
 * agent socket), the OCI runtime (probed once, lazily), the image resolver
 * and the content checksummer. Ops hold no other state.
 */
import type { Core } from '../core/metadata/index.ts';
import type { OciRuntime } from '../core/runtime/runtime.ts';
import type { Platform } from '../gen/kiln/llb/v1/llb_pb.ts';
import type { ContentChecksums } from './checksum.ts';

/** What the caller's session provides (BuildKit's session attachables). */
export interface Sessions {
  /** local source name → host directory. */
  readonly locals: Readonly<Record<string, string>>;
  /** secret id → value. */
  readonly secrets: Readonly<Record<string, Uint8Array | string>>;
  /** Path of the caller's ssh agent socket (for every ssh id not in `sshAgents`). */
  readonly ssh?: string;
  /** ssh id → agent socket path (`kiln build --ssh ID=SOCKET`, `default` for `--ssh default`). */
  readonly sshAgents?: Readonly<Record<string, string>>;
}

/** A resolved image: its config and the committed snapshot of its top layer's chain. */
export interface ResolvedImage {
  /** Digest identifying the image content (manifest or config digest). */
  readonly digest: string;
  /** The image config's `config` (Env, WorkingDir, User, ...), when known. */
  readonly config?: unknown;
  /** Committed snapshot holding the image's root tree ('' for an image with no layers). */
  readonly topChainSnapshot: string;
}

/** How image sources find images (an adapter over pull + unpack, or a test double). */
export interface ImageResolver {
  resolve(ref: string, platform: Platform | undefined, signal: AbortSignal): Promise<ResolvedImage>;
}

export interface OpEnv {
  readonly core: Core;
  readonly sessions: Sessions;
  /** The OCI runtime (probed on first use). */
  runtime(): Promise<OciRuntime>;
  readonly images?: ImageResolver;
  readonly checksums: ContentChecksums;
  /** Directory for op state that persists: cache mounts, local checksum cache, git and http fetches. */
  readonly stateDir: string;
  /** Directory for ephemeral op state, on tmpfs where possible (../core/rundir.ts): exec bundles. */
  readonly runDir: string;
}
