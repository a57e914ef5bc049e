/**
 * The live terminal view, redrawn in place with ANSI escapes (cursor up,
 * erase below) every `intervalMs` and when the build ends:
 *
 * ```
 * [+] Building 3.2s (5/7)
 *  => [internal] load build definition from Dockerfile            0.0s
 *  => CACHED [build 2/4] COPY . .                                  0.0s
 *  => [build 3/4] RUN make                                         1.2s
 *  => => # cc -o app main.c
 *  => [test 2/2] RUN ./check                                       0.8s
 * ```
 *
 * Every vertex is listed in order of appearance with its state (CACHED,
 * ERROR) and time (running ones tick); every running vertex shows its last
 * `logLines` output lines, so parallel steps are visibly parallel. Names are
 * cut to the terminal width; when the frame is taller than the terminal, the
 * oldest finished vertices are dropped from the live frame (the final frame
 * lists every vertex, without logs). Ends with the error report or summary.
 */
import type { ProgressEvent } from '../../solver/progress.ts';
import { ProgressModel, seconds, type VertexState } from './model.ts';
import { type BuildSummary, formatErrorReport, type Printer, summaryLine } from './printer.ts';

export interface TtyOptions {
  intervalMs?: number;
  logLines?: number;
  /** Terminal size; default the stream's columns/rows (80x24). */
  columns?: number;
  rows?: number;
}

const CSI = '\x1b[';

export class TtyPrinter implements Printer {
  readonly model = new ProgressModel();
  readonly #out: NodeJS.WriteStream | NodeJS.WritableStream;
  readonly #opts: TtyOptions;
  readonly #timer: NodeJS.Timeout;
  #drawn = 0;
  #dirty = true;
  readonly #start = Date.now();

  constructor(out: NodeJS.WriteStream | NodeJS.WritableStream, opts: TtyOptions = {}) {
    this.#out = out;
    this.#opts = opts;
    this.#timer = setInterval(() => this.#draw(false), opts.intervalMs ?? 150);
    this.#timer.unref();
  }

  write(ev: ProgressEvent): void {
    this.model.apply(ev);
    this.#dirty = true;
  }

  async finish(summary: BuildSummary): Promise<void> {
    clearInterval(this.#timer);
    this.#dirty = true;
    this.#draw(true);
    const out: string[] = [];
    for (const w of summary.warnings) out.push(`WARNING: ${w}\n`);
    if (summary.error) out.push(formatErrorReport(summary.error, this.model));
    else {
      for (const r of summary.results) out.push(`${r}\n`);
      out.push(`${summaryLine(this.model, Date.now())}\n`);
    }
    this.#out.write(out.join(''));
  }

  #size(): { columns: number; rows: number } {
    const s = this.#out as Partial<NodeJS.WriteStream>;
    return { columns: this.#opts.columns ?? (s.columns || 80), rows: this.#opts.rows ?? (s.rows || 24) };
  }

  /** The frame's lines (exported for tests through `frame()`). */
  frame(final: boolean, now = Date.now()): string[] {
    const { columns, rows } = this.#size();
    const c = this.model.counts();
    const head = `[+] Building ${seconds(now - this.#start)} (${c.done}/${c.total})${final ? (c.failed > 0 ? ' FINISHED with errors' : ' FINISHED') : ''}`;
    const blocks: { v: VertexState; lines: string[] }[] = [];
    for (const v of this.model.list()) {
      if (v.started === undefined && v.completed === undefined) continue;
      const lines = [this.#vertexLine(v, columns, now)];
      if (!final && v.completed === undefined) {
        const logs = v.lines.slice(-(this.#opts.logLines ?? 6)).map((l) => l.text);
        const p = this.model.partial(v);
        if (p !== undefined) logs.push(p);
        for (const l of logs.slice(-(this.#opts.logLines ?? 6)))
          lines.push(cut(` => => # ${clean(l)}`, columns));
      }
      blocks.push({ v, lines });
    }
    if (!final) {
      // Keep the frame within the terminal: drop the oldest finished vertices first.
      let total = 1 + blocks.reduce((n, b) => n + b.lines.length, 0);
      for (let i = 0; i < blocks.length && total > rows - 1; ) {
        if (blocks[i]!.v.completed !== undefined) {
          total -= blocks[i]!.lines.length;
          blocks.splice(i, 1);
        } else i++;
      }
    }
    return [cut(head, columns), ...blocks.flatMap((b) => b.lines)];
  }

  #vertexLine(v: VertexState, columns: number, now: number): string {
    const state = v.error !== undefined ? 'ERROR ' : v.cached ? 'CACHED ' : '';
    const end = v.completed ?? now;
    const time = seconds(end - (v.started ?? end));
    const left = ` => ${state}${v.name}`;
    const room = columns - time.length - 1;
    if (left.length > room) return `${cut(left, room)} ${time}`;
    return `${left}${' '.repeat(room - left.length)} ${time}`;
  }

  #draw(final: boolean): void {
    if (!this.#dirty && !final) {
      // The clock still ticks while steps run.
      if (this.model.counts().running === 0) return;
    }
    this.#dirty = false;
    const lines = this.frame(final);
    const up = this.#drawn > 0 ? `${CSI}${this.#drawn}A\r` : '';
    this.#out.write(`${up}${CSI}J${lines.join('\n')}\n`);
    this.#drawn = lines.length;
  }
}

/** A log line made safe for the frame: the text after the last CR, no escape sequences, tabs as spaces. */
function clean(s: string): string {
  const cr = s.lastIndexOf('\r');
  const t = cr >= 0 ? s.slice(cr + 1) : s;
  return t
    .replace(/\x1b\[[0-9;?]*[ -/]*[@-~]/g, '')
    .replace(/\t/g, '    ')
    .replace(/[\x00-\x1f\x7f]/g, '');
}

function cut(s: string, width: number): string {
  if (width <= 1) return '';
  return s.length <= width ? s : `${s.slice(0, width - 1)}…`;
}
