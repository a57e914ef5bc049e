/**
 * A counting semaphore whose waiters can be cancelled with an AbortSignal.
 * Waiters are served in FIFO order. `acquire` resolves to a release function
 * that must be called exactly once (extra calls are ignored).
 */
import { KilnError } from '../core/errors.ts';

interface Waiter {
  grant: () => void;
}

export class Semaphore {
  #free: number;
  readonly #queue: Waiter[] = [];

  constructor(limit: number) {
    if (!Number.isInteger(limit) || limit < 1) {
      throw new KilnError('InvalidArgument', `semaphore limit "${limit}" must be a positive integer`);
    }
    this.#free = limit;
  }

  /** Slots free right now. */
  get free(): number {
    return this.#free;
  }

  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(canceled(signal));
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve(this.#releaser());
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.#releaser());
        },
      };
      const onAbort = (): void => {
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
        reject(canceled(signal));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  #releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.#queue.shift();
      if (next) next.grant();
      else this.#free++;
    };
  }
}

function canceled(signal: AbortSignal | undefined): KilnError {
  return new KilnError('Canceled', 'wait for a free execution slot canceled', { cause: signal?.reason });
}
