/**
 * Cross-process delivery of events: an append-only JSON-lines file,
 * `<root>/events.log`.
 *
 * - Writers (`EventLog.publish`) deliver to their in-process bus, then append
 *   the envelope as one line with one write(2) on a descriptor opened with
 *   O_APPEND (kept open while the path names the same file, see appendFd),
 *   so lines of concurrent writers (several CLI processes) never
 *   interleave or overwrite each other. Appending is synchronous and best
 *   effort: a failure to write the log goes to `onError` and never fails the
 *   operation that published the event.
 * - Readers (`tailEvents`) start at the end of the file (or at its start with
 *   `fromStart`), poll for new complete lines every `pollMs` (default 50 ms),
 *   and skip lines that do not parse. No daemon and no socket are needed: the
 *   file is the broker, and a reader sees every event appended while it runs.
 * - Rotation: when the file is larger than `maxBytes` (default 8 MiB), the
 *   next writer renames it to `events.log.1` (replacing an older one) and
 *   starts a new file; a reader notices the new inode, drains the old
 *   descriptor, reads `events.log.1` when that is a file it has not seen
 *   (it fell behind by one rotation), and follows the new file. Limits: a
 *   reader more than one rotation behind loses the files in between; two
 *   writers rotating at the same instant can push a few events of the newest
 *   file into `.1`, where a reader that has already switched does not see
 *   them.
 * Events are notifications, not a journal: nothing is fsynced.
 */
import { closeSync, fstatSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import { type FileHandle, mkdir, open, stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isErrno } from '../errors.ts';
import { EventBus, type EventFilter, matchFilters, type Publisher } from './bus.ts';
import { type Envelope, type EventPayloads, isTopic, type Topic } from './types.ts';

export const EVENTS_FILE = 'events.log';
const DEFAULT_MAX_BYTES = 8 << 20;

export interface EventLogOptions {
  /** The log file, e.g. `<root>/events.log`. */
  file: string;
  /** In-process bus that also gets every published event; a new one when absent. */
  bus?: EventBus;
  maxBytes?: number;
  onError?: (err: unknown) => void;
}

/** Publishes to an in-process bus and to the shared log file. */
export class EventLog implements Publisher {
  readonly file: string;
  readonly bus: EventBus;
  readonly #maxBytes: number;
  readonly #onError: (err: unknown) => void;

  constructor(options: EventLogOptions) {
    this.file = path.resolve(options.file);
    this.bus = options.bus ?? new EventBus();
    this.#maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
    this.#onError = options.onError ?? (() => undefined);
  }

  publish<T extends Topic>(namespace: string, topic: T, event: EventPayloads[T]): Envelope<T> {
    const env = this.bus.publish(namespace, topic, event);
    this.append(env as Envelope);
    return env;
  }

  /** Appends an envelope as one line (see the module comment). */
  append(env: Envelope): void {
    try {
      let ino = 0;
      try {
        const st = statSync(this.file);
        if (st.size > this.#maxBytes) renameSync(this.file, `${this.file}.1`);
        else ino = st.ino;
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err;
      }
      writeSync(appendFd(this.file, ino), `${JSON.stringify(env)}\n`);
    } catch (err) {
      this.#onError(err);
    }
  }
}

/**
 * Descriptors (O_APPEND) of the log files this process appends to, reused while the path still
 * names the same file: a container's start and removal publish eight events, and an open and a
 * close of the file cost as much as the stat and the write that remain. A descriptor whose file
 * was rotated or removed (by any process) is replaced; one unused for a second is closed.
 */
const appendFds = new Map<string, { fd: number; ino: number; idle: NodeJS.Timeout }>();
const APPEND_FD_IDLE_MS = 1000;

function appendFd(file: string, ino: number): number {
  const held = appendFds.get(file);
  if (held && held.ino === ino) {
    held.idle.refresh();
    return held.fd;
  }
  if (held) dropAppendFd(file);
  const fd = openSync(file, 'a', 0o600);
  const idle = setTimeout(() => dropAppendFd(file), APPEND_FD_IDLE_MS);
  idle.unref();
  appendFds.set(file, { fd, ino: fstatSync(fd).ino, idle });
  return fd;
}

function dropAppendFd(file: string): void {
  const held = appendFds.get(file);
  if (!held) return;
  appendFds.delete(file);
  clearTimeout(held.idle);
  try {
    closeSync(held.fd);
  } catch {
    // already closed: nothing to release
  }
}

export interface TailOptions {
  signal?: AbortSignal;
  /** Read the whole current file first instead of starting at its end. */
  fromStart?: boolean;
  filters?: readonly EventFilter[];
  pollMs?: number;
}

function parseLine(line: string): Envelope | null {
  try {
    const v = JSON.parse(line) as Partial<Envelope>;
    if (typeof v.topic !== 'string' || !isTopic(v.topic) || typeof v.namespace !== 'string') return null;
    if (typeof v.timestamp !== 'string' || typeof v.event !== 'object' || v.event === null) return null;
    return v as Envelope;
  } catch {
    return null;
  }
}

async function inodeOf(file: string): Promise<number | null> {
  try {
    return (await stat(file)).ino;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    throw err;
  }
}

/** Follows the log file and yields the events appended to it (see the module comment). */
export async function* tailEvents(file: string, options: TailOptions = {}): AsyncGenerator<Envelope> {
  const { signal, filters = [], pollMs = 50 } = options;
  await mkdir(path.dirname(file), { recursive: true });
  let fh: FileHandle = await open(file, 'a+', 0o600);
  let ino = (await fh.stat()).ino;
  let pos = options.fromStart ? 0 : (await fh.stat()).size;
  let partial = '';
  const buf = Buffer.alloc(64 * 1024);
  try {
    while (!signal?.aborted) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead > 0) {
        pos += bytesRead;
        partial += buf.subarray(0, bytesRead).toString('utf8');
        const lines = partial.split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) {
          const env = line.trim() === '' ? null : parseLine(line);
          if (env && matchFilters(filters, env)) yield env;
        }
        continue;
      }
      // At the end of our file: has it been rotated?
      const current = await inodeOf(file);
      if (current !== null && current !== ino) {
        // Lines appended to our file between the last read and the rename: read them first.
        if ((await fh.stat()).size > pos) continue;
        await fh.close();
        // When we fell behind by a rotation, `.1` is a file we have not read: read it before the current one.
        const rotatedOut = await inodeOf(`${file}.1`);
        const next = rotatedOut !== null && rotatedOut !== ino ? `${file}.1` : file;
        fh = await open(next, next === file ? 'a+' : 'r', 0o600);
        ino = (await fh.stat()).ino;
        pos = 0;
        partial = '';
        continue;
      }
      try {
        await sleep(pollMs, undefined, signal ? { signal } : {});
      } catch {
        break; // aborted
      }
    }
  } finally {
    await fh.close();
  }
}
