/**
 * Several Kiln processes on one root: startup recovery runs only in a
 * process that has the root to itself, so it never deletes another live
 * process's in-flight work; a killed holder does not block the next start.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { access, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { acquireStateLock } from '../../src/core/lock.ts';
import { createSnapshotter } from '../../src/core/snapshots/index.ts';

const fixture = fileURLToPath(new URL('./fixtures/hold-driver.ts', import.meta.url));
const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

async function startHolder(root: string, ...args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [fixture, root, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`holder exited early (${code})`)));
  });
  return child;
}

void describe('state directory lock', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('is exclusive for the first holder only, and shared after downgrade', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'kiln-lock-'));
    dirs.push(dir);
    const a = acquireStateLock(path.join(dir, 'lock'));
    assert.equal(a.exclusive, true);
    a.downgrade();
    const b = acquireStateLock(path.join(dir, 'lock'));
    assert.equal(b.exclusive, false, 'a second holder may not recover');
    a.release();
    b.release();
    const c = acquireStateLock(path.join(dir, 'lock'));
    assert.equal(c.exclusive, true, 'exclusive again once everyone released');
    c.release();
  });

  it("a second process opening the root leaves the first one's in-flight work alone", async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'kiln-lock-root-'));
    dirs.push(root);
    const holder = await startHolder(root);
    const inflight = path.join(root, 'snapshots', 'tmp-inflight');
    try {
      assert.ok(await exists(inflight));
      const sn = await createSnapshotter('overlayfs', root);
      await sn.close();
      assert.ok(await exists(inflight), 'recovery must not run while another process has the root open');
    } finally {
      holder.kill('SIGKILL');
      await new Promise((r) => holder.once('exit', r));
    }
    // The holder died without cleaning up: the next lone opener recovers.
    const sn = await createSnapshotter('overlayfs', root);
    await sn.close();
    assert.equal(await exists(inflight), false, 'a lone opener removes what a dead process left');
  });

  it('with clean-exit markers, a lone holder must recover only after a holder that did not release cleanly', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'kiln-lock-markers-'));
    dirs.push(dir);
    const markers = path.join(dir, 'holders');
    const lock = path.join(dir, 'lock');
    const a = acquireStateLock(lock, { markers });
    assert.equal(a.mustRecover, true, 'no recovery yet since the run directory was made');
    a.recovered();
    a.downgrade();
    const b = acquireStateLock(lock, { markers });
    assert.deepEqual([b.exclusive, b.mustRecover], [false, false]);
    assert.equal((await readdir(markers)).filter((e) => e.startsWith('open.')).length, 2);
    b.release();
    a.release();
    assert.deepEqual(await readdir(markers), ['recovered'], 'clean releases remove their markers');
    const c = acquireStateLock(lock, { markers });
    assert.deepEqual([c.exclusive, c.mustRecover], [true, false]);
    c.release();
    // A holder that died keeps its marker.
    await writeFile(path.join(markers, 'open.4194305-0badc0de'), '');
    const d = acquireStateLock(lock, { markers });
    assert.equal(d.mustRecover, true);
    d.recovered();
    d.release();
    assert.deepEqual(await readdir(markers), ['recovered'], "recovered() removes the dead holder's marker");
  });

  it('recovery runs for a lone opener after a holder that left work undone, not after a clean one', async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'kiln-lock-alone-'));
    dirs.push(root);
    const half = path.join(root, 'snapshots', 'tmp-half');
    const inflight = path.join(root, 'snapshots', 'tmp-inflight');
    await (await createSnapshotter('native', root)).close();
    const finish = async (holder: ChildProcess): Promise<void> => {
      const exited = new Promise((r) => holder.once('exit', r));
      holder.stdin!.end();
      await exited;
    };
    // A holder that closed cleanly is trusted: its leftovers stay until a recovery runs.
    await finish(await startHolder(root));
    await mkdir(half, { recursive: true });
    await (await createSnapshotter('native', root)).close();
    assert.ok(await exists(inflight));
    assert.ok(await exists(half));
    // One that said it left work undone makes the next lone opener recover.
    await finish(await startHolder(root, 'leftover'));
    await (await createSnapshotter('native', root)).close();
    assert.equal(await exists(half), false);
    assert.equal(await exists(inflight), false);
  });
});
