/**
 * Where a Kiln root keeps its ephemeral state: the OCI bundles of containers and of build steps
 * (config.json, the generated /etc files, rootfs mount points), the runtime's own state directory
 * (crun's or runc's `--root`), its logs, pid files and owner records, and console sockets. As
 * containerd keeps such state under `/run/containerd` beside its root: none of it outlives a
 * reboot, nor needs to.
 *
 * - The directory is `/run/kiln/state/<first 16 hex digits of sha256(the root's real path)>`,
 *   mode 0700, with a `root` file naming the root it belongs to. `KILN_RUN_DIR` replaces
 *   `/run/kiln/state` (kilnd's default socket, `/run/kiln/kilnd.sock`, stays outside it).
 * - It should be a tmpfs. Where it is not (a `/run` on disk, as on some VMs) and still empty,
 *   Kiln mounts one there (mode 0700, up to 256 MiB), holding `<it>.lock` so that concurrent
 *   processes mount it once; it stays mounted, as `/run` would be, until the machine restarts.
 *   A directory that already holds something is never mounted over: it is used as it is.
 * - Without the right to mount (no CAP_SYS_ADMIN), or when `/run` is not writable, the state goes
 *   to `<root>/run` on the root's own file system: slower, never wrong.
 *
 * Why: a container start creates and removes about twenty such files and directories. On this
 * project's ext4 VMs a file create costs 0.07-0.3 ms and a mkdir+rmdir 0.14-0.35 ms, the spread
 * following the disk's load from run to run; on tmpfs each is 5-15 µs.
 */
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  realpathSync,
  statfsSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { LOCK, MS, native } from './native/index.ts';

const TMPFS_MAGIC = 0x01021994;
const RUN_TMPFS_OPTIONS = 'mode=0700,size=256m';

const cache = new Map<string, string>();

/** The ephemeral state directory of the Kiln root `root` (see the module comment); created on first use. */
export function runDirFor(root: string): string {
  const abs = path.resolve(root);
  const hit = cache.get(abs);
  if (hit) return hit;
  const real = realPath(abs);
  const base = runBase();
  const dir = base
    ? path.join(base, createHash('sha256').update(real).digest('hex').slice(0, 16))
    : path.join(abs, 'run');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const note = path.join(dir, 'root');
  if (base && !existsSync(note)) writeFileSync(note, `${real}\n`, { mode: 0o600 });
  cache.set(abs, dir);
  return dir;
}

/** The real path of `p`, or, while it does not exist, of its nearest existing ancestor joined with the rest. */
function realPath(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    const parent = path.dirname(p);
    return parent === p ? p : path.join(realPath(parent), path.basename(p));
  }
}

let base: string | null | undefined;

/** `/run/kiln/state` (or KILN_RUN_DIR), on a tmpfs mounted when needed; null when unusable. */
function runBase(): string | null {
  if (base !== undefined) return base;
  const dir = path.resolve(process.env.KILN_RUN_DIR || '/run/kiln/state');
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    if (!st.isDirectory() || (process.getuid && st.uid !== process.getuid())) {
      throw new Error(`"${dir}" is not a directory of this user`);
    }
    if (!onTmpfs(dir) && readdirSync(dir).length === 0) {
      const lockFd = openSync(`${dir}.lock`, 'a', 0o600);
      try {
        native().flock(lockFd, LOCK.EX);
        if (!onTmpfs(dir) && readdirSync(dir).length === 0) {
          native().mount('kiln-run', dir, 'tmpfs', MS.NOSUID | MS.NODEV, RUN_TMPFS_OPTIONS);
        }
      } finally {
        closeSync(lockFd); // releases the lock
      }
    }
    base = dir;
  } catch {
    base = null;
  }
  return base;
}

function onTmpfs(dir: string): boolean {
  return statfsSync(dir).type === TMPFS_MAGIC;
}
