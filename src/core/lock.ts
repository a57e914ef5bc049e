/**
 * Process-lifetime locks on a state directory, so that several Kiln
 * processes can share one root safely (flock(2) through the addon).
 *
 * `acquireStateLock(file)` first tries an exclusive lock without waiting.
 * Getting it means no other Kiln process has this root open: the caller may
 * run startup recovery (remove half-made snapshots, stale mounts, leftover
 * bundles) and then calls `downgrade()` to a shared lock. Otherwise it waits
 * for a shared lock (another process may be in its recovery, holding the
 * exclusive lock briefly) and must not recover anything. The kernel drops
 * the lock when the process dies, also on SIGKILL, so a crashed holder never
 * blocks the next start.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { errUnavailable, isErrno } from './errors.ts';
import { LOCK, native } from './native/index.ts';

export interface StateLock {
  /** True when this process holds the lock alone (it may recover). */
  readonly exclusive: boolean;
  /** Turns an exclusive lock into a shared one (after recovery). */
  downgrade(): void;
  release(): void;
}

const WAIT_STEP_MS = 10;

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export function acquireStateLock(file: string, options: { timeoutMs?: number } = {}): StateLock {
  mkdirSync(dirname(file), { recursive: true });
  const fd = openSync(file, 'a', 0o600);
  const n = native();
  let exclusive = false;
  try {
    n.flock(fd, LOCK.EX | LOCK.NB);
    exclusive = true;
  } catch (err) {
    if (!isErrno(err, 'EWOULDBLOCK')) {
      closeSync(fd);
      throw err;
    }
    const deadline = Date.now() + (options.timeoutMs ?? 60_000);
    for (;;) {
      try {
        n.flock(fd, LOCK.SH | LOCK.NB);
        break;
      } catch (e) {
        if (!isErrno(e, 'EWOULDBLOCK') || Date.now() > deadline) {
          closeSync(fd);
          if (isErrno(e, 'EWOULDBLOCK')) {
            throw errUnavailable(
              `lock "${file}": another Kiln process holds it exclusively (still recovering?)`,
            );
          }
          throw e;
        }
        sleepSync(WAIT_STEP_MS);
      }
    }
  }
  let open = true;
  return {
    exclusive,
    downgrade() {
      if (open && exclusive) n.flock(fd, LOCK.SH);
    },
    release() {
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}
