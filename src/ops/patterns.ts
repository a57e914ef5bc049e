/**
 * Path patterns for copy wildcards, rm wildcards and include/exclude lists.
 *
 * - `matchGlob(pattern, name)`: Go's `filepath.Match` on '/'-separated paths:
 *   `*` any run of non-'/' characters, `?` one non-'/' character,
 *   `[abc]`, `[a-z]`, `[^a-z]` classes, `\` escapes the next character. A
 *   malformed pattern (unclosed class) throws InvalidArgument.
 * - `hasGlob(p)`: does `p` contain a wildcard character.
 * - `PatternMatcher`: dockerignore semantics (patterns cleaned, leading '/'
 *   dropped, `**` matches any number of directories, a `!` pattern re-includes;
 *   the last matching pattern wins; a pattern that matches a parent directory
 *   matches everything below it).
 *
 * Limits: no Windows separators; `**` is only special as a whole path
 * component.
 */
import path from 'node:path';
import { errInvalidArgument } from '../core/errors.ts';

const GLOB_CHARS = /[*?[\\]/;

export function hasGlob(p: string): boolean {
  return GLOB_CHARS.test(p);
}

function escapeRe(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

/** Translates one component-level glob (no `**` handling) into a regexp source. */
function globSource(pattern: string, what: string): string {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '\\') {
      i++;
      if (i >= pattern.length) throw errInvalidArgument(`${what}: pattern "${pattern}" ends with "\\"`);
      re += escapeRe(pattern[i]!);
    } else if (c === '[') {
      let j = i + 1;
      let cls = '';
      if (pattern[j] === '^' || pattern[j] === '!') {
        cls += '^';
        j++;
      }
      let first = true;
      for (; j < pattern.length && (first || pattern[j] !== ']'); j++) {
        first = false;
        let ch = pattern[j]!;
        if (ch === '\\') {
          j++;
          ch = pattern[j] ?? '';
        } else if (ch === '-') {
          cls += '-';
          continue;
        }
        cls += escapeRe(ch);
      }
      if (j >= pattern.length) throw errInvalidArgument(`${what}: syntax error in pattern "${pattern}"`);
      re += cls.startsWith('^') ? `(?!/)[${cls}]` : `[${cls}]`;
      i = j;
    } else re += escapeRe(c);
  }
  return re;
}

const globCache = new Map<string, RegExp>();

/** Go filepath.Match for '/'-separated paths. */
export function matchGlob(pattern: string, name: string): boolean {
  let re = globCache.get(pattern);
  if (!re) {
    re = new RegExp(`^${globSource(pattern, 'match')}$`, 's');
    globCache.set(pattern, re);
  }
  return re.test(name);
}

interface Compiled {
  readonly re: RegExp;
  readonly exclusion: boolean;
  readonly pattern: string;
}

function compileDockerPattern(raw: string): Compiled | undefined {
  let p = raw.trim();
  let exclusion = false;
  if (p.startsWith('!')) {
    exclusion = true;
    p = p.slice(1).trim();
  }
  if (p === '') return undefined;
  p = path.posix.normalize(p).replace(/^\/+/, '').replace(/\/+$/, '');
  if (p === '.' || p === '') p = '**';
  const parts = p.split('/');
  let re = '';
  parts.forEach((part, i) => {
    const last = i === parts.length - 1;
    if (part === '**') {
      re += last ? '.*' : '(?:.*/)?';
    } else {
      re += globSource(part, 'compile pattern') + (last ? '' : '/');
    }
  });
  return { re: new RegExp(`^${re}(?:/.*)?$`, 's'), exclusion, pattern: raw };
}

/** dockerignore-style matcher (see the module comment). */
export class PatternMatcher {
  readonly #patterns: Compiled[];
  readonly hasExclusions: boolean;

  constructor(patterns: readonly string[]) {
    this.#patterns = patterns.map(compileDockerPattern).filter((p): p is Compiled => p !== undefined);
    this.hasExclusions = this.#patterns.some((p) => p.exclusion);
  }

  get empty(): boolean {
    return this.#patterns.length === 0;
  }

  /** Does the '/'-separated relative path match (last matching pattern wins)? */
  matches(rel: string): boolean {
    let matched = false;
    for (const p of this.#patterns) {
      if (p.exclusion === !matched) continue;
      if (p.re.test(rel)) matched = !p.exclusion;
    }
    return matched;
  }

  /**
   * Could a path strictly below directory `rel` match? Conservative: true
   * unless every pattern is a literal prefix path that does not start with `rel/`.
   */
  mayMatchBelow(rel: string): boolean {
    for (const p of this.#patterns) {
      if (p.exclusion) continue;
      const literal = p.pattern.replace(/^\/+/, '');
      if (hasGlob(literal)) return true;
      const clean = path.posix.normalize(literal).replace(/\/+$/, '');
      if (clean.startsWith(`${rel}/`) || rel === '' || clean === '.') return true;
    }
    return false;
  }
}
