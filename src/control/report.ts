/**
 * What a build reports when it ends (src/control/build.ts): the result lines,
 * the warnings, and on failure an error with the failing step and the
 * Dockerfile lines it came from. Printers (src/cli/progress) show it; kilnd
 * sends it to clients (src/control/wire.ts).
 */

/** A source excerpt for an error: the Dockerfile lines of the failing instruction. */
export interface SourceExcerpt {
  filename: string;
  /** 1-based first and last line of the instruction. */
  start: number;
  end: number;
  /** The whole file's lines. */
  lines: string[];
}

export interface ErrorReport {
  message: string;
  /** The failing vertex (digest + name), when a step failed. */
  vertex?: { digest: string; name: string };
  source?: SourceExcerpt;
}

export interface BuildSummary {
  /** Lines describing results, e.g. `image sha256:… named docker.io/library/x:latest`. */
  results: string[];
  warnings: string[];
  error?: ErrorReport;
}
