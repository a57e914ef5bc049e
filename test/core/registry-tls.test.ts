/**
 * The registry transport's TLS, redirects and connections against REAL
 * docker-registry servers: one serving HTTPS with a certificate from a CA
 * made here (openssl), one that also requires client certificates
 * (`http.tls.clientcas`). They are reached by a name that is not loopback
 * (the host name, resolving to 127.0.0.1, else a local non-loopback
 * address), so the transport uses HTTPS. Images are pushed by skopeo with
 * its own `--dest-cert-dir`. Checks: without the CA, a TLS error naming the
 * host and the file to add, not retried; with the CA in a certs.d folder,
 * pull works, and only for that host; with mutual TLS, pull works with the
 * client certificate and fails clearly without it; a `.cert` without its
 * `.key` is refused; the CLI's `--certs-dir` and `<root>/certs.d`. Then,
 * over plain HTTP: a blob GET redirected to another origin (storage)
 * carries no Authorization there, resumes there with Range after a cut,
 * and sequential requests share one keep-alive connection.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isKilnError } from '../../src/core/errors.ts';
import { pull } from '../../src/core/images/index.ts';
import { openCore } from '../../src/core/metadata/index.ts';
import { setTempMountRoot } from '../../src/core/mount/mount.ts';
import { loadHostTLS } from '../../src/core/remotes/certs.ts';
import { Authorizer, RegistryError, Resolver } from '../../src/core/remotes/index.ts';
import {
  type LayoutImage,
  makeLayout,
  makeTestPKI,
  type Registry,
  skopeo,
  startRegistry,
  type TestPKI,
  tarDir,
  tempDir,
  tlsTestHost,
} from './fixtures/images.ts';

const fast = { retries: 2, backoffMs: 10, maxBackoffMs: 20, maxResumes: 2 };
const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

function kiln(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const p = spawn(join(repo, 'bin/kiln'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
    });
    p.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
    });
    p.on('error', rej);
    p.on('close', (code) => res({ status: code ?? -1, stdout, stderr }));
  });
}

/** A small one-layer image in an OCI layout. */
async function smallImage(work: string): Promise<LayoutImage> {
  const d = join(work, 'rootfs');
  await mkdir(join(d, 'etc'), { recursive: true });
  await writeFile(join(d, 'etc/hello'), 'hello over TLS\n');
  await writeFile(join(d, 'etc/blob.bin'), randomBytes(300_000));
  return makeLayout(join(work, 'layout'), 'v1', [await tarDir(d, join(work, 'l.tar'))]);
}

/** A certs.d folder for `host` with the given files (name → source path). */
async function certsFolder(base: string, host: string, files: Record<string, string>): Promise<string> {
  await mkdir(join(base, host), { recursive: true });
  for (const [name, src] of Object.entries(files)) await copyFile(src, join(base, host, name));
  return base;
}

const target = await tlsTestHost();

void describe('TLS registries: certs.d CA files and client certificates', { skip: !target }, () => {
  let work: string;
  let pki: TestPKI;
  let reg: Registry;
  let mtls: Registry;
  let img: LayoutImage;
  /** certs.d with the CA for `reg` and the CA + client certificate for `mtls`. */
  let certsd: string;

  before(async () => {
    const t = target!;
    work = await tempDir('kiln-registry-tls-');
    setTempMountRoot(join(work, 'mounts'));
    pki = await makeTestPKI(join(work, 'pki'), [t.name]);
    const tls = { certificate: pki.serverCert, key: pki.serverKey };
    reg = await startRegistry(join(work, 'reg'), undefined, { tls, bind: t.bind, hostname: t.name });
    mtls = await startRegistry(join(work, 'mtls'), undefined, {
      tls: { ...tls, clientCAs: [pki.clientCACert] },
      bind: t.bind,
      hostname: t.name,
    });
    img = await smallImage(work);
    certsd = join(work, 'certs.d');
    await certsFolder(certsd, reg.host, { 'ca.crt': pki.caCert });
    await certsFolder(certsd, mtls.host, {
      'ca.crt': pki.caCert,
      'client.cert': pki.clientCert,
      'client.key': pki.clientKey,
    });
    // skopeo reads the same file names from one flat folder.
    for (const r of [reg, mtls]) {
      await skopeo([
        'copy',
        '--quiet',
        '--dest-cert-dir',
        join(certsd, r.host),
        `oci:${img.layout}:v1`,
        `docker://${r.host}/tls/img:v1`,
      ]);
    }
  });

  after(async () => {
    await reg?.stop();
    await mtls?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  void test('without the CA: a TLS error that names the host and the file to add, not retried', async () => {
    const empty = join(work, 'empty.d');
    await mkdir(empty, { recursive: true });
    const r = new Resolver({ ...fast, retries: 3, backoffMs: 2000, certsDirs: [empty] });
    const t0 = Date.now();
    await assert.rejects(r.resolve(`${reg.host}/tls/img:v1`), (e: unknown) => {
      assert.ok(e instanceof RegistryError, String(e));
      assert.equal(e.code, 'Unavailable');
      assert.equal(e.status, undefined);
      assert.match(e.message, /TLS error/);
      assert.ok(e.message.includes(`certificate of "${reg.host}" is not signed by a trusted CA`), e.message);
      assert.ok(e.message.includes(`"${join(empty, reg.host)}/ca.crt"`), e.message);
      assert.ok(e.message.includes('HEAD /v2/tls/img/manifests/v1'), e.message);
      assert.doesNotMatch(e.message, /gave up after/);
      return true;
    });
    // Three retries with a 2 s backoff would take over 6 s.
    assert.ok(Date.now() - t0 < 2000, 'a TLS failure is not retried');
  });

  void test('with the CA in certs.d: pull works, and the CA is trusted for that host only', async () => {
    const core = await openCore({ root: join(work, 'state-ca'), namespace: 'tls' });
    try {
      const r = await pull(core, `${reg.host}/tls/img:v1`, {
        remote: { ...fast, certsDirs: [join(work, 'nothing-here'), certsd] },
        unpack: false,
      });
      assert.equal(r.target.digest, img.manifest.digest);
      assert.equal((await core.content.info(img.layers[0]!.digest)).size, img.layers[0]!.size);
      assert.equal(r.blobsFetched, 3);
    } finally {
      await core.close();
    }
    // The same CA signed the other registry's certificate, but a folder for another host does not count.
    const onlyReg = join(work, 'only-reg.d');
    await certsFolder(onlyReg, reg.host, { 'ca.crt': pki.caCert });
    await assert.rejects(
      new Resolver({ ...fast, certsDirs: [onlyReg] }).resolve(`${mtls.host}/tls/img:v1`),
      (e: unknown) => e instanceof RegistryError && /not signed by a trusted CA/.test(e.message),
    );
  });

  void test('client certificates: pull works with one, fails clearly without', async () => {
    const caOnly = join(work, 'ca-only.d');
    await certsFolder(caOnly, mtls.host, { 'ca.crt': pki.caCert });
    await assert.rejects(
      new Resolver({ ...fast, certsDirs: [caOnly] }).resolve(`${mtls.host}/tls/img:v1`),
      (e: unknown) => {
        assert.ok(e instanceof RegistryError, String(e));
        assert.equal(e.code, 'Unavailable');
        assert.match(e.message, /TLS error/);
        assert.ok(e.message.includes(`"${mtls.host}"`), e.message);
        assert.ok(e.message.includes(`"${join(caOnly, mtls.host)}/client.cert"`), e.message);
        assert.ok(e.message.includes(`"${mtls.host}/tls/img:v1"`), e.message);
        return true;
      },
    );
    const core = await openCore({ root: join(work, 'state-mtls'), namespace: 'tls' });
    try {
      const r = await pull(core, `${mtls.host}/tls/img:v1`, {
        remote: { ...fast, certsDirs: [certsd] },
        unpack: false,
      });
      assert.equal(r.target.digest, img.manifest.digest);
      assert.equal((await core.content.info(img.layers[0]!.digest)).size, img.layers[0]!.size);
    } finally {
      await core.close();
    }
    // A client certificate without its key is refused before any connection.
    const half = join(work, 'half.d');
    await certsFolder(half, mtls.host, { 'ca.crt': pki.caCert, 'client.cert': pki.clientCert });
    await assert.rejects(
      new Resolver({ ...fast, certsDirs: [half] }).resolve(`${mtls.host}/tls/img:v1`),
      (e) => {
        assert.ok(isKilnError(e, 'InvalidArgument'), String(e));
        assert.ok(
          (e as Error).message.includes(
            `"${join(half, mtls.host, 'client.cert')}" has no key "${join(half, mtls.host, 'client.key')}"`,
          ),
          (e as Error).message,
        );
        return true;
      },
    );
    // Docker Hub's folder is named docker.io (or registry-1.docker.io); the first directory with one wins.
    const hub = await certsFolder(join(work, 'hub.d'), 'docker.io', { 'ca.crt': pki.caCert });
    const found = await loadHostTLS('registry-1.docker.io', [join(work, 'none.d'), hub, certsd]);
    assert.equal(found?.dir, join(hub, 'docker.io'));
    assert.equal(found?.ca.length, 1);
    assert.equal(found?.client, undefined);
  });

  void test('CLI: --certs-dir, and <root>/certs.d by default', async () => {
    const root = join(work, 'cli-state');
    const ref = `${reg.host}/tls/img:v1`;
    const bad = await kiln([
      '--root',
      root,
      'pull',
      '--no-unpack',
      '-q',
      '--certs-dir',
      join(work, 'empty.d'),
      ref,
    ]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /TLS error.*not signed by a trusted CA/);
    const good = await kiln(['--root', root, 'pull', '--no-unpack', '-q', '--certs-dir', certsd, ref]);
    assert.equal(good.status, 0, good.stderr);
    assert.equal(good.stdout.trim(), img.manifest.digest);
    // the default search list starts with <root>/certs.d
    const root2 = join(work, 'cli-state-2');
    await certsFolder(join(root2, 'certs.d'), mtls.host, {
      'ca.crt': pki.caCert,
      'client.cert': pki.clientCert,
      'client.key': pki.clientKey,
    });
    const dflt = await kiln(['--root', root2, 'pull', '--no-unpack', '-q', `${mtls.host}/tls/img:v1`]);
    assert.equal(dflt.status, 0, dflt.stderr);
    assert.equal(dflt.stdout.trim(), img.manifest.digest);
  });
});

void describe('redirects to storage and keep-alive connections (plain HTTP)', () => {
  let work: string;
  let reg: Registry;
  let img: LayoutImage;
  let front: http.Server;
  let storage: http.Server;
  let frontHost: string;
  const frontSeen: { method: string; url: string; auth?: string; socket: number }[] = [];
  const storageSeen: { url: string; auth?: string; range?: string }[] = [];
  let cutNext = false;
  const AUTH = `Basic ${Buffer.from('kiln:secret').toString('base64')}`;

  before(async () => {
    work = await tempDir('kiln-registry-redirect-');
    reg = await startRegistry(join(work, 'reg'));
    img = await smallImage(work);
    await skopeo([
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${img.layout}:v1`,
      `docker://${reg.host}/redir/img:v1`,
    ]);
    // "Storage": serves blobs by proxying to the registry; may cut the first response midway.
    storage = http.createServer((req, res) => {
      storageSeen.push({ url: req.url!, auth: req.headers.authorization, range: req.headers.range });
      const digest = new URL(req.url!, 'http://x').pathname.split('/').pop()!;
      const up = http.get(
        `http://${reg.host}/v2/redir/img/blobs/${digest}`,
        { headers: req.headers.range ? { range: req.headers.range } : {} },
        (u) => {
          res.writeHead(u.statusCode!, u.headers);
          if (!cutNext) {
            u.pipe(res);
            return;
          }
          cutNext = false;
          let sent = 0;
          u.on('data', (c: Buffer) => {
            if (sent >= 100_000) return;
            const part = c.subarray(0, 100_000 - sent);
            sent += part.byteLength;
            res.write(part, () => {
              if (sent >= 100_000) res.socket?.destroy();
            });
          });
        },
      );
      up.on('error', () => res.destroy());
    });
    await new Promise<void>((r) => storage.listen(0, '127.0.0.1', r));
    const storageHost = `127.0.0.1:${(storage.address() as AddressInfo).port}`;
    // The registry's front: Basic auth required; blob GETs redirected to storage.
    let sockets = 0;
    const ids = new WeakMap<object, number>();
    front = http.createServer((req, res) => {
      let id = ids.get(req.socket);
      if (id === undefined) {
        id = ++sockets;
        ids.set(req.socket, id);
      }
      frontSeen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, socket: id });
      if (req.headers.authorization !== AUTH) {
        req.resume();
        // with a Content-Length, as docker-registry sends (HEAD included)
        const body = '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}';
        res.writeHead(401, {
          'www-authenticate': 'Basic realm="kiln-test"',
          'content-type': 'application/json',
          'content-length': String(body.length),
        });
        res.end(req.method === 'HEAD' ? undefined : body);
        return;
      }
      const blob = /^\/v2\/redir\/img\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url!);
      if (req.method === 'GET' && blob) {
        req.resume();
        res.writeHead(307, { location: `http://${storageHost}/bucket/${blob[1]}?sig=abc` });
        res.end();
        return;
      }
      const up = http.request(
        `http://${reg.host}${req.url}`,
        { method: req.method, headers: { ...req.headers, host: reg.host } },
        (u) => {
          res.writeHead(u.statusCode!, u.headers);
          u.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    frontHost = `127.0.0.1:${(front.address() as AddressInfo).port}`;
  });

  after(async () => {
    for (const s of [front, storage]) {
      if (!s) continue;
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
    await reg?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  void test('the registry Authorization is not sent to the storage origin; a cut download resumes there', async () => {
    const r = new Resolver({
      ...fast,
      authorizer: new Authorizer({ credentials: async () => ({ username: 'kiln', password: 'secret' }) }),
    });
    const ref = `${frontHost}/redir/img:v1`;
    const { descriptor } = await r.resolve(ref);
    assert.equal(descriptor.digest, img.manifest.digest);
    const f = r.fetcher(ref);
    const layer = img.layers[0]!;
    cutNext = true;
    const parts: Buffer[] = [];
    for await (const c of f.fetch(layer)) parts.push(Buffer.from(c));
    assert.equal(Buffer.concat(parts).byteLength, layer.size);
    const blobGets = frontSeen.filter((s) => s.url.endsWith(layer.digest));
    assert.ok(blobGets.length >= 2, JSON.stringify(frontSeen));
    assert.ok(blobGets.every((s) => s.auth === AUTH || s.auth === undefined));
    assert.ok(blobGets.some((s) => s.auth === AUTH));
    const atStorage = storageSeen.filter((s) => s.url.includes(layer.digest));
    assert.equal(atStorage.length, 2, JSON.stringify(storageSeen));
    assert.ok(
      atStorage.every((s) => s.auth === undefined),
      'no Authorization at the storage origin',
    );
    assert.equal(atStorage[0]!.range, undefined);
    assert.match(atStorage[1]!.range ?? '', /^bytes=[1-9][0-9]*-$/);
    // the whole pull goes the same way (config and layer redirected)
    const before = storageSeen.length;
    const core = await openCore({ root: join(work, 'state'), namespace: 'r' });
    try {
      const p = await pull(core, ref, { resolver: r, unpack: false });
      assert.equal(p.target.digest, img.manifest.digest);
    } finally {
      await core.close();
    }
    assert.equal(storageSeen.length - before, 2);
  });

  void test('sequential requests (and the retry after a 401) reuse one keep-alive connection', async () => {
    const r = new Resolver({
      ...fast,
      authorizer: new Authorizer({ credentials: async () => ({ username: 'kiln', password: 'secret' }) }),
    });
    const ref = `${frontHost}/redir/img:v1`;
    const start = frontSeen.length;
    for (let i = 0; i < 4; i++) await r.resolve(ref);
    const f = r.fetcher(ref);
    await f.fetchBytes(img.manifest);
    const mine = frontSeen.slice(start);
    assert.ok(mine.length >= 5, JSON.stringify(mine));
    assert.equal(new Set(mine.map((s) => s.socket)).size, 1, JSON.stringify(mine));
  });
});
