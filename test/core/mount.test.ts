/**
 * Mount helpers with real mounts: mountAll/unmountAll (bind, ro, tmpfs,
 * overlay, nested and stacked mounts, EBUSY → detach, rollback on failure),
 * mountinfo parsing with octal escapes, withTempMount cleanup on throw, and
 * child processes: SIGTERM leaves no mount (exit handlers), SIGKILL leaves a
 * stale one that recoverMounts removes (and a live process's is kept).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { mountAll, unmountAll, withTempMount } from '../../src/core/mount/mount.ts';
import { mountsUnder, parseMountinfo, readMountinfo } from '../../src/core/mount/mountinfo.ts';
import { recoverMounts } from '../../src/core/mount/recovery.ts';

const FIXTURE = new URL('./fixtures/temp-mount-child.ts', import.meta.url).pathname;

let base: string;
before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-mount-'));
});
after(async () => {
  await unmountAll(base);
  await fs.rm(base, { recursive: true, force: true });
});

let n = 0;
async function dir(name: string): Promise<string> {
  const d = path.join(base, `${name}-${n++}`);
  await fs.mkdir(d, { recursive: true });
  return d;
}

async function mountedAt(p: string): Promise<boolean> {
  return (await readMountinfo()).some((m) => m.mountPoint === p);
}

void describe('mountinfo', () => {
  void it('parses fields and octal escapes', () => {
    const text =
      '36 35 98:0 /mnt\\0401 /mnt/a\\040b\\134c rw,noatime master:1 shared:2 - ext3 /dev/ro\\011ot rw,errors=continue\n' +
      'garbage line\n';
    const [m, ...rest] = parseMountinfo(text);
    assert.equal(rest.length, 0);
    assert.deepEqual(m, {
      id: 36,
      parentId: 35,
      device: '98:0',
      root: '/mnt 1',
      mountPoint: '/mnt/a b\\c',
      options: ['rw', 'noatime'],
      optional: ['master:1', 'shared:2'],
      fsType: 'ext3',
      source: '/dev/ro\tot',
      superOptions: ['rw', 'errors=continue'],
    });
  });

  void it('finds a real mount whose path has spaces', async () => {
    const d = path.join(await dir('esc'), 'with space');
    await fs.mkdir(d);
    await mountAll([{ type: 'tmpfs', source: 'kiln-test', options: ['size=1m', 'mode=0700'] }], d);
    const found = mountsUnder(await readMountinfo(), d);
    assert.equal(found.length, 1);
    assert.equal(found[0].mountPoint, d);
    assert.equal(found[0].fsType, 'tmpfs');
    assert.equal(found[0].source, 'kiln-test');
    await unmountAll(d);
    assert.equal(await mountedAt(d), false);
  });
});

void describe('mountAll / unmountAll', () => {
  void it('bind-mounts read-only (EROFS) and read-write, at sub-targets', async () => {
    const src = await dir('src');
    await fs.writeFile(path.join(src, 'f'), 'data');
    const t = await dir('target');
    await mountAll(
      [
        { type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] },
        { type: 'bind', source: src, target: 'ro', options: ['rbind', 'ro'] },
        { type: 'bind', source: src, target: 'deep/rw', options: ['bind', 'rw', 'nosuid'] },
      ],
      t,
    );
    try {
      assert.equal(await fs.readFile(path.join(t, 'ro', 'f'), 'utf8'), 'data');
      await assert.rejects(fs.writeFile(path.join(t, 'ro', 'g'), 'x'), { code: 'EROFS' });
      await fs.writeFile(path.join(t, 'deep', 'rw', 'g'), 'written');
      assert.equal(await fs.readFile(path.join(src, 'g'), 'utf8'), 'written');
      const info = mountsUnder(await readMountinfo(), t);
      assert.equal(info.length, 3);
      assert.ok(info.find((m) => m.mountPoint.endsWith('/deep/rw'))?.options.includes('nosuid'));
    } finally {
      await unmountAll(t);
    }
    assert.equal(mountsUnder(await readMountinfo(), t).length, 0);
    // The sub-targets were created inside the tmpfs, which is gone.
    assert.deepEqual(await fs.readdir(t), []);
  });

  void it('refuses sub-targets that escape the target', async () => {
    const t = await dir('escape');
    const outside = await dir('outside');
    await fs.symlink(outside, path.join(t, 'link'));
    const src = await dir('src');
    for (const target of ['../x', 'link/y']) {
      await assert.rejects(mountAll([{ type: 'bind', source: src, target, options: ['rbind'] }], t), (err) =>
        isKilnError(err, 'InvalidArgument'),
      );
    }
    assert.equal(mountsUnder(await readMountinfo(), base).length, 0);
  });

  void it('mounts overlay from the standard options and unmounts nested and stacked mounts', async () => {
    const lower = await dir('lower');
    const upper = await dir('upper');
    const work = await dir('work');
    const t = await dir('ovl');
    await fs.writeFile(path.join(lower, 'low'), 'l');
    await mountAll(
      [
        {
          type: 'overlay',
          source: 'overlay',
          options: [`lowerdir=${lower}`, `upperdir=${upper}`, `workdir=${work}`],
        },
      ],
      t,
    );
    await fs.writeFile(path.join(t, 'up'), 'u');
    assert.equal(await fs.readFile(path.join(upper, 'up'), 'utf8'), 'u');
    await fs.mkdir(path.join(t, 'sub'));
    await mountAll([{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }], path.join(t, 'sub'));
    await mountAll([{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }], path.join(t, 'sub'));
    assert.equal(mountsUnder(await readMountinfo(), t).length, 3);
    await unmountAll(t);
    assert.equal(mountsUnder(await readMountinfo(), t).length, 0);
    assert.deepEqual((await fs.readdir(t)).length, 0);
  });

  void it('unmounts what it mounted when a later mount fails', async () => {
    const t = await dir('rollback');
    await assert.rejects(
      mountAll(
        [
          { type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] },
          { type: 'bind', source: path.join(base, 'does-not-exist'), target: 'x', options: ['rbind'] },
        ],
        t,
      ),
      (err) => isKilnError(err, 'NotFound') && /does-not-exist/.test((err as Error).message),
    );
    assert.equal(mountsUnder(await readMountinfo(), t).length, 0);
  });

  void it('a rollback takes off its own mounts, stacked ones too, and leaves the ones made before', async () => {
    const t = await dir('rollback-kept');
    await mountAll([{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }], t);
    try {
      await fs.writeFile(path.join(t, 'kept'), 'k');
      await assert.rejects(
        mountAll(
          [
            { type: 'tmpfs', source: 'tmpfs', target: 'a', options: ['size=1m'] },
            { type: 'tmpfs', source: 'tmpfs', target: 'a', options: ['size=1m'] },
            { type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] },
            { type: 'bind', source: path.join(base, 'does-not-exist'), target: 'x', options: ['rbind'] },
          ],
          t,
        ),
        (err) => isKilnError(err, 'NotFound'),
      );
      const left = mountsUnder(await readMountinfo(), t);
      assert.deepEqual(
        left.map((m) => m.mountPoint),
        [t],
      );
      assert.equal(await fs.readFile(path.join(t, 'kept'), 'utf8'), 'k');
    } finally {
      await unmountAll(t);
    }
  });

  void it('detaches a busy mount after retrying', async () => {
    const t = await dir('busy');
    await mountAll([{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }], t);
    await fs.writeFile(path.join(t, 'held'), 'open file');
    const fh = await fs.open(path.join(t, 'held'), 'r');
    try {
      await unmountAll(t);
      assert.equal(await mountedAt(t), false);
      // The detached filesystem lives on for the open file.
      assert.equal((await fh.readFile()).toString(), 'open file');
    } finally {
      await fh.close();
    }
  });
});

void describe('withTempMount', () => {
  void it('unmounts and removes its directory when fn throws', async () => {
    const root = await dir('tmproot');
    const src = await dir('src');
    let seen = '';
    await assert.rejects(
      withTempMount(
        [{ type: 'bind', source: src, options: ['rbind', 'rw'] }],
        async (d) => {
          seen = d;
          assert.equal(await mountedAt(d), true);
          await fs.writeFile(path.join(d, 'made'), 'x');
          throw new Error('boom');
        },
        { root },
      ),
      /boom/,
    );
    assert.ok(seen.startsWith(`${root}/m-${process.pid}-`));
    assert.equal(await mountedAt(seen), false);
    await assert.rejects(fs.stat(seen), { code: 'ENOENT' });
    assert.equal(await fs.readFile(path.join(src, 'made'), 'utf8'), 'x');
  });

  void it('returns fn’s value and leaves nothing behind', async () => {
    const root = await dir('tmproot');
    const got = await withTempMount(
      [{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }],
      async (d) => (await fs.readdir(d)).length,
      { root },
    );
    assert.equal(got, 0);
    assert.deepEqual(await fs.readdir(root), []);
  });
});

void describe('temp mounts of killed processes', () => {
  const children: ChildProcess[] = [];
  after(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });

  async function startChild(root: string, src: string): Promise<{ child: ChildProcess; dir: string }> {
    const child = spawn(process.execPath, [FIXTURE, root, src], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    const lines = createInterface({ input: child.stdout! });
    const [line] = (await once(lines, 'line')) as [string];
    lines.close();
    const { dir: d } = JSON.parse(line) as { dir: string };
    return { child, dir: d };
  }

  async function exited(child: ChildProcess): Promise<NodeJS.Signals | null> {
    if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    return child.signalCode;
  }

  void it('SIGTERM: the child unmounts, removes its directory and dies by the signal', async () => {
    const root = await dir('sigterm');
    const src = await dir('src');
    await fs.writeFile(path.join(src, 'f'), 'x');
    const { child, dir: d } = await startChild(root, src);
    assert.equal(await mountedAt(d), true);
    assert.equal(await fs.readFile(path.join(d, 'f'), 'utf8'), 'x');
    child.kill('SIGTERM');
    assert.equal(await exited(child), 'SIGTERM');
    assert.equal(await mountedAt(d), false);
    await assert.rejects(fs.stat(d), { code: 'ENOENT' });
  });

  void it('SIGINT: handled the same way', async () => {
    const root = await dir('sigint');
    const src = await dir('src');
    const { child, dir: d } = await startChild(root, src);
    child.kill('SIGINT');
    assert.equal(await exited(child), 'SIGINT');
    assert.equal(await mountedAt(d), false);
  });

  void it('SIGKILL leaves a stale mount that recoverMounts removes; a live one is kept', async () => {
    const root = await dir('sigkill');
    const src = await dir('src');
    await fs.writeFile(path.join(src, 'keep'), 'source data');
    const live = await startChild(root, src);
    const killed = await startChild(root, src);
    killed.child.kill('SIGKILL');
    assert.equal(await exited(killed.child), 'SIGKILL');
    assert.equal(await mountedAt(killed.dir), true, 'SIGKILL leaves the mount');

    const report = await recoverMounts(root);
    assert.deepEqual(report.unmounted, [killed.dir]);
    assert.deepEqual(report.removed, [killed.dir]);
    assert.equal(await mountedAt(killed.dir), false);
    await assert.rejects(fs.stat(killed.dir), { code: 'ENOENT' });
    assert.equal(await fs.readFile(path.join(src, 'keep'), 'utf8'), 'source data');
    // The live child's mount was left alone.
    assert.equal(await mountedAt(live.dir), true);

    live.child.kill('SIGTERM');
    assert.equal(await exited(live.child), 'SIGTERM');
    assert.equal(await mountedAt(live.dir), false);
    const again = await recoverMounts(root);
    assert.deepEqual(again, { unmounted: [], removed: [], kept: [] });
  });
});
