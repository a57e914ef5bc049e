/**
 * The file op (LLB FileOp): a chain of mkdir / mkfile / rm / copy actions.
 *
 * Each action changes a tree: an op input (a committed snapshot), the result
 * of an earlier action, or the empty tree. An action on the result of an
 * earlier action that nothing else uses keeps working in the same active
 * snapshot (no commit in between); otherwise the earlier result is committed
 * and the action prepares a new snapshot on it. Numbered actions are the
 * op's outputs, committed as results.
 *
 * Semantics (after BuildKit's FileOp, from its documentation):
 * - paths are container paths; symlinks resolve inside the tree.
 * - mkdir: mode, `makeParents` (missing parents 0755 with the same owner),
 *   an existing directory is accepted; owner; timestamp.
 * - mkfile: writes data (replacing), mode, owner, timestamp.
 * - rm: `allowNotFound`, `allowWildcard` (Go filepath.Match per component);
 *   removes recursively, never following the last symlink.
 * - copy: from the secondary input's tree. Wildcards (`allowWildcard`; no
 *   match is an error unless `allowEmptyWildcard`), `followSymlink` (the
 *   source path itself), `dirContentsOnly` (copy a directory's children into
 *   dest), `createDestPath`, include/exclude patterns relative to the source
 *   (dockerignore semantics), owner (names resolved in the destination
 *   tree's /etc/passwd and /etc/group), mode, timestamp; hard links within
 *   one source's tree stay hard links (not across the sources of a
 *   wildcard); xattrs are kept. Dest ending in '/', an existing directory,
 *   or several sources: copy into it as `dest/<basename>`.
 *   `attemptUnpack`: a source file that is a tar archive is extracted into
 *   dest instead (./unpack.ts).
 *
 * Cache map: the op digest; an input read only as a copy source gets a
 * content-based dep whose selector is the copied path(s), so changes
 * elsewhere in that input do not invalidate the op. For the whole tree
 * (`/`) of a local-source snapshot, the dep is the context checksum its
 * source computed (localsync.ts `localContentDigest`), not a re-read.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { errInvalidArgument, errNotFound, isKilnError, KilnError, wrap } from '../core/errors.ts';
import type {
  FileAction,
  FileActionCopy,
  FileActionMkDir,
  FileActionMkFile,
  FileActionRm,
  FileInput,
  FileOp as FileOpPb,
} from '../gen/kiln/llb/v1/llb_pb.ts';
import type { CacheMap, CacheMapDep, Op, OpContext, Result } from '../solver/types.ts';
import { expandGlob, patternFilter } from './checksum.ts';
import type { OpEnv } from './env.ts';
import { snapshotLayerDirs, snapshotLowerDirs, snapshotUpperDir } from '../core/mount/mount.ts';
import { snapshotChain } from '../core/snapshots/chain.ts';
import { heldPaths, LABEL_LINKS_TRACKED, linkLabels } from '../core/snapshots/links.ts';
import type { SnapshotInfo } from '../core/snapshots/types.ts';
import { type LinkLineage, makeLinker } from './copylink.ts';
import {
  type CopyOptions,
  copyEntry,
  lstatMaybe,
  mkdirAllInRoot,
  resolveInRoot,
  resolveOwner,
} from './fsutil.ts';
import { LABEL_LOCAL_HARDLINKS, LABEL_LOCAL_KEY, localContentDigest } from './localsync.ts';
import { hasGlob, PatternMatcher } from './patterns.ts';
import { OpSession, type SnapshotRef, snapshotOf } from './refs.ts';
import { unpackArchive } from './unpack.ts';

function seconds(ts: { seconds: bigint; nanos: number } | undefined): number | undefined {
  return ts ? Number(ts.seconds) + ts.nanos / 1e9 : undefined;
}

async function mkdirAction(root: string, a: FileActionMkDir): Promise<void> {
  const owner = await resolveOwner(root, a.owner);
  const parent = path.posix.dirname(a.path);
  if (a.makeParents) await mkdirAllInRoot(root, parent, owner);
  const parentHost = await resolveInRoot(root, parent);
  if (!(await lstatMaybe(parentHost))?.isDirectory()) {
    throw errNotFound(`mkdir "${a.path}": parent directory "${parent}" does not exist`);
  }
  const host = path.join(parentHost, path.posix.basename(a.path));
  const st = await lstatMaybe(await resolveInRoot(root, a.path));
  if (st?.isDirectory()) return;
  if (st) throw new KilnError('AlreadyExists', `mkdir "${a.path}": exists and is not a directory`);
  await fs.mkdir(host);
  await fs.chmod(host, a.mode & 0o7777);
  if (owner) await fs.lchown(host, owner.uid, owner.gid);
  const t = seconds(a.timestamp);
  if (t !== undefined) await fs.utimes(host, t, t);
}

async function mkfileAction(root: string, a: FileActionMkFile): Promise<void> {
  const owner = await resolveOwner(root, a.owner);
  const parent = path.posix.dirname(a.path);
  const parentHost = await resolveInRoot(root, parent);
  if (!(await lstatMaybe(parentHost))?.isDirectory()) {
    throw errNotFound(`mkfile "${a.path}": parent directory "${parent}" does not exist`);
  }
  const host = path.join(parentHost, path.posix.basename(a.path));
  const st = await lstatMaybe(host);
  if (st?.isDirectory()) throw new KilnError('AlreadyExists', `mkfile "${a.path}": is a directory`);
  if (st) await fs.rm(host, { force: true });
  await fs.writeFile(host, a.data, { mode: a.mode & 0o7777 });
  await fs.chmod(host, a.mode & 0o7777);
  if (owner) await fs.lchown(host, owner.uid, owner.gid);
  const t = seconds(a.timestamp);
  if (t !== undefined) await fs.utimes(host, t, t);
}

async function rmAction(root: string, a: FileActionRm): Promise<void> {
  const paths = a.allowWildcard && hasGlob(a.path) ? await expandGlob(root, a.path) : [a.path];
  if (paths.length === 0 && !a.allowNotFound) throw errNotFound(`rm "${a.path}": no such file or directory`);
  for (const p of paths) {
    const host = await resolveInRoot(root, p, false);
    if (host === root) throw errInvalidArgument(`rm "${a.path}": cannot remove the root`);
    if (!(await lstatMaybe(host))) {
      if (a.allowNotFound) continue;
      throw errNotFound(`rm "${p}": no such file or directory`);
    }
    await fs.rm(host, { recursive: true, force: true });
  }
}

async function copyAction(
  srcRoot: string,
  root: string,
  a: FileActionCopy,
  signal: AbortSignal,
  linkFile?: CopyOptions['linkFile'],
): Promise<void> {
  const what = `copy "${a.src}" to "${a.dest}"`;
  let sources: string[];
  if (a.allowWildcard && hasGlob(a.src)) {
    sources = await expandGlob(srcRoot, a.src);
    if (sources.length === 0) {
      if (a.allowEmptyWildcard) return;
      throw errNotFound(`${what}: no source files match "${a.src}"`);
    }
  } else {
    const host = await resolveInRoot(srcRoot, a.src, a.followSymlink);
    if (!(await lstatMaybe(host))) throw errNotFound(`${what}: "${a.src}": no such file or directory`);
    sources = [a.src];
  }
  const owner = await resolveOwner(root, a.owner);
  const include = new PatternMatcher(a.includePatterns);
  const exclude = new PatternMatcher(a.excludePatterns);
  const { filter, descend } = patternFilter(include, exclude);
  const common = {
    ...(owner ? { owner } : {}),
    ...(a.mode !== undefined ? { mode: a.mode & 0o7777 } : {}),
    ...(a.timestamp ? { timestamp: seconds(a.timestamp) } : {}),
    followTop: a.followSymlink,
    filter,
    descend,
    signal,
  };
  const destHost = await resolveInRoot(root, a.dest);
  const destSt = await lstatMaybe(destHost);
  const intoDir = a.dest.endsWith('/') || sources.length > 1 || destSt?.isDirectory() === true;
  const ensureDir = async (p: string): Promise<string> => {
    if (a.createDestPath) return mkdirAllInRoot(root, p, owner);
    const h = await resolveInRoot(root, p);
    if (!(await lstatMaybe(h))?.isDirectory()) {
      throw errNotFound(`${what}: destination directory "${p}" does not exist`);
    }
    return h;
  };
  for (const src of sources) {
    // Hard links are kept within one source's tree, not across sources (as BuildKit).
    const opts: CopyOptions = {
      ...common,
      links: new Map<string, string>(),
      ...(linkFile ? { linkFile } : {}),
    };
    const srcHost = await resolveInRoot(srcRoot, src, a.followSymlink);
    const st = await fs.stat(srcHost).catch(() => undefined);
    const lst = await fs.lstat(srcHost);
    const isDir = lst.isDirectory() || (a.followSymlink && st?.isDirectory() === true);
    if (
      a.attemptUnpack &&
      st?.isFile() &&
      (await unpackArchive(srcHost, root, a.dest, () => ensureDir(a.dest)))
    ) {
      continue;
    }
    if (isDir && a.dirContentsOnly) {
      const target = await ensureDir(a.dest);
      for (const name of (await fs.readdir(srcHost)).sort()) {
        await copyEntry(path.join(srcHost, name), path.join(target, name), opts, name);
      }
      continue;
    }
    const base = path.posix.basename(src);
    const destPath = intoDir ? path.posix.join(a.dest, base) : a.dest;
    const parentHost = await ensureDir(path.posix.dirname(destPath));
    const target = path.join(parentHost, path.posix.basename(destPath));
    const existing = await lstatMaybe(target);
    if (existing && a.alwaysReplaceExisting && existing.isDirectory() !== isDir) {
      await fs.rm(target, { recursive: true, force: true });
    }
    await copyEntry(srcHost, target, opts);
  }
}

/** An active snapshot: key, mount directory, and its upper and lower directories when known. */
interface Work {
  key: string;
  dir: string;
  upper: string | undefined;
  lowers: string[] | undefined;
  /** Committed parent ('' for none): its chain's labels say which context inodes it holds. */
  parent: string;
  /** Context key → common context path of the inodes linked into this tree (its result's labels). */
  linked?: Map<string, string>;
}

/**
 * The context key of each layer of a view (`layers`, topmost first, one per
 * snapshot of `chain`, root first) that is a context increment without hard
 * links of its own: the layers whose shared inodes may be linked.
 */
function contextLayerKeys(chain: readonly SnapshotInfo[], layers: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  if (chain.length !== layers.length) return out; // not one directory per snapshot: link nothing shared
  chain.forEach(({ labels }, i) => {
    const key = labels[LABEL_LOCAL_KEY];
    if (
      key !== undefined &&
      labels[LABEL_LOCAL_HARDLINKS] === 'none' &&
      labels[LABEL_LINKS_TRACKED] === 'true'
    )
      out.set(layers[chain.length - 1 - i]!, key);
  });
  return out;
}

interface Tree {
  /** The active snapshot, while still open. */
  open?: Work;
  /** Committed snapshot name, once committed (or the op input's snapshot). */
  committed?: string;
}

export class FileOp implements Op {
  readonly #env: OpEnv;
  readonly #op: FileOpPb;
  readonly #digest: string;

  constructor(env: OpEnv, op: FileOpPb, digest: string) {
    this.#env = env;
    this.#op = op;
    this.#digest = digest;
  }

  async cacheMap(_ctx: OpContext, _index: number): Promise<CacheMap> {
    const deps: CacheMapDep[] = [];
    const inputCount = Math.max(
      -1,
      ...this.#op.actions.flatMap((a) =>
        [a.input, a.secondaryInput].map((f) => (f?.from.case === 'opInput' ? f.from.value : -1)),
      ),
    );
    for (let k = 0; k <= inputCount; k++) {
      const asPrimary = this.#op.actions.some(
        (a) => a.input?.from.case === 'opInput' && a.input.from.value === k,
      );
      const srcs = this.#op.actions
        .filter(
          (a) =>
            a.secondaryInput?.from.case === 'opInput' &&
            a.secondaryInput.from.value === k &&
            a.action.case === 'copy',
        )
        .map((a) => (a.action.value as FileActionCopy).src);
      if (asPrimary || srcs.length === 0) deps.push({});
      else {
        const selector = srcs.length === 1 ? srcs[0] : JSON.stringify(srcs);
        deps.push({
          selector,
          computeDigestFunc: async (r, sel, signal) => {
            // The whole of a local context: the checksum its source computed (localsync.ts).
            if (sel === '/') {
              const sn = await this.#env.core.snapshotter();
              const local = await localContentDigest(sn, snapshotOf(r));
              if (local !== undefined) return local;
            }
            return this.#env.checksums.forResult(r, sel, signal);
          },
        });
      }
    }
    return { digest: this.#digest, deps };
  }

  async exec(ctx: OpContext, inputs: readonly Result[]): Promise<Result[]> {
    const actions = this.#op.actions;
    const session = await OpSession.open(this.#env.core, `file ${this.#digest}`);
    const uses = new Array<number>(actions.length).fill(0);
    for (const a of actions) {
      for (const f of [a.input, a.secondaryInput]) if (f?.from.case === 'action') uses[f.from.value]++;
    }
    const trees: Tree[] = actions.map(() => ({}));
    const outputs: SnapshotRef[] = [];
    const views = new Map<string, string>();
    /**
     * Per mounted view whose files may be linked (./copylink.ts; overlayfs): its layer directories,
     * and those of its context increments → context key.
     */
    const linkable = new Map<string, { layers: string[]; localKeys: Map<string, string> }>();
    const commitTree = async (j: number): Promise<string> => {
      const t = trees[j]!;
      if (t.committed !== undefined) return t.committed;
      const open = t.open!;
      await session.unmount(open.dir);
      t.open = undefined;
      t.committed = await session.commitIntermediate(open.key);
      return t.committed;
    };
    const snapshotFor = async (f: FileInput | undefined): Promise<string> => {
      if (f?.from.case === 'opInput') return snapshotOf(inputs[f.from.value]);
      if (f?.from.case === 'action') return commitTree(f.from.value);
      return '';
    };
    const readDir = async (f: FileInput | undefined): Promise<string> => {
      if (f?.from.case === 'action' && trees[f.from.value]!.open) return trees[f.from.value]!.open!.dir;
      const snap = await snapshotFor(f);
      let dir = views.get(snap);
      if (!dir) {
        const mounts = await session.view(snap);
        dir = await session.mount(mounts);
        views.set(snap, dir);
        if (session.sn.name === 'overlayfs') {
          // Not from a context snapshot with hard links of its own: its next sync could no longer
          // tell its link groups from the links made here (localsync.ts).
          const chain = snap ? await snapshotChain(session.sn, snap) : [];
          const labels = chain.at(-1)?.labels ?? {};
          const ownLinks = labels[LABEL_LOCAL_KEY] !== undefined && labels[LABEL_LOCAL_HARDLINKS] !== 'none';
          const layers = ownLinks ? undefined : snapshotLayerDirs(mounts);
          if (layers) linkable.set(dir, { layers, localKeys: contextLayerKeys(chain, layers) });
        }
      }
      return dir;
    };
    try {
      for (let i = 0; i < actions.length; i++) {
        ctx.signal.throwIfAborted();
        const a: FileAction = actions[i]!;
        const from = a.input?.from;
        let work: Work;
        if (
          from?.case === 'action' &&
          trees[from.value]!.open &&
          uses[from.value] === 1 &&
          actions[from.value]!.output === undefined
        ) {
          work = trees[from.value]!.open!;
          trees[from.value]!.open = undefined;
        } else {
          const parent = await snapshotFor(a.input);
          const { key, mounts } = await session.prepare(parent);
          work = {
            key,
            dir: await session.mount(mounts),
            upper: snapshotUpperDir(mounts),
            lowers: snapshotLowerDirs(mounts),
            parent,
          };
        }
        trees[i]!.open = work;
        const desc = describeAction(a);
        try {
          switch (a.action.case) {
            case 'mkdir':
              await mkdirAction(work.dir, a.action.value);
              break;
            case 'mkfile':
              await mkfileAction(work.dir, a.action.value);
              break;
            case 'rm':
              await rmAction(work.dir, a.action.value);
              break;
            case 'copy': {
              const src = await readDir(a.secondaryInput);
              // Link instead of copying (./copylink.ts) from a committed tree on overlayfs, when no
              // later action reads this tree through its mount.
              const linkSrc = linkable.get(src);
              let link: ReturnType<typeof makeLinker>;
              if (linkSrc && work.upper !== undefined && work.lowers !== undefined && uses[i] === 0) {
                work.linked ??= new Map();
                // Context inodes the destination may hold: what its chain's labels name, and
                // what earlier actions linked into this tree.
                const destHeld = new Map<string, string[]>();
                const held = (k: string, p: string): void => {
                  const ps = destHeld.get(k);
                  if (ps) ps.push(p);
                  else destHeld.set(k, [p]);
                };
                for (const l of work.parent ? await snapshotChain(session.sn, work.parent) : []) {
                  for (const [k, p] of heldPaths(l.labels)) held(k, p);
                }
                for (const [k, p] of work.linked) held(k, p);
                const lineage: LinkLineage = { localKeys: linkSrc.localKeys, destHeld, linked: work.linked };
                link = makeLinker(src, linkSrc.layers, work.dir, work.upper, work.lowers, lineage);
              }
              await copyAction(src, work.dir, a.action.value, ctx.signal, link);
              break;
            }
            default:
              throw errInvalidArgument(`file action ${i} has no operation`);
          }
        } catch (err) {
          if (isKilnError(err)) throw err;
          throw wrap(err, desc);
        }
      }
      const byOutput = actions
        .map((a, i) => ({ out: a.output, i }))
        .filter((x): x is { out: number; i: number } => x.out !== undefined)
        .sort((x, y) => x.out - y.out);
      for (const { i } of byOutput) {
        const t = trees[i]!;
        if (t.open) {
          await session.unmount(t.open.dir);
          outputs.push(await session.commitResult(t.open.key, this.#digest, linkLabels(t.open.linked)));
          t.open = undefined;
        } else {
          // Already committed as an intermediate: stack an empty change to get a result of its own.
          const { key } = await session.prepare(t.committed!);
          outputs.push(await session.commitResult(key, this.#digest));
        }
      }
      return outputs;
    } catch (err) {
      await Promise.all(outputs.map((o) => o.release()));
      throw err;
    } finally {
      await session.close();
    }
  }
}

export function describeAction(a: FileAction): string {
  switch (a.action.case) {
    case 'mkdir':
      return `mkdir ${a.action.value.path}`;
    case 'mkfile':
      return `mkfile ${a.action.value.path}`;
    case 'rm':
      return `rm ${a.action.value.path}`;
    case 'copy':
      return `copy ${a.action.value.src} ${a.action.value.dest}`;
    default:
      return 'file action';
  }
}
