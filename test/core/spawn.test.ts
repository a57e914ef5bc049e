/**
 * spawnPiped (src/core/native/spawn.ts): child processes through posix_spawn, watched on a pidfd.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type PipedChild, spawnPiped } from '../../src/core/native/spawn.ts';

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  events: string[];
}

function outcome(child: PipedChild): Promise<Outcome> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const events: string[] = [];
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));
  child.on('exit', () => events.push('exit'));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      events.push('close');
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        events,
      });
    });
  });
}

test('exit code, stdin, stdout and stderr pass through; close comes after exit, with all output', async () => {
  const child = spawnPiped(
    ['sh', '-c', 'read x; echo "out:$x"; echo err >&2; head -c 200000 /dev/zero; exit 3'],
    {
      stdin: 'pipe',
    },
  );
  child.stdin!.end('hello\n');
  const r = await outcome(child);
  assert.equal(r.code, 3);
  assert.equal(r.signal, null);
  assert.ok(r.stdout.startsWith('out:hello\n'));
  assert.equal(r.stdout.length, 'out:hello\n'.length + 200000);
  assert.equal(r.stderr, 'err\n');
  assert.deepEqual(r.events, ['exit', 'close']);
  assert.equal(child.exitCode, 3);
});

test('without a stdin pipe the child reads /dev/null; env replaces the environment', async () => {
  const child = spawnPiped(['sh', '-c', 'cat; echo "[$KILN_SPAWN_TEST][$HOME]"'], {
    stdin: 'ignore',
    env: { PATH: process.env.PATH, KILN_SPAWN_TEST: 'yes' },
  });
  assert.equal(child.stdin, null);
  const r = await outcome(child);
  assert.equal(r.code, 0);
  assert.equal(r.stdout, '[yes][]\n');
});

test('signals: kill reaches the child, default dispositions and an empty mask (Node ignores SIGPIPE)', async () => {
  const sleeper = spawnPiped(['sleep', '30'], { stdin: 'ignore' });
  const pending = outcome(sleeper);
  assert.equal(sleeper.kill('SIGTERM'), true);
  const r = await pending;
  assert.equal(r.code, null);
  assert.equal(r.signal, 'SIGTERM');
  assert.equal(sleeper.kill('SIGTERM'), false, 'no signal to a reaped process');
  // `yes` killed by SIGPIPE when head exits: with SIGPIPE ignored it would complain of EPIPE.
  const pipe = await outcome(spawnPiped(['sh', '-c', 'yes | head -n 1'], { stdin: 'ignore' }));
  assert.equal(pipe.stdout, 'y\n');
  assert.equal(pipe.stderr, '');
});

test('a program that cannot be started emits error (asynchronously), and neither exit nor close', async () => {
  const child = spawnPiped(['kiln-no-such-program'], { stdin: 'pipe' });
  let closed = false;
  child.on('close', () => {
    closed = true;
  });
  const err = await new Promise<NodeJS.ErrnoException>((resolve) => child.on('error', resolve));
  assert.equal(err.code, 'ENOENT');
  assert.match(err.message, /spawn kiln-no-such-program/);
  assert.equal(child.pid, undefined);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(closed, false);
});

test('many children at once each report their own exit', async () => {
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) => outcome(spawnPiped(['sh', '-c', `exit ${i}`], { stdin: 'ignore' }))),
  );
  assert.deepEqual(
    results.map((r) => r.code),
    Array.from({ length: 20 }, (_, i) => i),
  );
});
