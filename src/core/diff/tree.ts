/**
 * Read-only views of filesystem trees for the diff walker (private to
 * src/core/diff). A view answers `lookup(rel)` (lstat of the visible node,
 * never following a final symlink) and `list(rel)` (visible child names of a
 * directory). Paths are relative, '' is the root, '/' separated.
 *
 * - `PlainTree(root)`: a directory as it is (a mounted snapshot).
 * - `OverlayLowerTree(layers)`: the union that overlayfs would show for
 *   `lowerdir=layers[0]:layers[1]:…` (topmost first) without mounting it:
 *   a 0/0 character device is a whiteout, `trusted.overlay.opaque=y` (or
 *   `user.overlay.opaque=y`) on a directory hides the layers below it, a
 *   non-directory hides everything below it at that path. redirect_dir and
 *   metacopy (off by default) are not interpreted.
 * File names must be valid UTF-8 (they become tar names through JavaScript
 * strings); others are refused with NotImplemented rather than mangled.
 */
import type { BigIntStats } from 'node:fs';
import { lstatSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import * as path from 'node:path';
import { isErrno, KilnError, wrap } from '../errors.ts';
import { native } from '../native/index.ts';

export interface Node {
  /** Absolute path of the file that backs this node. */
  abs: string;
  st: BigIntStats;
}

export interface TreeView {
  lookup(rel: string): Promise<Node | undefined>;
  /** Visible names in directory `rel` (unsorted). */
  list(rel: string): Promise<string[]>;
}

export async function lstatMaybe(p: string): Promise<BigIntStats | undefined> {
  try {
    // Synchronous on purpose: an lstat of a cached inode takes microseconds, far less than a
    // round trip through libuv's thread pool, and walks make one per entry.
    return lstatSync(p, { bigint: true, throwIfNoEntry: false });
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
    throw wrap(err, `stat "${p}"`);
  }
}

/** True for overlayfs' whiteout: a character device with device number 0/0. */
export function isWhiteout(st: BigIntStats): boolean {
  return st.isCharacterDevice() && st.rdev === 0n;
}

/** True if the directory carries overlayfs' opaque marker. */
export function isOpaqueDir(abs: string): boolean {
  for (const name of ['trusted.overlay.opaque', 'user.overlay.opaque']) {
    const v = native().lgetxattr(abs, name);
    if (v && v.length === 1 && v[0] === 0x79 /* y */) return true;
  }
  return false;
}

export function joinRel(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

export class PlainTree implements TreeView {
  readonly root: string;
  constructor(root: string) {
    this.root = root;
  }
  async lookup(rel: string): Promise<Node | undefined> {
    const abs = rel === '' ? this.root : path.join(this.root, rel);
    const st = await lstatMaybe(abs);
    return st ? { abs, st } : undefined;
  }
  async list(rel: string): Promise<string[]> {
    const abs = rel === '' ? this.root : path.join(this.root, rel);
    let names: Buffer[];
    try {
      names = await readdir(abs, { encoding: 'buffer' });
    } catch (err) {
      throw wrap(err, `list directory "${abs}"`);
    }
    return names.map((b) => utf8Name(b, abs));
  }
  /** Like `list`, with whether each entry is a character device (from the directory entry, no lstat). */
  async listKinds(rel: string): Promise<{ name: string; charDevice: boolean }[]> {
    const abs = rel === '' ? this.root : path.join(this.root, rel);
    let entries: import('node:fs').Dirent<Buffer>[];
    try {
      entries = await readdir(abs, { encoding: 'buffer', withFileTypes: true });
    } catch (err) {
      throw wrap(err, `list directory "${abs}"`);
    }
    return entries.map((e) => ({ name: utf8Name(e.name, abs), charDevice: e.isCharacterDevice() }));
  }
}

export class OverlayLowerTree implements TreeView {
  readonly layers: string[];
  /** Directory → indices of the layers that contribute to it, topmost first (undefined: not a directory). */
  readonly #dirs = new Map<string, Promise<number[] | undefined>>();

  constructor(layers: string[]) {
    this.layers = layers;
  }

  #dirLayers(rel: string): Promise<number[] | undefined> {
    let p = this.#dirs.get(rel);
    if (!p) {
      p = this.#computeDirLayers(rel);
      this.#dirs.set(rel, p);
    }
    return p;
  }

  async #computeDirLayers(rel: string): Promise<number[] | undefined> {
    if (rel === '') return this.layers.map((_, i) => i);
    const parent = await this.#dirLayers(parentOf(rel));
    if (!parent) return undefined;
    const out: number[] = [];
    for (const i of parent) {
      const abs = path.join(this.layers[i]!, rel);
      const st = await lstatMaybe(abs);
      if (!st) continue;
      if (!st.isDirectory()) break; // a whiteout or a non-directory hides what is below
      out.push(i);
      if (isOpaqueDir(abs)) break;
    }
    return out.length ? out : undefined;
  }

  async lookup(rel: string): Promise<Node | undefined> {
    if (rel === '') {
      const abs = this.layers[0]!;
      const st = await lstatMaybe(abs);
      return st ? { abs, st } : undefined;
    }
    const parent = await this.#dirLayers(parentOf(rel));
    if (!parent) return undefined;
    for (const i of parent) {
      const abs = path.join(this.layers[i]!, rel);
      const st = await lstatMaybe(abs);
      if (!st) continue;
      if (isWhiteout(st)) return undefined;
      return { abs, st };
    }
    return undefined;
  }

  async list(rel: string): Promise<string[]> {
    const layers = await this.#dirLayers(rel);
    if (!layers) return [];
    const seen = new Map<string, boolean>(); // name → visible
    for (const i of layers) {
      const abs = rel === '' ? this.layers[i]! : path.join(this.layers[i]!, rel);
      const entries = await readdir(abs, { withFileTypes: true, encoding: 'buffer' });
      for (const e of entries) {
        const name = utf8Name(e.name, abs);
        if (seen.has(name)) continue;
        let visible = true;
        if (e.isCharacterDevice()) {
          const st = await lstatMaybe(path.join(abs, name));
          visible = !(st && isWhiteout(st));
        }
        seen.set(name, visible);
      }
    }
    return [...seen].filter(([, v]) => v).map(([n]) => n);
  }
}

/** A directory entry name as a string; names that are not valid UTF-8 cannot be represented. */
function utf8Name(raw: Buffer, dir: string): string {
  const name = raw.toString('utf8');
  if (!Buffer.from(name, 'utf8').equals(raw)) {
    throw new KilnError(
      'NotImplemented',
      `read directory "${dir}": file name ${JSON.stringify(raw.toString('latin1'))} is not valid UTF-8`,
    );
  }
  return name;
}

export function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}
