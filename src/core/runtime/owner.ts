/**
 * Owner records: which Kiln process runs a container's task (containers/) or
 * a runtime container (runtime.ts). A record is the pid and the kernel start
 * time of that process (field 22 of /proc/<pid>/stat), so a reused pid is
 * not mistaken for the owner. Used by recovery to tell a task that is running
 * in another Kiln process from one whose Kiln process was killed. Files are
 * written atomically, not fsynced (after a power loss no owner is alive, and
 * a missing record reads as stale).
 */
import { readFileSync } from 'node:fs';
import { ownStartTime, processStartTime } from '../proc.ts';
import { EPHEMERAL, writeFileAtomic } from './spec.ts';

export interface Owner {
  pid: number;
  start: string | null;
}

/** Writes this process as the owner recorded in `file`. */
export async function writeOwner(file: string, mode = 0o600): Promise<void> {
  const owner: Owner = { pid: process.pid, start: ownStartTime() };
  await writeFileAtomic(file, JSON.stringify(owner), mode, EPHEMERAL);
}

/** True when the owner file names a live process (false when it is missing or unreadable). */
export async function ownerAlive(file: string): Promise<boolean> {
  try {
    const o = JSON.parse(readFileSync(file, 'utf8')) as Owner;
    return o.start !== null && processStartTime(o.pid) === o.start;
  } catch {
    return false;
  }
}
