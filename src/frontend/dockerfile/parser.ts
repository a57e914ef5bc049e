/**
 * Dockerfile parser: bytes → parser directives + a flat list of instruction
 * nodes (keyword, flags, argument strings, heredocs, line span). Written from
 * the Dockerfile reference and the shared conformance data
 * (../shared/conformance/README.md, sections 1–3), not from BuildKit's
 * source.
 *
 * Contract:
 * - Nothing is expanded and shell-form text keeps its quotes: this is the
 *   parse step only (see dump.ts for the canonical AST dump).
 * - Physical lines split at LF (a CR before it is dropped), a leading UTF-8
 *   BOM is ignored, line continuation uses the escape character, comments
 *   (`#` as first non-blank) are dropped, empty continuation lines are
 *   skipped with a warning.
 * - Parser directives (`syntax`, `escape`, `check`) are read only from the
 *   leading run of `# name=value` lines.
 * - Heredocs (`<<EOF`, `<<-EOF`, quoted names, several per line) are read
 *   for RUN, COPY and ADD in shell form; bodies never reach `args`. For
 *   `<<-` the leading tabs of body lines are already stripped in `content`.
 * - Errors are DockerfileSyntaxError (KilnError InvalidArgument) with file
 *   and line; the message reads `FILE:LINE: what failed`.
 *
 * Limits: bytes that are not valid UTF-8 are kept as lone surrogates
 * U+DC80–U+DCFF (so dump.ts can print them as `\xNN`); instruction-specific
 * validation (argument counts, flag values) is left to the instruction layer.
 */
import { KilnError } from '../../core/errors.ts';
import { isShellSpace, ShellLex } from './shell.ts';

export type EscapeChar = '\\' | '`';

export interface Heredoc {
  /** Terminator word with quotes removed. */
  name: string;
  /** Body lines, each followed by `\n` (tabs stripped when `chomp`). */
  content: string;
  /** False when the name was quoted: the body must not be expanded. */
  expand: boolean;
  /** True for `<<-`. */
  chomp: boolean;
  /** File descriptor written before `<<` (`3<<EOF`), 0 when absent. */
  fileDescriptor: number;
}

export interface Node {
  /** Instruction word in lower case (`from`, `run`, ...). */
  keyword: string;
  /** The logical line as written (continuations joined), trimmed. */
  original: string;
  /** Leading `--flag[=value]` words, quotes and escapes removed. */
  flags: string[];
  /** Argument strings (see README section 1.4); empty for ONBUILD. */
  args: string[];
  startLine: number;
  endLine: number;
  heredocs: Heredoc[];
  /** ONBUILD's nested instruction. */
  next?: Node;
  /** True when the JSON (exec) form was used. */
  json: boolean;
}

export interface ParseWarning {
  message: string;
  line: number;
}

export interface Directives {
  syntax?: string;
  escape: EscapeChar;
  check?: string;
}

export interface ParseResult {
  directives: Directives;
  escapeChar: EscapeChar;
  instructions: Node[];
  warnings: ParseWarning[];
  /** First instruction's start line (1-based). */
  startLine: number;
  /** Last instruction's end line. */
  endLine: number;
}

export interface ParseOptions {
  /** Name used in error messages; default `Dockerfile`. */
  filename?: string;
}

/** A Dockerfile that cannot be parsed; `line` is 1-based (0 when unknown). */
export class DockerfileSyntaxError extends KilnError {
  readonly file: string;
  readonly line: number;
  /** The message without the `file:line:` prefix. */
  readonly detail: string;

  constructor(file: string, line: number, detail: string, options?: { cause?: unknown }) {
    super('InvalidArgument', line > 0 ? `${file}:${line}: ${detail}` : `${file}: ${detail}`, options);
    this.name = 'DockerfileSyntaxError';
    this.file = file;
    this.line = line;
    this.detail = detail;
  }
}

const KNOWN_DIRECTIVES = new Set(['syntax', 'escape', 'check']);
const DIRECTIVE_RE = /^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$/;
const HEREDOC_KEYWORDS = new Set(['run', 'copy', 'add']);
const HEREDOC_WORD_RE = /^(\d*)<<(-?)([^<]*)$/;
const BLANKS_RE = /[ \t\v\f\r]+/;
const NOT_STRING_ARRAY = 'when using JSON array syntax, arrays must be comprised of strings only';

export function parseDockerfile(source: Uint8Array | string, options: ParseOptions = {}): ParseResult {
  const file = options.filename ?? 'Dockerfile';
  let text = typeof source === 'string' ? source : decodeUtf8(source);
  if (text.startsWith('\uFEFF')) text = text.slice(1);
  const lines = text.split('\n');
  if (lines.length > 0 && lines.at(-1) === '' && text.endsWith('\n')) lines.pop();
  for (let i = 0; i < lines.length; i++) if (lines[i]!.endsWith('\r')) lines[i] = lines[i]!.slice(0, -1);

  const p = new Parser(file, lines);
  return p.parse();
}

/** Private: one parse run. */
class Parser {
  private readonly file: string;
  private readonly lines: string[];
  private next = 0; // index of the next physical line to read
  private escape: EscapeChar = '\\';
  private readonly directives: { syntax?: string; escape?: EscapeChar; check?: string } = {};
  private readonly warnings: ParseWarning[] = [];

  constructor(file: string, lines: string[]) {
    this.file = file;
    this.lines = lines;
  }

  private error(line: number, detail: string, cause?: unknown): DockerfileSyntaxError {
    return new DockerfileSyntaxError(this.file, line, detail, { cause });
  }

  parse(): ParseResult {
    this.readDirectives();
    const instructions: Node[] = [];
    const lines = this.lines;
    while (this.next < lines.length) {
      const raw = lines[this.next]!;
      const startLine = ++this.next;
      if (isComment(raw) || isBlank(raw)) continue;
      let [logical, more] = trimContinuation(trimLeft(raw), this.escape);
      while (more && this.next < lines.length) {
        const l = lines[this.next]!;
        const lineNo = ++this.next;
        if (isComment(l)) continue;
        if (isBlank(l)) {
          this.warnings.push({ message: 'empty continuation line', line: lineNo });
          continue;
        }
        let part: string;
        [part, more] = trimContinuation(l, this.escape);
        logical += part;
      }
      if (goTrim(logical) === '') continue;
      const node = this.parseInstruction(goTrim(logical), startLine);
      this.readHeredocs(node);
      node.endLine = this.next;
      if (node.next) node.next.endLine = this.next;
      instructions.push(node);
    }
    if (instructions.length === 0) throw this.error(0, 'file with no instructions');
    const directives: Directives = { escape: this.escape };
    if (this.directives.syntax !== undefined) directives.syntax = this.directives.syntax;
    if (this.directives.check !== undefined) directives.check = this.directives.check;
    return {
      directives,
      escapeChar: this.escape,
      instructions,
      warnings: this.warnings,
      startLine: instructions[0]!.startLine,
      endLine: instructions.at(-1)!.endLine,
    };
  }

  /** Consumes the leading run of parser directive lines. */
  private readDirectives(): void {
    while (this.next < this.lines.length) {
      const m = DIRECTIVE_RE.exec(trimLeft(this.lines[this.next]!));
      if (!m) return;
      const name = m[1]!.toLowerCase();
      const value = m[2]!;
      if (!KNOWN_DIRECTIVES.has(name)) return;
      const lineNo = this.next + 1;
      if (Object.hasOwn(this.directives, name)) {
        throw this.error(lineNo, `only one ${name} parser directive can be used`);
      }
      if (name === 'escape') {
        if (value !== '\\' && value !== '`') {
          throw this.error(lineNo, `invalid escape token "${value}" does not match \` or \\`);
        }
        this.escape = value;
        this.directives.escape = value;
      } else if (name === 'syntax') {
        this.directives.syntax = value;
      } else {
        this.directives.check = value;
      }
      this.next++;
    }
  }

  /** Parses one logical line (already trimmed) into a node. */
  private parseInstruction(line: string, startLine: number): Node {
    const ws = BLANKS_RE.exec(line);
    const word = ws ? line.slice(0, ws.index) : line;
    const afterKeyword = ws ? line.slice(ws.index + ws[0].length) : '';
    const keyword = word.toLowerCase();
    const { flags, rest: restRaw } = extractFlags(afterKeyword, this.escape);
    const rest = goTrim(restRaw);
    const node: Node = {
      keyword,
      original: line,
      flags,
      args: [],
      startLine,
      endLine: startLine,
      heredocs: [],
      json: false,
    };
    switch (keyword) {
      case 'run':
      case 'cmd':
      case 'entrypoint':
      case 'shell': {
        const j = this.maybeJson(rest, startLine);
        if (j) {
          node.args = j;
          node.json = true;
        } else if (rest !== '') {
          node.args = [rest];
        }
        break;
      }
      case 'add':
      case 'copy':
      case 'volume': {
        const j = this.maybeJson(rest, startLine);
        if (j) {
          node.args = j;
          node.json = true;
        } else {
          node.args = splitBlanks(rest);
        }
        break;
      }
      case 'from':
      case 'expose':
        node.args = splitBlanks(rest);
        break;
      case 'env':
      case 'label':
        node.args = this.nameValues(keyword, rest, startLine);
        break;
      case 'arg':
        node.args = quoteAwareWords(rest, this.escape);
        break;
      case 'maintainer':
      case 'user':
      case 'workdir':
      case 'stopsignal':
        if (rest !== '') node.args = [rest];
        break;
      case 'healthcheck': {
        if (rest === '') break;
        const ws2 = BLANKS_RE.exec(rest);
        const typ = ws2 ? rest.slice(0, ws2.index) : rest;
        const cmd = ws2 ? rest.slice(ws2.index + ws2[0].length) : '';
        node.args = [typ];
        const j = this.maybeJson(goTrim(cmd), startLine);
        if (j) {
          node.args.push(...j);
          node.json = true;
        } else if (goTrim(cmd) !== '') {
          node.args.push(goTrim(cmd));
        }
        break;
      }
      case 'onbuild':
        if (rest !== '') {
          const child = this.parseInstruction(rest, startLine);
          node.next = child;
        }
        break;
      default:
        // Unknown instructions are kept (the instruction layer rejects them).
        node.args = [''];
    }
    return node;
  }

  /**
   * JSON (exec) form: a strict JSON array of strings. Returns undefined when
   * `rest` is not valid JSON (shell form then applies); throws when it is a
   * valid array holding something other than strings.
   */
  private maybeJson(rest: string, line: number): string[] | undefined {
    if (!rest.startsWith('[')) return undefined;
    let value: unknown;
    try {
      value = JSON.parse(rest);
    } catch {
      return undefined;
    }
    if (!Array.isArray(value)) return undefined;
    const out: string[] = [];
    for (const v of value as unknown[]) {
      if (typeof v !== 'string') throw this.error(line, NOT_STRING_ARRAY);
      out.push(v.toWellFormed()); // Go's JSON decoder turns lone surrogates into U+FFFD
    }
    return out;
  }

  /** ENV / LABEL: key, value, separator triples. */
  private nameValues(keyword: string, rest: string, line: number): string[] {
    const words = quoteAwareWords(rest, this.escape);
    if (words.length === 0) return [];
    if (!words[0]!.includes('=')) {
      // Legacy form: `ENV key value with spaces`.
      const ws = BLANKS_RE.exec(rest);
      if (!ws) throw this.error(line, `${keyword.toUpperCase()} must have two arguments, got only "${rest}"`);
      return [rest.slice(0, ws.index), rest.slice(ws.index + ws[0].length), ''];
    }
    const out: string[] = [];
    for (const w of words) {
      const eq = w.indexOf('=');
      if (eq < 0) {
        throw this.error(
          line,
          `${keyword.toUpperCase()}: can't find = in "${w}"; every word must be of the form name=value`,
        );
      }
      out.push(w.slice(0, eq), w.slice(eq + 1), '=');
    }
    return out;
  }

  /** Reads the bodies of the heredocs named on the node's line. */
  private readHeredocs(node: Node): void {
    if (node.next) {
      // `ONBUILD RUN <<EOF`: the body belongs to the nested instruction.
      this.readHeredocs(node.next);
      return;
    }
    if (!HEREDOC_KEYWORDS.has(node.keyword) || node.json || !node.original.includes('<<')) return;
    const docs = heredocsFromLine(node.original, this.escape);
    for (const doc of docs) {
      const startLine = this.next + 1;
      let terminated = false;
      let content = '';
      while (this.next < this.lines.length) {
        let l = this.lines[this.next]!;
        this.next++;
        if (doc.chomp) l = l.replace(/^\t+/, '');
        if (l === doc.name) {
          terminated = true;
          break;
        }
        content += l + '\n';
      }
      if (!terminated) {
        throw this.error(
          node.startLine,
          `unterminated heredoc "${doc.name}" (body starts at line ${startLine}, no terminator line before end of file)`,
        );
      }
      doc.content = content;
    }
    node.heredocs = docs;
  }
}

/** Finds `<<NAME` words in a RUN/COPY/ADD line (bodies not read yet). */
export function heredocsFromLine(line: string, esc: EscapeChar = '\\'): Heredoc[] {
  let words: string[];
  try {
    words = new ShellLex(esc, { rawQuotes: true, rawEscapes: true, skipUnsetEnv: true }).processWords(
      line,
      {},
    );
  } catch {
    return []; // an unterminated quote: nothing here is a heredoc
  }
  const plain = new ShellLex(esc, { skipUnsetEnv: true });
  const docs: Heredoc[] = [];
  for (const w of words) {
    const m = HEREDOC_WORD_RE.exec(w);
    if (!m) continue;
    const spec = m[3]!;
    if (spec === '') continue;
    let names: string[];
    try {
      names = plain.processWords(spec, {});
    } catch {
      continue;
    }
    if (names.length !== 1) continue;
    const quoted = spec.includes('"') || spec.includes("'") || spec.includes(esc);
    docs.push({
      name: names[0]!,
      content: '',
      expand: !quoted,
      chomp: m[2] === '-',
      fileDescriptor: m[1] === '' ? 0 : Number(m[1]),
    });
  }
  return docs;
}

// ---------------------------------------------------------------------------
// Private helpers (exported for tests and the instruction layer).

/** Go strings.TrimSpace (Unicode white space). */
export function goTrim(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && isShellSpace(s[a]!)) a++;
  while (b > a && isShellSpace(s[b - 1]!)) b--;
  return s.slice(a, b);
}

function trimLeft(s: string): string {
  let a = 0;
  while (a < s.length && isShellSpace(s[a]!)) a++;
  return s.slice(a);
}

function isBlank(line: string): boolean {
  return trimLeft(line) === '';
}

function isComment(line: string): boolean {
  return trimLeft(line).startsWith('#');
}

/**
 * Line continuation: the last non-blank (space/tab) character is the escape
 * character and the one before it is not. Returns the line without the
 * escape and what follows it, and whether the instruction continues.
 */
function trimContinuation(line: string, esc: EscapeChar): [string, boolean] {
  let end = line.length;
  while (end > 0 && (line[end - 1] === ' ' || line[end - 1] === '\t')) end--;
  if (end === 0 || line[end - 1] !== esc) return [line, false];
  if (end >= 2 && line[end - 2] === esc) return [line, false];
  return [line.slice(0, end - 1), true];
}

function splitBlanks(rest: string): string[] {
  const t = rest.replace(/^[ \t\v\f\r]+|[ \t\v\f\r]+$/g, '');
  return t === '' ? [] : t.split(BLANKS_RE);
}

/**
 * Leading `--` words of an instruction. Quotes are removed and the escape
 * character makes the next character literal; a bare `--` ends the flags.
 */
export function extractFlags(text: string, esc: EscapeChar): { flags: string[]; rest: string } {
  const flags: string[] = [];
  let pos = 0;
  for (;;) {
    while (pos < text.length && isShellSpace(text[pos]!)) pos++;
    if (!text.startsWith('--', pos)) return { flags, rest: text.slice(pos) };
    let word = '';
    let quote = '';
    for (; pos < text.length; pos++) {
      const ch = text[pos]!;
      if (quote === '' && isShellSpace(ch)) break;
      if (quote !== '' && ch === quote) {
        quote = '';
      } else if (quote === '' && (ch === '"' || ch === "'")) {
        quote = ch;
      } else if (ch === esc) {
        if (pos + 1 < text.length) word += text[++pos];
      } else {
        word += ch;
      }
    }
    if (word === '--') return { flags, rest: text.slice(pos) };
    flags.push(word);
    if (pos >= text.length) return { flags, rest: '' };
  }
}

/**
 * Quote-aware words (ENV, LABEL, ARG): blanks split words except inside
 * quotes; quotes and escape pairs are kept in the word; an escape at the
 * very end of the text is dropped.
 */
export function quoteAwareWords(text: string, esc: EscapeChar): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  let quote = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (quote === '') {
      if (isShellSpace(ch)) {
        if (inWord) words.push(word);
        word = '';
        inWord = false;
        continue;
      }
      inWord = true;
      if (ch === esc) {
        if (i + 1 >= text.length) continue;
        word += ch + text[++i];
        continue;
      }
      if (ch === '"' || ch === "'") quote = ch;
      word += ch;
    } else {
      if (ch === quote) {
        quote = '';
      } else if (ch === esc && quote !== "'") {
        if (i + 1 >= text.length) continue;
        word += ch + text[++i];
        continue;
      }
      word += ch;
    }
  }
  if (inWord && word !== '') words.push(word);
  return words;
}

/**
 * UTF-8 decoding that keeps invalid bytes: each byte that is not part of a
 * valid sequence becomes the lone surrogate U+DC00+byte (U+DC80–U+DCFF).
 */
export function decodeUtf8(bytes: Uint8Array): string {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    // fall through to the byte-preserving slow path
  }
  let out = '';
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i]!;
    let need = 0;
    let min = 0;
    let cp = 0;
    if (b < 0x80) {
      out += String.fromCharCode(b);
      i++;
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) {
      need = 1;
      min = 0x80;
      cp = b & 0x1f;
    } else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      min = 0x800;
      cp = b & 0x0f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      min = 0x10000;
      cp = b & 0x07;
    }
    let ok = need > 0 && i + need < bytes.length;
    if (ok) {
      for (let k = 1; k <= need; k++) {
        const c = bytes[i + k];
        if (c === undefined || (c & 0xc0) !== 0x80) {
          ok = false;
          break;
        }
        cp = (cp << 6) | (c & 0x3f);
      }
    }
    if (ok && (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) ok = false;
    if (ok) {
      out += String.fromCodePoint(cp);
      i += need + 1;
    } else {
      out += String.fromCharCode(0xdc00 + b);
      i++;
    }
  }
  return out;
}
