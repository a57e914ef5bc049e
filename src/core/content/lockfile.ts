/**
 * Cross-process lock files holding the owner's pid, for one host.
 *
 * `acquireLock(path, what)` creates `path` with O_EXCL semantics: the owner
 * line `"<pid> <starttime>\n"` is written to a temporary file beside it and
 * link(2)ed into place, so the lock is never seen half-written. If the lock
 * exists and its owner is alive, it throws Unavailable `<what> is in use
 * (process N)` — also within one process, so a second holder is refused
 * there too. An owner is dead when its pid does not exist, is a zombie, or
 * now belongs to a process with another start time (pid reuse, e.g. a
 * restarted pid 1 in a container). A dead owner's lock is stale and is taken
 * over under a short-lived `<path>.takeover` guard that re-checks the lock
 * is still the same stale one, so two processes cannot both take it.
 * The parent directory is created if missing (and re-created if it is
 * removed while acquiring).
 *
 * Limits: Linux /proc for start times and zombie detection (without /proc
 * the pid alone decides); processes in other pid namespaces are not told
 * apart; a process that dies while holding the takeover guard leaves it for
 * the next contender to clear, which may race with a third contender.
 * `releaseLock` does not check ownership: only the holder calls it.
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { errUnavailable, isErrno } from '../errors.ts';
import { ownStartTime, procStat } from '../proc.ts';

interface LockOwner {
  pid: number;
  /** Start time of the process (clock ticks since boot, /proc/<pid>/stat field 22). */
  start?: string;
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

function ownerLine(): string {
  const start = ownStartTime();
  return start !== null ? `${process.pid} ${start}\n` : `${process.pid}\n`;
}

function parseOwner(text: string): LockOwner | undefined {
  const [p, start] = text.trim().split(/\s+/);
  const pid = Number(p);
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  return { pid, start };
}

async function ownerAlive(owner: LockOwner): Promise<boolean> {
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if (isErrno(err, 'ESRCH')) return false;
    // EPERM: it exists but belongs to someone else.
  }
  const st = procStat(owner.pid);
  if (!st) return true; // no /proc: trust kill()
  if (st.state === 'Z' || st.state === 'X') return false;
  return owner.start === undefined || owner.start === st.start;
}

/** Creates `target` holding our owner line, atomically and only if absent. */
async function linkOwner(target: string): Promise<'ok' | 'exists' | 'gone'> {
  const tmp = `${target}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, ownerLine(), { flag: 'wx' });
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return 'gone';
    throw err;
  }
  try {
    await link(tmp, target);
    return 'ok';
  } catch (err) {
    if (isErrno(err, 'EEXIST')) return 'exists';
    if (isErrno(err, 'ENOENT')) return 'gone';
    throw err;
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Takes the lock file at `path`; `what` names the locked thing in errors, e.g. `ref "x"`. */
export async function acquireLock(path: string, what: string): Promise<void> {
  const guardPath = `${path}.takeover`;
  for (let attempt = 0; attempt < 20; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 5 * attempt));
    await mkdir(dirname(path), { recursive: true });
    const made = await linkOwner(path);
    if (made === 'ok') return;
    if (made === 'gone') continue; // the directory was removed under us
    const text = await readText(path);
    if (text === undefined) continue; // released meanwhile
    const owner = parseOwner(text);
    if (owner && (await ownerAlive(owner))) throw errUnavailable(`${what} is in use (process ${owner.pid})`);
    // Stale. Take it over under the guard, re-checking that it is still the same stale lock.
    const guard = await linkOwner(guardPath);
    if (guard === 'exists') {
      const g = await readText(guardPath);
      const gOwner = g === undefined ? undefined : parseOwner(g);
      if (g !== undefined && !(gOwner && (await ownerAlive(gOwner)))) await rm(guardPath, { force: true });
      continue;
    }
    if (guard === 'gone') continue;
    try {
      if ((await readText(path)) === text) {
        await rm(path, { force: true });
        if ((await linkOwner(path)) === 'ok') return;
      }
    } finally {
      await rm(guardPath, { force: true });
    }
  }
  throw errUnavailable(`${what} is in use (its lock file "${path}" kept changing)`);
}

/** Removes the lock file; only its holder calls this. */
export async function releaseLock(path: string): Promise<void> {
  await rm(path, { force: true });
}
