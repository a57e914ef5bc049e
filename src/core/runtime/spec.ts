/**
 * OCI runtime spec (config.json, runtime-spec 1.0.x) generation for a
 * container whose root filesystem is a directory, with docker's defaults
 * (moby 20.10 `oci.DefaultSpec` plus what dockerd adds when it creates a
 * container), so a process behaves as it would under `docker run`:
 *
 * - process: args, env (docker's default PATH when none is given; HOSTNAME;
 *   HOME from the resolved user; TERM=xterm with a terminal), cwd, user
 *   resolved against the rootfs's /etc/passwd and /etc/group (see user.ts),
 *   docker's 14 default capabilities (bounding, effective, permitted),
 *   RLIMIT_NOFILE 1048576 (what docker containers get under dockerd's systemd
 *   unit, LimitNOFILE=infinity), lowered to Kiln's own hard limit when that is
 *   smaller (raising it needs CAP_SYS_RESOURCE, which a sandbox may lack).
 * - mounts: proc, /dev tmpfs, devpts, /dev/shm (64m), /dev/mqueue, sysfs ro,
 *   cgroup ro, then /etc/hosts, /etc/resolv.conf and /etc/hostname, then the
 *   caller's extra bind/tmpfs mounts (an extra mount on the destination of a
 *   default one replaces it); sorted parents before children like docker.
 * - namespaces pid, ipc, uts, mount, and network unless `network: 'host'`.
 *   With `none` the /etc files are generated into `filesDir`; with `host`
 *   the host's /etc/hosts and /etc/resolv.conf are bind-mounted read-only and
 *   the hostname defaults to the host's.
 * - docker's masked and read-only paths; docker's device cgroup allow-list.
 * - resources (memory, cpu shares/quota/period, pids) only when the host's
 *   cgroup layout has the controller; otherwise dropped with a warning.
 *
 * What docker sets that this module does not (gaps, by design or for later):
 * the default seccomp profile, the AppArmor/SELinux profile (docker-default),
 * `oomScoreAdj`, the `net.ipv4.ip_unprivileged_port_start=0` sysctl and other
 * sysctls, a cgroup namespace (docker uses one only on cgroup v2), the
 * inheritable capability set (docker 20.10 fills it; newer docker does not),
 * user namespaces remapping, `--init`, and device nodes beyond the runtime's
 * defaults (null, zero, full, random, urandom, tty, ptmx, console).
 * Missing mount points (e.g. /etc/hosts in a minimal rootfs) are created by
 * the runtime inside the rootfs, as they are under docker.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { open, readFile, rename } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { errInvalidArgument, wrap } from '../errors.ts';
import { type CgroupLayout, detectCgroups } from './cgroups.ts';
import { resolveUserInRootfs } from './user.ts';

/** The parts of the OCI runtime spec Kiln writes (runtime-spec config.md / config-linux.md). */
export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options?: string[];
}

export interface OciRlimit {
  type: string;
  soft: number;
  hard: number;
}

export interface OciDeviceRule {
  allow: boolean;
  type?: 'a' | 'c' | 'b';
  major?: number;
  minor?: number;
  access?: string;
}

export interface OciResources {
  devices?: OciDeviceRule[];
  memory?: { limit?: number };
  cpu?: { shares?: number; quota?: number; period?: number };
  pids?: { limit: number };
}

export interface OciSpec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: { bounding: string[]; effective: string[]; permitted: string[] };
    rlimits: OciRlimit[];
    noNewPrivileges: boolean;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  annotations?: Record<string, string>;
  linux: {
    namespaces: { type: string; path?: string }[];
    maskedPaths: string[];
    readonlyPaths: string[];
    resources?: OciResources;
    cgroupsPath?: string;
  };
}

export type ExtraMount =
  | { type: 'bind'; source: string; destination: string; readonly?: boolean }
  /** size in bytes or with a k/m/g suffix ("64m"); mode defaults to 1777 (octal) */
  | { type: 'tmpfs'; destination: string; size?: number | string; mode?: number };

export interface ResourceLimits {
  /** bytes */
  memory?: number;
  /** relative weight, docker's --cpu-shares (2..262144) */
  cpuShares?: number;
  /** microseconds per period, docker's --cpu-quota */
  cpuQuota?: number;
  /** microseconds, docker's --cpu-period (default 100000 when a quota is set) */
  cpuPeriod?: number;
  /** maximum number of processes */
  pids?: number;
}

export interface SpecOptions {
  /** Absolute path of the root filesystem directory. */
  rootfs: string;
  readonlyRootfs?: boolean;
  args: string[];
  /** KEY=VALUE entries. */
  env?: string[];
  /** Absolute path inside the container; default "/". */
  cwd?: string;
  /** docker-style user (`name`, `uid`, `uid:gid`, `name:group`); default root. */
  user?: string;
  terminal?: boolean;
  /** Default "kiln" with network none, the host's name with network host. */
  hostname?: string;
  /** Default 'none': a private network namespace with only `lo`. */
  network?: 'none' | 'host';
  /** Directory for the generated hosts, resolv.conf and hostname files (e.g. the bundle directory). */
  filesDir: string;
  mounts?: ExtraMount[];
  resources?: ResourceLimits;
  /** cgroup path for the runtime (e.g. "/kiln/<id>"); runtime default when absent. */
  cgroupsPath?: string;
  annotations?: Record<string, string>;
  /** The host's cgroup layout; detected when absent. */
  cgroups?: CgroupLayout;
}

export interface GeneratedSpec {
  spec: OciSpec;
  /** Settings that were asked for but dropped (e.g. a limit the cgroup layout cannot enforce). */
  warnings: string[];
}

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

export const MASKED_PATHS: readonly string[] = [
  '/proc/asound',
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
];

export const READONLY_PATHS: readonly string[] = [
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
];

/** docker's default mounts, in docker's order. */
export function defaultMounts(): OciMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    {
      destination: '/dev',
      type: 'tmpfs',
      source: 'tmpfs',
      options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'],
    },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    {
      destination: '/sys/fs/cgroup',
      type: 'cgroup',
      source: 'cgroup',
      options: ['ro', 'nosuid', 'noexec', 'nodev'],
    },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    {
      destination: '/dev/shm',
      type: 'tmpfs',
      source: 'shm',
      options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=67108864'],
    },
  ];
}

/** docker's device cgroup rules: deny all, then mknod of any device and use of the standard ones. */
function defaultDeviceRules(): OciDeviceRule[] {
  const c = (major: number, minor?: number): OciDeviceRule => ({
    allow: true,
    type: 'c',
    major,
    ...(minor !== undefined ? { minor } : {}),
    access: 'rwm',
  });
  return [
    { allow: false, access: 'rwm' },
    { allow: true, type: 'c', access: 'm' },
    { allow: true, type: 'b', access: 'm' },
    c(1, 3), // null
    c(1, 8), // random
    c(1, 7), // full
    c(5, 0), // tty
    c(1, 5), // zero
    c(1, 9), // urandom
    c(136), // pts/*
    c(5, 2), // ptmx
    c(10, 200), // net/tun
  ];
}

const HOSTS_NONE = [
  '127.0.0.1\tlocalhost',
  '::1\tlocalhost ip6-localhost ip6-loopback',
  'fe00::0\tip6-localnet',
  'ff00::0\tip6-mcastprefix',
  'ff02::1\tip6-allnodes',
  'ff02::2\tip6-allrouters',
  '',
].join('\n');

function parseSize(v: number | string, what: string): number {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v <= 0) throw errInvalidArgument(`${what}: invalid size "${v}"`);
    return v;
  }
  const m = /^([0-9]+)([kmg]?)b?$/i.exec(v.trim());
  if (!m) throw errInvalidArgument(`${what}: invalid size "${v}"`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

function checkAbsolute(p: string, what: string): void {
  if (!path.posix.isAbsolute(p)) throw errInvalidArgument(`${what}: path "${p}" is not absolute`);
}

/** Options for files that need no fsync (see writeFileAtomic). */
export const EPHEMERAL = { sync: false } as const;

/**
 * Writes a file atomically: temp file, fsync, rename. `sync: false` skips the
 * fsync, for files that are worthless after a crash anyway (a container's
 * bundle files and owner records: after a power loss the container is gone
 * and recovery removes whatever is left of them). Such files are small and
 * written on the calling thread: a few system calls of microseconds each,
 * where the thread pool's round trips cost ~0.1 ms per call (six such files
 * per container start).
 */
export async function writeFileAtomic(
  file: string,
  data: string,
  mode = 0o644,
  opts: { sync?: boolean } = {},
): Promise<void> {
  const tmp = `${file}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    if (opts.sync === false) {
      writeFileSync(tmp, data, { flag: 'wx', mode });
      renameSync(tmp, file);
      return;
    }
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw wrap(err, `write "${file}"`);
  }
}

let hardNofile: number | undefined;

/** The files generateSpec may write into `filesDir`. */
export const GENERATED_ETC_FILES = ['hosts', 'resolv.conf', 'hostname'] as const;

/** RLIMIT_NOFILE of docker containers under dockerd's systemd unit (LimitNOFILE=infinity). */
const DOCKER_NOFILE = 1048576;

/**
 * This process's hard RLIMIT_NOFILE: without CAP_SYS_RESOURCE a runtime
 * cannot raise a limit above it, so the spec asks for no more. Read once per process.
 */
function ownHardNofile(): number {
  if (hardNofile !== undefined) return hardNofile;
  hardNofile = DOCKER_NOFILE;
  try {
    const limits = readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+\S+\s+(\S+)/m.exec(limits);
    if (m && m[1] !== 'unlimited') hardNofile = Number(m[1]);
  } catch {
    // no procfs: ask for docker's value
  }
  return hardNofile;
}

function envKey(e: string): string {
  const i = e.indexOf('=');
  return i < 0 ? e : e.slice(0, i);
}

function depth(p: string): number {
  return path.posix
    .normalize(p)
    .split('/')
    .filter((s) => s !== '').length;
}

function extraToOci(m: ExtraMount): OciMount {
  checkAbsolute(m.destination, 'mount');
  if (m.type === 'bind') {
    checkAbsolute(m.source, 'bind mount source');
    return {
      destination: m.destination,
      type: 'bind',
      source: m.source,
      options: ['rbind', 'rprivate', m.readonly ? 'ro' : 'rw'],
    };
  }
  if (m.type === 'tmpfs') {
    const options = ['nosuid', 'nodev', `mode=${(m.mode ?? 0o1777).toString(8)}`];
    if (m.size !== undefined) options.push(`size=${parseSize(m.size, `tmpfs mount "${m.destination}"`)}`);
    return { destination: m.destination, type: 'tmpfs', source: 'tmpfs', options };
  }
  throw errInvalidArgument(`mount: unknown type "${(m as { type: string }).type}"`);
}

/**
 * Generates the spec. Reads the rootfs's user databases, writes the hosts,
 * resolv.conf and hostname files into `filesDir` (network none), and detects
 * the cgroup layout unless given. Those files are written in place, without
 * a temporary file: `filesDir` is the bundle's own, only the runtime reads
 * them, after this returns, and a bundle does not outlive a crash.
 */
export async function generateSpec(opts: SpecOptions): Promise<GeneratedSpec> {
  const warnings: string[] = [];
  checkAbsolute(opts.rootfs, 'rootfs');
  if (opts.args.length === 0) throw errInvalidArgument('generate spec: empty args');
  const cwd = opts.cwd ?? '/';
  checkAbsolute(cwd, 'cwd');
  const network = opts.network ?? 'none';
  const hostname = opts.hostname ?? (network === 'host' ? os.hostname() : 'kiln');
  const user = await resolveUserInRootfs(opts.rootfs, opts.user ?? '');

  const env: string[] = [];
  const seen = new Set<string>();
  for (const e of opts.env ?? []) {
    const k = envKey(e);
    if (seen.has(k)) {
      // Last one wins, like docker's env merging.
      const i = env.findIndex((x) => envKey(x) === k);
      env[i] = e;
    } else {
      seen.add(k);
      env.push(e);
    }
  }
  if (!seen.has('PATH')) env.unshift(`PATH=${DEFAULT_PATH}`);
  if (!seen.has('HOSTNAME')) env.push(`HOSTNAME=${hostname}`);
  if (opts.terminal && !seen.has('TERM')) env.push('TERM=xterm');
  if (!seen.has('HOME')) env.push(`HOME=${user.home || '/'}`);

  const etcMounts: OciMount[] = [];
  if (network === 'host') {
    for (const f of ['/etc/hosts', '/etc/resolv.conf']) {
      etcMounts.push({ destination: f, type: 'bind', source: f, options: ['rbind', 'rprivate', 'ro'] });
    }
  } else {
    const hosts = path.join(opts.filesDir, 'hosts');
    const resolv = path.join(opts.filesDir, 'resolv.conf');
    writeFileSync(hosts, HOSTS_NONE, { mode: 0o644 });
    writeFileSync(resolv, '# generated by kiln: network none has no name servers\n', { mode: 0o644 });
    etcMounts.push(
      { destination: '/etc/hosts', type: 'bind', source: hosts, options: ['rbind', 'rprivate', 'rw'] },
      { destination: '/etc/resolv.conf', type: 'bind', source: resolv, options: ['rbind', 'rprivate', 'rw'] },
    );
  }
  const hostnameFile = path.join(opts.filesDir, 'hostname');
  writeFileSync(hostnameFile, `${hostname}\n`, { mode: 0o644 });
  etcMounts.push({
    destination: '/etc/hostname',
    type: 'bind',
    source: hostnameFile,
    options: ['rbind', 'rprivate', 'rw'],
  });

  const extra = (opts.mounts ?? []).map(extraToOci);
  const replaced = new Set(extra.map((m) => path.posix.normalize(m.destination)));
  const mounts = [...defaultMounts(), ...etcMounts]
    .filter((m) => !replaced.has(m.destination))
    .concat(extra)
    .map((m, i) => ({ m, i }))
    .sort((a, b) => depth(a.m.destination) - depth(b.m.destination) || a.i - b.i)
    .map((x) => x.m);

  const namespaces = [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }];
  if (network !== 'host') namespaces.push({ type: 'network' });

  const layout = opts.cgroups ?? (await detectCgroups());
  const resources: OciResources = {};
  const has = (c: string): boolean => layout.controllers.has(c);
  if (has('devices')) resources.devices = defaultDeviceRules();
  const r = opts.resources ?? {};
  if (r.memory !== undefined) {
    if (has('memory')) resources.memory = { limit: r.memory };
    else warnings.push(`memory limit dropped: no memory controller in the ${layout.mode} cgroup layout`);
  }
  if (r.cpuShares !== undefined || r.cpuQuota !== undefined) {
    if (has('cpu')) {
      resources.cpu = {};
      if (r.cpuShares !== undefined) resources.cpu.shares = r.cpuShares;
      if (r.cpuQuota !== undefined) {
        resources.cpu.quota = r.cpuQuota;
        resources.cpu.period = r.cpuPeriod ?? 100000;
      }
    } else warnings.push(`cpu limits dropped: no cpu controller in the ${layout.mode} cgroup layout`);
  }
  if (r.pids !== undefined) {
    if (has('pids')) resources.pids = { limit: r.pids };
    else warnings.push(`pids limit dropped: no pids controller in the ${layout.mode} cgroup layout`);
  }

  const caps = [...DEFAULT_CAPABILITIES];
  const nofile = Math.min(DOCKER_NOFILE, ownHardNofile());
  const spec: OciSpec = {
    ociVersion: '1.0.2',
    process: {
      terminal: opts.terminal ?? false,
      user: {
        uid: user.uid,
        gid: user.gid,
        ...(user.additionalGids.length > 0 ? { additionalGids: user.additionalGids } : {}),
      },
      args: [...opts.args],
      env,
      cwd,
      capabilities: { bounding: caps, effective: [...caps], permitted: [...caps] },
      rlimits: [{ type: 'RLIMIT_NOFILE', soft: nofile, hard: nofile }],
      noNewPrivileges: false,
    },
    root: { path: opts.rootfs, readonly: opts.readonlyRootfs ?? false },
    hostname,
    mounts,
    ...(opts.annotations ? { annotations: { ...opts.annotations } } : {}),
    linux: {
      namespaces,
      maskedPaths: [...MASKED_PATHS],
      readonlyPaths: [...READONLY_PATHS],
      ...(Object.keys(resources).length > 0 ? { resources } : {}),
      ...(opts.cgroupsPath ? { cgroupsPath: opts.cgroupsPath } : {}),
    },
  };
  return { spec, warnings };
}

/** Writes `<bundleDir>/config.json` atomically (not fsynced: a bundle does not outlive a crash). */
export async function writeSpec(bundleDir: string, spec: OciSpec): Promise<void> {
  await writeFileAtomic(
    path.join(bundleDir, 'config.json'),
    `${JSON.stringify(spec, null, 2)}\n`,
    0o644,
    EPHEMERAL,
  );
}

/** Reads `<bundleDir>/config.json`. */
export async function readSpec(bundleDir: string): Promise<OciSpec> {
  const file = path.join(bundleDir, 'config.json');
  try {
    return JSON.parse(await readFile(file, 'utf8')) as OciSpec;
  } catch (err) {
    throw wrap(err, `read runtime spec "${file}"`);
  }
}
