/**
 * Runs the snapshotter conformance suite on both drivers, and checks the
 * drivers' own guarantees: overlay usage counts only the layer's own files,
 * the overlay mount helper handles option strings over one page, and startup
 * recovery removes half-made snapshot directories and stale mounts.
 */
import assert from 'node:assert/strict';
import { isKilnError } from '../../src/core/errors.ts';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { mountAll, unmountAll, withTempMount } from '../../src/core/mount/mount.ts';
import { mountsUnder, readMountinfo } from '../../src/core/mount/mountinfo.ts';
import { runDirFor } from '../../src/core/rundir.ts';
import { createSnapshotter, supportsOverlay } from '../../src/core/snapshots/index.ts';
import { MetaStore } from '../../src/core/snapshots/storage.ts';
import type { Snapshotter } from '../../src/core/snapshots/types.ts';
import { runSnapshotterConformance } from './snapshotter-conformance.ts';

async function tempRoot(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), 'kiln-snap-'));
}

async function cleanupRoot(sn: Snapshotter, root: string): Promise<void> {
  await sn.close();
  await unmountAll(root);
  await fs.rm(root, { recursive: true, force: true });
}

for (const driver of ['overlayfs', 'native'] as const) {
  runSnapshotterConformance(driver, async () => {
    const root = await tempRoot();
    const sn = await createSnapshotter(driver, root);
    return { sn, cleanup: () => cleanupRoot(sn, root) };
  });
}

void describe('snapshot drivers', () => {
  const roots: string[] = [];
  after(async () => {
    for (const r of roots) {
      await unmountAll(r);
      await fs.rm(r, { recursive: true, force: true });
    }
  });
  const newRoot = async (): Promise<string> => {
    const r = await tempRoot();
    roots.push(r);
    return r;
  };

  void it('probes overlay support on this filesystem', async () => {
    assert.equal(await supportsOverlay(await newRoot()), true);
  });

  void it('overlay: usage counts only the layer itself, and the committed fs is not copied', async () => {
    const root = await newRoot();
    const sn = await createSnapshotter('overlayfs', root);
    try {
      const m1 = await sn.prepare('a');
      assert.deepEqual(m1[0].options, ['rbind', 'rw']);
      await withTempMount(m1, (d) => fs.writeFile(path.join(d, 'big'), Buffer.alloc(1 << 20, 1)));
      await sn.commit('base', 'a');
      const before = await fs.readdir(path.join(root, 'snapshots'));
      const m2 = await sn.prepare('b', 'base');
      assert.equal(m2[0].type, 'overlay');
      // The committed parent is the active's own directory: no copy was made.
      assert.ok(m2[0].options.includes(`lowerdir=${m1[0].source}`), m2[0].options.join(','));
      await withTempMount(m2, (d) => fs.writeFile(path.join(d, 'small'), 'x'));
      const u = await sn.usage('b');
      assert.ok(u.size < 1 << 20, `child usage ${u.size} must not include the parent`);
      assert.equal(u.inodes, 2);
      await sn.commit('top', 'b');
      // commit renamed metadata only: same directories, no new ones.
      assert.equal((await fs.readdir(path.join(root, 'snapshots'))).length, before.length + 1);
    } finally {
      await sn.close();
    }
  });

  void it('overlay: a lowerdir option longer than one page is mounted (lowerdir+)', async () => {
    const root = await newRoot();
    // Long directory names make 40 layers exceed 4096 bytes of options.
    const lowers: string[] = [];
    for (let i = 0; i < 40; i++) {
      const d = path.join(root, `${'l'.repeat(120)}-${i}`);
      await fs.mkdir(d);
      await fs.writeFile(path.join(d, `f${i}`), String(i));
      lowers.push(d);
    }
    const options = [`lowerdir=${lowers.reverse().join(':')}`, 'ro'];
    assert.ok(options.join(',').length > 4096);
    await withTempMount([{ type: 'overlay', source: 'overlay', options }], async (d) => {
      assert.equal((await fs.readdir(d)).length, 40);
      await assert.rejects(fs.writeFile(path.join(d, 'x'), 'x'), { code: 'EROFS' });
    });
  });

  void it('storage: records survive reopen, ids stay stable, a failed transaction leaves nothing', async () => {
    const root = await newRoot();
    let ms = MetaStore.open(root);
    const a = ms.create('active', 'a', undefined, { k: 'v' });
    const c = ms.commit('a', 'c', { size: 1, inodes: 1 });
    assert.equal(c.id, a.id);
    const child = ms.create('view', 'v', 'c');
    assert.deepEqual(ms.parentIds(child.id), [a.id]);
    assert.equal(ms.children(c.id), 1);
    assert.throws(() =>
      ms.transaction(() => {
        ms.create('active', 'doomed', 'c');
        throw new Error('rename failed');
      }),
    );
    assert.equal(ms.get('doomed'), undefined);
    ms.close();
    ms = MetaStore.open(root);
    try {
      assert.deepEqual(
        ms.list().map((r) => [r.key, r.kind, r.parent, r.id]),
        [
          ['c', 'committed', undefined, a.id],
          ['v', 'view', 'c', child.id],
        ],
      );
      assert.deepEqual(ms.get('c')?.usage, { size: 1, inodes: 1 });
    } finally {
      ms.close();
    }
  });

  for (const driver of ['overlayfs', 'native'] as const) {
    void it(`${driver}: startup removes half-made snapshot directories and stale mounts`, async () => {
      const root = await newRoot();
      let sn = await createSnapshotter(driver, root);
      await sn.prepare('a');
      await sn.commit('base', 'a');
      await sn.prepare('kept', 'base');
      await sn.close();
      const snaps = path.join(root, 'snapshots');
      const good = (await fs.readdir(snaps)).sort();
      assert.equal(good.length, 2);
      // A crash while building a snapshot: its temp directory, and a renamed
      // directory whose record never committed.
      await fs.mkdir(path.join(snaps, 'tmp-crashed', 'fs'), { recursive: true });
      await fs.writeFile(path.join(snaps, 'tmp-crashed', 'fs', 'partial'), 'x');
      await fs.mkdir(path.join(snaps, '9999', 'fs'), { recursive: true });
      // A mount left by a killed process, inside the half-made directory.
      const src = path.join(root, 'src');
      await fs.mkdir(src);
      await fs.writeFile(path.join(src, 'outside'), 'must survive');
      await mountAll(
        [{ type: 'bind', source: src, options: ['rbind', 'rw'] }],
        path.join(snaps, '9999', 'fs'),
      );
      await mountAll(
        [{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }],
        path.join(snaps, 'tmp-crashed'),
      );
      assert.equal(mountsUnder(await readMountinfo(), root).length, 2);
      // The killed process kept its holder's marker (core/lock.ts): the next lone opener recovers.
      await fs.writeFile(path.join(runDirFor(root), 'holders', 'open.4194305-killed'), '');

      sn = await createSnapshotter(driver, root);
      try {
        assert.equal(mountsUnder(await readMountinfo(), root).length, 0);
        assert.deepEqual((await fs.readdir(snaps)).sort(), good);
        // The bind source was unmounted before the directory was deleted.
        assert.equal(await fs.readFile(path.join(src, 'outside'), 'utf8'), 'must survive');
        assert.equal((await sn.stat('kept')).kind, 'active');
        await withTempMount(await sn.mounts('kept'), async (d) => {
          await fs.writeFile(path.join(d, 'still-works'), 'y');
        });
      } finally {
        await sn.close();
      }
    });

    void it(`${driver}: startup drops the records whose directory is gone, with their descendants`, async () => {
      const root = await newRoot();
      const snaps = path.join(root, 'snapshots');
      const dirs = async (): Promise<string[]> => (await fs.readdir(snaps)).sort();
      let sn = await createSnapshotter(driver, root);
      await sn.prepare('a');
      await sn.commit('base', 'a');
      await sn.prepare('kept', 'base');
      const before = await dirs();
      await sn.prepare('l');
      await sn.commit('lost', 'l');
      const lostDir = (await dirs()).find((d) => !before.includes(d))!;
      await sn.prepare('lc', 'lost');
      await sn.commit('lost-child', 'lc');
      await sn.view('lost-view', 'lost-child');
      await sn.close();
      // A power loss kept the record of "lost" but not the rename of its directory. The restart
      // emptied the run directory (a tmpfs), so no recovery has run since: the next opener recovers.
      await fs.rm(path.join(snaps, lostDir), { recursive: true });
      await fs.rm(path.join(runDirFor(root), 'holders'), { recursive: true });

      sn = await createSnapshotter(driver, root);
      try {
        for (const key of ['lost', 'lost-child', 'lost-view']) {
          await assert.rejects(sn.stat(key), (e: unknown) => isKilnError(e, 'NotFound'), key);
        }
        assert.deepEqual(await dirs(), before, "the descendants' directories went with their records");
        assert.equal((await sn.stat('kept')).kind, 'active');
        await withTempMount(await sn.mounts('kept'), async (d) => {
          await fs.writeFile(path.join(d, 'still-works'), 'y');
        });
        await sn.prepare('l');
        await sn.commit('lost', 'l'); // the key is free again
      } finally {
        await sn.close();
      }
    });
  }
});

void describe('native driver copies', () => {
  it('keep timestamps to the nanosecond (so an unchanged copy diffs as unchanged)', async () => {
    const { copyTree } = await import('../../src/core/snapshots/native.ts');
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-native-times-'));
    try {
      await fs.mkdir(path.join(dir, 'src/sub'), { recursive: true });
      await fs.writeFile(path.join(dir, 'src/sub/f'), 'x');
      await fs.symlink('sub/f', path.join(dir, 'src/link'));
      // 2023-11-14T22:13:20.123456789Z, a value a double in seconds cannot carry exactly.
      const { lutimesNs } = await import('../../src/core/native/index.ts');
      const t = 1_700_000_000_123_456_789n;
      for (const p of ['src/sub/f', 'src/link', 'src/sub', 'src']) lutimesNs(path.join(dir, p), t, t);
      await fs.mkdir(path.join(dir, 'dst'));
      await copyTree(path.join(dir, 'src'), path.join(dir, 'dst'));
      for (const p of ['sub/f', 'link', 'sub', '.']) {
        const st = await fs.lstat(path.join(dir, 'dst', p), { bigint: true });
        assert.equal(st.mtimeNs, t, `mtime of ${p}`);
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
