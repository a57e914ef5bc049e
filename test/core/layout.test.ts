/**
 * Import and export of OCI layouts (directory and tar) and docker-archive
 * tars, with real peers: layouts made here from busybox-static, skopeo's
 * docker-archive writer (the `docker save` format), `oci-image-tool
 * validate` and `umoci unpack` on Kiln's exports, `docker load` when a
 * docker daemon answers (skipped, saying so, when not).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { exportImages, importImages, unpack } from '../../src/core/images/index.ts';
import { type Index, MediaType, type Manifest } from '../../src/core/images/types.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { setTempMountRoot, withTempMount } from '../../src/core/mount/mount.ts';
import {
  busyboxRootfs,
  execFileP,
  type LayoutImage,
  listTree,
  makeLayout,
  skopeo,
  tarDir,
  tempDir,
} from './fixtures/images.ts';

function dockerAvailable(): boolean {
  try {
    execFileSync('docker', ['info'], { stdio: 'ignore', timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

void describe('OCI layout and docker-archive import/export', () => {
  let work: string;
  let base: string;
  let baseTree: string[];
  let img: LayoutImage;
  let core: Core;
  let n = 0;
  const fresh = async (): Promise<Core> => openCore({ root: join(work, `state-${n++}`), namespace: 'l' });

  async function unpackedTree(c: Core, manifest: LayoutImage['manifest']): Promise<string[]> {
    const u = await unpack(c, manifest);
    const sn = await c.snapshotter();
    const mounts = await sn.view(`check-${n++}`, u.chainID!);
    return withTempMount(mounts, (dir) => listTree(dir));
  }

  before(async () => {
    work = await tempDir('kiln-layout-');
    setTempMountRoot(join(work, 'mounts'));
    base = await busyboxRootfs(join(work, 'base'), { 'etc/motd': 'layout test\n' });
    baseTree = await listTree(base);
    img = await makeLayout(join(work, 'layout'), 'v1', [await tarDir(base, join(work, 'l1.tar'))]);
    core = await fresh();
    await importImages(core, img.layout, { name: 'example.com/bb' });
  });

  after(async () => {
    await core?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  void test('OCI layout dir: import, export; oci-image-tool validates and umoci unpacks the same tree', async () => {
    const image = core.images.get('example.com/bb:v1');
    assert.equal(image.target.digest, img.manifest.digest);
    const m = await core.content.info(img.manifest.digest);
    assert.equal(m.labels['containerd.io/gc.ref.content.l.0'], img.layers[0]!.digest);
    const out = join(work, 'export-dir');
    const r = await exportImages(core, ['example.com/bb:v1'], out);
    assert.equal(r.blobs, 3);
    await execFileP('oci-image-tool', ['validate', '--type', 'image', '--ref', 'name=v1', out]);
    const bundle = join(work, 'bundle');
    await execFileP('umoci', ['unpack', '--image', `${out}:v1`, bundle]);
    assert.deepEqual(await listTree(join(bundle, 'rootfs')), baseTree);
    // Export into the same directory again merges (one entry per name).
    await exportImages(core, ['example.com/bb:v1'], out);
    const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as Index;
    assert.equal(index.manifests.length, 1);
    assert.equal(index.manifests[0]!.annotations?.['io.containerd.image.name'], 'example.com/bb:v1');
  });

  void test('OCI layout tar: export, validate the extracted tree, import into a fresh store', async () => {
    const tar = join(work, 'bb-oci.tar');
    await exportImages(core, ['example.com/bb:v1'], tar);
    const x = join(work, 'bb-oci-x');
    await mkdir(x);
    await execFileP('tar', ['-xf', tar, '-C', x]);
    await execFileP('oci-image-tool', ['validate', '--type', 'image', '--ref', 'name=v1', x]);
    const c = await fresh();
    try {
      const res = await importImages(c, tar);
      assert.equal(res.format, 'oci');
      assert.deepEqual(
        res.images.map((i) => [i.name, i.target.digest]),
        [['example.com/bb:v1', img.manifest.digest]],
      );
      assert.deepEqual(await unpackedTree(c, img.manifest), baseTree);
    } finally {
      await c.close();
    }
  });

  void test('docker save format (written by skopeo) → Kiln import unpacks the same tree', async () => {
    const saved = join(work, 'skopeo-docker.tar');
    await skopeo(['copy', '--quiet', `oci:${img.layout}:v1`, `docker-archive:${saved}:saved/bb:v1`]);
    const c = await fresh();
    try {
      const res = await importImages(c, saved);
      assert.equal(res.format, 'docker');
      assert.equal(res.images[0]!.name, 'docker.io/saved/bb:v1');
      const mbytes = await readAllBytes(c, res.images[0]!.target.digest);
      const m = JSON.parse(mbytes.toString('utf8')) as Manifest;
      assert.equal(
        m.layers[0]!.mediaType,
        MediaType.OciLayer,
        'docker-archive layers are stored as given (uncompressed)',
      );
      assert.equal(m.layers[0]!.digest, img.diffIDs[0]);
      assert.deepEqual(await unpackedTree(c, res.images[0]!.target), baseTree);
      // `docker save | gzip` works too
      await execFileP('gzip', ['-k', '-1', saved]);
      const again = await importImages(c, `${saved}.gz`);
      assert.equal(again.images[0]!.target.digest, res.images[0]!.target.digest);
      // a name renames the image of a one-image archive (its RepoTags are not recorded)
      const renamed = await importImages(c, saved, { name: 'kiln-bench/busybox:1' });
      assert.deepEqual(
        renamed.images.map((i) => i.name),
        ['docker.io/kiln-bench/busybox:1'],
      );
      assert.equal(renamed.images[0]!.target.digest, res.images[0]!.target.digest);
      // --gzip compresses them
      const g = await fresh();
      try {
        const gz = await importImages(g, saved, { compress: 'gzip' });
        const gm = JSON.parse(
          (await readAllBytes(g, gz.images[0]!.target.digest)).toString('utf8'),
        ) as Manifest;
        assert.equal(gm.layers[0]!.mediaType, MediaType.OciLayerGzip);
        assert.ok(gm.layers[0]!.size < m.layers[0]!.size);
        assert.deepEqual(await unpackedTree(g, gz.images[0]!.target), baseTree);
      } finally {
        await g.close();
      }
    } finally {
      await c.close();
    }
  });

  void test('Kiln docker-archive export → Kiln import round trips; skopeo reads it', async () => {
    const tar = join(work, 'kiln-docker.tar');
    await exportImages(core, ['example.com/bb:v1'], tar, { format: 'docker' });
    const list = (await execFileP('tar', ['-tf', tar])).stdout.split('\n');
    assert.ok(list.includes('manifest.json') && list.includes('index.json') && list.includes('oci-layout'));
    const dm = JSON.parse((await execFileP('tar', ['-xOf', tar, 'manifest.json'])).stdout) as {
      Config: string;
      RepoTags: string[];
      Layers: string[];
    }[];
    assert.deepEqual(dm[0]!.RepoTags, ['example.com/bb:v1']);
    assert.equal(dm[0]!.Config, `blobs/sha256/${img.config.digest.slice(7)}`);
    const inspected = JSON.parse(await skopeo(['inspect', `docker-archive:${tar}`])) as { Layers: string[] };
    assert.equal(inspected.Layers.length, 1);
    const c = await fresh();
    try {
      const res = await importImages(c, tar);
      assert.equal(res.images[0]!.target.digest, img.manifest.digest);
    } finally {
      await c.close();
    }
  });

  void test('docker load of a Kiln export; docker save → Kiln import → export → docker load (needs a docker daemon)', async (t) => {
    if (!dockerAvailable()) {
      t.skip('no docker daemon answers `docker info` on this machine');
      return;
    }
    const tar = join(work, 'kiln-docker-load.tar');
    await exportImages(core, ['example.com/bb:v1'], tar, { format: 'docker' });
    const { stdout } = await execFileP('docker', ['load', '-i', tar]);
    assert.match(stdout, /example.com\/bb:v1/);
    const run = await execFileP('docker', ['run', '--rm', 'example.com/bb:v1', 'cat', '/etc/motd']);
    assert.equal(run.stdout, 'layout test\n');
    // docker save → Kiln import → Kiln export → docker load
    const saved = join(work, 'docker-saved.tar');
    await execFileP('docker', ['save', '-o', saved, 'example.com/bb:v1']);
    await execFileP('docker', ['rmi', 'example.com/bb:v1']);
    const c = await fresh();
    try {
      const res = await importImages(c, saved);
      assert.equal(res.format, 'docker');
      assert.equal(res.images[0]!.name, 'example.com/bb:v1');
      assert.deepEqual(await unpackedTree(c, res.images[0]!.target), baseTree);
      const again = join(work, 'kiln-reexport.tar');
      await exportImages(c, ['example.com/bb:v1'], again, { format: 'docker' });
      await execFileP('docker', ['load', '-i', again]);
      const run2 = await execFileP('docker', ['run', '--rm', 'example.com/bb:v1', 'cat', '/etc/motd']);
      assert.equal(run2.stdout, 'layout test\n');
    } finally {
      await c.close();
      await execFileP('docker', ['rmi', 'example.com/bb:v1']).catch(() => {});
    }
  });

  void test('unpack refuses a layer whose uncompressed digest is not the config diff_id', async () => {
    const other = await makeLayout(join(work, 'layout-lie'), 'v1', [
      await tarDir(base, join(work, 'l-lie.tar')),
    ]);
    // Rewrite the config with a wrong diff_id, and the manifest to match.
    const cfgPath = join(other.layout, 'blobs/sha256', other.config.digest.slice(7));
    const cfg = JSON.parse(await readFile(cfgPath, 'utf8')) as { rootfs: { diff_ids: string[] } };
    cfg.rootfs.diff_ids[0] = `sha256:${'ab'.repeat(32)}`;
    const lie = await makeLayoutWithConfig(other, Buffer.from(JSON.stringify(cfg)));
    const c = await fresh();
    try {
      await importImages(c, other.layout, { name: 'lie/img:v1' });
      await assert.rejects(unpack(c, lie), (e: unknown) => {
        assert.ok(isKilnError(e, 'DataLoss'), String(e));
        assert.match((e as Error).message, /diff ID is "sha256:[0-9a-f]{64}", config says "sha256:abab/);
        return true;
      });
      const names: string[] = [];
      await (await c.snapshotter()).walk((i) => {
        names.push(i.name);
      });
      assert.deepEqual(names, [], 'no snapshot is left behind');
    } finally {
      await c.close();
    }
  });

  void test('a blob whose bytes do not match its path is rejected and not kept', async () => {
    const bad = join(work, 'bad-layout');
    await execFileP('cp', ['-a', img.layout, bad]);
    const cfg = join(bad, 'blobs/sha256', img.config.digest.slice(7));
    await writeFile(cfg, Buffer.concat([await readFile(cfg), Buffer.from(' ')]));
    const c = await fresh();
    try {
      await assert.rejects(importImages(c, bad), (e: unknown) => {
        assert.ok(isKilnError(e, 'DataLoss'), String(e));
        assert.match((e as Error).message, new RegExp(img.config.digest.slice(7)));
        return true;
      });
      await assert.rejects(c.content.info(img.config.digest), (e) => isKilnError(e, 'NotFound'));
      assert.deepEqual(await c.content.listStatuses(), []);
      assert.deepEqual(c.images.list(), []);
    } finally {
      await c.close();
    }
  });
});

async function readAllBytes(c: Core, digest: `${string}:${string}`): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const p of c.content.read(digest)) parts.push(p);
  return Buffer.concat(parts);
}

/** Replaces the config of `img`'s layout (and its manifest and index entry); returns the new manifest descriptor. */
async function makeLayoutWithConfig(img: LayoutImage, config: Buffer): Promise<LayoutImage['manifest']> {
  const { sha256 } = await import('../../src/core/digest.ts');
  const cd = sha256(config);
  await writeFile(join(img.layout, 'blobs/sha256', cd.slice(7)), config);
  const m: Manifest = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: MediaType.OciConfig, digest: cd, size: config.length },
    layers: img.layers,
  };
  const mb = Buffer.from(JSON.stringify(m));
  const md = sha256(mb);
  await writeFile(join(img.layout, 'blobs/sha256', md.slice(7)), mb);
  const desc = { mediaType: MediaType.OciManifest, digest: md, size: mb.length };
  const index: Index = {
    schemaVersion: 2,
    manifests: [{ ...desc, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }],
  };
  await writeFile(join(img.layout, 'index.json'), JSON.stringify(index));
  return desc;
}
