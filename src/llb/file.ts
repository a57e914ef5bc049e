/**
 * File actions (mkdir, mkfile, rm, copy) and the file vertex that applies a
 * chain of them to a state.
 *
 * A chain is immutable: each call returns a new chain with one more action.
 * Actions run in order, each on the result of the previous one; the first
 * runs on the state `file()` is called on, and the last result is the new
 * state. Relative paths are resolved against that state's working directory
 * when `file()` is called; a copy's source path is resolved against the
 * source state's working directory when `copy()` is called. A copy
 * destination that ends in "/" keeps the slash ("into this directory").
 *
 * Owners are a name or numeric id (`"app"`, `1000`, `"app:staff"`,
 * `"1000:1000"`, or `{ user, group }`); names are looked up in the changed
 * tree's /etc/passwd and /etc/group when the op runs.
 */
import { posix } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { errInvalidArgument } from '../core/errors.ts';
import {
  type ChownOpt,
  ChownOptSchema,
  type FileAction as PbFileAction,
  FileActionCopySchema,
  FileActionMkDirSchema,
  FileActionMkFileSchema,
  FileActionRmSchema,
  FileActionSchema,
  FileInputSchema,
  FileOpSchema,
  type UserOpt,
  UserOptSchema,
} from '../gen/kiln/llb/v1/llb_pb.ts';
import type { MarshalContext, OpBody, Output, StateRef, Vertex, VertexMetadata } from './vertex.ts';

/** A user and optional group, by name or numeric id. */
export type Owner = string | number | { user: string | number; group?: string | number };

export interface MkdirOptions {
  /** Create missing parent directories (like `mkdir -p`); an existing directory is then not an error. */
  parents?: boolean;
  owner?: Owner;
  /** Modification time of the new directory. */
  timestamp?: Date;
}

export interface MkfileOptions {
  owner?: Owner;
  timestamp?: Date;
}

export interface RmOptions {
  /** A missing path is not an error. */
  allowNotFound?: boolean;
  /** The path may contain wildcards (`*`, `?`, `[...]`). */
  allowWildcard?: boolean;
}

export interface CopyOptions {
  owner?: Owner;
  /** Permission bits for the copied files; default: the source's. */
  mode?: number;
  /** Copy what a symlink at the source path points to instead of the link. */
  followSymlinks?: boolean;
  /** When the source is a directory, copy its contents rather than the directory itself. */
  copyDirContentsOnly?: boolean;
  /** Create missing parent directories of the destination. */
  createDestPath?: boolean;
  /** The source path may contain wildcards. */
  allowWildcard?: boolean;
  /** With wildcards, matching nothing is not an error. */
  allowEmptyWildcard?: boolean;
  /** Modification time for the copied files; default: the source's. */
  timestamp?: Date;
  /** Only copy paths (relative to the source path) that match one of these patterns. */
  include?: readonly string[];
  /** Do not copy paths that match one of these patterns. */
  exclude?: readonly string[];
  /** Replace an existing destination even when its type differs (file over directory). */
  alwaysReplaceExisting?: boolean;
  /** Extract a source file that is a tar archive (plain, gzip, bzip2, xz) into the destination (Dockerfile ADD). */
  attemptUnpack?: boolean;
}

type Action =
  | { kind: 'mkdir'; path: string; mode: number; opts: MkdirOptions }
  | { kind: 'mkfile'; path: string; mode: number; data: Uint8Array; opts: MkfileOptions }
  | { kind: 'rm'; path: string; opts: RmOptions }
  | { kind: 'copy'; source: Output | undefined; src: string; dest: string; opts: CopyOptions };

function checkPath(action: string, path: string): void {
  if (typeof path !== 'string' || path === '') throw errInvalidArgument(`${action}: path "${path}" is empty`);
  if (path.includes('\0')) throw errInvalidArgument(`${action}: path "${path}" contains a NUL byte`);
}

function checkMode(action: string, mode: number): void {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw errInvalidArgument(`${action}: mode "${mode}" is not a permission value (0 to 0o7777)`);
  }
}

/**
 * An immutable chain of file actions; start one with `mkdir`, `mkfile`, `rm`
 * or `copy` and apply it with `state.file(chain)`.
 *
 * @example
 * ```ts
 * const site = scratch().file(
 *   mkdir('/www', 0o755).mkfile('/www/index.html', 0o644, '<h1>hi</h1>'),
 * );
 * ```
 */
export class FileActions {
  readonly #actions: readonly Action[];

  /** @internal Use the free functions `mkdir`, `mkfile`, `rm`, `copy`. */
  constructor(actions: readonly Action[] = []) {
    this.#actions = actions;
  }

  /** @internal The actions, in order. */
  get actions(): readonly Action[] {
    return this.#actions;
  }

  #with(a: Action): FileActions {
    return new FileActions([...this.#actions, a]);
  }

  /** Creates a directory. */
  mkdir(path: string, mode: number, opts: MkdirOptions = {}): FileActions {
    checkPath('mkdir', path);
    checkMode(`mkdir "${path}"`, mode);
    return this.#with({ kind: 'mkdir', path, mode, opts: { ...opts } });
  }

  /** Creates (or replaces) a file with the given contents (a string is written as UTF-8). */
  mkfile(path: string, mode: number, data: string | Uint8Array, opts: MkfileOptions = {}): FileActions {
    checkPath('mkfile', path);
    checkMode(`mkfile "${path}"`, mode);
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : new Uint8Array(data);
    return this.#with({ kind: 'mkfile', path, mode, data: bytes, opts: { ...opts } });
  }

  /** Removes a file or directory (recursively). */
  rm(path: string, opts: RmOptions = {}): FileActions {
    checkPath('rm', path);
    return this.#with({ kind: 'rm', path, opts: { ...opts } });
  }

  /**
   * Copies `src` from the state `from` to `dest` in the changed state.
   *
   * @example
   * ```ts
   * const app = image('busybox').file(
   *   copy(local('context'), '/src', '/app/', { createDestPath: true, exclude: ['*.md'] }),
   * );
   * ```
   */
  copy(from: StateRef, src: string, dest: string, opts: CopyOptions = {}): FileActions {
    checkPath('copy source', src);
    checkPath('copy destination', dest);
    if (opts.mode !== undefined) checkMode(`copy "${src}"`, opts.mode);
    const source = from.output();
    return this.#with({
      kind: 'copy',
      source,
      src: posix.resolve(from.getDir(), src),
      dest,
      opts: {
        ...opts,
        include: opts.include && [...opts.include],
        exclude: opts.exclude && [...opts.exclude],
      },
    });
  }
}

/** Starts a chain with a mkdir. See `FileActions.mkdir`. */
export function mkdir(path: string, mode: number, opts?: MkdirOptions): FileActions {
  return new FileActions().mkdir(path, mode, opts);
}
/** Starts a chain with a mkfile. See `FileActions.mkfile`. */
export function mkfile(
  path: string,
  mode: number,
  data: string | Uint8Array,
  opts?: MkfileOptions,
): FileActions {
  return new FileActions().mkfile(path, mode, data, opts);
}
/** Starts a chain with an rm. See `FileActions.rm`. */
export function rm(path: string, opts?: RmOptions): FileActions {
  return new FileActions().rm(path, opts);
}
/** Starts a chain with a copy. See `FileActions.copy`. */
export function copy(from: StateRef, src: string, dest: string, opts?: CopyOptions): FileActions {
  return new FileActions().copy(from, src, dest, opts);
}

function userOpt(v: string | number, what: string): UserOpt {
  if (typeof v === 'number' || /^[0-9]+$/.test(v)) {
    const id = Number(v);
    if (!Number.isInteger(id) || id < 0 || id > 0xffffffff)
      throw errInvalidArgument(`invalid ${what} id "${v}"`);
    return create(UserOptSchema, { user: { case: 'id', value: id } });
  }
  if (v === '' || v.includes(':')) throw errInvalidArgument(`invalid ${what} name "${v}"`);
  return create(UserOptSchema, { user: { case: 'name', value: v } });
}

/** The ChownOpt for an owner; throws InvalidArgument for a malformed one. */
export function chownOpt(owner: Owner): ChownOpt {
  let user: string | number;
  let group: string | number | undefined;
  if (typeof owner === 'object') {
    user = owner.user;
    group = owner.group;
  } else if (typeof owner === 'string' && owner.includes(':')) {
    const i = owner.indexOf(':');
    user = owner.slice(0, i);
    group = owner.slice(i + 1);
  } else {
    user = owner;
  }
  const out = create(ChownOptSchema, { user: userOpt(user, 'user') });
  if (group !== undefined) out.group = userOpt(group, 'group');
  return out;
}

/** Resolves `p` against `dir`, keeping a trailing slash. */
function resolveIn(dir: string, p: string): string {
  const abs = posix.resolve(dir, p);
  return p.endsWith('/') && abs !== '/' ? `${abs}/` : abs;
}

/** The vertex for `state.file(chain)`. */
export class FileVertex implements Vertex {
  readonly inputs: readonly Output[];
  readonly metadata: VertexMetadata;
  readonly #base: Output | undefined;
  readonly #dir: string;
  readonly #actions: readonly Action[];

  constructor(base: Output | undefined, dir: string, chain: FileActions, metadata: VertexMetadata) {
    if (chain.actions.length === 0) throw errInvalidArgument('file: the action chain is empty');
    this.#base = base;
    this.#dir = dir;
    this.#actions = chain.actions;
    this.metadata = metadata;
    const inputs: Output[] = [];
    if (base) inputs.push(base);
    for (const a of chain.actions) if (a.kind === 'copy' && a.source) inputs.push(a.source);
    this.inputs = inputs;
  }

  toOp(_ctx: MarshalContext, inputIndex: (o: Output) => number): OpBody {
    const actions: PbFileAction[] = this.#actions.map((a, i) => {
      const pb = create(FileActionSchema, {
        input: create(
          FileInputSchema,
          i > 0
            ? { from: { case: 'action', value: i - 1 } }
            : this.#base
              ? { from: { case: 'opInput', value: inputIndex(this.#base) } }
              : {},
        ),
      });
      if (i === this.#actions.length - 1) pb.output = 0;
      const stamp = (d: Date | undefined) => (d === undefined ? undefined : timestampFromDate(d));
      const owner = (o: Owner | undefined) => (o === undefined ? undefined : chownOpt(o));
      switch (a.kind) {
        case 'mkdir':
          pb.action = {
            case: 'mkdir',
            value: create(FileActionMkDirSchema, {
              path: resolveIn(this.#dir, a.path),
              mode: a.mode,
              makeParents: a.opts.parents ?? false,
              owner: owner(a.opts.owner),
              timestamp: stamp(a.opts.timestamp),
            }),
          };
          break;
        case 'mkfile':
          pb.action = {
            case: 'mkfile',
            value: create(FileActionMkFileSchema, {
              path: resolveIn(this.#dir, a.path),
              mode: a.mode,
              data: a.data,
              owner: owner(a.opts.owner),
              timestamp: stamp(a.opts.timestamp),
            }),
          };
          break;
        case 'rm':
          pb.action = {
            case: 'rm',
            value: create(FileActionRmSchema, {
              path: resolveIn(this.#dir, a.path),
              allowNotFound: a.opts.allowNotFound ?? false,
              allowWildcard: a.opts.allowWildcard ?? false,
            }),
          };
          break;
        case 'copy': {
          const o = a.opts;
          pb.secondaryInput = create(
            FileInputSchema,
            a.source ? { from: { case: 'opInput', value: inputIndex(a.source) } } : {},
          );
          pb.action = {
            case: 'copy',
            value: create(FileActionCopySchema, {
              src: a.src,
              dest: resolveIn(this.#dir, a.dest),
              owner: owner(o.owner),
              mode: o.mode,
              followSymlink: o.followSymlinks ?? false,
              dirContentsOnly: o.copyDirContentsOnly ?? false,
              createDestPath: o.createDestPath ?? false,
              allowWildcard: o.allowWildcard ?? false,
              allowEmptyWildcard: o.allowEmptyWildcard ?? false,
              timestamp: stamp(o.timestamp),
              includePatterns: [...(o.include ?? [])],
              excludePatterns: [...(o.exclude ?? [])],
              alwaysReplaceExisting: o.alwaysReplaceExisting ?? false,
              attemptUnpack: o.attemptUnpack ?? false,
            }),
          };
          break;
        }
      }
      return pb;
    });
    return { op: { case: 'file', value: create(FileOpSchema, { actions }) } };
  }
}
