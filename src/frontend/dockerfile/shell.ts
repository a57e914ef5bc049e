/**
 * Shell-word lexer for Dockerfile arguments: quote removal, escapes and
 * variable expansion in the subset of POSIX shell syntax that the Dockerfile
 * frontend supports (written from the Dockerfile reference and the shared
 * conformance data, not from BuildKit's source).
 *
 * Contract:
 * - `processWord` treats the input as one word: quotes are removed, escapes
 *   resolved, variables expanded; whitespace is kept.
 * - `processWords` also splits into fields: unquoted whitespace (literal or
 *   coming from an unquoted expansion) separates words; quoted text stays in
 *   one word; empty words are dropped.
 * - Expansions: `$name`, `${name}`, `${name:-w}`, `${name-w}`, `${name:+w}`,
 *   `${name+w}`, `${name:?w}`, `${name?w}` (errors), and the glob pattern
 *   forms `${name#p}`, `${name##p}`, `${name%p}`, `${name%%p}`,
 *   `${name/p/r}`, `${name//p/r}` (`*`, `?`, `[...]`; quoted or escaped
 *   characters are literal). Positional (`$1`, `${10}`) and special
 *   parameters (`$@ $* $# $? $- $$ $! $0`) are never set.
 * - Errors (KilnError InvalidArgument): unterminated quotes, `${}`, bad names,
 *   unsupported modifiers such as `${a:=b}` or `${a:1}`, missing `}`, and
 *   `?` expansions of unset (or empty, with `:`) variables.
 *
 * Limits: no command substitution, arithmetic, `${#name}` length, `~`
 * expansion, or anchored `${a/#p/r}` replacement; `$(` is literal text.
 * Variable names are case-sensitive (Linux semantics).
 */
import { KilnError } from '../../core/errors.ts';

export type ShellEnv = ReadonlyMap<string, string> | Readonly<Record<string, string>>;

export interface ShellLexOptions {
  /** Keep quote characters in the output (used to detect quoted heredoc names). */
  rawQuotes?: boolean;
  /** Keep escape characters in the output. */
  rawEscapes?: boolean;
  /** Leave `$name` / `${name}` text in place when the variable is unset. */
  skipUnsetEnv?: boolean;
}

export interface ProcessResult {
  /** The expanded word (single-word mode) or the words joined with a space. */
  result: string;
  /** The words (multi-word mode); in single-word mode, `[result]`. */
  words: string[];
  /** Variable names that were looked up and set. */
  matched: Set<string>;
  /** Variable names that were looked up and unset. */
  unmatched: Set<string>;
}

export class ShellLex {
  readonly escapeChar: '\\' | '`';
  readonly options: Readonly<ShellLexOptions>;

  constructor(escapeChar: '\\' | '`' = '\\', options: ShellLexOptions = {}) {
    if (escapeChar !== '\\' && escapeChar !== '`') {
      throw new KilnError(
        'InvalidArgument',
        `invalid escape character "${String(escapeChar)}": want \\ or \``,
      );
    }
    this.escapeChar = escapeChar;
    this.options = { ...options };
  }

  /** Expands `word` as one word (no field splitting). */
  processWord(word: string, env: ShellEnv): string {
    return this.processWordWithMatches(word, env).result;
  }

  /** Expands `word` and splits it into fields. */
  processWords(word: string, env: ShellEnv): string[] {
    return this.processWordsWithMatches(word, env).words;
  }

  processWordWithMatches(word: string, env: ShellEnv): ProcessResult {
    const run = new Run(word, this.escapeChar, this.options, env);
    const out = new Out('word');
    run.processUntil('', out);
    const result = out.text();
    return { result, words: [result], matched: run.matched, unmatched: run.unmatched };
  }

  processWordsWithMatches(word: string, env: ShellEnv): ProcessResult {
    const run = new Run(word, this.escapeChar, this.options, env);
    const out = new Out('words');
    run.processUntil('', out);
    const words = out.fields();
    return { result: words.join(' '), words, matched: run.matched, unmatched: run.unmatched };
  }
}

/** Go's unicode.IsSpace. */
export function isShellSpace(ch: string): boolean {
  const c = ch.charCodeAt(0);
  if (c <= 0xff) return c === 0x20 || (c >= 0x09 && c <= 0x0d) || c === 0x85 || c === 0xa0;
  return (
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000
  );
}

const GLOB_META = new Set(['*', '?', '[', ']', '\\']);

/**
 * Output accumulator. Three modes:
 * - 'word': everything is appended as is;
 * - 'words': unquoted whitespace ends the current field;
 * - 'pattern': builds a glob pattern where quoted/escaped text is made literal
 *   by a `\` before glob metacharacters.
 */
class Out {
  private readonly mode: 'word' | 'words' | 'pattern';
  private cur = '';
  private readonly done: string[] = [];

  constructor(mode: 'word' | 'words' | 'pattern') {
    this.mode = mode;
  }

  /** An unquoted literal character from the input. */
  addChar(ch: string): void {
    if (this.mode === 'words' && isShellSpace(ch)) this.endField();
    else if (this.mode === 'pattern' && ch === '\\') this.cur += '\\\\';
    else this.cur += ch;
  }

  /** Quoted or escaped text: never split, literal in patterns. */
  addQuoted(s: string): void {
    if (this.mode === 'pattern') {
      for (const ch of s) this.cur += GLOB_META.has(ch) ? '\\' + ch : ch;
    } else {
      this.cur += s;
    }
  }

  /** Raw syntax kept in the output (rawQuotes / rawEscapes): never special. */
  addSyntax(s: string): void {
    this.addQuoted(s);
  }

  /** Result of an unquoted expansion: split into fields in 'words' mode. */
  addExpansion(s: string): void {
    if (this.mode === 'words') for (const ch of s) this.addChar(ch);
    else this.cur += s;
  }

  private endField(): void {
    if (this.cur.length > 0) this.done.push(this.cur);
    this.cur = '';
  }

  text(): string {
    return this.cur;
  }

  fields(): string[] {
    this.endField();
    return this.done;
  }
}

function isNameStart(ch: string): boolean {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch === '_';
}
function isNameChar(ch: string): boolean {
  return isNameStart(ch) || isDigit(ch);
}
function isDigit(ch: string): boolean {
  return ch >= '0' && ch <= '9';
}
const SPECIAL_PARAMS = '@*#?-$!';

/** One processing run over one input string (private). */
class Run {
  private readonly src: string;
  private pos = 0;
  private readonly esc: string;
  private readonly opts: Readonly<ShellLexOptions>;
  private readonly env: ShellEnv;
  readonly matched = new Set<string>();
  readonly unmatched = new Set<string>();

  constructor(src: string, esc: string, opts: Readonly<ShellLexOptions>, env: ShellEnv) {
    this.src = src;
    this.esc = esc;
    this.opts = opts;
    this.env = env;
  }

  private fail(why: string): never {
    throw new KilnError('InvalidArgument', `failed to process "${this.src}": ${why}`);
  }

  private lookup(name: string): string | undefined {
    const env = this.env;
    let v: string | undefined;
    if (env instanceof Map) v = (env as ReadonlyMap<string, string>).get(name);
    else if (Object.hasOwn(env, name)) v = (env as Readonly<Record<string, string>>)[name];
    if (v === undefined) this.unmatched.add(name);
    else this.matched.add(name);
    return v;
  }

  /**
   * Processes input until one of the `stops` characters appears unquoted
   * (consumed; returned) or, when `stops` is empty, until the end of input
   * (returns ''). Reaching the end while looking for a stop is an error.
   */
  processUntil(stops: string, out: Out): string {
    const src = this.src;
    while (this.pos < src.length) {
      const ch = src[this.pos]!;
      if (stops.includes(ch)) {
        this.pos++;
        return ch;
      }
      if (ch === "'") {
        this.singleQuoted(out);
      } else if (ch === '"') {
        this.doubleQuoted(out);
      } else if (ch === '$') {
        out.addExpansion(this.dollar());
      } else if (ch === this.esc) {
        this.pos++;
        if (this.opts.rawEscapes) out.addSyntax(ch);
        if (this.pos >= src.length) break; // a trailing escape is dropped
        out.addQuoted(this.takeChar());
      } else {
        out.addChar(this.takeChar());
      }
    }
    if (stops !== '') this.fail(`missing '${stops.at(-1)}'`);
    return '';
  }

  /** Takes one code point (keeps surrogate pairs together). */
  private takeChar(): string {
    const cp = this.src.codePointAt(this.pos)!;
    const s = String.fromCodePoint(cp);
    this.pos += s.length;
    return s;
  }

  private singleQuoted(out: Out): void {
    this.pos++; // opening '
    if (this.opts.rawQuotes) out.addSyntax("'");
    const end = this.src.indexOf("'", this.pos);
    if (end < 0) this.fail('unexpected end of statement while looking for matching single-quote');
    out.addQuoted(this.src.slice(this.pos, end));
    this.pos = end + 1;
    if (this.opts.rawQuotes) out.addSyntax("'");
  }

  private doubleQuoted(out: Out): void {
    const src = this.src;
    this.pos++; // opening "
    if (this.opts.rawQuotes) out.addSyntax('"');
    for (;;) {
      if (this.pos >= src.length)
        this.fail('unexpected end of statement while looking for matching double-quote');
      const ch = src[this.pos]!;
      if (ch === '"') {
        this.pos++;
        if (this.opts.rawQuotes) out.addSyntax('"');
        return;
      }
      if (ch === '$') {
        out.addQuoted(this.dollar());
        continue;
      }
      if (ch === this.esc) {
        const next = src[this.pos + 1];
        if (next === undefined) {
          this.pos++; // dropped; the loop then reports the missing quote
          continue;
        }
        if (next === '"' || next === '$' || next === this.esc) {
          if (this.opts.rawEscapes) out.addSyntax(ch);
          out.addQuoted(next);
          this.pos += 2;
          continue;
        }
        // Any other escape inside double quotes is kept as written.
      }
      out.addQuoted(this.takeChar());
    }
  }

  /** Parses one `$...` at `pos` and returns its expansion. */
  private dollar(): string {
    const src = this.src;
    const start = this.pos;
    this.pos++; // $
    const ch = src[this.pos];
    if (ch === undefined) return '$';
    if (ch === '{') return this.braced(start);
    if (isNameStart(ch)) {
      const name = this.readWhile(isNameChar);
      const v = this.lookup(name);
      if (v === undefined) return this.opts.skipUnsetEnv ? src.slice(start, this.pos) : '';
      return v;
    }
    if (isDigit(ch)) {
      this.readWhile(isDigit);
      return this.opts.skipUnsetEnv ? src.slice(start, this.pos) : '';
    }
    if (SPECIAL_PARAMS.includes(ch)) {
      this.pos++;
      return this.opts.skipUnsetEnv ? src.slice(start, this.pos) : '';
    }
    return '$'; // not an expansion: a literal dollar
  }

  private readWhile(pred: (ch: string) => boolean): string {
    const start = this.pos;
    while (this.pos < this.src.length && pred(this.src[this.pos]!)) this.pos++;
    return this.src.slice(start, this.pos);
  }

  /** Reads a nested word up to `stops`, returning its expanded text. */
  private nestedWord(stops: string): { text: string; stop: string } {
    const out = new Out('word');
    const stop = this.processUntil(stops, out);
    return { text: out.text(), stop };
  }

  private nestedPattern(stops: string): { pattern: string; stop: string } {
    const out = new Out('pattern');
    const stop = this.processUntil(stops, out);
    return { pattern: out.text(), stop };
  }

  private braced(start: number): string {
    const src = this.src;
    this.pos++; // {
    const first = src[this.pos];
    if (first === undefined) this.fail("missing '}'");
    if (first === '}') this.fail('bad substitution: empty variable name');
    let name: string;
    let positional = false;
    if (isNameStart(first)) {
      name = this.readWhile(isNameChar);
    } else if (isDigit(first)) {
      name = this.readWhile(isDigit);
      positional = true;
    } else if (SPECIAL_PARAMS.includes(first)) {
      name = first;
      this.pos++;
      positional = true;
    } else {
      this.fail(`bad substitution: invalid variable name starting with "${first}"`);
    }
    const value = positional ? undefined : this.lookup(name);
    const op = src[this.pos];
    if (op === undefined) this.fail("missing '}'");
    this.pos++;
    switch (op) {
      case '}':
        if (value === undefined) return this.opts.skipUnsetEnv ? src.slice(start, this.pos) : '';
        return value;
      case ':': {
        const mod = src[this.pos];
        if (mod !== '-' && mod !== '+' && mod !== '?') {
          this.fail(`unsupported modifier ":${mod ?? ''}" in \${${name}}`);
        }
        this.pos++;
        return this.defaulting(name, value, mod, true);
      }
      case '-':
      case '+':
      case '?':
        return this.defaulting(name, value, op, false);
      case '#':
      case '%': {
        const longest = src[this.pos] === op;
        if (longest) this.pos++;
        const { pattern } = this.nestedPattern('}');
        const re = globToRegExp(pattern);
        const v = value ?? '';
        return op === '#' ? trimPrefix(v, re, longest) : trimSuffix(v, re, longest);
      }
      case '/': {
        const all = src[this.pos] === '/';
        if (all) this.pos++;
        const { pattern, stop } = this.nestedPattern('/}');
        const repl = stop === '/' ? this.nestedWord('}').text : '';
        return replaceGlob(value ?? '', globToRegExp(pattern), repl, all);
      }
      default:
        this.fail(`bad substitution: unexpected "${op}" after \${${name}`);
    }
  }

  private defaulting(name: string, value: string | undefined, mod: '-' | '+' | '?', colon: boolean): string {
    const { text } = this.nestedWord('}');
    const missing = value === undefined || (colon && value === '');
    switch (mod) {
      case '-':
        return missing ? text : value!;
      case '+':
        return missing ? '' : text;
      case '?':
        if (missing) {
          const why =
            text !== '' ? text : colon ? 'is not allowed to be unset or empty' : 'is not allowed to be unset';
          throw new KilnError('InvalidArgument', `failed to process "${this.src}": ${name}: ${why}`);
        }
        return value!;
    }
  }
}

/**
 * Converts a glob pattern (as built by Out in 'pattern' mode: `\x` is a
 * literal x) into an anchored-free RegExp source wrapped for whole matches.
 */
export function globToRegExp(pattern: string): RegExp {
  let re = '';
  const chars = Array.from(pattern);
  for (let i = 0; i < chars.length; i++) {
    const ch = chars[i]!;
    if (ch === '\\') {
      const next = chars[++i];
      if (next !== undefined) re += escapeRe(next);
      else re += '\\\\';
    } else if (ch === '*') {
      re += '[\\s\\S]*';
    } else if (ch === '?') {
      re += '[\\s\\S]';
    } else if (ch === '[') {
      const cls = readClass(chars, i);
      if (cls) {
        re += cls.re;
        i = cls.end;
      } else {
        re += '\\[';
      }
    } else {
      re += escapeRe(ch);
    }
  }
  return new RegExp(`^(?:${re})$`, 'u');
}

function escapeRe(ch: string): string {
  return /[\\^$.*+?()[\]{}|/-]/.test(ch) ? '\\' + ch : ch;
}

/** Bracket expression starting at chars[i] === '['; undefined if unterminated. */
function readClass(chars: string[], i: number): { re: string; end: number } | undefined {
  let j = i + 1;
  let negate = false;
  if (chars[j] === '!' || chars[j] === '^') {
    negate = true;
    j++;
  }
  let body = '';
  let firstInClass = true;
  for (; j < chars.length; j++) {
    const c = chars[j]!;
    if (c === ']' && !firstInClass) {
      return { re: `[${negate ? '^' : ''}${body}]`, end: j };
    }
    firstInClass = false;
    if (c === '\\' && j + 1 < chars.length) {
      body += escapeRe(chars[++j]!);
    } else if (c === '-' && body !== '' && chars[j + 1] !== ']') {
      body += '-';
    } else {
      body += /[\\\]^[-]/.test(c) ? '\\' + c : c;
    }
  }
  return undefined;
}

/** Code-point boundaries of s (so a match never splits a surrogate pair). */
function boundaries(s: string): number[] {
  const out = [0];
  let i = 0;
  for (const ch of s) {
    i += ch.length;
    out.push(i);
  }
  return out;
}

function trimPrefix(v: string, re: RegExp, longest: boolean): string {
  const b = boundaries(v);
  if (longest) {
    for (let k = b.length - 1; k >= 0; k--) if (re.test(v.slice(0, b[k]))) return v.slice(b[k]);
  } else {
    for (const k of b) if (re.test(v.slice(0, k))) return v.slice(k);
  }
  return v;
}

function trimSuffix(v: string, re: RegExp, longest: boolean): string {
  const b = boundaries(v);
  if (longest) {
    for (const k of b) if (re.test(v.slice(k))) return v.slice(0, k);
  } else {
    for (let k = b.length - 1; k >= 0; k--) if (re.test(v.slice(b[k]))) return v.slice(0, b[k]);
  }
  return v;
}

/** Replaces the first (or every) leftmost-longest non-empty match. */
function replaceGlob(v: string, re: RegExp, repl: string, all: boolean): string {
  const b = boundaries(v);
  let out = '';
  let from = 0; // index into b
  let copied = 0; // string offset already copied to out
  while (from < b.length - 1) {
    let matchEnd = -1;
    for (let k = b.length - 1; k > from; k--) {
      if (re.test(v.slice(b[from], b[k]))) {
        matchEnd = k;
        break;
      }
    }
    if (matchEnd < 0) {
      from++;
      continue;
    }
    out += v.slice(copied, b[from]) + repl;
    copied = b[matchEnd]!;
    from = matchEnd;
    if (!all) break;
  }
  return out + v.slice(copied);
}
