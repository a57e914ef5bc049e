/**
 * Pull against a REAL docker-registry on loopback, with images pushed by
 * skopeo from OCI layouts made here (a busybox-static root filesystem and a
 * second layer with a whiteout, a hard link, a symlink and a setuid file).
 * Checks: the unpacked snapshot equals the source tree; containerd's GC
 * labels; a second pull reuses everything; GC keeps the image until
 * `images.delete`, then removes its blobs and snapshots; the registry killed
 * midway gives a clear error and a rerun fetches only what was missing
 * (counted by a proxy); a corrupt blob never enters the store; 401, 403,
 * 404, 429 and 5xx each give their own message (a fake server for those the
 * real registry cannot be made to return).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { chainIDs, pull, unpack } from '../../src/core/images/index.ts';
import { parsePlatform } from '../../src/core/images/platform.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { setTempMountRoot, withTempMount } from '../../src/core/mount/mount.ts';
import { RegistryError } from '../../src/core/remotes/index.ts';
import {
  busyboxRootfs,
  type LayoutImage,
  listTree,
  makeLayout,
  type Registry,
  skopeo,
  startProxy,
  startRegistry,
  tarDir,
  tempDir,
} from './fixtures/images.ts';

const fast = { retries: 1, backoffMs: 10, maxBackoffMs: 20, maxResumes: 1 };

async function treeOf(core: Core, chainID: string): Promise<string[]> {
  const sn = await core.snapshotter();
  const key = `check-${randomBytes(4).toString('hex')}`;
  const mounts = await sn.view(key, chainID);
  try {
    return await withTempMount(mounts, (dir) => listTree(dir));
  } finally {
    await sn.remove(key);
  }
}

void describe('pull from docker-registry', () => {
  let work: string;
  let reg: Registry;
  let img: LayoutImage;
  let expected: string[];
  let core: Core;

  before(async () => {
    work = await tempDir('kiln-pull-');
    setTempMountRoot(join(work, 'mounts'));
    reg = await startRegistry(join(work, 'reg'));
    const base = await busyboxRootfs(join(work, 'base'), { 'etc/motd': 'hello\n', 'etc/gone': 'x' });
    const top = join(work, 'top');
    await mkdir(join(top, 'etc'), { recursive: true });
    await mkdir(join(top, 'usr/bin'), { recursive: true });
    await writeFile(join(top, 'etc/.wh.gone'), '');
    await writeFile(join(top, 'usr/bin/suid'), '#!/bin/sh\n', { mode: 0o4755 });
    await writeFile(join(top, 'etc/motd'), 'changed\n');
    await (await import('node:fs/promises')).link(join(top, 'etc/motd'), join(top, 'etc/motd.link'));
    await (await import('node:fs/promises')).symlink('../etc/motd', join(top, 'usr/motd'));
    const t1 = await tarDir(base, join(work, 'l1.tar'));
    const t2 = await tarDir(top, join(work, 'l2.tar'));
    img = await makeLayout(join(work, 'layout'), 'v1', [t1, t2]);
    await skopeo([
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${img.layout}:v1`,
      `docker://${reg.host}/src/busybox:v1`,
    ]);
    // The expected merged tree: base, then top, whiteout applied.
    const merged = join(work, 'merged');
    await cp(base, merged, { recursive: true, verbatimSymlinks: true });
    await rm(join(merged, 'etc/gone'));
    await execCp(top, merged);
    await rm(join(merged, 'etc/.wh.gone'));
    expected = await listTree(merged);
    core = await openCore({ root: join(work, 'state'), namespace: 'test' });
  });

  after(async () => {
    await core?.close();
    await reg?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  void test('skopeo push → Kiln pull unpacks the same tree, with containerd labels', async () => {
    const events: string[] = [];
    const r = await pull(core, `${reg.host}/src/busybox:v1`, {
      remote: fast,
      progress: (p) => events.push(`${p.kind}:${p.status}`),
    });
    assert.equal(r.target.digest, img.manifest.digest);
    assert.equal(r.blobsFetched, 4);
    assert.equal(r.image.name, `${reg.host}/src/busybox:v1`);
    assert.deepEqual(core.images.get(`${reg.host}/src/busybox:v1`).target.digest, img.manifest.digest);
    const chains = chainIDs(img.diffIDs);
    assert.equal(r.unpacked?.chainID, chains[1]);
    assert.deepEqual(await treeOf(core, chains[1]!), expected);
    // labels as containerd writes them
    const m = await core.content.info(img.manifest.digest);
    assert.equal(m.labels['containerd.io/gc.ref.content.config'], img.config.digest);
    assert.equal(m.labels['containerd.io/gc.ref.content.l.0'], img.layers[0]!.digest);
    assert.equal(m.labels['containerd.io/gc.ref.content.l.1'], img.layers[1]!.digest);
    const l1 = await core.content.info(img.layers[1]!.digest);
    assert.equal(l1.labels['containerd.io/uncompressed'], img.diffIDs[1]);
    assert.equal(l1.labels[`containerd.io/distribution.source.${reg.host}`], 'src/busybox');
    const c = await core.content.info(img.config.digest);
    assert.equal(c.labels['containerd.io/gc.ref.snapshot.overlayfs'], chains[1]);
    const sn = await core.snapshotter();
    assert.equal((await sn.stat(chains[1]!)).parent, chains[0]);
    assert.equal(core.leases.list().length, 0, 'the pull lease is gone');
    assert.ok(
      events.includes('layer:downloading') &&
        events.includes('layer:done') &&
        events.includes('layer:unpacked'),
    );

    // Again: nothing fetched, nothing unpacked.
    const again = await pull(core, `${reg.host}/src/busybox:v1`, { remote: fast });
    assert.equal(again.blobsFetched, 0);
    assert.equal(again.bytesFetched, 0);
    assert.ok(again.unpacked?.layers.every((l) => !l.unpacked));

    // unpack() on its own also finds everything in place, and writes nothing to tell
    const leases = core.leases;
    const create = leases.create.bind(leases);
    let leasesCreated = 0;
    leases.create = (...args) => {
      leasesCreated++;
      return create(...args);
    };
    try {
      const u = await unpack(core, img.manifest);
      assert.equal(u.chainID, chains[1]);
      assert.ok(u.layers.every((l) => !l.unpacked));
      assert.equal(leasesCreated, 0, 'a no-op unpack takes no lease');

      // The config's label alone is not trusted: a top snapshot that is gone is unpacked again.
      const sn = await core.snapshotter();
      await sn.remove(chains[1]!);
      const redo = await unpack(core, img.manifest);
      assert.deepEqual(
        redo.layers.map((l) => l.unpacked),
        [false, true],
      );
      assert.equal(leasesCreated, 1);
      assert.deepEqual(await treeOf(core, chains[1]!), expected);
    } finally {
      leases.create = create;
    }
  });

  void test('GC keeps a pulled image until it is removed, then collects blobs and snapshots', async () => {
    const name = `${reg.host}/src/busybox:v1`;
    await pull(core, name, { remote: fast });
    const before = await core.gc();
    assert.equal(before.removedSnapshots, 0);
    assert.ok(!before.removed.blobs.includes(img.layers[0]!.digest));
    core.images.delete(name);
    const res = await core.gc();
    for (const d of [img.manifest.digest, img.config.digest, ...img.layers.map((l) => l.digest)]) {
      assert.ok(res.removed.blobs.includes(d), `blob ${d} collected`);
    }
    const chains = chainIDs(img.diffIDs);
    const gone = res.removed.snapshots.map((s) => s.key);
    for (const c of chains) assert.ok(gone.includes(c), `snapshot ${c} collected`);
    await assert.rejects(core.content.info(img.layers[0]!.digest), (e) => isKilnError(e, 'NotFound'));
  });

  void test('index: the platform asked for is pulled; a missing platform is a clear error', async () => {
    const arm = await makeLayout(join(work, 'layout-arm'), 'arm', [Buffer.alloc(1024)], { arch: 'arm64' });
    await skopeo([
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${arm.layout}:arm`,
      `docker://${reg.host}/multi/img:arm`,
    ]);
    await skopeo([
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${img.layout}:v1`,
      `docker://${reg.host}/multi/img:amd`,
    ]);
    const idx = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        { ...img.manifest, platform: { os: 'linux', architecture: 'amd64' } },
        { ...arm.manifest, platform: { os: 'linux', architecture: 'arm64' } },
      ],
    };
    const body = Buffer.from(JSON.stringify(idx));
    const res = await fetch(`http://${reg.host}/v2/multi/img/manifests/both`, {
      method: 'PUT',
      headers: { 'content-type': idx.mediaType },
      body,
    });
    assert.equal(res.status, 201);
    const r = await pull(core, `${reg.host}/multi/img:both`, {
      remote: fast,
      platform: parsePlatform('linux/arm64'),
      unpack: false,
    });
    assert.deepEqual(
      r.manifests.map((d) => d.digest),
      [arm.manifest.digest],
    );
    const all = await pull(core, `${reg.host}/multi/img:both`, {
      remote: fast,
      allPlatforms: true,
      unpack: false,
    });
    assert.equal(all.manifests.length, 2);
    await assert.rejects(
      pull(core, `${reg.host}/multi/img:both`, { remote: fast, platform: parsePlatform('linux/s390x') }),
      (e: unknown) =>
        isKilnError(e, 'NotFound') &&
        /no manifest for platform "linux\/s390x".*linux\/amd64, linux\/arm64/.test((e as Error).message),
    );
  });

  void test('registry killed midway: clear error; a rerun fetches only what is missing', async () => {
    const tars: Buffer[] = [];
    for (const i of [0, 1, 2]) {
      const d = join(work, `big-${i}`);
      await mkdir(d);
      await writeFile(join(d, `data-${i}.bin`), randomBytes((1 << 20) + i));
      tars.push(await tarDir(d, `${d}.tar`));
    }
    const big = await makeLayout(join(work, 'layout-big'), 'big', tars, { level: 0 });
    await skopeo([
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${big.layout}:big`,
      `docker://${reg.host}/big/img:v1`,
    ]);
    const target = big.layers[2]!.digest;
    let killed = false;
    const proxy = await startProxy(reg.host, {
      onBlob: (req, upstream, res) => {
        if (killed || !req.url!.includes(target)) return false;
        killed = true;
        // Half the blob, then the registry dies.
        res.writeHead(upstream.statusCode!, upstream.headers);
        let sent = 0;
        upstream.on('data', (c: Buffer) => {
          if (sent >= 400_000) return;
          res.write(c);
          sent += c.length;
          if (sent >= 400_000) {
            void reg.kill().then(() => res.destroy());
          }
        });
        return true;
      },
    });
    const ref = `${proxy.host}/big/img:v1`;
    try {
      const c2 = await openCore({ root: join(work, 'state-kill'), namespace: 'k' });
      try {
        await assert.rejects(pull(c2, ref, { remote: fast, concurrency: 1 }), (e: unknown) => {
          assert.ok(e instanceof RegistryError || isKilnError(e, 'Unavailable'), String(e));
          const msg = (e as Error).message;
          assert.match(msg, /big\/img/);
          assert.match(msg, /network error|got \d+ of \d+ bytes|registry server error|HTTP 50\d/);
          return true;
        });
        const statuses = await c2.content.listStatuses();
        const partial = statuses.find((s) => s.ref === `pull-${target}`);
        assert.ok(partial && partial.offset > 0, 'the broken download left its bytes in the ingest');
        const had = new Set<string>();
        for (const l of big.layers) {
          try {
            await c2.content.info(l.digest);
            had.add(l.digest);
          } catch {
            // missing
          }
        }
        const newReg = await startRegistry(join(work, 'reg'), reg.port);
        reg = newReg;
        const seenBefore = proxy.seen.length;
        const r = await pull(c2, ref, { remote: fast, concurrency: 1 });
        const blobGets = proxy.seen
          .slice(seenBefore)
          .filter((s) => s.method === 'GET' && s.url.includes('/blobs/'));
        for (const l of big.layers) {
          const gets = blobGets.filter((g) => g.url.includes(l.digest));
          if (had.has(l.digest)) assert.equal(gets.length, 0, `layer ${l.digest} was not fetched again`);
          else assert.ok(gets.length >= 1);
        }
        const resumed = blobGets.find((g) => g.url.includes(target));
        assert.equal(
          resumed?.range,
          `bytes=${partial.offset}-`,
          'the partial layer resumed at the ingest offset',
        );
        assert.equal(r.unpacked?.chainID, chainIDs(big.diffIDs)[2]);
      } finally {
        await c2.close();
      }
    } finally {
      await proxy.close();
    }
  });

  void test('a blob whose bytes do not match its digest is rejected and never enters the store', async () => {
    const proxy = await startProxy(reg.host, {
      onBlob: (req, upstream, res) => {
        if (!req.url!.includes(img.layers[1]!.digest)) return false;
        const chunks: Buffer[] = [];
        upstream.on('data', (c: Buffer) => chunks.push(c));
        upstream.on('end', () => {
          const body = Buffer.concat(chunks);
          body[body.length >> 1]! ^= 0xff;
          res.writeHead(200, {
            'content-length': String(body.length),
            'content-type': 'application/octet-stream',
          });
          res.end(body);
        });
        return true;
      },
    });
    const c3 = await openCore({ root: join(work, 'state-corrupt'), namespace: 'c' });
    try {
      await assert.rejects(pull(c3, `${proxy.host}/src/busybox:v1`, { remote: fast }), (e: unknown) => {
        assert.ok(isKilnError(e, 'DataLoss'), String(e));
        assert.match((e as Error).message, new RegExp(img.layers[1]!.digest));
        return true;
      });
      await assert.rejects(c3.content.info(img.layers[1]!.digest), (e) => isKilnError(e, 'NotFound'));
      assert.deepEqual(
        (await c3.content.listStatuses()).filter((s) => s.ref.includes(img.layers[1]!.digest)),
        [],
        'no ingest of the bad bytes is kept',
      );
      await assert.rejects(c3.localContent.info(img.layers[1]!.digest), (e) => isKilnError(e, 'NotFound'));
    } finally {
      await c3.close();
      await proxy.close();
    }
  });

  void test('mirrors are tried in order; the image keeps its own name', async () => {
    const dead = await startRegistry(join(work, 'reg-mirror-dead'));
    await dead.kill();
    const skipped: string[] = [];
    const c = await openCore({ root: join(work, 'state-mirror'), namespace: 'm' });
    try {
      const r = await pull(c, 'docker.io/src/busybox:v1', {
        remote: fast,
        mirrors: [dead.host, reg.host],
        onMirrorError: (m, err) => skipped.push(`${m}: ${err.code}`),
        unpack: false,
      });
      assert.deepEqual(skipped, [`${dead.host}: Unavailable`]);
      assert.equal(r.ref.domain, reg.host);
      assert.equal(r.image.name, 'docker.io/src/busybox:v1');
      assert.equal(r.target.digest, img.manifest.digest);
      const l = await c.content.info(img.layers[0]!.digest);
      assert.equal(l.labels[`containerd.io/distribution.source.${reg.host}`], 'src/busybox');
    } finally {
      await c.close();
    }
  });

  void test('404 from the real registry names the reference', async () => {
    await assert.rejects(pull(core, `${reg.host}/src/busybox:nope`, { remote: fast }), (e: unknown) => {
      assert.ok(e instanceof RegistryError && e.status === 404, String(e));
      assert.match(
        e.message,
        /resolve for ".*src\/busybox:nope": not found \(HEAD \/v2\/src\/busybox\/manifests\/nope: HTTP 404\)/,
      );
      return true;
    });
  });

  void test('401, 403, 429 and 5xx give their own messages (fake server)', async () => {
    let status = 401;
    const srv = http.createServer((req, res) => {
      req.resume();
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (status === 401) headers['www-authenticate'] = 'Basic realm="test"';
      res.writeHead(status, headers);
      res.end(JSON.stringify({ errors: [{ code: `CODE${status}`, message: `detail ${status}` }] }));
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const host = `127.0.0.1:${(srv.address() as AddressInfo).port}`;
    try {
      const want: Record<number, [string, RegExp]> = {
        401: ['Unauthenticated', /authentication required or credentials refused.*HTTP 401/],
        403: ['PermissionDenied', /access denied by the registry.*HTTP 403/],
        429: [
          'ResourceExhausted',
          /too many requests: the registry is rate-limiting.*HTTP 429.*gave up after 2 attempts/,
        ],
        503: ['Unavailable', /registry server error.*HTTP 503.*gave up after 2 attempts/],
      };
      for (const [s, [code, re]] of Object.entries(want)) {
        status = Number(s);
        await assert.rejects(pull(core, `${host}/x/y:z`, { remote: fast }), (e: unknown) => {
          assert.ok(isKilnError(e, code as 'NotFound'), `${s}: ${String(e)}`);
          assert.match((e as Error).message, re);
          assert.match((e as Error).message, /x\/y:z/);
          return true;
        });
      }
    } finally {
      srv.closeAllConnections();
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });
});

/** cp -a of `src`'s contents over `dst` (hard links inside src stay linked). */
async function execCp(src: string, dst: string): Promise<void> {
  const { execFileP } = await import('./fixtures/images.ts');
  await execFileP('cp', ['-a', `${src}/.`, dst]);
}
