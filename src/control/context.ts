/**
 * The build context of `kiln build PATH|URL|-`, as docker's CLI finds it:
 *
 * - a directory: used in place;
 * - `-`: standard input holds either a tar (plain or gzip/bzip2/xz/zstd,
 *   recognised by its magic bytes; extracted with the system `tar` into a
 *   temporary directory) or a lone Dockerfile (the context is then empty);
 * - a git URL (`https://…/x.git`, `git://…`, `git@host:…`, also
 *   `file:///…/x.git` for local repositories; optionally
 *   `#ref[:subdir]`): `git clone --depth 1 [--branch ref]` into a temporary
 *   directory, then the subdirectory.
 *
 * The Dockerfile: `-f FILE` (relative to the current directory, like
 * docker; for a git or stdin context relative to the context), `-f -` reads
 * it from standard input, default `<context>/Dockerfile`. Ignore patterns
 * come from `<Dockerfile>.dockerignore` next to the Dockerfile, else
 * `<context>/.dockerignore`.
 *
 * `cleanup()` removes the temporary directories; always call it.
 * Limits: a git ref must be a branch or tag (what `clone --branch` takes),
 * not a commit hash; stdin can be read once (not both `-` and `-f -`).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { errInvalidArgument, errNotFound, isErrno, KilnError } from '../core/errors.ts';
import { parseDockerignore } from '../frontend/dockerfile/index.ts';

const execFileAsync = promisify(execFile);

export interface BuildContext {
  /** Host directory of the context. */
  dir: string;
  /** Dockerfile name for messages and source maps (as the user wrote it, else `Dockerfile`). */
  dockerfileName: string;
  dockerfile: string;
  dockerignore: string[];
  /** What the context was made from: `dir`, `stdin-tar`, `stdin-dockerfile`, `git`. */
  kind: 'dir' | 'stdin-tar' | 'stdin-dockerfile' | 'git';
  cleanup(): Promise<void>;
}

export interface ContextOptions {
  /** `-f` value. */
  file?: string;
  stdin?: Readable;
  cwd?: string;
}

async function readStream(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(parts);
}

/** True when `b` starts like a tar archive or a compressed stream. */
export function looksLikeArchive(b: Uint8Array): boolean {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (buf.length >= 262 && buf.subarray(257, 262).toString('latin1') === 'ustar') return true;
  const magics = [
    [0x1f, 0x8b], // gzip
    [0x42, 0x5a, 0x68], // bzip2
    [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], // xz
    [0x28, 0xb5, 0x2f, 0xfd], // zstd
  ];
  return magics.some((m) => m.every((v, i) => buf[i] === v));
}

/** True for references docker's CLI treats as git contexts. */
export function isGitContext(s: string): boolean {
  if (/^git@[^:]+:/.test(s) || s.startsWith('git://') || s.startsWith('github.com/')) return true;
  return /^(https?|file):\/\//.test(s) && /\.git(#|$)/.test(s);
}

async function gitClone(url: string, dir: string): Promise<string> {
  const hash = url.indexOf('#');
  const repo = hash < 0 ? url : url.slice(0, hash);
  const frag = hash < 0 ? '' : url.slice(hash + 1);
  const [ref, subdir] = frag.split(':', 2) as [string, string | undefined];
  const args = ['clone', '--quiet', '--depth', '1', ...(ref ? ['--branch', ref] : []), '--', repo, dir];
  try {
    await execFileAsync('git', args, { env: { ...process.env, GIT_TERMINAL_PROMPT: '0' } });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new KilnError('Unavailable', `clone git context "${url}": ${stderr || (err as Error).message}`, {
      cause: err,
    });
  }
  if (!subdir) return dir;
  const sub = path.resolve(dir, subdir);
  if (!sub.startsWith(`${dir}/`))
    throw errInvalidArgument(`git context "${url}": subdirectory escapes the repository`);
  return sub;
}

async function readIgnore(candidates: string[]): Promise<string[]> {
  for (const f of candidates) {
    try {
      return parseDockerignore(await readFile(f, 'utf8'));
    } catch (err) {
      if (!isErrno(err, 'ENOENT') && !isErrno(err, 'ENOTDIR')) throw err;
    }
  }
  return [];
}

/** Prepares the context named by `spec` (see the module comment). */
export async function prepareContext(spec: string, opts: ContextOptions = {}): Promise<BuildContext> {
  const cwd = opts.cwd ?? process.cwd();
  const temps: string[] = [];
  const cleanup = async (): Promise<void> => {
    for (const t of temps) await rm(t, { recursive: true, force: true });
  };
  try {
    let dir: string;
    let kind: BuildContext['kind'];
    let inlineDockerfile: string | undefined;
    const temp = async (): Promise<string> => {
      const t = await mkdtemp(path.join(os.tmpdir(), 'kiln-build-context-'));
      temps.push(t);
      return t;
    };
    if (spec === '-') {
      if (opts.file === '-')
        throw errInvalidArgument(
          'build context "-": cannot read both the context and the Dockerfile (-f -) from stdin',
        );
      const data = await readStream(opts.stdin ?? process.stdin);
      dir = await temp();
      if (looksLikeArchive(data)) {
        kind = 'stdin-tar';
        const tarFile = path.join(await temp(), 'context.tar');
        await writeFile(tarFile, data);
        try {
          await execFileAsync('tar', ['-x', '-f', tarFile, '-C', dir, '--no-same-owner']);
        } catch (err) {
          throw errInvalidArgument(
            `extract build context from stdin: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`,
          );
        }
      } else {
        kind = 'stdin-dockerfile';
        inlineDockerfile = data.toString('utf8');
      }
    } else if (isGitContext(spec)) {
      kind = 'git';
      dir = await gitClone(spec, path.join(await temp(), 'repo'));
    } else {
      kind = 'dir';
      dir = path.resolve(cwd, spec);
      let st: Awaited<ReturnType<typeof stat>>;
      try {
        st = await stat(dir);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) throw errNotFound(`build context "${spec}": no such directory`);
        throw err;
      }
      if (!st.isDirectory()) throw errInvalidArgument(`build context "${spec}": not a directory`);
    }

    let dockerfileName = 'Dockerfile';
    let dockerfile: string;
    let dockerfilePath: string | undefined;
    if (inlineDockerfile !== undefined) {
      if (opts.file && opts.file !== '-')
        throw errInvalidArgument('build: -f cannot be used with a Dockerfile read from stdin');
      dockerfile = inlineDockerfile;
    } else if (opts.file === '-') {
      dockerfile = (await readStream(opts.stdin ?? process.stdin)).toString('utf8');
    } else {
      const f = opts.file ?? 'Dockerfile';
      dockerfileName = opts.file ? path.basename(f) : 'Dockerfile';
      dockerfilePath = opts.file && kind === 'dir' ? path.resolve(cwd, f) : path.resolve(dir, f);
      try {
        dockerfile = await readFile(dockerfilePath, 'utf8');
      } catch (err) {
        if (isErrno(err, 'ENOENT'))
          throw errNotFound(`read Dockerfile "${opts.file ?? path.join(spec, 'Dockerfile')}": no such file`);
        throw err;
      }
    }
    const dockerignore = await readIgnore([
      ...(dockerfilePath ? [`${dockerfilePath}.dockerignore`] : []),
      path.join(dir, '.dockerignore'),
    ]);
    return { dir, dockerfileName, dockerfile, dockerignore, kind, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
