/**
 * The printer contract shared by the progress modes, the end-of-build
 * summary and the error report (what failed, the Dockerfile lines, and the
 * last lines of the failing step's output), and `createPrinter(mode)`:
 * `auto` is `tty` when the stream is a terminal (and TERM is not `dumb`),
 * else `plain`.
 *
 * A printer receives every progress event through `write` (synchronously,
 * never throws) and is ended exactly once with `finish`, which prints the
 * summary or the error report and, for the tty view, stops redrawing.
 */
import type { ProgressEvent } from '../../solver/progress.ts';
import type { BuildSummary, ErrorReport } from '../../control/report.ts';
import { type LogLine, type ProgressModel, seconds } from './model.ts';

export type ProgressMode = 'auto' | 'tty' | 'plain' | 'rawjson' | 'quiet';

export type { BuildSummary, ErrorReport, SourceExcerpt } from '../../control/report.ts';

export interface Printer {
  write(ev: ProgressEvent): void;
  finish(summary: BuildSummary): Promise<void>;
}

export const ERROR_LOG_LINES = 10;

/** The text of an error report (BuildKit-like), for the text printers. */
export function formatErrorReport(report: ErrorReport, model: ProgressModel): string {
  const out: string[] = [];
  const v = report.vertex ? model.vertices.get(report.vertex.digest) : undefined;
  if (report.vertex) {
    const lines: LogLine[] = v ? [...v.lines] : [];
    let total = v?.lineCount ?? 0;
    if (v) {
      const p = model.partial(v);
      if (p !== undefined) {
        lines.push({ timestamp: 0, stream: 1, text: p });
        total++;
      }
    }
    const tail = lines.slice(-ERROR_LOG_LINES);
    out.push('------');
    out.push(` > ${report.vertex.name}:`);
    if (total > tail.length) out.push(`  (last ${tail.length} of ${total} lines)`);
    for (const l of tail) out.push(`${l.text}`);
    out.push('------');
  }
  if (report.source) {
    const s = report.source;
    const lines = s.lines.at(-1) === '' ? s.lines.slice(0, -1) : s.lines;
    const from = Math.max(1, s.start - 2);
    const to = Math.min(lines.length, s.end + 2);
    const width = String(to).length;
    out.push(`${s.filename}:${s.start === s.end ? s.start : `${s.start}-${s.end}`}`);
    out.push('--------------------');
    for (let i = from; i <= to; i++) {
      const mark = i >= s.start && i <= s.end ? '>>>' : '   ';
      out.push(` ${String(i).padStart(width)} | ${mark} ${lines[i - 1] ?? ''}`);
    }
    out.push('--------------------');
  }
  out.push(`error: ${report.message}`);
  return `${out.join('\n')}\n`;
}

/** The summary line: time, steps, cached. */
export function summaryLine(model: ProgressModel, endedAt: number): string {
  const c = model.counts();
  const started = model.firstEvent ?? endedAt;
  return `${c.failed > 0 ? 'Failed' : 'Built'} in ${seconds(endedAt - started)}: ${c.total} steps, ${c.cached} cached, ${c.total - c.cached - c.failed} run${c.failed > 0 ? `, ${c.failed} failed` : ''}`;
}
