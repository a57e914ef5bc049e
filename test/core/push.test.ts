/**
 * Push to a REAL docker-registry on loopback. Images come into Kiln by
 * importing OCI layouts made here (busybox-static root filesystem). Checks
 * with skopeo as the peer: Kiln push → `skopeo copy` to an OCI layout gives
 * the same manifest digest and bytes; a second push skips every blob (HEAD);
 * a push to another repository of the same registry mounts the blobs; large
 * blobs go in PATCH chunks (seen by a proxy); a multi-platform index is
 * pushed with its manifests; a missing blob is a clear error; uncompressed
 * layers are pushed as stored by default and, with `layerCompression:
 * 'gzip'`, gzipped (index and Docker media types rewritten, the same config,
 * once: a second push reuses the recorded gzip blobs).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { sha256 } from '../../src/core/digest.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { importImages, pull, push } from '../../src/core/images/index.ts';
import { writeBlob } from '../../src/core/images/content.ts';
import { parsePlatform } from '../../src/core/images/platform.ts';
import type { Descriptor, Index } from '../../src/core/images/types.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { setTempMountRoot } from '../../src/core/mount/mount.ts';
import {
  busyboxRootfs,
  execFileP,
  type LayoutImage,
  makeLayout,
  type Registry,
  skopeo,
  startProxy,
  startRegistry,
  tarDir,
  tempDir,
} from './fixtures/images.ts';

const fast = { retries: 1, backoffMs: 10, maxBackoffMs: 20 };

void describe('push to docker-registry', () => {
  let work: string;
  let reg: Registry;
  let core: Core;
  let img: LayoutImage;
  let arm: LayoutImage;

  before(async () => {
    work = await tempDir('kiln-push-');
    setTempMountRoot(join(work, 'mounts'));
    reg = await startRegistry(join(work, 'reg'));
    const base = await busyboxRootfs(join(work, 'base'));
    const t1 = await tarDir(base, join(work, 'l1.tar'));
    img = await makeLayout(join(work, 'layout'), 'v1', [t1, Buffer.alloc(2048)]);
    arm = await makeLayout(join(work, 'layout'), 'arm', [Buffer.alloc(3072)], { arch: 'arm64' });
    core = await openCore({ root: join(work, 'state'), namespace: 'push' });
    await importImages(core, img.layout, { name: 'local/busybox' });
  });

  after(async () => {
    await core?.close();
    await reg?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  void test('Kiln push → skopeo copy gives the same manifest digest; a second push skips, another repo mounts', async () => {
    const names = core.images.list().map((i) => i.name);
    assert.ok(names.includes('docker.io/local/busybox:v1'), names.join(','));
    const r = await push(core, 'docker.io/local/busybox:v1', `${reg.host}/app/busybox:v1`, { remote: fast });
    assert.equal(r.target.digest, img.manifest.digest);
    assert.deepEqual(
      r.blobs.map((b) => b.result),
      ['uploaded', 'uploaded', 'uploaded'],
    );
    const out = join(work, 'copied');
    await skopeo([
      'copy',
      '--quiet',
      '--src-tls-verify=false',
      `docker://${reg.host}/app/busybox:v1`,
      `oci:${out}:x`,
    ]);
    const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as Index;
    assert.equal(index.manifests[0]!.digest, img.manifest.digest);
    const raw = await skopeo([
      'inspect',
      '--raw',
      '--tls-verify=false',
      `docker://${reg.host}/app/busybox:v1`,
    ]);
    assert.equal(sha256(Buffer.from(raw)), img.manifest.digest);

    const again = await push(core, 'docker.io/local/busybox:v1', `${reg.host}/app/busybox:v2`, {
      remote: fast,
    });
    assert.ok(again.blobs.every((b) => b.result === 'exists'));
    const other = await push(core, 'docker.io/local/busybox:v1', `${reg.host}/other/repo:v1`, {
      remote: fast,
    });
    assert.ok(
      other.blobs.every((b) => b.result === 'mounted'),
      other.blobs.map((b) => b.result).join(','),
    );
    assert.equal(
      (
        await skopeo([
          'inspect',
          '--tls-verify=false',
          '--format',
          '{{.Digest}}',
          `docker://${reg.host}/other/repo:v1`,
        ])
      ).trim(),
      img.manifest.digest,
    );
  });

  void test('docker pulls what Kiln pushed: same digest, and it runs (needs a docker daemon)', async (t) => {
    try {
      execFileSync('docker', ['info'], { stdio: 'ignore', timeout: 5000 });
    } catch {
      t.skip('no docker daemon answers `docker info` on this machine');
      return;
    }
    const ref = `${reg.host}/docker/busybox:v1`;
    await push(core, 'docker.io/local/busybox:v1', ref, { remote: fast });
    try {
      await execFileP('docker', ['pull', '-q', ref]);
      const { stdout } = await execFileP('docker', ['inspect', '--format', '{{index .RepoDigests 0}}', ref]);
      assert.equal(stdout.trim(), `${reg.host}/docker/busybox@${img.manifest.digest}`);
      const run = await execFileP('docker', ['run', '--rm', ref, 'busybox', 'echo', 'ran under docker']);
      assert.equal(run.stdout, 'ran under docker\n');
    } finally {
      await execFileP('docker', ['rmi', ref]).catch(() => {});
    }
  });

  void test('blobs over the chunk size go in PATCH chunks', async () => {
    // A fresh registry, so that no blob is there yet.
    const reg2 = await startRegistry(join(work, 'reg2'));
    const proxy = await startProxy(reg2.host);
    try {
      const r = await push(core, 'docker.io/local/busybox:v1', `${proxy.host}/chunked/app:v1`, {
        remote: fast,
        chunkSize: 256 * 1024,
      });
      assert.equal(r.target.digest, img.manifest.digest);
      const patches = proxy.seen.filter((s) => s.method === 'PATCH');
      assert.ok(
        patches.length >= Math.ceil(img.layers[0]!.size / (256 * 1024)),
        `${patches.length} PATCH requests`,
      );
      const puts = proxy.seen.filter((s) => s.method === 'PUT' && s.url.includes('/blobs/uploads/'));
      assert.equal(puts.length, 3);
      // and a Kiln pull of what was pushed gives the same digests
      const c2 = await openCore({ root: join(work, 'state2'), namespace: 'x' });
      try {
        const p = await pull(c2, `${reg2.host}/chunked/app:v1`, { remote: fast, unpack: false });
        assert.equal(p.target.digest, img.manifest.digest);
      } finally {
        await c2.close();
      }
    } finally {
      await proxy.close();
      await reg2.stop();
    }
  });

  void test('a multi-platform index is pushed with all its manifests', async () => {
    const idx: Index = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        { ...img.manifest, platform: { os: 'linux', architecture: 'amd64' } },
        { ...arm.manifest, platform: { os: 'linux', architecture: 'arm64' } },
      ],
    };
    // Put the index into the layout and import it.
    const { writeFile } = await import('node:fs/promises');
    const bytes = Buffer.from(JSON.stringify(idx));
    const digest = sha256(bytes);
    await writeFile(join(img.layout, 'blobs/sha256', digest.slice(7)), bytes);
    await writeFile(
      join(img.layout, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: idx.mediaType,
            digest,
            size: bytes.byteLength,
            annotations: { 'org.opencontainers.image.ref.name': 'multi' },
          },
        ],
      }),
    );
    const imported = await importImages(core, img.layout, { name: 'local/multi:latest' });
    assert.equal(imported.images[0]!.target.digest, digest);
    const r = await push(core, 'local/multi', `${reg.host}/multi/app:latest`, { remote: fast });
    assert.equal(r.target.digest, digest);
    const raw = await skopeo([
      'inspect',
      '--raw',
      '--tls-verify=false',
      `docker://${reg.host}/multi/app:latest`,
    ]);
    assert.equal(sha256(Buffer.from(raw)), digest);
    const armOut = join(work, 'arm-copy');
    await skopeo([
      'copy',
      '--quiet',
      '--override-arch',
      'arm64',
      '--src-tls-verify=false',
      `docker://${reg.host}/multi/app:latest`,
      `oci:${armOut}:a`,
    ]);
    const armIndex = JSON.parse(await readFile(join(armOut, 'index.json'), 'utf8')) as Index;
    assert.equal(armIndex.manifests[0]!.digest, arm.manifest.digest);
    // only one platform, as its manifest
    const one = await push(core, 'local/multi', `${reg.host}/multi/arm:latest`, {
      remote: fast,
      platform: parsePlatform('linux/arm64'),
    });
    assert.equal(one.target.digest, arm.manifest.digest);
  });

  void test('uncompressed layers: kept by default; layerCompression gzip converts them (index, Docker media types) once', async () => {
    const store = core.content;
    const put = async (mediaType: string, bytes: Uint8Array): Promise<Descriptor> => {
      const d = { mediaType, digest: sha256(bytes), size: bytes.byteLength };
      await writeBlob(store, d, bytes);
      return d;
    };
    const base = await busyboxRootfs(join(work, 'raw-base'));
    const t1 = await tarDir(base, join(work, 'raw-l1.tar'));
    const t2 = Buffer.concat([t1.subarray(0, 512 * 4), Buffer.alloc(1024)]); // a small, different tar
    const layers = [
      await put('application/vnd.docker.image.rootfs.diff.tar', t1),
      await put('application/vnd.docker.image.rootfs.diff.tar', t2),
    ];
    const config = await put(
      'application/vnd.docker.container.image.v1+json',
      Buffer.from(
        JSON.stringify({
          architecture: 'amd64',
          os: 'linux',
          config: { Cmd: ['/bin/sh'] },
          rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
        }),
      ),
    );
    const manifest = await put(
      'application/vnd.docker.distribution.manifest.v2+json',
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
          config,
          layers,
        }),
      ),
    );
    const index = await put(
      'application/vnd.oci.image.index.v1+json',
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.index.v1+json',
          manifests: [
            { ...manifest, platform: { os: 'linux', architecture: 'amd64' } },
            { ...arm.manifest, platform: { os: 'linux', architecture: 'arm64' } },
          ],
        }),
      ),
    );
    // Default (no label on the image): pushed as stored, like containerd.
    const kept = await push(core, manifest, `${reg.host}/raw/kept:v1`, { remote: fast });
    assert.equal(kept.target.digest, manifest.digest);

    const r = await push(core, index, `${reg.host}/raw/gz:v1`, { remote: fast, layerCompression: 'gzip' });
    assert.notEqual(r.target.digest, index.digest);
    const pushedIndex = JSON.parse(
      await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/raw/gz:v1`]),
    ) as Index;
    assert.equal(sha256(Buffer.from(JSON.stringify(pushedIndex))), r.target.digest);
    assert.deepEqual(
      pushedIndex.manifests.map((m) => m.platform?.architecture),
      ['amd64', 'arm64'],
    );
    assert.notEqual(pushedIndex.manifests[0]!.digest, manifest.digest);
    assert.equal(pushedIndex.manifests[1]!.digest, arm.manifest.digest, 'gzip layers: unchanged');
    const m = JSON.parse(
      await skopeo([
        'inspect',
        '--raw',
        '--tls-verify=false',
        `docker://${reg.host}/raw/gz@${pushedIndex.manifests[0]!.digest}`,
      ]),
    ) as { config: Descriptor; layers: Descriptor[] };
    assert.deepEqual(m.config, config);
    for (const [i, l] of m.layers.entries()) {
      assert.equal(l.mediaType, 'application/vnd.docker.image.rootfs.diff.tar.gzip');
      const res = await fetch(`http://${reg.host}/v2/raw/gz/blobs/${l.digest}`);
      assert.equal(sha256(gunzipSync(Buffer.from(await res.arrayBuffer()))), layers[i]!.digest);
    }
    // skopeo copies it (verifying every digest) and the amd64 image is the converted manifest
    const out = join(work, 'raw-copy');
    await skopeo([
      'copy',
      '--quiet',
      '--override-arch',
      'amd64',
      '--src-tls-verify=false',
      `docker://${reg.host}/raw/gz:v1`,
      `oci:${out}:a`,
    ]);
    // a second push converts nothing: the same index, the gzip blobs recorded on the layers
    const gzOf = await Promise.all(
      layers.map(
        async (l) => (await store.info(l.digest)).labels['containerd.io/gc.ref.content.kiln.push.gzip'],
      ),
    );
    assert.deepEqual(
      gzOf,
      m.layers.map((l) => l.digest),
    );
    const again = await push(core, index, `${reg.host}/raw/gz:v2`, {
      remote: fast,
      layerCompression: 'gzip',
    });
    assert.equal(again.target.digest, r.target.digest);
    assert.ok(again.blobs.every((b) => b.result === 'exists'));
  });

  void test('a missing blob is a clear error naming it', async () => {
    const c3 = await openCore({ root: join(work, 'state3'), namespace: 'y' });
    try {
      await importImages(c3, img.layout, { name: 'local/multi:latest' });
      await c3.content.delete(img.layers[1]!.digest);
      await assert.rejects(
        push(c3, 'local/multi', `${reg.host}/broken/app:v1`, { remote: fast }),
        (e: unknown) => {
          assert.ok(isKilnError(e, 'FailedPrecondition'), String(e));
          assert.match((e as Error).message, new RegExp(`${img.layers[1]!.digest}.*is not in the store`));
          return true;
        },
      );
    } finally {
      await c3.close();
    }
  });
});
