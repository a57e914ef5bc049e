// The diff service against real peers: layers Kiln exports are unpacked by
// GNU tar and umoci into the same tree; layers umoci and GNU tar make
// (whiteouts, opaque dirs) are applied by Kiln; hostile archives are
// refused without writing outside the root; the overlay fast path gives the
// same bytes as the generic walk over real overlay mounts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { packTar, readTar, type TarHeader } from '../../src/core/archive/tar.ts';
import { ingestStream, LocalContentStore } from '../../src/core/content/store.ts';
import { sha256 } from '../../src/core/digest.ts';
import {
  apply,
  applyLayer,
  compare,
  compareDirs,
  compareOverlayUpper,
  LABEL_UNCOMPRESSED,
  overlayFastPath,
  type WriteLayerOptions,
  writeLayer,
} from '../../src/core/diff/index.ts';
import { isKilnError } from '../../src/core/errors.ts';
import type { Descriptor } from '../../src/core/images/types.ts';
import { unmountAll, withTempMount } from '../../src/core/mount/mount.ts';
import { native } from '../../src/core/native/index.ts';
import { OverlaySnapshotter } from '../../src/core/snapshots/overlay.ts';
import type { Mount } from '../../src/core/snapshots/types.ts';

let root: string;
let store: LocalContentStore;
const mounted: string[] = [];

before(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-diff-'));
  store = new LocalContentStore(path.join(root, 'store'));
});
after(async () => {
  for (const m of mounted.reverse()) await unmountAll(m).catch(() => {});
  await fs.rm(root, { recursive: true, force: true });
});

const CAP = Buffer.from('0100000200040000000000000000000000000000', 'hex');

async function blobPath(desc: Descriptor): Promise<string> {
  return path.join(store.root, 'blobs', 'sha256', desc.digest.slice('sha256:'.length));
}

async function mkdir(...p: string[]): Promise<string> {
  const d = path.join(...p);
  await fs.mkdir(d, { recursive: true });
  return d;
}

/** A normalised description of a tree: one line per path (root excluded). */
async function describeTree(dir: string, opts: { mtimes?: boolean } = {}): Promise<string[]> {
  const lines: string[] = [];
  const inodes = new Map<bigint, string[]>();
  async function walk(rel: string): Promise<void> {
    const abs = rel ? path.join(dir, rel) : dir;
    const names = (await fs.readdir(abs)).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(dir, r);
      const st = await fs.lstat(p, { bigint: true });
      let line = `${r} ${(st.mode & 0o7777n).toString(8)} ${st.uid}:${st.gid}`;
      if (opts.mtimes !== false && !st.isDirectory()) line += ` t=${st.mtimeMs / 1000n}`;
      if (st.isFile()) {
        line += ` file ${st.size} ${createHash('sha256')
          .update(await fs.readFile(p))
          .digest('hex')
          .slice(0, 12)}`;
        if (st.nlink > 1n) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), r]);
      } else if (st.isDirectory()) line += ' dir';
      else if (st.isSymbolicLink()) line += ` -> ${await fs.readlink(p)}`;
      else if (st.isCharacterDevice()) line += ` char ${st.rdev}`;
      else if (st.isBlockDevice()) line += ` block ${st.rdev}`;
      else if (st.isFIFO()) line += ' fifo';
      const xattrs = native()
        .llistxattr(p)
        .filter((n) => !n.startsWith('trusted.overlay.'))
        .sort();
      for (const x of xattrs) line += ` ${x}=${native().lgetxattr(p, x)!.toString('hex')}`;
      lines.push(line);
      if (st.isDirectory()) await walk(r);
    }
  }
  await walk('');
  for (const group of inodes.values()) lines.push(`hardlinks ${group.sort().join(' ')}`);
  return lines;
}

/** A source tree with every kind of node and metadata a layer carries. */
async function makeSourceTree(dir: string): Promise<void> {
  await mkdir(dir, 'usr/bin');
  await mkdir(dir, 'tmp');
  await fs.chmod(path.join(dir, 'tmp'), 0o1777);
  await fs.writeFile(path.join(dir, 'usr/bin/ping'), 'ping binary');
  await fs.chown(path.join(dir, 'usr/bin/ping'), 0, 0);
  execFileSync('setcap', ['cap_net_bind_service=+ep', path.join(dir, 'usr/bin/ping')]);
  await fs.writeFile(path.join(dir, 'usr/bin/su'), 'su binary');
  await fs.chmod(path.join(dir, 'usr/bin/su'), 0o4755);
  await fs.link(path.join(dir, 'usr/bin/su'), path.join(dir, 'usr/bin/su-again'));
  await fs.symlink('usr/bin', path.join(dir, 'bin'));
  await fs.symlink('/nowhere/abs', path.join(dir, 'dangling'));
  await mkdir(dir, 'home/user');
  await fs.writeFile(path.join(dir, 'home/user/owned'), 'x');
  await fs.chown(path.join(dir, 'home/user/owned'), 1234, 5678);
  await fs.chown(path.join(dir, 'home/user'), 1234, 5678);
  native().lsetxattr(path.join(dir, 'home/user/owned'), 'user.comment', Buffer.from([0, 1, 2, 10, 61]), 0);
  await fs.writeFile(path.join(dir, 'empty'), '');
  execFileSync('mkfifo', [path.join(dir, 'fifo')]);
  await mkdir(dir, 'dev');
  native().mknod(path.join(dir, 'dev/null'), 0o20666, 1, 3);
  const long = path.join(dir, 'deep', 'n'.repeat(120), 'm'.repeat(120));
  await fs.mkdir(path.dirname(long), { recursive: true });
  await fs.writeFile(long, 'long');
  // A large, incompressible-ish file (exercises streaming reads and several gzip blocks).
  const big = Buffer.alloc(9 << 20);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE((i * 2654435761) >>> 0, i);
  await fs.writeFile(path.join(dir, 'big.bin'), big);
  await fs.utimes(path.join(dir, 'big.bin'), 1_600_000_000, 1_600_000_000);
}

async function exportDir(
  lower: string | undefined,
  upper: string,
  opts: WriteLayerOptions & { sourceDateEpoch?: number } = {},
) {
  return writeLayer((emit) => compareDirs(lower, upper, emit, opts), store, opts);
}

/** An OCI image layout holding one image with the given layers, for umoci. */
async function makeLayout(dir: string, layers: { desc: Descriptor; diffID: string }[]): Promise<void> {
  await mkdir(dir, 'blobs/sha256');
  const put = async (data: Buffer | string): Promise<Descriptor> => {
    const b = Buffer.from(data);
    const d = sha256(b);
    await fs.writeFile(path.join(dir, 'blobs/sha256', d.slice(7)), b);
    return { mediaType: '', digest: d, size: b.length };
  };
  for (const l of layers)
    await fs.copyFile(await blobPath(l.desc), path.join(dir, 'blobs/sha256', l.desc.digest.slice(7)));
  const config = await put(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffID) },
    }),
  );
  const manifest = await put(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { ...config, mediaType: 'application/vnd.oci.image.config.v1+json' },
      layers: layers.map((l) => ({ mediaType: l.desc.mediaType, digest: l.desc.digest, size: l.desc.size })),
    }),
  );
  await fs.writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await fs.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          ...manifest,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          annotations: { 'org.opencontainers.image.ref.name': 'v1' },
        },
      ],
    }),
  );
}

async function* fileChunks(p: string): AsyncGenerator<Uint8Array> {
  const fh = await fs.open(p);
  try {
    yield* fh.readableWebStream() as unknown as AsyncIterable<Uint8Array>;
  } finally {
    await fh.close();
  }
}

void describe('export: Kiln layers unpacked by GNU tar, umoci and Kiln', () => {
  let src: string;
  let want: string[];
  before(async () => {
    src = await mkdir(root, 'src');
    await makeSourceTree(src);
    want = await describeTree(src);
  });

  void it('writes a gzip layer with diffID label; GNU tar, umoci and applyLayer reproduce the tree', async () => {
    const layer = await exportDir(undefined, src, { compression: 'gzip' });
    const desc = layer.descriptor;
    assert.equal(desc.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
    const info = await store.info(desc.digest);
    assert.equal(info.size, desc.size);
    assert.equal(info.labels[LABEL_UNCOMPRESSED], layer.diffID);
    const blob = await blobPath(desc);
    assert.equal(
      `sha256:${execFileSync('sh', ['-c', `gzip -dc ${blob} | sha256sum`], { encoding: 'utf8' }).slice(0, 64)}`,
      layer.diffID,
    );

    // Deterministic: the same tree gives the same blob.
    const again = await exportDir(undefined, src, { compression: 'gzip' });
    assert.equal(again.descriptor.digest, desc.digest);

    const byTar = await mkdir(root, 'by-tar');
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--same-owner', '-xpzf', blob, '-C', byTar]);
    assert.deepEqual(await describeTree(byTar), want);

    const layout = path.join(root, 'layout');
    await makeLayout(layout, [{ desc, diffID: layer.diffID }]);
    const bundle = path.join(root, 'bundle');
    execFileSync('umoci', ['unpack', '--image', `${layout}:v1`, bundle], { stdio: 'pipe' });
    assert.deepEqual(await describeTree(path.join(bundle, 'rootfs')), want);

    const byKiln = await mkdir(root, 'by-kiln');
    const res = await applyLayer(fileChunks(blob), byKiln);
    assert.equal(res.diffID, layer.diffID);
    assert.equal(res.size, layer.uncompressedSize);
    assert.deepEqual(await describeTree(byKiln), want);
  });

  void it('parallel gzip members and zstd frames are read by gzip, zstd, umoci and Kiln', async () => {
    const single = await exportDir(undefined, src, { compression: 'gzip' });
    const multi = await exportDir(undefined, src, { compression: 'gzip', parallel: 2 });
    assert.notEqual(multi.descriptor.digest, single.descriptor.digest);
    assert.equal(multi.diffID, single.diffID);
    const blob = await blobPath(multi.descriptor);
    execFileSync('gzip', ['-t', blob]);
    // More than one gzip member: find a second header after the first member.
    const raw = await fs.readFile(blob);
    assert.ok(raw.indexOf(Buffer.from([0x1f, 0x8b, 8, 0]), 10) > 0);

    const layout = path.join(root, 'layout-multi');
    await makeLayout(layout, [{ desc: multi.descriptor, diffID: multi.diffID }]);
    const bundle = path.join(root, 'bundle-multi');
    execFileSync('umoci', ['unpack', '--image', `${layout}:v1`, bundle], { stdio: 'pipe' });
    assert.deepEqual(await describeTree(path.join(bundle, 'rootfs')), want);
    // skopeo (Go's compress/gzip) decompresses it to the same diffID.
    const copied = path.join(root, 'skopeo-dir');
    execFileSync('skopeo', ['copy', '--dest-decompress', `oci:${layout}:v1`, `dir:${copied}`], {
      stdio: 'pipe',
    });
    assert.ok((await fs.readdir(copied)).includes(multi.diffID.slice('sha256:'.length)));

    for (const parallel of [1, 2]) {
      const z = await exportDir(undefined, src, { compression: 'zstd', parallel });
      assert.equal(z.descriptor.mediaType, 'application/vnd.oci.image.layer.v1.tar+zstd');
      assert.equal(z.diffID, single.diffID);
      const zb = await blobPath(z.descriptor);
      assert.equal(
        `sha256:${execFileSync('sh', ['-c', `zstd -dc ${zb} | sha256sum`], { encoding: 'utf8' }).slice(0, 64)}`,
        z.diffID,
      );
      const out = await mkdir(root, `by-kiln-zstd-${parallel}`);
      assert.equal((await applyLayer(fileChunks(zb), out)).diffID, z.diffID);
      assert.deepEqual(await describeTree(out), want);
    }
    const none = await exportDir(undefined, src, { compression: 'none' });
    assert.equal(none.descriptor.digest, none.diffID);
    // Uncompressed, the tar goes through recycled buffers: the same bytes as the gzip path's tar.
    assert.equal(none.diffID, single.diffID);
    const out = await mkdir(root, 'by-kiln-none');
    await applyLayer(fileChunks(await blobPath(none.descriptor)), out);
    assert.deepEqual(await describeTree(out), want);

    // Through the service: apply() reads from the store and checks digests.
    const viaService = await mkdir(root, 'by-service');
    const applied = await apply(multi.descriptor, store, [
      { type: 'bind', source: viaService, options: ['rbind', 'rw'] },
    ]);
    assert.equal(applied.digest, multi.diffID);
    assert.deepEqual(await describeTree(viaService), want);
  });

  void it('stops on an aborted signal and discards the ingest', async () => {
    const ac = new AbortController();
    ac.abort(new Error('user gave up'));
    await assert.rejects(exportDir(undefined, src, { signal: ac.signal }), (e) => isKilnError(e, 'Canceled'));
    assert.deepEqual(await store.listStatuses(), []);
  });

  void it('reports a corrupt compressed layer as DataLoss', async () => {
    const layer = await exportDir(undefined, src, { compression: 'gzip' });
    const raw = Buffer.from(await fs.readFile(await blobPath(layer.descriptor)));
    raw[raw.length >> 1] ^= 0xff;
    const out = await mkdir(root, 'corrupt');
    await assert.rejects(
      applyLayer(
        (async function* () {
          yield raw;
        })(),
        out,
      ),
      (e) => isKilnError(e, 'DataLoss') && /decompress|checksum/.test(e.message),
    );
  });

  void it('refuses file names that are not valid UTF-8 instead of mangling them', async () => {
    const dir = await mkdir(root, 'latin1');
    await fs.writeFile(Buffer.concat([Buffer.from(`${dir}/caf`), Buffer.from([0xe9])]), 'x');
    await assert.rejects(
      exportDir(undefined, dir),
      (e) => isKilnError(e, 'NotImplemented') && /not valid UTF-8/.test(e.message),
    );
    // The half-written ingest was discarded.
    assert.deepEqual(await store.listStatuses(), []);
  });

  void it('emits parents, changes and whiteouts in order, clamps mtimes to sourceDateEpoch', async () => {
    const lower = await mkdir(root, 'cmp-lower');
    const upper = await mkdir(root, 'cmp-upper');
    for (const d of [lower, upper]) {
      await mkdir(d, 'a/b');
      await mkdir(d, 'keep');
      await fs.writeFile(path.join(d, 'a/b/same'), 'same');
      await fs.writeFile(path.join(d, 'keep/x'), 'x');
      await fs.writeFile(path.join(d, 'gone1'), '1');
      await mkdir(d, 'cleared');
      await fs.writeFile(path.join(d, 'cleared/old1'), '');
      await fs.writeFile(path.join(d, 'cleared/old2'), '');
    }
    await fs.rm(path.join(upper, 'gone1'));
    await fs.writeFile(path.join(upper, 'a/b/new'), 'new');
    await fs.rm(path.join(upper, 'cleared/old1'));
    await fs.rm(path.join(upper, 'cleared/old2'));
    await fs.writeFile(path.join(upper, 'cleared/fresh'), 'f');
    // Same times everywhere except what changed.
    for (const d of [lower, upper]) {
      for (const p of ['a', 'a/b', 'a/b/same', 'keep', 'keep/x', 'cleared', '']) {
        await fs.utimes(path.join(d, p), 1000, 1000);
      }
    }
    await fs.utimes(path.join(upper, 'a/b/new'), 2_000_000_000, 2_000_000_000);
    const layer = await exportDir(lower, upper, { compression: 'none', sourceDateEpoch: 1_700_000_000 });
    const names: string[] = [];
    const times = new Map<string, number>();
    for await (const e of readTar(fileChunks(await blobPath(layer.descriptor)))) {
      names.push(e.header.name);
      times.set(e.header.name, e.header.mtime);
    }
    assert.deepEqual(names, [
      '.wh.gone1',
      'a/',
      'a/b/',
      'a/b/new',
      'cleared/',
      'cleared/.wh..wh..opq',
      'cleared/fresh',
    ]);
    assert.equal(times.get('a/b/new'), 1_700_000_000);
    assert.equal(times.get('a/'), 1000);
  });
});

void describe('apply: layers with whiteouts from other tools', () => {
  void it('applies umoci repack layers (deletions) to the same tree umoci has', async () => {
    const src = await mkdir(root, 'u-src');
    await mkdir(src, 'etc/conf.d');
    await fs.writeFile(path.join(src, 'etc/conf.d/a'), 'a');
    await fs.writeFile(path.join(src, 'etc/conf.d/b'), 'b');
    await fs.writeFile(path.join(src, 'etc/hosts'), 'hosts');
    await mkdir(src, 'var/cache/deep');
    await fs.writeFile(path.join(src, 'var/cache/deep/f'), 'f');
    await fs.writeFile(path.join(src, 'keep'), 'keep');
    const base = await exportDir(undefined, src);
    const layout = path.join(root, 'u-layout');
    await makeLayout(layout, [{ desc: base.descriptor, diffID: base.diffID }]);
    const bundle = path.join(root, 'u-bundle');
    execFileSync('umoci', ['unpack', '--image', `${layout}:v1`, bundle], { stdio: 'pipe' });
    const rootfs = path.join(bundle, 'rootfs');
    await fs.rm(path.join(rootfs, 'etc/hosts'));
    await fs.rm(path.join(rootfs, 'var/cache'), { recursive: true });
    await fs.rm(path.join(rootfs, 'etc/conf.d/a'));
    await fs.writeFile(path.join(rootfs, 'etc/conf.d/c'), 'c');
    await fs.chmod(path.join(rootfs, 'keep'), 0o600);
    execFileSync('umoci', ['repack', '--image', `${layout}:v2`, bundle], { stdio: 'pipe' });

    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as {
      manifests: Descriptor[];
    };
    const v2 = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === 'v2')!;
    const manifest = JSON.parse(
      await fs.readFile(path.join(layout, 'blobs/sha256', v2.digest.slice(7)), 'utf8'),
    ) as {
      layers: Descriptor[];
    };
    assert.equal(manifest.layers.length, 2);
    const top = path.join(layout, 'blobs/sha256', manifest.layers[1]!.digest.slice(7));
    const listing = execFileSync('tar', ['-tzf', top], { encoding: 'utf8' });
    assert.match(listing, /\.wh\.hosts/);

    // umoci's own unpack of v2 is the reference (repack rounds mtimes, so the edited bundle is not).
    const bundle2 = path.join(root, 'u-bundle2');
    execFileSync('umoci', ['unpack', '--image', `${layout}:v2`, bundle2], { stdio: 'pipe' });
    const reference = await describeTree(path.join(bundle2, 'rootfs'));
    assert.deepEqual(
      reference.map((l) => l.split(' ')[0]),
      ['etc', 'etc/conf.d', 'etc/conf.d/b', 'etc/conf.d/c', 'keep', 'var'],
    );
    const target = await mkdir(root, 'u-target');
    for (const l of manifest.layers)
      await applyLayer(fileChunks(path.join(layout, 'blobs/sha256', l.digest.slice(7))), target);
    assert.deepEqual(await describeTree(target), reference);

    // The same into an overlay upperdir: whiteouts become 0/0 devices; the mounted view matches.
    const lowerDir = await mkdir(root, 'u-lower');
    await applyLayer(
      fileChunks(path.join(layout, 'blobs/sha256', manifest.layers[0]!.digest.slice(7))),
      lowerDir,
    );
    const upperDir = await mkdir(root, 'u-upper');
    await applyLayer(fileChunks(top), upperDir, { mode: 'overlay-upper' });
    const wh = await fs.lstat(path.join(upperDir, 'etc/hosts'), { bigint: true });
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0n);
    const merged = await mkdir(root, 'u-merged');
    native().mount('overlay', merged, 'overlay', 1 /* ro */, `lowerdir=${upperDir}:${lowerDir}`);
    mounted.push(merged);
    assert.deepEqual(await describeTree(merged), reference);
    await unmountAll(merged);
  });

  void it('applies a GNU tar layer with .wh. and opaque markers, plain and as an overlay upperdir', async () => {
    const lower = await mkdir(root, 'g-lower');
    await mkdir(lower, 'opq/sub');
    await fs.writeFile(path.join(lower, 'opq/old'), 'old');
    await fs.writeFile(path.join(lower, 'opq/sub/f'), 'f');
    await fs.writeFile(path.join(lower, 'del'), 'del');
    await mkdir(lower, 'deldir/x');
    await fs.writeFile(path.join(lower, 'stay'), 'stay');
    await mkdir(lower, 'replaced');
    await fs.writeFile(path.join(lower, 'replaced/oldchild'), 'o');
    const lowerCopy = await mkdir(root, 'g-lower-copy');
    execFileSync('cp', ['-a', `${lower}/.`, lowerCopy]);

    const tree = await mkdir(root, 'g-layer');
    await mkdir(tree, 'opq');
    await fs.writeFile(path.join(tree, 'opq/.wh..wh..opq'), '');
    await fs.writeFile(path.join(tree, 'opq/new'), 'new');
    await fs.writeFile(path.join(tree, '.wh.del'), '');
    await fs.writeFile(path.join(tree, '.wh.deldir'), '');
    await fs.writeFile(path.join(tree, 'added'), 'added');
    // A directory deleted and re-created: its whiteout, then the new directory.
    await fs.writeFile(path.join(tree, '.wh.replaced'), '');
    await mkdir(tree, 'replaced');
    await fs.writeFile(path.join(tree, 'replaced/newchild'), 'n');
    await fs.chmod(path.join(tree, 'replaced'), 0o555);
    const tarball = path.join(root, 'g-layer.tar');
    // Opaque marker after the directory's other content, as some tools order it.
    execFileSync('tar', [
      '--format=pax',
      '-cf',
      tarball,
      '-C',
      tree,
      'opq/new',
      'opq/.wh..wh..opq',
      '.wh.del',
      '.wh.deldir',
      'added',
      '.wh.replaced',
      'replaced',
    ]);

    await applyLayer(fileChunks(tarball), lower);
    const got = await describeTree(lower, { mtimes: false });
    assert.ok(got.includes('replaced 555 0:0 dir'), got.join('\n'));
    assert.deepEqual(
      got.map((l) => l.split(' ')[0]),
      ['added', 'opq', 'opq/new', 'replaced', 'replaced/newchild', 'stay'],
    );

    const upper = await mkdir(root, 'g-upper');
    await applyLayer(fileChunks(tarball), upper, { mode: 'overlay-upper' });
    assert.deepEqual(native().lgetxattr(path.join(upper, 'opq'), 'trusted.overlay.opaque'), Buffer.from('y'));
    const merged = await mkdir(root, 'g-merged');
    native().mount('overlay', merged, 'overlay', 1, `lowerdir=${upper}:${lowerCopy}`);
    mounted.push(merged);
    assert.deepEqual(
      (await describeTree(merged, { mtimes: false })).map((l) => l.split(' ')[0]),
      ['added', 'opq', 'opq/new', 'replaced', 'replaced/newchild', 'stay'],
    );
    await unmountAll(merged);
  });
});

void describe('apply: hostile archives', () => {
  let sentinel: string;
  before(async () => {
    sentinel = await mkdir(root, 'sentinel');
  });

  const h = (name: string, type: TarHeader['type'], extra: Partial<TarHeader> = {}): TarHeader => ({
    name,
    type,
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: 0,
    mtime: 0,
    ...extra,
  });

  async function attempt(
    name: string,
    entries: { header: TarHeader; body?: Uint8Array }[],
    opts = {},
  ): Promise<unknown> {
    const target = await mkdir(root, 'hostile', name);
    const sub = await mkdir(target, 'root');
    try {
      await applyLayer(packTar(entries), sub, opts);
      return undefined;
    } catch (err) {
      return err;
    } finally {
      assert.deepEqual(await fs.readdir(sentinel), [], `${name}: nothing written to the sentinel`);
      assert.deepEqual(await fs.readdir(target), ['root'], `${name}: nothing written next to the root`);
    }
  }

  void it('rejects ".." escapes, naming the entry', async () => {
    const err = await attempt('dotdot', [
      { header: h('../../sentinel/x', 'file', { size: 1 }), body: Buffer.from('x') },
    ]);
    assert.ok(isKilnError(err, 'InvalidArgument'));
    assert.match(err.message, /entry "\.\.\/\.\.\/sentinel\/x"/);
  });

  void it('rejects writing through a symlink that points outside the root', async () => {
    for (const [label, target] of [
      ['abs', '/'],
      ['abs-sentinel', sentinel],
      ['rel', '../../../sentinel'],
    ] as const) {
      const err = await attempt(`symlink-${label}`, [
        { header: h('evil', 'symlink', { linkname: target }) },
        { header: h('evil/x', 'file', { size: 1 }), body: Buffer.from('x') },
      ]);
      assert.ok(isKilnError(err, 'InvalidArgument'), String(err));
      assert.match(err.message, /entry "evil\/x": parent "evil" is a symlink/);
    }
    // A symlink that stays inside the root is followed.
    const target = await mkdir(root, 'hostile', 'inside');
    await applyLayer(
      packTar([
        { header: h('real/', 'directory', { mode: 0o755 }) },
        { header: h('link', 'symlink', { linkname: './real' }) },
        { header: h('link/x', 'file', { size: 1 }), body: Buffer.from('x') },
      ]),
      target,
    );
    assert.equal(await fs.readFile(path.join(target, 'real/x'), 'utf8'), 'x');
  });

  void it('replaces an existing symlink instead of writing through it', async () => {
    const err = await attempt('final-symlink', [
      { header: h('s', 'symlink', { linkname: path.join(sentinel, 'owned') }) },
      { header: h('s', 'file', { size: 1 }), body: Buffer.from('x') },
    ]);
    assert.equal(err, undefined);
  });

  void it('rejects hard links to targets outside the root', async () => {
    let err = await attempt('hardlink-dotdot', [
      { header: h('l', 'link', { linkname: '../../../../etc/passwd' }) },
    ]);
    assert.ok(isKilnError(err, 'InvalidArgument'));
    assert.match(err.message, /entry "l": hard link target/);
    // Absolute targets are taken relative to the root: /etc/passwd is not there.
    err = await attempt('hardlink-abs', [{ header: h('l', 'link', { linkname: '/etc/passwd' }) }]);
    assert.ok(isKilnError(err, 'NotFound'), String(err));
    assert.match(err.message, /entry "l": hard link target "\/etc\/passwd" does not exist/);
    err = await attempt('hardlink-via-symlink', [
      { header: h('e', 'symlink', { linkname: '/etc' }) },
      { header: h('l', 'link', { linkname: 'e/passwd' }) },
    ]);
    assert.ok(isKilnError(err, 'InvalidArgument'));
    assert.match(err.message, /entry "l": parent "e" is a symlink/);
  });

  void it('refuses a hostile layer read from the content store through the service', async () => {
    const target = await mkdir(root, 'hostile', 'service');
    const bytes: Uint8Array[] = [];
    for await (const c of packTar([{ header: h('../escape', 'file', { size: 1 }), body: Buffer.from('x') }]))
      bytes.push(c);
    const blob = Buffer.concat(bytes);
    const desc: Descriptor = {
      mediaType: 'application/vnd.oci.image.layer.v1.tar',
      digest: sha256(blob),
      size: blob.length,
    };
    await ingestStream(
      store,
      'hostile-service',
      (async function* () {
        yield blob;
      })(),
      { expected: desc.digest },
    );
    await assert.rejects(
      apply(desc, store, [{ type: 'bind', source: target, options: ['rbind', 'rw'] }]),
      (e) => isKilnError(e, 'InvalidArgument') && /entry "\.\.\/escape"/.test(e.message),
    );
    assert.deepEqual(await fs.readdir(target), []);
    assert.deepEqual(await fs.readdir(path.join(root, 'hostile')).then((l) => l.includes('escape')), false);
  });

  void it('refuses devices when unprivileged, naming the entry', async () => {
    const err = await attempt('device', [{ header: h('dev/sda', 'block', { devmajor: 8, devminor: 0 }) }], {
      privileged: false,
    });
    assert.ok(isKilnError(err, 'PermissionDenied'));
    assert.match(err.message, /entry "dev\/sda"/);
  });

  void it('refuses devices in a really unprivileged process', async () => {
    const dir = await mkdir(root, 'hostile', 'nobody');
    await fs.chown(dir, 65534, 65534);
    const tarball = path.join(root, 'dev.tar');
    const parts: Uint8Array[] = [];
    for await (const c of packTar([{ header: h('null', 'char', { devmajor: 1, devminor: 3 }) }]))
      parts.push(c);
    await fs.writeFile(tarball, Buffer.concat(parts));
    await fs.chmod(root, 0o755);
    const script = `import { applyLayer } from ${JSON.stringify(path.resolve('src/core/diff/apply.ts'))};
import { createReadStream } from 'node:fs';
try { await applyLayer(createReadStream(${JSON.stringify(tarball)}), ${JSON.stringify(dir)}); console.log('applied'); }
catch (e) { console.log(e.code + ': ' + e.message); }`;
    const out = execFileSync(
      'setpriv',
      [
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        process.execPath,
        '--input-type=module',
        '-e',
        script,
      ],
      { encoding: 'utf8' },
    );
    assert.match(out, /^PermissionDenied: apply layer: entry "null"/);
    assert.deepEqual(await fs.readdir(dir), []);
  });
});

void describe('compare: overlay fast path equals the generic walk', () => {
  void it('gives the same layer bytes for deletes, opaque dirs, hard links and xattrs', async () => {
    const base = await mkdir(root, 'ov');
    const l1 = await mkdir(base, 'l1');
    await mkdir(l1, 'etc/app');
    await fs.writeFile(path.join(l1, 'etc/app/conf'), 'conf');
    await fs.writeFile(path.join(l1, 'etc/app/other'), 'other');
    await mkdir(l1, 'data/sub');
    await fs.writeFile(path.join(l1, 'data/sub/1'), '1');
    await fs.writeFile(path.join(l1, 'data/2'), '2');
    await mkdir(l1, 'emptyme');
    await fs.writeFile(path.join(l1, 'emptyme/a'), 'a');
    await fs.writeFile(path.join(l1, 'emptyme/b'), 'b');
    await fs.writeFile(path.join(l1, 'rmme'), 'rm');
    await fs.writeFile(path.join(l1, 'chmodme'), 'c');
    await fs.writeFile(path.join(l1, 'back'), 'back');
    await mkdir(l1, 'fresh/old');
    await fs.writeFile(path.join(l1, 'fresh/x'), 'x');
    await mkdir(l1, 'untouched/deep');
    await fs.writeFile(path.join(l1, 'untouched/deep/f'), 'f');

    // Layer 2, made through a real overlay: deletes "back" (a whiteout in l2).
    const l2 = await mkdir(base, 'l2');
    const w2 = await mkdir(base, 'w2');
    const m2 = await mkdir(base, 'm2');
    native().mount('overlay', m2, 'overlay', 0, `lowerdir=${l1},upperdir=${l2},workdir=${w2}`);
    mounted.push(m2);
    await fs.rm(path.join(m2, 'back'));
    await fs.writeFile(path.join(m2, 'etc/app/l2file'), 'l2');
    await unmountAll(m2);

    // The active snapshot: lowerdir=l2:l1.
    const u3 = await mkdir(base, 'u3');
    const w3 = await mkdir(base, 'w3');
    const m3 = await mkdir(base, 'm3');
    native().mount('overlay', m3, 'overlay', 0, `lowerdir=${l2}:${l1},upperdir=${u3},workdir=${w3}`);
    mounted.push(m3);
    await fs.writeFile(path.join(m3, 'etc/app/conf'), 'changed');
    await fs.rm(path.join(m3, 'rmme'));
    await fs.chmod(path.join(m3, 'chmodme'), 0o4711);
    await fs.rm(path.join(m3, 'data'), { recursive: true });
    await mkdir(m3, 'data');
    await fs.writeFile(path.join(m3, 'data/2'), 'new 2');
    await fs.rm(path.join(m3, 'fresh'), { recursive: true });
    await mkdir(m3, 'fresh');
    await fs.writeFile(path.join(m3, 'fresh/z'), 'z');
    await fs.rm(path.join(m3, 'emptyme/a'));
    await fs.rm(path.join(m3, 'emptyme/b'));
    await fs.writeFile(path.join(m3, 'back'), 'back again');
    await fs.writeFile(path.join(m3, 'newfile'), 'n');
    await fs.link(path.join(m3, 'newfile'), path.join(m3, 'newlink'));
    await fs.writeFile(path.join(m3, 'capped'), 'cap');
    native().lsetxattr(path.join(m3, 'capped'), 'security.capability', CAP, 0);
    await fs.rm(path.join(m3, 'etc/app/l2file'));
    await unmountAll(m3);
    // The upperdir holds overlay's own markers; they must not leak into the layer.
    const u3whiteout = await fs.lstat(path.join(u3, 'rmme'), { bigint: true });
    assert.ok(u3whiteout.isCharacterDevice() && u3whiteout.rdev === 0n);
    assert.deepEqual(native().lgetxattr(path.join(u3, 'data'), 'trusted.overlay.opaque'), Buffer.from('y'));
    assert.deepEqual(native().lgetxattr(path.join(u3, 'fresh'), 'trusted.overlay.opaque'), Buffer.from('y'));

    const upper: Mount[] = [
      {
        type: 'overlay',
        source: 'overlay',
        options: [`lowerdir=${l2}:${l1}`, `upperdir=${u3}`, `workdir=${w3}`, 'index=off'],
      },
    ];
    const lower: Mount[] = [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${l2}:${l1}`] }];
    assert.deepEqual(overlayFastPath(lower, upper), { upper: u3, lowers: [l2, l1] });
    // Not for a lower that is not the upper's own lowerdirs.
    assert.equal(
      overlayFastPath([{ type: 'overlay', source: 'overlay', options: [`lowerdir=${l1}`] }], upper),
      undefined,
    );
    const fast = await compare(lower, upper, store, { compression: 'none' });
    const slow = await compare(lower, upper, store, { compression: 'none', fastPath: false });
    const xattrNames = new Set<string>();
    const list = async (d: Descriptor) => {
      const out: string[] = [];
      for await (const e of readTar(fileChunks(await blobPath(d)))) {
        out.push(`${e.header.type} ${e.header.name}`);
        for (const k of e.header.xattrs?.keys() ?? []) xattrNames.add(k);
      }
      return out;
    };
    assert.deepEqual(await list(fast), await list(slow));
    assert.equal(fast.digest, slow.digest);
    const entries = await list(fast);
    // data/ was removed and re-created (opaque in the upperdir) but "2" came back: explicit whiteouts;
    // emptyme/ lost every lower name: one opaque marker; "back" was deleted in l2 and re-created.
    assert.deepEqual(entries, [
      'file .wh.rmme',
      'file back',
      'file capped',
      'file chmodme',
      'directory data/',
      'file data/.wh.sub',
      'file data/2',
      'directory emptyme/',
      'file emptyme/.wh..wh..opq',
      'directory etc/',
      'directory etc/app/',
      'file etc/app/.wh.l2file',
      'file etc/app/conf',
      'directory fresh/',
      'file fresh/.wh..wh..opq',
      'file fresh/z',
      'file newfile',
      'link newlink',
    ]);
    assert.ok(!entries.some((e) => e.includes('untouched')));
    // security.capability is carried; overlay's own markers are not.
    assert.deepEqual([...xattrNames], ['security.capability']);

    // Also with gzip and a fixed epoch, via the functions directly.
    const opts = { sourceDateEpoch: 1_000_000 };
    const a = await writeLayer((emit) => compareOverlayUpper(u3, [l2, l1], emit, opts), store);
    const mL = await mkdir(base, 'mL');
    const mU = await mkdir(base, 'mU');
    native().mount('overlay', mL, 'overlay', 1, `lowerdir=${l2}:${l1}`);
    mounted.push(mL);
    native().mount('overlay', mU, 'overlay', 1, `lowerdir=${u3}:${l2}:${l1}`);
    mounted.push(mU);
    const b = await writeLayer((emit) => compareDirs(mL, mU, emit, opts), store);
    assert.equal(a.descriptor.digest, b.descriptor.digest);

    // Applying the layer onto a copy of the lower view gives the upper view.
    const replay = await mkdir(base, 'replay');
    execFileSync('cp', ['-a', `${mL}/.`, replay]);
    await applyLayer(fileChunks(await blobPath(fast)), replay);
    assert.deepEqual(await describeTree(replay), await describeTree(mU));
    await unmountAll(mL);
    await unmountAll(mU);
  });
});

void describe('diff service with the overlay snapshotter', () => {
  void it('compares an active snapshot both ways and applies the layer onto another snapshot', async () => {
    const sn = await OverlaySnapshotter.open(path.join(root, 'snapshots'));
    try {
      // Base layer: applied by the service into an empty active snapshot.
      const baseSrc = await mkdir(root, 'sn-src');
      await mkdir(baseSrc, 'etc');
      await fs.writeFile(path.join(baseSrc, 'etc/a'), 'a');
      await fs.writeFile(path.join(baseSrc, 'etc/b'), 'b');
      await fs.writeFile(path.join(baseSrc, 'top'), 'top');
      const baseLayer = await exportDir(undefined, baseSrc);
      const m0 = await sn.prepare('base-active');
      const applied = await apply(baseLayer.descriptor, store, m0);
      assert.equal(applied.digest, baseLayer.diffID);
      await sn.commit('base', 'base-active');

      // Changes in an active child snapshot.
      const m1 = await sn.prepare('work', 'base');
      await withTempMount(m1, async (dir) => {
        await fs.rm(path.join(dir, 'etc/a'));
        await fs.writeFile(path.join(dir, 'etc/c'), 'c');
        await fs.chmod(path.join(dir, 'top'), 0o700);
        await fs.symlink('etc/c', path.join(dir, 'link'));
      });
      const lower = await sn.view('base-view', 'base');
      assert.ok(overlayFastPath(lower, m1), 'the fast path applies to a child of a view');
      const fast = await compare(lower, m1, store);
      const slow = await compare(lower, m1, store, { fastPath: false });
      assert.equal(fast.digest, slow.digest);

      // Applied onto another child of base, it gives the same tree.
      const m2 = await sn.prepare('replay', 'base');
      await apply(fast, store, m2);
      const want = await withTempMount(m1, (dir) => describeTree(dir));
      const got = await withTempMount(m2, (dir) => describeTree(dir));
      assert.deepEqual(got, want);
      assert.ok(!want.some((l) => l.startsWith('etc/a ')));
      assert.ok(want.some((l) => l.startsWith('top 700 ')));

      // A descriptor whose diffID annotation lies is refused.
      const m3 = await sn.prepare('liar', 'base');
      await assert.rejects(
        apply({ ...fast, annotations: { [LABEL_UNCOMPRESSED]: baseLayer.diffID } }, store, m3),
        (e) => isKilnError(e, 'DataLoss'),
      );
    } finally {
      await sn.close();
    }
  });
});
