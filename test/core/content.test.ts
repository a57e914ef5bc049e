/**
 * LocalContentStore: the conformance suite, the on-disk layout, and
 * process-level behaviour (a writer SIGKILLed mid-ingest is resumed; two
 * processes on one ref; stale locks; startup cleanup).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { once } from 'node:events';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ingestStream, LocalContentStore } from '../../src/core/content/store.ts';
import { type Digest, sha256 } from '../../src/core/digest.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { runContentStoreConformance } from './content-conformance.ts';
import { pseudoRandom, pseudoRandomDigest } from './fixtures/content-source.ts';

const CHILD = fileURLToPath(new URL('./fixtures/content-child.ts', import.meta.url));
const enc = new TextEncoder();

async function collectAll(source: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const c of source) out.push(c);
  return out;
}

runContentStoreConformance('LocalContentStore', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-content-'));
  return {
    store: new LocalContentStore(join(dir, 'content')),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
});

/** A child process running fixtures/content-child.ts, with its stdout as lines. */
class Child {
  readonly proc: ChildProcess;
  readonly lines: string[] = [];
  readonly exited: Promise<void>;
  #waiters: (() => void)[] = [];

  constructor(args: string[]) {
    this.proc = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      this.lines.push(line);
      for (const w of this.#waiters.splice(0)) w();
    });
    this.exited = new Promise((resolve) => this.proc.once('exit', () => resolve()));
  }

  /** Waits for a line matching `re` (and `accept`); fails if the child exits first or after `ms`. */
  async waitFor(re: RegExp, accept: (m: RegExpExecArray) => boolean = () => true, ms = 20_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      for (const l of this.lines) {
        const m = re.exec(l);
        if (m && accept(m)) return m;
      }
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        throw new Error(`child exited (${this.proc.exitCode ?? this.proc.signalCode}) before ${re}`);
      }
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${re}; got ${this.lines.join(' | ')}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 200);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    await this.exited;
  }
}

async function runChild(args: string[]): Promise<string[]> {
  const c = new Child(args);
  await c.exited;
  assert.equal(c.proc.exitCode, 0, `child ${args.join(' ')} failed`);
  return c.lines;
}

/** Checks the store's invariants: every blob re-hashes to its name, nothing else in blobs/, no ingests left. */
async function assertStoreValid(root: string): Promise<number> {
  const blobDir = join(root, 'blobs', 'sha256');
  const names = await readdir(blobDir);
  for (const name of names) {
    assert.match(name, /^[a-f0-9]{64}$/, `unexpected file in blobs/: ${name}`);
    const h = createHash('sha256');
    for await (const c of createReadStream(join(blobDir, name))) h.update(c as Buffer);
    assert.equal(h.digest('hex'), name, `blob ${name} does not hash to its name`);
    assert.equal((await stat(join(blobDir, name))).mode & 0o777, 0o444);
  }
  assert.deepEqual(await readdir(join(root, 'ingest')).catch(() => []), [], 'ingests left behind');
  return names.length;
}

void describe('LocalContentStore on disk', () => {
  let base: string;
  let n = 0;
  const children: Child[] = [];
  const fresh = async () => {
    const root = join(base, `store-${n++}`);
    return { root, store: new LocalContentStore(root) };
  };
  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'kiln-content-disk-'));
  });
  after(async () => {
    for (const c of children) await c.kill();
    await rm(base, { recursive: true, force: true });
  });
  const child = (args: string[]) => {
    const c = new Child(args);
    children.push(c);
    return c;
  };

  void it('readBlob checks the bytes on disk, then keeps the last 4 MiB of small blobs it read', async () => {
    const { root, store } = await fresh();
    const blobPath = (d: Digest) => join(root, 'blobs', 'sha256', d.slice('sha256:'.length));
    const corrupt = async (d: Digest) => {
      await chmod(blobPath(d), 0o644);
      const b = await readFile(blobPath(d));
      b[0] = b[0]! ^ 0xff;
      await writeFile(blobPath(d), b);
    };
    const put = async (ref: string, data: Uint8Array) => {
      const w = await store.writer({ ref });
      await w.write(data);
      return w.commit();
    };
    // Never read: the damaged bytes on disk are refused.
    const damaged = await put('damaged', Buffer.alloc(1000, 1));
    await corrupt(damaged);
    await assert.rejects(store.readBlob(damaged, 1 << 20), (e) => isKilnError(e, 'DataLoss'));
    // Read once: the verified copy answers from then on (content never changes under its digest).
    const kept = await put('kept', Buffer.alloc(1000, 2));
    await store.readBlob(kept, 1 << 20);
    await corrupt(kept);
    assert.deepEqual(Buffer.from(await store.readBlob(kept, 1 << 20)), Buffer.alloc(1000, 2));
    // 20 blobs of 250 KiB read after it push it out of the 4 MiB: the disk is read again.
    const many: Digest[] = [];
    for (let i = 0; i < 20; i++) many.push(await put(`many-${i}`, Buffer.alloc(250 << 10, 10 + i)));
    for (const d of many) await store.readBlob(d, 1 << 20);
    await assert.rejects(store.readBlob(kept, 1 << 20), (e) => isKilnError(e, 'DataLoss'));
    // The most recent ones are still kept.
    await corrupt(many[19]!);
    assert.deepEqual(Buffer.from(await store.readBlob(many[19]!, 1 << 20)), Buffer.alloc(250 << 10, 29));
  });

  void it('lays out ingests and blobs like containerd', async () => {
    const { root, store } = await fresh();
    const w = await store.writer({ ref: 'layout', total: 5, expected: sha256('hello') });
    await w.write(enc.encode('he'));
    const ingest = join(root, 'ingest', sha256('layout').slice(7));
    assert.deepEqual((await readdir(ingest)).sort(), [
      'data',
      'expected',
      'lock',
      'ref',
      'startedat',
      'total',
      'updatedat',
    ]);
    assert.equal(await readFile(join(ingest, 'ref'), 'utf8'), 'layout');
    assert.equal(await readFile(join(ingest, 'total'), 'utf8'), '5');
    assert.equal(await readFile(join(ingest, 'expected'), 'utf8'), sha256('hello'));
    assert.equal((await readFile(join(ingest, 'lock'), 'utf8')).split(' ')[0], String(process.pid));
    assert.equal(await readFile(join(ingest, 'data'), 'utf8'), 'he');
    await w.write(enc.encode('llo'));
    const d = await w.commit({ labels: { 'kiln.test': 'yes' } });
    const blob = join(root, 'blobs', 'sha256', d.slice(7));
    assert.equal(await readFile(blob, 'utf8'), 'hello');
    const sidecar = JSON.parse(await readFile(join(root, 'labels', 'sha256', `${d.slice(7)}.json`), 'utf8'));
    assert.deepEqual(sidecar.labels, { 'kiln.test': 'yes' });
    assert.equal(await assertStoreValid(root), 1);
    // Labels survive a new store instance on the same root.
    assert.deepEqual((await new LocalContentStore(root).info(d)).labels, { 'kiln.test': 'yes' });
  });

  void it('resumes an ingest whose writer process was SIGKILLed midway', async () => {
    const { root, store } = await fresh();
    const total = 48 << 20;
    const chunk = 1 << 20;
    const c = child(['ingest', root, 'big', String(total), String(chunk), '15']);
    await c.waitFor(/^wrote (\d+)$/, (m) => Number(m[1]) >= 8 << 20);
    await c.kill();
    assert.equal(c.proc.signalCode, 'SIGKILL');
    assert.ok(!c.lines.some((l) => l.startsWith('committed')), 'the child must die before committing');

    const st = await store.status('big');
    assert.ok(st.offset >= 8 << 20 && st.offset < total, `offset ${st.offset}`);
    assert.equal(st.total, total);
    const lock = join(root, 'ingest', sha256('big').slice(7), 'lock');
    assert.equal(
      (await readFile(lock, 'utf8')).split(' ')[0],
      String(c.proc.pid),
      'the dead child left its lock',
    );
    const w = await store.writer({ ref: 'big', total }); // takes it over
    assert.equal(w.offset, st.offset);
    assert.equal(w.digest(), await pseudoRandomDigest(st.offset, chunk));
    await w.close();

    const want = await pseudoRandomDigest(total, chunk);
    // A different chunking of the same stream, so skipping must cut chunks.
    const d = await ingestStream(store, 'big', pseudoRandom(total, 3 << 19), { total, expected: want });
    assert.equal(d, want);
    assert.equal((await store.info(d)).size, total);
    assert.equal(await assertStoreValid(root), 1);
  });

  void it('refuses a ref held by another process and takes it over once that process is dead', async () => {
    const { root, store } = await fresh();
    const holder = child(['hold', root, 'shared', '1234']);
    const pid = Number((await holder.waitFor(/^holding (\d+)$/))[1]);
    assert.equal(pid, holder.proc.pid);

    const [line] = await runChild(['try', root, 'shared']);
    const res = JSON.parse(line) as { code?: string; message?: string };
    assert.equal(res.code, 'Unavailable');
    assert.equal(res.message, `ref "shared" is in use (process ${pid})`);
    await assert.rejects(store.writer({ ref: 'shared' }), (err) => {
      assert.ok(isKilnError(err, 'Unavailable'));
      assert.equal(err.message, `ref "shared" is in use (process ${pid})`);
      return true;
    });
    await assert.rejects(store.abort('shared'), (err) => isKilnError(err, 'Unavailable'));
    assert.deepEqual(await store.cleanupStaleIngests(0), [], 'a held ingest is never cleaned up');

    await holder.kill();
    const [line2] = await runChild(['try', root, 'shared']);
    assert.deepEqual(JSON.parse(line2), { ok: true, offset: 1234 });
    const w = await store.writer({ ref: 'shared' });
    assert.equal(w.offset, 1234);
    await w.close();
  });

  void it('treats a lock of a reused pid (another start time) as stale', async () => {
    const { root, store } = await fresh();
    const w = await store.writer({ ref: 'reused' });
    await w.write(enc.encode('abc'));
    await w.close();
    const lock = join(root, 'ingest', sha256('reused').slice(7), 'lock');
    await writeFile(lock, `${process.pid} 1\n`); // our pid, but a process that started at tick 1
    const w2 = await store.writer({ ref: 'reused' });
    assert.equal(w2.offset, 3);
    assert.match(await readFile(lock, 'utf8'), new RegExp(`^${process.pid} (?!1\\n)\\d+\\n$`));
    // A lock with our pid and our start time is live: refused.
    await assert.rejects(store.writer({ ref: 'reused' }), (err) => isKilnError(err, 'Unavailable'));
    await w2.close();
  });

  void it('treats a lock of a zombie process as stale', async (t) => {
    const { root, store } = await fresh();
    const w = await store.writer({ ref: 'zombie' });
    await w.close();
    // `sleep 0.3` becomes a child of `sleep 30`, which never reaps it: a zombie with a known pid.
    // (It outlives the shell's exec: a child that exited before could be reaped by the shell.)
    const sh = spawn('sh', ['-c', 'sleep 0.3 & echo $!; exec sleep 30'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    t.after(() => sh.kill('SIGKILL'));
    const [line] = (await once(createInterface({ input: sh.stdout! }), 'line')) as [string];
    const pid = Number(line);
    let stat = '';
    for (let i = 0; i < 100 && !/\) Z /.test(stat); i++) {
      await new Promise((r) => setTimeout(r, 20));
      stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    }
    assert.match(stat, /\) Z /, 'the helper process did not become a zombie');
    const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    const lock = join(root, 'ingest', sha256('zombie').slice(7), 'lock');
    await writeFile(lock, `${pid} ${start}\n`);
    const w2 = await store.writer({ ref: 'zombie' });
    assert.equal((await readFile(lock, 'utf8')).split(' ')[0], String(process.pid));
    await w2.close();
  });

  void it('lets exactly one of many concurrent writers take a ref', async () => {
    const { store } = await fresh();
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => store.writer({ ref: 'race' })));
    const won = results.filter((r) => r.status === 'fulfilled');
    assert.equal(won.length, 1);
    for (const r of results) {
      if (r.status === 'rejected') assert.ok(isKilnError(r.reason, 'Unavailable'), String(r.reason));
    }
    await (won[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof store.writer>>>).value.close();

    // The same when they all find a stale lock and race to take it over (several rounds: it is a race).
    const lock = join(store.root, 'ingest', sha256('race').slice(7), 'lock');
    for (let round = 0; round < 10; round++) {
      await writeFile(lock, `${process.pid} 1\n`);
      const again = await Promise.allSettled(Array.from({ length: 8 }, () => store.writer({ ref: 'race' })));
      const winners = again.filter((r) => r.status === 'fulfilled');
      for (const w of winners) await w.value.close();
      assert.equal(winners.length, 1, `round ${round}`);
    }
  });

  void it('cleans up stale ingests at startup, but not fresh or held ones', async (t) => {
    const { root, store } = await fresh();
    const old = new Date(Date.now() - 3_600_000);
    const age = async (ref: string) => {
      const dir = join(root, 'ingest', sha256(ref).slice(7));
      await writeFile(join(dir, 'updatedat'), old.toISOString());
      await utimes(join(dir, 'data'), old, old);
    };
    for (const ref of ['old', 'recent']) {
      const w = await store.writer({ ref });
      await w.write(enc.encode(ref));
      await w.close();
    }
    await age('old');
    const held = await store.writer({ ref: 'held' });
    t.after(() => held.close());
    await held.write(enc.encode('held'));
    await age('held');
    await mkdir(join(root, 'ingest', '.trash-leftover', 'x'), { recursive: true });
    await mkdir(join(root, 'ingest', sha256('half-made').slice(7))); // no ref file
    await utimes(join(root, 'ingest', sha256('half-made').slice(7)), old, old);

    const removed = await store.cleanupStaleIngests(60_000);
    assert.deepEqual(removed.sort(), ['old', sha256('half-made').slice(7)].sort());
    assert.deepEqual(
      (await store.listStatuses()).map((s) => s.ref),
      ['held', 'recent'],
    );
    assert.deepEqual((await readdir(join(root, 'ingest'))).length, 2);
  });

  void it('ingests streams with ingestStream, treating existing content as success', async () => {
    const { root, store } = await fresh();
    const file = join(root, '..', `src-${n}.bin`);
    const data = Buffer.concat(await collectAll(pseudoRandom(5_000_000, 65_536, 'file')));
    await writeFile(file, data);
    const d = await ingestStream(store, 'file', createReadStream(file, { highWaterMark: 1 << 20 }), {
      labels: { src: 'file' },
    });
    assert.equal(d, sha256(data));
    assert.deepEqual((await store.info(d)).labels, { src: 'file' });
    // Existing content: by expected digest (nothing read) and by commit.
    assert.equal(await ingestStream(store, 'again', createReadStream(file), { expected: d }), d);
    assert.equal(await ingestStream(store, 'again', createReadStream(file)), d);
    await assert.rejects(store.status('again'), (err) => isKilnError(err, 'NotFound'));
    // A source shorter than what the ingest already holds cannot be this content.
    const w = await store.writer({ ref: 'short' });
    await w.write(new Uint8Array(100));
    await w.close();
    await assert.rejects(ingestStream(store, 'short', pseudoRandom(10, 10)), (err) =>
      isKilnError(err, 'DataLoss'),
    );
    await assert.rejects(store.status('short'), (err) => isKilnError(err, 'NotFound'));
    await rm(file);
    assert.equal(await assertStoreValid(root), 1);
  });
});
