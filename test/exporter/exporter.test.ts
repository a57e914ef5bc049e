/**
 * The exporters on a real build result (a committed overlayfs snapshot chain
 * made here, see ./fixtures.ts) against real peers: the image store (chain
 * snapshots `kiln run` uses), oci-image-tool and umoci on the OCI layout,
 * `docker load` + `docker run` on the docker-archive, docker-registry +
 * `docker pull` + `docker run` on a push, GNU tar and the tree itself for
 * local and tar outputs. Also: layer reuse (a second export computes
 * nothing; a gzip export compresses the store export's uncompressed blobs
 * without a tree walk), SOURCE_DATE_EPOCH (two independent builds of the
 * same inputs give the same manifest digest), history/layer consistency
 * with an empty step; the store export's uncompressed layers (blob = diff
 * ID) gzipped on push (registry blobs gunzip to the stored layers, same
 * config, reused by a second push, kept by GC, run by docker), an explicit
 * `compression=uncompressed` pushed as is, `kiln images export` of such an
 * image; chain snapshots copied from the build snapshots (same tree,
 * xattrs, hard links, whiteouts; unpack then applies nothing).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { type Digest, sha256 } from '../../src/core/digest.ts';
import { exportImages, push } from '../../src/core/images/index.ts';
import { chainIDs, unpack } from '../../src/core/images/unpack.ts';
import {
  type ImageConfig,
  type Manifest,
  parseImageConfig,
  parseManifest,
} from '../../src/core/images/types.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { setTempMountRoot, withTempMount } from '../../src/core/mount/mount.ts';
import { chainFromBuild } from '../../src/exporter/chain.ts';
import {
  buildImage,
  EMPTY_LAYER_DIFF_ID,
  exportResult,
  formatTime,
  parseOutputSpec,
  type SnapshotLayer,
} from '../../src/exporter/index.ts';
import { busyboxRootfs, listTree, type Registry, startRegistry } from '../core/fixtures/images.ts';
import { chainConfig, docker, dockerAvailable, execFileP, makeChain, snapshotTree } from './fixtures.ts';

const repo = join(import.meta.dirname, '../..');

async function readBlob(core: Core, digest: Digest): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of core.content.read(digest)) parts.push(c);
  return Buffer.concat(parts);
}

void describe('exporters on a built snapshot chain', () => {
  let work: string;
  let core: Core;
  let rootfs: string;
  let result: string;
  let tree: string[];
  let firstLayers: SnapshotLayer[] = [];
  let haveDocker = false;
  const dockerImages: string[] = [];
  const tag = randomBytes(4).toString('hex');
  /** One registry for the push tests, started by the first that needs it. */
  let registry: Promise<Registry> | undefined;
  const sharedRegistry = (): Promise<Registry> => (registry ??= startRegistry(join(work, 'reg')));

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'kiln-exporter-'));
    setTempMountRoot(join(work, 'mounts'));
    rootfs = await busyboxRootfs(join(work, 'rootfs'));
    core = await openCore({ root: join(work, 'state'), namespace: 'exp' });
    result = await makeChain(core, rootfs);
    tree = await snapshotTree(core, result);
    haveDocker = await dockerAvailable();
  });

  after(async () => {
    await (await registry?.catch(() => undefined))?.stop();
    for (const img of dockerImages) await docker(['rmi', '-f', img]).catch(() => {});
    await core?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  void test('image exporter: record, manifest, config and history agree; rootfs under its chain ID', async () => {
    const seen: SnapshotLayer[] = [];
    const [res] = await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec('type=image,name=kiln-test/app:1')],
      progress: (l) => seen.push(l),
    });
    firstLayers = seen;
    assert.deepEqual(
      seen.map((l) => l.source).sort(),
      ['computed', 'computed', 'computed', 'computed'],
      'every layer computed once',
    );
    const empty = seen.filter((l) => l.empty);
    assert.deepEqual(
      empty.map((l) => [l.snapshot, l.diffID]),
      [['step2', EMPTY_LAYER_DIFF_ID]],
    );
    const img = core.images.get('docker.io/kiln-test/app:1');
    assert.equal(img.target.digest, res!.manifest!.digest);
    const manifest = parseManifest(await readBlob(core, img.target.digest));
    const config = parseImageConfig(await readBlob(core, manifest.config.digest));
    assert.equal(manifest.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    // Every history step that made a snapshot keeps its layer, the empty one too (as BuildKit).
    assert.equal(manifest.layers.length, 4);
    // The store export keeps layers uncompressed (as docker's store): each blob is the layer tar.
    for (const l of manifest.layers) {
      assert.equal(l.mediaType, 'application/vnd.oci.image.layer.v1.tar');
      assert.equal(l.annotations, undefined);
    }
    assert.deepEqual(
      manifest.layers.map((l) => l.digest),
      ['base', 'step1', 'step2', 'step3'].map((n) => seen.find((l) => l.snapshot === n)!.diffID),
      'blob digest = diff ID',
    );
    const layerFile = join(work, 'layer1.tar');
    await writeFile(layerFile, await readBlob(core, manifest.layers[1]!.digest));
    const tarList = await execFileP('tar', ['-tf', layerFile]);
    assert.ok(tarList.stdout.split('\n').includes('hello.txt'), tarList.stdout);
    // diff_ids: every layer, root first
    const byName = new Map(seen.map((l) => [l.snapshot, l]));
    assert.deepEqual(
      config.rootfs.diff_ids,
      ['base', 'step1', 'step2', 'step3'].map((n) => byName.get(n)!.diffID),
    );
    // history: the empty RUN keeps its (empty) layer; non-empty entries = layers
    const hist = config.history!;
    assert.equal(hist.length, 5);
    assert.deepEqual(
      hist.map((h) => h.empty_layer === true),
      [false, false, false, true, false],
    );
    assert.equal(hist.filter((h) => !h.empty_layer).length, manifest.layers.length);
    // Times as BuildKit: a layer's entry has its snapshot's commit time, the empty-layer entry the
    // time before it, the config the last one.
    const at = (n: string): string => formatTime(byName.get(n)!.createdAt!);
    assert.deepEqual(
      hist.map((h) => h.created),
      [at('base'), at('step1'), at('step2'), at('step2'), at('step3')],
    );
    assert.equal(config.created, at('step3'));
    // So exporting the same result again (a rebuild answered from the cache) gives the same image.
    await new Promise((r) => setTimeout(r, 20));
    const [again] = await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec('type=image,name=kiln-test/app:again')],
    });
    assert.equal(again!.manifest!.digest, res!.manifest!.digest);
    core.images.delete('docker.io/kiln-test/app:again');
    // GC labels on the manifest, snapshot link on the config
    const minfo = await core.content.info(img.target.digest);
    assert.equal(minfo.labels['containerd.io/gc.ref.content.config'], manifest.config.digest);
    assert.equal(minfo.labels['kiln.dev/push.compression'], 'gzip', 'a push compresses its layers');
    manifest.layers.forEach((l, i) => {
      assert.equal(minfo.labels[`containerd.io/gc.ref.content.l.${i}`], l.digest);
    });
    const top = chainIDs(config.rootfs.diff_ids).at(-1)!;
    const cinfo = await core.content.info(manifest.config.digest);
    assert.equal(cinfo.labels['containerd.io/gc.ref.snapshot.overlayfs'], top);
    // the rootfs `kiln run` would use (named by chain ID) is the result's tree
    assert.deepEqual(await snapshotTree(core, top), tree);
    // and `kiln run` runs it (without unpacking again)
    const run = await execFileP(join(repo, 'bin/kiln'), [
      '--root',
      join(work, 'state'),
      '-n',
      'exp',
      'run',
      '--rm',
      'kiln-test/app:1',
      'sh',
      '-c',
      'cat /hello.txt /data/b; test -e /bin/vi || echo no vi',
    ]);
    assert.equal(run.stdout, 'hello from kiln\nshared bytes\nno vi\n');
    // GC keeps all of it: the image holds manifest → config → chain snapshots
    await core.gc();
    await core.content.info(manifest.layers[2]!.digest);
    assert.deepEqual(await snapshotTree(core, top), tree);
  });

  void test('a second export reuses every layer (none computed); a gzip export compresses the uncompressed blobs; another compression is reused unless forced', async () => {
    const again: SnapshotLayer[] = [];
    const [res] = await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec('type=image,name=kiln-test/app:1b')],
      progress: (l) => again.push(l),
    });
    assert.deepEqual(
      again.map((l) => l.source),
      ['label', 'label', 'label', 'label'],
    );
    const m1 = parseManifest(
      await readBlob(core, core.images.get('docker.io/kiln-test/app:1').target.digest),
    );
    assert.deepEqual(parseManifest(await readBlob(core, res!.manifest!.digest)).layers, m1.layers);
    // gzip (buildImage's default, and oci tars / pushes): converted from the uncompressed blobs, no tree walk
    const conv: SnapshotLayer[] = [];
    const gz = await buildImage(core, {
      snapshot: result,
      config: chainConfig(),
      progress: (l) => conv.push(l),
    });
    core.leases.delete(gz.lease);
    assert.deepEqual(
      conv.map((l) => l.source),
      ['converted', 'converted', 'converted', 'converted'],
    );
    assert.deepEqual(
      gz.manifest.layers.map((l) => l.mediaType),
      Array(4).fill('application/vnd.oci.image.layer.v1.tar+gzip'),
    );
    for (const l of gz.layers) {
      assert.equal(sha256(gunzipSync(await readBlob(core, l.descriptor.digest))), l.diffID);
    }
    const seen: SnapshotLayer[] = [];
    const built = await buildImage(core, {
      snapshot: result,
      config: chainConfig(),
      progress: (l) => seen.push(l),
    });
    try {
      assert.deepEqual(
        seen.map((l) => l.source),
        ['label', 'label', 'label', 'label'],
      );
      assert.deepEqual(
        built.layers.map((l) => l.descriptor.digest),
        gz.layers.map((l) => l.descriptor.digest),
      );
      assert.deepEqual(
        built.layers.map((l) => l.diffID),
        ['base', 'step1', 'step2', 'step3'].map((n) => firstLayers.find((l) => l.snapshot === n)!.diffID),
      );
    } finally {
      core.leases.delete(built.lease);
    }
    // uncompressed wanted: a gzip blob made before is reused as is (nothing computed)
    const u: SnapshotLayer[] = [];
    const ub = await buildImage(core, {
      snapshot: result,
      config: chainConfig(),
      compression: 'none',
      progress: (l) => u.push(l),
    });
    core.leases.delete(ub.lease);
    assert.deepEqual(
      u.map((l) => l.source),
      ['label', 'label', 'label', 'label'],
    );
    assert.deepEqual(
      ub.manifest.layers.map((l) => l.mediaType),
      Array(4).fill('application/vnd.oci.image.layer.v1.tar'),
    );
    // another compression is reused as is unless forced
    const seen2: SnapshotLayer[] = [];
    const z = await buildImage(core, {
      snapshot: result,
      config: chainConfig(),
      compression: 'zstd',
      progress: (l) => seen2.push(l),
    });
    core.leases.delete(z.lease);
    assert.deepEqual(
      z.manifest.layers.map((l) => l.mediaType),
      Array(4).fill('application/vnd.oci.image.layer.v1.tar+gzip'),
    );
    const z2 = await buildImage(core, {
      snapshot: result,
      config: chainConfig(),
      compression: 'zstd',
      forceCompression: true,
    });
    core.leases.delete(z2.lease);
    assert.deepEqual(
      z2.manifest.layers.map((l) => l.mediaType),
      Array(4).fill('application/vnd.oci.image.layer.v1.tar+zstd'),
    );
    assert.deepEqual(
      z2.config.rootfs.diff_ids,
      z.config.rootfs.diff_ids,
      'same diff IDs whatever the compression',
    );
  });

  void test('oci exporter: oci-image-tool validates the layout; umoci unpacks the same tree (deletions applied)', async () => {
    const out = join(work, 'oci.tar');
    const [res] = await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec(`type=oci,dest=${out},name=kiln-test/app:oci`)],
    });
    const dir = join(work, 'oci');
    await mkdir(dir);
    await execFileP('tar', ['-xf', out, '-C', dir]);
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
      manifests: { digest: string; annotations: Record<string, string> }[];
    };
    assert.equal(index.manifests.length, 1);
    assert.equal(index.manifests[0]!.digest, res!.manifest!.digest);
    assert.deepEqual(index.manifests[0]!.annotations, {
      'io.containerd.image.name': 'docker.io/kiln-test/app:oci',
      'org.opencontainers.image.ref.name': 'oci',
    });
    await execFileP('oci-image-tool', ['validate', '--type', 'image', '--ref', 'name=oci', dir]);
    const bundle = join(work, 'bundle');
    await execFileP('umoci', ['unpack', '--image', `${dir}:oci`, bundle]);
    const got = await listTree(join(bundle, 'rootfs'));
    assert.deepEqual(got, tree);
    assert.ok(!got.some((l) => l.startsWith('bin/vi ')), 'bin/vi deleted');
    assert.ok(got.some((l) => l.startsWith('data/suid f 4755 1000:1000 ')));
  });

  void test('docker exporter: docker load accepts it and docker run runs it', async (t) => {
    if (!haveDocker) {
      t.skip('docker daemon not available (docker info failed)');
      return;
    }
    const out = join(work, 'docker.tar');
    const name = `kiln-exporter-test/docker:${tag}`;
    dockerImages.push(name);
    const [res] = await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec(`type=docker,dest=${out},name=${name}`)],
    });
    // Uncompressed by default: the tar holds the store's uncompressed blobs (blob digest = diff ID).
    const dm = parseManifest(await readBlob(core, res!.manifest!.digest));
    assert.deepEqual(
      dm.layers.map((l) => [l.mediaType, l.digest]),
      ['base', 'step1', 'step2', 'step3'].map((n) => [
        'application/vnd.oci.image.layer.v1.tar',
        firstLayers.find((l) => l.snapshot === n)!.diffID,
      ]),
    );
    const loaded = await docker(['load', '-i', out]);
    assert.match(loaded, new RegExp(`Loaded image: ${name}`));
    const id = (await docker(['image', 'inspect', '--format', '{{.Id}}', name])).trim();
    assert.equal(id, res!.config!.digest, 'docker image ID = config digest');
    assert.equal(
      await docker(['run', '--rm', '--network', 'none', name, 'cat', '/hello.txt']),
      'hello from kiln\n',
    );
    assert.equal(
      await docker([
        'run',
        '--rm',
        '--network',
        'none',
        name,
        'sh',
        '-c',
        'test -e /bin/vi || echo gone; cat /data/b; /app/run.sh',
      ]),
      'gone\nshared bytes\nrun\n',
    );
  });

  void describe('registry exporter', () => {
    let reg: Registry;
    before(async () => {
      reg = await sharedRegistry();
    });

    void test('a pushed image is pulled and run by docker', async (t) => {
      const ref = `${reg.host}/kiln/app:${tag}`;
      const [res] = await exportResult(core, {
        snapshot: result,
        config: chainConfig(),
        outputs: [parseOutputSpec(`type=registry,name=${ref}`)],
        remote: { retries: 1, backoffMs: 10 },
      });
      assert.deepEqual(res!.pushed, [`${reg.host}/kiln/app:${tag}`]);
      const r = await fetch(`http://${reg.host}/v2/kiln/app/manifests/${tag}`, {
        headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
      });
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('docker-content-digest'), res!.manifest!.digest);
      const m = (await r.json()) as Manifest;
      assert.equal(m.layers.length, 4);
      if (!haveDocker) {
        t.skip('docker daemon not available (docker info failed)');
        return;
      }
      dockerImages.push(ref);
      await docker(['pull', '-q', ref]);
      assert.equal(
        await docker(['run', '--rm', '--network', 'none', ref, 'cat', '/hello.txt']),
        'hello from kiln\n',
      );
    });
  });

  void describe('push of a store image (uncompressed layers)', () => {
    let reg: Registry;
    before(async () => {
      reg = await sharedRegistry();
    });

    void test('layers are gzipped on the way (same config); a second push reuses them; GC keeps them; docker runs it', async (t) => {
      const ref = `${reg.host}/kiln/store:${tag}`;
      const [stored] = await exportResult(core, {
        snapshot: result,
        config: chainConfig(),
        outputs: [parseOutputSpec('type=image,name=kiln-test/app:store')],
      });
      const local = parseManifest(await readBlob(core, stored!.manifest!.digest));
      assert.ok(local.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar'));
      const r1 = await push(core, 'kiln-test/app:store', ref, { remote: { retries: 1, backoffMs: 10 } });
      assert.notEqual(r1.target.digest, stored!.manifest!.digest, 'a rewritten manifest is pushed');
      assert.equal(core.images.get('docker.io/kiln-test/app:store').target.digest, stored!.manifest!.digest);
      const res = await fetch(`http://${reg.host}/v2/kiln/store/manifests/${tag}`, {
        headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
      });
      assert.equal(res.headers.get('docker-content-digest'), r1.target.digest);
      const pushed = (await res.json()) as Manifest;
      assert.deepEqual(pushed.config, local.config, 'same config, same diff IDs');
      assert.equal(pushed.layers.length, local.layers.length);
      for (const [i, l] of pushed.layers.entries()) {
        assert.equal(l.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
        const blob = await fetch(`http://${reg.host}/v2/kiln/store/blobs/${l.digest}`);
        const bytes = Buffer.from(await blob.arrayBuffer());
        assert.equal(sha256(bytes), l.digest);
        assert.equal(sha256(gunzipSync(bytes)), local.layers[i]!.digest, 'gunzip gives the stored layer');
        // the uncompressed blob links its gzip form (a GC reference)
        const info = await core.content.info(local.layers[i]!.digest);
        assert.equal(info.labels['containerd.io/gc.ref.content.kiln.push.gzip'], l.digest);
      }
      // GC keeps the gzip forms and the rewritten manifest while the image exists
      await core.gc();
      for (const l of pushed.layers) await core.content.info(l.digest);
      await core.content.info(r1.target.digest);
      // a second push (another repository) converts nothing and finds the same manifest
      const before = Date.now();
      const r2 = await push(core, 'kiln-test/app:store', `${reg.host}/kiln/again:${tag}`, {
        remote: { retries: 1, backoffMs: 10 },
      });
      assert.equal(r2.target.digest, r1.target.digest);
      for (const l of pushed.layers) {
        const info = await core.content.info(l.digest);
        assert.ok(info.createdAt.getTime() < before, `gzip blob ${l.digest} made once`);
      }
      assert.ok(r2.blobs.every((b) => b.result === 'mounted' || b.result === 'exists'));
      if (!haveDocker) {
        t.skip('docker daemon not available (docker info failed)');
        return;
      }
      dockerImages.push(ref);
      await docker(['pull', '-q', ref]);
      assert.equal(
        await docker([
          'run',
          '--rm',
          '--network',
          'none',
          ref,
          'sh',
          '-c',
          'cat /hello.txt; test -e /bin/vi || echo gone',
        ]),
        'hello from kiln\ngone\n',
      );
    });

    void test('type=image,push=true pushes gzip; compression=uncompressed pushes the layers as they are', async () => {
      const gzRef = `${reg.host}/kiln/gz:${tag}`;
      const [g] = await exportResult(core, {
        snapshot: result,
        config: chainConfig(),
        outputs: [parseOutputSpec(`type=image,push=true,name=${gzRef}`)],
        remote: { retries: 1, backoffMs: 10 },
      });
      const gm = parseManifest(await readBlob(core, g!.manifest!.digest));
      assert.ok(gm.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar+gzip'));
      const unRef = `${reg.host}/kiln/raw:${tag}`;
      const [u] = await exportResult(core, {
        snapshot: result,
        config: chainConfig(),
        outputs: [parseOutputSpec(`type=image,push=true,compression=uncompressed,name=${unRef}`)],
        remote: { retries: 1, backoffMs: 10 },
      });
      const res = await fetch(`http://${reg.host}/v2/kiln/raw/manifests/${tag}`, {
        headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
      });
      assert.equal(res.headers.get('docker-content-digest'), u!.manifest!.digest);
      const m = (await res.json()) as Manifest;
      assert.ok(m.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar'));
    });

    void test('kiln images export of a store image: docker-archive loads and runs under docker; OCI layout validates', async (t) => {
      const dir = join(work, 'images-export');
      await mkdir(dir, { recursive: true });
      const layout = join(dir, 'layout');
      await exportImages(core, ['kiln-test/app:store'], layout, { format: 'oci' });
      await execFileP('oci-image-tool', ['validate', '--type', 'image', '--ref', 'name=store', layout]);
      if (!haveDocker) {
        t.skip('docker daemon not available (docker info failed)');
        return;
      }
      const tarPath = join(dir, 'docker.tar');
      await exportImages(core, ['kiln-test/app:store'], tarPath, { format: 'docker' });
      const name = 'kiln-test/app:store';
      dockerImages.push(name);
      await docker(['load', '-i', tarPath]);
      assert.equal(
        await docker(['run', '--rm', '--network', 'none', name, 'cat', '/hello.txt']),
        'hello from kiln\n',
      );
    });
  });

  /** [ino, nlink] of `file` in committed snapshot `name`. */
  async function inode(c: Core, name: string, file: string): Promise<[number, number]> {
    const sn = await c.snapshotter();
    const key = `ino-${Math.random().toString(36).slice(2)}`;
    try {
      return await withTempMount(await sn.view(key, name), async (dir) => {
        const st = await lstat(join(dir, file));
        return [st.ino, st.nlink];
      });
    } finally {
      await sn.remove(key);
    }
  }

  void test('chain snapshots are the build snapshots themselves (shared records: nothing linked, copied or applied); they outlive the build records; SOURCE_DATE_EPOCH leaves them to unpack', async () => {
    const c2 = await openCore({ root: join(work, 'state-chain'), namespace: 'chain' });
    try {
      const res2 = await makeChain(c2, rootfs, 'c-');
      const want = await snapshotTree(c2, res2);
      const built = await inode(c2, res2, 'hello.txt');
      const img = await buildImage(c2, { snapshot: res2, config: chainConfig(), compression: 'none' });
      try {
        assert.equal(await chainFromBuild(c2, img, { lease: img.lease, sourceDateEpoch: 0 }), 0);
        const backends = c2.db.all('SELECT DISTINCT backend_key FROM snapshots').length;
        assert.equal(await chainFromBuild(c2, img, { lease: img.lease }), 4);
        assert.equal(
          c2.db.all('SELECT DISTINCT backend_key FROM snapshots').length,
          backends,
          'no driver snapshot made',
        );
        const top = img.chainID!;
        assert.deepEqual(await snapshotTree(c2, top), want);
        assert.deepEqual(await inode(c2, top, 'hello.txt'), built, 'the same inode, no extra link');
        // The build's records go (their lease and the test's); the chain keeps the trees.
        const sn0 = await c2.snapshotter();
        for (const k of ['step3', 'step2', 'step1', 'base']) await sn0.remove(`c-${k}`);
        await c2.gc();
        assert.deepEqual(await snapshotTree(c2, top), want);
        const info = await (await c2.snapshotter()).stat(top);
        assert.equal(info.labels['containerd.io/snapshot.ref'], top);
        assert.equal(info.labels['containerd.io/uncompressed'], img.layers[3]!.diffID);
        // xattrs and hard links as in the build's tree; the deletion is a whiteout
        const sn = await c2.snapshotter();
        const mounts = await sn.view('chain-check', top);
        try {
          await withTempMount(mounts, async (dir) => {
            const x = await execFileP('getfattr', ['--only-values', '-n', 'user.kiln', join(dir, 'data/a')]);
            assert.equal(x.stdout, 'exported');
            const [a, b] = await Promise.all([lstat(join(dir, 'data/a')), lstat(join(dir, 'data/b'))]);
            assert.equal(a.ino, b.ino, 'data/a and data/b stay one file');
            await assert.rejects(lstat(join(dir, 'bin/vi')));
          });
        } finally {
          await sn.remove('chain-check');
        }
        // unpack then finds every chain snapshot and applies nothing
        const statuses: string[] = [];
        await unpack(c2, img.manifestDesc, { progress: (p) => statuses.push(p.status) });
        assert.deepEqual(statuses, ['exists', 'exists', 'exists', 'exists']);
      } finally {
        c2.leases.delete(img.lease);
      }
    } finally {
      await c2.close();
    }
  });

  void test("a chain snapshot whose parent is not the build snapshot's parent is linked from it (same tree, a hard link to each built file)", async () => {
    const c3 = await openCore({ root: join(work, 'state-chain-link'), namespace: 'chain' });
    try {
      const res3 = await makeChain(c3, rootfs, 'l-');
      const want = await snapshotTree(c3, res3);
      const [ino, nlink] = await inode(c3, res3, 'hello.txt');
      const img = await buildImage(c3, { snapshot: res3, config: chainConfig(), compression: 'none' });
      try {
        // Layer 0's chain snapshot is made another way (a copy of the same tree), so the build's
        // step1 does not sit on it and cannot be shared: layers 1-3 are linked.
        const sn = (await c3.snapshotter()).withLease(img.lease);
        const chain0 = chainIDs(img.layers.map((l) => l.diffID))[0]!;
        await withTempMount(await sn.prepare('l-chain0'), (dir) =>
          execFileP('cp', ['-a', `${rootfs}/.`, dir]),
        );
        await sn.commit(chain0, 'l-chain0');
        assert.equal(await chainFromBuild(c3, img, { lease: img.lease }), 3);
        const top = img.chainID!;
        assert.deepEqual(await snapshotTree(c3, top), want);
        assert.deepEqual(await inode(c3, top, 'hello.txt'), [ino, nlink + 1]);
      } finally {
        c3.leases.delete(img.lease);
      }
    } finally {
      await c3.close();
    }
  });

  void test('local exporter copies the tree (modes, owners, hard links, xattrs, fifo)', async () => {
    const dest = join(work, 'local');
    await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec(`type=local,dest=${dest}`)],
    });
    assert.deepEqual(await listTree(dest), tree);
    const a = await lstat(join(dest, 'data/a'));
    const b = await lstat(join(dest, 'data/b'));
    assert.equal(a.ino, b.ino, 'hard link kept');
    const { stdout } = await execFileP('getfattr', [
      '--only-values',
      '-n',
      'user.kiln',
      join(dest, 'data/a'),
    ]);
    assert.equal(stdout, 'exported');
  });

  void test('tar exporter: GNU tar extracts the tree; stdout gives the same bytes; SOURCE_DATE_EPOCH clamps mtimes', async () => {
    const out = join(work, 'fs.tar');
    await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec(`type=tar,dest=${out}`)],
    });
    const dir = join(work, 'fs');
    await mkdir(dir);
    await execFileP('tar', ['--numeric-owner', '-xpf', out, '-C', dir]);
    assert.deepEqual(await listTree(dir), tree);
    const sink = new PassThrough();
    const parts: Buffer[] = [];
    sink.on('data', (c: Buffer) => parts.push(c));
    await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec('-')],
      stdout: sink,
    });
    assert.ok(Buffer.concat(parts).equals(await readFile(out)));
    const clamped = join(work, 'fs-sde.tar');
    await exportResult(core, {
      snapshot: result,
      config: chainConfig(),
      outputs: [parseOutputSpec(`type=tar,dest=${clamped}`)],
      sourceDateEpoch: 1000,
    });
    const { stdout } = await execFileP('tar', ['--full-time', '-tvf', clamped]);
    const times = new Set(
      stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split(/\s+/).slice(3, 5).join(' ')),
    );
    assert.deepEqual([...times], ['1970-01-01 00:16:40']);
  });

  void test('an output to a device (dest=/dev/null style) writes into it and never replaces it', async () => {
    // A private null device, so the host's /dev/null is never at stake.
    const dev = join(work, 'null-copy');
    await execFileP('mknod', ['-m', '666', dev, 'c', '1', '3']);
    for (const type of ['tar', 'oci', 'docker']) {
      await exportResult(core, {
        snapshot: result,
        config: chainConfig(),
        outputs: [
          parseOutputSpec(`type=${type},dest=${dev}${type === 'tar' ? '' : ',name=kiln-test/dev:1'}`),
        ],
      });
      const st = await lstat(dev);
      assert.ok(st.isCharacterDevice(), `${type} output left ${dev} a character device`);
    }
  });

  void test('SOURCE_DATE_EPOCH: two independent builds of the same inputs give the same manifest digest', async () => {
    const other = await openCore({ root: join(work, 'state2'), namespace: 'exp' });
    try {
      const second = await makeChain(other, rootfs, 'again-');
      const out: Digest[] = [];
      const configs: ImageConfig[] = [];
      for (const [c, snap] of [
        [core, result],
        [other, second],
      ] as const) {
        const [r] = await exportResult(c, {
          snapshot: snap,
          config: chainConfig(),
          outputs: [
            parseOutputSpec('type=image,name=kiln-test/sde:1,unpack=false'),
            parseOutputSpec(`type=oci,name=kiln-test/sde:1,dest=${join(work, `sde-${out.length}.tar`)}`),
          ],
          sourceDateEpoch: 1700000000,
        });
        out.push(r!.manifest!.digest);
        configs.push(parseImageConfig(await readBlob(c, r!.config!.digest)));
      }
      assert.equal(out[0], out[1]);
      assert.ok(
        (await readFile(join(work, 'sde-0.tar'))).equals(await readFile(join(work, 'sde-1.tar'))),
        'the OCI tars are byte-identical',
      );
      assert.equal(configs[0]!.created, '2023-11-14T22:13:20Z');
      // without it, the layers of the two builds differ (mtimes), so the epoch is what made them equal
      const a = await buildImage(core, { snapshot: result, config: chainConfig() });
      const b = await buildImage(other, { snapshot: second, config: chainConfig() });
      core.leases.delete(a.lease);
      other.leases.delete(b.lease);
      assert.notEqual(a.manifest.layers[1]!.digest, b.manifest.layers[1]!.digest);
    } finally {
      await other.close();
    }
  });
});
