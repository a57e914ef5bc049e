/**
 * Init directories (src/core/containers/init.ts): the runtime's mount-point stubs, once per
 * image, as the topmost lower layer of its containers.
 */
import assert from 'node:assert/strict';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { openContainers } from '../../src/core/containers/index.ts';
import { withInitLayer } from '../../src/core/containers/init.ts';
import { importImages } from '../../src/core/images/index.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { type Mount, splitLowerdir, unmountAll, withTempMount } from '../../src/core/mount/mount.ts';
import { native } from '../../src/core/native/index.ts';
import { makeBusyboxLayout } from './fixtures/busybox-image.ts';

let base = '';
let core: Core;

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'kiln-init-'));
  core = await openCore({ root: path.join(base, 'root'), namespace: 'default' });
});

after(async () => {
  await unmountAll(core.root).catch(() => undefined);
  await core.close();
  await rm(base, { recursive: true, force: true });
});

function option(mounts: Mount[], key: string): string | undefined {
  return mounts[0]?.options.find((o) => o.startsWith(`${key}=`))?.slice(key.length + 1);
}

/** Commits a layer whose files `fill` writes into a mount of it, on `parent`. */
async function layer(
  name: string,
  parent: string | undefined,
  fill: (dir: string) => Promise<void>,
): Promise<void> {
  const sn = await core.snapshotter();
  const mounts = await sn.prepare(`${name}-active`, parent);
  await withTempMount(mounts, fill);
  await sn.commit(name, `${name}-active`);
}

test("the stubs an image lacks, under an /etc with the image's attributes; nothing the image has is shadowed", async () => {
  const mtime = new Date('2001-02-03T04:05:06Z');
  await layer('custom-1', undefined, async (d) => {
    await mkdir(path.join(d, 'etc'));
    await writeFile(path.join(d, 'etc', 'hosts'), 'image-hosts\n');
    await mkdir(path.join(d, 'proc'));
  });
  // A second layer changes /etc's attributes: the merged view's are the topmost layer's.
  await layer('custom-2', 'custom-1', async (d) => {
    await writeFile(path.join(d, 'etc', 'hostname'), 'image-name\n');
    await chown(path.join(d, 'etc'), 7, 8);
    native().lsetxattr(path.join(d, 'etc'), 'user.kiln-test', Buffer.from('etc-xattr'), 0);
    await chmod(path.join(d, 'etc'), 0o750);
    await utimes(path.join(d, 'etc'), mtime, mtime);
  });
  const sn = await core.snapshotter();
  const plain = await sn.prepare('custom-container', 'custom-2');
  const mounts = await withInitLayer(plain);
  const lowers = splitLowerdir(option(mounts, 'lowerdir')!);
  assert.deepEqual(lowers.slice(1), splitLowerdir(option(plain, 'lowerdir')!));
  const init = lowers[0]!;
  assert.equal(path.basename(init), 'init');
  assert.deepEqual(readdirSync(init).sort(), ['dev', 'etc', 'sys']);
  assert.deepEqual(readdirSync(path.join(init, 'etc')), ['resolv.conf']);
  await withTempMount(mounts, (root) => {
    assert.equal(readFileSync(path.join(root, 'etc/hosts'), 'utf8'), 'image-hosts\n');
    assert.equal(readFileSync(path.join(root, 'etc/hostname'), 'utf8'), 'image-name\n');
    assert.equal(readFileSync(path.join(root, 'etc/resolv.conf'), 'utf8'), '');
    const etc = lstatSync(path.join(root, 'etc'));
    assert.equal(etc.mode & 0o7777, 0o750);
    assert.deepEqual([etc.uid, etc.gid], [7, 8]);
    assert.equal(etc.mtimeMs, mtime.getTime());
    assert.equal(native().lgetxattr(path.join(root, 'etc'), 'user.kiln-test')?.toString(), 'etc-xattr');
    for (const d of ['dev', 'proc', 'sys']) assert.ok(lstatSync(path.join(root, d)).isDirectory());
  });
  // Made once: the next container of the image finds it.
  const again = await withInitLayer(await sn.prepare('custom-container-2', 'custom-2'));
  assert.equal(splitLowerdir(option(again, 'lowerdir')!)[0], init);
  await sn.remove('custom-container');
  await sn.remove('custom-container-2');
});

test('an image that needs no stubs keeps its mounts; a single-layer image is read directly', async () => {
  await layer('complete', undefined, async (d) => {
    for (const dir of ['etc', 'dev', 'proc', 'sys']) await mkdir(path.join(d, dir));
    for (const f of ['hosts', 'resolv.conf', 'hostname']) await writeFile(path.join(d, 'etc', f), `${f}\n`);
  });
  const sn = await core.snapshotter();
  const plain = await sn.prepare('complete-container', 'complete');
  assert.deepEqual(await withInitLayer(plain), plain);
  const top = splitLowerdir(option(plain, 'lowerdir')!)[0]!;
  assert.ok(existsSync(path.join(path.dirname(top), 'init-none')));
  assert.ok(!existsSync(path.join(path.dirname(top), 'init')));
  await sn.remove('complete-container');
  // An /etc that is a symlink is left to the runtime.
  await layer('etc-link', undefined, async (d) => {
    await mkdir(path.join(d, 'usr/etc'), { recursive: true });
    const { symlink } = await import('node:fs/promises');
    await symlink('usr/etc', path.join(d, 'etc'));
  });
  const linked = await withInitLayer(await sn.prepare('link-container', 'etc-link'));
  const init = splitLowerdir(option(linked, 'lowerdir')!)[0]!;
  assert.deepEqual(readdirSync(init).sort(), ['dev', 'proc', 'sys']);
  await sn.remove('link-container');
});

test("a container's layer holds only what its process wrote", async () => {
  const { layout } = await makeBusyboxLayout(base);
  await importImages(core, layout, { name: 'busybox:latest' });
  const svc = await openContainers(core);
  const c = await svc.create({
    image: 'busybox',
    command: ['sh', '-c', 'cat /etc/hosts /etc/hostname >/tmp/seen'],
  });
  const r = await svc.runTask(c.id);
  assert.equal(r.exitCode, 0);
  const sn = await core.snapshotter();
  const upper = option(await sn.mounts(c.snapshotKey), 'upperdir')!;
  const files = readdirSync(upper, { recursive: true }).map(String).sort();
  assert.deepEqual(files, ['tmp', 'tmp/seen']);
  assert.match(readFileSync(path.join(upper, 'tmp/seen'), 'utf8'), /localhost[\s\S]*kiln/);
  await svc.delete(c.id);
});
