/**
 * Process facts from procfs, for owner records (containers, runtime state,
 * lock files): a process is identified by its pid and its kernel start time
 * (field 22 of /proc/<pid>/stat, clock ticks since boot), so that a reused
 * pid is not mistaken for the process that wrote the record.
 *
 * Reads are synchronous: one small procfs read, microseconds, where a
 * thread-pool read costs ~0.1 ms of round trips.
 */
import { readFileSync } from 'node:fs';

export interface ProcStat {
  /** Field 3: R, S, D, Z, X, ... */
  state: string;
  /** Field 22: start time in clock ticks since boot, as text. */
  start: string;
}

/** State and start time of a process, or undefined when it does not exist (or there is no procfs). */
export function procStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Fields after the command name, which is in parentheses and may contain spaces.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = rest[0];
  const start = rest[19];
  return state !== undefined && start !== undefined ? { state, start } : undefined;
}

/** Start time of a process (see procStat), or null when it does not exist. */
export function processStartTime(pid: number): string | null {
  return procStat(pid)?.start ?? null;
}

let own: string | null | undefined;

/** This process's start time, read once. */
export function ownStartTime(): string | null {
  if (own === undefined) own = processStartTime(process.pid);
  return own;
}
