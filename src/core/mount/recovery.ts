/**
 * Startup recovery of mounts left by a killed process (SIGKILL, crash,
 * power loss leaves none, but a killed engine does): `recoverMounts(dir)`
 * unmounts every mount below a kiln state directory (not the directory
 * itself, which may be a mount of its own disk) and removes the
 * leftover temporary mount directories (`m-<pid>-XXXXXX`, see mount.ts)
 * directly in `dir` or one level below it.
 *
 * Mounts inside a temporary mount directory whose owner process is still
 * alive (or that this process is using) are left alone, so recovery is safe
 * while another tool's temp mounts are in flight. Directories are removed
 * with rmdir only, never recursively: a directory that still holds files is
 * reported, not deleted. Limit: a reused pid keeps a stale directory alive
 * until that process ends.
 */
import type { Dirent } from 'node:fs';
import { readdir, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from '../errors.ts';
import { isActiveTempMount, TEMP_MOUNT_PATTERN, unmountAll } from './mount.ts';
import { canonicalPath, mountsUnder, readMountinfo } from './mountinfo.ts';

export interface RecoveryReport {
  /** Mount points that were unmounted. */
  unmounted: string[];
  /** Temporary mount directories that were removed. */
  removed: string[];
  /** Temporary mount directories that could not be removed (not empty, busy). */
  kept: string[];
}

function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return !isErrno(err, 'ESRCH');
  }
}

/** The live temporary mount directory that `p` lies in, if any. */
function liveTempDirOf(p: string, root: string): string | undefined {
  const rel = path.relative(root, p);
  if (rel.startsWith('..')) return undefined;
  const parts = rel.split(path.sep);
  for (let i = 0; i < parts.length; i++) {
    const m = TEMP_MOUNT_PATTERN.exec(parts[i]);
    if (!m) continue;
    const dir = path.join(root, ...parts.slice(0, i + 1));
    const pid = Number(m[1]);
    if (pid === process.pid ? isActiveTempMount(dir) : pidAlive(pid)) return dir;
  }
  return undefined;
}

async function tempDirs(dir: string): Promise<string[]> {
  const out: string[] = [];
  const scan = async (d: string, depth: number): Promise<void> => {
    let entries: Dirent[];
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return;
      throw err;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const p = path.join(d, e.name);
      if (TEMP_MOUNT_PATTERN.test(e.name)) out.push(p);
      else if (depth > 0) await scan(p, depth - 1);
    }
  };
  await scan(dir, 1);
  return out;
}

/** Unmounts stale mounts below `dir` and removes leftover temporary mount directories. */
export async function recoverMounts(dir: string): Promise<RecoveryReport> {
  const root = canonicalPath(dir);
  const report: RecoveryReport = { unmounted: [], removed: [], kept: [] };
  for (const m of mountsUnder(await readMountinfo(), root)) {
    // The state directory itself may be a mount (its own disk): keep it.
    if (m.mountPoint === root || liveTempDirOf(m.mountPoint, root)) continue;
    if (report.unmounted.includes(m.mountPoint)) continue;
    await unmountAll(m.mountPoint);
    report.unmounted.push(m.mountPoint);
  }
  for (const d of await tempDirs(root)) {
    if (liveTempDirOf(d, root)) continue;
    try {
      await rmdir(d);
      report.removed.push(d);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) report.kept.push(d);
    }
  }
  return report;
}
