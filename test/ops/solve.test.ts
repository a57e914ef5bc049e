/**
 * The ops and the worker through the solver, with real execs (busybox rootfs,
 * crun/runc): concurrency, caching, content-based keys, sharing,
 * cancellation, cache mounts and secrets.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { isKilnError } from '../../src/core/errors.ts';
import { tempMountRoot } from '../../src/core/mount/mount.ts';
import { readMountinfo } from '../../src/core/mount/mountinfo.ts';
import { copy, image, local, marshal, merge } from '../../src/llb/index.ts';
import type { ProgressEvent, VertexEvent } from '../../src/solver/progress.ts';
import { collect, type Fixture, logsOf, makeFixture } from './fixture.ts';

const execFileAsync = promisify(execFile);

let fx: Fixture;
before(async () => {
  fx = await makeFixture();
});
after(async () => {
  await fx?.close();
});

function execRuns(events: ProgressEvent[], match: RegExp): VertexEvent[] {
  return events.filter(
    (e): e is VertexEvent =>
      e.type === 'vertex' &&
      match.test(e.name) &&
      !e.cached &&
      e.started !== undefined &&
      e.completed !== undefined &&
      !e.error,
  );
}

test('independent execs run at the same time (their intervals overlap)', async () => {
  const w = fx.worker({}, { parallelism: 2 });
  const a = image('busybox').run({ shell: 'sleep 1; echo a > /a' });
  const b = image('busybox').run({ shell: 'sleep 1; echo b > /b' });
  const p = collect();
  const r = await w.solveDefinition(marshal(merge([a.root(), b.root()])), { progress: p });
  const ra = execRuns(p.events, /echo a/)[0];
  const rb = execRuns(p.events, /echo b/)[0];
  assert.ok(ra && rb, 'both execs ran');
  assert.ok(ra.started! < rb.completed! && rb.started! < ra.completed!, 'intervals overlap');
  const files = await fx.read(r, async (d) => [
    await fs.readFile(`${d}/a`, 'utf8'),
    await fs.readFile(`${d}/b`, 'utf8'),
  ]);
  assert.deepEqual(files, ['a\n', 'b\n']);
  await r.release();
});

test('a second solve of the same definition runs no exec, also from a new worker', async () => {
  const def = marshal(image('busybox').run({ shell: 'echo $RANDOM > /rand' }).root());
  const w1 = fx.worker();
  const p1 = collect();
  const r1 = await w1.solveDefinition(def, { progress: p1 });
  assert.equal(execRuns(p1.events, /echo/).length, 1);
  for (const w of [w1, fx.worker()]) {
    const p2 = collect();
    const r2 = await w.solveDefinition(def, { progress: p2 });
    assert.equal(execRuns(p2.events, /./).length, 0, 'nothing ran');
    assert.ok(p2.events.some((e) => e.type === 'vertex' && e.cached));
    assert.equal(r2.id, r1.id);
    await r2.release();
  }
  await r1.release();
});

test('a change outside a copy selection does not invalidate it; a change inside does', async () => {
  const ctxDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-ctx-'));
  try {
    await fs.mkdir(`${ctxDir}/src`);
    await fs.mkdir(`${ctxDir}/docs`);
    await fs.writeFile(`${ctxDir}/src/main.c`, 'int main(){}\n');
    await fs.writeFile(`${ctxDir}/docs/readme`, 'v1\n');
    const ctx = local('context');
    const st = image('busybox')
      .file(copy(ctx, '/src', '/app/src', { createDestPath: true }))
      .run({ shell: 'cat /app/src/main.c > /built' });
    const def = marshal(st.root());
    const w = fx.worker({ locals: { context: ctxDir } });
    const solve = async (): Promise<ProgressEvent[]> => {
      const p = collect();
      const r = await w.solveDefinition(def, { progress: p });
      await r.release();
      return p.events;
    };
    const first = await solve();
    assert.equal(execRuns(first, /^copy/).length, 1);
    assert.equal(execRuns(first, /^exec/).length, 1);

    await fs.writeFile(`${ctxDir}/docs/readme`, 'v2, a change outside the selection\n');
    const second = await solve();
    assert.equal(execRuns(second, /^local:/).length, 1, 'the context itself is re-read');
    assert.equal(execRuns(second, /^copy/).length, 0, 'copy not invalidated');
    assert.equal(execRuns(second, /^exec/).length, 0, 'exec not invalidated');

    // An exec reading the context through a read-only mount with a selector behaves the same.
    const ro = marshal(
      image('busybox')
        .run({
          shell: 'cat /ctx/main.c > /seen',
          mounts: [{ target: '/ctx', source: ctx, selector: '/src', readonly: true }],
        })
        .root(),
    );
    const solveRo = async (): Promise<ProgressEvent[]> => {
      const p = collect();
      const r = await w.solveDefinition(ro, { progress: p });
      await r.release();
      return p.events;
    };
    assert.equal(execRuns(await solveRo(), /^exec/).length, 1);
    await fs.writeFile(`${ctxDir}/docs/readme`, 'v3\n');
    assert.equal(execRuns(await solveRo(), /^exec/).length, 0, 'read-only mount selector: not invalidated');

    await fs.writeFile(`${ctxDir}/src/main.c`, 'int main(){return 1;}\n');
    const third = await solve();
    assert.equal(execRuns(third, /^copy/).length, 1, 'copy re-runs');
    assert.equal(execRuns(third, /^exec/).length, 1, 'exec re-runs');
    assert.equal(execRuns(await solveRo(), /^exec/).length, 1, 'read-only mount selector: invalidated');
  } finally {
    await fs.rm(ctxDir, { recursive: true, force: true });
  }
});

test('two concurrent solves sharing a vertex run it once', async () => {
  const w = fx.worker();
  const shared = image('busybox').run({
    shell: 'echo run >> /counter/runs; sleep 0.5; echo shared > /s',
    mounts: [{ type: 'cache', target: '/counter', id: 'share-counter' }],
  });
  const d1 = marshal(shared.run({ shell: 'echo one > /one' }).root());
  const d2 = marshal(shared.run({ shell: 'echo two > /two' }).root());
  const [p1, p2] = [collect(), collect()];
  const [r1, r2] = await Promise.all([
    w.solveDefinition(d1, { progress: p1 }),
    w.solveDefinition(d2, { progress: p2 }),
  ]);
  const check = await fx.worker().solveDefinition(
    marshal(
      image('busybox')
        .run({
          shell: 'wc -l < /counter/runs > /count',
          mounts: [{ type: 'cache', target: '/counter', id: 'share-counter' }],
        })
        .root(),
    ),
  );
  const count = await fx.read(check, (d) => fs.readFile(`${d}/count`, 'utf8'));
  assert.equal(count.trim(), '1', 'the shared exec ran once');
  assert.equal(execRuns(p1.events, /echo run/).length, 1, 'both solves saw its run');
  assert.equal(execRuns(p2.events, /echo run/).length, 1);
  await Promise.all([r1.release(), r2.release(), check.release()]);
});

async function processesWith(token: string): Promise<number> {
  let n = 0;
  for (const pid of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const cmd = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(token)) n++;
  }
  return n;
}

test('cancelling mid-exec leaves no process, mount, lease or active snapshot behind', async () => {
  const w = fx.worker();
  const token = `kiln-cancel-${process.pid}-${Date.now()}`;
  const def = marshal(
    image('busybox')
      .run({ args: ['sh', '-c', `sleep 30; echo ${token}`] })
      .root(),
  );
  const ac = new AbortController();
  const p = collect();
  const solving = w.solveDefinition(def, { signal: ac.signal, progress: p });
  for (let i = 0; i < 200 && (await processesWith(token)) === 0; i++)
    await new Promise((r) => setTimeout(r, 50));
  assert.ok((await processesWith(token)) > 0, 'the exec started');
  ac.abort();
  await assert.rejects(solving, (err: Error & { code?: string }) => err.code === 'Canceled');
  assert.equal(await processesWith(token), 0, 'no process left');
  // Only this process's temporary mounts (m-<pid>-…): other test files share the temp root.
  const mine = `${tempMountRoot()}/m-${process.pid}-`;
  const mounts = (await readMountinfo()).filter(
    (m) => m.mountPoint.startsWith(mine) || m.mountPoint.startsWith(fx.root),
  );
  assert.deepEqual(
    mounts.map((m) => m.mountPoint),
    [],
    'no mount left',
  );
  assert.deepEqual(fx.core.leases.list(), [], 'no lease left');
  const live: string[] = [];
  await (await fx.core.snapshotter()).walk((i) => {
    if (i.kind !== 'committed') live.push(i.name);
  });
  assert.deepEqual(live, [], 'no active or view snapshot left');
  const runtimeList = await fx.runtime.list();
  assert.deepEqual(
    runtimeList.filter((c) => c.id.startsWith('kiln-exec-')),
    [],
    'no container left',
  );
});

test('a cache mount keeps its contents across solves and is not in the result', async () => {
  const w = fx.worker();
  const mounts = [
    { type: 'cache' as const, target: '/var/cache/app', id: 'keep-test', sharing: 'locked' as const },
  ];
  const r1 = await w.solveDefinition(
    marshal(
      image('busybox').run({ shell: 'echo first > /var/cache/app/data; echo done > /done', mounts }).root(),
    ),
  );
  const r2 = await w.solveDefinition(
    marshal(image('busybox').run({ shell: 'cat /var/cache/app/data > /seen', mounts }).root()),
  );
  assert.equal(await fx.read(r2, (d) => fs.readFile(`${d}/seen`, 'utf8')), 'first\n');
  for (const r of [r1, r2]) {
    const entries = await fx.read(r, (d) => fs.readdir(`${d}/var/cache/app`).catch(() => [] as string[]));
    assert.deepEqual(entries, [], 'cache contents are not in the result');
  }
  assert.equal(await fx.read(r1, (d) => fs.readFile(`${d}/done`, 'utf8')), 'done\n');
  await Promise.all([r1.release(), r2.release()]);
});

test('locked cache mounts serialize their users; a cache can be seeded from a state', async () => {
  const w = fx.worker({}, { parallelism: 2 });
  const user = (n: number) =>
    image('busybox').run({
      // Fails if another exec holds the "lock" directory at the same time.
      shell: `mkdir /c/busy && sleep 0.4 && rmdir /c/busy && echo ${n} >> /c/log`,
      mounts: [{ type: 'cache', target: '/c', id: 'locked-test', sharing: 'locked' }],
    });
  const r = await w.solveDefinition(marshal(merge([user(1).root(), user(2).root()])));
  await r.release();
  const seeded = await w.solveDefinition(
    marshal(
      image('busybox')
        .run({
          shell: 'cat /c/etc/group > /seen',
          mounts: [{ type: 'cache', target: '/c', id: 'seeded', source: image('busybox') }],
        })
        .root(),
    ),
  );
  assert.match(await fx.read(seeded, (d) => fs.readFile(`${d}/seen`, 'utf8')), /^root:x:0:/);
  await seeded.release();
});

test('a secret is readable in the exec and absent from the result and the cache', async () => {
  const secret = `S3CR3T-${Date.now()}-value`;
  const w = fx.worker({ secrets: { token: secret } });
  const st = image('busybox').run({
    shell: 'grep -q S3CR3T /run/secrets/token && echo readable > /ok; ls -ln /run/secrets/token > /meta',
    mounts: [{ type: 'secret', target: '/run/secrets/token', id: 'token', mode: 0o440, uid: 65534, gid: 0 }],
  });
  const r = await w.solveDefinition(marshal(st.root()));
  const [ok, meta] = await fx.read(r, async (d) => [
    await fs.readFile(`${d}/ok`, 'utf8'),
    await fs.readFile(`${d}/meta`, 'utf8'),
  ]);
  assert.equal(ok, 'readable\n');
  assert.match(meta, /^-r--r-----\s+1 65534\s+0\s/);
  // Nothing under the Kiln root (snapshots, cache index, op state) holds the secret.
  const { stdout } = await execFileAsync('grep', ['-rl', '--', secret, fx.root]).catch(
    (e: { stdout: string; code: number }) => {
      if (e.code === 1) return { stdout: '' };
      throw e;
    },
  );
  assert.equal(stdout, '', 'secret found on disk');
  // Without the secret in the session, the exec fails (it is not optional).
  const w2 = fx.worker();
  await assert.rejects(
    w2.solveDefinition(
      marshal(
        image('busybox')
          .run({ shell: 'true', mounts: [{ type: 'secret', target: '/s', id: 'missing' }] })
          .root(),
      ),
    ),
    /secret "missing" not found/,
  );
  await r.release();
});

test('a failing exec names the command and the exit code', async () => {
  const w = fx.worker();
  const p = collect();
  await assert.rejects(
    w.solveDefinition(marshal(image('busybox').run({ shell: 'echo oops >&2; exit 3' }).root()), {
      progress: p,
    }),
    /process "\/bin\/sh -c echo oops >&2; exit 3" did not complete successfully: exit code 3/,
  );
  assert.match(logsOf(p.events), /oops/);
});

test('an exec whose command cannot be started fails with exit code 1, as BuildKit', async () => {
  const w = fx.worker();
  await assert.rejects(
    w.solveDefinition(
      marshal(
        image('busybox')
          .run({ args: ['/no/such/binary', 'arg'] })
          .root(),
      ),
    ),
    (err: unknown) =>
      isKilnError(err, 'NotFound') &&
      /process "\/no\/such\/binary arg" did not complete successfully: exit code 1: exec: "\/no\/such\/binary": stat/.test(
        err.message,
      ),
  );
});
