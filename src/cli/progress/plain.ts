/**
 * Plain progress for logs and CI, in the shape of BuildKit's plain printer:
 *
 * ```
 * #5 [build 2/4] RUN make
 * #5 0.412 cc -o app main.c
 * #5 DONE 1.2s
 *
 * #6 [build 3/4] COPY . .
 * #6 CACHED
 * ```
 *
 * A vertex's header is printed when it first starts and again whenever its
 * output interleaves with another vertex's (parallel steps). Log lines carry
 * the seconds since the vertex started. Ends with the error report or the
 * summary. Nothing is redrawn; every line is final.
 */
import type { ProgressEvent } from '../../solver/progress.ts';
import { ProgressModel, seconds, type VertexState } from './model.ts';
import { type BuildSummary, formatErrorReport, type Printer, summaryLine } from './printer.ts';

export class PlainPrinter implements Printer {
  readonly model = new ProgressModel();
  readonly #out: NodeJS.WritableStream;
  #current: string | undefined;
  readonly #announced = new Set<string>();
  readonly #ended = new Set<string>();

  constructor(out: NodeJS.WritableStream) {
    this.#out = out;
  }

  write(ev: ProgressEvent): void {
    const { vertex: v, lines } = this.model.apply(ev);
    if (ev.type === 'vertex') {
      if (v.started === undefined && v.completed === undefined) return;
      this.#header(v);
      for (const l of lines) this.#line(v, l.timestamp, l.text);
      if (v.completed !== undefined && !this.#ended.has(v.digest)) {
        this.#ended.add(v.digest);
        if (v.error !== undefined) this.#print(`#${v.n} ERROR: ${v.error}\n`);
        else if (v.cached) this.#print(`#${v.n} CACHED\n`);
        else this.#print(`#${v.n} DONE ${seconds(v.completed - (v.started ?? v.completed))}\n`);
      }
      return;
    }
    if (ev.type === 'status') {
      if (ev.completed === undefined) return;
      this.#header(v);
      const size = ev.total !== undefined ? ` ${ev.current} / ${ev.total}` : '';
      this.#print(`#${v.n} ${ev.id}${size} done\n`);
      return;
    }
    if (lines.length === 0) return;
    this.#header(v);
    for (const l of lines) this.#line(v, l.timestamp, l.text);
  }

  async finish(summary: BuildSummary): Promise<void> {
    // Lines still open (a step that printed no final newline).
    for (const v of this.model.list()) {
      const rest = this.model.flush(v);
      if (rest.length === 0) continue;
      this.#header(v);
      for (const l of rest) this.#line(v, l.timestamp, l.text);
    }
    this.#print('\n');
    for (const w of summary.warnings) this.#print(`WARNING: ${w}\n`);
    if (summary.error) {
      this.#print(formatErrorReport(summary.error, this.model));
      return;
    }
    for (const r of summary.results) this.#print(`${r}\n`);
    this.#print(`${summaryLine(this.model, Date.now())}\n`);
  }

  #header(v: VertexState): void {
    if (this.#current === v.digest) return;
    if (this.#current !== undefined) this.#print('\n');
    this.#current = v.digest;
    this.#announced.add(v.digest);
    this.#print(`#${v.n} ${v.name}\n`);
  }

  #line(v: VertexState, at: number, text: string): void {
    const t = ((at - (v.started ?? at)) / 1000).toFixed(3);
    this.#print(`#${v.n} ${t} ${text}\n`);
  }

  #print(s: string): void {
    this.#out.write(s);
  }
}
