// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the strings are shell expansions, not JS templates
/**
 * The exec op's secret environment variables (LLB `secretEnv`) and its ssh
 * agent mounts with several ids, through real execs on the busybox fixture:
 *
 * - a secret env is visible to the process and nowhere else: not in the
 *   result tree, not in the op bytes (the cache key), not on disk in the
 *   worker's state directory; a missing required secret fails naming the id,
 *   a missing optional one leaves the variable unset.
 * - two real `ssh-agent`s under two ids: the RUN sees both sockets with the
 *   uid/gid/mode asked, and `ssh-add -l` run inside the container (the
 *   host's binary with its libraries, started through their dynamic loader)
 *   lists the key of the agent behind each id.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { image, local, marshal } from '../../src/llb/index.ts';
import { runDirFor } from '../../src/core/rundir.ts';
import { forwardSocket } from '../../src/ops/ssh-forward.ts';
import { collect, type Fixture, logsOf, makeFixture } from './fixture.ts';

const execFileAsync = promisify(execFile);
const SECRET = 'v3ry-s3cret-t0ken-9f8e7d';

let fx: Fixture;
let tmp: string;
const agents: ChildProcess[] = [];

async function startAgent(sock: string): Promise<void> {
  const child = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
  agents.push(child);
  for (let i = 0; i < 200; i++) {
    if ((await fs.lstat(sock).catch(() => undefined))?.isSocket()) return;
    if (child.exitCode !== null) break;
    await sleep(10);
  }
  throw new Error(`ssh-agent did not start on ${sock}`);
}

/** Starts an ssh-agent on `sock` holding one new ed25519 key with comment `comment` (file `tmp/<file>`). */
async function agentWithKey(sock: string, comment: string, file: string): Promise<void> {
  await startAgent(sock);
  const key = path.join(tmp, file);
  await execFileAsync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', key]);
  await execFileAsync('ssh-add', [key], { env: { SSH_AUTH_SOCK: sock } });
}

async function sshAddList(sock: string): Promise<{ code: number; out: string }> {
  try {
    const { stdout } = await execFileAsync('ssh-add', ['-l'], { env: { SSH_AUTH_SOCK: sock } });
    return { code: 0, out: stdout };
  } catch (err) {
    const e = err as { code: number; stdout: string };
    return { code: e.code, out: e.stdout };
  }
}

/** Every file below `dir` whose bytes contain `needle` (sockets and devices skipped). */
async function filesContaining(dir: string, needle: string): Promise<string[]> {
  const hits: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    const data = await fs.readFile(p).catch(() => Buffer.alloc(0));
    if (data.includes(needle)) hits.push(p);
  }
  return hits;
}

before(async () => {
  fx = await makeFixture();
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-exec-ssh-'));
});
after(async () => {
  for (const a of agents) a.kill('SIGTERM');
  await fx?.close();
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

test('a secret env is in the process environment only, overriding the env of the same name', async () => {
  const w = fx.worker({ secrets: { tok: SECRET } });
  // The op carries the value's digest only; the container compares the digest of what it sees.
  const expect = createHash('sha256').update(SECRET).digest('hex');
  const st = image('busybox')
    .addEnv('TOKEN', 'from-image-env')
    .run({
      shell:
        'test "$(printf %s "$TOKEN" | sha256sum | cut -d" " -f1)" = "$EXPECT" && echo "token-ok len=${#TOKEN}" && echo done > /ran',
      env: { EXPECT: expect },
      secretEnv: [{ name: 'TOKEN', id: 'tok' }],
    })
    .root();
  const def = marshal(st);
  for (const op of def.def) assert.ok(!Buffer.from(op).includes(SECRET), 'the op bytes never hold the value');
  const progress = collect();
  const r = await w.solveDefinition(def, { progress });
  try {
    assert.match(logsOf(progress.events), new RegExp(`token-ok len=${SECRET.length}`));
    await fx.read(r, async (dir) => {
      assert.equal(await fs.readFile(path.join(dir, 'ran'), 'utf8'), 'done\n');
    });
  } finally {
    await r.release();
  }
});

test('a secret env leaves no trace in the result or the state directory', async () => {
  const w = fx.worker({ secrets: { tok: SECRET } });
  const st = image('busybox')
    .run({
      // The command proves it saw the value (its length and a prefix) without writing it anywhere.
      shell:
        'echo "len=${#NPM_TOKEN} head=$(echo "$NPM_TOKEN" | cut -c1-4)" && env > /env-dump && echo x > /x',
      secretEnv: [{ name: 'NPM_TOKEN', id: 'tok' }],
    })
    .root();
  const def = marshal(st);
  const progress = collect();
  const r = await w.solveDefinition(def, { progress });
  try {
    assert.match(logsOf(progress.events), new RegExp(`len=${SECRET.length} head=${SECRET.slice(0, 4)}`));
    // The process wrote its environment into the result: the secret is there, which shows the
    // check below would see a leak of any other kind.
    await fx.read(r, async (dir) => {
      assert.match(await fs.readFile(path.join(dir, 'env-dump'), 'utf8'), /^NPM_TOKEN=/m);
    });
    // Nothing the worker keeps (bundles, cache index, snapshots metadata) holds the value.
    const leaks = [
      ...(await filesContaining(fx.root, SECRET)),
      ...(await filesContaining(runDirFor(fx.root), SECRET)),
    ].filter((p) => !p.includes('/snapshots/'));
    assert.deepEqual(leaks, []);
    const bundles = path.join(runDirFor(fx.root), 'bundles');
    assert.deepEqual(await fs.readdir(bundles).catch(() => []), [], 'the bundle tmpfs is gone');
  } finally {
    await r.release();
  }
});

test('while a secret env RUN runs, its bundle (config.json holds the value) is on a tmpfs', async () => {
  const w = fx.worker({ secrets: { tok: SECRET } });
  const st = image('busybox')
    .run({ shell: 'sleep 1.5', secretEnv: [{ name: 'TOKEN', id: 'tok' }] })
    .root();
  const solving = w.solveDefinition(marshal(st));
  const bundles = path.join(runDirFor(fx.root), 'bundles');
  let seen: { fs: string; hasValue: boolean } | undefined;
  for (let i = 0; i < 150 && !seen; i++) {
    for (const b of await fs.readdir(bundles).catch(() => [] as string[])) {
      const config = await fs.readFile(path.join(bundles, b, 'config.json'), 'utf8').catch(() => undefined);
      if (config === undefined) continue;
      const { stdout } = await execFileAsync('stat', ['-f', '-c', '%T', path.join(bundles, b)]);
      seen = { fs: stdout.trim(), hasValue: config.includes(`TOKEN=${SECRET}`) };
    }
    if (!seen) await sleep(10);
  }
  const r = await solving;
  await r.release();
  assert.ok(seen, 'the bundle was seen while the process ran');
  assert.equal(seen.hasValue, true, 'the process env holds the secret');
  assert.equal(seen.fs, 'tmpfs');
});

test('missing secrets: required fails naming the id, optional leaves the variable unset', async () => {
  const w = fx.worker({ secrets: {} });
  await assert.rejects(
    w.solveDefinition(
      marshal(
        image('busybox')
          .run({ shell: 'true', secretEnv: [{ name: 'A', id: 'api-key' }] })
          .root(),
      ),
    ),
    (err: Error) => {
      assert.match(err.message, /secret "api-key" not found/);
      return true;
    },
  );
  const progress = collect();
  const r = await w.solveDefinition(
    marshal(
      image('busybox')
        .run({ shell: 'echo "set=${A+yes}"', secretEnv: [{ name: 'A', id: 'api-key', optional: true }] })
        .root(),
    ),
    { progress },
  );
  await r.release();
  assert.match(logsOf(progress.events), /^set=$/m);
});

test('forwardSocket relays a real ssh agent and applies owner and mode', async () => {
  const agent = path.join(tmp, 'fwd-agent.sock');
  await agentWithKey(agent, 'fwd-key', 'fwd');
  const f = await forwardSocket(path.join(tmp, 'fwd.sock'), agent, { uid: 1234, gid: 99, mode: 0o660 });
  try {
    const st = await fs.lstat(f.path);
    assert.ok(st.isSocket());
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [1234, 99, 0o660]);
    const listed = await sshAddList(f.path);
    assert.equal(listed.code, 0);
    assert.match(listed.out, /fwd-key \(ED25519\)/);
  } finally {
    await f.close();
  }
  assert.equal(await fs.lstat(f.path).catch(() => undefined), undefined, 'close removes the socket');
});

test('two ssh ids: the RUN sees both agents at their targets with their owners and modes', async () => {
  const sockA = path.join(tmp, 'a.sock');
  const sockB = path.join(tmp, 'b.sock');
  await agentWithKey(sockA, 'key-of-a', 'ka');
  await agentWithKey(sockB, 'key-of-b', 'kb');

  // ssh-add and the libraries it loads, run inside the container through their own loader.
  const tools = path.join(tmp, 'tools');
  await fs.mkdir(tools);
  const { stdout } = await execFileAsync('ldd', ['/usr/bin/ssh-add']);
  const libs = [...stdout.matchAll(/(\/\S+\.so[.\d]*)/g)].map((m) => m[1]!);
  for (const f of ['/usr/bin/ssh-add', ...new Set(libs)])
    await fs.copyFile(f, path.join(tools, path.basename(f)));
  const loader = path.basename(libs.find((l) => l.includes('ld-linux'))!);
  const sshAdd = `/tools/${loader} --library-path /tools /tools/ssh-add`;

  const w = fx.worker({ secrets: {}, sshAgents: { default: sockA, deploy: sockB }, locals: { tools } });
  const st = image('busybox')
    .run({
      shell: [
        'test -S /run/a && test -S /run/b',
        'echo "a: $(stat -c "%u %g %a" /run/a)"',
        'echo "b: $(stat -c "%u %g %a" /run/b)"',
        `SSH_AUTH_SOCK=/run/a ${sshAdd} -l | sed "s/^/via-a /"`,
        `SSH_AUTH_SOCK=/run/b ${sshAdd} -l | sed "s/^/via-b /"`,
      ].join(' && '),
      mounts: [
        { type: 'ssh', target: '/run/a' },
        { type: 'ssh', id: 'deploy', target: '/run/b', uid: 1000, gid: 1001, mode: 0o640 },
        { target: '/tools', source: local('tools'), readonly: true },
      ],
    })
    .root();
  const progress = collect();
  const r = await w.solveDefinition(marshal(st), { progress });
  try {
    const logs = logsOf(progress.events);
    assert.match(logs, /^a: 0 0 600$/m);
    assert.match(logs, /^b: 1000 1001 640$/m);
    assert.match(logs, /^via-a .*key-of-a \(ED25519\)$/m);
    assert.match(logs, /^via-b .*key-of-b \(ED25519\)$/m);
    assert.doesNotMatch(logs, /via-a .*key-of-b|via-b .*key-of-a/);
    await fx.read(r, async (dir) => {
      assert.equal(
        await fs.lstat(path.join(dir, 'run/a')).catch(() => undefined),
        undefined,
        'no socket stub left',
      );
    });
  } finally {
    await r.release();
  }
});

test('ssh: an id without an agent fails naming it, unless optional', async () => {
  const w = fx.worker({ secrets: {}, sshAgents: { default: path.join(tmp, 'a.sock') } });
  await assert.rejects(
    w.solveDefinition(
      marshal(
        image('busybox')
          .run({ shell: 'true', mounts: [{ type: 'ssh', id: 'other', target: '/s' }] })
          .root(),
      ),
    ),
    /no ssh agent socket in the session for id "other"/,
  );
  const progress = collect();
  const r = await w.solveDefinition(
    marshal(
      image('busybox')
        .run({
          shell: 'test -e /s || echo no-socket',
          mounts: [{ type: 'ssh', id: 'other', target: '/s', optional: true }],
        })
        .root(),
    ),
    { progress },
  );
  await r.release();
  assert.match(logsOf(progress.events), /^no-socket$/m);
});
