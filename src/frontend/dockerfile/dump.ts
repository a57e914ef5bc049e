/**
 * Canonical text dump of a parsed Dockerfile, in the format of the shared
 * conformance data (../shared/conformance/README.md, sections 1.1 and
 * 1.5): one `(keyword ["flag" ...] "arg" ...)` line per instruction, each
 * string quoted the way Go's strconv.Quote does, and a final newline.
 *
 * Heredoc bodies, line numbers and whether the JSON form was used are not
 * part of the dump.
 */
import type { Node, ParseResult } from './parser.ts';

export function dumpAst(result: Pick<ParseResult, 'instructions'>): string {
  return result.instructions.map(dumpNode).join('\n') + '\n';
}

export function dumpNode(node: Node): string {
  let s = '(' + node.keyword;
  if (node.flags.length > 0) s += ' [' + node.flags.map(goQuote).join(' ') + ']';
  if (node.next) s += ' ' + dumpNode(node.next);
  else for (const a of node.args) s += ' ' + goQuote(a);
  return s + ')';
}

const PRINTABLE_RE = /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u;
const SHORT_ESCAPES: Record<number, string> = {
  7: '\\a',
  8: '\\b',
  12: '\\f',
  10: '\\n',
  13: '\\r',
  9: '\\t',
  11: '\\v',
  34: '\\"',
  92: '\\\\',
};

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, '0');
}

/**
 * Go's strconv.Quote. Lone surrogates U+DC80–U+DCFF stand for bytes that were
 * not valid UTF-8 (see parser.ts decodeUtf8) and print as `\xNN`; any other
 * lone surrogate prints as `\ufffd`, like Go's handling of invalid input.
 */
export function goQuote(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; ) {
    const cp = s.codePointAt(i)!;
    const ch = String.fromCodePoint(cp);
    i += ch.length;
    const short = SHORT_ESCAPES[cp];
    if (short !== undefined) {
      out += short;
    } else if (cp === 0x20 || (cp > 0x20 && cp < 0x7f)) {
      out += ch;
    } else if (cp < 0x20 || cp === 0x7f) {
      out += '\\x' + hex(cp, 2);
    } else if (cp >= 0xd800 && cp <= 0xdfff) {
      out += cp >= 0xdc80 && cp <= 0xdcff ? '\\x' + hex(cp - 0xdc00, 2) : '\\ufffd';
    } else if (PRINTABLE_RE.test(ch)) {
      out += ch;
    } else if (cp < 0x10000) {
      out += '\\u' + hex(cp, 4);
    } else {
      out += '\\U' + hex(cp, 8);
    }
  }
  return out + '"';
}
