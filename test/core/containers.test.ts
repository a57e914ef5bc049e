/**
 * The container core: typed events (in-process bus, cross-process log),
 * container records, tasks, exec, kill, delete, GC protection and startup
 * recovery, on a temporary root with a locally made busybox image and a
 * real OCI runtime.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, statfsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { ContainerService, mergeEnv, openContainers } from '../../src/core/containers/index.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { type Envelope, EventBus, parseFilter, tailEvents } from '../../src/core/events/index.ts';
import { importImages } from '../../src/core/images/index.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { mountAll, unmountAll } from '../../src/core/mount/mount.ts';
import { runDirFor } from '../../src/core/rundir.ts';
import { makeBusyboxLayout } from './fixtures/busybox-image.ts';

let base = '';
let core: Core;
let svc: ContainerService;

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'kiln-containers-'));
  const { layout } = await makeBusyboxLayout(base);
  core = await openCore({ root: path.join(base, 'root'), namespace: 'default' });
  // Imported without unpacking: the first create unpacks.
  await importImages(core, layout, { name: 'busybox:latest' });
  svc = await openContainers(core);
});

after(async () => {
  if (core) {
    await unmountAll(core.root).catch(() => undefined);
    await core.close();
  }
  await rm(base, { recursive: true, force: true });
});

function collect(): { stream: PassThrough; text: () => string; waitFor: (s: string) => Promise<void> } {
  const stream = new PassThrough();
  let buf = '';
  const waiters: { s: string; resolve: () => void }[] = [];
  stream.on('data', (b: Buffer) => {
    buf += b.toString();
    for (const w of waiters.filter((x) => buf.includes(x.s))) w.resolve();
  });
  return {
    stream,
    text: () => buf,
    waitFor: (s) =>
      new Promise<void>((resolve) => (buf.includes(s) ? resolve() : waiters.push({ s, resolve }))),
  };
}

describe('events', () => {
  test('the bus delivers to matching subscribers only, isolates throwing ones, and unsubscribes', () => {
    const errors: unknown[] = [];
    const bus = new EventBus({ onError: (e) => errors.push(e) });
    const tasks: string[] = [];
    const other: string[] = [];
    const all: string[] = [];
    bus.subscribe([{ topic: '/tasks/*' }], (e) => tasks.push(e.topic));
    const off = bus.subscribe([{ namespace: 'other' }], (e) => other.push(e.topic));
    bus.subscribe([], () => {
      throw new Error('bad subscriber');
    });
    bus.subscribe([], (e) => all.push(`${e.namespace}${e.topic}`));
    bus.publish('default', '/tasks/start', { containerId: 'a', pid: 1 });
    const env = bus.publish('other', '/containers/create', { id: 'b', image: 'i', runtime: 'crun' });
    off();
    bus.publish('other', '/containers/delete', { id: 'b' });
    assert.deepEqual(tasks, ['/tasks/start']);
    assert.deepEqual(other, ['/containers/create']);
    assert.deepEqual(all, ['default/tasks/start', 'other/containers/create', 'other/containers/delete']);
    assert.equal(errors.length, 3);
    assert.match(env.timestamp, /^\d{4}-\d\d-\d\dT.*Z$/);
    assert.deepEqual(parseFilter('topic==/tasks/*,namespace==x'), { topic: '/tasks/*', namespace: 'x' });
    assert.throws(() => parseFilter('bogus'), /invalid event filter "bogus"/);
  });

  test('stream() yields events until aborted', async () => {
    const bus = new EventBus();
    const ac = new AbortController();
    const got: string[] = [];
    const reading = (async () => {
      for await (const e of bus.stream([{ topic: '/images/*' }], ac.signal)) {
        got.push((e as Envelope<'/images/create'>).event.name);
        if (got.length === 2) ac.abort();
      }
    })();
    bus.publish('default', '/images/create', { name: 'a' });
    bus.publish('default', '/snapshots/remove', { snapshotter: 'overlayfs', key: 'k' });
    bus.publish('default', '/images/create', { name: 'b' });
    await reading;
    assert.deepEqual(got, ['a', 'b']);
    assert.equal(bus.subscriberCount, 0);
  });

  test('the log carries events from another process to a follower, across rotation', async () => {
    const file = path.join(base, 'ev', 'events.log');
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, `${JSON.stringify({ old: true })}\n`);
    const ac = new AbortController();
    const got: Envelope[] = [];
    const following = (async () => {
      for await (const e of tailEvents(file, {
        signal: ac.signal,
        filters: [{ topic: '/tasks/exit' }],
        pollMs: 10,
      })) {
        got.push(e);
        if (got.length === 30) ac.abort();
      }
    })();
    // A separate Node process writes 30 exits (and noise), rotating every ~3 kB (about every 10 pairs).
    const script = `
      import { EventLog } from ${JSON.stringify(path.resolve(import.meta.dirname, '../../src/core/events/log.ts'))};
      const log = new EventLog({ file: ${JSON.stringify(file)}, maxBytes: 3000 });
      for (let i = 0; i < 30; i++) {
        log.publish('default', '/tasks/exit', { containerId: 'c' + i, exitCode: i, signal: null, exitedAt: new Date().toISOString() });
        log.publish('default', '/tasks/start', { containerId: 'c' + i, pid: 1 });
        await new Promise((r) => setTimeout(r, 15));
      }`;
    await new Promise(setImmediate);
    await new Promise((r) => setTimeout(r, 100)); // the follower is at the end of the file
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'inherit' });
    await new Promise((r) => child.on('close', r));
    const timer = setTimeout(() => ac.abort(), 10_000);
    await following;
    clearTimeout(timer);
    assert.deepEqual(
      got.map((e) => (e as Envelope<'/tasks/exit'>).event.exitCode),
      Array.from({ length: 30 }, (_, i) => i),
    );
    assert.ok(existsSync(`${file}.1`), 'the log was rotated');
  });
});

describe('containers and tasks', () => {
  test('mergeEnv replaces by key and takes bare names from the host', () => {
    assert.deepEqual(mergeEnv(['PATH=/bin', 'A=1'], ['A=2', 'B', 'C'], { B: 'x' }), [
      'PATH=/bin',
      'A=2',
      'B=x',
    ]);
  });

  test('create unpacks the image, records the container, and GC keeps its snapshot', async () => {
    const published: string[] = [];
    const bus = new EventBus();
    bus.subscribe([], (e) => published.push(e.topic));
    const s = new ContainerService({ core, runtime: svc.runtime, events: bus });
    const c = await s.create({ id: 'gc1', image: 'busybox', env: ['X=1'], labels: { a: 'b' } });
    assert.deepEqual(c.spec.args, ['sh']);
    assert.deepEqual(c.spec.env.slice(-1), ['X=1']);
    assert.equal(c.image, 'docker.io/library/busybox:latest');
    assert.equal(c.status, 'created');
    assert.deepEqual(c.labels, { a: 'b' });
    assert.deepEqual(published, ['/snapshots/prepare', '/containers/create']);
    await core.gc();
    const sn = await core.snapshotter();
    assert.equal((await sn.stat('container/gc1')).kind, 'active');
    await assert.rejects(s.create({ id: 'gc1', image: 'busybox' }), (e) => isKilnError(e, 'AlreadyExists'));
    await assert.rejects(s.create({ id: 'bad.id', image: 'busybox' }), (e) =>
      isKilnError(e, 'InvalidArgument'),
    );
    await assert.rejects(
      s.create({ image: 'nope' }),
      (e) => isKilnError(e, 'NotFound') && /"nope"/.test(e.message),
    );
    await s.delete('gc1');
    await assert.rejects(sn.stat('container/gc1'), (e) => isKilnError(e, 'NotFound'));
    assert.throws(
      () => core.leases.get('container/gc1'),
      (e) => isKilnError(e, 'NotFound'),
    );
    assert.deepEqual(published.slice(-2), ['/snapshots/remove', '/containers/delete']);
  });

  test('a task runs with stdin, gives its exit code and keeps its writes in the snapshot', async () => {
    const c = await svc.create({
      id: 't1',
      image: 'busybox',
      command: ['sh', '-c', 'cat /data.txt 2>/dev/null; cat > /data.txt; exit 9'],
    });
    const out = collect();
    const r = await svc.runTask(c.id, { stdin: 'first run', stdout: out.stream });
    assert.equal(r.exitCode, 9);
    assert.equal(out.text(), '');
    const after = svc.get(c.id);
    assert.equal(after.status, 'stopped');
    assert.equal(after.exitCode, 9);
    assert.equal(existsSync(svc.rootfsDir(c.id)), false, 'the rootfs is unmounted and removed');
    // The second run of the same container sees what the first one wrote.
    const again = collect();
    const r2 = await svc.runTask(c.id, { stdin: 'second run', stdout: again.stream });
    assert.equal(r2.exitCode, 9);
    assert.equal(again.text(), 'first run');
    await svc.delete(c.id);
  });

  test('only a container removed at exit has a volatile overlay (its upper is never mounted again)', async () => {
    const rootOptions = async (autoRemove: boolean): Promise<string> => {
      const c = await svc.create({
        image: 'busybox',
        // The super options of the root mount: the last field of its mountinfo line.
        command: ['sh', '-c', "grep ' / / ' /proc/self/mountinfo | awk '{print $NF}'"],
        autoRemove,
      });
      const out = collect();
      const r = await svc.runTask(c.id, { stdout: out.stream });
      assert.equal(r.exitCode, 0);
      await svc.delete(c.id);
      return out.text();
    };
    const kept = await rootOptions(false);
    const removed = await rootOptions(true);
    assert.match(kept, /upperdir=/, 'the root is the snapshot overlay');
    assert.doesNotMatch(kept, /volatile/);
    assert.match(removed, /upperdir=/);
    assert.match(removed, /volatile/);
  });

  test('exec, kill and delete of a running task', async () => {
    const c = await svc.create({
      id: 'run1',
      image: 'busybox',
      command: ['sh', '-c', 'echo ready; exec sleep 600'],
    });
    const out = collect();
    const task = svc.runTask(c.id, { stdout: out.stream });
    await out.waitFor('ready');
    assert.equal(await svc.isRunning(c.id), true);
    assert.equal(svc.get(c.id).status, 'running');
    await assert.rejects(svc.runTask(c.id), (e) => isKilnError(e, 'FailedPrecondition'));
    const exOut = collect();
    const ex = await svc.exec(c.id, {
      args: ['sh', '-c', 'echo $E; id -u; cat'],
      env: ['E=v'],
      user: 'nobody',
      stdin: 'in',
      stdout: exOut.stream,
    });
    assert.equal(ex.exitCode, 0);
    assert.equal(exOut.text(), 'v\n65534\nin');
    // With a terminal (crun: through the console socket), the output of a process that exits at
    // once is all there, every time; the input's end reaches it as end-of-file.
    for (let i = 0; i < 5; i++) {
      const ttyOut = collect();
      const t = await svc.exec(c.id, {
        args: ['sh', '-c', 'test -t 0 && test -t 1 && tty && echo "$TERM"; exit 5'],
        env: ['TERM=xterm'],
        tty: true,
        stdout: ttyOut.stream,
      });
      assert.equal(t.exitCode, 5);
      assert.match(ttyOut.text(), /^\/dev\/pts\/\d+\r\nxterm\r\n$/, `run ${i}`);
    }
    const fed = collect();
    const f = await svc.exec(c.id, {
      args: ['sh', '-c', 'read x; echo "got=$x"; cat; echo "eof $?"'],
      tty: true,
      stdin: 'line\n',
      stdout: fed.stream,
    });
    assert.equal(f.exitCode, 0);
    assert.match(fed.text(), /got=line\r\n(.|\n)*eof 0\r\n$/);
    const missing = await svc.exec(c.id, { args: ['nope'] });
    assert.equal(missing.exitCode, 127);
    assert.match(missing.startError ?? '', /executable file not found/);
    await assert.rejects(
      svc.delete(c.id),
      (e) => isKilnError(e, 'FailedPrecondition') && /running/.test(e.message),
    );
    await svc.kill(c.id, 'SIGKILL');
    const r = await task;
    assert.equal(r.exitCode, 137);
    assert.equal(r.signal, 'SIGKILL');
    await assert.rejects(svc.kill(c.id), (e) => isKilnError(e, 'FailedPrecondition'));
    await assert.rejects(svc.exec(c.id, { args: ['true'] }), (e) => isKilnError(e, 'FailedPrecondition'));
    await svc.delete(c.id);
  });

  test('an aborted task is killed and cleaned up', async () => {
    const c = await svc.create({
      id: 'abort1',
      image: 'busybox',
      command: ['sh', '-c', 'echo ready; exec sleep 600'],
    });
    const out = collect();
    const ac = new AbortController();
    const task = svc.runTask(c.id, { stdout: out.stream, signal: ac.signal });
    await out.waitFor('ready');
    ac.abort();
    await assert.rejects(task, (e) => isKilnError(e, 'Canceled'));
    assert.equal(existsSync(svc.rootfsDir(c.id)), false);
    await svc.delete(c.id);
  });

  test('recover cleans the mount and bundle of a task whose kiln process died, and removes --rm records', async () => {
    const keep = await svc.create({ id: 'dead1', image: 'busybox', command: ['true'] });
    const gone = await svc.create({ id: 'dead2', image: 'busybox', command: ['true'], autoRemove: true });
    // A process that has ended stands for the killed kiln.
    const dead = spawn('true');
    await new Promise((r) => dead.on('close', r));
    const sn = await core.snapshotter();
    for (const c of [keep, gone]) {
      const bundle = svc.bundleDir(c.id);
      await mkdir(svc.rootfsDir(c.id), { recursive: true });
      await writeFile(path.join(bundle, 'owner.json'), JSON.stringify({ pid: dead.pid, start: '1' }));
      await writeFile(path.join(bundle, 'config.json'), '{}');
      await mountAll(await sn.mounts(c.snapshotKey), svc.rootfsDir(c.id));
      svc.store.setStatus(c.id, 'running');
    }
    assert.ok((await readFile('/proc/self/mountinfo', 'utf8')).includes(svc.rootfsDir('dead1')));
    const cleaned = await svc.recover();
    assert.deepEqual(cleaned.sort(), ['default/dead1', 'default/dead2']);
    assert.ok(!(await readFile('/proc/self/mountinfo', 'utf8')).includes(svc.dir));
    assert.equal(svc.get('dead1').status, 'stopped');
    assert.equal(svc.get('dead1').exitCode, 255);
    assert.equal(svc.store.has('dead2'), false);
    await assert.rejects(sn.stat(gone.snapshotKey), (e) => isKilnError(e, 'NotFound'));
    assert.deepEqual(await svc.recover(), []);
    await svc.delete('dead1');
  });

  test('recover sweeps --rm containers never started and half-made creates of dead processes', async () => {
    const sweeper = new ContainerService({ core, runtime: svc.runtime, leftoverAgeMs: 0 });
    const kept = await svc.create({ id: 'notrm', image: 'busybox', command: ['true'] });
    await svc.create({ id: 'rm-never-started', image: 'busybox', command: ['true'], autoRemove: true });
    // A create that died after its lease and snapshot, before its record.
    core.leases.create({ id: 'container/half', labels: { 'kiln.dev/container': 'half' } });
    const sn = await core.snapshotter();
    await sn.withLease('container/half').prepare('container/half');
    // Not old enough for the default service: nothing happens.
    assert.deepEqual(await svc.recover(), []);
    assert.deepEqual((await sweeper.recover()).sort(), ['default/half', 'default/rm-never-started']);
    assert.equal(svc.store.has('rm-never-started'), false);
    await assert.rejects(sn.stat('container/half'), (e) => isKilnError(e, 'NotFound'));
    assert.throws(
      () => core.leases.get('container/half'),
      (e) => isKilnError(e, 'NotFound'),
    );
    assert.equal(svc.store.has(kept.id), true);
    await svc.delete(kept.id);
  });

  test('bundles live in the run directory, on tmpfs; recover cleans bundles of the old layout under the root', async () => {
    assert.equal(path.dirname(svc.dir), runDirFor(core.root));
    assert.equal(statfsSync(svc.dir).type, 0x01021994, 'the run directory is a tmpfs');
    const c = await svc.create({ id: 'legacy', image: 'busybox', command: ['true'] });
    // What an earlier version left when killed mid-run: <root>/containers/<ns>/<id> with the
    // rootfs mounted and the /etc files in an etc/ subdirectory.
    const bundle = path.join(core.root, 'containers', 'default', 'legacy');
    await mkdir(path.join(bundle, 'rootfs'), { recursive: true });
    await mkdir(path.join(bundle, 'etc'));
    await writeFile(path.join(bundle, 'etc', 'hosts'), '');
    const dead = spawn('true');
    await new Promise((r) => dead.on('close', r));
    await writeFile(path.join(bundle, 'owner.json'), JSON.stringify({ pid: dead.pid, start: '1' }));
    const sn = await core.snapshotter();
    await mountAll(await sn.mounts(c.snapshotKey), path.join(bundle, 'rootfs'));
    assert.deepEqual(await svc.recover(), ['default/legacy']);
    assert.ok(!(await readFile('/proc/self/mountinfo', 'utf8')).includes(bundle));
    assert.equal(existsSync(bundle), false);
    await svc.delete('legacy');
  });

  test('recover marks stopped a task recorded as running whose bundle is gone (a reboot emptied the run directory)', async () => {
    const sweeper = new ContainerService({ core, runtime: svc.runtime, leftoverAgeMs: 0 });
    const c = await svc.create({ id: 'rebooted', image: 'busybox', command: ['true'] });
    svc.store.setStatus(c.id, 'running');
    // Not old enough for the default service: a task between its bundle's removal and its
    // stopped record must not be touched.
    await svc.recover();
    assert.equal(svc.get('rebooted').status, 'running');
    await sweeper.recover();
    assert.equal(svc.get('rebooted').status, 'stopped');
    assert.equal(svc.get('rebooted').exitCode, 255);
    await svc.delete('rebooted');
  });
});
