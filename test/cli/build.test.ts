/**
 * `kiln build` end to end through bin/kiln on a temporary root, with the
 * busybox image made locally (scripts/make-busybox-rootfs.sh → OCI layout →
 * `kiln images import --unpack`): real Dockerfiles solved by the worker
 * (real execs), images run with `kiln run`, exports checked with tar,
 * `/usr/bin/docker load` (when dockerd answers) and the file system.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { removeTree } from '../../src/core/fs/safe.ts';
import { unmountAll } from '../../src/core/mount/mount.ts';
import { makeBusyboxLayout } from '../core/fixtures/busybox-image.ts';
import { arm64Busybox, ensureQemuAarch64, makeTwoPlatformBusybox } from '../ops/exec-emulation-fixture.ts';

const repo = path.resolve(import.meta.dirname, '../..');
const bin = path.join(repo, 'bin/kiln');
let base = '';
let root = '';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function kiln(
  args: string[],
  opts: { input?: Buffer | string; env?: Record<string, string>; root?: string } = {},
): Promise<Run> {
  const env = { ...process.env, NODE_COMPILE_CACHE: path.join(base, 'node-cache'), ...opts.env };
  const child = spawn(bin, ['--root', opts.root ?? root, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env });
  child.stdin.end(opts.input);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
    );
  });
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** Debian's docker-registry (CNCF distribution) on a free loopback port. */
async function startRegistry(dir: string): Promise<{ host: string; stop(): Promise<void> }> {
  const port = await freePort();
  await mkdir(path.join(dir, 'storage'), { recursive: true });
  const config = path.join(dir, 'config.yml');
  await writeFile(
    config,
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${dir}/storage\nhttp:\n  addr: 127.0.0.1:${port}\n`,
  );
  const proc = spawn('/usr/bin/docker-registry', ['serve', config], { stdio: 'ignore' });
  const host = `127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      const res = await fetch(`http://${host}/v2/`);
      await res.body?.cancel();
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (proc.exitCode !== null || i > 200) {
      proc.kill('SIGKILL');
      throw new Error('docker-registry did not start');
    }
    await sleep(50);
  }
  return {
    host,
    stop: async () => {
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

/** Writes files into a fresh context directory. */
async function context(name: string, files: Record<string, string>): Promise<string> {
  const dir = path.join(base, name);
  await rm(dir, { recursive: true, force: true });
  for (const [f, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, f)), { recursive: true });
    await writeFile(path.join(dir, f), text);
  }
  return dir;
}

/** Plain progress: step name → final state (DONE, CACHED, ERROR) per `#N` block. */
function steps(plain: string): Map<string, string> {
  const names = new Map<string, string>();
  const state = new Map<string, string>();
  for (const line of plain.split('\n')) {
    const m = /^#(\d+) (.*)$/.exec(line);
    if (!m) continue;
    const [, n, rest] = m as unknown as [string, string, string];
    if (!names.has(n)) names.set(n, rest);
    else if (rest === 'CACHED') state.set(names.get(n)!, 'CACHED');
    else if (rest.startsWith('DONE ')) state.set(names.get(n)!, 'DONE');
    else if (rest.startsWith('ERROR')) state.set(names.get(n)!, 'ERROR');
  }
  return state;
}

/** The Dockerfile steps (not the CLI's [internal] or export steps). */
function dockerfileSteps(s: Map<string, string>): [string, string][] {
  return [...s].filter(([name]) => /^\[\S+ \d+\/\d+\]/.test(name));
}

const APP = {
  Dockerfile: [
    'FROM busybox AS build',
    'WORKDIR /src',
    'COPY gen.sh .',
    'RUN sh gen.sh > version.txt && echo GEN-RAN',
    'COPY message.txt .',
    'RUN sed "s/world/kiln/" message.txt > greeting.txt && echo SED-RAN',
    '',
    'FROM busybox',
    'ENV WHO=tester',
    'WORKDIR /app',
    'COPY --from=build /src/version.txt /src/greeting.txt ./',
    'CMD ["sh", "-c", "cat version.txt greeting.txt; echo who=$WHO; pwd"]',
    '',
  ].join('\n'),
  'gen.sh': 'echo version-1\n',
  'message.txt': 'hello world\n',
};

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'kiln-build-cli-'));
  root = path.join(base, 'root');
  const { layout } = await makeBusyboxLayout(base);
  const r = await kiln(['images', 'import', layout, '--name', 'busybox:latest', '--unpack']);
  assert.equal(r.code, 0, r.stderr);
});

after(async () => {
  // Never delete through a mount that failed to come off: removeTree refuses then.
  await unmountAll(base);
  await removeTree(base);
});

describe('kiln build', () => {
  test('builds a multi-stage Dockerfile into an image that kiln run runs', async () => {
    const dir = await context('app', APP);
    const r = await kiln(['build', '--progress=plain', '-t', 'app:1', dir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /#\d+ [\d.]+ GEN-RAN/);
    assert.match(r.stderr, /named docker\.io\/library\/app:1/);
    const run = await kiln(['run', '--rm', 'app:1']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'version-1\nhello kiln\nwho=tester\n/app\n');
  });

  test('a second build is fully cached; a one-line change reruns only the steps after it', async () => {
    const dir = await context('app', APP);
    const first = await kiln(['build', '--progress=plain', '-t', 'app:1', dir]);
    assert.equal(first.code, 0, first.stderr);
    const again = await kiln(['build', '--progress=plain', '-t', 'app:1', dir]);
    assert.equal(again.code, 0, again.stderr);
    const cached = dockerfileSteps(steps(again.stderr));
    assert.ok(cached.length >= 7, again.stderr);
    for (const [name, state] of cached) assert.equal(state, 'CACHED', `${name} in\n${again.stderr}`);
    assert.doesNotMatch(again.stderr, /^#\d+ [\d.]+ (GEN|SED)-RAN$/m);

    await writeFile(path.join(dir, 'message.txt'), 'goodbye world\n');
    const changed = await kiln(['build', '--progress=plain', '-t', 'app:2', dir]);
    assert.equal(changed.code, 0, changed.stderr);
    const s = new Map(dockerfileSteps(steps(changed.stderr)));
    assert.equal(s.get('[build 4/6] RUN sh gen.sh > version.txt && echo GEN-RAN'), 'CACHED', changed.stderr);
    assert.equal(s.get('[build 3/6] COPY gen.sh .'), 'CACHED', changed.stderr);
    assert.equal(s.get('[build 5/6] COPY message.txt .'), 'DONE', changed.stderr);
    assert.equal(
      s.get('[build 6/6] RUN sed "s/world/kiln/" message.txt > greeting.txt && echo SED-RAN'),
      'DONE',
    );
    assert.doesNotMatch(changed.stderr, /^#\d+ [\d.]+ GEN-RAN$/m);
    assert.match(changed.stderr, /^#\d+ [\d.]+ SED-RAN$/m);
    const run = await kiln(['run', '--rm', 'app:2']);
    assert.equal(run.stdout, 'version-1\ngoodbye kiln\nwho=tester\n/app\n');
  });

  test('a COPY of the context onto an image that holds its files (linked) gets files of its own', async () => {
    // The first image's COPY layer shares the context's inodes, and so do its chain snapshots
    // (the image store's rootfs); a build FROM it copying the same context must not put one
    // inode into its chain twice (two paths, one file), even on a rebuild.
    const dir = await context('linked-chain', {
      'f.txt': 'one\n',
      'Dockerfile.base': 'FROM busybox\nCOPY f.txt /app/f.txt\n',
      Dockerfile:
        'FROM chain-base:1\nCOPY f.txt /app2/f.txt\n' +
        'RUN test "$(stat -c %i /app/f.txt)" != "$(stat -c %i /app2/f.txt)" && ' +
        'test "$(stat -c %h /app2/f.txt)" -ge 1 && echo DISTINCT\n',
    });
    const b = await kiln(['build', '-f', path.join(dir, 'Dockerfile.base'), '-t', 'chain-base:1', dir]);
    assert.equal(b.code, 0, b.stderr);
    for (const n of [1, 2]) {
      if (n === 2) await writeFile(path.join(dir, 'other.txt'), 'a rebuild with a changed context\n');
      const r = await kiln(['build', '--progress=plain', '--no-cache', '-t', 'chain-top:1', dir]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /DISTINCT/);
    }
  });

  test('RUN has the network by default, as with BuildKit (sandbox runs on the host network for now)', async () => {
    const dir = await context('net-default', {
      Dockerfile: 'FROM busybox\nRUN echo "nets=$(ls /sys/class/net | wc -l)"\n',
    });
    const r = await kiln(['build', '--progress=plain', '--no-cache', dir]);
    assert.equal(r.code, 0, r.stderr);
    const nets = Number(/nets=(\d+)$/m.exec(r.stderr)?.[1]);
    assert.ok(nets > 1, `the default network has more than lo: ${r.stderr}`);
  });

  test('a failing RUN shows the Dockerfile line and the last output lines, and exits 1', async () => {
    const dir = await context('fail', {
      Dockerfile:
        // (stdout and stderr are two pipes: the pause keeps their lines in order)
        'FROM busybox\nENV A=1\nRUN for i in $(seq 1 30); do echo out-$i; done; sleep 0.3; echo broken >&2; exit 3\nCMD ["sh"]\n',
    });
    const r = await kiln(['build', '--progress=plain', dir]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^Dockerfile:3$/m, r.stderr);
    assert.match(r.stderr, /^ 3 \| >>> RUN for i in/m, r.stderr);
    assert.match(r.stderr, /^ 2 \| {5}ENV A=1$/m, r.stderr);
    // The last lines of the command's output, not the first ones.
    const report = r.stderr.slice(r.stderr.lastIndexOf('------\n >'));
    assert.match(report, /^out-30$/m, r.stderr);
    assert.match(report, /^broken$/m, r.stderr);
    assert.doesNotMatch(report, /^out-5$/m, r.stderr);
    assert.match(r.stderr, /exit code 3/, r.stderr);
    assert.doesNotMatch(r.stderr, /kiln: error/); // reported once, by the printer
  });

  test('a tar export to a slow reader on stdout arrives whole before the process exits', async () => {
    // The CLI ends with process.exit() (core/sqlite.ts closeForExit), which drops whatever is
    // still queued for a full pipe: the tar exporter waits for each write, and startCli waits for
    // stdout to drain besides. The tar is ~2 MB, the pipe holds 64 KiB.
    const dir = await context('app', APP);
    const file = path.join(base, 'slow-reader.tar');
    const toFile = await kiln(['build', '--progress=quiet', '-o', `type=tar,dest=${file}`, dir]);
    assert.equal(toFile.code, 0, toFile.stderr);
    const env = { ...process.env, NODE_COMPILE_CACHE: path.join(base, 'node-cache') };
    const child = spawn(bin, ['--root', root, 'build', '--progress=quiet', '-o', 'type=tar,dest=-', dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    child.stdout.pause();
    await sleep(1500); // nothing read: the build finishes with most of the tar queued in the process
    const chunks: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => chunks.push(b));
    child.stdout.resume();
    const code = await new Promise<number | null>((r) => child.on('close', r));
    assert.equal(code, 0);
    const expected = await readFile(file);
    assert.ok(expected.length > 1024 * 1024, `a tar of ${expected.length} bytes`);
    assert.equal(Buffer.concat(chunks).length, expected.length);
    assert.ok(Buffer.concat(chunks).equals(expected), 'the same bytes as the file export');
  });

  test('oci, docker and local outputs, --iidfile and --metadata-file', async () => {
    const dir = await context('app', APP);
    const out = path.join(base, 'out');
    await rm(out, { recursive: true, force: true });
    await mkdir(out);
    const r = await kiln([
      'build',
      '--progress=plain',
      '-t',
      'kiln-build-test:v1',
      '-o',
      `type=oci,dest=${out}/x.tar`,
      '-o',
      `type=docker,dest=${out}/y.tar`,
      '-o',
      `type=local,dest=${out}/dir`,
      '--iidfile',
      `${out}/iid`,
      '--metadata-file',
      `${out}/meta.json`,
      dir,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const meta = JSON.parse(await readFile(`${out}/meta.json`, 'utf8')) as Record<string, unknown>;
    const iid = await readFile(`${out}/iid`, 'utf8');
    assert.match(iid, /^sha256:[0-9a-f]{64}$/);
    assert.equal(meta['containerimage.config.digest'], iid);
    assert.match(String(meta['containerimage.digest']), /^sha256:[0-9a-f]{64}$/);
    assert.equal(meta['image.name'], 'docker.io/library/kiln-build-test:v1');
    // The image record points at the manifest the metadata names.
    const ls = await kiln(['images', 'ls']);
    assert.match(ls.stdout, new RegExp(`kiln-build-test:v1\\s+manifest\\s+${meta['containerimage.digest']}`));

    // OCI layout tar: index.json names the manifest.
    const index = JSON.parse(execFileSync('tar', ['-xOf', `${out}/x.tar`, 'index.json']).toString()) as {
      manifests: { digest: string }[];
    };
    assert.equal(index.manifests[0]?.digest, meta['containerimage.digest']);
    // docker-archive: manifest.json with the tag.
    const dm = JSON.parse(execFileSync('tar', ['-xOf', `${out}/y.tar`, 'manifest.json']).toString()) as {
      RepoTags: string[];
    }[];
    assert.deepEqual(dm[0]?.RepoTags, ['kiln-build-test:v1']);
    // local: the result's tree.
    assert.equal(await readFile(`${out}/dir/app/greeting.txt`, 'utf8'), 'hello kiln\n');
    assert.ok(existsSync(`${out}/dir/bin/busybox`));

    const docker = '/usr/bin/docker';
    if (spawnSync(docker, ['info'], { stdio: 'ignore' }).status !== 0) {
      console.log('# docker daemon not available: docker load check skipped');
      return;
    }
    try {
      execFileSync(docker, ['load', '-i', `${out}/y.tar`], { stdio: 'pipe' });
      const o = execFileSync(docker, ['run', '--rm', 'kiln-build-test:v1']).toString();
      assert.equal(o, 'version-1\nhello kiln\nwho=tester\n/app\n');
    } finally {
      spawnSync(docker, ['rmi', '-f', 'kiln-build-test:v1'], { stdio: 'ignore' });
    }
  });

  test('--progress=rawjson prints one JSON object per line', async () => {
    const dir = await context('app', APP);
    const r = await kiln(['build', '--progress=rawjson', '--no-cache-filter', 'build', dir]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    const objs = lines.map((l) => JSON.parse(l) as { type: string; name?: string; data?: string });
    assert.ok(objs.some((o) => o.type === 'vertex' && o.name?.includes('RUN sh gen.sh')));
    const logs = objs.filter((o) => o.type === 'log').map((o) => Buffer.from(o.data!, 'base64').toString());
    assert.ok(logs.join('').includes('GEN-RAN'), 'the build stage reran (--no-cache-filter build)');
    assert.equal(objs.at(-1)?.type, 'result');
  });

  test("the image's layers are computed as their steps finish; the export takes them as they are", async () => {
    const dir = await context('ahead', {
      Dockerfile: [
        'FROM busybox AS other',
        'RUN echo other > /other.txt',
        'FROM busybox',
        'COPY data.txt /data/',
        'COPY --from=other /other.txt /data/',
        'RUN sleep 0.3 && wc -c /data/data.txt > /data/count.txt',
        'RUN cat /data/count.txt',
        '',
      ].join('\n'),
      'data.txt': 'x'.repeat(200_000),
    });
    const r = await kiln(['build', '--progress=rawjson', '-t', 'ahead:1', dir]);
    assert.equal(r.code, 0, r.stderr);
    const objs = r.stderr
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; id?: string });
    const layers = objs.filter((o) => o.type === 'status' && o.id?.startsWith('layer ')).map((o) => o.id!);
    // The base layer, COPY, COPY --from and the first RUN (the last RUN adds nothing), as they finish.
    assert.equal(layers.length, 5, layers.join('\n'));
    assert.deepEqual(
      layers.map((id) => /\((\w+)\)$/.exec(id)?.[1]).sort(),
      ['label', 'label', 'label', 'label', 'unpacked'],
      'computed ahead of the export, not by it',
    );
    const run = await kiln(['run', '--rm', 'ahead:1', 'cat', '/data/count.txt', '/data/other.txt']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, '200000 /data/data.txt\nother\n');
  });

  test('--target builds only the stages the target needs', async () => {
    const dir = await context('target', {
      Dockerfile: [
        'FROM busybox AS unrelated',
        'RUN echo UNRELATED-RAN && touch /u',
        'FROM busybox AS dep',
        'RUN echo DEP-RAN > /dep.txt',
        'FROM busybox AS wanted',
        'COPY --from=dep /dep.txt /',
        'RUN cat /dep.txt',
        'FROM unrelated',
        'RUN echo FINAL-RAN',
        '',
      ].join('\n'),
    });
    const r = await kiln(['build', '--progress=plain', '--no-cache', '--target', 'wanted', dir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /#\d+ [\d.]+ DEP-RAN/);
    assert.doesNotMatch(r.stderr, /UNRELATED|FINAL-RAN|\[unrelated /);
    assert.doesNotMatch(r.stderr, /\[stage-3 /);
  });

  /** Two --no-cache builds of `dir` with SOURCE_DATE_EPOCH set; returns their manifest digests and OCI tars. */
  async function twoBuilds(dir: string, tag: string): Promise<{ digests: string[]; tars: Buffer[] }> {
    const digests: string[] = [];
    const tars: Buffer[] = [];
    for (const i of [1, 2]) {
      const meta = path.join(base, `${tag}-${i}.json`);
      const tar = path.join(base, `${tag}-${i}.tar`);
      // --no-cache: the RUN steps run again and make files with new mtimes.
      const r = await kiln(
        [
          'build',
          '--progress=plain',
          '--no-cache',
          '-o',
          `type=oci,dest=${tar}`,
          '--metadata-file',
          meta,
          dir,
        ],
        { env: { SOURCE_DATE_EPOCH: '1700000000' } },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /^#\d+ [\d.]+ RAN$/m);
      const m = JSON.parse(await readFile(meta, 'utf8')) as Record<string, unknown>;
      digests.push(String(m['containerimage.digest']));
      tars.push(await readFile(tar));
    }
    assert.match(digests[0]!, /^sha256:[0-9a-f]{64}$/);
    return { digests, tars };
  }

  test('the same SOURCE_DATE_EPOCH gives the same image digest (built layers only)', async () => {
    const dir = await context('sde-scratch', {
      Dockerfile: [
        'FROM busybox AS gen',
        'RUN mkdir /out && echo hi > /out/hi && touch /out/now && echo RAN',
        'FROM scratch',
        'COPY --from=gen /out/ /',
        'CMD ["/hi"]',
        '',
      ].join('\n'),
    });
    const { digests, tars } = await twoBuilds(dir, 'sde-scratch');
    assert.equal(digests[0], digests[1]);
    assert.ok(tars[0]!.equals(tars[1]!), 'the OCI tars are byte-identical');
  });

  test('the same SOURCE_DATE_EPOCH gives the same image digest (on a base image without history)', async () => {
    // The locally made busybox image has a layer but no history entry: the exporter
    // describes it by content, first, so the config does not depend on the build.
    const dir = await context('sde-busybox', {
      Dockerfile: 'FROM busybox\nRUN echo data > /data && echo RAN\nCMD ["cat", "/data"]\n',
    });
    const { digests } = await twoBuilds(dir, 'sde-busybox');
    assert.equal(digests[0], digests[1]);
  });

  test('build args, labels, secrets, ssh agent socket and --network host', async () => {
    const dir = await context('session', {
      Dockerfile: [
        'FROM busybox',
        'ARG FLAVOR=plain',
        'RUN --mount=type=secret,id=tok echo "secret=$(cat /run/secrets/tok) flavor=$FLAVOR"',
        'RUN --mount=type=secret,id=envtok echo "envsecret=$(cat /run/secrets/envtok)"',
        'RUN --mount=type=ssh test -S "$SSH_AUTH_SOCK" && echo ssh-socket-ok',
        'RUN echo "nets=$(ls /sys/class/net | wc -l)"',
        '',
      ].join('\n'),
      'tok.txt': 's3cr3t',
    });
    // A listening unix socket stands in for an ssh agent (the build only needs it mounted).
    const sock = path.join(base, 'agent.sock');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    try {
      const r = await kiln(
        [
          'build',
          '--progress=plain',
          '--no-cache',
          '--build-arg',
          'FLAVOR=spicy',
          '--secret',
          `id=tok,src=${dir}/tok.txt`,
          '--secret',
          'id=envtok,env=KILN_TEST_TOKEN',
          '--ssh',
          `default=${sock}`,
          '--network',
          'host',
          '--label',
          'org.example.k=v',
          '-t',
          'session:1',
          dir,
        ],
        { env: { KILN_TEST_TOKEN: 'from-env' } },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /secret=s3cr3t flavor=spicy$/m);
      assert.match(r.stderr, /envsecret=from-env$/m);
      assert.match(r.stderr, /ssh-socket-ok$/m);
      // The host has more than the loopback interface; --network none has only lo.
      const nets = Number(/nets=(\d+)$/m.exec(r.stderr)?.[1]);
      assert.ok(nets > 1, r.stderr);
      const inspect = await kiln(['images', 'inspect', 'session:1']);
      assert.match(inspect.stdout, /"org\.example\.k": "v"/);
      const none = await kiln([
        'build',
        '--progress=plain',
        '--no-cache-filter',
        'stage-0',
        '--network',
        'none',
        '--secret',
        `id=tok,src=${dir}/tok.txt`,
        '--secret',
        `id=envtok,src=${dir}/tok.txt`,
        '--ssh',
        `default=${sock}`,
        dir,
      ]);
      assert.equal(none.code, 0, none.stderr);
      assert.match(none.stderr, /nets=1$/m);
    } finally {
      server.close();
    }
  });

  test('secret env: visible in RUN, absent from the image, its config and history; several --ssh ids', async (t) => {
    const value = 'kiln-secret-env-4f2a9c';
    const dir = await context('secret-env', {
      Dockerfile: [
        'FROM busybox',
        'ARG V=1',
        'RUN --mount=type=secret,id=tok,env=TOKEN \\',
        '    --mount=type=ssh,id=a,target=/run/a.sock \\',
        '    --mount=type=ssh,id=b,target=/run/b.sock,uid=1000,gid=1000,mode=0660,required=true \\',
        // biome-ignore lint/suspicious/noTemplateCurlyInString: shell expansion in a Dockerfile
        '    echo "token-len=${#TOKEN} token-head=$(echo $TOKEN | cut -c1-5)" && test -S /run/a.sock && \\',
        // biome-ignore lint/suspicious/noTemplateCurlyInString: shell expansion in a Dockerfile
        '    echo "b=$(stat -c "%u %g %a" /run/b.sock)" && echo "${TOKEN:+seen}" > /seen',
        // biome-ignore lint/suspicious/noTemplateCurlyInString: shell expansion in a Dockerfile
        'RUN echo "later=${TOKEN:-unset}"',
        'CMD ["cat", "/seen"]',
        '',
      ].join('\n'),
    });
    // Two real ssh agents, one per id.
    const agents = ['a', 'b'].map((id) => {
      const sock = path.join(base, `agent-${id}.sock`);
      return { sock, proc: spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' }) };
    });
    t.after(() => {
      for (const a of agents) a.proc.kill('SIGTERM');
    });
    for (const a of agents) {
      for (let i = 0; i < 200 && !existsSync(a.sock); i++) await sleep(10);
    }
    const r = await kiln(
      [
        'build',
        '--progress=plain',
        '--secret',
        'id=tok,env=KILN_SECRET_ENV',
        '--ssh',
        `a=${agents[0]!.sock}`,
        '--ssh',
        `b=${agents[1]!.sock}`,
        '-t',
        'secretenv:1',
        '-o',
        `type=docker,dest=${base}/secretenv.tar,name=secretenv:1`,
        dir,
      ],
      { env: { KILN_SECRET_ENV: value } },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`token-len=${value.length} token-head=${value.slice(0, 5)}$`, 'm'));
    assert.match(r.stderr, /^#\d+ [\d.]+ b=1000 1000 660$/m);
    assert.match(r.stderr, /later=unset$/m);
    const run = await kiln(['run', '--rm', 'secretenv:1']);
    assert.equal(run.stdout, 'seen\n');
    const inspect = await kiln(['images', 'inspect', 'secretenv:1']);
    assert.equal(inspect.code, 0, inspect.stderr);
    assert.doesNotMatch(inspect.stdout, new RegExp(value));
    assert.doesNotMatch(inspect.stdout, /TOKEN=/);
    // The whole exported image (layers, config with its history, manifest): no trace of the value.
    const tar = await readFile(path.join(base, 'secretenv.tar'));
    assert.ok(!tar.includes(value), 'the docker archive does not contain the secret');
    const config = execFileSync('tar', [
      '-xOf',
      path.join(base, 'secretenv.tar'),
      'manifest.json',
    ]).toString();
    const configName = (JSON.parse(config) as { Config: string }[])[0]!.Config;
    const cfg = JSON.parse(
      execFileSync('tar', ['-xOf', path.join(base, 'secretenv.tar'), configName]).toString(),
    ) as { history: { created_by: string }[]; config: { Env?: string[] } };
    assert.ok(cfg.history.some((h) => /^RUN \|1 V=1 \/bin\/sh -c echo "token-len=/.test(h.created_by)));
    assert.ok(!(cfg.config.Env ?? []).some((e) => e.startsWith('TOKEN')));

    // A required secret that the session lacks: the id and the Dockerfile line.
    const missing = await context('secret-env-missing', {
      Dockerfile: 'FROM busybox\n\nRUN --mount=type=secret,id=api-key,env=API_KEY,required=true true\n',
    });
    const m = await kiln(['build', '--progress=plain', missing]);
    assert.equal(m.code, 1, m.stderr);
    assert.match(m.stderr, /secret "api-key" not found/);
    assert.match(m.stderr, /^Dockerfile:3$/m);
    assert.match(m.stderr, /^ 3 \| >>> RUN --mount=type=secret,id=api-key/m);
  });

  test('--ssh refuses key files, a repeated id and a missing socket, naming them', async () => {
    const dir = await context('app', APP);
    const key = path.join(base, 'id_test');
    await writeFile(key, 'not really a key\n');
    const k = await kiln(['build', '--ssh', `default=${key}`, dir]);
    assert.equal(k.code, 1);
    assert.match(k.stderr, /ssh key files are not supported/);
    const twice = await kiln(['build', '--ssh', `a=${key}`, '--ssh', `a=${key}`, dir]);
    assert.match(twice.stderr, /id "a" is given twice/);
    const gone = await kiln(['build', '--ssh', `a=${base}/nope.sock`, dir]);
    assert.match(gone.stderr, /nope\.sock" not found/);
  });

  test('--platform linux/arm64 runs RUN under qemu emulation; platform args and config are arm64', async (t) => {
    const why = await ensureQemuAarch64();
    if (why) return t.skip(why);
    const bb = await arm64Busybox();
    if ('skip' in bb) return t.skip(bb.skip);
    const layout = await makeTwoPlatformBusybox(await mkdtemp(path.join(base, 'multi-')), bb.path);
    const imp = await kiln(['images', 'import', layout, '--name', 'multi/busybox:latest']);
    assert.equal(imp.code, 0, imp.stderr);
    const dir = await context('cross', {
      Dockerfile: [
        'FROM --platform=$BUILDPLATFORM multi/busybox AS tools',
        'ARG TARGETARCH',
        'RUN echo "tools uname=$(uname -m) target=$TARGETARCH" > /tools.txt',
        'FROM multi/busybox',
        'ARG TARGETARCH',
        'ARG BUILDARCH',
        'ARG TARGETPLATFORM',
        'ARG TARGETVARIANT',
        'COPY --from=tools /tools.txt /',
        'RUN echo "uname=$(uname -m) target=$TARGETARCH build=$BUILDARCH tp=$TARGETPLATFORM tv=$TARGETVARIANT" | tee /arch.txt',
        '',
      ].join('\n'),
    });
    const out = path.join(base, 'cross-out');
    const r = await kiln([
      'build',
      '--progress=plain',
      '--platform',
      'linux/arm64',
      '-t',
      'cross:arm64',
      '-o',
      `type=local,dest=${out}`,
      dir,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      await readFile(path.join(out, 'arch.txt'), 'utf8'),
      'uname=aarch64 target=arm64 build=amd64 tp=linux/arm64 tv=\n',
    );
    assert.equal(await readFile(path.join(out, 'tools.txt'), 'utf8'), 'tools uname=x86_64 target=arm64\n');
    const inspect = await kiln(['images', 'inspect', 'cross:arm64']);
    assert.equal(inspect.code, 0, inspect.stderr);
    assert.match(inspect.stdout, /"architecture": "arm64"/);
    assert.doesNotMatch(inspect.stdout, /"architecture": "amd64"/);

    // FROM --platform of a single stage, without --platform: that stage runs emulated,
    // while TARGETARCH stays the build's (the host's) platform, as in BuildKit.
    const one = await context('cross-one', {
      Dockerfile:
        'FROM --platform=linux/arm64 multi/busybox\nARG TARGETARCH\nRUN echo "one uname=$(uname -m) target=$TARGETARCH"\n',
    });
    const o = await kiln(['build', '--progress=plain', one]);
    assert.equal(o.code, 0, o.stderr);
    assert.match(o.stderr, /one uname=aarch64 target=amd64$/m);
  });

  test('contexts from stdin (tar and lone Dockerfile) and from a git repository', async () => {
    const dir = await context('stdin', {
      Dockerfile: 'FROM busybox\nCOPY data.txt /\nCMD ["cat", "/data.txt"]\n',
      'data.txt': 'from-tar\n',
    });
    const tar = execFileSync('tar', ['-C', dir, '-c', '.']);
    const t = await kiln(['build', '--progress=plain', '-t', 'stdin:tar', '-'], { input: tar });
    assert.equal(t.code, 0, t.stderr);
    assert.equal((await kiln(['run', '--rm', 'stdin:tar'])).stdout, 'from-tar\n');

    const lone = await kiln(['build', '--progress=plain', '-t', 'stdin:df', '-'], {
      input: 'FROM busybox\nRUN echo lone > /lone.txt\nCMD ["cat", "/lone.txt"]\n',
    });
    assert.equal(lone.code, 0, lone.stderr);
    assert.equal((await kiln(['run', '--rm', 'stdin:df'])).stdout, 'lone\n');

    const git = path.join(base, 'repo.git');
    const work = await context('gitwork', {
      'sub/Dockerfile': 'FROM busybox\nCOPY file.txt /\nCMD ["cat", "/file.txt"]\n',
      'sub/file.txt': 'from-git\n',
    });
    const g = (...args: string[]): void => {
      execFileSync('git', ['-C', work, ...args], { stdio: 'pipe' });
    };
    g('init', '-q', '-b', 'main');
    g('add', '.');
    g('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'x');
    execFileSync('git', ['clone', '-q', '--bare', work, git]);
    const r = await kiln(['build', '--progress=plain', '-t', 'git:1', `file://${git}#main:sub`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await kiln(['run', '--rm', 'git:1'])).stdout, 'from-git\n');
  });

  test('pushes to a registry, and another root builds FROM that image by pulling it', async (t) => {
    const reg = await startRegistry(path.join(base, 'registry'));
    t.after(() => reg.stop());
    const dir = await context('app', APP);
    const ref = `${reg.host}/kiln-test/app:1`;
    const pushed = await kiln(['build', '--progress=plain', '-o', `type=registry,name=${ref}`, dir]);
    assert.equal(pushed.code, 0, pushed.stderr);
    assert.match(pushed.stderr, new RegExp(`pushed ${ref.replace(/[.]/g, '\\.')}`));

    const other = path.join(base, 'root2');
    const child = await context('child', {
      Dockerfile: `FROM ${ref}\nRUN echo child-of-$(cat /app/greeting.txt) > /child.txt\nCMD ["cat", "/child.txt"]\n`,
    });
    const r = await kiln(['build', '--progress=plain', '-t', 'child:1', child], { root: other });
    assert.equal(r.code, 0, r.stderr);
    // The pull shows in the metadata step, one line per blob.
    assert.match(r.stderr, /^#\d+ layer sha256:[0-9a-f]{64} (done|unpacked) /m);
    // The base image came from the registry: the new root has it now, and no busybox.
    const ls = await kiln(['images', 'ls', '-q'], { root: other });
    assert.ok(ls.stdout.includes(ref), ls.stdout);
    assert.ok(!ls.stdout.includes('busybox'), ls.stdout);
    const run = await kiln(['run', '--rm', 'child:1'], { root: other });
    assert.equal(run.stdout, 'child-of-hello kiln\n');
  });

  test('examples/hello (the README main command) builds and runs', async () => {
    const r = await kiln([
      'build',
      '--progress=plain',
      '-t',
      'hello:latest',
      path.join(repo, 'examples/hello'),
    ]);
    assert.equal(r.code, 0, r.stderr);
    // build and docs are independent stages; test depends on build.
    assert.match(r.stderr, /\[build 4\/4\] RUN sh \.\/build\.sh/);
    assert.match(r.stderr, /\[docs 4\/4\] RUN/);
    const run = await kiln(['run', '--rm', 'hello:latest']);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^Hello from a Kiln-built image! \(hello 1\.0, style: friendly\)$/m);
    assert.match(run.stdout, /^docs: guide\.txt guide\.upper $/m);
    assert.match(run.stdout, /^tests passed$/m);
  });

  test('examples/hello: docker build (BuildKit) of the same Dockerfile and base gives the same program and config', async (t) => {
    const docker = '/usr/bin/docker';
    if (spawnSync(docker, ['info'], { stdio: 'ignore' }).status !== 0) {
      t.skip('docker daemon not available');
      return;
    }
    const tag = `kiln-build-test-base-${process.pid}`;
    const dir = path.join(base, 'docker-hello');
    execFileSync('cp', ['-a', path.join(repo, 'examples/hello'), dir]);
    const df = path.join(dir, 'Dockerfile');
    await writeFile(df, (await readFile(df, 'utf8')).replace(/^FROM busybox\b/gm, `FROM ${tag}`));
    // The same busybox layer as Kiln's base, as a docker image.
    execFileSync(docker, [
      'import',
      '-c',
      'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      '-c',
      'CMD ["sh"]',
      path.join(base, 'layer.tar'),
      `${tag}:latest`,
    ]);
    try {
      execFileSync(docker, ['build', '-q', '-t', `${tag}-hello`, dir], {
        env: { ...process.env, DOCKER_BUILDKIT: '1' },
      });
      const fromDocker = execFileSync(docker, ['run', '--rm', `${tag}-hello`]).toString();
      const kilnBuild = await kiln([
        'build',
        '--progress=plain',
        '-t',
        'hello:cmp',
        path.join(repo, 'examples/hello'),
      ]);
      assert.equal(kilnBuild.code, 0, kilnBuild.stderr);
      const fromKiln = await kiln(['run', '--rm', 'hello:cmp']);
      assert.equal(fromKiln.stdout, fromDocker);
      const dcfg = JSON.parse(execFileSync(docker, ['inspect', `${tag}-hello`]).toString())[0]
        .Config as Record<string, unknown>;
      const kcfg = (
        JSON.parse((await kiln(['images', 'inspect', 'hello:cmp'])).stdout) as {
          config: { config: Record<string, unknown> };
        }
      ).config.config;
      for (const k of ['Env', 'Cmd', 'WorkingDir', 'Labels']) assert.deepEqual(kcfg[k], dcfg[k], k);
    } finally {
      spawnSync(docker, ['rmi', '-f', `${tag}-hello`, `${tag}:latest`], { stdio: 'ignore' });
    }
  });

  test('--progress=auto draws the live view on a terminal and plain lines elsewhere', async () => {
    const dir = await context('app', APP);
    // util-linux script gives the command a pseudo-terminal.
    const cmd = [bin, '--root', root, 'build', dir].map((a) => `'${a}'`).join(' ');
    const tty = spawnSync('script', ['-qec', cmd, '/dev/null'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TERM: 'xterm', NODE_COMPILE_CACHE: path.join(base, 'node-cache') },
    });
    assert.equal(tty.status, 0, tty.stdout.toString());
    const shown = tty.stdout.toString();
    assert.match(shown, /\[\+\] Building [\d.]+s \(\d+\/\d+\) FINISHED/);
    assert.match(shown, / => (CACHED )?\[build 4\/6\] RUN sh gen\.sh.* [\d.]+s\r?$/m);
    assert.ok(shown.includes('\x1b[J'), 'redrawn in place');
    const piped = await kiln(['build', dir]);
    assert.equal(piped.code, 0, piped.stderr);
    assert.match(piped.stderr, /^#\d+ \[build 4\/6\] RUN sh gen\.sh.*\n#\d+ CACHED$/m);
    assert.ok(!piped.stderr.includes('\x1b['), 'no escapes when not a terminal');
  });

  test('usage errors name the bad value', async () => {
    const dir = await context('app', APP);
    const bad = await kiln(['build', '-o', 'type=nope', dir]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /unknown type "nope"/);
    const missing = await kiln(['build', path.join(base, 'no-such-dir')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no-such-dir/);
  });
});
