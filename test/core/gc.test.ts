// Garbage collection on a real state directory (real local content store,
// real native snapshot driver): the exact set of removed records, blobs and
// driver snapshots for a reference graph built from images, OCI manifests,
// gc.ref labels, snapshot parents, gc.root labels and leases; leases that
// protect work in flight until they are deleted or expire; orphans left by
// crashes; GC waiting for commits in flight.
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ContentStore } from '../../src/core/content/types.ts';
import type { Digest } from '../../src/core/digest.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';

const enc = new TextEncoder();

async function put(store: ContentStore, data: string, labels?: Record<string, string>): Promise<Digest> {
  const w = await store.writer({ ref: `put-${Math.random().toString(36).slice(2)}` });
  await w.write(enc.encode(data));
  return w.commit({ labels });
}

async function driverKeys(core: Core): Promise<string[]> {
  const keys: string[] = [];
  await (await core.driver('native')).walk((i) => {
    keys.push(i.name);
  });
  return keys.sort();
}

function backendKey(core: Core, ns: string, key: string): string {
  return core.db.get<{ backend_key: string }>(
    'SELECT backend_key FROM snapshots WHERE ns = ? AND name = ?',
    ns,
    key,
  )!.backend_key;
}

let tmp: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-gc-'));
});
after(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

void describe('gc: mark and sweep', () => {
  void it('removes exactly the unreferenced objects of a labelled graph', async (t) => {
    const core = await openCore({ root: path.join(tmp, 'graph'), namespace: 'gc', snapshotter: 'native' });
    t.after(() => core.close());
    const other = core.withNamespace('gc2');
    const sn = await core.snapshotter();

    // Image 1: a real OCI manifest; config and layers are found by parsing it.
    const config1 = await put(core.content, '{"architecture":"amd64","os":"linux"}');
    const layer1 = await put(core.content, 'layer one bytes');
    const layer2 = await put(core.content, 'layer two bytes');
    const manifest1 = await put(
      core.content,
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config1, size: 37 },
        layers: [
          { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer1, size: 15 },
          { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer2, size: 15 },
        ],
      }),
    );
    core.images.create({
      name: 'example.com/one:1',
      target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifest1, size: 10 },
    });

    // A snapshot chain that only a content label refers to.
    await sn.prepare('chain-base-w');
    await sn.commit('chain-base', 'chain-base-w');
    await sn.prepare('chain-top-w', 'chain-base');
    await sn.commit('chain-top', 'chain-top-w');

    // Image 2: its manifest lists nothing parseable; gc.ref labels carry the references.
    const config2 = await put(core.content, 'config two');
    const layer3 = await put(core.content, 'layer three', {
      'containerd.io/gc.ref.snapshot.native': 'chain-top',
    });
    const manifest2 = await put(core.content, '{"not":"a manifest"}', {
      'containerd.io/gc.ref.content.config': config2,
      'containerd.io/gc.ref.content.l.0': layer3,
    });
    core.images.create({
      name: 'example.com/two:1',
      target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifest2, size: 20 },
    });

    // Roots by label and by lease.
    const pinnedBlob = await put(core.content, 'pinned', { 'containerd.io/gc.root': '2026-01-01' });
    await sn.prepare('pinned', undefined, { labels: { 'containerd.io/gc.root': 'yes' } });
    core.leases.create({ id: 'hold' });
    const leasedBlob = await put(core.content.withLease('hold'), 'leased');
    await sn.withLease('hold').prepare('leased-active');

    // Orphans: a blob chain (orphan2 → orphan1), a snapshot chain with an active tip.
    const orphan1 = await put(core.content, 'orphan one');
    const orphan2 = await put(core.content, 'orphan two', { 'containerd.io/gc.ref.content': orphan1 });
    await sn.prepare('orph-base-w');
    await sn.commit('orph-base', 'orph-base-w');
    await sn.prepare('orph-top-w', 'orph-base');
    await sn.commit('orph-top', 'orph-top-w');
    await sn.prepare('orph-active', 'orph-top');

    // Namespace gc2: a copy of layer1 (blob must stay: gc uses it) and of orphan1, both unreferenced;
    // its own image refers to pinned content of gc2 only.
    await put(other.content, 'layer one bytes');
    await put(other.content, 'orphan one');
    const kept2 = await put(other.content, 'kept in gc2');
    other.images.create({
      name: 'example.com/three:1',
      target: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: kept2, size: 11 },
    });
    // An image in gc2 pointing at gc's manifest1 digest does not keep gc's objects... it keeps nothing
    // in gc2 because gc2 has no record of it.
    other.images.create({
      name: 'example.com/dangling:1',
      target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifest2, size: 20 },
    });

    const orphanKeys = ['orph-base', 'orph-top', 'orph-active'].map((k) => backendKey(core, 'gc', k));
    const driverBefore = await driverKeys(core);
    assert.equal(driverBefore.length, 7);

    const res = await core.gc();

    const contentRemoved = res.removed.content.map((c) => `${c.namespace} ${c.digest}`).sort();
    assert.deepEqual(
      contentRemoved,
      [`gc ${orphan1}`, `gc ${orphan2}`, `gc2 ${layer1}`, `gc2 ${orphan1}`].sort(),
    );
    assert.equal(res.removedContent, 4);
    assert.deepEqual([...res.removed.blobs].sort(), [orphan1, orphan2].sort());
    assert.equal(res.removedBlobs, 2);
    assert.deepEqual(res.removed.snapshots.map((s) => `${s.namespace} ${s.snapshotter} ${s.key}`).sort(), [
      'gc native orph-active',
      'gc native orph-base',
      'gc native orph-top',
    ]);
    assert.equal(res.removedBackendSnapshots, 3, 'driver snapshots removed children first');
    assert.equal(res.removedLeases, 0);

    // What is left, in the records and on disk.
    const left: string[] = [];
    await core.content.walk((i) => {
      left.push(i.digest);
    });
    assert.deepEqual(
      left.sort(),
      [config1, layer1, layer2, manifest1, config2, layer3, manifest2, pinnedBlob, leasedBlob].sort(),
    );
    const left2: string[] = [];
    await other.content.walk((i) => {
      left2.push(i.digest);
    });
    assert.deepEqual(left2, [kept2]);
    const snaps: string[] = [];
    await sn.walk((i) => {
      snaps.push(i.name);
    });
    assert.deepEqual(snaps, ['chain-base', 'chain-top', 'leased-active', 'pinned']);
    const driverAfter = await driverKeys(core);
    assert.deepEqual(driverAfter, driverBefore.filter((k) => !orphanKeys.includes(k)).sort());
    for (const d of [orphan1, orphan2]) {
      await assert.rejects(core.localContent.info(d), (e) => isKilnError(e, 'NotFound'));
    }
    assert.equal((await core.localContent.info(layer1)).size, 15);

    // A second run finds nothing more.
    const again = await core.gc();
    assert.equal(
      again.removedContent + again.removedBlobs + again.removedSnapshots + again.removedBackendSnapshots,
      0,
    );
  });

  void it('follows an OCI index to its manifests and their blobs', async (t) => {
    const core = await openCore({
      root: path.join(tmp, 'index'),
      namespace: 'default',
      snapshotter: 'native',
    });
    t.after(() => core.close());
    const cfg = await put(core.content, 'cfg');
    const lay = await put(core.content, 'lay');
    const man = await put(
      core.content,
      JSON.stringify({
        schemaVersion: 2,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfg, size: 3 },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: lay, size: 3 }],
      }),
    );
    const idx = await put(
      core.content,
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: man, size: 100 }],
      }),
    );
    const junk = await put(core.content, 'junk');
    core.images.create({
      name: 'idx',
      target: { mediaType: 'application/vnd.oci.image.index.v1+json', digest: idx, size: 100 },
    });
    const res = await core.gc();
    assert.deepEqual(
      res.removed.content.map((c) => c.digest),
      [junk],
    );
    // Deleting the image frees the whole tree.
    core.images.delete('idx');
    const res2 = await core.gc();
    assert.deepEqual(res2.removed.blobs.sort(), [cfg, lay, man, idx].sort());
  });
});

void describe('gc: leases', () => {
  let core: Core;
  before(async () => {
    core = await openCore({ root: path.join(tmp, 'leases'), namespace: 'default', snapshotter: 'native' });
  });
  after(() => core.close());

  void it('keeps content and snapshots in flight under a lease until the lease is deleted', async () => {
    core.leases.create({ id: 'build' });
    const content = core.content.withLease('build');
    const sn = (await core.snapshotter()).withLease('build');

    const w = await content.writer({ ref: 'layer-upload' });
    await w.write(enc.encode('half of '));
    let res = await core.gc();
    assert.equal(res.removedIngests, 0);
    assert.equal((await core.content.status('layer-upload')).offset, 8);
    await w.write(enc.encode('a layer'));
    const d = await w.commit();
    await sn.prepare('rootfs');
    await sn.commit('rootfs-done', 'rootfs');
    await sn.prepare('next', 'rootfs-done');

    res = await core.gc();
    assert.equal(res.removedContent + res.removedSnapshots + res.removedBlobs, 0);
    assert.deepEqual(
      core.leases.listResources('build').map((r) => `${r.type} ${r.id}`),
      [
        `content ${d}`,
        'ingests layer-upload',
        'snapshots/native next',
        'snapshots/native rootfs',
        'snapshots/native rootfs-done',
      ],
    );

    core.leases.delete('build');
    res = await core.gc();
    assert.deepEqual(
      res.removed.content.map((c) => c.digest),
      [d],
    );
    assert.deepEqual(res.removed.blobs, [d]);
    assert.deepEqual(res.removed.snapshots.map((s) => s.key).sort(), ['next', 'rootfs-done']);
    assert.equal(res.removedBackendSnapshots, 2);
    assert.deepEqual(await driverKeys(core), []);
  });

  void it('stops protecting resources once the lease expires, and deletes the lease', async () => {
    const expiresAt = new Date(Date.now() + 3_600_000);
    core.leases.create({ id: 'short', expiresAt });
    const d = await put(core.content.withLease('short'), 'expiring');
    // Just before expiry: kept.
    let res = await core.gc({ now: () => expiresAt.getTime() - 1 });
    assert.equal(res.removedContent, 0);
    assert.equal(res.removedLeases, 0);
    // Just after: collected, and the expired lease is gone.
    res = await core.gc({ now: () => expiresAt.getTime() + 1 });
    assert.deepEqual(
      res.removed.content.map((c) => c.digest),
      [d],
    );
    assert.equal(res.removedLeases, 1);
    assert.throws(
      () => core.leases.get('short'),
      (e) => isKilnError(e, 'NotFound'),
    );
  });

  void it('aborts ingests whose lease is gone and keeps unleased ones', async () => {
    core.leases.create({ id: 'tmp' });
    const w = await core.content.withLease('tmp').writer({ ref: 'leased-ingest' });
    await w.write(enc.encode('partial'));
    await w.close();
    const u = await core.content.writer({ ref: 'plain-ingest' });
    await u.write(enc.encode('partial'));
    await u.close();
    core.leases.delete('tmp');
    const res = await core.gc();
    assert.deepEqual(res.removed.ingests, [{ namespace: 'default', ref: 'leased-ingest' }]);
    await assert.rejects(core.content.status('leased-ingest'), (e) => isKilnError(e, 'NotFound'));
    assert.equal((await core.content.status('plain-ingest')).offset, 7);
    await core.content.abort('plain-ingest');
  });

  void it('refuses work under a lease that does not exist', async () => {
    await assert.rejects(
      core.content.withLease('missing').writer({ ref: 'x' }),
      (e) => isKilnError(e, 'NotFound') && /lease "missing" not found/.test((e as Error).message),
    );
    const sn = (await core.snapshotter()).withLease('missing');
    await assert.rejects(sn.prepare('x'), (e) => isKilnError(e, 'NotFound'));
    await assert.rejects((await core.snapshotter()).stat('x'), (e) => isKilnError(e, 'NotFound'));
  });
});

void describe('gc: crashes and concurrency', () => {
  void it('removes blobs and driver snapshots that no record names', async (t) => {
    const core = await openCore({
      root: path.join(tmp, 'orphans'),
      namespace: 'default',
      snapshotter: 'native',
    });
    t.after(() => core.close());
    // As if a process died between the backend commit and the record.
    const w = await core.localContent.writer({ ref: 'crashed' });
    await w.write(enc.encode('no record'));
    const d = await w.commit();
    const drv = await core.driver('native');
    await drv.prepare('crashed-1');
    await drv.commit('crashed-base', 'crashed-1');
    await drv.prepare('crashed-2', 'crashed-base');
    const kept = await put(core.content, 'recorded', { 'containerd.io/gc.root': 'x' });
    // And a record whose driver snapshot vanished (crash between record and driver call).
    const sn = await core.snapshotter();
    await sn.prepare('broken', undefined, { labels: { 'containerd.io/gc.root': 'x' } });
    await drv.remove(backendKey(core, 'default', 'broken'));
    // Young records are given time (another process may be creating it); an hour later it is broken.
    // Young orphans may be another process's work between its two steps: kept for a grace period.
    const first = await core.gc();
    assert.equal(first.removedSnapshots + first.removedBlobs + first.removedBackendSnapshots, 0);
    assert.equal((await sn.stat('broken')).kind, 'active');
    assert.equal((await core.localContent.info(d)).size, 9);
    assert.deepEqual(await driverKeys(core), ['crashed-2', 'crashed-base']);
    const later = await core.gc({ now: () => Date.now() + 3_600_000 });
    assert.deepEqual(later.removed.blobs, [d]);
    assert.equal(later.removedBackendSnapshots, 2);
    assert.deepEqual(await driverKeys(core), []);
    assert.equal((await core.localContent.info(kept)).size, 8);
    assert.deepEqual(later.removed.snapshots, [
      { namespace: 'default', snapshotter: 'native', key: 'broken' },
    ]);
    await assert.rejects(sn.stat('broken'), (e) => isKilnError(e, 'NotFound'));
  });

  void it('waits for a commit in flight before marking', async (t) => {
    const core = await openCore({
      root: path.join(tmp, 'inflight'),
      namespace: 'default',
      snapshotter: 'native',
    });
    t.after(() => core.close());
    core.leases.create({ id: 'l' });
    const w = await core.content.withLease('l').writer({ ref: 'r' });
    await w.write(enc.encode('racing'));
    // Hold the lock as a commit does; GC must not run until it is released.
    let release!: () => void;
    const held = core.db.gcLock.shared(() => new Promise<void>((r) => (release = r)));
    let gcDone = false;
    const gc = core.gc().then((r) => {
      gcDone = true;
      return r;
    });
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(gcDone, false);
    release();
    await held;
    const res = await gc;
    assert.equal(res.removedContent, 0);
    const d = await w.commit();
    assert.equal((await core.content.info(d)).size, 6);
    core.leases.delete('l');
    const res2 = await core.gc();
    assert.deepEqual(res2.removed.blobs, [d]);
  });
});
