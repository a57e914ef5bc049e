/**
 * The distribution client against a REAL registry: Debian's docker-registry
 * (CNCF distribution 2.8) started per suite on a free loopback port, with
 * images made here (tar + gzip layer, config, manifest) and pushed by skopeo
 * or by our Pusher, and checked with `skopeo inspect`. Small node:http
 * proxies in front of the real registry corrupt or cut blob bodies. A fake
 * registry is used ONLY for statuses the real one cannot be made to return
 * (403, 429, 5xx). Token auth uses a test token server issuing ES256 JWTs
 * that the registry verifies against a self-signed certificate.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createPrivateKey, randomBytes, sign, X509Certificate } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { LocalContentStore } from '../../src/core/content/store.ts';
import { type Digest, sha256 } from '../../src/core/digest.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { parsePlatform, selectManifest } from '../../src/core/images/platform.ts';
import {
  type Descriptor,
  type ImageConfig,
  type Index,
  type Manifest,
  MediaType,
  parseIndex,
  parseManifest,
} from '../../src/core/images/types.ts';
import {
  Authorizer,
  dockerConfigCredentials,
  parseWWWAuthenticate,
  RegistryError,
  Resolver,
  registryBaseURL,
} from '../../src/core/remotes/index.ts';

const execFileP = promisify(execFile);

// ---------------------------------------------------------------- helpers

async function freePort(): Promise<number> {
  const srv = http.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

interface Registry {
  host: string;
  proc: ChildProcess;
  stop(): Promise<void>;
}

async function startRegistry(dir: string, authYaml = ''): Promise<Registry> {
  const port = await freePort();
  const storage = join(dir, 'storage');
  await mkdir(storage, { recursive: true });
  const config = join(dir, 'config.yml');
  await writeFile(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: error',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${storage}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      authYaml,
    ].join('\n'),
  );
  const proc = spawn('/usr/bin/docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.setEncoding('utf8').on('data', (c: string) => {
    stderr += c;
  });
  const host = `127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const res = await fetch(`http://${host}/v2/`);
      await res.body?.cancel();
      if (res.status === 200 || res.status === 401) break;
    } catch {
      // not listening yet
    }
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`docker-registry did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    host,
    proc,
    stop: async () => {
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

function digestOf(b: Uint8Array): Digest {
  return sha256(b);
}

function descOf(mediaType: string, bytes: Uint8Array): Descriptor {
  return { mediaType, digest: digestOf(bytes), size: bytes.byteLength };
}

interface TestImage {
  layer: Uint8Array;
  layerDesc: Descriptor;
  config: Uint8Array;
  configDesc: Descriptor;
  manifest: Uint8Array;
  manifestDesc: Descriptor;
}

/** A one-layer image: a tar (made by GNU tar) of `files`, gzipped. */
async function makeImage(
  root: string,
  files: Record<string, Uint8Array | string>,
  arch = 'amd64',
): Promise<TestImage> {
  const src = await mkdtemp(join(root, 'rootfs-'));
  for (const [name, content] of Object.entries(files)) {
    await mkdir(join(src, name, '..'), { recursive: true });
    await writeFile(join(src, name), content);
  }
  const tarPath = `${src}.tar`;
  await execFileP('tar', [
    '--sort=name',
    '--mtime=@0',
    '--owner=0',
    '--group=0',
    '--numeric-owner',
    '-cf',
    tarPath,
    '-C',
    src,
    '.',
  ]);
  const tar = await readFile(tarPath);
  const layer = gzipSync(tar);
  const layerDesc = descOf(MediaType.OciLayerGzip, layer);
  const cfg: ImageConfig = {
    architecture: arch,
    os: 'linux',
    config: { Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: [digestOf(tar)] },
  };
  const config = Buffer.from(JSON.stringify(cfg));
  const configDesc = descOf(MediaType.OciConfig, config);
  const m: Manifest = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: configDesc,
    layers: [layerDesc],
  };
  const manifest = Buffer.from(JSON.stringify(m));
  return {
    layer,
    layerDesc,
    config,
    configDesc,
    manifest,
    manifestDesc: descOf(MediaType.OciManifest, manifest),
  };
}

/** Writes `img` as an OCI layout and pushes it with skopeo (a peer implementation). */
async function skopeoPush(root: string, img: TestImage, dest: string): Promise<void> {
  const layout = await mkdtemp(join(root, 'layout-'));
  await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
  for (const [d, b] of [
    [img.layerDesc, img.layer],
    [img.configDesc, img.config],
    [img.manifestDesc, img.manifest],
  ] as const) {
    await writeFile(join(layout, 'blobs', 'sha256', d.digest.slice(7)), b);
  }
  await writeFile(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const index: Index = {
    schemaVersion: 2,
    manifests: [{ ...img.manifestDesc, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }],
  };
  await writeFile(join(layout, 'index.json'), JSON.stringify(index));
  await execFileP('skopeo', [
    'copy',
    '--quiet',
    '--preserve-digests',
    '--dest-tls-verify=false',
    `oci:${layout}:v1`,
    `docker://${dest}`,
  ]);
}

async function skopeoInspect(ref: string, raw = false): Promise<string> {
  const { stdout } = await execFileP('skopeo', [
    'inspect',
    ...(raw ? ['--raw'] : []),
    '--tls-verify=false',
    `docker://${ref}`,
  ]);
  return stdout;
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

/** An HTTP proxy to `target`; `onBlob` may take over a blob GET's response. */
async function startProxy(
  target: string,
  onBlob: (req: http.IncomingMessage, upstream: http.IncomingMessage, res: http.ServerResponse) => boolean,
): Promise<{
  host: string;
  seen: { method: string; url: string; range?: string }[];
  close(): Promise<void>;
}> {
  const seen: { method: string; url: string; range?: string }[] = [];
  const srv = http.createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, range: req.headers.range });
    const up = http.request(
      `http://${target}${req.url}`,
      { method: req.method, headers: { ...req.headers, host: target } },
      (upstream) => {
        if (req.method === 'GET' && /\/blobs\/sha256:/.test(req.url!) && onBlob(req, upstream, res)) return;
        res.writeHead(upstream.statusCode!, upstream.headers);
        upstream.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((r) => {
        srv.closeAllConnections();
        srv.close(() => r());
      }),
  };
}

function assertRegistryError(
  err: unknown,
  code: string,
  status: number | undefined,
  parts: (string | RegExp)[],
): true {
  assert.ok(err instanceof RegistryError, `want RegistryError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  assert.equal(err.status, status, err.message);
  for (const p of parts) {
    if (typeof p === 'string') assert.ok(err.message.includes(p), `"${err.message}" should include "${p}"`);
    else assert.match(err.message, p);
  }
  return true;
}

const fast = { retries: 2, backoffMs: 10, maxBackoffMs: 50 };

// ---------------------------------------------------------------- suites

void describe('distribution client against docker-registry', () => {
  let root: string;
  let reg: Registry;
  let img: TestImage;
  let big: TestImage;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'kiln-registry-'));
    reg = await startRegistry(join(root, 'reg'));
    img = await makeImage(root, { 'etc/hello': 'hello from kiln\n', 'bin/tool': '#!/bin/sh\necho hi\n' });
    // ~600 KiB of incompressible bytes, so bodies span many TCP reads
    big = await makeImage(root, { 'data/blob.bin': randomBytes(600 * 1024), 'etc/x': 'x' });
    await skopeoPush(root, img, `${reg.host}/src/img:v1`);
  });

  after(async () => {
    await reg?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  void test('resolve and fetch an image pushed by skopeo (digests verified)', async () => {
    const r = new Resolver(fast);
    const { ref, descriptor } = await r.resolve(`${reg.host}/src/img:v1`);
    assert.equal(ref.path, 'src/img');
    assert.deepEqual(descriptor, img.manifestDesc);
    const f = r.fetcher(ref);
    const mbytes = await f.fetchBytes(descriptor);
    assert.deepEqual(Buffer.from(mbytes), img.manifest);
    const m = parseManifest(mbytes);
    assert.deepEqual(Buffer.from(await f.fetchBytes(m.config)), img.config);
    assert.deepEqual(await collect(f.fetch(m.layers[0]!)), img.layer);
    // by digest, too
    const byDigest = await r.resolve(`${reg.host}/src/img@${img.manifestDesc.digest}`);
    assert.equal(byDigest.descriptor.digest, img.manifestDesc.digest);
    // a descriptor that lies about the digest is refused after the bytes
    const lie = { ...m.layers[0]!, digest: sha256('something else') };
    await assert.rejects(collect(f.fetch(lie)), (e: unknown) => isKilnError(e, 'NotFound'));
    const wrongSize = { ...m.config, size: m.config.size - 1 };
    await assert.rejects(f.fetchBytes(wrongSize), (e: unknown) => isKilnError(e, 'DataLoss'));
  });

  void test('push an image; skopeo sees the same digest and bytes', async () => {
    const r = new Resolver(fast);
    const p = r.pusher(`${reg.host}/dst/app:v2`);
    // chunked PATCH upload for the big layer, monolithic for the config
    assert.equal(await p.pushBlob(big.layerDesc, big.layer, { chunkSize: 64 * 1024 }), 'uploaded');
    assert.equal(await p.pushBlob(big.configDesc, big.config), 'uploaded');
    assert.equal(await p.pushBlob(big.configDesc, big.config), 'exists');
    await p.pushManifest(big.manifestDesc, big.manifest, 'v2');
    const info = JSON.parse(await skopeoInspect(`${reg.host}/dst/app:v2`)) as {
      Digest: string;
      Layers: string[];
    };
    assert.equal(info.Digest, big.manifestDesc.digest);
    assert.deepEqual(info.Layers, [big.layerDesc.digest]);
    assert.equal(await skopeoInspect(`${reg.host}/dst/app:v2`, true), big.manifest.toString());
    // and our own fetcher reads back the layer
    const back = await collect(r.fetcher(`${reg.host}/dst/app:v2`).fetch(big.layerDesc));
    assert.ok(back.equals(big.layer));
    // a streamed upload is checked against the descriptor before it is completed
    async function* wrong(): AsyncGenerator<Uint8Array> {
      yield Buffer.from('not the layer');
    }
    const bogus = { ...descOf(MediaType.OciLayerGzip, Buffer.from('expected')), size: 13 };
    await assert.rejects(p.pushBlob(bogus, wrong()), (e: unknown) => isKilnError(e, 'DataLoss'));
    assert.equal(await p.blobExists(bogus), false);
  });

  void test('push and resolve a multi-platform index, select by platform', async () => {
    const arm = await makeImage(root, { 'etc/arch': 'arm64' }, 'arm64');
    const r = new Resolver(fast);
    const p = r.pusher(`${reg.host}/multi/img:latest`);
    for (const im of [img, arm]) {
      await p.pushBlob(im.layerDesc, im.layer);
      await p.pushBlob(im.configDesc, im.config);
      await p.pushManifest(im.manifestDesc, im.manifest);
    }
    const index: Index = {
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: [
        { ...img.manifestDesc, platform: { os: 'linux', architecture: 'amd64' } },
        { ...arm.manifestDesc, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      ],
    };
    const ibytes = Buffer.from(JSON.stringify(index));
    const idesc = descOf(MediaType.OciIndex, ibytes);
    await p.pushManifest(idesc, ibytes, 'latest');
    const { descriptor } = await r.resolve(`${reg.host}/multi/img`);
    assert.deepEqual(descriptor, idesc);
    const got = parseIndex(await r.fetcher(`${reg.host}/multi/img`).fetchBytes(descriptor));
    assert.equal(
      selectManifest(got.manifests, parsePlatform('linux/arm64'))?.digest,
      arm.manifestDesc.digest,
    );
    assert.equal(
      selectManifest(got.manifests, parsePlatform('linux/x86_64'))?.digest,
      img.manifestDesc.digest,
    );
    const raw = JSON.parse(await skopeoInspect(`${reg.host}/multi/img:latest`, true)) as Index;
    assert.equal(raw.manifests.length, 2);
  });

  void test('cross-repository blob mount', async () => {
    const r = new Resolver(fast);
    const p = r.pusher(`${reg.host}/mounted/repo:x`);
    assert.equal(await p.blobExists(img.layerDesc), false);
    assert.equal(await p.pushBlob(img.layerDesc, img.layer, { mountFrom: ['src/img'] }), 'mounted');
    assert.equal(await p.blobExists(img.layerDesc), true);
    // a mount from a repository without the blob falls back to an upload
    const q = r.pusher(`${reg.host}/mounted/other:x`);
    assert.equal(await q.pushBlob(img.configDesc, img.config, { mountFrom: ['nowhere/repo'] }), 'uploaded');
    assert.deepEqual(
      Buffer.from(await r.fetcher(`${reg.host}/mounted/other`).fetchBytes(img.configDesc)),
      img.config,
    );
  });

  void test('a blob served with wrong bytes is rejected', async () => {
    const proxy = await startProxy(reg.host, (_req, upstream, res) => {
      res.writeHead(upstream.statusCode!, upstream.headers);
      let first = true;
      upstream.on('data', (c: Buffer) => {
        if (first) {
          c = Buffer.from(c);
          c[0] = c[0]! ^ 0xff;
          first = false;
        }
        res.write(c);
      });
      upstream.on('end', () => res.end());
      return true;
    });
    try {
      const f = new Resolver(fast).fetcher(`${proxy.host}/src/img:v1`);
      await assert.rejects(collect(f.fetch(img.layerDesc)), (e: unknown) => {
        assert.ok(isKilnError(e, 'DataLoss'), String(e));
        assert.match(
          (e as Error).message,
          new RegExp(`content has digest "sha256:[0-9a-f]{64}", want "${img.layerDesc.digest}"`),
        );
        assert.match((e as Error).message, /src\/img/);
        return true;
      });
    } finally {
      await proxy.close();
    }
  });

  void test('a download cut midway resumes with a Range request', async () => {
    // push the big layer into the repo the proxy reads from
    await new Resolver(fast).pusher(`${reg.host}/src/img:v1`).pushBlob(big.layerDesc, big.layer);
    let cuts = 0;
    const proxy = await startProxy(reg.host, (req, upstream, res) => {
      if (req.headers.range !== undefined || cuts >= 2) return false;
      cuts++;
      res.writeHead(upstream.statusCode!, upstream.headers);
      let sent = 0;
      const limit = cuts * 100_000;
      upstream.on('data', (c: Buffer) => {
        if (sent >= limit) return;
        const part = c.subarray(0, limit - sent);
        sent += part.byteLength;
        res.write(part, () => {
          if (sent >= limit) res.socket?.destroy();
        });
      });
      return true;
    });
    try {
      const f = new Resolver(fast).fetcher(`${proxy.host}/src/img:v1`);
      const got = await collect(f.fetch(big.layerDesc));
      assert.ok(got.equals(big.layer), 'resumed download has the right bytes');
      const gets = proxy.seen.filter((s) => s.method === 'GET' && s.url.includes(big.layerDesc.digest));
      assert.equal(gets[0]!.range, undefined);
      assert.ok(gets.length >= 2, `want a second request, saw ${JSON.stringify(gets)}`);
      assert.match(gets[1]!.range ?? '', /^bytes=[1-9][0-9]*-$/);
      // with no resumptions allowed the cut is an error naming the reference
      cuts = 0;
      const strict = new Resolver({ ...fast, maxResumes: 0 }).fetcher(`${proxy.host}/src/img:v1`);
      await assert.rejects(collect(strict.fetch(big.layerDesc)), (e: unknown) => {
        assert.ok(isKilnError(e, 'Unavailable'), String(e));
        assert.match((e as Error).message, /got \d+ of \d+ bytes/);
        assert.match((e as Error).message, /src\/img:v1/);
        return true;
      });
    } finally {
      await proxy.close();
    }
  });

  void test('a broken download into the content store resumes from the ingest offset; push from the store', async () => {
    await new Resolver(fast).pusher(`${reg.host}/src/img:v1`).pushBlob(big.layerDesc, big.layer);
    let cut = true;
    const proxy = await startProxy(reg.host, (_req, upstream, res) => {
      if (!cut) return false;
      cut = false;
      res.writeHead(upstream.statusCode!, upstream.headers);
      let sent = 0;
      upstream.on('data', (c: Buffer) => {
        if (sent >= 150_000) return;
        const part = c.subarray(0, 150_000 - sent);
        sent += part.byteLength;
        res.write(part, () => {
          if (sent >= 150_000) res.socket?.destroy();
        });
      });
      return true;
    });
    const store = new LocalContentStore(join(root, 'content'));
    try {
      const ref = `pull-${big.layerDesc.digest}`;
      const strict = new Resolver({ ...fast, maxResumes: 0 }).fetcher(`${proxy.host}/src/img:v1`);
      const w1 = await store.writer({ ref, total: big.layerDesc.size, expected: big.layerDesc.digest });
      await assert.rejects(strict.fetchToWriter(big.layerDesc, w1), (e: unknown) =>
        isKilnError(e, 'Unavailable'),
      );
      await w1.close();
      const kept = (await store.status(ref)).offset;
      assert.ok(kept > 0 && kept < big.layerDesc.size, `ingest kept ${kept} bytes`);

      const w2 = await store.writer({ ref, total: big.layerDesc.size, expected: big.layerDesc.digest });
      assert.equal(w2.offset, kept);
      await new Resolver(fast).fetcher(`${proxy.host}/src/img:v1`).fetchToWriter(big.layerDesc, w2);
      const info = await store.info(big.layerDesc.digest);
      assert.equal(info.size, big.layerDesc.size);
      const gets = proxy.seen.filter((s) => s.method === 'GET' && s.url.includes(big.layerDesc.digest));
      assert.equal(gets.at(-1)!.range, `bytes=${kept}-`);

      // the stored blob streams into another repository in PATCH chunks
      const p = new Resolver(fast).pusher(`${reg.host}/from/store:v1`);
      const result = await p.pushBlob(big.layerDesc, store.read(big.layerDesc.digest), {
        chunkSize: 100_000,
      });
      assert.equal(result, 'uploaded');
      const back = await collect(new Resolver(fast).fetcher(`${reg.host}/from/store`).fetch(big.layerDesc));
      assert.ok(back.equals(big.layer));
    } finally {
      await proxy.close();
    }
  });

  void test('fetchToWriter writes in large batches; a failing write stops the download and is reported', async () => {
    // ~5 MiB of incompressible bytes: several 1 MiB write batches
    const huge = await makeImage(root, { 'data/huge.bin': randomBytes(5 << 20) });
    const r = new Resolver(fast);
    await r.pusher(`${reg.host}/src/img:v1`).pushBlob(huge.layerDesc, huge.layer);
    const f = r.fetcher(`${reg.host}/src/img:v1`);
    const store = new LocalContentStore(join(root, 'content-batches'));
    const w = await store.writer({
      ref: 'batches',
      total: huge.layerDesc.size,
      expected: huge.layerDesc.digest,
    });
    const sizes: number[] = [];
    const write = w.write.bind(w);
    Object.defineProperty(w, 'write', {
      value: (chunk: Uint8Array) => {
        sizes.push(chunk.byteLength);
        return write(chunk);
      },
    });
    const seen: number[] = [];
    const got = await f.fetchToWriter(huge.layerDesc, w, { progress: (o) => seen.push(o) });
    assert.equal(got, huge.layerDesc.size);
    assert.equal((await store.info(huge.layerDesc.digest)).size, huge.layerDesc.size);
    assert.equal(sizes.length, Math.ceil(huge.layerDesc.size / (1 << 20)), JSON.stringify(sizes));
    assert.ok(
      sizes.slice(0, -1).every((n) => n === 1 << 20),
      JSON.stringify(sizes),
    );
    assert.equal(seen.at(-1), huge.layerDesc.size);

    // a writer whose second write fails: the error comes out, the rest is not written
    let writes = 0;
    const failing = {
      ref: 'failing',
      offset: 0,
      write: async (chunk: Uint8Array): Promise<void> => {
        if (++writes === 2) throw new Error('disk full (test)');
        failing.offset += chunk.byteLength;
      },
      digest: () => sha256(''),
      commit: async () => sha256(''),
      close: async () => {},
    };
    await assert.rejects(f.fetchToWriter(huge.layerDesc, failing), /disk full \(test\)/);
    assert.equal(writes, 2);
    assert.equal(failing.offset, 1 << 20);
  });

  void test('404 from the real registry names reference, path and status', async () => {
    const r = new Resolver(fast);
    await assert.rejects(r.resolve(`${reg.host}/src/img:nope`), (e) =>
      assertRegistryError(e, 'NotFound', 404, [
        `"${reg.host}/src/img:nope"`,
        'HEAD /v2/src/img/manifests/nope',
        'HTTP 404',
        'not found',
      ]),
    );
    const missing = descOf(MediaType.OciLayerGzip, Buffer.from('missing'));
    await assert.rejects(collect(r.fetcher(`${reg.host}/src/img:v1`).fetch(missing)), (e) =>
      assertRegistryError(e, 'NotFound', 404, [`GET /v2/src/img/blobs/${missing.digest}`, 'BLOB_UNKNOWN']),
    );
  });
});

void describe('status codes the real registry cannot be made to return (fake server)', () => {
  // docker-registry never answers 403, 429 or 5xx on demand, so these come from a fake.
  let srv: http.Server;
  let host: string;
  const plan: number[] = [];
  let hits = 0;

  before(async () => {
    srv = http.createServer((req, res) => {
      hits++;
      const status = plan.shift() ?? 200;
      if (status === 200) {
        const body =
          '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}';
        res.writeHead(200, {
          'content-type': MediaType.OciManifest,
          'docker-content-digest': sha256(body),
          'content-length': String(Buffer.byteLength(body)),
        });
        res.end(req.method === 'HEAD' ? undefined : body);
        return;
      }
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (status === 429) headers['retry-after'] = '0';
      res.writeHead(status, headers);
      res.end(
        req.method === 'HEAD'
          ? undefined
          : JSON.stringify({ errors: [{ code: 'FAKE', message: `status ${status}` }] }),
      );
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    host = `127.0.0.1:${(srv.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((r) => srv.close(() => r()));
  });

  void test('5xx and 429 are retried, then reported', async () => {
    const r = new Resolver(fast);
    plan.push(503, 502);
    hits = 0;
    const { descriptor } = await r.resolve(`${host}/a/b:t`);
    assert.equal(hits, 3);
    assert.equal(descriptor.mediaType, MediaType.OciManifest);

    plan.length = 0;
    plan.push(500, 500, 500, 500);
    hits = 0;
    await assert.rejects(r.resolve(`${host}/a/b:t`), (e) =>
      assertRegistryError(e, 'Unavailable', 500, [
        'registry server error',
        'HEAD /v2/a/b/manifests/t',
        'gave up after 3 attempts',
      ]),
    );
    assert.equal(hits, 3);

    plan.length = 0;
    plan.push(429, 429, 429);
    await assert.rejects(r.resolve(`${host}/a/b:t`), (e) =>
      assertRegistryError(e, 'ResourceExhausted', 429, ['too many requests', `"${host}/a/b:t"`]),
    );
    plan.length = 0;
  });

  void test('403 is a permission error with the registry detail', async () => {
    plan.push(403);
    await assert.rejects(
      new Resolver(fast).fetcher(`${host}/a/b:t`).fetchBytes(descOf('x', Buffer.from('y'))),
      (e) =>
        assertRegistryError(e, 'PermissionDenied', 403, [
          'access denied',
          'FAKE: status 403',
          '/v2/a/b/blobs/',
        ]),
    );
    plan.length = 0;
  });

  void test('network errors are retried, then reported', async () => {
    // a server that accepts and at once drops every connection
    let accepted = 0;
    const dropper = net.createServer((sock) => {
      accepted++;
      sock.destroy();
    });
    await new Promise<void>((r) => dropper.listen(0, '127.0.0.1', r));
    const port = (dropper.address() as AddressInfo).port;
    try {
      await assert.rejects(new Resolver(fast).resolve(`127.0.0.1:${port}/a:b`), (e) =>
        assertRegistryError(e, 'Unavailable', undefined, [
          'network error',
          'gave up after 3 attempts',
          `"127.0.0.1:${port}/a:b"`,
          'HEAD /v2/a/manifests/b',
        ]),
      );
      assert.equal(accepted, 3);
    } finally {
      await new Promise<void>((r) => dropper.close(() => r()));
    }
  });

  void test('HTTPS unless loopback or marked insecure; WWW-Authenticate parsing', () => {
    assert.equal(registryBaseURL('example.com:5000'), 'https://example.com:5000');
    assert.equal(registryBaseURL('docker.io'), 'https://registry-1.docker.io');
    assert.equal(registryBaseURL('localhost:5000'), 'http://localhost:5000');
    assert.equal(registryBaseURL('127.0.0.2'), 'http://127.0.0.2');
    assert.equal(registryBaseURL('[::1]:5000'), 'http://[::1]:5000');
    assert.equal(registryBaseURL('reg.lan:5000', ['reg.lan:5000']), 'http://reg.lan:5000');
    assert.deepEqual(
      parseWWWAuthenticate(
        'Bearer realm="https://a/token",service="reg",scope="repository:x/y:pull,push", Basic realm="r"',
      ),
      [
        {
          scheme: 'bearer',
          params: { realm: 'https://a/token', service: 'reg', scope: 'repository:x/y:pull,push' },
        },
        { scheme: 'basic', params: { realm: 'r' } },
      ],
    );
  });
});

void describe('basic authentication against docker-registry (htpasswd)', () => {
  let root: string;
  let reg: Registry;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'kiln-registry-basic-'));
    // bcrypt entry made with the system's libxcrypt through Python (no htpasswd installed)
    const { stdout } = await execFileP('python3', [
      '-W',
      'ignore',
      '-c',
      'import crypt; print("kiln:" + crypt.crypt("secret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))',
    ]);
    await writeFile(join(root, 'htpasswd'), stdout);
    reg = await startRegistry(
      join(root, 'reg'),
      ['auth:', '  htpasswd:', '    realm: kiln-basic', `    path: ${join(root, 'htpasswd')}`].join('\n'),
    );
  });
  after(async () => {
    await reg?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  void test('push and resolve with Basic credentials; 401 without or with wrong ones', async () => {
    const img = await makeImage(root, { 'etc/basic': 'basic\n' });
    const cfgDir = join(root, 'docker');
    await mkdir(cfgDir, { recursive: true });
    await writeFile(
      join(cfgDir, 'config.json'),
      JSON.stringify({ auths: { [reg.host]: { username: 'kiln', password: 'secret' } } }),
    );
    const credentials = dockerConfigCredentials({ path: join(cfgDir, 'config.json') });
    const r = new Resolver({ ...fast, authorizer: new Authorizer({ credentials }) });
    const p = r.pusher(`${reg.host}/basic/app:v1`);
    await p.pushBlob(img.layerDesc, img.layer);
    await p.pushBlob(img.configDesc, img.config);
    await p.pushManifest(img.manifestDesc, img.manifest, 'v1');
    assert.deepEqual((await r.resolve(`${reg.host}/basic/app:v1`)).descriptor, img.manifestDesc);
    assert.equal(
      JSON.parse(
        await execFileP('skopeo', [
          'inspect',
          '--tls-verify=false',
          '--creds',
          'kiln:secret',
          `docker://${reg.host}/basic/app:v1`,
        ]).then((o) => o.stdout),
      ).Digest,
      img.manifestDesc.digest,
    );

    await assert.rejects(new Resolver(fast).resolve(`${reg.host}/basic/app:v1`), (e) =>
      assertRegistryError(e, 'Unauthenticated', 401, [
        'authentication required',
        'HEAD /v2/basic/app/manifests/v1',
      ]),
    );
    const wrong = new Resolver({
      ...fast,
      authorizer: new Authorizer({ credentials: async () => ({ username: 'kiln', password: 'wrong' }) }),
    });
    await assert.rejects(wrong.fetcher(`${reg.host}/basic/app:v1`).fetchBytes(img.configDesc), (e) =>
      assertRegistryError(e, 'Unauthenticated', 401, [
        `GET /v2/basic/app/blobs/${img.configDesc.digest}`,
        'UNAUTHORIZED',
      ]),
    );
  });
});

void describe('token authentication against docker-registry', () => {
  let root: string;
  let reg: Registry;
  let tokenSrv: http.Server;
  const issued: { user: string; scopes: string[] }[] = [];

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'kiln-registry-auth-'));
    const key = join(root, 'key.pem');
    const cert = join(root, 'cert.pem');
    await execFileP('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '2',
      '-subj',
      '/CN=kiln-test-token-issuer',
    ]);
    const privateKey = createPrivateKey(await readFile(key));
    const x5c = new X509Certificate(await readFile(cert)).raw.toString('base64');
    const b64url = (v: Buffer | string): string => Buffer.from(v).toString('base64url');

    tokenSrv = http.createServer((req, res) => {
      const url = new URL(req.url!, 'http://x');
      if (req.method === 'POST') {
        // OAuth2 refresh-token grant (docker "identitytoken")
        let body = '';
        req.setEncoding('utf8').on('data', (c: string) => {
          body += c;
        });
        req.on('end', () => {
          const form = new URLSearchParams(body);
          if (form.get('grant_type') !== 'refresh_token' || form.get('refresh_token') !== 'kiln-refresh') {
            res.writeHead(401).end('{"details":"bad refresh token"}');
            return;
          }
          issue(res, 'kiln', (form.get('scope') ?? '').split(' ').filter(Boolean), form.get('service'), true);
        });
        return;
      }
      const auth = req.headers.authorization;
      let user = '';
      if (auth) {
        const [u, p] = Buffer.from(auth.replace(/^Basic /, ''), 'base64')
          .toString()
          .split(':');
        if (u !== 'kiln' || p !== 'secret') {
          res.writeHead(401).end('{"details":"bad credentials"}');
          return;
        }
        user = u;
      }
      issue(res, user, url.searchParams.getAll('scope'), url.searchParams.get('service'));
    });
    const issue = (
      res: http.ServerResponse,
      user: string,
      scopes: string[],
      service: string | null,
      oauth = false,
    ): void => {
      issued.push({ user, scopes });
      // only an authenticated user gets access; anonymous tokens grant nothing
      const access = user
        ? scopes.map((s) => {
            const [type, name, actions] = s.split(':') as [string, string, string];
            return { type, name, actions: actions.split(',') };
          })
        : [];
      const now = Math.floor(Date.now() / 1000);
      const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'ES256', x5c: [x5c] }));
      const claims = b64url(
        JSON.stringify({
          iss: 'kiln-test-issuer',
          sub: user,
          aud: service,
          exp: now + 300,
          nbf: now - 10,
          iat: now,
          jti: randomBytes(8).toString('hex'),
          access,
        }),
      );
      const sig = sign('sha256', Buffer.from(`${header}.${claims}`), {
        key: privateKey,
        dsaEncoding: 'ieee-p1363',
      });
      const token = `${header}.${claims}.${b64url(sig)}`;
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify(oauth ? { access_token: token, expires_in: 300 } : { token, expires_in: 300 }));
    };
    await new Promise<void>((r) => tokenSrv.listen(0, '127.0.0.1', r));
    const tport = (tokenSrv.address() as AddressInfo).port;
    reg = await startRegistry(
      join(root, 'reg'),
      [
        'auth:',
        '  token:',
        `    realm: http://127.0.0.1:${tport}/token`,
        '    service: kiln-test-registry',
        '    issuer: kiln-test-issuer',
        `    rootcertbundle: ${cert}`,
      ].join('\n'),
    );
  });

  after(async () => {
    await reg?.stop();
    if (tokenSrv) await new Promise<void>((r) => tokenSrv.close(() => r()));
    if (root) await rm(root, { recursive: true, force: true });
  });

  void test('push and pull with a bearer token from docker config credentials', async () => {
    const cfgDir = join(root, 'docker');
    await mkdir(cfgDir, { recursive: true });
    await writeFile(
      join(cfgDir, 'config.json'),
      JSON.stringify({
        auths: { [`http://${reg.host}`]: { auth: Buffer.from('kiln:secret').toString('base64') } },
      }),
    );
    const credentials = dockerConfigCredentials({ env: { DOCKER_CONFIG: cfgDir } });
    const r = new Resolver({ ...fast, authorizer: new Authorizer({ credentials }) });
    const img = await makeImage(root, { 'etc/secret': 'token-protected\n' });
    const p = r.pusher(`${reg.host}/priv/app:v1`);
    await p.pushBlob(img.layerDesc, img.layer);
    await p.pushBlob(img.configDesc, img.config);
    await p.pushManifest(img.manifestDesc, img.manifest, 'v1');
    const { descriptor } = await r.resolve(`${reg.host}/priv/app:v1`);
    assert.deepEqual(descriptor, img.manifestDesc);
    assert.ok(
      issued.some((i) => i.user === 'kiln' && i.scopes.includes('repository:priv/app:pull,push')),
      JSON.stringify(issued),
    );

    // mounting asks for pull on the source repository in the same token
    const q = r.pusher(`${reg.host}/priv/copy:v1`);
    assert.equal(await q.pushBlob(img.layerDesc, img.layer, { mountFrom: ['priv/app'] }), 'mounted');
    assert.ok(
      issued.some(
        (i) =>
          i.scopes.includes('repository:priv/app:pull') &&
          i.scopes.includes('repository:priv/copy:pull,push'),
      ),
      JSON.stringify(issued),
    );

    // credentials from a credential helper (docker-credential-<x> get)
    const bin = join(root, 'bin');
    await mkdir(bin, { recursive: true });
    const helper = join(bin, 'docker-credential-kilntest');
    await writeFile(
      helper,
      '#!/bin/sh\nread host\necho "$host" >> "$(dirname "$0")/asked"\nprintf \'{"ServerURL":"%s","Username":"kiln","Secret":"secret"}\' "$host"\n',
    );
    await chmod(helper, 0o755);
    await writeFile(join(cfgDir, 'config.json'), JSON.stringify({ credHelpers: { [reg.host]: 'kilntest' } }));
    const viaHelper = dockerConfigCredentials({
      env: { DOCKER_CONFIG: cfgDir, PATH: `${bin}:${process.env.PATH}` },
    });
    const r2 = new Resolver({ ...fast, authorizer: new Authorizer({ credentials: viaHelper }) });
    const f = r2.fetcher(`${reg.host}/priv/app:v1`);
    assert.deepEqual(Buffer.from(await f.fetchBytes(img.configDesc)), img.config);
    assert.equal((await readFile(join(bin, 'asked'), 'utf8')).trim(), reg.host);
  });

  void test('concurrent requests share one token', async () => {
    const credentials = async (): Promise<{ username: string; password: string }> => ({
      username: 'kiln',
      password: 'secret',
    });
    const r = new Resolver({ ...fast, authorizer: new Authorizer({ credentials }) });
    const before = issued.length;
    const results = await Promise.all(
      Array.from({ length: 6 }, () => r.resolve(`${reg.host}/priv/app:v1`).then((x) => x.descriptor.digest)),
    );
    assert.equal(new Set(results).size, 1);
    assert.equal(issued.length - before, 1, JSON.stringify(issued.slice(before)));
  });

  void test('an identity token from the docker config uses the OAuth2 refresh-token grant', async () => {
    const cfg = join(root, 'identity.json');
    await writeFile(cfg, JSON.stringify({ auths: { [reg.host]: { identitytoken: 'kiln-refresh' } } }));
    const r = new Resolver({
      ...fast,
      authorizer: new Authorizer({ credentials: dockerConfigCredentials({ path: cfg }) }),
    });
    const before = issued.length;
    assert.equal((await r.resolve(`${reg.host}/priv/app:v1`)).ref.path, 'priv/app');
    assert.deepEqual(issued.slice(before), [{ user: 'kiln', scopes: ['repository:priv/app:pull'] }]);
    await writeFile(cfg, JSON.stringify({ auths: { [reg.host]: { identitytoken: 'revoked' } } }));
    const bad = new Resolver({
      ...fast,
      authorizer: new Authorizer({ credentials: dockerConfigCredentials({ path: cfg }) }),
    });
    await assert.rejects(bad.resolve(`${reg.host}/priv/app:v1`), (e: unknown) =>
      isKilnError(e, 'Unauthenticated'),
    );
  });

  void test('401 without credentials and with wrong ones', async () => {
    const anon = new Resolver(fast);
    await assert.rejects(anon.resolve(`${reg.host}/priv/app:v1`), (e) =>
      assertRegistryError(e, 'Unauthenticated', 401, [
        `"${reg.host}/priv/app:v1"`,
        'HEAD /v2/priv/app/manifests/v1',
        'HTTP 401',
      ]),
    );
    const wrong = new Resolver({
      ...fast,
      authorizer: new Authorizer({ credentials: async () => ({ username: 'kiln', password: 'nope' }) }),
    });
    await assert.rejects(wrong.resolve(`${reg.host}/priv/app:v1`), (e: unknown) => {
      assert.ok(isKilnError(e, 'Unauthenticated'), String(e));
      assert.match((e as Error).message, /get token for "127\.0\.0\.1:\d+".*HTTP 401: credentials refused/);
      return true;
    });
  });
});
