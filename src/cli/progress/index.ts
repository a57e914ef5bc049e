/**
 * Public entry of the build progress printers: `createPrinter(mode, out)`
 * for `--progress auto|tty|plain|rawjson|quiet` (quiet: nothing but errors),
 * the shared model and the error report types.
 */
import { errInvalidArgument } from '../../core/errors.ts';
import type { ProgressEvent } from '../../solver/progress.ts';
import { PlainPrinter } from './plain.ts';
import { type BuildSummary, formatErrorReport, type Printer, type ProgressMode } from './printer.ts';
import { RawJsonPrinter } from './rawjson.ts';
import { TtyPrinter } from './tty.ts';
import { ProgressModel } from './model.ts';

export { type LogLine, ProgressModel, seconds, type VertexState } from './model.ts';
export { PlainPrinter } from './plain.ts';
export {
  type BuildSummary,
  type ErrorReport,
  formatErrorReport,
  type Printer,
  type ProgressMode,
  type SourceExcerpt,
  summaryLine,
} from './printer.ts';
export { RawJsonPrinter } from './rawjson.ts';
export { TtyPrinter } from './tty.ts';

const MODES: readonly ProgressMode[] = ['auto', 'tty', 'plain', 'rawjson', 'quiet'];

export function parseProgressMode(s: string): ProgressMode {
  if (!(MODES as readonly string[]).includes(s)) {
    throw errInvalidArgument(`invalid --progress "${s}": want ${MODES.join(', ')}`);
  }
  return s as ProgressMode;
}

/** Only the error report (for `--progress quiet` / `-q`). */
class QuietPrinter implements Printer {
  readonly model = new ProgressModel();
  readonly #out: NodeJS.WritableStream;
  constructor(out: NodeJS.WritableStream) {
    this.#out = out;
  }
  write(ev: ProgressEvent): void {
    this.model.apply(ev);
  }
  async finish(summary: BuildSummary): Promise<void> {
    if (summary.error) this.#out.write(formatErrorReport(summary.error, this.model));
  }
}

/** The printer for `mode`; `auto` is tty when `out` is a terminal (TERM not dumb), else plain. */
export function createPrinter(mode: ProgressMode, out: NodeJS.WriteStream | NodeJS.WritableStream): Printer {
  const isTty = (out as Partial<NodeJS.WriteStream>).isTTY === true && process.env.TERM !== 'dumb';
  switch (mode) {
    case 'tty':
      return new TtyPrinter(out);
    case 'plain':
      return new PlainPrinter(out);
    case 'rawjson':
      return new RawJsonPrinter(out);
    case 'quiet':
      return new QuietPrinter(out);
    default:
      return isTty ? new TtyPrinter(out) : new PlainPrinter(out);
  }
}
