/**
 * Results of ops as committed snapshots, and the per-op snapshot session.
 *
 * Contract:
 * - Every op output is a committed snapshot of the namespace's default
 *   snapshotter; `Result.id` is its name (`kiln-result-<hex>` for op outputs,
 *   `sha256:<chainid>` for an unpacked image used as is, `kiln-empty` for the
 *   shared empty tree). Output snapshots carry the label
 *   `containerd.io/gc.root` so GC keeps them for the cache index; whoever
 *   prunes the cache deletes the record (CacheManager.deleteResult) and then
 *   removes the snapshot.
 * - Scratch (the empty tree) is never an op input in LLB (inputs name ops);
 *   where an op needs an empty tree it prepares a snapshot with no parent.
 *   Only an empty definition yields `SCRATCH`, a handle whose id is `''`
 *   (never saved in the cache index).
 * - `SnapshotRef` is a counted handle: `clone()` adds a holder, `release()`
 *   drops one; releasing never removes the snapshot (it is cache).
 * - `OpSession` holds one lease for the op's in-flight snapshots: actives and
 *   views are created under it, so GC never takes them; `close()` removes
 *   the actives and views the op did not commit, unmounts what is still
 *   mounted, and deletes the lease. Intermediate committed snapshots without
 *   the gc.root label stay alive only as parents of results.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { errFailedPrecondition, isKilnError } from '../core/errors.ts';
import type { Core } from '../core/metadata/index.ts';
import { LABEL_GC_ROOT } from '../core/metadata/index.ts';
import type { NamespacedSnapshotter } from '../core/metadata/snapshots.ts';
import { type Mount, mountAll, tempMountRoot, unmountAll } from '../core/mount/mount.ts';
import type { Result } from '../solver/types.ts';

export const EMPTY_SNAPSHOT = 'kiln-empty';
export const RESULT_PREFIX = 'kiln-result-';
/** Label on op outputs, with the producing vertex's digest. */
export const LABEL_RESULT = 'kiln.io/result';

export interface SnapshotSys {
  readonly snapshot: string;
}

/** A counted handle on a committed snapshot. */
export class SnapshotRef implements Result {
  readonly id: string;
  readonly sys: SnapshotSys;
  readonly #count: { n: number };
  #released = false;

  constructor(snapshot: string, count: { n: number } = { n: 0 }) {
    this.id = snapshot;
    this.sys = { snapshot };
    this.#count = count;
    this.#count.n++;
  }

  clone(): SnapshotRef {
    if (this.#released) throw errFailedPrecondition(`clone result "${this.id}": handle already released`);
    return new SnapshotRef(this.id, this.#count);
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    this.#count.n--;
  }
}

/** The same mounts, read-only. */
export function readOnlyMounts(mounts: Mount[]): Mount[] {
  return mounts.map((m) => ({ ...m, options: [...m.options.filter((o) => o !== 'rw' && o !== 'ro'), 'ro'] }));
}

/** The empty-definition result: no snapshot. */
export const SCRATCH: Result = {
  id: '',
  sys: { snapshot: '' },
  clone: () => SCRATCH,
  release: async () => {},
};

/** The snapshot name behind a result ('' for scratch). */
export function snapshotOf(r: Result | undefined): string {
  if (!r) return '';
  const sys = r.sys as Partial<SnapshotSys> | undefined;
  return typeof sys?.snapshot === 'string' ? sys.snapshot : r.id;
}

export function randomName(prefix: string): string {
  return `${prefix}${randomBytes(12).toString('hex')}`;
}

/** Makes sure the shared empty committed snapshot exists; returns its name. Safe against concurrent callers. */
export async function ensureEmptySnapshot(sn: NamespacedSnapshotter): Promise<string> {
  try {
    await sn.stat(EMPTY_SNAPSHOT);
    return EMPTY_SNAPSHOT;
  } catch (err) {
    if (!isKilnError(err, 'NotFound')) throw err;
  }
  const key = randomName('kiln-empty-prep-');
  await sn.prepare(key);
  try {
    await sn.commit(EMPTY_SNAPSHOT, key, { labels: { [LABEL_GC_ROOT]: 'kiln' } });
  } catch (err) {
    await sn.remove(key).catch(() => {});
    if (!isKilnError(err, 'AlreadyExists')) throw err; // else: a concurrent caller made it
  }
  return EMPTY_SNAPSHOT;
}

/** One op's snapshots, mounts and lease (see the module comment). */
export class OpSession {
  readonly core: Core;
  readonly sn: NamespacedSnapshotter;
  readonly lease: string;
  readonly #created = new Set<string>();
  readonly #mounted = new Set<string>();

  private constructor(core: Core, sn: NamespacedSnapshotter, lease: string) {
    this.core = core;
    this.sn = sn;
    this.lease = lease;
  }

  static async open(core: Core, what: string): Promise<OpSession> {
    const lease = core.leases.create({ labels: { 'kiln.io/op': what.slice(0, 200) }, ttlMs: 24 * 3600_000 });
    const sn = (await core.snapshotter()).withLease(lease.id);
    return new OpSession(core, sn, lease.id);
  }

  /** A writable snapshot on `parent` ('' = empty tree); returns its key and mounts. */
  async prepare(parent: string): Promise<{ key: string; mounts: Mount[] }> {
    const key = randomName('kiln-active-');
    this.#created.add(key);
    const mounts = await this.sn.prepare(key, parent || undefined);
    return { key, mounts };
  }

  /** A read-only view of `snapshot` ('' = an empty tree). */
  async view(snapshot: string): Promise<Mount[]> {
    const key = randomName('kiln-view-');
    this.#created.add(key);
    const parent = snapshot || (await ensureEmptySnapshot(this.sn));
    return readOnlyMounts(await this.sn.view(key, parent));
  }

  /** Mounts on a fresh directory under the temp mount root; `unmount` or `close` undoes it. */
  async mount(mounts: Mount[]): Promise<string> {
    const root = tempMountRoot();
    await mkdir(root, { recursive: true, mode: 0o700 });
    const dir = await mkdtemp(path.join(root, `m-${process.pid}-`));
    this.#mounted.add(dir);
    try {
      await mountAll(mounts, dir);
    } catch (err) {
      this.#mounted.delete(dir);
      await rmdir(dir).catch(() => {});
      throw err;
    }
    return dir;
  }

  async unmount(dir: string): Promise<void> {
    if (!this.#mounted.delete(dir)) return;
    await unmountAll(dir);
    await rmdir(dir).catch(() => {});
  }

  /** Commits an active snapshot as a result (gc root, plus `labels`) and returns a new handle on it. */
  async commitResult(
    key: string,
    vertexDigest: string,
    labels: Record<string, string> = {},
  ): Promise<SnapshotRef> {
    const name = randomName(RESULT_PREFIX);
    await this.sn.commit(name, key, {
      labels: { ...labels, [LABEL_GC_ROOT]: 'kiln', [LABEL_RESULT]: vertexDigest },
    });
    this.#created.delete(key);
    return new SnapshotRef(name);
  }

  /** Commits an active snapshot as an intermediate (kept only as a parent of results). */
  async commitIntermediate(key: string): Promise<string> {
    const name = randomName('kiln-layer-');
    await this.sn.commit(name, key);
    this.#created.delete(key);
    return name;
  }

  /** Unmounts everything, removes uncommitted snapshots (newest first), deletes the lease. */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    for (const dir of [...this.#mounted].reverse()) {
      await this.unmount(dir).catch((e: unknown) => errors.push(e));
    }
    for (const key of [...this.#created].reverse()) {
      await this.sn.remove(key).catch((e: unknown) => errors.push(e));
    }
    this.#created.clear();
    try {
      this.core.leases.delete(this.lease);
    } catch (e) {
      errors.push(e);
    }
    if (errors.length > 0) throw errors[0];
  }
}
