/**
 * In-process publish/subscribe of typed events (types.ts).
 *
 * `publish` stamps the envelope and delivers it synchronously to every
 * matching subscriber, in subscription order; a subscriber that throws is
 * dropped from that delivery only (its error goes to `onError`, never to the
 * publisher). `subscribe(filter, fn)` returns an unsubscribe function;
 * `stream(filter, signal)` is the same as an async iterator with an
 * unbounded buffer, ended by the signal.
 *
 * Filters: `topic` patterns where a trailing `*` matches any suffix
 * (`/tasks/*`), and `namespace`. Several filters are OR-ed; the fields of
 * one filter are AND-ed (containerd's filter semantics, reduced to these two
 * fields). An empty list matches everything.
 */
import type { Envelope, EventPayloads, Topic } from './types.ts';

export interface EventFilter {
  /** A topic, or a prefix followed by `*`. */
  topic?: string;
  namespace?: string;
}

/** Something events can be published to (the bus, or the bus plus the cross-process log). */
export interface Publisher {
  publish<T extends Topic>(namespace: string, topic: T, event: EventPayloads[T]): Envelope<T>;
}

function topicMatches(pattern: string, topic: string): boolean {
  return pattern.endsWith('*') ? topic.startsWith(pattern.slice(0, -1)) : pattern === topic;
}

/** True when the envelope matches any of the filters (or there are none). */
export function matchFilters(filters: readonly EventFilter[], env: Envelope): boolean {
  if (filters.length === 0) return true;
  return filters.some(
    (f) =>
      (f.topic === undefined || topicMatches(f.topic, env.topic)) &&
      (f.namespace === undefined || f.namespace === env.namespace),
  );
}

/**
 * Parses `topic==/tasks/*`, `namespace==default`, or a bare topic pattern,
 * joined with `,` inside one filter (AND).
 */
export function parseFilter(text: string): EventFilter {
  const f: EventFilter = {};
  for (const part of text.split(',')) {
    const m = /^\s*(topic|namespace)\s*==?\s*(.+?)\s*$/.exec(part);
    if (m) f[m[1] as 'topic' | 'namespace'] = m[2];
    else if (part.trim().startsWith('/')) f.topic = part.trim();
    else throw new Error(`invalid event filter "${text}": want topic==/x/* or namespace==name`);
  }
  return f;
}

type Subscriber = { filters: readonly EventFilter[]; fn: (env: Envelope) => void };

export class EventBus implements Publisher {
  readonly #subs = new Set<Subscriber>();
  readonly onError: (err: unknown) => void;

  constructor(options: { onError?: (err: unknown) => void } = {}) {
    this.onError = options.onError ?? (() => undefined);
  }

  publish<T extends Topic>(namespace: string, topic: T, event: EventPayloads[T]): Envelope<T> {
    const env = { timestamp: new Date().toISOString(), namespace, topic, event } as Envelope<T>;
    this.deliver(env as Envelope);
    return env;
  }

  /** Delivers an already stamped envelope (e.g. one read from another process's log). */
  deliver(env: Envelope): void {
    for (const s of [...this.#subs]) {
      if (!matchFilters(s.filters, env)) continue;
      try {
        s.fn(env);
      } catch (err) {
        this.onError(err);
      }
    }
  }

  subscribe(filters: readonly EventFilter[], fn: (env: Envelope) => void): () => void {
    const sub: Subscriber = { filters, fn };
    this.#subs.add(sub);
    return () => {
      this.#subs.delete(sub);
    };
  }

  /** Events matching `filters` as an async iterator, until `signal` aborts. */
  async *stream(filters: readonly EventFilter[], signal?: AbortSignal): AsyncGenerator<Envelope> {
    const queue: Envelope[] = [];
    let wake: (() => void) | null = null;
    const unsubscribe = this.subscribe(filters, (env) => {
      queue.push(env);
      wake?.();
    });
    const onAbort = (): void => wake?.();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      while (!signal?.aborted) {
        const next = queue.shift();
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = null;
      }
    } finally {
      unsubscribe();
      signal?.removeEventListener('abort', onAbort);
    }
  }

  get subscriberCount(): number {
    return this.#subs.size;
  }
}
