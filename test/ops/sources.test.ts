/**
 * Sources other than local (image through the image store adapter, git
 * through a real `git daemon`, http through a loopback server) and exec
 * mounts (read-only bind with selector, writable bind output, tmpfs, ssh
 * socket, env/cwd/user, extra hosts).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { importImages } from '../../src/core/images/index.ts';
import { git, http as httpSource, image, marshal, mkfile, scratch } from '../../src/llb/index.ts';
import { StoreImageResolver } from '../../src/ops/images.ts';
import { Worker } from '../../src/worker/worker.ts';
import { busyboxRootfs, freePort, makeLayout, tarDir } from '../core/fixtures/images.ts';
import { type Fixture, makeFixture } from './fixture.ts';

const execFileAsync = promisify(execFile);
let fx: Fixture;
let work: string;
before(async () => {
  fx = await makeFixture();
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-src-'));
});
after(async () => {
  await fx?.close();
  if (work) await fs.rm(work, { recursive: true, force: true });
});

test('image source through the image store: unpacked chain snapshot used as the root', async () => {
  const rootfs = await busyboxRootfs(path.join(work, 'rootfs'), { 'marker.txt': 'from-the-image\n' });
  const img = await makeLayout(
    path.join(work, 'layout'),
    'v1',
    [await tarDir(rootfs, path.join(work, 'l1.tar'))],
    {
      arch: os.arch() === 'arm64' ? 'arm64' : 'amd64',
    },
  );
  await importImages(fx.core, img.layout, { name: 'docker.io/library/kilntest:v1' });
  const w = new Worker({
    core: fx.core,
    runtime: fx.runtime,
    images: new StoreImageResolver(fx.core, { mode: 'local' }),
  });
  try {
    const r = await w.solveDefinition(
      marshal(image('kilntest:v1').run({ shell: 'cat /marker.txt > /copied' }).root()),
    );
    assert.equal(await fx.read(r, (d) => fs.readFile(`${d}/copied`, 'utf8')), 'from-the-image\n');
    const src = await w.solveDefinition(marshal(image('kilntest:v1')));
    assert.match(src.id, /^sha256:[0-9a-f]{64}$/, 'the image result is its top chain snapshot');
    await Promise.all([r.release(), src.release()]);
    await assert.rejects(w.solveDefinition(marshal(image('nosuchimage:v1'))), /not in the local image store/);
  } finally {
    w.close();
  }
});

test('git source: ref resolved to a commit, subdir, keepGitDir', async () => {
  const repo = path.join(work, 'repos', 'r.git');
  await fs.mkdir(path.join(repo, 'sub'), { recursive: true });
  const g = (args: string[]): Promise<{ stdout: string }> =>
    execFileAsync('git', ['-c', 'user.email=t@e', '-c', 'user.name=t', ...args], { cwd: repo });
  await g(['init', '-q', '-b', 'main']);
  await fs.writeFile(path.join(repo, 'top.txt'), 'v1\n');
  await fs.writeFile(path.join(repo, 'sub', 'in-sub.txt'), 'sub\n');
  await g(['add', '.']);
  await g(['commit', '-q', '-m', 'one']);
  await g(['tag', 'v1']);
  const port = await freePort();
  const daemon: ChildProcess = spawn(
    'git',
    [
      'daemon',
      '--export-all',
      `--base-path=${path.join(work, 'repos')}`,
      `--port=${port}`,
      '--listen=127.0.0.1',
      '--reuseaddr',
    ],
    { stdio: 'ignore' },
  );
  try {
    for (let i = 0; i < 100; i++) {
      const ok = await new Promise<boolean>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      });
      if (ok) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const url = `git://127.0.0.1:${port}/r.git`;
    const w = fx.worker();
    const whole = await w.solveDefinition(marshal(git(url, 'main')));
    assert.deepEqual(await fx.read(whole, (d) => fs.readdir(d)).then((x) => x.sort()), ['sub', 'top.txt']);
    const sub = await w.solveDefinition(marshal(git(url, 'v1', { subdir: 'sub' })));
    assert.deepEqual(await fx.read(sub, (d) => fs.readdir(d)), ['in-sub.txt']);
    const kept = await w.solveDefinition(marshal(git(url, 'main', { keepGitDir: true })));
    assert.ok((await fx.read(kept, (d) => fs.readdir(d))).includes('.git'));
    // A new commit on main changes the result; the tag keeps its tree.
    await fs.writeFile(path.join(repo, 'top.txt'), 'v2\n');
    await g(['commit', '-q', '-am', 'two']);
    const whole2 = await w.solveDefinition(marshal(git(url, 'main')));
    assert.notEqual(whole2.id, whole.id);
    assert.equal(await fx.read(whole2, (d) => fs.readFile(`${d}/top.txt`, 'utf8')), 'v2\n');
    await Promise.all([whole, sub, kept, whole2].map((r) => r.release()));
  } finally {
    daemon.kill();
  }
});

test('http source: checksum, filename and mode; a wrong checksum fails', async () => {
  const body = 'downloaded content\n';
  const srv = http.createServer((_req, res) => res.end(body));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  try {
    const w = fx.worker();
    const sum = `sha256:${createHash('sha256').update(body).digest('hex')}`;
    const r = await w.solveDefinition(
      marshal(
        httpSource(`http://127.0.0.1:${port}/dir/file.bin`, {
          checksum: sum,
          filename: 'named.txt',
          chmod: 0o755,
        }),
      ),
    );
    const [text, st] = await fx.read(
      r,
      async (d) => [await fs.readFile(`${d}/named.txt`, 'utf8'), await fs.stat(`${d}/named.txt`)] as const,
    );
    assert.equal(text, body);
    assert.equal(st.mode & 0o777, 0o755);
    const plain = await w.solveDefinition(marshal(httpSource(`http://127.0.0.1:${port}/dir/file.bin`)));
    assert.deepEqual(await fx.read(plain, (d) => fs.readdir(d)), ['file.bin']);
    // Without chmod the file is 0600, as BuildKit's http source makes it.
    assert.equal((await fx.read(plain, (d) => fs.stat(`${d}/file.bin`))).mode & 0o777, 0o600);
    await assert.rejects(
      w.solveDefinition(
        marshal(httpSource(`http://127.0.0.1:${port}/other`, { checksum: `sha256:${'0'.repeat(64)}` })),
      ),
      /digest is "sha256:[0-9a-f]+", expected "sha256:0+"/,
    );
    await Promise.all([r.release(), plain.release()]);
  } finally {
    srv.close();
  }
});

test('exec mounts: read-only bind with selector, writable output, tmpfs, ssh socket, env/cwd/user, extra hosts', async () => {
  const sock = path.join(work, 'agent.sock');
  const agent = net.createServer((c) => c.end());
  await new Promise<void>((r) => agent.listen(sock, r));
  try {
    const w = fx.worker({ ssh: sock });
    const data = scratch().file(
      mkfile('/dir', 0o755, '').rm('/dir').mkdir('/dir', 0o755).mkfile('/dir/value', 0o644, 'bound'),
    );
    const st = image('busybox')
      .addEnv('GREETING', 'hello')
      .dir('/work')
      .addExtraHost('db.internal', '10.1.2.3')
      .run({
        shell: [
          'cat /data/value > /out/from-bind',
          'echo "$GREETING $(pwd) $(id -u)" > /out/meta',
          'grep db.internal /etc/hosts > /out/hosts',
          'touch /data/x 2> /out/ro-error || true',
          'echo t > /scratch/t && stat -f -c %T /scratch > /out/tmpfs',
          '(test -S /run/ssh.sock && echo socket || echo no-socket) > /out/ssh',
          'ip -o link 2>/dev/null | wc -l > /out/links',
        ].join('; '),
        mounts: [
          { target: '/data', source: data, selector: '/dir', readonly: true },
          { target: '/out' },
          { type: 'tmpfs', target: '/scratch', size: 1 << 20 },
          { type: 'ssh', target: '/run/ssh.sock' },
        ],
        network: 'none',
      });
    const out = await w.solveDefinition(marshal(st.getMount('/out')));
    const read = (f: string): Promise<string> => fx.read(out, (d) => fs.readFile(path.join(d, f), 'utf8'));
    assert.equal(await read('from-bind'), 'bound');
    assert.equal(await read('meta'), 'hello /work 0\n');
    assert.match(await read('hosts'), /10\.1\.2\.3\s+db\.internal/);
    assert.match(await read('ro-error'), /Read-only file system/);
    assert.equal(await read('tmpfs'), 'tmpfs\n');
    // busybox has no unix-socket client: the socket's presence is what is checked.
    assert.equal(await read('ssh'), 'socket\n');
    assert.equal((await read('links')).trim(), '1', 'network none: only lo');
    const root = await w.solveDefinition(marshal(st.root()));
    const entries = await fx.read(root, (d) => fs.readdir(d));
    assert.ok(
      !entries.includes('scratch') && !entries.includes('out') && !entries.includes('data'),
      entries.join(' '),
    );
    const asNobody = await w.solveDefinition(
      marshal(image('busybox').user('nobody').run({ shell: 'id -u > /tmp/uid; id -g >> /tmp/uid' }).root()),
    );
    assert.equal(await fx.read(asNobody, (d) => fs.readFile(`${d}/tmp/uid`, 'utf8')), '65534\n65534\n');
    await Promise.all([out.release(), root.release(), asNobody.release()]);
  } finally {
    agent.close();
  }
});
