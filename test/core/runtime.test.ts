/**
 * Runs real containers with runc and with crun from a busybox rootfs made by
 * scripts/make-busybox-rootfs.sh. crun 1.8 refuses hybrid cgroup layouts
 * outright; on such a host it is exercised with `hideUnifiedCgroup`.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { detectCgroups } from '../../src/core/runtime/cgroups.ts';
import {
  MNTNS_HELPER,
  OciRuntime,
  probeRuntime,
  type RunOptions,
  type RunResult,
  type RuntimeName,
  runtimeAvailable,
} from '../../src/core/runtime/runtime.ts';
import {
  DEFAULT_CAPABILITIES,
  DEFAULT_PATH,
  generateSpec,
  MASKED_PATHS,
  type SpecOptions,
  writeSpec,
} from '../../src/core/runtime/spec.ts';

const repo = path.resolve(import.meta.dirname, '../..');
let base = '';
let rootfs = '';
let bundles = 0;

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'kiln-runtime-'));
  rootfs = path.join(base, 'rootfs');
  execFileSync('bash', [path.join(repo, 'scripts/make-busybox-rootfs.sh'), rootfs]);
  // A supplementary group for nobody, to see it in `id`.
  await writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\nstaff:x:50:nobody\nnogroup:x:65534:\n');
});

after(async () => {
  await rm(base, { recursive: true, force: true });
});

class Collect extends Writable {
  chunks: Buffer[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.chunks.push(chunk);
    cb();
  }
  get text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

async function bundle(opts: Partial<SpecOptions> & { args: string[] }): Promise<string> {
  const dir = path.join(base, `bundle-${bundles++}`);
  await mkdir(dir);
  const { spec } = await generateSpec({ rootfs, filesDir: dir, ...opts });
  await writeSpec(dir, spec);
  return dir;
}

interface Ran extends RunResult {
  stdout: string;
  stderr: string;
}

async function run(
  rt: OciRuntime,
  spec: Partial<SpecOptions> & { args: string[] },
  opts: Omit<RunOptions, 'stdout' | 'stderr'> & { stdout?: Collect } = {},
): Promise<Ran> {
  const dir = await bundle(spec);
  const stdout = opts.stdout ?? new Collect();
  const stderr = new Collect();
  const r = await rt.run(dir, { ...opts, stdout, stderr });
  return { ...r, stdout: stdout.text, stderr: stderr.text };
}

/** Waits until a collector has seen `text`. */
async function seen(c: Collect, text: string): Promise<void> {
  for (let i = 0; i < 500 && !c.text.includes(text); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(c.text.includes(text), `never saw ${JSON.stringify(text)} in ${JSON.stringify(c.text)}`);
}

/** True while a process exists and is not a zombie. */
async function alive(pid: number): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    let state = '';
    try {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    } catch {
      return false;
    }
    if (state === 'Z') return false;
    await new Promise((r) => setTimeout(r, 10)); // give a SIGKILL time to land
  }
  return true;
}

const layout = await detectCgroups();
const variants: { name: RuntimeName; hide: boolean }[] = [];
if (await runtimeAvailable('runc')) variants.push({ name: 'runc', hide: false });
if (await runtimeAvailable('crun'))
  variants.push({ name: 'crun', hide: layout.mode === 'hybrid' && layout.unifiedControllers.length > 0 });

void describe('generateSpec', () => {
  const v1 = {
    mode: 'v1' as const,
    controllers: new Set(['memory', 'cpu', 'pids', 'devices']),
    unifiedControllers: [],
  };
  const bare = { mode: 'none' as const, controllers: new Set<string>(), unifiedControllers: [] };

  void test("docker's defaults: caps, mounts, masked paths, namespaces, devices", async () => {
    const dir = await mkdtemp(path.join(base, 'spec-'));
    const { spec, warnings } = await generateSpec({ rootfs, args: ['sh'], filesDir: dir, cgroups: v1 });
    assert.deepEqual(warnings, []);
    assert.equal(spec.process.capabilities.bounding.length, 14);
    assert.deepEqual(spec.process.capabilities.effective, [...DEFAULT_CAPABILITIES]);
    assert.deepEqual(spec.linux.maskedPaths, [...MASKED_PATHS]);
    assert.deepEqual(
      spec.linux.namespaces.map((n) => n.type),
      ['pid', 'ipc', 'uts', 'mount', 'network'],
    );
    const byDest = new Map(spec.mounts.map((m) => [m.destination, m]));
    assert.deepEqual(byDest.get('/dev/pts')?.options, [
      'nosuid',
      'noexec',
      'newinstance',
      'ptmxmode=0666',
      'mode=0620',
      'gid=5',
    ]);
    assert.ok(byDest.get('/dev/shm')?.options?.includes('size=67108864'));
    assert.ok(byDest.get('/sys')?.options?.includes('ro'));
    assert.equal(byDest.get('/etc/hosts')?.source, path.join(dir, 'hosts'));
    assert.equal(await readFile(path.join(dir, 'hostname'), 'utf8'), 'kiln\n');
    assert.equal(spec.linux.resources?.devices?.[0].allow, false);
    assert.deepEqual(spec.process.user, { uid: 0, gid: 0 });
    assert.ok(spec.process.env.includes(`PATH=${DEFAULT_PATH}`));
  });

  void test('host network, extra mounts replace defaults and sort under their parents, limits follow the layout', async () => {
    const dir = await mkdtemp(path.join(base, 'spec-'));
    const { spec, warnings } = await generateSpec({
      rootfs,
      args: ['sh'],
      filesDir: dir,
      network: 'host',
      env: ['PATH=/bin', 'A=1', 'A=2'],
      mounts: [
        { type: 'tmpfs', destination: '/dev/shm', size: '1g' },
        { type: 'bind', source: '/etc', destination: '/a/b', readonly: true },
        { type: 'bind', source: '/usr', destination: '/a' },
      ],
      resources: { memory: 1 << 30, cpuQuota: 50000, pids: 10 },
      cgroups: bare,
    });
    assert.deepEqual(
      spec.linux.namespaces.map((n) => n.type),
      ['pid', 'ipc', 'uts', 'mount'],
    );
    assert.equal(spec.hostname, os.hostname());
    assert.equal(spec.mounts.find((m) => m.destination === '/etc/resolv.conf')?.source, '/etc/resolv.conf');
    const shm = spec.mounts.filter((m) => m.destination === '/dev/shm');
    assert.equal(shm.length, 1);
    assert.ok(shm[0].options?.includes(`size=${1 << 30}`));
    const dests = spec.mounts.map((m) => m.destination);
    assert.ok(dests.indexOf('/a') < dests.indexOf('/a/b'));
    assert.deepEqual(spec.mounts.find((m) => m.destination === '/a/b')?.options, ['rbind', 'rprivate', 'ro']);
    assert.deepEqual(spec.process.env.slice(0, 2), ['PATH=/bin', 'A=2']);
    assert.equal(spec.linux.resources, undefined);
    assert.equal(warnings.length, 3);
    const limited = await generateSpec({
      rootfs,
      args: ['sh'],
      filesDir: dir,
      resources: { memory: 1 << 30, cpuQuota: 50000, pids: 10 },
      cgroups: v1,
    });
    assert.deepEqual(limited.spec.linux.resources?.memory, { limit: 1 << 30 });
    assert.deepEqual(limited.spec.linux.resources?.cpu, { quota: 50000, period: 100000 });
    assert.deepEqual(limited.spec.linux.resources?.pids, { limit: 10 });
  });

  void test('bad input is refused', async () => {
    const dir = await mkdtemp(path.join(base, 'spec-'));
    await assert.rejects(generateSpec({ rootfs, args: [], filesDir: dir }), /empty args/);
    await assert.rejects(generateSpec({ rootfs, args: ['x'], cwd: 'tmp', filesDir: dir }), /not absolute/);
    await assert.rejects(
      generateSpec({
        rootfs,
        args: ['x'],
        filesDir: dir,
        mounts: [{ type: 'tmpfs', destination: '/t', size: 'lots' }],
      }),
      /invalid size "lots"/,
    );
  });
});

void test('probeRuntime picks a working runtime and says why others were skipped', async () => {
  const { runtime, tried } = await probeRuntime({ stateDir: path.join(base, 'probe-state') });
  assert.equal(tried.at(-1)?.name, runtime.name);
  assert.equal(tried.at(-1)?.error, undefined);
  for (const t of tried.slice(0, -1)) assert.match(t.error ?? '', /./);
  if (layout.mode === 'hybrid' && layout.unifiedControllers.length > 0) {
    // crun 1.8 cannot run here, so the fallback is taken.
    assert.equal(runtime.name, 'runc');
    assert.match(tried[0].error ?? '', /hybrid/);
  }
  const r = await run(runtime, { args: ['echo', 'probe ok'] });
  assert.deepEqual([r.exitCode, r.stdout], [0, 'probe ok\n']);
});

for (const v of variants) {
  void describe(`${v.name}${v.hide ? ' (cgroup2 hidden)' : ''}`, () => {
    let rt: OciRuntime;
    before(async () => {
      rt = new OciRuntime({
        name: v.name,
        stateDir: path.join(base, `state-${v.name}`),
        hideUnifiedCgroup: v.hide,
      });
      await rt.init();
    });
    after(async () => {
      // Leave nothing behind when a test failed half-way.
      for (const c of await rt.list()) await rt.delete(c.id, { force: true });
    });

    void test('exit codes pass through', async () => {
      const r = await run(rt, { args: ['sh', '-c', 'echo out; echo err >&2; exit 7'] });
      assert.deepEqual([r.exitCode, r.signal, r.stdout, r.stderr], [7, null, 'out\n', 'err\n']);
      assert.equal((await run(rt, { args: ['true'] })).exitCode, 0);
    });

    void test('env, default PATH, HOME and cwd', async () => {
      const r = await run(rt, {
        args: ['sh', '-c', 'echo "$FOO|$PATH|$HOME|$HOSTNAME"; pwd'],
        env: ['FOO=bar baz'],
        cwd: '/tmp',
        hostname: 'box',
      });
      assert.equal(r.stdout, `bar baz|${DEFAULT_PATH}|/root|box\n/tmp\n`);
      const h = await run(rt, { args: ['hostname'], hostname: 'box' });
      assert.equal(h.stdout, 'box\n');
    });

    void test('user by name, with supplementary groups, and uid:gid', async () => {
      const byName = await run(rt, { args: ['id'], user: 'nobody' });
      assert.equal(byName.stdout, 'uid=65534(nobody) gid=65534(nogroup) groups=50(staff)\n');
      const byIds = await run(rt, { args: ['id'], user: '1234:4321' });
      assert.equal(byIds.stdout, 'uid=1234 gid=4321\n');
      await assert.rejects(
        run(rt, { args: ['id'], user: 'ghost' }),
        /unable to find user ghost: no matching entries/,
      );
    });

    void test('stdin is piped in, as a string and as a stream', async () => {
      const a = await run(rt, { args: ['cat'] }, { stdin: 'hello\n' });
      assert.equal(a.stdout, 'hello\n');
      const big = Buffer.alloc(1 << 20, 'x');
      const b = await run(rt, { args: ['sh', '-c', 'wc -c'] }, { stdin: Readable.from([big, big]) });
      assert.equal(b.stdout.trim(), String(2 << 20));
      const c = await run(rt, { args: ['sh', '-c', 'cat; echo end'] });
      assert.equal(c.stdout, 'end\n', 'no stdin reads as empty');
    });

    void test('without stdin the process reads EOF at once, never bytes other processes wrote', async (t) => {
      // A host whose /dev/null was deleted and re-created as a regular file by
      // some `> /dev/null` (seen on this machine) hands whatever other processes
      // "discard" to every reader of /dev/null. Recreate that in a private mount
      // namespace (a file bound over /dev/null) and run Kiln there: containers
      // and an exec without stdin must still read EOF at once, while probes and
      // writers that discard output through that /dev/null run at the same time.
      const poison = path.join(base, `poison-${v.name}`);
      await writeFile(poison, 'LEAK-0\n');
      const stop = `/tmp/stop-${v.name}`; // the rootfs is shared: a name per variant
      const stateDir = path.join(base, `state-poison-${v.name}`);
      const hostId = `poison-host-${v.name}`;
      t.after(async () => {
        // After a failure half-way, the container to exec into may still run.
        await new OciRuntime({ name: v.name, stateDir, hideUnifiedCgroup: v.hide }).delete(hostId, {
          force: true,
        });
        await rm(path.join(rootfs, stop), { force: true });
      });
      const dirs: string[] = [];
      for (let i = 0; i < 3; i++)
        dirs.push(await bundle({ args: ['sh', '-c', 'timeout 3 cat; echo "end $?"'] }));
      // A container to exec into (execInContainer has the same stdin contract).
      const host = await bundle({ args: ['sh', '-c', `echo up; until [ -e ${stop} ]; do sleep 0.05; done`] });
      const runtimeUrl = new URL('../../src/core/runtime/runtime.ts', import.meta.url).href;
      const execUrl = new URL('../../src/core/runtime/exec.ts', import.meta.url).href;
      const helper = `
        import { spawn } from 'node:child_process';
        import { Writable } from 'node:stream';
        const { OciRuntime, runtimeAvailable } = await import(${JSON.stringify(runtimeUrl)});
        const { execInContainer } = await import(${JSON.stringify(execUrl)});
        const a = JSON.parse(process.argv[1]);
        const capture = (argv, stdio) => new Promise((resolve) => {
          const p = spawn(argv[0], argv.slice(1), { stdio });
          let out = '';
          p.stdout?.on('data', (b) => { out += b; });
          p.on('close', () => resolve(out));
        });
        const collector = () => {
          const w = new Writable({ write(c, _e, cb) { w.text += c; cb(); } });
          w.text = '';
          return w;
        };
        // Proof that this namespace leaks: a plain child whose stdin is 'ignore' reads the file.
        const sanity = await capture(['cat'], ['ignore', 'pipe', 'inherit']);
        const rt = new OciRuntime({ name: a.name, stateDir: a.stateDir, hideUnifiedCgroup: a.hide });
        const writers = [1, 2, 3].map((n) =>
          capture(['sh', '-c', 'for i in 1 2 3 4 5 6 7 8; do echo LEAK-$i-' + n + '; sleep 0.02; done'], 'ignore'));
        const probes = [runtimeAvailable('crun'), runtimeAvailable('runc')];
        const runs = a.dirs.map(async (dir) => {
          const out = collector();
          const r = await rt.run(dir, { stdout: out });
          return { exitCode: r.exitCode, out: out.text };
        });
        const up = collector();
        const hostRun = rt.run(a.host, { id: a.hostId, stdout: up });
        const running = () => rt.state(a.hostId).then((st) => st.status === 'running', () => false);
        for (let i = 0; !up.text.includes('up') || !(await running()); i++) {
          if (i === 500) throw new Error('the container to exec into never ran: ' + up.text);
          await new Promise((r) => setTimeout(r, 10));
        }
        const proc = (args) => ({ terminal: false, user: { uid: 0, gid: 0 }, args, env: ['PATH=/bin'], cwd: '/' });
        const execOut = collector();
        const ex = await execInContainer(rt, a.hostId, proc(['sh', '-c', 'timeout 3 cat; echo "end $?"']), { stdout: execOut });
        await execInContainer(rt, a.hostId, proc(['touch', a.stop]));
        const results = await Promise.all(runs);
        results.push({ exitCode: ex.exitCode, out: execOut.text });
        await Promise.all([hostRun, ...writers, ...probes]);
        process.stdout.write(JSON.stringify({ sanity, results }));
      `;
      const args = {
        name: v.name,
        hide: v.hide,
        stateDir,
        dirs,
        host,
        hostId,
        stop,
      };
      const child = spawn(
        'unshare',
        [
          ...[
            '--mount',
            '--propagation',
            'private',
            '--',
            'sh',
            '-c',
            'mount --bind "$0" /dev/null && exec "$@"',
          ],
          ...[poison, process.execPath, '--input-type=module', '-e', helper, JSON.stringify(args)],
        ],
        { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 },
      );
      const out = new Collect();
      const err = new Collect();
      child.stdout.pipe(out);
      child.stderr.pipe(err);
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      assert.equal(code, 0, err.text);
      const got = JSON.parse(out.text) as { sanity: string; results: { exitCode: number; out: string }[] };
      assert.match(got.sanity, /LEAK-0/, 'the bound /dev/null hands out bytes, so a leak would show');
      assert.deepEqual(
        got.results,
        [...dirs, 'exec'].map(() => ({ exitCode: 0, out: 'end 0\n' })),
        'each container and the exec read EOF at once (cat exited 0, not killed by timeout) and nothing else',
      );
    });

    void test('SIGTERM sent with kill reaches the process', async () => {
      const out = path.join(base, `out-${v.name}`);
      await mkdir(out);
      const dir = await bundle({
        args: [
          'sh',
          '-c',
          'trap "echo term > /out/marker; exit 143" TERM; echo ready; while :; do sleep 0.05; done',
        ],
        mounts: [{ type: 'bind', source: out, destination: '/out' }],
      });
      const stdout = new Collect();
      const id = `term-${v.name}`;
      const running = rt.run(dir, { id, stdout });
      await seen(stdout, 'ready');
      assert.equal((await rt.state(id)).status, 'running');
      await rt.kill(id, 'SIGTERM');
      const r = await running;
      assert.equal(r.exitCode, 143);
      assert.equal(await readFile(path.join(out, 'marker'), 'utf8'), 'term\n');
    });

    void test('a signal death gives 128+N and the signal', async () => {
      const dir = await bundle({ args: ['sh', '-c', 'echo ready; exec sleep 30'] });
      const stdout = new Collect();
      const id = `kill-${v.name}`;
      const running = rt.run(dir, { id, stdout });
      await seen(stdout, 'ready');
      await rt.kill(id, 'KILL');
      const r = await running;
      assert.deepEqual([r.exitCode, r.signal], [137, 'SIGKILL']);
    });

    void test('network none leaves only lo; host shares the host interfaces', async () => {
      const none = await run(rt, { args: ['cat', '/proc/net/dev'] });
      const ifaces = (t: string) =>
        t
          .split('\n')
          .slice(2)
          .filter((l) => l.includes(':'))
          .map((l) => l.split(':')[0].trim())
          .sort();
      assert.deepEqual(ifaces(none.stdout), ['lo']);
      const hostIfaces = ifaces(await readFile('/proc/net/dev', 'utf8'));
      const host = await run(rt, { args: ['cat', '/proc/net/dev', '/etc/resolv.conf'], network: 'host' });
      assert.deepEqual(
        ifaces(
          host.stdout
            .split('\n')
            .filter((l) => l.includes('|') || l.includes(':'))
            .join('\n'),
        ).filter((i) => i !== 'nameserver'),
        hostIfaces,
      );
      const hosts = await run(rt, { args: ['cat', '/etc/hosts'] });
      assert.match(hosts.stdout, /^127\.0\.0\.1\tlocalhost$/m);
    });

    void test('a readonly rootfs refuses writes; mounts still work', async () => {
      const r = await run(rt, {
        args: ['sh', '-c', 'touch /newfile; echo $?; echo x > /scratch/f && cat /scratch/f'],
        readonlyRootfs: true,
        mounts: [{ type: 'tmpfs', destination: '/scratch', size: '1m' }],
      });
      assert.equal(r.stdout, '1\nx\n');
      assert.match(r.stderr, /Read-only file system/);
      const rw = await run(rt, { args: ['sh', '-c', 'touch /tmp/ok && echo written'] });
      assert.equal(rw.stdout, 'written\n');
    });

    void test('a missing command gives 127 and docker message; not executable gives 126', async () => {
      const r = await run(rt, { args: ['foo'] });
      assert.equal(r.exitCode, 127);
      assert.equal(r.startError, 'exec: "foo": executable file not found in $PATH');
      assert.equal(r.stderr, '', 'the runtime error is not mixed into the container stderr');
      const s = await run(rt, { args: ['/nonexistent/x'] });
      assert.deepEqual(
        [s.exitCode, s.startError],
        [127, 'exec: "/nonexistent/x": stat /nonexistent/x: no such file or directory'],
      );
      const dir = await run(rt, { args: ['/tmp'] });
      assert.deepEqual([dir.exitCode, dir.startError], [126, 'exec: "/tmp": permission denied']);
      const d = await run(rt, { args: ['/etc/passwd'] });
      assert.equal(d.exitCode, 126);
      assert.equal(d.startError, 'exec: "/etc/passwd": permission denied');
      assert.deepEqual(await rt.list(), []);
    });

    void test('abort mid-run kills and deletes the container', async () => {
      const dir = await bundle({ args: ['sh', '-c', 'echo ready; exec sleep 30'] });
      const stdout = new Collect();
      const ac = new AbortController();
      const id = `abort-${v.name}`;
      const running = rt.run(dir, { id, stdout, signal: ac.signal });
      await seen(stdout, 'ready');
      const { pid } = await rt.state(id);
      assert.ok(existsSync(`/proc/${pid}`));
      ac.abort();
      await assert.rejects(running, (err: unknown) => isKilnError(err, 'Canceled'));
      await assert.rejects(rt.run(dir, { signal: AbortSignal.abort() }), (err: unknown) =>
        isKilnError(err, 'Canceled'),
      );
      assert.deepEqual(await rt.list(), []);
      assert.equal(await alive(pid), false, `container process ${pid} is gone`);
    });

    void test('a terminal: the process sees a tty', async () => {
      // crun 1.8 can drop a terminal's last output when the process exits right
      // after writing it, so every line here is seen before the process ends.
      const stdout = new Collect();
      const stdin = new PassThrough();
      const dir = await bundle({
        args: ['sh', '-c', 'tty; read x; echo "got=$x"; read y; exit 3'],
        terminal: true,
      });
      const running = rt.run(dir, { tty: true, stdin, stdout });
      await seen(stdout, '/dev/pts/');
      stdin.write('hello\n');
      await seen(stdout, 'got=hello\r\n');
      stdin.end(); // end of input reaches the terminal as end-of-file
      const r = await running;
      assert.equal(r.exitCode, 3);
      // Without input the terminal stays open and silent, like docker's -t without -i:
      // `cat` is still waiting when `timeout` stops it (143), it would see EOF at once (0).
      const quiet = await run(
        rt,
        {
          args: ['sh', '-c', 'timeout 1 cat 2>/dev/null; echo "cat=$? $TERM"; sleep 0.2; exit 4'],
          terminal: true,
        },
        { tty: true },
      );
      assert.deepEqual([quiet.exitCode, quiet.stdout, quiet.stderr], [4, 'cat=143 xterm\r\n', '']);
    });

    void test('a container left running by a killed Kiln process is found and deleted', async () => {
      const dir = await bundle({ args: ['sh', '-c', 'echo ready; exec sleep 30'] });
      const id = `orphan-${v.name}`;
      // A separate Kiln process runs the container, then dies by SIGKILL.
      const script = [
        `import { OciRuntime } from ${JSON.stringify(path.join(repo, 'src/core/runtime/runtime.ts'))};`,
        `const rt = new OciRuntime(${JSON.stringify({ name: v.name, stateDir: rt.stateDir, hideUnifiedCgroup: v.hide })});`,
        `await rt.run(${JSON.stringify(dir)}, { id: ${JSON.stringify(id)}, stdout: process.stdout });`,
      ].join('\n');
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      const out = new Collect();
      child.stdout.pipe(out);
      const exited = new Promise((resolve) => child.on('exit', resolve));
      await seen(out, 'ready');
      const { pid } = await rt.state(id);
      child.kill('SIGKILL');
      await exited;
      assert.equal((await rt.state(id)).status, 'running', 'the container outlives its Kiln process');
      assert.deepEqual(await rt.cleanupStale(), [id]);
      assert.deepEqual(await rt.list(), []);
      assert.equal(await alive(pid), false);
    });

    void test('cleanupStale deletes containers whose Kiln process is gone, keeps live ones', async () => {
      const dir = await bundle({ args: ['sleep', '30'] });
      await rt.create(`stale-${v.name}`, dir, { pidFile: path.join(base, `stale-${v.name}.pid`) });
      await rt.create(`live-${v.name}`, dir);
      const pid = Number(await readFile(path.join(base, `stale-${v.name}.pid`), 'utf8'));
      assert.equal((await rt.state(`stale-${v.name}`)).status, 'created');
      // Pretend the stale one's owner was a Kiln process that has since died.
      const dead = execFileSync('sh', ['-c', 'echo $$'], { encoding: 'utf8' }).trim();
      await writeFile(
        path.join(rt.stateDir, 'owners', `${v.name}-stale-${v.name}`),
        JSON.stringify({ pid: Number(dead), start: '1' }),
      );
      assert.deepEqual(await rt.cleanupStale(), [`stale-${v.name}`]);
      assert.equal(await alive(pid), false);
      assert.deepEqual(
        (await rt.list()).map((c) => c.id),
        [`live-${v.name}`],
      );
      // An id in use is refused without disturbing the container that has it.
      await assert.rejects(rt.run(dir, { id: `live-${v.name}` }), (err: unknown) =>
        isKilnError(err, 'AlreadyExists'),
      );
      await assert.rejects(rt.create(`live-${v.name}`, dir), (err: unknown) =>
        isKilnError(err, 'AlreadyExists'),
      );
      assert.deepEqual(await rt.cleanupStale(), [], 'its owner record is intact');
      await rt.start(`live-${v.name}`);
      assert.equal((await rt.state(`live-${v.name}`)).status, 'running');
      await rt.delete(`live-${v.name}`, { force: true });
      assert.deepEqual(await rt.list(), []);
      await assert.rejects(rt.state(`live-${v.name}`), (err: unknown) => isKilnError(err, 'NotFound'));
    });

    void test('resource limits reach the cgroup', {
      skip: !layout.controllers.has('memory') && 'no memory controller',
    }, async () => {
      const r = await run(rt, {
        args: [
          'sh',
          '-c',
          'cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max',
        ],
        resources: { memory: 64 << 20, pids: 50 },
      });
      assert.equal(r.stdout, `${64 << 20}\n50\n`);
    });

    void test('the cgroup2 mount is hidden by kiln-mntns, or by unshare(1) and a shell without it', {
      skip: !v.hide && 'no cgroup2 mount to hide for this runtime here',
    }, async () => {
      assert.equal((await rt.commandLine(['list']))[0], MNTNS_HELPER);
      const shell = new OciRuntime({
        name: v.name,
        stateDir: path.join(base, `state-${v.name}-shell`),
        hideUnifiedCgroup: true,
        namespaceHelper: null,
      });
      assert.equal((await shell.commandLine(['list']))[0], 'unshare');
      const r = await run(shell, { args: ['sh', '-c', 'echo via shell; exit 3'] });
      assert.deepEqual([r.exitCode, r.stdout], [3, 'via shell\n']);
    });
  });
}

void describe('kiln-mntns', () => {
  const hostMounts = (): string => execFileSync('cat', ['/proc/self/mountinfo']).toString();
  const mntns = (args: string[]) =>
    spawnSync(MNTNS_HELPER, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

  void test('runs a program in a private mount namespace with a directory covered by an empty tmpfs', async () => {
    const cover = await mkdtemp(path.join(base, 'cover-'));
    await writeFile(path.join(cover, 'host-file'), 'x');
    const inner = path.join(cover, 'inner');
    const before = hostMounts();
    const r = mntns([
      cover,
      'sh',
      '-c',
      'ls -A "$0"; grep -c " $0 " /proc/self/mountinfo; mkdir "$0/inner"; mount -t tmpfs none "$0/inner" && touch "$0/inner/made"; exit 5',
      cover,
    ]);
    assert.equal(r.stderr, '');
    // Inside: the host's file is hidden (ls prints nothing) and one mount covers the directory.
    assert.deepEqual([r.status, r.stdout], [5, '1\n']);
    // Outside: nothing of it, neither the tmpfs nor the mount made inside.
    assert.equal(hostMounts(), before);
    assert.equal(existsSync(path.join(cover, 'host-file')), true);
    assert.equal(existsSync(inner), false);
  });

  void test('failures: 125 with a message before the exec, 127 for a missing program', async () => {
    const r1 = mntns([path.join(base, 'no-such-dir'), 'true']);
    assert.equal(r1.status, 125);
    assert.match(r1.stderr, /^kiln-mntns: mount tmpfs over .*no-such-dir: No such file or directory\n$/);
    const r2 = mntns([base, 'kiln-no-such-program']);
    assert.equal(r2.status, 127);
    assert.match(r2.stderr, /^kiln-mntns: exec kiln-no-such-program: No such file or directory\n$/);
    const r3 = mntns([base]);
    assert.equal(r3.status, 125);
    assert.match(r3.stderr, /usage: kiln-mntns COVER PROGRAM/);
  });
});
