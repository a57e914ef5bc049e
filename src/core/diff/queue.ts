/**
 * A bounded async FIFO between one producer and one consumer (private to
 * src/core/diff). `push` waits while the queue holds `maxItems` items or
 * `maxWeight` weight (an item heavier than the limit is still accepted
 * when the queue is empty); `shift` waits for an item and returns undefined
 * once the queue is closed and empty. `fail(err)` makes every pending and
 * later call reject with err, so either side can stop the other.
 */
export class AsyncQueue<T> {
  readonly #items: { value: T; weight: number }[] = [];
  readonly #maxItems: number;
  readonly #maxWeight: number;
  #weight = 0;
  #closed = false;
  #error: unknown;
  #failed = false;
  #wakeConsumer: (() => void) | undefined;
  #wakeProducer: (() => void) | undefined;

  constructor(maxItems: number, maxWeight = Number.POSITIVE_INFINITY) {
    this.#maxItems = maxItems;
    this.#maxWeight = maxWeight;
  }

  async push(value: T, weight = 0): Promise<void> {
    for (;;) {
      if (this.#failed) throw this.#error;
      const empty = this.#items.length === 0;
      if (empty || (this.#items.length < this.#maxItems && this.#weight + weight <= this.#maxWeight)) break;
      await new Promise<void>((resolve) => {
        this.#wakeProducer = resolve;
      });
    }
    this.#items.push({ value, weight });
    this.#weight += weight;
    this.#wake('consumer');
  }

  async shift(): Promise<T | undefined> {
    for (;;) {
      if (this.#failed) throw this.#error;
      const item = this.#items.shift();
      if (item) {
        this.#weight -= item.weight;
        this.#wake('producer');
        return item.value;
      }
      if (this.#closed) return undefined;
      await new Promise<void>((resolve) => {
        this.#wakeConsumer = resolve;
      });
    }
  }

  close(): void {
    this.#closed = true;
    this.#wake('consumer');
  }

  fail(err: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#error = err;
    this.#wake('consumer');
    this.#wake('producer');
  }

  #wake(which: 'consumer' | 'producer'): void {
    const fn = which === 'consumer' ? this.#wakeConsumer : this.#wakeProducer;
    if (which === 'consumer') this.#wakeConsumer = undefined;
    else this.#wakeProducer = undefined;
    fn?.();
  }
}
