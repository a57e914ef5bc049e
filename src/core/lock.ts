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
 *
 * Clean-exit markers (option `markers`, a directory on the root's run
 * directory, a tmpfs): every holder creates `open.<pid>-<random>` there when
 * it takes the lock and removes it when it releases the lock cleanly (no
 * cleanup of its was left undone: `noteLeftover()`). A holder that dies keeps
 * its marker. The exclusive holder then has to recover (`mustRecover`) only if
 * some marker is left, or if no recovery has run since the run directory was
 * made (no `recovered` file: the first start after a reboot). After its
 * recovery it calls `recovered()`, which removes the dead holders' markers and
 * writes `recovered`. A no-change build thereby skips ~6 ms of scans (mount
 * table twice, snapshot and bundle directories, ingests). Without `markers`,
 * every exclusive holder recovers.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { errUnavailable, isErrno } from './errors.ts';
import { LOCK, native } from './native/index.ts';
import { runDirFor } from './rundir.ts';

export interface StateLock {
  /** True when this process holds the lock alone (it may recover). */
  readonly exclusive: boolean;
  /**
   * Exclusive, and an earlier holder may have left work undone (see the module comment): run
   * startup recovery. Always equal to `exclusive` without clean-exit markers.
   */
  readonly mustRecover: boolean;
  /** After a successful recovery: earlier holders' leftovers are gone (see the module comment). */
  recovered(): void;
  /** Turns an exclusive lock into a shared one (after recovery). */
  downgrade(): void;
  /** Releases the lock; a clean release (no `noteLeftover()` in this process) removes this holder's marker. */
  release(): void;
}

let leftovers = false;

/**
 * Records that this process left something for startup recovery (a mount it could not unmount, a
 * directory it could not remove): its lock releases keep their markers, so the next exclusive
 * holder recovers.
 */
export function noteLeftover(): void {
  leftovers = true;
}

/** Where the clean-exit markers of the locks on the state directory `root` live: its run directory's `holders/`. */
export function markersFor(root: string): string {
  return join(runDirFor(root), 'holders');
}

const OPEN_PREFIX = 'open.';
const RECOVERED = 'recovered';

const WAIT_STEP_MS = 10;

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export function acquireStateLock(
  file: string,
  options: { timeoutMs?: number; markers?: string } = {},
): StateLock {
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
  const { markers } = options;
  let mustRecover = exclusive;
  let others: string[] = [];
  let mine: string | undefined;
  if (markers) {
    try {
      mkdirSync(markers, { recursive: true, mode: 0o700 });
      if (exclusive) {
        others = readdirSync(markers).filter((e) => e.startsWith(OPEN_PREFIX));
        mustRecover = others.length > 0 || !existsSync(join(markers, RECOVERED));
      }
      const name = `${OPEN_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`;
      writeFileSync(join(markers, name), '', { mode: 0o600 });
      mine = name;
    } catch {
      mustRecover = exclusive; // markers unusable: recover as without them
    }
  }
  return {
    exclusive,
    mustRecover,
    recovered() {
      if (!markers || !exclusive) return;
      for (const e of others) rmSync(join(markers, e), { force: true });
      others = [];
      writeFileSync(join(markers, RECOVERED), '', { mode: 0o600 });
    },
    downgrade() {
      if (open && exclusive) n.flock(fd, LOCK.SH);
    },
    release() {
      if (!open) return;
      open = false;
      if (markers && mine && !leftovers) rmSync(join(markers, mine), { force: true });
      closeSync(fd);
    },
  };
}
