/**
 * Containers and tasks, in containerd's model: a container is metadata (the
 * image, the snapshot that is its root filesystem, a ContainerSpec); a task
 * is its running process; exec adds processes to a running task.
 *
 * - `create` resolves the image (a manifest, or the host platform's entry of
 *   an index), unpacks it when its top chain-ID snapshot (`sha256:<chainid>`)
 *   is missing, prepares the active snapshot `container/<id>` on it, and
 *   records the container. The snapshot is held by a lease `container/<id>`
 *   (no expiry) so GC keeps it until the container is deleted.
 * - `runTask` runs the task in the foreground: it writes an owner record
 *   (`<run dir>/containers/<ns>/<id>/owner.json`, see ../rundir.ts), mounts the snapshot on
 *   `.../rootfs` (kept mounted while the task runs), generates config.json
 *   there, runs it with the OCI runtime under the runtime id `<ns>.<id>`,
 *   and always unmounts and removes the bundle afterwards. Exit code, signal
 *   and docker-style start errors (126/127) are those of `OciRuntime.run`.
 * - `kill` signals a running task (from any process); `exec` runs another
 *   process in it (runtime `exec`, see ../runtime/exec.ts); `delete` removes
 *   the record, the snapshot, the lease and the directory (a running task
 *   is refused, or with `force` killed first and waited for).
 * - `recover` (call at startup): for each container directory whose owner
 *   process is gone (e.g. Kiln got SIGKILL mid-run), unmounts everything
 *   below it, removes the bundle, kills and deletes the runtime's leftover
 *   containers (`cleanupStale`), marks the record stopped (exit code 255, as
 *   docker reports a task lost with its daemon) and deletes the records of
 *   `--rm` containers. It also sweeps, in the service's namespace, `--rm`
 *   containers left unstarted or unremoved and the lease and snapshot of a
 *   create that died before its record, once older than `leftoverAgeMs`.
 *   Cheap when nothing is stale: a directory scan and two small queries.
 *
 * Events published: /containers/create|delete, /tasks/start|exit|delete,
 * /tasks/exec-added, /snapshots/prepare|remove.
 *
 * Limits: tasks run only in the foreground of the process that started them
 * (no shim; no detached mode, no restart); the network is `host` or `none`
 * (the ContainerSpec keeps a `network` field for an isolated mode later);
 * the task's pid is not reported in /tasks/start (0).
 */
import { randomBytes } from 'node:crypto';
import { type Dirent, existsSync, mkdirSync, rmdirSync, rmSync, unlinkSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  errFailedPrecondition,
  errInvalidArgument,
  isErrno,
  isKilnError,
  KilnError,
  wrap,
} from '../errors.ts';
import { sha256 } from '../digest.ts';
import { EventBus, type Publisher } from '../events/bus.ts';
import { readJsonBlob } from '../images/content.ts';
import { hostPlatform, selectManifest } from '../images/platform.ts';
import { resolveImage } from '../images/push.ts';
import { type Descriptor, type ImageConfig, isIndexMediaType, parseIndex } from '../images/types.ts';
import { chainIDs, readManifestAndConfig, unpack } from '../images/unpack.ts';
import type { Core, SnapshotterName } from '../metadata/index.ts';
import { removeTree } from '../fs/safe.ts';
import { type Mount as CoreMount, mountAll, unmountAll } from '../mount/mount.ts';
import { canonicalPath, mountsUnder, readMountinfo } from '../mount/mountinfo.ts';
import { type CgroupLayout, detectCgroups } from '../runtime/cgroups.ts';
import { execInContainer } from '../runtime/exec.ts';
import type { OciRuntime, RunResult } from '../runtime/runtime.ts';
import { type ExtraMount, GENERATED_ETC_FILES, generateSpec, readSpec, writeSpec } from '../runtime/spec.ts';
import { resolveUserInRootfs } from '../runtime/user.ts';
import { ownerAlive, writeOwner } from '../runtime/owner.ts';
import { runDirFor } from '../rundir.ts';
import { withInitLayer } from './init.ts';
import {
  type Container,
  type ContainerSpec,
  ContainerStore,
  type Network,
  validateContainerId,
} from './store.ts';
import { noteLeftover } from '../lock.ts';

export interface CreateContainerOptions {
  /** Default: 12 random hex digits. */
  id?: string;
  image: string;
  /** Replaces the image's Cmd (the Entrypoint stays, as with docker). */
  command?: string[];
  /** KEY=VALUE (or KEY alone: taken from `hostEnv`), added to / overriding the image's Env. */
  env?: string[];
  user?: string;
  cwd?: string;
  tty?: boolean;
  network?: Network;
  readonlyRootfs?: boolean;
  mounts?: ExtraMount[];
  hostname?: string;
  labels?: Record<string, string>;
  autoRemove?: boolean;
  snapshotter?: SnapshotterName;
  hostEnv?: NodeJS.ProcessEnv;
}

export interface TaskIO {
  stdin?: Readable | Buffer | string;
  stdout?: Writable;
  stderr?: Writable;
  signal?: AbortSignal;
}

export interface ExecOptions extends TaskIO {
  args: string[];
  env?: string[];
  user?: string;
  cwd?: string;
  tty?: boolean;
}

/** Merges KEY=VALUE lists: later keys replace earlier ones, order of first appearance kept. */
export function mergeEnv(
  base: readonly string[],
  extra: readonly string[],
  hostEnv: NodeJS.ProcessEnv = {},
): string[] {
  const out = new Map<string, string>();
  for (const e of base) {
    const i = e.indexOf('=');
    out.set(i < 0 ? e : e.slice(0, i), e);
  }
  for (const e of extra) {
    const i = e.indexOf('=');
    if (i === 0) throw errInvalidArgument(`environment variable "${e}" has no name`);
    if (i < 0) {
      // docker's `-e NAME`: take the value from the caller's environment, or drop it.
      const v = hostEnv[e];
      if (v === undefined) out.delete(e);
      else out.set(e, `${e}=${v}`);
    } else out.set(e.slice(0, i), e);
  }
  return [...out.values()];
}

/** What runTask writes into a bundle beside the rootfs mount point (the /etc files: generateSpec). */
const BUNDLE_FILES = [...GENERATED_ETC_FILES, 'config.json', 'owner.json'];

/** Age after which a half-made or unremoved `--rm` container is treated as left over by a dead process. */
const LEFTOVER_AGE_MS = 60_000;

export class ContainerService {
  readonly core: Core;
  readonly runtime: OciRuntime;
  readonly events: Publisher;
  readonly store: ContainerStore;
  /** `<run dir>/containers` (see rundir.ts), holding `<ns>/<id>` bundles. */
  readonly dir: string;

  readonly #leftoverAgeMs: number;
  #cgroups: Promise<CgroupLayout> | undefined;

  constructor(opts: { core: Core; runtime: OciRuntime; events?: Publisher; leftoverAgeMs?: number }) {
    this.#leftoverAgeMs = opts.leftoverAgeMs ?? LEFTOVER_AGE_MS;
    this.core = opts.core;
    this.runtime = opts.runtime;
    this.events = opts.events ?? new EventBus();
    this.store = new ContainerStore(opts.core.db, opts.core.namespace);
    this.dir = path.join(runDirFor(opts.core.root), 'containers');
  }

  get namespace(): string {
    return this.core.namespace;
  }

  /** The runtime's id for a container of this namespace. */
  runtimeId(id: string): string {
    return `${this.namespace}.${id}`;
  }

  /**
   * The task's cgroup: `/kiln-<hash of the root>-<ns>.<id>`. Without it the
   * runtime uses `/<runtime id>`, shared by every Kiln root on the host, and
   * deleting one root's container kills the processes of another root's
   * container of the same id.
   */
  cgroupsPath(id: string): string {
    return `/kiln-${sha256(this.core.root).slice(7, 19)}-${this.runtimeId(id)}`;
  }

  bundleDir(id: string): string {
    return path.join(this.dir, this.namespace, id);
  }

  rootfsDir(id: string): string {
    return path.join(this.bundleDir(id), 'rootfs');
  }

  get(id: string): Container {
    return this.store.get(id);
  }

  list(): Container[] {
    return this.store.list();
  }

  /** The manifest and config of an image (a manifest, or the host platform's entry of an index). */
  async #imageConfig(
    name: string,
  ): Promise<{ manifest: Descriptor; config: ImageConfig; imageName: string }> {
    const img = resolveImage(this.core, name);
    const target = img.target as Descriptor;
    // The blobs come from the content store's memory after the first read (readBlob).
    let desc = target;
    if (isIndexMediaType(desc.mediaType)) {
      const index = parseIndex(await readJsonBlob(this.core.content, desc, 'index'));
      const m = selectManifest(index.manifests, hostPlatform());
      if (!m) throw errFailedPrecondition(`image "${name}": no manifest for this platform in ${desc.digest}`);
      desc = m;
    }
    const { config } = await readManifestAndConfig(this.core.content, desc);
    return { manifest: desc, config, imageName: img.name };
  }

  async create(opts: CreateContainerOptions): Promise<Container> {
    const id = opts.id ?? randomBytes(6).toString('hex');
    validateContainerId(id);
    if (this.store.has(id)) {
      throw new KilnError(
        'AlreadyExists',
        `create container "${id}": already exists in namespace "${this.namespace}"`,
      );
    }
    const { manifest, config, imageName } = await this.#imageConfig(opts.image);
    const cc = config.config ?? {};
    const entrypoint = cc.Entrypoint ?? [];
    const cmd = opts.command && opts.command.length > 0 ? opts.command : (cc.Cmd ?? []);
    const args = [...entrypoint, ...cmd];
    if (args.length === 0) {
      throw errInvalidArgument(
        `create container "${id}": no command given and image "${opts.image}" has none`,
      );
    }
    const spec: ContainerSpec = {
      args,
      env: mergeEnv(cc.Env ?? [], opts.env ?? [], opts.hostEnv),
      tty: opts.tty ?? false,
      network: opts.network ?? 'none',
      readonlyRootfs: opts.readonlyRootfs ?? false,
      mounts: opts.mounts ?? [],
    };
    const cwd = opts.cwd ?? cc.WorkingDir;
    if (cwd) spec.cwd = cwd;
    const user = opts.user ?? cc.User;
    if (user) spec.user = user;
    if (opts.hostname) spec.hostname = opts.hostname;

    const snapshotter = opts.snapshotter ?? this.core.defaultSnapshotter;
    const chain = chainIDs(config.rootfs.diff_ids);
    const parent = chain.at(-1);
    const sn = await this.core.snapshotter(snapshotter);
    if (parent !== undefined) {
      try {
        await sn.stat(parent);
      } catch (err) {
        if (!isKilnError(err, 'NotFound')) throw err;
        await unpack(this.core, manifest, { snapshotter });
      }
    }
    const leaseId = `container/${id}`;
    const key = `container/${id}`;
    this.core.leases.create({ id: leaseId, labels: { 'kiln.dev/container': id } });
    let made = false;
    try {
      await sn.withLease(leaseId).prepare(key, parent, { labels: { 'kiln.dev/container': id } });
      made = true;
      this.events.publish(this.namespace, '/snapshots/prepare', {
        snapshotter: sn.name,
        key,
        parent: parent ?? '',
      });
      const c = this.store.create({
        id,
        image: imageName,
        snapshotter: sn.name,
        snapshotKey: key,
        runtime: this.runtime.name,
        spec,
        ...(opts.labels ? { labels: opts.labels } : {}),
        ...(opts.autoRemove ? { autoRemove: true } : {}),
      });
      this.events.publish(this.namespace, '/containers/create', {
        id,
        image: imageName,
        runtime: this.runtime.name,
      });
      return c;
    } catch (err) {
      if (made) await sn.remove(key).catch(() => undefined);
      this.core.leases.delete(leaseId);
      throw wrap(err, `create container "${id}"`);
    }
  }

  /** True when the container's task is running in a live Kiln process. */
  async isRunning(id: string): Promise<boolean> {
    return await ownerAlive(path.join(this.bundleDir(id), 'owner.json'));
  }

  /** Runs the container's task in the foreground (see the module comment). */
  async runTask(id: string, io: TaskIO = {}): Promise<RunResult> {
    const c = this.store.get(id);
    if (await this.isRunning(id)) {
      throw errFailedPrecondition(`start container "${id}": its task is already running`);
    }
    const bundle = this.bundleDir(id);
    const rootfs = this.rootfsDir(id);
    const sn = await this.core.snapshotter(c.snapshotter as SnapshotterName);
    // Leftovers of a crashed run of this container.
    if (existsSync(bundle)) await this.#cleanBundle(bundle);
    mkdirSync(rootfs, { recursive: true, mode: 0o711 });
    await writeOwner(path.join(bundle, 'owner.json'));
    let exit: RunResult | undefined;
    let started = false;
    try {
      // The image's init directory (./init.ts) keeps the runtime's mount-point stubs out of the
      // container's own layer.
      const mounts = await withInitLayer(await sn.mounts(c.snapshotKey));
      // A container removed when it exits never mounts its upper directory again: `volatile`
      // spares the unmount overlayfs's sync of the whole upper file system (~1 ms when idle,
      // as long as the host's dirty data takes when it is busy). Kernels before 5.10 refuse the
      // option: then the mount is made without it.
      const fast = c.autoRemove ? mounts.map(volatileOverlay) : mounts;
      try {
        await mountAll(fast, rootfs);
      } catch (err) {
        if (fast === mounts) throw err;
        await mountAll(mounts, rootfs);
      }
      const { spec } = await generateSpec({
        rootfs,
        args: c.spec.args,
        env: c.spec.env,
        ...(c.spec.cwd ? { cwd: c.spec.cwd } : {}),
        ...(c.spec.user ? { user: c.spec.user } : {}),
        ...(c.spec.hostname ? { hostname: c.spec.hostname } : {}),
        terminal: c.spec.tty,
        network: c.spec.network,
        readonlyRootfs: c.spec.readonlyRootfs,
        mounts: c.spec.mounts,
        filesDir: bundle,
        cgroups: await this.#cgroupLayout(),
        cgroupsPath: this.cgroupsPath(id),
        annotations: { 'kiln.dev/container': id, 'kiln.dev/namespace': this.namespace },
      });
      await writeSpec(bundle, spec);
      this.store.setStatus(id, 'running');
      started = true;
      this.events.publish(this.namespace, '/tasks/start', { containerId: id, pid: 0 });
      exit = await this.runtime.run(bundle, {
        id: this.runtimeId(id),
        tty: c.spec.tty,
        ...(io.stdin !== undefined ? { stdin: io.stdin } : {}),
        ...(io.stdout ? { stdout: io.stdout } : {}),
        ...(io.stderr ? { stderr: io.stderr } : {}),
        ...(io.signal ? { signal: io.signal } : {}),
      });
      return exit;
    } finally {
      // Canceled: killed with SIGKILL; a runtime failure: 255, as docker reports a lost task.
      const code = exit?.exitCode ?? (io.signal?.aborted ? 137 : 255);
      await this.#cleanBundle(bundle);
      if (started) {
        this.#markStopped(id, code);
        this.#taskEnded(id, exit?.signal ?? null, code);
      }
    }
  }

  #taskEnded(id: string, signal: string | null, code: number): void {
    this.events.publish(this.namespace, '/tasks/exit', {
      containerId: id,
      exitCode: code,
      signal,
      exitedAt: new Date().toISOString(),
    });
    this.events.publish(this.namespace, '/tasks/delete', { containerId: id, exitCode: code });
  }

  /** The host's cgroup layout, detected once per service. */
  #cgroupLayout(): Promise<CgroupLayout> {
    this.#cgroups ??= detectCgroups();
    return this.#cgroups;
  }

  #markStopped(id: string, code: number): void {
    try {
      this.store.setStatus(id, 'stopped', code);
    } catch (err) {
      if (!isKilnError(err, 'NotFound')) throw err; // removed meanwhile (rm -f)
    }
  }

  /** Unmounts and removes a bundle directory's contents (never recursively through a mount). */
  async #cleanBundle(bundle: string): Promise<void> {
    const rootfs = path.join(bundle, 'rootfs');
    await unmountAll(rootfs);
    try {
      rmdirSync(rootfs);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw wrap(err, `remove "${rootfs}"`);
    }
    // The files Kiln wrote, on the calling thread (microseconds each).
    for (const name of BUNDLE_FILES) rmSync(path.join(bundle, name), { force: true });
    // Bundles of earlier versions kept the generated /etc files in <bundle>/etc; anything else
    // found there goes through removeTree, which refuses to cross a mount.
    const etc = path.join(bundle, 'etc');
    if (existsSync(etc) && !removeFiles(etc, GENERATED_ETC_FILES)) await removeTree(etc);
  }

  /** Sends a signal to a running task. */
  async kill(id: string, signal: NodeJS.Signals | string | number = 'SIGKILL'): Promise<void> {
    this.store.get(id);
    if (!(await this.isRunning(id))) throw errFailedPrecondition(`kill container "${id}": it is not running`);
    await this.runtime.kill(this.runtimeId(id), signal);
  }

  /** Runs another process in the running task, in the foreground. */
  async exec(id: string, opts: ExecOptions): Promise<RunResult> {
    const c = this.store.get(id);
    if (!(await this.isRunning(id)))
      throw errFailedPrecondition(`exec in container "${id}": it is not running`);
    if (opts.args.length === 0) throw errInvalidArgument(`exec in container "${id}": no command given`);
    const spec = await readSpec(this.bundleDir(id));
    const proc = structuredClone(spec.process);
    proc.args = opts.args;
    proc.terminal = opts.tty ?? false;
    proc.env = mergeEnv(
      proc.env.filter((e) => !(e.startsWith('TERM=') && !proc.terminal)),
      [...(proc.terminal ? ['TERM=xterm'] : []), ...(opts.env ?? [])],
    );
    if (opts.cwd) proc.cwd = opts.cwd;
    if (opts.user) {
      const u = await resolveUserInRootfs(this.rootfsDir(id), opts.user);
      proc.user = {
        uid: u.uid,
        gid: u.gid,
        ...(u.additionalGids.length ? { additionalGids: u.additionalGids } : {}),
      };
      proc.env = mergeEnv(proc.env, [`HOME=${u.home}`]);
    }
    const execId = randomBytes(6).toString('hex');
    this.events.publish(this.namespace, '/tasks/exec-added', { containerId: c.id, execId, args: opts.args });
    return await execInContainer(this.runtime, this.runtimeId(id), proc, {
      ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
      ...(opts.stdout ? { stdout: opts.stdout } : {}),
      ...(opts.stderr ? { stderr: opts.stderr } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  }

  /**
   * Deletes a container: record, snapshot, lease, directory. A running task
   * is refused unless `force`, which kills it and waits (up to `timeoutMs`)
   * for its Kiln process to finish it.
   */
  async delete(id: string, opts: { force?: boolean; timeoutMs?: number } = {}): Promise<void> {
    const c = this.store.get(id);
    if (await this.isRunning(id)) {
      if (!opts.force) {
        throw errFailedPrecondition(
          `remove container "${id}": it is running; kill it first or force the removal`,
        );
      }
      await this.runtime.kill(this.runtimeId(id), 'KILL').catch(() => undefined);
      const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
      while (await this.isRunning(id)) {
        if (Date.now() > deadline) {
          throw new KilnError('Unavailable', `remove container "${id}": its task did not stop in time`);
        }
        await sleep(50);
      }
      if (!this.store.has(id)) return; // an --rm container removed by its own process
    }
    await this.#remove(c);
  }

  async #remove(c: Container): Promise<void> {
    const bundle = this.bundleDir(c.id);
    // A task that ended cleaned its bundle already (runTask's finally): then the directory is
    // empty and one rmdir does. Otherwise (a task that never ran, or a crash) clean it first.
    if (!removeEmptyDir(bundle)) {
      await this.#cleanBundle(bundle);
      // not empty (leftovers recovery handles) or already gone
      if (!removeEmptyDir(bundle) && existsSync(bundle)) noteLeftover();
    }
    const sn = await this.core.snapshotter(c.snapshotter as SnapshotterName);
    try {
      await sn.remove(c.snapshotKey);
      this.events.publish(this.namespace, '/snapshots/remove', { snapshotter: sn.name, key: c.snapshotKey });
    } catch (err) {
      if (!isKilnError(err, 'NotFound')) throw wrap(err, `remove container "${c.id}": snapshot`);
    }
    try {
      this.core.leases.delete(`container/${c.id}`);
    } catch (err) {
      if (!isKilnError(err, 'NotFound')) throw err;
    }
    if (this.store.delete(c.id)) this.events.publish(this.namespace, '/containers/delete', { id: c.id });
  }

  /**
   * Startup recovery across all namespaces (see the module comment). Returns
   * the `<ns>/<id>` of the containers whose stale task state was cleaned.
   */
  async recover(): Promise<string[]> {
    const cleaned: string[] = [];
    const stale: { ns: string; id: string; bundle: string }[] = [];
    // Bundles lived under the root itself before they moved to the run directory (rundir.ts).
    for (const dir of [this.dir, path.join(this.core.root, 'containers')]) {
      let namespaces: Dirent[];
      try {
        namespaces = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue;
        throw err;
      }
      for (const nsEnt of namespaces) {
        if (!nsEnt.isDirectory()) continue;
        for (const ent of await readdir(path.join(dir, nsEnt.name), { withFileTypes: true })) {
          if (!ent.isDirectory()) continue;
          const bundle = path.join(dir, nsEnt.name, ent.name);
          if (await ownerAlive(path.join(bundle, 'owner.json'))) continue;
          const mounted = mountsUnder(await readMountinfo(), canonicalPath(bundle)).length > 0;
          const ownerFile = await readdir(bundle).then(
            (f) => f.includes('owner.json') || f.includes('config.json'),
          );
          if (mounted || ownerFile) stale.push({ ns: nsEnt.name, id: ent.name, bundle });
        }
      }
    }
    await this.#sweepLeftovers(cleaned);
    if (stale.length === 0) return cleaned;
    // Runtime containers of dead owners first (they keep the rootfs busy).
    await this.runtime.cleanupStale();
    for (const { ns, id, bundle } of stale) {
      const svc = ns === this.namespace ? this : this.withNamespace(ns);
      await svc.#cleanBundle(bundle);
      if (bundle !== svc.bundleDir(id)) removeEmptyDir(bundle);
      cleaned.push(`${ns}/${id}`);
      if (!svc.store.has(id)) continue;
      const c = svc.store.get(id);
      if (c.status === 'running') {
        svc.store.setStatus(id, 'stopped', 255);
        svc.events.publish(ns, '/tasks/exit', {
          containerId: id,
          exitCode: 255,
          signal: null,
          exitedAt: new Date().toISOString(),
        });
      }
      if (c.autoRemove) await svc.#remove(c);
    }
    return cleaned;
  }

  /**
   * In this namespace: `--rm` containers whose Kiln process died between
   * create and start or before removing them, and the lease and snapshot of
   * a create that died before its record was written. Only what is older
   * than `leftoverAgeMs` (default 60 s), so another process's create in flight is not touched.
   */
  async #sweepLeftovers(cleaned: string[]): Promise<void> {
    const cutoff = Date.now() - this.#leftoverAgeMs;
    for (const c of this.store.list()) {
      if (c.updatedAt.getTime() > cutoff || (!c.autoRemove && c.status !== 'running')) continue;
      if (await this.isRunning(c.id)) continue;
      // A task recorded as running whose bundle is gone with no owner: its run directory was
      // lost with a reboot (rundir.ts), so nothing else would ever mark it stopped.
      if (c.status === 'running') {
        this.#markStopped(c.id, 255);
        this.#taskEnded(c.id, null, 255);
      }
      if (!c.autoRemove) continue;
      await this.#remove(c);
      cleaned.push(`${this.namespace}/${c.id}`);
    }
    for (const lease of this.core.leases.list()) {
      const id = lease.labels['kiln.dev/container'];
      if (id === undefined || lease.id !== `container/${id}` || lease.createdAt.getTime() > cutoff) continue;
      if (this.store.has(id)) continue;
      for (const r of this.core.leases.listResources(lease.id)) {
        if (!r.type.startsWith('snapshots/')) continue;
        const sn = await this.core.snapshotter(r.type.slice('snapshots/'.length) as SnapshotterName);
        await sn.remove(r.id).catch(() => undefined);
      }
      this.core.leases.delete(lease.id);
      cleaned.push(`${this.namespace}/${id}`);
    }
  }

  withNamespace(ns: string): ContainerService {
    return new ContainerService({
      core: this.core.withNamespace(ns),
      runtime: this.runtime,
      events: this.events,
      leftoverAgeMs: this.#leftoverAgeMs,
    });
  }
}

/**
 * Removes the named files of a directory and then the directory itself;
 * false when the directory holds anything else (or cannot be removed), for
 * the caller to fall back to a careful removal. A missing file or directory
 * counts as removed. Unlinking never follows into a mount.
 */
function removeFiles(dir: string, names: readonly string[]): boolean {
  try {
    for (const n of names) {
      try {
        unlinkSync(path.join(dir, n));
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) return false;
      }
    }
    rmdirSync(dir);
    return true;
  } catch (err) {
    return isErrno(err, 'ENOENT');
  }
}

/** An overlay mount with `volatile` added (no syncs to the upper file system); others unchanged. */
function volatileOverlay(m: CoreMount): CoreMount {
  return m.type === 'overlay' && !m.options.includes('volatile')
    ? { ...m, options: [...m.options, 'volatile'] }
    : m;
}

/** rmdir that reports instead of throwing: true when `dir` is gone (removed or absent). */
function removeEmptyDir(dir: string): boolean {
  try {
    rmdirSync(dir);
    return true;
  } catch (err) {
    return isErrno(err, 'ENOENT');
  }
}
