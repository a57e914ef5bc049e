/**
 * The build progress printers on a scripted event stream (what the solver
 * emits): the plain lines, the tty frame (parallel steps and their logs,
 * CACHED, the header count, width cut), rawjson lines, and the error report
 * with the Dockerfile excerpt and the last output lines.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { PlainPrinter, ProgressModel, RawJsonPrinter, TtyPrinter } from '../../src/cli/progress/index.ts';
import { formatErrorReport } from '../../src/cli/progress/printer.ts';
import type { ProgressEvent } from '../../src/solver/progress.ts';

function sink(): { out: PassThrough; text(): string } {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (b: Buffer) => chunks.push(b));
  return { out, text: () => Buffer.concat(chunks).toString() };
}

const T = 1_700_000_000_000;
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

/** Two steps running at once, one cached step, logs split across chunks. */
const EVENTS: ProgressEvent[] = [
  { type: 'vertex', digest: 'a', name: '[base 1/1] FROM busybox', cached: true, started: T, completed: T },
  { type: 'vertex', digest: 'b', name: '[x 2/2] RUN make', started: T + 10 },
  { type: 'vertex', digest: 'c', name: '[y 2/2] RUN test', started: T + 20 },
  { type: 'log', vertex: 'b', stream: 1, data: enc('compil'), timestamp: T + 110 },
  { type: 'log', vertex: 'c', stream: 2, data: enc('testing 1\ntesting 2\n'), timestamp: T + 220 },
  { type: 'log', vertex: 'b', stream: 1, data: enc('ing main.c\n'), timestamp: T + 300 },
];

test('plain: headers, timed log lines, CACHED and DONE, re-announced on interleaving', async () => {
  const s = sink();
  const p = new PlainPrinter(s.out);
  for (const ev of EVENTS) p.write(ev);
  p.write({ type: 'vertex', digest: 'b', name: '[x 2/2] RUN make', started: T + 10, completed: T + 1210 });
  await p.finish({ results: ['image sha256:1'], warnings: ['w1'] });
  const text = s.text();
  assert.match(text, /^#1 \[base 1\/1\] FROM busybox\n#1 CACHED\n/);
  assert.match(text, /^#3 0\.200 testing 1$/m);
  // The line "compiling main.c" arrived in two chunks; its time is its first byte's.
  assert.match(text, /^#2 0\.100 compiling main\.c$/m);
  assert.match(text, /^#2 DONE 1\.2s$/m);
  // b's header is printed when it starts and again after c's output interleaved.
  assert.equal(text.match(/^#2 \[x 2\/2\] RUN make$/gm)?.length, 2);
  assert.match(text, /^#3 0\.200 testing 2\n\n#2 \[x 2\/2\] RUN make\n#2 0\.100 compiling main\.c$/m);
  assert.match(text, /^WARNING: w1$/m);
  assert.match(text, /^image sha256:1$/m);
  assert.match(text, /^Built in [\d.]+s: 3 steps, 1 cached, 2 run$/m);
});

test('tty: one frame lists every step; running ones show their last log lines side by side', () => {
  const s = sink();
  const p = new TtyPrinter(s.out, { columns: 60, rows: 40, intervalMs: 1_000_000, logLines: 2 });
  for (const ev of EVENTS) p.write(ev);
  const frame = p.frame(false, T + 1000);
  assert.match(frame[0]!, /^\[\+\] Building [\d.]+s \(1\/3\)$/);
  assert.match(frame[1]!, /^ => CACHED \[base 1\/1\] FROM busybox +0\.0s$/);
  const b = frame.findIndex((l) => l.includes('RUN make'));
  const c = frame.findIndex((l) => l.includes('RUN test'));
  assert.ok(b > 0 && c > b, frame.join('\n'));
  assert.deepEqual(frame.slice(b + 1, c), [' => => # compiling main.c']);
  assert.deepEqual(frame.slice(c + 1), [' => => # testing 1', ' => => # testing 2']);
  assert.match(frame[b]!, / 1\.0s$/); // running: the clock ticks
  for (const l of frame) assert.ok(l.length <= 60, l);
  // The final frame has no logs.
  p.write({ type: 'vertex', digest: 'b', name: '[x 2/2] RUN make', started: T + 10, completed: T + 510 });
  p.write({
    type: 'vertex',
    digest: 'c',
    name: '[y 2/2] RUN test',
    started: T + 20,
    error: 'boom',
    completed: T + 520,
  });
  const fin = p.frame(true, T + 2000);
  assert.equal(fin.length, 4);
  assert.match(fin[0]!, /\(3\/3\) FINISHED with errors$/);
  assert.match(fin[3]!, /^ => ERROR \[y 2\/2\] RUN test +0\.5s$/);
});

test('tty: draws in place with cursor-up and erase-below', async () => {
  const s = sink();
  const p = new TtyPrinter(s.out, { columns: 80, rows: 24, intervalMs: 1_000_000 });
  for (const ev of EVENTS) p.write(ev);
  await p.finish({ results: [], warnings: [] });
  assert.match(s.text(), /^\x1b\[J\[\+\] Building/);
});

test('rawjson: one JSON object per event, base64 log data, then the result', async () => {
  const s = sink();
  const p = new RawJsonPrinter(s.out);
  for (const ev of EVENTS) p.write(ev);
  await p.finish({ results: ['r'], warnings: [] });
  const objs = s
    .text()
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(objs.length, EVENTS.length + 1);
  assert.equal(Buffer.from(String(objs[3]!.data), 'base64').toString(), 'compil');
  assert.deepEqual(objs.at(-1), { type: 'result', results: ['r'], warnings: [] });
});

test('error report: failing step, last output lines, Dockerfile lines with the marker', () => {
  const m = new ProgressModel();
  m.apply({ type: 'vertex', digest: 'r', name: '[app 3/3] RUN ./build', started: T });
  m.apply({
    type: 'log',
    vertex: 'r',
    stream: 1,
    data: enc(`${Array.from({ length: 25 }, (_, i) => `line ${i + 1}`).join('\n')}\nno newline at end`),
    timestamp: T,
  });
  const text = formatErrorReport(
    {
      message: 'process "./build" did not complete successfully: exit code 2',
      vertex: { digest: 'r', name: '[app 3/3] RUN ./build' },
      source: {
        filename: 'Dockerfile',
        start: 4,
        end: 5,
        lines: ['FROM a', 'WORKDIR /x', 'COPY . .', 'RUN ./build \\', '  --fast', 'CMD x', ''],
      },
    },
    m,
  );
  assert.match(text, /^ > \[app 3\/3\] RUN \.\/build:$/m);
  assert.match(text, /\(last 10 of 26 lines\)/);
  assert.match(text, /^line 17\nline 18\n/m);
  assert.doesNotMatch(text, /^line 16$/m);
  assert.match(text, /^no newline at end$/m);
  assert.match(text, /^Dockerfile:4-5$/m);
  assert.match(
    text,
    /^ 2 \| {5}WORKDIR \/x\n 3 \| {5}COPY \. \.\n 4 \| >>> RUN \.\/build \\\n 5 \| >>> {3}--fast\n 6 \| {5}CMD x\n-/m,
  );
  assert.match(text, /^error: process "\.\/build" did not complete successfully: exit code 2\n$/m);
});

test('tty: log lines lose colour codes, carriage-return overwrites and tabs', () => {
  const s = sink();
  const p = new TtyPrinter(s.out, { columns: 80, rows: 24, intervalMs: 1_000_000 });
  p.write({ type: 'vertex', digest: 'd', name: 'RUN fetch', started: T });
  p.write({
    type: 'log',
    vertex: 'd',
    stream: 1,
    data: enc('10%\r50%\r\x1b[32mdone\x1b[0m\ta\n'),
    timestamp: T,
  });
  assert.equal(p.frame(false, T).at(-1), ' => => # done    a');
});
