/**
 * `kiln run/ps/exec/kill/rm/events` through the real CLI binary on a
 * temporary root, with a busybox image made locally (scripts/
 * make-busybox-rootfs.sh → OCI layout → `kiln images import --unpack`),
 * real mounts and a real OCI runtime.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { parseFlags, parseVolume } from '../../src/cli/commands/run.ts';
import { unmountAll } from '../../src/core/mount/mount.ts';
import { runDirFor } from '../../src/core/rundir.ts';
import { makeBusyboxLayout } from '../core/fixtures/busybox-image.ts';

const repo = path.resolve(import.meta.dirname, '../..');
const bin = path.join(repo, 'bin/kiln');
let base = '';
let root = '';

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function start(args: string[], input?: string): ChildProcess {
  // Node's compile cache only makes the many CLI start-ups of this file cheaper.
  const env = { ...process.env, NODE_COMPILE_CACHE: path.join(base, 'node-cache') };
  const child = spawn(bin, ['--root', root, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env });
  if (input !== undefined) child.stdin!.end(input);
  else child.stdin!.end();
  return child;
}

function finish(child: ChildProcess): Promise<Result> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.on('data', (b: Buffer) => err.push(b));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
    );
  });
}

function kiln(args: string[], input?: string): Promise<Result> {
  return finish(start(args, input));
}

/** Resolves when the child's stdout has printed `text`. */
function waitForOutput(child: ChildProcess, text: string, timeoutMs = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(
      () => reject(new Error(`timed out waiting for "${text}"; got "${seen}"`)),
      timeoutMs,
    );
    child.stdout!.on('data', (b: Buffer) => {
      seen += b.toString();
      if (seen.includes(text)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(`${dir}/`));
}

async function runtimeContainers(): Promise<string[]> {
  const out: string[] = [];
  for (const name of ['crun', 'runc']) {
    const d = path.join(runDirFor(root), 'runtime', name);
    if (existsSync(d)) out.push(...(await readdir(d)));
  }
  return out;
}

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'kiln-run-cli-'));
  root = path.join(base, 'root');
  const { layout } = await makeBusyboxLayout(base);
  const r = await kiln(['images', 'import', layout, '--name', 'busybox:latest', '--unpack']);
  assert.equal(r.code, 0, r.stderr);
});

after(async () => {
  if (root) await unmountAll(root).catch(() => undefined);
  await rm(base, { recursive: true, force: true });
});

// Serial on purpose: the overlayfs snapshotter's start-up probe and cleanup are not safe against
// another process opening the same root at the same moment (see the report).
test('run flags: docker-style parsing stops at IMAGE; bundles, = and attached values', async () => {
  const specs = [
    { long: 'interactive', short: 'i', value: false },
    { long: 'tty', short: 't', value: false },
    { long: 'env', short: 'e', value: true, repeat: true },
    { long: 'user', short: 'u', value: true },
  ];
  const p = parseFlags(
    ['-it', '-eA=1', '--env=B=2', '-e', 'C', '-u', 'nobody', 'img', 'ls', '-e', '--tty'],
    specs,
    'run',
  );
  assert.equal(p.flags.get('interactive'), true);
  assert.equal(p.flags.get('tty'), true);
  assert.deepEqual(p.flags.get('env'), ['A=1', 'B=2', 'C']);
  assert.deepEqual(p.flags.get('user'), ['nobody']);
  assert.deepEqual(p.rest, ['img', 'ls', '-e', '--tty']);
  assert.throws(() => parseFlags(['-x', 'img'], specs, 'run'), /unknown flag "-x"/);
  assert.throws(() => parseFlags(['-u'], specs, 'run'), /needs a value/);
  assert.equal(parseFlags(['--help'], specs, 'run').help, true);
  assert.deepEqual(await parseVolume(`${base}/v1:/data:ro`), {
    type: 'bind',
    source: `${base}/v1`,
    destination: '/data',
    readonly: true,
  });
  assert.ok(existsSync(`${base}/v1`));
  await assert.rejects(parseVolume('/x:rel'), /absolute/);
  await assert.rejects(parseVolume('/x'), /want SRC:DST/);
});

describe('kiln run', () => {
  test('passes the exit code and stdout/stderr through', async () => {
    const r = await kiln(['run', '--rm', 'busybox', 'sh', '-c', 'echo out; echo err >&2; exit 42']);
    assert.equal(r.code, 42);
    assert.equal(r.stdout, 'out\n');
    assert.equal(r.stderr, 'err\n');
    // The command's own flags after `--` are not taken for kiln's global ones (-n is --namespace).
    const dd = await kiln(['run', '--rm', 'busybox', '--', 'ls', '-n', '/etc/passwd']);
    assert.equal(dd.code, 0, dd.stderr);
    assert.match(dd.stdout, /^-rw-r--r--\s+1 0\s+0\s/);
  });

  test('sets env, user (name and uid:gid) and working directory', async () => {
    const r = await kiln([
      'run',
      '--rm',
      '-e',
      'FOO=bar baz',
      '--env=EMPTY=',
      '-u',
      'nobody',
      '-w',
      '/tmp',
      'busybox',
      'sh',
      '-c',
      'echo "$FOO|$EMPTY|$HOME"; id; pwd',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'bar baz||/nonexistent\nuid=65534(nobody) gid=65534(nogroup)\n/tmp\n');
    const ids = await kiln([
      'run',
      '--rm',
      '-u',
      '1234:5678',
      'busybox',
      'sh',
      '-c',
      'echo $(id -u):$(id -g)',
    ]);
    assert.equal(ids.stdout, '1234:5678\n', ids.stderr);
  });

  test('pipes stdin with -i, and gives /dev/null without it', async () => {
    const r = await kiln(
      ['run', '--rm', '-i', 'busybox', 'sh', '-c', 'tr a-z A-Z; echo done'],
      'hello\nworld\n',
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'HELLO\nWORLD\ndone\n');
    const none = await kiln(['run', '--rm', 'busybox', 'wc', '-c'], 'ignored');
    assert.equal(none.stdout.trim(), '0');
  });

  test('--net none leaves only lo; --net host sees the host interfaces', async () => {
    const r = await kiln(['run', '--rm', '--net', 'none', 'busybox', 'sh', '-c', 'ls /sys/class/net']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split(/\s+/), ['lo']);
    const host = await kiln(['run', '--rm', '--net', 'host', 'busybox', 'ls', '/sys/class/net']);
    // docker's containers (other test files) add and remove veth pairs meanwhile: compare the rest.
    const stable = (names: string[]) => names.filter((n) => !n.startsWith('veth')).sort();
    const hostIfaces = stable(await readdir('/sys/class/net'));
    assert.deepEqual(stable(host.stdout.trim().split(/\s+/)), hostIfaces);
  });

  test('--read-only refuses writes to the root filesystem, -v mounts a directory', async () => {
    const ro = await kiln(['run', '--rm', '--read-only', 'busybox', 'touch', '/x']);
    assert.equal(ro.code, 1);
    assert.match(ro.stderr, /Read-only file system/);
    const vol = path.join(base, 'vol');
    const rw = await kiln([
      'run',
      '--rm',
      '--read-only',
      '-v',
      `${vol}:/data`,
      'busybox',
      'sh',
      '-c',
      'echo hi > /data/f',
    ]);
    assert.equal(rw.code, 0, rw.stderr);
    assert.equal(await readFile(path.join(vol, 'f'), 'utf8'), 'hi\n');
    const roVol = await kiln([
      'run',
      '--rm',
      '-v',
      `${vol}:/data:ro`,
      'busybox',
      'sh',
      '-c',
      'cat /data/f; echo x > /data/g',
    ]);
    assert.equal(roVol.stdout, 'hi\n');
    assert.notEqual(roVol.code, 0);
    assert.equal(existsSync(path.join(vol, 'g')), false);
  });

  test('-t gives the process a terminal', async () => {
    const r = await kiln([
      'run',
      '--rm',
      '-t',
      'busybox',
      'sh',
      '-c',
      'test -t 0 && test -t 1 && tty && echo $TERM',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^\/dev\/pts\/\d+\r?\nxterm\r?\n$/);
    const noTty = await kiln(['run', '--rm', 'busybox', 'sh', '-c', 'test -t 1 || echo notty']);
    assert.equal(noTty.stdout, 'notty\n');
  });

  test('a missing command or image gives a clear error and docker exit codes', async () => {
    const cmd = await kiln(['run', '--rm', '--name', 'nocmd', 'busybox', 'no-such-command']);
    assert.equal(cmd.code, 127);
    assert.match(cmd.stderr, /exec: "no-such-command": executable file not found in \$PATH/);
    const path127 = await kiln(['run', '--rm', 'busybox', '/bin/missing']);
    assert.equal(path127.code, 127);
    assert.match(path127.stderr, /no such file or directory/);
    const perm = await kiln(['run', '--rm', 'busybox', '/etc/passwd']);
    assert.equal(perm.code, 126);
    assert.match(perm.stderr, /permission denied/);
    const img = await kiln(['run', '--rm', 'no-such-image', 'true']);
    assert.equal(img.code, 125);
    assert.match(img.stderr, /image "no-such-image" not found/);
    // --rm removed the container of the failed start too.
    const ps = await kiln(['ps', '-aq']);
    assert.equal(ps.stdout, '');
    assert.deepEqual(await mountsUnder(path.join(runDirFor(root), 'containers')), []);
  });

  test('SIGTERM sent to kiln reaches the process; the task is cleaned up', async () => {
    const child = start([
      'run',
      '--rm',
      '--name',
      'term',
      'busybox',
      'sh',
      '-c',
      'trap "echo got TERM; exit 3" TERM; echo ready; while true; do sleep 0.1; done',
    ]);
    const done = finish(child);
    await waitForOutput(child, 'ready');
    child.kill('SIGTERM');
    const r = await done;
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, 'ready\ngot TERM\n');
    assert.deepEqual(await mountsUnder(path.join(runDirFor(root), 'containers')), []);
    assert.deepEqual(await runtimeContainers(), []);
  });

  test('--help shows options and examples', async () => {
    const r = await kiln(['run', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /--read-only/);
    assert.match(r.stdout, /Examples:/);
  });
});

describe('kiln ps, exec, kill, rm, events', () => {
  test('a running container can be listed, exec-ed into, killed and removed; events show it all', async () => {
    const events = start([
      'events',
      '--json',
      '--from-start',
      '--filter',
      'topic==/containers/*',
      '--filter',
      'topic==/tasks/*',
    ]);
    const eventsDone = finish(events);
    const child = start(['run', '--name', 'svc', 'busybox', 'sh', '-c', 'echo ready; exec sleep 600']);
    const done = finish(child);
    await waitForOutput(child, 'ready');

    const ps = await kiln(['ps']);
    assert.equal(ps.code, 0, ps.stderr);
    assert.match(ps.stdout, /^svc\s+docker\.io\/library\/busybox:latest\s+"sh -c .*Up/m);

    const ex = await kiln([
      'exec',
      '-e',
      'A=1',
      '-u',
      'nobody',
      '-w',
      '/tmp',
      'svc',
      'sh',
      '-c',
      'echo $A; id -u; pwd; ps -o comm | grep -c sleep',
    ]);
    assert.equal(ex.code, 0, ex.stderr);
    assert.equal(ex.stdout, '1\n65534\n/tmp\n1\n');
    const exIn = await kiln(['exec', '-i', 'svc', 'cat'], 'piped');
    assert.equal(exIn.stdout, 'piped');
    const exCode = await kiln(['exec', 'svc', 'sh', '-c', 'exit 5']);
    assert.equal(exCode.code, 5);
    const exMissing = await kiln(['exec', 'svc', 'nope']);
    assert.equal(exMissing.code, 127);

    const rmRunning = await kiln(['rm', 'svc']);
    assert.equal(rmRunning.code, 1);
    assert.match(rmRunning.stderr, /running/);

    const kill = await kiln(['kill', 'svc']);
    assert.equal(kill.code, 0, kill.stderr);
    const r = await done;
    assert.equal(r.code, 137);

    const psAll = await kiln(['ps', '-a']);
    assert.match(psAll.stdout, /svc .*Exited \(137\)/);
    assert.equal((await kiln(['ps', '-q'])).stdout, '');
    const notRunning = await kiln(['exec', 'svc', 'true']);
    assert.equal(notRunning.code, 125);
    assert.match(notRunning.stderr, /not running/);

    assert.equal((await kiln(['rm', 'svc'])).code, 0);
    assert.equal((await kiln(['ps', '-aq'])).stdout, '');
    // The snapshot went with it.
    const snaps = await kiln(['snapshot', 'ls']);
    assert.doesNotMatch(snaps.stdout, /container\/svc/);

    // Give the follower a moment to read the last lines, then stop it.
    const deadline = Date.now() + 5000;
    let seen = '';
    events.stdout!.on('data', (b: Buffer) => (seen += b.toString()));
    while (!seen.includes('/containers/delete') && Date.now() < deadline) await sleep(50);
    events.kill('SIGINT');
    const ev = await eventsDone;
    const topics = ev.stdout
      .trim()
      .split('\n')
      .map(
        (l) =>
          JSON.parse(l) as { topic: string; event: { id?: string; containerId?: string; exitCode?: number } },
      )
      .filter((e) => e.event.id === 'svc' || e.event.containerId === 'svc');
    assert.deepEqual(
      topics.map((e) => e.topic),
      [
        '/containers/create',
        '/tasks/start',
        '/tasks/exec-added',
        '/tasks/exec-added',
        '/tasks/exec-added',
        '/tasks/exec-added',
        '/tasks/exit',
        '/tasks/delete',
        '/containers/delete',
      ],
    );
    assert.equal(topics.find((e) => e.topic === '/tasks/exit')?.event.exitCode, 137);
  });

  test('after a kill -9 of kiln mid-run, the next start leaves no stale mount, container or --rm record', async () => {
    const child = start([
      'run',
      '--rm',
      '--name',
      'crashme',
      'busybox',
      'sh',
      '-c',
      'echo ready; exec sleep 600',
    ]);
    const done = finish(child);
    await waitForOutput(child, 'ready');
    assert.equal((await mountsUnder(path.join(runDirFor(root), 'containers'))).length, 1);
    assert.deepEqual(await runtimeContainers(), ['default.crashme']);
    child.kill('SIGKILL');
    await done;
    // Kiln is gone; its container, mount and record are still there.
    assert.equal((await mountsUnder(path.join(runDirFor(root), 'containers'))).length, 1);
    const ps = await kiln(['ps', '-aq']);
    assert.equal(ps.code, 0, ps.stderr);
    assert.equal(ps.stdout, '');
    assert.deepEqual(await mountsUnder(path.join(runDirFor(root), 'containers')), []);
    assert.deepEqual(await runtimeContainers(), []);
    // A container of the same name can be run again.
    const again = await kiln(['run', '--rm', '--name', 'crashme', 'busybox', 'true']);
    assert.equal(again.code, 0, again.stderr);
  });

  test('a kept container whose kiln was killed is marked exited (255) and can be removed', async () => {
    const child = start(['run', '--name', 'kept', 'busybox', 'sh', '-c', 'echo ready; exec sleep 600']);
    const done = finish(child);
    await waitForOutput(child, 'ready');
    child.kill('SIGKILL');
    await done;
    const ps = await kiln(['ps', '-a']);
    assert.match(ps.stdout, /kept .*Exited \(255\)/);
    assert.deepEqual(await mountsUnder(path.join(runDirFor(root), 'containers')), []);
    assert.equal((await kiln(['rm', 'kept'])).code, 0);
  });

  test('kiln events shows events written by other kiln processes', async () => {
    await writeFile(path.join(base, 'marker'), '');
    const events = start(['events', '--filter', 'topic==/containers/create']);
    const eventsDone = finish(events);
    let seen = '';
    events.stdout!.on('data', (b: Buffer) => (seen += b.toString()));
    // Run containers until the follower (which starts at the end of the log) has seen one.
    const deadline = Date.now() + 15_000;
    while (!seen.includes('/containers/create') && Date.now() < deadline) {
      await kiln(['run', '--rm', 'busybox', 'true']);
    }
    events.kill('SIGTERM');
    const r = await eventsDone;
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      seen,
      /^\S+Z default \/containers\/create \{"id":"[0-9a-f]{12}","image":"docker\.io\/library\/busybox:latest"/m,
    );
  });
});
