/**
 * Reads V8 CPU profiles (`node --cpu-prof` writes *.cpuprofile JSON: a node
 * tree with call frames and hit counts, plus samples and time deltas) and
 * sums self time per function across all profiles in a directory.
 *
 * Self time of a node = the sum of the time deltas of the samples that landed
 * on it. Functions are keyed by name, file (repo-relative when inside the
 * repo) and line; `(idle)`, `(program)` and `(garbage collector)` are kept as
 * they are (idle = waiting on I/O or children).
 */
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface SelfTime {
  fn: string;
  ms: number;
  /** Share of all sampled time (idle included), 0..1. */
  share: number;
}

export interface ProfileSummary {
  files: number;
  totalMs: number;
  top: SelfTime[];
  /** Self time summed per source file (node: internals and pseudo-nodes by name). */
  byFile: SelfTime[];
}

/** Sums self time per function over every *.cpuprofile in `dir`; the `limit` largest first. */
export async function summarizeProfiles(dir: string, repo: string, limit = 20): Promise<ProfileSummary> {
  const byFn = new Map<string, number>();
  const byFile = new Map<string, number>();
  let total = 0;
  let files = 0;
  for (const name of await readdir(dir)) {
    if (!name.endsWith('.cpuprofile')) continue;
    files++;
    const p = JSON.parse(await readFile(join(dir, name), 'utf8')) as Profile;
    const key = new Map<number, string>();
    const fileOf = new Map<number, string>();
    for (const n of p.nodes) {
      const { functionName, url, lineNumber } = n.callFrame;
      let file = url.replace(/^file:\/\//, '');
      if (file.startsWith(repo)) file = relative(repo, file);
      fileOf.set(n.id, file || functionName);
      key.set(n.id, file ? `${functionName || '(anonymous)'} ${file}:${lineNumber + 1}` : functionName);
    }
    for (let i = 0; i < p.samples.length; i++) {
      const ms = (p.timeDeltas[i] ?? 0) / 1000;
      const k = key.get(p.samples[i]!) ?? '?';
      byFn.set(k, (byFn.get(k) ?? 0) + ms);
      const f = fileOf.get(p.samples[i]!) ?? '?';
      byFile.set(f, (byFile.get(f) ?? 0) + ms);
      total += ms;
    }
  }
  const rank = (m: Map<string, number>): SelfTime[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([fn, ms]) => ({
        fn,
        ms: Math.round(ms),
        share: total > 0 ? Math.round((ms / total) * 1000) / 1000 : 0,
      }));
  return { files, totalMs: Math.round(total), top: rank(byFn), byFile: rank(byFile) };
}
