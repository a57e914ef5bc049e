/**
 * User resolution for container processes: parses `/etc/passwd` and
 * `/etc/group` text and turns a docker-style user string (`name`, `uid`,
 * `uid:gid`, `name:group`, `uid:group`, `name:gid`) into numeric ids, the
 * supplementary groups and the home directory, the way docker does it through
 * runc's user lookup:
 *
 * - empty string: root (uid 0, gid 0), home from passwd's uid 0 entry or "/".
 * - the user part: a name must exist in passwd, else
 *   `unable to find user x: no matching entries in passwd file`; a number is
 *   accepted even when absent (gid then defaults to 0, home to "/"); when
 *   present, its primary gid and home come from passwd.
 * - the group part: a name must exist in group, else
 *   `unable to find group x: no matching entries in group file`; a number is
 *   accepted even when absent.
 * - supplementary groups: only when no group was given explicitly, every group
 *   in /etc/group that lists the user's name as a member (docker's behaviour).
 *
 * Parsing and resolution are pure functions; `readUserDb` is the only one that
 * touches the file system (missing files read as empty databases). Limits: no
 * NSS (LDAP, systemd-userdb), no `+`/`-` NIS compat lines (skipped). A
 * symlinked /etc/passwd or /etc/group is followed inside the rootfs, never
 * out to the host's files.
 */
import { readFileSync } from 'node:fs';
import { errNotFound, isErrno, wrap } from '../errors.ts';
import { resolveInRoot } from '../fs/safe.ts';

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

export interface ResolvedUser {
  uid: number;
  gid: number;
  /** Supplementary groups, sorted, without the primary gid. */
  additionalGids: number[];
  home: string;
  /** The passwd name when the user was found in passwd. */
  name?: string;
}

const ID_MAX = 0xffffffff;

function parseId(s: string): number | null {
  if (!/^[0-9]+$/.test(s)) return null;
  const n = Number(s);
  return Number.isSafeInteger(n) && n <= ID_MAX ? n : null;
}

function isCommentOrBlank(line: string): boolean {
  const t = line.trim();
  return t === '' || t.startsWith('#') || t.startsWith('+') || t.startsWith('-');
}

/** Parses passwd(5) text; malformed lines (bad field count or ids) are skipped. */
export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    if (isCommentOrBlank(line)) continue;
    const f = line.split(':');
    if (f.length < 7) continue;
    const uid = parseId(f[2]);
    const gid = parseId(f[3]);
    if (uid === null || gid === null) continue;
    out.push({ name: f[0], uid, gid, home: f[5], shell: f.slice(6).join(':') });
  }
  return out;
}

/** Parses group(5) text; malformed lines are skipped. */
export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    if (isCommentOrBlank(line)) continue;
    const f = line.split(':');
    if (f.length < 4) continue;
    const gid = parseId(f[2]);
    if (gid === null) continue;
    const members = f
      .slice(3)
      .join(':')
      .split(',')
      .map((m) => m.trim())
      .filter((m) => m !== '');
    out.push({ name: f[0], gid, members });
  }
  return out;
}

/**
 * Resolves a docker-style user string against parsed databases.
 * Throws KilnError NotFound with docker's wording when a name is unknown.
 */
export function resolveUser(spec: string, passwd: PasswdEntry[], groups: GroupEntry[]): ResolvedUser {
  const colon = spec.indexOf(':');
  const userArg = colon < 0 ? spec : spec.slice(0, colon);
  const groupArg = colon < 0 ? '' : spec.slice(colon + 1);

  let uid = 0;
  let gid = 0;
  let home = '/';
  let name: string | undefined;

  if (userArg === '') {
    const root = passwd.find((p) => p.uid === 0);
    if (root) {
      gid = root.gid;
      home = root.home;
      name = root.name;
    }
  } else {
    const num = parseId(userArg);
    const entry = num === null ? passwd.find((p) => p.name === userArg) : passwd.find((p) => p.uid === num);
    if (entry) {
      uid = entry.uid;
      gid = entry.gid;
      home = entry.home;
      name = entry.name;
    } else if (num !== null) {
      uid = num;
    } else {
      throw errNotFound(`unable to find user ${userArg}: no matching entries in passwd file`);
    }
  }

  let additionalGids: number[] = [];
  if (groupArg !== '') {
    const num = parseId(groupArg);
    const entry = num === null ? groups.find((g) => g.name === groupArg) : groups.find((g) => g.gid === num);
    if (entry) gid = entry.gid;
    else if (num !== null) gid = num;
    else throw errNotFound(`unable to find group ${groupArg}: no matching entries in group file`);
  } else if (name !== undefined) {
    const member = name;
    const set = new Set(groups.filter((g) => g.members.includes(member)).map((g) => g.gid));
    set.delete(gid);
    additionalGids = [...set].sort((a, b) => a - b);
  }
  return { uid, gid, additionalGids, home, ...(name !== undefined ? { name } : {}) };
}

/**
 * Reads `<rootfs>/etc/passwd` and `<rootfs>/etc/group`; a missing file is an
 * empty database. Symlinks resolve inside the rootfs (an image's
 * `/etc/passwd -> /x` never reads the host's file).
 */
export async function readUserDb(rootfs: string): Promise<{ passwd: PasswdEntry[]; groups: GroupEntry[] }> {
  // Two small files, read on the calling thread (a thread-pool read costs more in round trips).
  const read = async (rel: string): Promise<string> => {
    const file = await resolveInRoot(rootfs, rel);
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return '';
      throw wrap(err, `read user database "${file}"`);
    }
  };
  const [p, g] = await Promise.all([read('etc/passwd'), read('etc/group')]);
  return { passwd: parsePasswd(p), groups: parseGroup(g) };
}

/** Resolves a docker-style user string against a root filesystem's databases. */
export async function resolveUserInRootfs(rootfs: string, spec: string): Promise<ResolvedUser> {
  const { passwd, groups } = await readUserDb(rootfs);
  return resolveUser(spec, passwd, groups);
}
