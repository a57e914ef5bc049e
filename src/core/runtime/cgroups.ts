/**
 * Detection of the host's cgroup layout, so spec generation only asks for the
 * resource limits the layout can enforce and the runtime driver knows when
 * crun will refuse to run (crun 1.8 refuses a hybrid layout whose cgroup2
 * hierarchy has controllers enabled: "cgroups in hybrid mode not supported").
 *
 * - `v2`: /sys/fs/cgroup is cgroup2; controllers from its cgroup.controllers.
 * - `hybrid`: /sys/fs/cgroup is a tmpfs holding v1 hierarchies and a cgroup2
 *   mount at /sys/fs/cgroup/unified; limits go through the v1 controllers.
 * - `v1`: v1 hierarchies only.
 * Read-only; the result is read from /proc/self/mountinfo and cgroupfs on
 * each call (cheap), callers may cache it.
 */
import { readFile } from 'node:fs/promises';

export type CgroupMode = 'v1' | 'hybrid' | 'v2' | 'none';

export interface CgroupLayout {
  mode: CgroupMode;
  /** Controllers that can enforce limits for containers (memory, cpu, pids, devices, ...). */
  controllers: Set<string>;
  /** Controllers enabled in the cgroup2 hierarchy of a hybrid layout (what trips crun). */
  unifiedControllers: string[];
  /** Where the cgroup2 hierarchy of a hybrid layout is mounted. */
  unifiedMount?: string;
}

interface MountLine {
  mountPoint: string;
  fsType: string;
  superOptions: string[];
}

function parseMountinfo(text: string): MountLine[] {
  const out: MountLine[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    const unoctal = (s: string): string =>
      s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({
      mountPoint: unoctal(left[4] ?? ''),
      fsType: right[0] ?? '',
      superOptions: (right[2] ?? '').split(','),
    });
  }
  return out;
}

async function readControllers(file: string): Promise<string[]> {
  try {
    return (await readFile(file, 'utf8')).split(/\s+/).filter((s) => s !== '');
  } catch {
    return [];
  }
}

const V1_CONTROLLERS = [
  'cpu',
  'cpuacct',
  'cpuset',
  'memory',
  'devices',
  'freezer',
  'blkio',
  'pids',
  'hugetlb',
];

/** Reads the cgroup layout of the host (as seen from this process's mount namespace). */
export async function detectCgroups(): Promise<CgroupLayout> {
  const mounts = parseMountinfo(await readFile('/proc/self/mountinfo', 'utf8'));
  const root = mounts.filter((m) => m.mountPoint === '/sys/fs/cgroup').at(-1);
  if (root?.fsType === 'cgroup2') {
    const controllers = await readControllers('/sys/fs/cgroup/cgroup.controllers');
    // cgroup2 has no devices controller; runtimes emulate it with eBPF.
    return { mode: 'v2', controllers: new Set([...controllers, 'devices']), unifiedControllers: [] };
  }
  const controllers = new Set<string>();
  for (const m of mounts) {
    if (m.fsType !== 'cgroup') continue;
    for (const opt of m.superOptions) if (V1_CONTROLLERS.includes(opt)) controllers.add(opt);
  }
  const unified = mounts
    .filter((m) => m.fsType === 'cgroup2' && m.mountPoint.startsWith('/sys/fs/cgroup/'))
    .at(-1);
  if (unified) {
    const unifiedControllers = await readControllers(`${unified.mountPoint}/cgroup.controllers`);
    return { mode: 'hybrid', controllers, unifiedControllers, unifiedMount: unified.mountPoint };
  }
  return { mode: controllers.size > 0 ? 'v1' : 'none', controllers, unifiedControllers: [] };
}
