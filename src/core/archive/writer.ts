/**
 * Streaming tar writer (private part of ./tar.ts). Entries are appended one
 * at a time; the output goes to a sink callback in large chunks (small
 * headers and bodies are packed into `bufferSize` buffers, large body chunks
 * pass through without copying). Chunks handed to the sink are never reused
 * by the writer, so the sink may keep them. The sink's promise provides
 * back-pressure. A body that does not match the header's size throws
 * InvalidArgument. Output is deterministic for a given sequence of entries.
 *
 * With `copyAll`, body chunks are always copied into the packing buffers
 * (a body may refill a chunk's buffer once the writer asks for the next
 * chunk), and the packing buffers come from `take` (default: new ones): a
 * sink that is done with a chunk may give its buffer back to whatever
 * `take` draws from, so a layer of any size needs a few buffers, not one per
 * MiB (../diff/layer.ts).
 */
import { errInvalidArgument } from '../errors.ts';
import { type EncodeOptions, END_OF_ARCHIVE, encodeHeader, paddingFor, type TarHeader } from './header.ts';

export type TarSink = (chunk: Uint8Array) => void | Promise<void>;

export interface TarWriterOptions extends EncodeOptions {
  /** Size of the packing buffer (default 1 MiB). */
  bufferSize?: number;
  /** Copy every body chunk; never hand the sink a caller's buffer (see the module comment). */
  copyAll?: boolean;
  /** A fresh packing buffer of `bufferSize` bytes (default: a new one). */
  take?: () => Uint8Array;
}

const ZEROS = new Uint8Array(512);

export class TarWriter {
  readonly #sink: TarSink;
  readonly #options: EncodeOptions;
  readonly #bufferSize: number;
  readonly #copyAll: boolean;
  readonly #take: () => Uint8Array;
  #buf: Uint8Array;
  #used = 0;
  #finished = false;
  /** Bytes of archive produced so far. */
  size = 0;

  constructor(sink: TarSink, options: TarWriterOptions = {}) {
    this.#sink = sink;
    this.#options = { subsecond: options.subsecond ?? false };
    const size = options.bufferSize ?? 1 << 20;
    this.#bufferSize = size;
    this.#copyAll = options.copyAll ?? false;
    this.#take = options.take ?? (() => new Uint8Array(size));
    this.#buf = this.#take();
    if (this.#buf.length !== size) {
      throw errInvalidArgument(`tar writer: a packing buffer has ${this.#buf.length} bytes, want ${size}`);
    }
  }

  async #flush(): Promise<void> {
    if (this.#used === 0) return;
    const out = this.#buf.subarray(0, this.#used);
    this.#buf = this.#take();
    this.#used = 0;
    await this.#sink(out);
  }

  async #put(bytes: Uint8Array): Promise<void> {
    this.size += bytes.length;
    if (!this.#copyAll && bytes.length >= this.#bufferSize / 4) {
      await this.#flush();
      await this.#sink(bytes);
      return;
    }
    if (bytes.length <= this.#bufferSize) {
      if (this.#used + bytes.length > this.#bufferSize) await this.#flush();
      this.#buf.set(bytes, this.#used);
      this.#used += bytes.length;
      return;
    }
    // Larger than a packing buffer (copyAll): fill buffer after buffer.
    for (let off = 0; off < bytes.length; ) {
      if (this.#used === this.#bufferSize) await this.#flush();
      const n = Math.min(this.#bufferSize - this.#used, bytes.length - off);
      this.#buf.set(bytes.subarray(off, off + n), this.#used);
      this.#used += n;
      off += n;
    }
  }

  /**
   * Appends one entry. `body` is required for 'file' entries with a size
   * and must produce exactly `header.size` bytes.
   */
  async add(
    header: TarHeader,
    body?: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  ): Promise<void> {
    if (this.#finished)
      throw errInvalidArgument(`write tar entry "${header.name}": the archive is already finished`);
    await this.#put(encodeHeader(header, this.#options));
    const size = header.type === 'file' ? header.size : 0;
    let written = 0;
    if (body !== undefined) {
      if (body instanceof Uint8Array) {
        written = body.length;
        if (written !== size) throw sizeError(header, written);
        await this.#put(body);
      } else {
        for await (const chunk of body) {
          written += chunk.length;
          if (written > size) throw sizeError(header, written);
          await this.#put(chunk);
        }
      }
    }
    if (written !== size) throw sizeError(header, written);
    const pad = paddingFor(size);
    if (pad) await this.#put(ZEROS.subarray(0, pad));
  }

  /** Writes the end-of-archive blocks and flushes. */
  async finish(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    await this.#put(END_OF_ARCHIVE);
    await this.#flush();
  }
}

function sizeError(header: TarHeader, written: number): Error {
  return errInvalidArgument(
    `write tar entry "${header.name}": body size (at least ${written} bytes) does not match the header's ${header.type === 'file' ? header.size : 0}`,
  );
}

/** Packs a sequence of entries into a tar stream (convenience for small archives and tests). */
export async function* packTar(
  entries:
    | Iterable<{ header: TarHeader; body?: Uint8Array }>
    | AsyncIterable<{ header: TarHeader; body?: Uint8Array }>,
  options: TarWriterOptions = {},
): AsyncGenerator<Uint8Array, void, undefined> {
  let pending: Uint8Array[] = [];
  const w = new TarWriter((c) => {
    pending.push(c);
  }, options);
  for await (const e of entries) {
    await w.add(e.header, e.body);
    if (pending.length) {
      yield* pending;
      pending = [];
    }
  }
  await w.finish();
  yield* pending;
}
