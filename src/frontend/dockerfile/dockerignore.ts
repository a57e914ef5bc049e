/**
 * `.dockerignore` files and the path matcher the build context transfer
 * uses, with the semantics docker's builder shows (checked against docker
 * 20.10 in test/frontend/dockerignore.test.ts):
 *
 * - One pattern a line; `#` starts a comment line; blank lines are skipped;
 *   surrounding white space is trimmed. `!` makes an exception (re-include).
 * - Each pattern is cleaned like Go's filepath.Clean (`a//b/./c/` → `a/b/c`,
 *   `..` resolved lexically) and a leading `/` is dropped: patterns are
 *   relative to the context root.
 * - Path components match with Go's filepath.Match (`*` and `?` never
 *   match `/`, `[a-z]`, `[^a-z]`, `\` escapes); a component that is exactly
 *   `**` matches any number of components (zero or more in the middle or at
 *   the start, one or more at the end).
 * - A pattern matches a path when it matches the path or one of its parent
 *   directories; the last pattern that matches decides (an exception
 *   re-includes).
 *
 * Limits: `**` inside a component (`a**b`) behaves like `*`. Malformed
 * patterns (an unterminated `[`) are InvalidArgument errors.
 */
import { posix } from 'node:path';
import { errInvalidArgument } from '../../core/errors.ts';

/** Names of the ignore files for a Dockerfile, most specific first. */
export function dockerignoreNames(dockerfileName = 'Dockerfile'): string[] {
  const base = posix.basename(dockerfileName);
  return [`${base}.dockerignore`, '.dockerignore'];
}

/** Parses a .dockerignore text into cleaned patterns (`!` kept as a prefix). */
export function parseDockerignore(text: string): string[] {
  const out: string[] = [];
  for (const raw of text.split(/\r?\n/)) {
    if (raw.startsWith('#')) continue;
    let p = raw.trim();
    if (p === '') continue;
    let exception = false;
    if (p.startsWith('!')) {
      exception = true;
      p = p.slice(1).trim();
      if (p === '') continue;
    }
    p = cleanPattern(p);
    out.push(exception ? `!${p}` : p);
  }
  return out;
}

/** Go filepath.Clean plus dropping a leading `/`. */
export function cleanPattern(p: string): string {
  let c = posix.normalize(p);
  if (c.length > 1 && c.endsWith('/')) c = c.slice(0, -1);
  if (c.length > 1 && c.startsWith('/')) c = c.slice(1);
  if (c === '' || c === './') c = '.';
  return c;
}

interface Compiled {
  exception: boolean;
  /** Components; '**' stands for any number of components. */
  parts: string[];
  text: string;
}

/** Matches context-relative paths (`a/b/c`, no leading `/`) against ignore patterns. */
export class IgnoreMatcher {
  readonly #patterns: Compiled[];

  constructor(patterns: readonly string[]) {
    this.#patterns = patterns.map((p) => {
      const exception = p.startsWith('!');
      const text = cleanPattern(exception ? p.slice(1) : p);
      const parts = text.split('/');
      for (const part of parts) if (part !== '**') checkComponent(part, p);
      return { exception, parts, text };
    });
  }

  /** True when there are no patterns. */
  get empty(): boolean {
    return this.#patterns.length === 0;
  }

  /** True when some pattern is an exception (`!`). */
  get hasExceptions(): boolean {
    return this.#patterns.some((p) => p.exception);
  }

  /** True when `path` (relative to the context root) is excluded. */
  matches(path: string): boolean {
    const parts = splitPath(path);
    if (parts.length === 0) return false;
    let excluded = false;
    for (const p of this.#patterns) {
      if (matchesSelfOrParent(p.parts, parts)) excluded = !p.exception;
    }
    return excluded;
  }

  /**
   * False when nothing below the excluded directory `dir` can be
   * re-included by an exception, so a walker may skip it entirely.
   */
  mayIncludeUnder(dir: string): boolean {
    const parts = splitPath(dir);
    return this.#patterns.some((p) => p.exception && couldMatchBelow(p.parts, parts));
  }
}

function splitPath(path: string): string[] {
  return path.split('/').filter((c) => c !== '' && c !== '.');
}

function matchesSelfOrParent(pat: readonly string[], parts: readonly string[]): boolean {
  for (let n = parts.length; n >= 1; n--) if (matchParts(pat, 0, parts.slice(0, n), 0)) return true;
  return false;
}

function matchParts(pat: readonly string[], i: number, parts: readonly string[], j: number): boolean {
  if (i === pat.length) return j === parts.length;
  const p = pat[i]!;
  if (p === '**') {
    const last = i === pat.length - 1;
    if (last) return parts.length - j >= 1 || (i === 0 && parts.length > 0);
    for (let k = j; k <= parts.length; k++) if (matchParts(pat, i + 1, parts, k)) return true;
    return false;
  }
  if (j >= parts.length) return false;
  return matchComponent(p.replace(/\*\*+/g, '*'), parts[j]!) && matchParts(pat, i + 1, parts, j + 1);
}

/** Whether some path strictly below `dir` could match `pat`. */
function couldMatchBelow(pat: readonly string[], dir: readonly string[]): boolean {
  for (let i = 0, j = 0; ; i++, j++) {
    if (j === dir.length) return i < pat.length || pat.at(-1) === '**';
    if (i === pat.length) return false;
    if (pat[i] === '**') return true;
    if (!matchComponent(pat[i]!.replace(/\*\*+/g, '*'), dir[j]!)) return false;
  }
}

function checkComponent(part: string, pattern: string): void {
  for (let i = 0; i < part.length; i++) {
    const ch = part[i]!;
    if (ch === '\\') {
      if (i + 1 >= part.length)
        throw errInvalidArgument(`invalid .dockerignore pattern "${pattern}": trailing \\`);
      i++;
    } else if (ch === '[') {
      const end = classEnd(part, i);
      if (end < 0) throw errInvalidArgument(`invalid .dockerignore pattern "${pattern}": unterminated [`);
      i = end;
    }
  }
}

/** Index of the `]` closing the class that starts at `i`, or -1. */
function classEnd(s: string, i: number): number {
  let j = i + 1;
  if (s[j] === '^') j++;
  let first = true;
  for (; j < s.length; j++) {
    const ch = s[j]!;
    if (ch === '\\') {
      j++;
      first = false;
      continue;
    }
    if (ch === ']' && !first) return j;
    first = false;
  }
  return -1;
}

/** Go filepath.Match of one component (no `/` in either). */
export function matchComponent(pattern: string, name: string): boolean {
  const pc = Array.from(pattern);
  const nc = Array.from(name);
  const go = (pi: number, ni: number): boolean => {
    while (pi < pc.length) {
      const ch = pc[pi]!;
      if (ch === '*') {
        while (pc[pi] === '*') pi++;
        if (pi === pc.length) return true;
        for (let k = ni; k <= nc.length; k++) if (go(pi, k)) return true;
        return false;
      }
      if (ni >= nc.length) return false;
      if (ch === '?') {
        pi++;
        ni++;
        continue;
      }
      if (ch === '[') {
        const cls = readClass(pc, pi);
        if (!cls) return false;
        if (!cls.test(nc[ni]!)) return false;
        pi = cls.end + 1;
        ni++;
        continue;
      }
      let lit = ch;
      if (ch === '\\') lit = pc[++pi] ?? '\\';
      if (nc[ni] !== lit) return false;
      pi++;
      ni++;
    }
    return ni === nc.length;
  };
  return go(0, 0);
}

function readClass(pc: string[], start: number): { test: (c: string) => boolean; end: number } | undefined {
  let j = start + 1;
  let negate = false;
  if (pc[j] === '^') {
    negate = true;
    j++;
  }
  const ranges: [number, number][] = [];
  let first = true;
  for (; j < pc.length; j++) {
    let ch = pc[j]!;
    if (ch === ']' && !first) {
      return {
        end: j,
        test: (c) => {
          const cp = c.codePointAt(0)!;
          const inside = ranges.some(([lo, hi]) => cp >= lo && cp <= hi);
          return inside !== negate;
        },
      };
    }
    first = false;
    if (ch === '\\') ch = pc[++j] ?? '\\';
    let hi = ch;
    if (pc[j + 1] === '-' && pc[j + 2] !== undefined && pc[j + 2] !== ']') {
      hi = pc[j + 2]!;
      j += 2;
      if (hi === '\\') hi = pc[++j] ?? '\\';
    }
    ranges.push([ch.codePointAt(0)!, hi.codePointAt(0)!]);
  }
  return undefined;
}
