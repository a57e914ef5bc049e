/**
 * Source mapping: ops can point at the ranges of a source file (say, the
 * Dockerfile lines) that produced them, so that errors and progress can
 * quote the file. Marshal puts each SourceMap once into
 * `Definition.source.infos` (in order of first use) and the locations per
 * op digest into `Definition.source.locations`.
 *
 * Locations are not part of an op's identity: the same op made from two
 * files is one op with the locations of both.
 */
import { errInvalidArgument } from '../core/errors.ts';

/** A position in a source file: 1-based line, 0-based character. */
export interface Position {
  line: number;
  character: number;
}

export interface Range {
  start: Position;
  end: Position;
}

/** Ranges of one source file. */
export interface SourceLocation {
  readonly source: SourceMap;
  readonly ranges: readonly Range[];
}

/**
 * A source file that ops can refer to.
 *
 * @example
 * ```ts
 * const df = new SourceMap('Dockerfile', text, 'Dockerfile');
 * image('busybox').run({ shell: 'make', location: df.lines(3) });
 * ```
 */
export class SourceMap {
  readonly filename: string;
  readonly data: Uint8Array;
  readonly language: string;

  constructor(filename: string, data: string | Uint8Array, language = '') {
    this.filename = filename;
    this.data = typeof data === 'string' ? new TextEncoder().encode(data) : new Uint8Array(data);
    this.language = language;
  }

  /** A location made of the given ranges. */
  location(ranges: readonly Range[]): SourceLocation {
    for (const r of ranges) {
      for (const p of [r.start, r.end]) {
        if (!Number.isInteger(p.line) || p.line < 1 || !Number.isInteger(p.character) || p.character < 0) {
          throw errInvalidArgument(
            `source location in "${this.filename}": invalid position ${JSON.stringify(p)}`,
          );
        }
      }
    }
    return { source: this, ranges: ranges.map((r) => ({ start: { ...r.start }, end: { ...r.end } })) };
  }

  /** Whole lines `from` to `to` (inclusive, 1-based). */
  lines(from: number, to = from): SourceLocation {
    return this.location([{ start: { line: from, character: 0 }, end: { line: to, character: 0 } }]);
  }
}
