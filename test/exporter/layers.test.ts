/**
 * Layer computation and image assembly details: the overlay fast path is
 * taken for committed snapshots and gives the same layer bytes as the
 * generic walk; a base image made by unpack reuses its image layer blob
 * (same diff ID and digest, nothing recomputed, its chain snapshot kept);
 * Docker media types; an empty result; history made consistent with the
 * layers when the frontend's history has too many or too few entries;
 * `-o` parsing with errors that name the bad key; the default layer
 * compression of a set of outputs; layers prepared ahead of an export
 * (waited for while in flight, found by label, with the options the export
 * of each kind of output uses).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LocalContentStore } from '../../src/core/content/store.ts';
import { compare, overlayFastPath } from '../../src/core/diff/index.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { importImages, unpack } from '../../src/core/images/index.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { setTempMountRoot } from '../../src/core/mount/mount.ts';
import {
  buildImage,
  defaultCompression,
  exportResult,
  formatTime,
  layerOptionsFor,
  parseOutputSpec,
  type SnapshotLayer,
  snapshotLayers,
  sourceDateEpochFrom,
} from '../../src/exporter/index.ts';
import { fastUpper, parentView, prepareLayer } from '../../src/exporter/layers.ts';
import { makeBusyboxLayout } from '../core/fixtures/busybox-image.ts';
import { busyboxRootfs } from '../core/fixtures/images.ts';
import { chainConfig, makeChain, snapshotTree, step } from './fixtures.ts';

void describe('snapshot layers and image assembly', () => {
  let work: string;
  let core: Core;
  let result: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'kiln-exporter-layers-'));
    setTempMountRoot(join(work, 'mounts'));
    core = await openCore({ root: join(work, 'state'), namespace: 'lay' });
    result = await makeChain(core, await busyboxRootfs(join(work, 'rootfs')));
  });

  after(async () => {
    await core?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  void test('committed overlay snapshots take the fast path; its layers equal the generic walk byte for byte', async () => {
    const sn = await core.snapshotter();
    const other = new LocalContentStore(join(work, 'other-store'));
    for (const [name, parent] of [
      ['step1', 'base'],
      ['step3', 'step2'],
    ] as const) {
      const lower = await sn.view(`${name}-lower`, parent);
      const upper = await sn.view(`${name}-upper`, name);
      try {
        assert.equal(overlayFastPath(lower, upper), undefined, 'a plain view is not an upperdir');
        assert.deepEqual(parentView(upper), lower, "the parent's view, derived from the snapshot's");
        const ov = overlayFastPath(lower, fastUpper(upper));
        assert.ok(ov, `fast path for ${name}`);
        const fast = await compare(lower, fastUpper(upper), other);
        const slow = await compare(lower, upper, other, { fastPath: false });
        assert.equal(fast.digest, slow.digest);
      } finally {
        await sn.remove(`${name}-upper`);
        await sn.remove(`${name}-lower`);
      }
    }
  });

  void test('a base made by unpack reuses its image layer; only the new step is computed', async () => {
    const { layout } = await makeBusyboxLayout(join(work, 'bb'));
    const [img] = (await importImages(core, layout, { name: 'busybox:latest' })).images;
    const up = await unpack(core, img!.target);
    const baseChain = up.chainID!;
    const before = await (await core.snapshotter()).stat(baseChain);
    await step(core, 'on-busybox', baseChain, async (dir) => {
      await writeFile(join(dir, 'added'), 'x\n');
    });
    const seen: SnapshotLayer[] = [];
    const layers = await snapshotLayers(core, 'on-busybox', { progress: (l) => seen.push(l) });
    assert.deepEqual(
      layers.map((l) => l.source),
      ['unpacked', 'computed'],
    );
    assert.equal(layers[0]!.descriptor.digest, up.layers[0]!.digest, 'the image layer blob itself');
    assert.equal(layers[0]!.descriptor.mediaType, 'application/vnd.oci.image.layer.v1.tar');
    assert.equal(layers[0]!.diffID, up.layers[0]!.diffID);
    // forced recompression converts the blob (same diff ID), no tree walk
    const forced = await snapshotLayers(core, 'on-busybox', { forceCompression: true });
    assert.deepEqual(
      forced.map((l) => l.source),
      ['converted', 'label'],
    );
    assert.equal(forced[0]!.descriptor.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
    assert.equal(forced[0]!.diffID, up.layers[0]!.diffID);
    // exported as an image and unpacked: the base chain snapshot is the same one, the top is the result
    const cfg = chainConfig();
    cfg.history = [{ created_by: 'busybox' }, { created_by: 'RUN add' }];
    const built = await buildImage(core, { snapshot: 'on-busybox', config: cfg });
    core.leases.delete(built.lease);
    assert.equal(built.config.rootfs.diff_ids[0], up.layers[0]!.diffID);
    const res = await unpack(core, built.manifestDesc);
    assert.equal(res.layers[0]!.unpacked, false);
    assert.equal(
      (await (await core.snapshotter()).stat(baseChain)).createdAt.getTime(),
      before.createdAt.getTime(),
    );
    assert.deepEqual(await snapshotTree(core, res.chainID!), await snapshotTree(core, 'on-busybox'));
  });

  void test('a layer prepared ahead is the one the export takes: waited for in flight, not computed again', async () => {
    await makeChain(core, await busyboxRootfs(join(work, 'rootfs')), 'ahead-');
    const names = ['ahead-base', 'ahead-step1', 'ahead-step2', 'ahead-step3'];
    const opts = { compression: 'gzip' as const };
    // Not awaited: the export starts while every one of them is still computing.
    const preparing = names.map((n) => prepareLayer(core, n, opts));
    assert.equal(
      prepareLayer(core, 'ahead-step1', opts),
      preparing[1],
      'one computation per layer and options',
    );
    const seen: SnapshotLayer[] = [];
    const layers = await snapshotLayers(core, 'ahead-step3', { ...opts, progress: (l) => seen.push(l) });
    await Promise.all(preparing);
    assert.deepEqual(
      seen.map((l) => l.source),
      ['label', 'label', 'label', 'label'],
    );
    // The prepared layers are the snapshots' changes: the generic walk gives the same diff IDs.
    const sn = await core.snapshotter();
    const other = new LocalContentStore(join(work, 'ahead-store'));
    for (const [i, name] of names.entries()) {
      const lower = i === 0 ? [] : await sn.view(`${name}-check-lower`, names[i - 1]!);
      const upper = await sn.view(`${name}-check-upper`, name);
      try {
        const walked = await compare(lower, upper, other, { fastPath: false });
        assert.equal(layers[i]!.diffID, walked.annotations!['containerd.io/uncompressed'], name);
      } finally {
        await sn.remove(`${name}-check-upper`);
        if (i > 0) await sn.remove(`${name}-check-lower`);
      }
    }
    assert.equal(layers[2]!.empty, true, 'step2 changes nothing');
    await assert.rejects(prepareLayer(core, 'ahead-missing', opts), (err: unknown) =>
      isKilnError(err, 'NotFound'),
    );
  });

  void test("layers prepared with layerOptionsFor's options are the ones each kind of export takes", async () => {
    const cases: [string, string[]][] = [
      ['store', ['type=image,name=kiln-test/ahead:store']],
      ['oci', [`type=oci,dest=${join(work, 'ahead-oci.tar')}`]],
      ['docker', [`type=docker,dest=${join(work, 'ahead-docker.tar')},name=kiln-test/ahead:docker`]],
      ['zstd', ['type=image,name=kiln-test/ahead:zstd,compression=zstd,compression-level=5']],
      ['forced', ['type=image,name=kiln-test/ahead:forced,compression=gzip,force-compression=true']],
      ['docker-types', [`type=oci,dest=${join(work, 'ahead-dt.tar')},oci-mediatypes=false`]],
      ['two', ['type=image,name=kiln-test/ahead:two', `type=oci,dest=${join(work, 'ahead-two.tar')}`]],
    ];
    for (const [tag, specs] of cases) {
      const name = `ahead-${tag}`;
      await step(core, name, 'step3', async (dir) => {
        await writeFile(join(dir, `${tag}.txt`), `${tag}\n`);
      });
      const outputs = specs.map((x) => parseOutputSpec(x));
      for (const sde of [undefined, 1700000000]) {
        const opts = layerOptionsFor(outputs, sde);
        assert.ok(opts, tag);
        await prepareLayer(core, name, opts);
        const seen: SnapshotLayer[] = [];
        await exportResult(core, {
          snapshot: name,
          config: chainConfig(),
          outputs,
          ...(sde !== undefined ? { sourceDateEpoch: sde } : {}),
          progress: (l) => seen.push(l),
        });
        const top = seen.find((l) => l.snapshot === name);
        assert.equal(top?.source, 'label', `${tag}, SOURCE_DATE_EPOCH ${sde}: the prepared layer`);
      }
    }
    assert.equal(layerOptionsFor([parseOutputSpec('type=local,dest=out')]), undefined, 'no image, no layers');
  });

  void test('Docker media types; zstd refuses them', async () => {
    const built = await buildImage(core, { snapshot: result, config: chainConfig(), ociMediaTypes: false });
    core.leases.delete(built.lease);
    assert.equal(built.manifest.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    assert.equal(built.manifest.config.mediaType, 'application/vnd.docker.container.image.v1+json');
    assert.deepEqual(
      built.manifest.layers.map((l) => l.mediaType),
      Array(4).fill('application/vnd.docker.image.rootfs.diff.tar.gzip'),
    );
    await assert.rejects(
      buildImage(core, {
        snapshot: result,
        config: chainConfig(),
        ociMediaTypes: false,
        compression: 'zstd',
      }),
      (err: unknown) => isKilnError(err, 'InvalidArgument') && /zstd compression needs OCI/.test(err.message),
    );
  });

  void test('an empty result gives an image without layers', async () => {
    const cfg = chainConfig();
    cfg.history = [{ created_by: 'ENV A=b', empty_layer: true }];
    const built = await buildImage(core, { snapshot: undefined, config: cfg, sourceDateEpoch: 0 });
    core.leases.delete(built.lease);
    assert.deepEqual(built.manifest.layers, []);
    assert.deepEqual(built.config.rootfs.diff_ids, []);
    assert.equal(built.chainID, undefined);
    assert.equal(built.config.created, '1970-01-01T00:00:00Z');
  });

  void test('history is made consistent with the layers (too many, too few entries; clamped times)', async () => {
    const many = chainConfig();
    many.history = [
      { created_by: 'a', created: '2001-01-01T00:00:00Z' },
      { created_by: 'b', created: '2030-01-01T00:00:00Z' },
      { created_by: 'c' },
      { created_by: 'd' },
      { created_by: 'e' },
      { created_by: 'f' },
    ];
    const a = await buildImage(core, { snapshot: result, config: many, sourceDateEpoch: 1700000000 });
    core.leases.delete(a.lease);
    assert.deepEqual(
      a.config.history!.map((h) => [h.created_by, h.empty_layer === true, h.created]),
      [
        ['a', false, '2001-01-01T00:00:00Z'],
        ['b', false, '2023-11-14T22:13:20Z'],
        ['c', false, '2023-11-14T22:13:20Z'],
        ['d', true, '2023-11-14T22:13:20Z'],
        ['e', true, '2023-11-14T22:13:20Z'],
        ['f', true, '2023-11-14T22:13:20Z'],
      ],
    );
    const few = chainConfig();
    few.history = [{ created_by: 'only' }];
    const b = await buildImage(core, {
      snapshot: result,
      config: few,
      now: () => new Date('2025-01-02T03:04:05Z'),
    });
    core.leases.delete(b.lease);
    const h = b.config.history!;
    assert.equal(h.length, 3);
    assert.equal(h.filter((x) => !x.empty_layer).length, b.manifest.layers.length);
    // Missing entries belong to the bottom layers (a base made without history), named by content.
    const ids = b.config.rootfs.diff_ids;
    assert.equal(h[0]!.created_by, `layer ${ids[0]}`);
    assert.equal(h[1]!.created_by, `layer ${ids[1]}`);
    assert.equal(h[2]!.created_by, 'only');
    // Without SOURCE_DATE_EPOCH an entry takes its layer's commit time, as in BuildKit, not `now`.
    assert.deepEqual(
      h.map((x) => x.created),
      b.layers.map((l) => formatTime(l.createdAt!)),
    );
    assert.equal(b.config.created, h[2]!.created);
    // `now` dates only what has no layer before it: here an image without layers.
    const bare = chainConfig();
    bare.history = [{ created_by: 'ENV X=1', empty_layer: true }];
    const c = await buildImage(core, {
      config: bare,
      now: () => new Date('2025-01-02T03:04:05Z'),
    });
    core.leases.delete(c.lease);
    assert.deepEqual(
      c.config.history!.map((x) => x.created),
      ['2025-01-02T03:04:05Z'],
    );
    assert.equal(c.config.created, '2025-01-02T03:04:05Z');
  });
});

void describe('parseOutputSpec', () => {
  void test('valid specs', () => {
    assert.deepEqual(parseOutputSpec('type=oci,dest=out.tar,compression=zstd'), {
      type: 'oci',
      dest: 'out.tar',
      names: [],
      compression: 'zstd',
    });
    assert.deepEqual(
      parseOutputSpec(
        'type=image,"name=a:1,b:2",name=c,push=true,compression=uncompressed,oci-mediatypes=false',
      ),
      {
        type: 'image',
        names: ['a:1', 'b:2', 'c'],
        push: true,
        compression: 'none',
        ociMediaTypes: false,
      },
    );
    assert.deepEqual(parseOutputSpec('type=docker,name=x,compression-level=9,force-compression'), {
      type: 'docker',
      names: ['x'],
      compressionLevel: 9,
      forceCompression: true,
    });
    assert.deepEqual(parseOutputSpec('-'), { type: 'tar', dest: '-', names: [] });
    assert.deepEqual(parseOutputSpec('outdir'), { type: 'local', dest: 'outdir', names: [] });
    assert.equal(sourceDateEpochFrom('1700000000'), 1700000000);
    assert.equal(sourceDateEpochFrom(''), undefined);
  });

  void test('default layer compression: none for the store and docker tars, gzip once one output needs it', () => {
    const d = (...specs: string[]): string => defaultCompression(specs.map((x) => parseOutputSpec(x)));
    assert.equal(d('type=image,name=a'), 'none');
    assert.equal(d('type=docker,dest=x.tar'), 'none');
    assert.equal(d('type=image,name=a', 'type=docker,dest=x.tar', 'out'), 'none');
    assert.equal(d('type=image,name=a,push=true'), 'gzip');
    assert.equal(d('type=registry,name=r/a'), 'gzip');
    assert.equal(d('type=image,name=a', 'type=oci,dest=x.tar'), 'gzip');
    // an explicit compression does not decide for the others
    assert.equal(d('type=image,name=a', 'type=oci,dest=x.tar,compression=zstd'), 'none');
  });

  void test('errors name the bad key or value', () => {
    const bad: [string, RegExp][] = [
      ['type=oci,colour=red', /unknown key "colour"/],
      ['type=ftp,dest=x', /unknown type "ftp"/],
      ['dest=x,name=y', /key "type" is required/],
      ['type=local', /type=local needs dest/],
      ['type=local,dest=x,name=y', /key "name" does not apply to type=local/],
      ['type=registry', /type=registry needs name/],
      ['type=image,push=true', /push=true needs name/],
      ['type=image,push=maybe,name=x', /key "push" wants true or false, not "maybe"/],
      ['type=oci,compression=lz4', /key "compression" wants gzip, zstd or uncompressed, not "lz4"/],
      ['type=oci,compression=gzip,compression-level=12', /key "compression-level" wants an integer 0..9/],
      ['type=oci,compression=zstd,oci-mediatypes=false', /zstd needs oci-mediatypes=true/],
      ['type=oci,dest=a,dest=b', /key "dest" is given twice/],
      ['type=oci,"name=x', /unterminated quote/],
    ];
    for (const [spec, re] of bad) {
      assert.throws(
        () => parseOutputSpec(spec),
        (err: unknown) => isKilnError(err, 'InvalidArgument') && re.test(err.message),
        spec,
      );
    }
    assert.throws(() => sourceDateEpochFrom('yesterday'), /SOURCE_DATE_EPOCH "yesterday"/);
  });
});
