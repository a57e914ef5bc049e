// Read-ahead of directories of small files (core/fs/readahead.ts and the addon's readAheadDir),
// on real files: their page-cache residency is dropped with dd's `nocache` (posix_fadvise
// DONTNEED of each file) and read with fincore(1).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ColdReads } from '../../src/core/fs/readahead.ts';
import { native } from '../../src/core/native/index.ts';

const FILES = 40;
const SIZE = 3000;

/** Bytes of `files` resident in the page cache (fincore). */
function resident(files: string[]): number {
  const out = execFileSync('fincore', ['--bytes', '--raw', '--noheadings', '--output', 'RES', ...files], {
    encoding: 'utf8',
  });
  return out
    .trim()
    .split('\n')
    .reduce((n, l) => n + Number(l.trim()), 0);
}

/** Drops the files' pages from the page cache (dd: posix_fadvise DONTNEED of the whole file). */
function evict(files: string[]): void {
  for (const f of files) execFileSync('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none']);
}

function busyWait(ms: number): void {
  const end = process.hrtime.bigint() + BigInt(ms * 1e6);
  while (process.hrtime.bigint() < end);
}

async function settle(files: string[], want: (bytes: number) => boolean): Promise<number> {
  let bytes = resident(files);
  for (let i = 0; i < 50 && !want(bytes); i++) {
    await new Promise((r) => setTimeout(r, 20));
    bytes = resident(files);
  }
  return bytes;
}

describe('read-ahead of small files', () => {
  let dir = '';
  let small: string[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'kiln-readahead-'));
    small = [];
    for (let i = 0; i < FILES; i++) {
      const f = join(dir, `f${String(i).padStart(2, '0')}`);
      writeFileSync(f, Buffer.alloc(SIZE, i));
      small.push(f);
    }
    writeFileSync(join(dir, 'empty'), '');
    writeFileSync(join(dir, 'large'), Buffer.alloc(64 << 10, 1));
    symlinkSync('f00', join(dir, 'link'));
    mkdirSync(join(dir, 'sub'));
    // Opening a FIFO for reading would wait for a writer: readAheadDir must not open it.
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    execFileSync('sync');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('advises the regular files of 1..maxSize bytes, and nothing else', () => {
    assert.equal(native().readAheadDir(dir, 4096), FILES);
    assert.equal(native().readAheadDir(dir, 64 << 10), FILES + 1);
    assert.equal(native().readAheadDir(join(dir, 'missing'), 4096), 0);
    assert.equal(native().readAheadDir(join(dir, 'f00'), 4096), 0);
  });

  it('reads the directory ahead after two slow reads in a row there, not after one', async (t) => {
    evict(small);
    if (resident(small) !== 0) {
      t.skip('the page cache of this temporary directory cannot be dropped (tmpfs?)');
      return;
    }
    const slow =
      <T>(fn: () => T) =>
      () => {
        busyWait(2);
        return fn();
      };
    const cold = new ColdReads(4096);
    /** A slow read of `file` that reads nothing. */
    const slowRead = (file: string): void =>
      cold.read(
        file,
        slow(() => undefined),
      );
    assert.equal(
      cold.read(
        small[0]!,
        slow(() => 'value'),
      ),
      'value',
    );
    // One slow read, then slow reads split by a read in another directory: no two in a row in
    // this directory. (Only slow reads here: under load, a read meant to be fast may not be.)
    slowRead(join(dir, 'sub', 'x'));
    slowRead(small[0]!);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(resident(small), 0, 'no read-ahead without two slow reads in a row in the directory');

    // Two slow reads in a row there: the rest of the directory is read ahead.
    const data = cold.read(
      small[0]!,
      slow(() => readFileSync(small[0]!)),
    );
    assert.equal(data.length, SIZE);
    const bytes = await settle(small, (b) => b >= FILES * SIZE);
    assert.ok(
      bytes >= FILES * SIZE,
      `all ${FILES} files cached after the read-ahead (${bytes} bytes resident)`,
    );

    // Once per directory: evicted again, more slow reads there advise nothing more.
    evict(small);
    slowRead(small[1]!);
    slowRead(small[1]!);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(resident(small), 0, 'a directory is read ahead once per walk');
  });
});
