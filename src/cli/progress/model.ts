/**
 * The state every progress printer renders: the solve's events (src/solver
 * progress.ts) folded into one record per vertex, numbered in order of first
 * appearance (`#1`, `#2`, … as BuildKit's printers do).
 *
 * Vertex events are partial updates merged field by field (a cached vertex
 * arrives once with `cached`, `started` and `completed`). Log chunks are cut
 * into lines per vertex and stream; a vertex keeps its last `keepLines`
 * complete lines (for the tty view and for error reports) plus the partial
 * line in progress. Statuses (e.g. layers of a pull) are kept by item id.
 *
 * Synthetic vertices (the CLI's own steps: loading the Dockerfile, resolving
 * base images, exporting) use the same events with digests of their own.
 */
import type { ProgressEvent, StatusEvent } from '../../solver/progress.ts';

export interface LogLine {
  /** Epoch ms when the line's first byte arrived. */
  timestamp: number;
  stream: 1 | 2;
  text: string;
}

export interface VertexState {
  /** 1-based order of first appearance. */
  n: number;
  digest: string;
  name: string;
  started?: number;
  completed?: number;
  cached: boolean;
  error?: string;
  /** Last complete lines (at most `keepLines`). */
  lines: LogLine[];
  /** Count of every complete line ever seen. */
  lineCount: number;
  statuses: Map<string, StatusEvent>;
}

interface Partial {
  text: string;
  timestamp: number;
}

export class ProgressModel {
  readonly vertices = new Map<string, VertexState>();
  readonly keepLines: number;
  readonly #partial = new Map<string, Partial>();
  /** Epoch ms of the first event. */
  firstEvent: number | undefined;

  constructor(keepLines = 50) {
    this.keepLines = keepLines;
  }

  /** Folds one event in; returns the vertex it touched and, for logs, the lines it completed. */
  apply(ev: ProgressEvent): { vertex: VertexState; lines: LogLine[] } {
    const at = ev.type === 'vertex' ? (ev.started ?? ev.completed ?? Date.now()) : ev.timestamp;
    this.firstEvent ??= at;
    const digest = ev.type === 'vertex' ? ev.digest : ev.vertex;
    const v = this.#get(digest, ev.type === 'vertex' ? ev.name : digest);
    if (ev.type === 'vertex') {
      if (ev.name) v.name = ev.name;
      if (ev.started !== undefined && v.started === undefined) v.started = ev.started;
      if (ev.completed !== undefined) v.completed = ev.completed;
      if (ev.cached) v.cached = true;
      if (ev.error !== undefined) v.error = ev.error;
      if (ev.completed !== undefined) return { vertex: v, lines: this.flush(v) };
      return { vertex: v, lines: [] };
    }
    if (ev.type === 'status') {
      v.statuses.set(ev.id, ev);
      return { vertex: v, lines: [] };
    }
    const key = `${digest}\n${ev.stream}`;
    const text = new TextDecoder().decode(ev.data);
    const out: LogLine[] = [];
    let part = this.#partial.get(key);
    let rest = text;
    for (;;) {
      const nl = rest.indexOf('\n');
      if (nl < 0) break;
      const line = (part?.text ?? '') + rest.slice(0, nl);
      out.push({
        timestamp: part?.timestamp ?? ev.timestamp,
        stream: ev.stream,
        text: line.replace(/\r$/, ''),
      });
      part = undefined;
      rest = rest.slice(nl + 1);
    }
    if (rest.length > 0)
      part = { text: (part?.text ?? '') + rest, timestamp: part?.timestamp ?? ev.timestamp };
    if (part) this.#partial.set(key, part);
    else this.#partial.delete(key);
    this.#keep(v, out);
    return { vertex: v, lines: out };
  }

  /** Completes the partial lines of `v` (when it ends). */
  flush(v: VertexState): LogLine[] {
    const out: LogLine[] = [];
    for (const stream of [1, 2] as const) {
      const key = `${v.digest}\n${stream}`;
      const part = this.#partial.get(key);
      if (!part) continue;
      this.#partial.delete(key);
      out.push({ timestamp: part.timestamp, stream, text: part.text });
    }
    this.#keep(v, out);
    return out;
  }

  /** The partial (unterminated) line of `v`, if any, for live views. */
  partial(v: VertexState): string | undefined {
    return this.#partial.get(`${v.digest}\n1`)?.text ?? this.#partial.get(`${v.digest}\n2`)?.text;
  }

  list(): VertexState[] {
    return [...this.vertices.values()];
  }

  counts(): { done: number; total: number; cached: number; failed: number; running: number } {
    let done = 0;
    let cached = 0;
    let failed = 0;
    let running = 0;
    for (const v of this.vertices.values()) {
      if (v.completed !== undefined) done++;
      else if (v.started !== undefined) running++;
      if (v.cached) cached++;
      if (v.error !== undefined) failed++;
    }
    return { done, total: this.vertices.size, cached, failed, running };
  }

  #get(digest: string, name: string): VertexState {
    let v = this.vertices.get(digest);
    if (!v) {
      v = {
        n: this.vertices.size + 1,
        digest,
        name,
        cached: false,
        lines: [],
        lineCount: 0,
        statuses: new Map(),
      };
      this.vertices.set(digest, v);
    }
    return v;
  }

  #keep(v: VertexState, lines: LogLine[]): void {
    if (lines.length === 0) return;
    v.lines.push(...lines);
    v.lineCount += lines.length;
    if (v.lines.length > this.keepLines) v.lines.splice(0, v.lines.length - this.keepLines);
  }
}

/** Seconds with one decimal, as BuildKit prints durations (`1.2s`). */
export function seconds(ms: number): string {
  return `${(Math.max(0, ms) / 1000).toFixed(1)}s`;
}
