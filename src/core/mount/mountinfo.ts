/**
 * Parser for /proc/self/mountinfo (proc(5)). One record per line:
 *
 *   36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
 *
 * Paths and the source are octal-escaped by the kernel (`\040` space,
 * `\011` tab, `\012` newline, `\134` backslash); they are decoded here.
 * Limits: Linux only; a mount point that is a deleted directory keeps the
 * kernel's ` (deleted)` suffix as part of its path.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

export interface MountInfo {
  id: number;
  parentId: number;
  /** `major:minor` of the device. */
  device: string;
  /** Root of the mount within its filesystem. */
  root: string;
  /** Mount point, relative to the process root. */
  mountPoint: string;
  /** Per-mount options (`rw`, `nosuid`, ...). */
  options: string[];
  /** Optional fields such as `shared:1`, `master:2`. */
  optional: string[];
  fsType: string;
  source: string;
  /** Per-superblock options. */
  superOptions: string[];
}

/** Decodes the kernel's `\ooo` octal escapes. */
export function unescapeOctal(s: string): string {
  if (!s.includes('\\')) return s;
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

/** Parses mountinfo text; malformed lines are skipped. */
export function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (fields.length < 10 || sep < 0 || fields.length < sep + 3) continue;
    out.push({
      id: Number(fields[0]),
      parentId: Number(fields[1]),
      device: fields[2],
      root: unescapeOctal(fields[3]),
      mountPoint: unescapeOctal(fields[4]),
      options: fields[5].split(','),
      optional: fields.slice(6, sep),
      fsType: unescapeOctal(fields[sep + 1]),
      source: unescapeOctal(fields[sep + 2]),
      superOptions: (fields[sep + 3] ?? '').split(','),
    });
  }
  return out;
}

const MOUNTINFO = '/proc/self/mountinfo';

export async function readMountinfo(): Promise<MountInfo[]> {
  return parseMountinfo(await readFile(MOUNTINFO, 'utf8'));
}

export function readMountinfoSync(): MountInfo[] {
  return parseMountinfo(readFileSync(MOUNTINFO, 'utf8'));
}

/** True when `p` is `dir` itself or below it (both absolute, normalised here). */
export function isAtOrBelow(p: string, dir: string): boolean {
  const a = path.resolve(p);
  const d = path.resolve(dir);
  return a === d || a.startsWith(d === '/' ? '/' : `${d}/`);
}

/** The path as mountinfo shows it: symlinks resolved when it exists, else just absolute. */
export function canonicalPath(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/**
 * Mounts at or below `dir` (symlinks in `dir` resolved), in the order to unmount them: children before
 * their parents in the mount tree (which also puts a mount stacked on a path
 * before the one it covers), deeper paths first among unrelated ones.
 */
export function mountsUnder(infos: MountInfo[], dir: string): MountInfo[] {
  const target = canonicalPath(dir);
  const byId = new Map(infos.map((m) => [m.id, m]));
  const depthOf = (m: MountInfo): number => {
    let d = 0;
    let cur: MountInfo | undefined = m;
    const seen = new Set<number>();
    while (cur && !seen.has(cur.id)) {
      seen.add(cur.id);
      cur = byId.get(cur.parentId);
      d++;
    }
    return d;
  };
  const picked = infos
    .map((m, i) => ({ m, i, depth: depthOf(m) }))
    .filter(({ m }) => isAtOrBelow(m.mountPoint, target));
  picked.sort((a, b) => b.depth - a.depth || b.m.mountPoint.length - a.m.mountPoint.length || b.i - a.i);
  return picked.map(({ m }) => m);
}
