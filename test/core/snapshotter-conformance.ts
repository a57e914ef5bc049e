/**
 * Conformance suite for the Snapshotter contract (src/core/snapshots/types.ts),
 * in the spirit of containerd's snapshots/testsuite: every driver and every
 * wrapper (the namespaced view in core/metadata) runs the same checks through
 * REAL mounts, using only the Snapshotter interface and ../../src/core/mount.
 *
 * Behaviour pinned here (containerd's): keys of all kinds share one
 * namespace; a parent must be committed (InvalidArgument otherwise); commit
 * needs an active snapshot (FailedPrecondition for a view); `mounts` of a
 * committed snapshot is FailedPrecondition; remove is refused while children
 * exist (FailedPrecondition); missing keys are NotFound, taken keys
 * AlreadyExists; update with no fieldpaths or ['labels'] replaces all labels,
 * ['labels.k'] sets or deletes one.
 *
 * Usage: call `runSnapshotterConformance(name, make)` from a *.test.ts file;
 * `make` returns a fresh, empty snapshotter and its cleanup.
 */
import assert from 'node:assert/strict';
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { type ErrorCode, isKilnError } from '../../src/core/errors.ts';
import { withTempMount } from '../../src/core/mount/mount.ts';
import { native } from '../../src/core/native/index.ts';
import type { Mount, SnapshotInfo, Snapshotter } from '../../src/core/snapshots/types.ts';

export type MakeSnapshotter = () => Promise<{ sn: Snapshotter; cleanup(): Promise<void> }>;

export interface ConformanceOptions {
  /** Depth of the long-chain test; default 200. */
  chainDepth?: number;
}

async function open(t: TestContext, make: MakeSnapshotter): Promise<Snapshotter> {
  const { sn, cleanup } = await make();
  t.after(cleanup);
  return sn;
}

function rejectsWith(code: ErrorCode, pattern?: RegExp): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isKilnError(err, code), `expected a KilnError ${code}, got ${String(err)}`);
    if (pattern) assert.match((err as Error).message, pattern);
    return true;
  };
}

/** Prepares `key` on `parent`, applies `edit` to the mounted tree, unmounts and commits it as `name`. */
async function layer(
  sn: Snapshotter,
  name: string,
  parent: string | undefined,
  edit: (dir: string) => Promise<void>,
): Promise<void> {
  const key = `${name}-active`;
  const mounts = await sn.prepare(key, parent);
  await withTempMount(mounts, edit);
  await sn.commit(name, key);
}

async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      if (e.isDirectory()) await walk(path.join(d, e.name), r);
    }
  };
  await walk(dir, '');
  return out.sort();
}

/** Reads a view of `parent` through a temporary view snapshot. */
async function readView<T>(sn: Snapshotter, parent: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const key = `view-of-${parent}-${Math.random().toString(36).slice(2)}`;
  const mounts = await sn.view(key, parent);
  try {
    return await withTempMount(mounts, fn);
  } finally {
    await sn.remove(key);
  }
}

async function names(sn: Snapshotter, filters?: string[]): Promise<string[]> {
  const out: string[] = [];
  await sn.walk((info: SnapshotInfo) => {
    out.push(info.name);
  }, filters);
  return out.sort();
}

// security.capability v2 granting cap_net_bind_service (bit 10), effective.
const CAPABILITY = Buffer.from('0100000200040000000000000000000000000000', 'hex');

export function runSnapshotterConformance(
  name: string,
  makeSnapshotter: MakeSnapshotter,
  options: ConformanceOptions = {},
): void {
  const depth = options.chainDepth ?? 200;

  void describe(`snapshotter conformance: ${name}`, () => {
    void it('prepares an empty active snapshot that mounts writable and commits', async (t) => {
      const sn = await open(t, makeSnapshotter);
      const mounts = await sn.prepare('a', undefined, { labels: { 'kiln.test/x': '1' } });
      assert.ok(mounts.length > 0);
      assert.deepEqual(await sn.mounts('a'), mounts);
      const active = await sn.stat('a');
      assert.equal(active.kind, 'active');
      assert.equal(active.name, 'a');
      assert.equal(active.parent, undefined);
      assert.deepEqual(active.labels, { 'kiln.test/x': '1' });
      assert.ok(active.createdAt instanceof Date && active.updatedAt >= active.createdAt);
      await withTempMount(mounts, async (dir) => {
        assert.deepEqual(await fs.readdir(dir), []);
        await fs.writeFile(path.join(dir, 'hello'), 'world');
      });
      await sn.commit('base', 'a', { labels: { 'kiln.test/committed': 'yes' } });
      await assert.rejects(sn.stat('a'), rejectsWith('NotFound', /"a"/));
      const base = await sn.stat('base');
      assert.equal(base.kind, 'committed');
      assert.equal(base.parent, undefined);
      assert.equal(base.labels['kiln.test/committed'], 'yes');
      await readView(sn, 'base', async (dir) => {
        assert.equal(await fs.readFile(path.join(dir, 'hello'), 'utf8'), 'world');
      });
    });

    void it('gives a child the files of its parents and keeps parents unchanged', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await layer(sn, 'l1', undefined, async (d) => {
        await fs.writeFile(path.join(d, 'one'), '1');
        await fs.mkdir(path.join(d, 'dir'));
        await fs.writeFile(path.join(d, 'dir', 'shared'), 'from l1');
      });
      await layer(sn, 'l2', 'l1', async (d) => {
        assert.equal(await fs.readFile(path.join(d, 'one'), 'utf8'), '1');
        await fs.writeFile(path.join(d, 'two'), '2');
        await fs.writeFile(path.join(d, 'dir', 'shared'), 'from l2');
      });
      assert.equal((await sn.stat('l2')).parent, 'l1');
      const mounts = await sn.prepare('top', 'l2');
      assert.equal((await sn.stat('top')).parent, 'l2');
      await withTempMount(mounts, async (d) => {
        assert.deepEqual(await listTree(d), ['dir', 'dir/shared', 'one', 'two']);
        assert.equal(await fs.readFile(path.join(d, 'dir', 'shared'), 'utf8'), 'from l2');
        await fs.writeFile(path.join(d, 'three'), '3');
      });
      await readView(sn, 'l1', async (d) => {
        assert.deepEqual(await listTree(d), ['dir', 'dir/shared', 'one']);
        assert.equal(await fs.readFile(path.join(d, 'dir', 'shared'), 'utf8'), 'from l1');
      });
      await readView(sn, 'l2', async (d) => {
        assert.deepEqual(await listTree(d), ['dir', 'dir/shared', 'one', 'two']);
      });
    });

    void it('hides files and directories deleted in a child', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await layer(sn, 'p', undefined, async (d) => {
        await fs.writeFile(path.join(d, 'gone'), 'x');
        await fs.writeFile(path.join(d, 'kept'), 'y');
        await fs.mkdir(path.join(d, 'dir'));
        await fs.writeFile(path.join(d, 'dir', 'old'), 'old');
      });
      await layer(sn, 'c', 'p', async (d) => {
        await fs.rm(path.join(d, 'gone'));
        await fs.rm(path.join(d, 'dir'), { recursive: true });
        await fs.mkdir(path.join(d, 'dir'));
        await fs.writeFile(path.join(d, 'dir', 'new'), 'new');
      });
      await readView(sn, 'c', async (d) => {
        assert.deepEqual(await listTree(d), ['dir', 'dir/new', 'kept']);
      });
      await layer(sn, 'g', 'c', async (d) => {
        assert.deepEqual(await listTree(d), ['dir', 'dir/new', 'kept']);
        await fs.writeFile(path.join(d, 'gone'), 'back');
      });
      await readView(sn, 'g', async (d) => {
        assert.equal(await fs.readFile(path.join(d, 'gone'), 'utf8'), 'back');
      });
      await readView(sn, 'p', async (d) => {
        assert.deepEqual(await listTree(d), ['dir', 'dir/old', 'gone', 'kept']);
      });
    });

    void it('makes views read-only (EROFS) at every depth and refuses to commit them', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await layer(sn, 'v1', undefined, async (d) => fs.writeFile(path.join(d, 'f1'), '1'));
      await layer(sn, 'v2', 'v1', async (d) => fs.writeFile(path.join(d, 'f2'), '2'));
      for (const [key, parent, expected] of [
        ['empty-view', undefined, []],
        ['view-1', 'v1', ['f1']],
        ['view-2', 'v2', ['f1', 'f2']],
      ] as const) {
        const mounts = await sn.view(key, parent);
        const info = await sn.stat(key);
        assert.equal(info.kind, 'view');
        assert.equal(info.parent, parent);
        assert.deepEqual(await sn.mounts(key), mounts);
        await withTempMount(mounts, async (d) => {
          assert.deepEqual(await listTree(d), [...expected]);
          await assert.rejects(fs.writeFile(path.join(d, 'new'), 'x'), { code: 'EROFS' });
          const first: string | undefined = expected[0];
          if (first !== undefined) await assert.rejects(fs.rm(path.join(d, first)), { code: 'EROFS' });
        });
        await assert.rejects(sn.commit(`${key}-c`, key), rejectsWith('FailedPrecondition', new RegExp(key)));
      }
      await assert.rejects(sn.stat('empty-view-c'), rejectsWith('NotFound'));
    });

    void it('reports AlreadyExists for taken keys and names', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await layer(sn, 'taken', undefined, async () => {});
      await sn.prepare('active', 'taken');
      await sn.view('view', 'taken');
      for (const key of ['taken', 'active', 'view']) {
        await assert.rejects(sn.prepare(key), rejectsWith('AlreadyExists', new RegExp(`"${key}"`)));
        await assert.rejects(sn.view(key, 'taken'), rejectsWith('AlreadyExists'));
      }
      await sn.prepare('a2', 'taken');
      await assert.rejects(sn.commit('taken', 'a2'), rejectsWith('AlreadyExists', /"taken"/));
      await assert.rejects(sn.commit('view', 'a2'), rejectsWith('AlreadyExists'));
      // The failed commits left a2 active and usable.
      assert.equal((await sn.stat('a2')).kind, 'active');
      await sn.commit('c2', 'a2');
      assert.equal((await sn.stat('c2')).parent, 'taken');
    });

    void it('lets only one of two concurrent prepares of a key win', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await layer(sn, 'base', undefined, async (d) => fs.writeFile(path.join(d, 'f'), 'x'));
      const results = await Promise.allSettled([sn.prepare('race', 'base'), sn.prepare('race', 'base')]);
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      const failed = results.find((r) => r.status === 'rejected');
      assert.ok(failed && isKilnError(failed.reason, 'AlreadyExists'));
      assert.deepEqual(await names(sn), ['base', 'race']);
    });

    void it('reports NotFound for missing keys and parents', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await assert.rejects(sn.stat('nope'), rejectsWith('NotFound', /"nope"/));
      await assert.rejects(sn.mounts('nope'), rejectsWith('NotFound'));
      await assert.rejects(sn.usage('nope'), rejectsWith('NotFound'));
      await assert.rejects(sn.remove('nope'), rejectsWith('NotFound'));
      await assert.rejects(sn.commit('x', 'nope'), rejectsWith('NotFound'));
      await assert.rejects(sn.update({ name: 'nope', labels: {} }), rejectsWith('NotFound'));
      await assert.rejects(sn.prepare('k', 'missing-parent'), rejectsWith('NotFound', /"missing-parent"/));
      await assert.rejects(sn.view('k', 'missing-parent'), rejectsWith('NotFound'));
      await assert.rejects(sn.stat('k'), rejectsWith('NotFound'));
      assert.deepEqual(await names(sn), []);
    });

    void it('requires a committed parent and refuses mounts of a committed snapshot', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await sn.prepare('act');
      await sn.view('vw');
      await assert.rejects(sn.prepare('child', 'act'), rejectsWith('InvalidArgument', /"act"/));
      await assert.rejects(sn.view('child', 'vw'), rejectsWith('InvalidArgument', /"vw"/));
      await sn.commit('done', 'act');
      await assert.rejects(sn.mounts('done'), rejectsWith('FailedPrecondition', /"done"/));
      await assert.rejects(sn.commit('again', 'done'), rejectsWith('FailedPrecondition'));
    });

    void it('refuses to remove a snapshot with children, then removes leaf first', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await layer(sn, 'root', undefined, async (d) => fs.writeFile(path.join(d, 'r'), 'r'));
      await layer(sn, 'kid', 'root', async () => {});
      await sn.prepare('kid2', 'root');
      await assert.rejects(
        sn.remove('root'),
        rejectsWith('FailedPrecondition', /cannot remove snapshot "root": it has 2 children/),
      );
      await sn.remove('kid2');
      await assert.rejects(sn.remove('root'), rejectsWith('FailedPrecondition', /"root"/));
      await sn.remove('kid');
      await sn.remove('root');
      assert.deepEqual(await names(sn), []);
    });

    void it('removes active snapshots and views, freeing their keys', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await layer(sn, 'base', undefined, async (d) => fs.writeFile(path.join(d, 'f'), 'x'));
      const m = await sn.prepare('work', 'base');
      await withTempMount(m, async (d) => fs.writeFile(path.join(d, 'scratch'), 'y'));
      await sn.view('look', 'base');
      await sn.remove('work');
      await sn.remove('look');
      await assert.rejects(sn.stat('work'), rejectsWith('NotFound'));
      await assert.rejects(sn.mounts('look'), rejectsWith('NotFound'));
      // The key is free again, and the new snapshot does not see the old one's files.
      const again = await sn.prepare('work', 'base');
      await withTempMount(again, async (d) => {
        assert.deepEqual(await listTree(d), ['f']);
      });
      assert.deepEqual(await names(sn), ['base', 'work']);
    });

    void it('updates labels: all, one key, deletion, and refuses unknown fields', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await sn.prepare('s', undefined, { labels: { a: '1', b: '2' } });
      const before = await sn.stat('s');
      await new Promise((r) => setTimeout(r, 5));
      let info = await sn.update({ name: 's', labels: { c: '3' } });
      assert.deepEqual(info.labels, { c: '3' });
      assert.ok(info.updatedAt > before.updatedAt);
      assert.equal(info.createdAt.getTime(), before.createdAt.getTime());
      info = await sn.update({ name: 's', labels: { d: '4', ignored: 'x' } }, ['labels.d']);
      assert.deepEqual(info.labels, { c: '3', d: '4' });
      info = await sn.update({ name: 's', labels: {} }, ['labels.c']);
      assert.deepEqual(info.labels, { d: '4' });
      info = await sn.update({ name: 's', labels: { e: '5' } }, ['labels']);
      assert.deepEqual(info.labels, { e: '5' });
      assert.deepEqual((await sn.stat('s')).labels, { e: '5' });
      await assert.rejects(sn.update({ name: 's', labels: {} }, ['parent']), rejectsWith('InvalidArgument'));
      assert.deepEqual((await sn.stat('s')).labels, { e: '5' });
    });

    void it('walks with filters on name, kind, parent and labels', async (t) => {
      const sn = await open(t, makeSnapshotter);
      await sn.prepare('a1', undefined, { labels: { team: 'x' } });
      await sn.commit('c1', 'a1', { labels: { team: 'x', tier: 'base' } });
      await sn.prepare('a2', 'c1', { labels: { team: 'y' } });
      await sn.view('v1', 'c1');
      assert.deepEqual(await names(sn), ['a2', 'c1', 'v1']);
      assert.deepEqual(await names(sn, ['kind==committed']), ['c1']);
      assert.deepEqual(await names(sn, ['kind!=committed']), ['a2', 'v1']);
      assert.deepEqual(await names(sn, ['name==v1']), ['v1']);
      assert.deepEqual(await names(sn, ['parent==c1']), ['a2', 'v1']);
      assert.deepEqual(await names(sn, ['labels.team==x']), ['c1']);
      assert.deepEqual(await names(sn, ['labels.tier']), ['c1']);
      assert.deepEqual(await names(sn, ['labels.team~=^[xy]$,kind==active']), ['a2']);
      assert.deepEqual(await names(sn, ['name==v1', 'labels.team==y']), ['a2', 'v1']);
      const infos: SnapshotInfo[] = [];
      await sn.walk(
        (i) => {
          infos.push(i);
        },
        ['name==a2'],
      );
      assert.equal(infos.length, 1);
      assert.equal(infos[0].kind, 'active');
      assert.equal(infos[0].parent, 'c1');
      assert.deepEqual(infos[0].labels, { team: 'y' });
      await assert.rejects(
        sn.walk(() => {}, ['name=="unterminated']),
        rejectsWith('InvalidArgument'),
      );
    });

    void it('reports usage: allocated bytes and inodes, hard links once', async (t) => {
      const sn = await open(t, makeSnapshotter);
      const mounts = await sn.prepare('u');
      const empty = await sn.usage('u');
      assert.equal(empty.inodes, 1);
      const MiB = 1024 * 1024;
      await withTempMount(mounts, async (d) => {
        await fs.writeFile(path.join(d, 'big'), Buffer.alloc(MiB, 7));
        await fs.link(path.join(d, 'big'), path.join(d, 'big-link'));
        await fs.mkdir(path.join(d, 'dir'));
      });
      const active = await sn.usage('u');
      assert.equal(active.inodes, 3, 'root, dir and one inode for big + big-link');
      assert.ok(active.size >= MiB && active.size < 2 * MiB, `size ${active.size}`);
      await sn.commit('u-c', 'u');
      assert.deepEqual(await sn.usage('u-c'), active);
      const child = await sn.prepare('u2', 'u-c');
      await withTempMount(child, async (d) => {
        await fs.writeFile(path.join(d, 'more'), Buffer.alloc(2 * MiB, 1));
      });
      const u2 = await sn.usage('u2');
      assert.ok(u2.size >= 2 * MiB, `child size ${u2.size}`);
      assert.ok(u2.inodes >= 2);
    });

    void it('preserves modes, owners, times, links, special files and xattrs across layers', async (t) => {
      const sn = await open(t, makeSnapshotter);
      const when = new Date('2001-02-03T04:05:06Z');
      await layer(sn, 'meta', undefined, async (d) => {
        const p = (n: string): string => path.join(d, n);
        await fs.writeFile(p('suid'), '#!/bin/sh\n');
        await fs.chown(p('suid'), 1234, 5678);
        await fs.chmod(p('suid'), 0o4755);
        await fs.writeFile(p('cap'), 'bin');
        native().lsetxattr(p('cap'), 'security.capability', CAPABILITY, 0);
        native().lsetxattr(p('cap'), 'user.note', Buffer.from('hello'), 0);
        await fs.link(p('cap'), p('cap-link'));
        await fs.symlink('suid', p('sym'));
        await fs.lchown(p('sym'), 42, 43);
        native().mknod(p('null'), constants.S_IFCHR | 0o666, 1, 3);
        native().mknod(p('fifo'), constants.S_IFIFO | 0o640, 0, 0);
        await fs.mkdir(p('sticky'), { mode: 0o777 });
        await fs.chmod(p('sticky'), 0o1777);
        await fs.utimes(p('suid'), when, when);
        await fs.lutimes(p('sym'), when, when);
        await fs.utimes(p('sticky'), when, when);
      });
      const check = async (d: string): Promise<void> => {
        const p = (n: string): string => path.join(d, n);
        const suid = await fs.lstat(p('suid'));
        assert.equal(suid.mode & 0o7777, 0o4755);
        assert.deepEqual([suid.uid, suid.gid], [1234, 5678]);
        assert.equal(suid.mtime.getTime(), when.getTime());
        assert.deepEqual(native().lgetxattr(p('cap'), 'security.capability'), CAPABILITY);
        assert.equal(native().lgetxattr(p('cap'), 'user.note')?.toString(), 'hello');
        assert.equal((await fs.lstat(p('cap'))).ino, (await fs.lstat(p('cap-link'))).ino);
        const sym = await fs.lstat(p('sym'));
        assert.ok(sym.isSymbolicLink());
        assert.equal(await fs.readlink(p('sym')), 'suid');
        assert.deepEqual([sym.uid, sym.gid], [42, 43]);
        assert.equal(sym.mtime.getTime(), when.getTime());
        const nul = await fs.lstat(p('null'));
        assert.ok(nul.isCharacterDevice());
        assert.equal(nul.rdev, (1 << 8) | 3);
        const fifo = await fs.lstat(p('fifo'));
        assert.ok(fifo.isFIFO());
        assert.equal(fifo.mode & 0o7777, 0o640);
        const sticky = await fs.lstat(p('sticky'));
        assert.equal(sticky.mode & 0o7777, 0o1777);
        assert.equal(sticky.mtime.getTime(), when.getTime());
      };
      await readView(sn, 'meta', check);
      await layer(sn, 'meta2', 'meta', async (d) => {
        await check(d);
        await fs.chmod(path.join(d, 'suid'), 0o700);
      });
      await readView(sn, 'meta2', async (d) => {
        assert.equal((await fs.lstat(path.join(d, 'suid'))).mode & 0o7777, 0o700);
        assert.deepEqual(native().lgetxattr(path.join(d, 'cap'), 'security.capability'), CAPABILITY);
      });
    });

    void it(`builds a chain of depth ${depth} whose top sees every layer`, async (t) => {
      const sn = await open(t, makeSnapshotter);
      let parent: string | undefined;
      for (let i = 0; i < depth; i++) {
        const name = `layer-${i}`;
        await layer(sn, name, parent, async (d) => {
          await fs.writeFile(path.join(d, `file-${i}`), String(i));
        });
        parent = name;
      }
      assert.equal((await sn.stat(parent!)).parent, `layer-${depth - 2}`);
      const expected = Array.from({ length: depth }, (_, i) => `file-${i}`).sort();
      const view: Mount[] = await sn.view('top-view', parent);
      await withTempMount(view, async (d) => {
        assert.deepEqual((await fs.readdir(d)).sort(), expected);
        assert.equal(await fs.readFile(path.join(d, 'file-0'), 'utf8'), '0');
        assert.equal(await fs.readFile(path.join(d, `file-${depth - 1}`), 'utf8'), String(depth - 1));
        await assert.rejects(fs.writeFile(path.join(d, 'x'), 'x'), { code: 'EROFS' });
      });
      const active = await sn.prepare('top-active', parent);
      await withTempMount(active, async (d) => {
        assert.equal((await fs.readdir(d)).length, depth);
        await fs.rm(path.join(d, 'file-0'));
        await fs.writeFile(path.join(d, 'file-top'), 'top');
      });
      await sn.commit('top', 'top-active');
      await readView(sn, 'top', async (d) => {
        const got = await fs.readdir(d);
        assert.equal(got.length, depth);
        assert.ok(got.includes('file-top') && !got.includes('file-0'));
      });
    });
  });
}
