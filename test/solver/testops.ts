/**
 * A tiny op set for the solver tests, doing real work on real files: results
 * are directories under `<root>/results/<id>` with counted handles (so tests
 * can check that every handle is released), and ops that copy trees, checksum
 * selected paths and run real `sh -c` processes in their own process group
 * (killed on abort, like an executor must).
 *
 * Vertex payloads (`sys`):
 * - `{ kind: 'local', dir, session }`: copies `dir`; its cache digest includes
 *   the session, as a build context's must (its content can change while its
 *   definition does not).
 * - `{ kind: 'copy', path }`: copies `path` of its input; content-based dep on
 *   exactly that path.
 * - `{ kind: 'run', script }`: copies its inputs (if any) into a new result and
 *   runs `sh -c script` there; stdout/stderr go to progress.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { sha256 } from '../../src/core/digest.ts';
import type { CacheMap, Edge, Op, OpContext, Result, Vertex, VertexOptions } from '../../src/solver/types.ts';

export type Sys =
  | { kind: 'local'; dir: string; session: string }
  | { kind: 'copy'; path: string }
  | { kind: 'run'; script: string };

/** Builds a vertex whose digest covers its payload and its inputs (as an LLB op's does). */
export function vertex(name: string, sys: Sys, inputs: Vertex[] = [], options: VertexOptions = {}): Vertex {
  const edges: Edge[] = inputs.map((v) => ({ vertex: v, index: 0 }));
  const digest = sha256(JSON.stringify([sys, edges.map((e) => [e.vertex.digest, e.index])]));
  return { digest, name, inputs: edges, options, sys };
}

export function edge(v: Vertex): Edge {
  return { vertex: v, index: 0 };
}

/** Results are directories; handles are counted per store. */
export class DirStore {
  readonly root: string;
  #live = 0;

  constructor(root: string) {
    this.root = root;
  }

  /** Handles not yet released. */
  get live(): number {
    return this.#live;
  }

  dir(id: string): string {
    return path.join(this.root, 'results', id);
  }

  async create(): Promise<{ id: string; dir: string }> {
    const id = `r-${randomBytes(6).toString('hex')}`;
    const dir = this.dir(id);
    await fs.mkdir(dir, { recursive: true });
    return { id, dir };
  }

  async exists(id: string): Promise<boolean> {
    return fs.stat(this.dir(id)).then(
      () => true,
      () => false,
    );
  }

  handle(id: string): Result {
    this.#live++;
    let released = false;
    return {
      id,
      sys: this.dir(id),
      clone: () => this.handle(id),
      release: async () => {
        if (released) throw new Error(`result "${id}" released twice`);
        released = true;
        this.#live--;
      },
    };
  }

  async load(id: string): Promise<Result> {
    if (!(await this.exists(id))) throw new Error(`result "${id}" does not exist`);
    return this.handle(id);
  }
}

/** Checksum of a file tree (paths, types, modes, contents, link targets); "missing" if absent. */
export async function checksumTree(root: string): Promise<string> {
  const h = createHash('sha256');
  async function walk(rel: string): Promise<void> {
    const abs = path.join(root, rel);
    const st = await fs.lstat(abs);
    h.update(`${rel}\0${st.mode}\0`);
    if (st.isDirectory()) {
      for (const name of (await fs.readdir(abs)).sort()) await walk(path.join(rel, name));
    } else if (st.isSymbolicLink()) {
      h.update(await fs.readlink(abs));
    } else if (st.isFile()) {
      h.update(await fs.readFile(abs));
    }
    h.update('\0');
  }
  try {
    await walk('.');
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return 'missing';
    throw err;
  }
  return `sha256:${h.digest('hex')}`;
}

/** The op set, with counters the tests read. */
export class TestOps {
  readonly store: DirStore;
  /** Execs per vertex name. */
  readonly execs = new Map<string, number>();
  /** cacheMap calls per vertex name. */
  readonly cacheMaps = new Map<string, number>();
  /** Pids of the processes run ops started. */
  readonly pids: number[] = [];

  constructor(store: DirStore) {
    this.store = store;
  }

  execCount(name?: string): number {
    if (name !== undefined) return this.execs.get(name) ?? 0;
    let n = 0;
    for (const c of this.execs.values()) n += c;
    return n;
  }

  resolve = (v: Vertex): Op => {
    const sys = v.sys as Sys;
    const bump = (m: Map<string, number>): void => {
      m.set(v.name, (m.get(v.name) ?? 0) + 1);
    };
    return {
      cacheMap: async (): Promise<CacheMap> => {
        bump(this.cacheMaps);
        switch (sys.kind) {
          case 'local':
            return { digest: sha256(`local\0${sys.dir}\0${sys.session}`), deps: [] };
          case 'copy':
            return {
              digest: sha256(`copy\0${sys.path}`),
              deps: [
                {
                  selector: sys.path,
                  computeDigestFunc: (r, sel) => checksumTree(path.join(r.sys as string, sel ?? '.')),
                },
              ],
            };
          case 'run':
            return { digest: sha256(`run\0${sys.script}`), deps: [] };
        }
      },
      exec: async (ctx: OpContext, inputs: readonly Result[]): Promise<Result[]> => {
        bump(this.execs);
        const out = await this.store.create();
        switch (sys.kind) {
          case 'local':
            await fs.cp(sys.dir, out.dir, { recursive: true, verbatimSymlinks: true });
            break;
          case 'copy':
            await fs.cp(path.join(inputs[0].sys as string, sys.path), path.join(out.dir, sys.path), {
              recursive: true,
              verbatimSymlinks: true,
            });
            break;
          case 'run':
            for (const r of inputs)
              await fs.cp(r.sys as string, out.dir, { recursive: true, verbatimSymlinks: true });
            await this.#sh(ctx, sys.script, out.dir);
            break;
        }
        return [this.store.handle(out.id)];
      },
    };
  };

  async #sh(ctx: OpContext, script: string, cwd: string): Promise<void> {
    ctx.signal.throwIfAborted();
    const child = spawn('sh', ['-c', script], { cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const pid = child.pid!;
    this.pids.push(pid);
    const killGroup = (): void => {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    ctx.signal.addEventListener('abort', killGroup, { once: true });
    child.stdout.on('data', (d: Buffer) => ctx.progress.log(1, d));
    child.stderr.on('data', (d: Buffer) => ctx.progress.log(2, d));
    try {
      const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
      ctx.signal.throwIfAborted();
      if (code !== 0) throw new Error(`process "sh -c ${script}" exited with ${code ?? signal}`);
    } finally {
      ctx.signal.removeEventListener('abort', killGroup);
      killGroup(); // leave no background child of the script behind
    }
  }
}

/** Pids of live processes whose process group is `pgid` (from /proc). */
export async function processesInGroup(pgid: number): Promise<number[]> {
  const out: number[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await fs.readFile(`/proc/${name}/stat`, 'utf8');
      // Fields after the command (which is in parentheses and may contain spaces).
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const state = rest[0];
      if (Number(rest[2]) === pgid && state !== 'Z') out.push(Number(name));
    } catch {
      // exited while we looked
    }
  }
  return out;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
