/**
 * Source ops (LLB SourceOp), by identifier scheme:
 *
 * - `docker-image://ref`: through the worker's `ImageResolver` (pull and
 *   unpack happen there); the result is the image's top chain snapshot
 *   itself, nothing is copied or mounted (files are only unpacked when an
 *   exec or copy mounts it). Cache digest: op digest + resolved image digest.
 * - `local://name`: the session's directory `name`, filtered by
 *   `local.include` / `local.exclude` (dockerignore semantics) and
 *   `local.followpaths` (paths that are sent even when not included; a
 *   symlink among them also sends its target). The cache digest includes a
 *   content checksum of exactly what is sent, so an unchanged directory is a
 *   cache hit and a changed one is not. File hashes are cached by path, size,
 *   mtime, ctime and inode in `<stateDir>/local-checksums.json` (see
 *   hashcache.ts: rewritten only when an entry changed), so an unchanged
 *   tree is walked (lstat) but not re-read. The snapshot is made
 *   incrementally (localsync.ts): on the overlayfs driver a child of the
 *   previous snapshot of the same local source receives only what changed,
 *   up to MAX_LOCAL_DEPTH increments, then a full copy again. The snapshot
 *   is labelled with the context's checksum (see localContentDigest).
 * - `git://remote#ref`: the `git` CLI; the ref is resolved with
 *   `git ls-remote` (a 40-hex ref is used as is) and the commit is part of the
 *   cache digest; the checkout is a shallow fetch of that commit;
 *   `git.subdir` keeps only that directory, `git.keepgitdir` keeps `.git`.
 * - `http://`, `https://`: one file fetched with `fetch`; `http.checksum`
 *   is verified (DataLoss on mismatch), `http.filename` names it (default:
 *   the URL's last segment, else `index`), `http.perm` sets its mode (0600).
 *   Without a checksum the file is downloaded while computing the cache map
 *   and its digest is part of the cache digest (no HTTP caching headers).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { sha256 } from '../core/digest.ts';
import {
  errDataLoss,
  errInvalidArgument,
  errNotFound,
  errUnavailable,
  isKilnError,
  wrap,
} from '../core/errors.ts';
import type { Mount } from '../core/mount/mount.ts';
import type { Platform, SourceOp as SourceOpPb } from '../gen/kiln/llb/v1/llb_pb.ts';
import { ATTR } from '../llb/source.ts';
import type { CacheMap, Op, OpContext, Result } from '../solver/types.ts';
import { checksumTree, patternFilter } from './checksum.ts';
import { LABEL_LINKS_TRACKED } from '../core/snapshots/links.ts';
import type { OpEnv } from './env.ts';
import { copyEntry, lstatMaybe } from './fsutil.ts';
import { hashCacheFor } from './hashcache.ts';
import { PatternMatcher } from './patterns.ts';
import {
  findLocalBase,
  LABEL_LOCAL_CHECKSUM,
  LABEL_LOCAL_DEPTH,
  LABEL_LOCAL_HARDLINKS,
  LABEL_LOCAL_KEY,
  localSharedKey,
  MAX_LOCAL_DEPTH,
  syncTree,
} from './localsync.ts';
import { ensureEmptySnapshot, OpSession, SnapshotRef } from './refs.ts';

const execFileAsync = promisify(execFile);

/** Syncs of one local source (by state directory and shared key) run one at a time in a process. */
const localSyncs = new Map<string, Promise<unknown>>();

async function serialized<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const prev = localSyncs.get(key);
  const run = (prev ?? Promise.resolve()).catch(() => {}).then(fn);
  localSyncs.set(key, run);
  try {
    return await run;
  } finally {
    if (localSyncs.get(key) === run) localSyncs.delete(key);
  }
}

function jsonList(v: string | undefined): string[] {
  return v ? (JSON.parse(v) as string[]) : [];
}

interface LocalSpec {
  dir: string;
  filter: (rel: string, isDir: boolean) => boolean;
  descend: (rel: string) => boolean;
}

async function localSpec(env: OpEnv, name: string, attrs: Record<string, string>): Promise<LocalSpec> {
  const dir = env.sessions.locals[name];
  if (dir === undefined) throw errNotFound(`local source "${name}": not provided by the session`);
  if (!(await lstatMaybe(dir))?.isDirectory())
    throw errNotFound(`local source "${name}": "${dir}" is not a directory`);
  const include = new PatternMatcher(jsonList(attrs[ATTR.localInclude]));
  const exclude = new PatternMatcher(jsonList(attrs[ATTR.localExclude]));
  const follow = jsonList(attrs[ATTR.localFollowPaths]).map((p) =>
    path.posix.normalize(p).replace(/^\/+/, ''),
  );
  // followPaths: each path, its symlink target (within the directory) and their parents are sent.
  const followed = new Set<string>();
  for (const p of follow) {
    followed.add(p);
    try {
      const real = await fs.realpath(path.join(dir, p));
      const rel = path.relative(await fs.realpath(dir), real);
      if (!rel.startsWith('..')) followed.add(rel.split(path.sep).join('/'));
    } catch {
      // missing: nothing to follow
    }
  }
  const under = (rel: string, p: string): boolean =>
    rel === p || rel.startsWith(`${p}/`) || p.startsWith(`${rel}/`);
  const base = patternFilter(include, exclude);
  const hasFollow = followed.size > 0;
  return {
    dir,
    filter: (rel, isDir) => {
      if (hasFollow && [...followed].some((p) => rel === p || rel.startsWith(`${p}/`)))
        return !exclude.matches(rel);
      if (hasFollow && include.empty) return false;
      return base.filter(rel, isDir);
    },
    descend: (rel) => (hasFollow && [...followed].some((p) => under(rel, p))) || base.descend(rel),
  };
}

export class SourceOp implements Op {
  readonly #env: OpEnv;
  readonly #op: SourceOpPb;
  readonly #digest: string;
  readonly #platform: Platform | undefined;
  #httpFile: Promise<{ file: string; digest: string }> | undefined;
  #gitCommit: string | undefined;
  #image: { snapshot: string } | undefined;
  /** The local context's content checksum, from the cache map. */
  #localSum: string | undefined;

  constructor(env: OpEnv, op: SourceOpPb, digest: string, platform: Platform | undefined) {
    this.#env = env;
    this.#op = op;
    this.#digest = digest;
    this.#platform = platform;
  }

  get scheme(): string {
    return this.#op.identifier.slice(0, this.#op.identifier.indexOf('://'));
  }

  get rest(): string {
    return this.#op.identifier.slice(this.#op.identifier.indexOf('://') + 3);
  }

  async cacheMap(ctx: OpContext, _index: number): Promise<CacheMap> {
    const attrs = this.#op.attrs;
    switch (this.scheme) {
      case 'local': {
        const spec = await localSpec(this.#env, this.rest, attrs);
        const cache = await hashCacheFor(this.#env.stateDir, spec.dir);
        const sum = await checksumTree(spec.dir, '/', {
          cache,
          signal: ctx.signal,
          filter: spec.filter,
          descend: spec.descend,
        });
        await cache.save();
        this.#localSum = sum;
        return { digest: sha256(`${this.#digest}\0${sum}`), deps: [] };
      }
      case 'docker-image': {
        if (!this.#env.images)
          throw errUnavailable(`image source "${this.rest}": no image resolver configured`);
        const img = await this.#env.images.resolve(this.rest, this.#platform, ctx.signal);
        this.#image = { snapshot: img.topChainSnapshot };
        return { digest: sha256(`${this.#digest}\0${img.digest}`), deps: [] };
      }
      case 'git': {
        this.#gitCommit = await this.#resolveGit(ctx.signal);
        return { digest: sha256(`${this.#digest}\0${this.#gitCommit}`), deps: [] };
      }
      case 'http':
      case 'https': {
        const want = attrs[ATTR.httpChecksum];
        if (want) return { digest: sha256(`${this.#digest}\0${want}`), deps: [] };
        this.#httpFile ??= this.#download(ctx.signal);
        return { digest: sha256(`${this.#digest}\0${(await this.#httpFile).digest}`), deps: [] };
      }
      default:
        throw errInvalidArgument(`source "${this.#op.identifier}": unsupported scheme "${this.scheme}"`);
    }
  }

  async exec(ctx: OpContext, _inputs: readonly Result[]): Promise<Result[]> {
    if (this.scheme === 'docker-image') {
      if (!this.#image) await this.cacheMap(ctx, 0);
      const snap = this.#image!.snapshot || (await ensureEmptySnapshot(await this.#env.core.snapshotter()));
      return [new SnapshotRef(snap)];
    }
    if (this.scheme === 'local') return [await this.#syncLocal(ctx.signal)];
    const session = await OpSession.open(this.#env.core, `source ${this.#op.identifier}`);
    try {
      const { key, mounts } = await session.prepare('');
      const dir = await session.mount(mounts);
      switch (this.scheme) {
        case 'git':
          await this.#checkoutGit(dir, ctx.signal);
          break;
        case 'http':
        case 'https':
          await this.#placeHttp(dir, ctx.signal);
          break;
        default:
          throw errInvalidArgument(`source "${this.#op.identifier}": unsupported scheme "${this.scheme}"`);
      }
      await session.unmount(dir);
      return [await session.commitResult(key, this.#digest)];
    } finally {
      await session.close();
    }
  }

  /**
   * The local source's snapshot: a child of the previous snapshot of the same
   * local source (found by label, see localsync.ts) that receives only what
   * changed, or a full copy when there is none, the chain is MAX_LOCAL_DEPTH
   * long, or the snapshotter does not stack (native: a child is a copy of
   * its parent, so a fresh copy of the context costs no more).
   */
  async #syncLocal(signal: AbortSignal): Promise<SnapshotRef> {
    const attrs = this.#op.attrs;
    const spec = await localSpec(this.#env, this.rest, attrs);
    const shared = localSharedKey({
      name: this.rest,
      dir: await fs.realpath(spec.dir),
      include: attrs[ATTR.localInclude],
      exclude: attrs[ATTR.localExclude],
      followPaths: attrs[ATTR.localFollowPaths],
    });
    return serialized(`${this.#env.stateDir}\0${shared}`, async () => {
      const session = await OpSession.open(this.#env.core, `source ${this.#op.identifier}`);
      try {
        const found = session.sn.name === 'overlayfs' ? await findLocalBase(session.sn, shared) : undefined;
        let base = found && found.depth < MAX_LOCAL_DEPTH ? found : undefined;
        let prepared: { key: string; mounts: Mount[] };
        try {
          prepared = await session.prepare(base?.name ?? '');
        } catch (err) {
          // The base was pruned since it was found: a full copy then.
          if (!base || !isKilnError(err, 'NotFound')) throw err;
          base = undefined;
          prepared = await session.prepare('');
        }
        const dir = await session.mount(prepared.mounts);
        const stats = await syncTree(spec, dir, { signal, externalLinks: base?.hardlinks === false });
        await session.unmount(dir);
        return await session.commitResult(prepared.key, this.#digest, {
          [LABEL_LOCAL_KEY]: shared,
          [LABEL_LOCAL_DEPTH]: String(base ? base.depth + 1 : 0),
          ...(stats.hardlinked === 0 ? { [LABEL_LOCAL_HARDLINKS]: 'none' } : {}),
          [LABEL_LINKS_TRACKED]: 'true',
          ...(this.#localSum !== undefined ? { [LABEL_LOCAL_CHECKSUM]: this.#localSum } : {}),
        });
      } finally {
        await session.close();
      }
    });
  }

  #gitUrl(): { url: string; ref: string } {
    const hash = this.rest.indexOf('#');
    const ref = hash >= 0 ? this.rest.slice(hash + 1) : '';
    const url =
      this.#op.attrs[ATTR.gitFullUrl] ?? `https://${hash >= 0 ? this.rest.slice(0, hash) : this.rest}`;
    return { url, ref };
  }

  async #git(args: string[], cwd: string | undefined, signal: AbortSignal): Promise<string> {
    try {
      const { stdout } = await execFileAsync('git', args, {
        cwd,
        signal,
        maxBuffer: 64 << 20,
        env: { ...process.env, GIT_TERMINAL_PROMPT: '0' },
      });
      return stdout;
    } catch (err) {
      const e = err as { stderr?: string };
      throw wrap(err, `git ${args[0]} for "${this.#op.identifier}"${e.stderr ? `: ${e.stderr.trim()}` : ''}`);
    }
  }

  async #resolveGit(signal: AbortSignal): Promise<string> {
    const { url, ref } = this.#gitUrl();
    if (/^[0-9a-f]{40}$/.test(ref)) return ref;
    const out = await this.#git(['ls-remote', url, ref || 'HEAD'], undefined, signal);
    const lines = out
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split('\t'));
    const pick =
      lines.find((l) => l[1] === ref || l[1] === `refs/heads/${ref}`) ??
      lines.find((l) => l[1] === `refs/tags/${ref}^{}`) ??
      lines.find((l) => l[1] === `refs/tags/${ref}`) ??
      lines[0];
    if (!pick?.[0])
      throw errNotFound(`git source "${this.#op.identifier}": ref "${ref || 'HEAD'}" not found`);
    return pick[0];
  }

  async #checkoutGit(target: string, signal: AbortSignal): Promise<void> {
    const { url } = this.#gitUrl();
    const commit = this.#gitCommit ?? (await this.#resolveGit(signal));
    const work = path.join(this.#env.stateDir, 'git', randomBytes(8).toString('hex'));
    await fs.mkdir(work, { recursive: true });
    try {
      await this.#git(['init', '-q'], work, signal);
      await this.#git(['fetch', '-q', '--depth', '1', url, commit], work, signal);
      await this.#git(['-c', 'advice.detachedHead=false', 'checkout', '-q', commit], work, signal);
      const keep = this.#op.attrs[ATTR.gitKeepGitDir] === 'true';
      const subdir = this.#op.attrs[ATTR.gitSubdir] ?? '';
      const from = path.join(work, path.posix.normalize(`/${subdir}`));
      if (!(await lstatMaybe(from))?.isDirectory())
        throw errNotFound(`git source "${this.#op.identifier}": subdir "${subdir}" not found`);
      const links = new Map<string, string>();
      for (const name of (await fs.readdir(from)).sort()) {
        if (name === '.git' && (!keep || subdir)) continue;
        await copyEntry(path.join(from, name), path.join(target, name), { links, signal });
      }
    } finally {
      await fs.rm(work, { recursive: true, force: true });
    }
  }

  async #download(signal: AbortSignal): Promise<{ file: string; digest: string }> {
    const url = this.#op.identifier;
    const dir = path.join(this.#env.stateDir, 'http');
    await fs.mkdir(dir, { recursive: true });
    const file = path.join(dir, randomBytes(8).toString('hex'));
    let res: Response;
    try {
      res = await fetch(url, { signal });
    } catch (err) {
      throw errUnavailable(`download "${url}": ${(err as Error).message}`, err);
    }
    if (!res.ok || !res.body) throw errUnavailable(`download "${url}": HTTP ${res.status}`);
    const h = createHash('sha256');
    const fh = await fs.open(file, 'w');
    try {
      for await (const chunk of res.body) {
        h.update(chunk);
        await fh.write(chunk);
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    return { file, digest: `sha256:${h.digest('hex')}` };
  }

  async #placeHttp(target: string, signal: AbortSignal): Promise<void> {
    this.#httpFile ??= this.#download(signal);
    const { file, digest } = await this.#httpFile;
    this.#httpFile = undefined;
    try {
      const want = this.#op.attrs[ATTR.httpChecksum];
      if (want && want !== digest) {
        throw errDataLoss(`download "${this.#op.identifier}": digest is "${digest}", expected "${want}"`);
      }
      const urlName = new URL(this.#op.identifier).pathname.split('/').filter(Boolean).pop() || 'index';
      const name = this.#op.attrs[ATTR.httpFilename] || urlName;
      // Default 0600, as BuildKit's http source.
      const perm = this.#op.attrs[ATTR.httpPerm] ? Number.parseInt(this.#op.attrs[ATTR.httpPerm]!, 8) : 0o600;
      const dst = path.join(target, path.posix.basename(name));
      await fs.copyFile(file, dst);
      await fs.chmod(dst, perm);
    } finally {
      await fs.rm(file, { force: true });
    }
  }
}
