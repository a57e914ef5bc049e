/**
 * Solve progress: the events a solve emits and a small multi-consumer channel
 * to read them as an `AsyncIterable`.
 *
 * Events (times are epoch milliseconds with sub-millisecond precision, from
 * `now()`):
 * - `vertex`: a vertex started (exec began), was cached, completed, or failed.
 *   A cached vertex is reported once with `cached`, `started` and `completed`.
 * - `log`: a chunk of an op's output, `stream` 1 (stdout) or 2 (stderr).
 * - `status`: per-item progress inside a vertex (e.g. one layer of a pull).
 *
 * `ProgressChannel` buffers every event written to it without backpressure
 * (a solve's events are few and small compared to its work; logs are kept in
 * full) and lets any number of consumers iterate: each iterator starts at the
 * first event ever written, follows live writes, and ends after `close()`.
 * Limit: memory grows with the events of the channel's lifetime; use one
 * channel per solve.
 */

export interface VertexEvent {
  readonly type: 'vertex';
  /** The vertex's digest (`Vertex.digest`). */
  readonly digest: string;
  readonly name: string;
  readonly started?: number;
  readonly completed?: number;
  readonly cached?: boolean;
  /** Error message when the vertex failed. */
  readonly error?: string;
}

export interface LogEvent {
  readonly type: 'log';
  /** The vertex's digest. */
  readonly vertex: string;
  readonly stream: 1 | 2;
  readonly data: Uint8Array;
  readonly timestamp: number;
}

export interface StatusEvent {
  readonly type: 'status';
  /** The vertex's digest. */
  readonly vertex: string;
  /** Item id within the vertex, e.g. a layer digest. */
  readonly id: string;
  readonly current: number;
  readonly total?: number;
  readonly started?: number;
  readonly completed?: number;
  readonly timestamp: number;
}

export type ProgressEvent = VertexEvent | LogEvent | StatusEvent;

/** Where a solve writes its events. */
export interface ProgressSink {
  write(event: ProgressEvent): void;
}

/** What an op writes into (`OpContext.progress`); bound to one vertex. */
export interface ProgressWriter {
  log(stream: 1 | 2, data: Uint8Array | string): void;
  status(id: string, fields: { current: number; total?: number; started?: number; completed?: number }): void;
}

let epochAtStart: number | undefined;
let hrtimeAtStart = 0n;

/**
 * Epoch milliseconds with sub-millisecond precision (monotonic within a process): the wall clock
 * read once, at the first call, then advanced by the monotonic clock. Not the global
 * `performance`, whose first use loads node:perf_hooks (~2.5 ms of every CLI build).
 */
export function now(): number {
  const t = process.hrtime.bigint();
  if (epochAtStart === undefined) {
    epochAtStart = Date.now();
    hrtimeAtStart = t;
  }
  return epochAtStart + Number(t - hrtimeAtStart) / 1e6;
}

/** A ProgressWriter that turns calls into events for one vertex. */
export function vertexWriter(vertexDigest: string, emit: (event: ProgressEvent) => void): ProgressWriter {
  return {
    log(stream, data) {
      const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
      emit({ type: 'log', vertex: vertexDigest, stream, data: bytes, timestamp: now() });
    },
    status(id, fields) {
      emit({ type: 'status', vertex: vertexDigest, id, ...fields, timestamp: now() });
    },
  };
}

/** Multi-consumer, unbounded event channel (see the module comment). */
export class ProgressChannel implements ProgressSink, AsyncIterable<ProgressEvent> {
  readonly #events: ProgressEvent[] = [];
  #closed = false;
  #wake: (() => void)[] = [];

  /** Appends an event; ignored after close. */
  write(event: ProgressEvent): void {
    if (this.#closed) return;
    this.#events.push(event);
    this.#notify();
  }

  /** Ends every iteration once it has read the buffered events. Idempotent. */
  close(): void {
    this.#closed = true;
    this.#notify();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** A copy of the events written so far. */
  events(): ProgressEvent[] {
    return [...this.#events];
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const w of wake) w();
  }

  [Symbol.asyncIterator](): AsyncIterator<ProgressEvent> {
    let pos = 0;
    let stopped = false;
    return {
      next: async (): Promise<IteratorResult<ProgressEvent>> => {
        for (;;) {
          if (stopped) return { done: true, value: undefined };
          if (pos < this.#events.length) return { done: false, value: this.#events[pos++] };
          if (this.#closed) return { done: true, value: undefined };
          await new Promise<void>((resolve) => this.#wake.push(resolve));
        }
      },
      return: async (): Promise<IteratorResult<ProgressEvent>> => {
        stopped = true;
        return { done: true, value: undefined };
      },
    };
  }
}
