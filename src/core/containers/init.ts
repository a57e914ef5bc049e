/**
 * Init directories: the mount points a runtime needs in a container's root filesystem, made
 * once per image instead of in every container's upper layer (docker's "init layer").
 *
 * The runtime bind-mounts the generated /etc/hosts, /etc/resolv.conf and /etc/hostname, and
 * mounts /proc, /sys and /dev. Where the image lacks one of those paths, crun creates it in the
 * container's upper directory before mounting over it: on overlayfs that copies /etc up and
 * creates three files, and removing the container deletes them again, some ten journaled file
 * system operations per container start. An init directory holds those stubs for one image; it
 * becomes the topmost lower layer of every container of that image, so the paths exist and the
 * upper directory stays as the container's process left it.
 *
 * - Where: beside the image's top layer in the overlay snapshotter, `<snapshots>/<id>/init`
 *   next to `<snapshots>/<id>/fs` (it goes when that snapshot is removed; the snapshot's own
 *   content, `fs`, is not touched), or `<snapshots>/<id>/init-none` when the image needs no
 *   stubs. Other mount layouts (the native snapshotter, a bind mount) are left as they are.
 * - What: for each of /etc/hosts, /etc/resolv.conf, /etc/hostname that the image does not have,
 *   an empty file; /etc with the image's /etc's owner, mode, times and extended attributes
 *   (0755 root when the image has none), so that the merged /etc looks as it did; /dev, /proc and /sys (0755) where
 *   missing. A path the image has in any form (a file with content, a symlink) is never
 *   shadowed, nor is an /etc that is not a directory.
 * - How: read from the image's merged view (a read-only overlay of its layers, or the single
 *   layer itself), built in a temporary directory and renamed into place, so that concurrent
 *   first runs of one image agree and a crash leaves nothing half made in use.
 */
import { randomBytes } from 'node:crypto';
import {
  type BigIntStats,
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  renameSync,
  type Stats,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { isErrno } from '../errors.ts';
import { removeTree } from '../fs/safe.ts';
import { escapeOverlayPath, type Mount, splitLowerdir, withTempMount } from '../mount/mount.ts';
import { lutimesNs, native } from '../native/index.ts';
import { GENERATED_ETC_FILES } from '../runtime/spec.ts';

const ROOT_DIRS = ['dev', 'proc', 'sys'] as const;

/**
 * `mounts` (a container's rootfs) with the init directory of its image as the topmost lower
 * layer, made on first use; unchanged when they are not one overlay mount of the overlay
 * snapshotter's layout, or when the init directory cannot be made.
 */
export async function withInitLayer(mounts: Mount[]): Promise<Mount[]> {
  if (mounts.length !== 1 || mounts[0]!.type !== 'overlay') return mounts;
  const m = mounts[0]!;
  const i = m.options.findIndex((o) => o.startsWith('lowerdir='));
  if (i < 0) return mounts;
  const lowers = splitLowerdir(m.options[i]!.slice('lowerdir='.length));
  const top = lowers[0];
  if (!top || path.basename(top) !== 'fs') return mounts;
  const init = path.join(path.dirname(top), 'init');
  if (!existsSync(init)) {
    if (existsSync(`${init}-none`)) return mounts;
    try {
      if (!(await makeInitDir(lowers, init))) return mounts;
    } catch {
      return mounts; // an optimisation: without it the runtime makes its stubs in the upper layer
    }
  }
  const options = [...m.options];
  options[i] = `lowerdir=${[init, ...lowers].map(escapeOverlayPath).join(':')}`;
  return [{ ...m, options }];
}

/** Makes `init` (or `init-none`) for the image whose layers are `lowers`, topmost first; true when `init` exists. */
async function makeInitDir(lowers: string[], init: string): Promise<boolean> {
  const tmp = `${init}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    mkdirSync(tmp, { mode: 0o755 });
    const made =
      lowers.length === 1
        ? fillInitDir(lowers[0]!, tmp)
        : await withTempMount(
            [
              {
                type: 'overlay',
                source: 'overlay',
                options: ['ro', 'index=off', `lowerdir=${lowers.map(escapeOverlayPath).join(':')}`],
              },
            ],
            (view) => fillInitDir(view, tmp),
          );
    const target = made ? init : `${init}-none`;
    try {
      renameSync(tmp, target);
    } catch (err) {
      // Another process made it first: theirs is the same.
      if (!isErrno(err, 'EEXIST') && !isErrno(err, 'ENOTEMPTY')) throw err;
    }
    return made;
  } finally {
    await removeTree(tmp);
  }
}

/** Fills `dir` with what the image at `view` lacks; false when it lacks nothing. */
function fillInitDir(view: string, dir: string): boolean {
  let made = false;
  for (const name of ROOT_DIRS) {
    if (lstatOrNull(path.join(view, name))) continue;
    mkdirSync(path.join(dir, name), { mode: 0o755 });
    made = true;
  }
  const etc = lstatOrNull(path.join(view, 'etc'), true);
  if (etc && !etc.isDirectory()) return made;
  const missing = GENERATED_ETC_FILES.filter((f) => !etc || !lstatOrNull(path.join(view, 'etc', f)));
  if (missing.length === 0) return made;
  const stubEtc = path.join(dir, 'etc');
  mkdirSync(stubEtc, { mode: 0o755 });
  for (const f of missing) writeFileSync(path.join(stubEtc, f), '', { mode: 0o644 });
  if (etc) {
    // The merged /etc takes its attributes from the topmost layer that has it: this one. Its
    // extended attributes too, but overlayfs's own (an opaque mark would hide the image's /etc).
    const src = path.join(view, 'etc');
    for (const name of native().llistxattr(src)) {
      if (name.startsWith('trusted.overlay.')) continue;
      const value = native().lgetxattr(src, name);
      if (value) native().lsetxattr(stubEtc, name, value, 0);
    }
    chownSync(stubEtc, Number(etc.uid), Number(etc.gid));
    chmodSync(stubEtc, Number(etc.mode) & 0o7777);
    lutimesNs(stubEtc, etc.atimeNs, etc.mtimeNs);
  } else chmodSync(stubEtc, 0o755);
  return true;
}

function lstatOrNull(p: string): Stats | null;
function lstatOrNull(p: string, bigint: true): BigIntStats | null;
function lstatOrNull(p: string, bigint = false): Stats | BigIntStats | null {
  try {
    return lstatSync(p, { bigint });
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return null;
    throw err;
  }
}
