/**
 * `kiln pull`, `kiln push`, `kiln images` and `kiln image import|export` as
 * a user runs them: the real binary, a real state directory and a real
 * docker-registry on loopback; skopeo and oci-image-tool as peers.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { sha256 } from '../../src/core/digest.ts';
import {
  busyboxRootfs,
  execFileP,
  type LayoutImage,
  makeLayout,
  type Registry,
  skopeo,
  startRegistry,
  tarDir,
  tempDir,
} from '../core/fixtures/images.ts';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const bin = join(repo, 'bin/kiln');

let work: string;
let root: string;
let reg: Registry;
let img: LayoutImage;

function kiln(args: string[], rootDir = root): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const p = spawn(bin, ['--root', rootDir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
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

async function ok(args: string[], rootDir = root): Promise<string> {
  const r = await kiln(args, rootDir);
  assert.equal(r.status, 0, `kiln ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

void describe('kiln image commands', () => {
  before(async () => {
    work = await tempDir('kiln-cli-images-');
    root = join(work, 'state');
    reg = await startRegistry(join(work, 'reg'));
    const base = await busyboxRootfs(join(work, 'base'), { 'etc/motd': 'from the cli test\n' });
    img = await makeLayout(join(work, 'layout'), 'v1', [await tarDir(base, join(work, 'l1.tar'))]);
    await skopeo([
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${img.layout}:v1`,
      `docker://${reg.host}/src/bb:v1`,
    ]);
  });

  after(async () => {
    await reg?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  void it('prints help with examples', async () => {
    for (const cmd of [['pull'], ['push'], ['images'], ['image', 'export']]) {
      const out = await ok([...cmd, '--help']);
      assert.match(out, /Usage: kiln/);
      if (cmd.length === 1) assert.match(out, /Examples:/, `${cmd.join(' ')} --help has examples`);
    }
  });

  void it('pulls, lists, inspects, tags, pushes and removes images; gc collects after rm', async () => {
    const ref = `${reg.host}/src/bb:v1`;
    const pulled = await kiln(['pull', ref]);
    assert.equal(pulled.status, 0, pulled.stderr);
    assert.match(pulled.stdout, new RegExp(`Digest: ${img.manifest.digest}`));
    assert.match(pulled.stdout, /Unpacked: sha256:/);
    assert.match(pulled.stderr, /layer\s+done/);
    const ls = await ok(['images', 'ls']);
    assert.match(ls, /NAME\s+TYPE\s+DIGEST/);
    assert.match(ls, new RegExp(`${ref}\\s+manifest\\s+${img.manifest.digest}.*linux/amd64`));
    const info = JSON.parse(await ok(['images', 'inspect', ref])) as {
      config: { rootfs: { diff_ids: string[] } };
    };
    assert.deepEqual(info.config.rootfs.diff_ids, img.diffIDs);
    assert.match(await ok(['images', 'tag', ref, 'bb:stable']), /docker.io\/library\/bb:stable/);
    assert.match(await ok(['images', 'ls', '-q']), /docker.io\/library\/bb:stable/);

    const pushed = await kiln(['push', 'bb:stable', `${reg.host}/cli/copy:v1`]);
    assert.equal(pushed.status, 0, pushed.stderr);
    assert.match(pushed.stdout, /Blobs: 0 uploaded, 2 mounted, 0 already there/);
    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/cli/copy:v1`]);
    assert.equal(sha256(Buffer.from(raw)), img.manifest.digest);

    assert.equal((await ok(['gc'])).match(/removed 0 content records, 0 blobs, 0 snapshots/)?.length, 1);
    await ok(['images', 'rm', 'bb:stable', ref]);
    assert.equal(await ok(['images', 'ls', '-q']), '');
    assert.match(await ok(['gc']), /removed 3 content records, 3 blobs, 1 snapshots/);
  });

  void it('exports and imports docker-archive and OCI layouts; the OCI layout validates', async () => {
    const ref = `${reg.host}/src/bb:v1`;
    await ok(['pull', '-q', '--no-unpack', ref]);
    const dockerTar = join(work, 'bb-docker.tar');
    await ok(['image', 'export', dockerTar, ref, '--format', 'docker']);
    const root2 = join(work, 'state2');
    assert.match(
      await ok(['image', 'import', dockerTar], root2),
      new RegExp(`${ref}\\s+${img.manifest.digest}`),
    );
    // skopeo reads Kiln's docker-archive
    const inspected = JSON.parse(await skopeo(['inspect', `docker-archive:${dockerTar}`])) as {
      Layers: string[];
    };
    assert.equal(inspected.Layers.length, 1);

    const layout = join(work, 'oci-out');
    await ok(['image', 'export', layout, ref]);
    await execFileP('oci-image-tool', ['validate', '--type', 'image', '--ref', 'name=v1', layout]);
    const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as {
      manifests: { digest: string; annotations: Record<string, string> }[];
    };
    assert.equal(index.manifests[0]!.digest, img.manifest.digest);
    assert.equal(index.manifests[0]!.annotations['io.containerd.image.name'], ref);
    assert.match(
      await ok(['image', 'import', '--unpack', '--name', 'again/bb:x', layout], join(work, 'state3')),
      /again\/bb:x/,
    );
  });

  void it('pulls through a mirror named in the registries file', async () => {
    const cfg = join(work, 'registries.json');
    await writeFile(cfg, JSON.stringify({ mirrors: { 'docker.io': [reg.host] } }));
    const r = await ok(
      ['pull', '--no-unpack', '--registry-config', cfg, 'docker.io/src/bb:v1'],
      join(work, 'state-mirror'),
    );
    assert.match(r, /^docker.io\/src\/bb:v1\nDigest: /);
    assert.match(r, new RegExp(img.manifest.digest));
  });

  void it('reports a missing tag and a dead registry clearly, with exit code 1', async () => {
    const missing = await kiln(['pull', `${reg.host}/src/bb:nope`]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /kiln: error: resolve for ".*src\/bb:nope": not found .*HTTP 404/);
    const dead = await startRegistry(join(work, 'reg-dead'));
    await dead.kill();
    const r = await kiln(['pull', `${dead.host}/src/bb:v1`]);
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      /kiln: error: resolve for ".*src\/bb:v1": network error .*gave up after \d+ attempts/,
    );
  });
});
