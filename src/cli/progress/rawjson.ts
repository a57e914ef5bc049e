/**
 * Machine-readable progress: one JSON object per line, per progress event,
 * as the solver emits it (`type` vertex | log | status; log `data` is
 * base64, as BuildKit's rawjson encodes bytes), then one final object:
 * `{"type":"result","results":[…],"warnings":[…]}` or
 * `{"type":"error","message":…,"vertex":{digest,name}?,"source":{filename,start,end}?,"logs":[last lines]}`.
 */
import type { ProgressEvent } from '../../solver/progress.ts';
import { ProgressModel } from './model.ts';
import { type BuildSummary, ERROR_LOG_LINES, type Printer } from './printer.ts';

export class RawJsonPrinter implements Printer {
  readonly model = new ProgressModel();
  readonly #out: NodeJS.WritableStream;

  constructor(out: NodeJS.WritableStream) {
    this.#out = out;
  }

  write(ev: ProgressEvent): void {
    this.model.apply(ev);
    const obj = ev.type === 'log' ? { ...ev, data: Buffer.from(ev.data).toString('base64') } : ev;
    this.#out.write(`${JSON.stringify(obj)}\n`);
  }

  async finish(summary: BuildSummary): Promise<void> {
    if (summary.error) {
      const e = summary.error;
      const v = e.vertex ? this.model.vertices.get(e.vertex.digest) : undefined;
      if (v) this.model.flush(v);
      this.#out.write(
        `${JSON.stringify({
          type: 'error',
          message: e.message,
          ...(e.vertex ? { vertex: e.vertex } : {}),
          ...(e.source
            ? { source: { filename: e.source.filename, start: e.source.start, end: e.source.end } }
            : {}),
          logs: v ? v.lines.slice(-ERROR_LOG_LINES).map((l) => l.text) : [],
          warnings: summary.warnings,
        })}\n`,
      );
      return;
    }
    this.#out.write(
      `${JSON.stringify({ type: 'result', results: summary.results, warnings: summary.warnings })}\n`,
    );
  }
}
