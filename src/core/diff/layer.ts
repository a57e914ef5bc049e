/**
 * Writes a layer into a content store in one pass: layer entries (from
 * ./compare.ts) → tar (../archive) → diffID digest → compression → digest,
 * size and the store's writer, then a commit with the expected size and the
 * `containerd.io/uncompressed` label. No temporary tar file.
 *
 * Three tasks overlap: the walk (stats and xattrs), file reads (small files
 * are read whole, ahead of the tar writer, within a bounded budget; large
 * files are streamed in 1 MiB reads) and compression on libuv's thread pool.
 * Compression: gzip (default level 6) or zstd (default level 3) from
 * node:zlib, or none. With `parallel` > 1, the tar stream is cut into fixed
 * 4 MiB blocks compressed independently, in parallel, and concatenated as
 * gzip members / zstd frames: still one valid stream for gzip(1), Go's
 * compress/gzip (skopeo, umoci, containerd) and Node's zlib, and still
 * deterministic; but its bytes differ from the single-stream output.
 */
import { randomUUID } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { cpus } from 'node:os';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { TarWriter } from '../archive/tar.ts';
import type { ContentStore, Labels } from '../content/types.ts';
import { type Digest, Digester } from '../digest.ts';
import { errDataLoss, errInvalidArgument, isKilnError, KilnError, wrap } from '../errors.ts';
import { ColdReads } from '../fs/readahead.ts';
import type { Descriptor } from '../images/types.ts';
import type { EmitFn, LayerEntry } from './compare.ts';
import { AsyncQueue } from './queue.ts';

export type Compression = 'gzip' | 'zstd' | 'none';

export const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';

export const LAYER_MEDIA_TYPES: Record<Compression, string> = {
  gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  none: 'application/vnd.oci.image.layer.v1.tar',
};

export interface WriteLayerOptions {
  compression?: Compression;
  /** gzip 1..9 (default 6), zstd 1..22 (default 3). */
  level?: number;
  /** Write sub-second mtimes into the tar (pax records). Default false. */
  subsecond?: boolean;
  /**
   * Compress independent 4 MiB blocks on this many threads (gzip members /
   * zstd frames). 1 (default) is one plain stream.
   */
  parallel?: number;
  /** Content store ingest ref; default a random `layer-<uuid>`. */
  ref?: string;
  /** Extra labels for the blob. */
  labels?: Labels;
  signal?: AbortSignal;
}

export interface WrittenLayer {
  descriptor: Descriptor;
  /** Digest of the uncompressed tar. */
  diffID: Digest;
  uncompressedSize: number;
}

/** Files up to this size are read whole, ahead of the tar writer. */
const SMALL_FILE = 1 << 20;
const PREFETCH_BYTES = 16 << 20;
const PREFETCH_ITEMS = 512;
const READ_CHUNK = 1 << 20;
const BLOCK = 4 << 20;
/** The tar writer's packing buffers (its default size). */
const TAR_BUFFER = 1 << 20;
/** Packing buffers kept for reuse: the tar queue's depth and two more. */
const SPARE_MAX = 10;

interface Item {
  entry: LayerEntry;
  data?: Uint8Array;
}

/**
 * Reads a small file whole, synchronously: open, read and close of a small
 * file cost microseconds in the kernel, and three round trips through
 * libuv's thread pool per file cost more than that on the main thread.
 */
function readWhole(source: string, size: number, name: string): Uint8Array {
  const fd = openSync(source, 'r');
  try {
    const buf = Buffer.allocUnsafe(size);
    let got = 0;
    while (got < size) {
      const n = readSync(fd, buf, got, size - got, got);
      if (n === 0) break;
      got += n;
    }
    if (got !== size) throw changedError(name, source, size, got);
    return buf;
  } finally {
    closeSync(fd);
  }
}

/**
 * A file's bytes in READ_CHUNK pieces, one read ahead. With `reuse`, two
 * buffers take turns: a chunk is overwritten by the read after next, so the
 * consumer must be done with it when it asks for the next one (a TarWriter
 * with `copyAll`).
 */
async function* readStream(
  source: string,
  size: number,
  name: string,
  reuse = false,
): AsyncGenerator<Uint8Array> {
  const fh = await open(source, 'r');
  try {
    let pos = 0;
    const pair = reuse ? [Buffer.allocUnsafe(READ_CHUNK), Buffer.allocUnsafe(READ_CHUNK)] : undefined;
    let turn = 0;
    // One read ahead while the previous chunk is being written.
    const readAt = async (at: number): Promise<Buffer> => {
      const n = Math.min(READ_CHUNK, size - at);
      const buf = pair ? pair[turn++ % 2]!.subarray(0, n) : Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const { bytesRead } = await fh.read(buf, got, n - got, at + got);
        if (bytesRead === 0) throw changedError(name, source, size, at + got);
        got += bytesRead;
      }
      return buf;
    };
    let next: Promise<Buffer> | undefined = size > 0 ? readAt(0) : undefined;
    while (next) {
      const cur = await next;
      pos += cur.length;
      next = pos < size ? readAt(pos) : undefined;
      next?.catch(() => {}); // observed when awaited
      yield cur;
    }
  } finally {
    await fh.close();
  }
}

function changedError(name: string, source: string, size: number, got: number): KilnError {
  return errDataLoss(
    `export layer entry "${name}": file "${source}" changed while reading (${got} of ${size} bytes)`,
  );
}

/** Compresses independent blocks in parallel, keeping their order. */
async function* blockCompress(
  source: AsyncIterable<Uint8Array>,
  compress: (b: Uint8Array) => Promise<Uint8Array>,
  parallel: number,
): AsyncGenerator<Uint8Array> {
  const window: Promise<Uint8Array>[] = [];
  let block = Buffer.allocUnsafe(BLOCK);
  let used = 0;
  const submit = (b: Uint8Array): void => {
    const p = compress(b);
    p.catch(() => {}); // observed below, in order
    window.push(p);
  };
  for await (const chunk of source) {
    let off = 0;
    while (off < chunk.length) {
      const n = Math.min(BLOCK - used, chunk.length - off);
      block.set(chunk.subarray(off, off + n), used);
      used += n;
      off += n;
      if (used === BLOCK) {
        submit(block);
        block = Buffer.allocUnsafe(BLOCK);
        used = 0;
        while (window.length >= parallel) yield await window.shift()!;
      }
    }
  }
  if (used > 0 || window.length === 0) submit(block.subarray(0, used));
  while (window.length) yield await window.shift()!;
}

function compressor(compression: Compression, level: number | undefined, parallel: number) {
  if (compression === 'none') return undefined;
  if (compression === 'gzip') {
    const lvl = level ?? 6;
    if (lvl < 0 || lvl > 9) throw errInvalidArgument(`export layer: invalid gzip level ${lvl}`);
    if (parallel > 1) {
      const gz = promisify(zlib.gzip);
      return (src: AsyncIterable<Uint8Array>) => blockCompress(src, (b) => gz(b, { level: lvl }), parallel);
    }
    return () => zlib.createGzip({ level: lvl, chunkSize: 256 << 10 });
  }
  const lvl = level ?? 3;
  if (lvl < 1 || lvl > 22) throw errInvalidArgument(`export layer: invalid zstd level ${lvl}`);
  const params = { [zlib.constants.ZSTD_c_compressionLevel]: lvl };
  if (parallel > 1) {
    const zs = promisify(zlib.zstdCompress);
    return (src: AsyncIterable<Uint8Array>) => blockCompress(src, (b) => zs(b, { params }), parallel);
  }
  return () => zlib.createZstdCompress({ params, chunkSize: 256 << 10 });
}

/**
 * Runs `produce` (a compare function bound to its trees) and writes the
 * entries it emits as a layer blob into `store`.
 */
export async function writeLayer(
  produce: (emit: EmitFn) => Promise<void>,
  store: ContentStore,
  options: WriteLayerOptions = {},
): Promise<WrittenLayer> {
  const compression = options.compression ?? 'gzip';
  if (!(compression in LAYER_MEDIA_TYPES))
    throw errInvalidArgument(`export layer: unknown compression "${compression}"`);
  const parallel = Math.max(1, Math.min(options.parallel ?? 1, cpus().length * 2));
  const makeCompressor = compressor(compression, options.level, parallel);
  const signal = options.signal;

  // Open the ingest first: if that fails, nothing has started yet.
  const ref = options.ref ?? `layer-${randomUUID()}`;
  const w = await store.writer({ ref, signal });

  const entries = new AsyncQueue<Item>(PREFETCH_ITEMS, PREFETCH_BYTES);
  const tarOut = new AsyncQueue<Uint8Array>(8);
  const diffID = new Digester();

  // Small files not in the page cache: their directories are read ahead (../fs/readahead.ts).
  const cold = new ColdReads(SMALL_FILE);
  const emit: EmitFn = async (entry) => {
    if (signal?.aborted) throw new KilnError('Canceled', 'export layer: canceled', { cause: signal.reason });
    const size = entry.header.size;
    const item: Item = { entry };
    const source = entry.source;
    if (source && entry.header.type === 'file' && size > 0 && size <= SMALL_FILE) {
      item.data = cold.read(source, () => readWhole(source, size, entry.header.name));
    }
    await entries.push(item, item.data ? size : 0);
  };

  const walkTask = produce(emit).then(
    () => entries.close(),
    (err: unknown) => {
      entries.fail(err);
      throw err;
    },
  );
  // Uncompressed, a chunk is done with once the store's writer has written it: its buffer goes
  // back to `spare`, and a layer of any size uses a few MiB of buffers instead of leaving its whole
  // size to the garbage collector (a 230 MB context's layer: ~65 MB of peak RSS).
  // Compressors may hold chunks after they return, so they get new ones.
  const spare: Uint8Array[] = [];
  const pooled = !makeCompressor;
  const tarTask = (async () => {
    const tw = new TarWriter((c) => tarOut.push(c), {
      subsecond: options.subsecond ?? false,
      ...(pooled ? { copyAll: true, take: () => spare.pop() ?? new Uint8Array(TAR_BUFFER) } : {}),
    });
    for (;;) {
      const item = await entries.shift();
      if (!item) break;
      const { header, source } = item.entry;
      if (item.data) await tw.add(header, item.data);
      else if (source && header.type === 'file' && header.size > 0) {
        await tw.add(header, readStream(source, header.size, header.name, pooled));
      } else await tw.add(header);
    }
    await tw.finish();
    tarOut.close();
  })().catch((err: unknown) => {
    entries.fail(err);
    tarOut.fail(err);
    throw err;
  });

  async function* tarStream(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const c = await tarOut.shift();
      if (!c) return;
      // Uncompressed, the blob is the tar: the store's writer hashes it once for both.
      if (makeCompressor) diffID.update(c);
      yield c;
    }
  }

  const sink = async (source: AsyncIterable<Uint8Array>): Promise<void> => {
    for await (const c of source) {
      await w.write(c);
      // A whole packing buffer (the tar writer's, pooled above) is free again.
      if (pooled && c.byteOffset === 0 && c.buffer.byteLength === TAR_BUFFER && spare.length < SPARE_MAX)
        spare.push(new Uint8Array(c.buffer));
    }
  };
  let committed = false;
  try {
    const pipelineTask = (async () => {
      if (!makeCompressor) await sink(tarStream());
      else if (parallel > 1) {
        await sink(
          (makeCompressor as (s: AsyncIterable<Uint8Array>) => AsyncIterable<Uint8Array>)(tarStream()),
        );
      } else {
        await pipeline(Readable.from(tarStream()), (makeCompressor as () => NodeJS.ReadWriteStream)(), sink);
      }
    })().catch((err: unknown) => {
      // Stop the walk and the tar task too.
      entries.fail(err);
      tarOut.fail(err);
      throw err;
    });
    // Every task settles (a failure in one stops the others through the queues).
    const results = await Promise.allSettled([walkTask, tarTask, pipelineTask]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const digest = w.digest();
    const blobSize = w.offset;
    const uncompressed = makeCompressor ? diffID.digest() : digest;
    const labels: Labels = { ...options.labels, [LABEL_UNCOMPRESSED]: uncompressed };
    try {
      await w.commit({ size: blobSize, expected: digest, labels });
    } catch (err) {
      if (!isKilnError(err, 'AlreadyExists')) throw err;
      // Already there (same layer exported before): make sure it carries the label.
      await store.update({ digest, labels: { [LABEL_UNCOMPRESSED]: uncompressed } }, [
        `labels.${LABEL_UNCOMPRESSED}`,
      ]);
    }
    committed = true;
    return {
      descriptor: {
        mediaType: LAYER_MEDIA_TYPES[compression],
        digest,
        size: blobSize,
        annotations: { [LABEL_UNCOMPRESSED]: uncompressed },
      },
      diffID: uncompressed,
      uncompressedSize: makeCompressor ? diffID.size : blobSize,
    };
  } catch (err) {
    await Promise.allSettled([walkTask, tarTask]);
    throw isKilnError(err) ? err : wrap(err, 'export layer');
  } finally {
    if (!committed) {
      await w.close().catch(() => {});
      await store.abort(ref).catch(() => {});
    }
  }
}
