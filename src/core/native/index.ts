/**
 * Typed entry to the in-repo N-API addon (native/kiln_native.c), built into
 * build/kiln_native.node by `npm install` (scripts/build-native.mjs).
 * Every function is synchronous and throws a Node-style system error
 * (`code` such as 'ENOENT', `errno`, `syscall`, `path`).
 */
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  /** mount(2). Pass null for unused string arguments. */
  mount(
    source: string | null,
    target: string,
    fstype: string | null,
    flags: number,
    data: string | null,
  ): void;
  /** umount2(2); flags such as MNT_DETACH. */
  umount2(target: string, flags: number): void;
  /**
   * Overlay through the new mount API, one `lowerdir+` per layer (topmost
   * first), so chains are not bound by mount(2)'s one-page option limit.
   * `options` are `key=value` or bare flags (e.g. 'index=off'). Needs Linux >= 6.8.
   */
  mountOverlay(
    target: string,
    lowers: string[],
    upper: string | null,
    work: string | null,
    options: string[],
    readonly: boolean,
  ): void;
  /** mknod(2) with the device number built from major and minor. */
  mknod(path: string, mode: number, major: number, minor: number): void;
  /** lgetxattr(2); null when the attribute does not exist. */
  lgetxattr(path: string, name: string): Buffer | null;
  /** lsetxattr(2); flags 0, XATTR_CREATE (1) or XATTR_REPLACE (2). */
  lsetxattr(path: string, name: string, value: Buffer, flags: number): void;
  /** llistxattr(2); empty when the filesystem does not support xattrs. */
  llistxattr(path: string): string[];
  lremovexattr(path: string, name: string): void;
  /** utimensat(2) without following a final symlink: exact nanosecond atime and mtime. */
  lutimensat(path: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  /** flock(2) on an open descriptor; with LOCK_NB a held lock throws code 'EWOULDBLOCK'. */
  flock(fd: number, operation: number): void;
  /**
   * One directory's entries with lstat data and symlink targets, packed in
   * one Buffer (decoded by `readDirStat` in readdir.ts, which see).
   */
  readdirStat(dir: string): Buffer;
  /**
   * Queues read-ahead (posix_fadvise WILLNEED) of the regular files of `dir` of 1..maxSize bytes
   * and returns without waiting for the reads; how many files it advised. Best effort.
   */
  readAheadDir(dir: string, maxSize: number): number;
  /** A non-blocking listening Unix socket bound at `path`, for a runtime's --console-socket. */
  consoleListen(path: string): number;
  /** The terminal master a runtime sent over the console socket, or null while none has connected. */
  consoleAccept(listenFd: number): number | null;
  /** TIOCSWINSZ: sets a terminal's size. */
  setWindowSize(fd: number, rows: number, cols: number): void;
  /**
   * posix_spawnp(3) of `file` with `argv` and `env` (`NAME=value` strings; null: the process's
   * environment), stdout and stderr (and stdin when `stdinPipe`, else /dev/null) on new pipes:
   * returns the pid and the parent's ends (-1 for stdin without a pipe). `onExit(code, signal)`
   * runs once the child has been reaped (code -1 when signal `signal` ended it). Use it through
   * spawn.ts.
   */
  spawnPiped(
    file: string,
    argv: string[],
    env: string[] | null,
    stdinPipe: boolean,
    onExit: (code: number, signal: number) => void,
  ): [number, number, number, number];
}

/** flock(2) operations. */
export const LOCK = { SH: 1, EX: 2, NB: 4, UN: 8 } as const;

/** Sets atime and mtime from nanosecond bigints (as in fs.BigIntStats) without following symlinks. */
export function lutimesNs(path: string, atimeNs: bigint, mtimeNs: bigint): void {
  const sec = (ns: bigint) => Number(ns / 1_000_000_000n);
  const nsec = (ns: bigint) => Number(ns % 1_000_000_000n);
  native().lutimensat(path, sec(atimeNs), nsec(atimeNs), sec(mtimeNs), nsec(mtimeNs));
}

/** mount(2) flags. */
export const MS = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  REMOUNT: 0x20,
  NOATIME: 0x400,
  BIND: 0x1000,
  MOVE: 0x2000,
  REC: 0x4000,
  PRIVATE: 1 << 18,
  SLAVE: 1 << 19,
  SHARED: 1 << 20,
} as const;

/** umount2(2) flags. */
export const MNT = { FORCE: 1, DETACH: 2, EXPIRE: 4 } as const;

const addonPath = fileURLToPath(new URL('../../../build/kiln_native.node', import.meta.url));

let loaded: NativeAddon | undefined;

/** The addon, loaded on first use so that pure-TS modules never need it. */
export function native(): NativeAddon {
  if (!loaded) {
    try {
      // process.dlopen, not require: the CommonJS loader is cold in the CLI's start-up snapshot
      // and warming it for one .node file cost ~3 ms per command; dlopen alone costs ~0.15 ms.
      const mod = { exports: {} };
      process.dlopen(mod, addonPath);
      loaded = mod.exports as NativeAddon;
    } catch (err) {
      throw new Error(`cannot load the native addon at ${addonPath}; run "npm run build:native"`, {
        cause: err,
      });
    }
  }
  return loaded;
}
