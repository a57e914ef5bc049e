/**
 * A pull-based byte reader over an async iterable of chunks (private helper
 * of the tar reader). It hands out exact-size reads (copied only when a read
 * spans chunks) and bounded slices for streaming bodies without copying.
 */
export class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>;
  #chunk: Uint8Array = new Uint8Array(0);
  #pos = 0;
  #done = false;
  /** Bytes consumed so far. */
  offset = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  async #fill(): Promise<boolean> {
    while (this.#pos >= this.#chunk.length) {
      if (this.#done) return false;
      const r = await this.#it.next();
      if (r.done) {
        this.#done = true;
        return false;
      }
      this.#chunk = r.value;
      this.#pos = 0;
    }
    return true;
  }

  /** Up to `max` bytes (at least one), or undefined at the end of input. */
  async readSome(max: number): Promise<Uint8Array | undefined> {
    if (!(await this.#fill())) return undefined;
    const n = Math.min(max, this.#chunk.length - this.#pos);
    const out = this.#chunk.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    this.offset += n;
    return out;
  }

  /** Exactly `n` bytes, or fewer only when the input ends first. */
  async read(n: number): Promise<Uint8Array> {
    const first = await this.readSome(n);
    if (!first) return new Uint8Array(0);
    if (first.length === n) return first;
    const out = new Uint8Array(n);
    out.set(first, 0);
    let got = first.length;
    while (got < n) {
      const more = await this.readSome(n - got);
      if (!more) return out.subarray(0, got);
      out.set(more, got);
      got += more.length;
    }
    return out;
  }

  /** Skips up to `n` bytes; returns how many were skipped. */
  async skip(n: number): Promise<number> {
    let left = n;
    while (left > 0) {
      const s = await this.readSome(left);
      if (!s) break;
      left -= s.length;
    }
    return n - left;
  }

  /** Reads and discards everything that is left. */
  async drain(): Promise<void> {
    while (await this.readSome(Number.MAX_SAFE_INTEGER)) {
      // discard
    }
  }

  /** Stops the underlying iterator early. */
  async close(): Promise<void> {
    if (!this.#done) {
      this.#done = true;
      await this.#it.return?.();
    }
  }
}
