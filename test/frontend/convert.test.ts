/**
 * Dockerfile → LLB conversion. Two kinds of checks:
 * - differential: metadata-heavy Dockerfiles are built by docker 20.10's
 *   BuildKit on a busybox image imported here; the image config fields and
 *   the history (created_by, empty_layer) docker writes must equal ours
 *   (skipped with a message when docker is not usable);
 * - structural: the marshalled definition is parsed back and its ops,
 *   mounts, env, args and source attributes are asserted, for every
 *   instruction and flag (including those the v0.8 reference lacks:
 *   heredocs, --parents, --exclude, --network, which follow the Dockerfile
 *   reference).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { ImageConfig, Platform } from '../../src/core/images/types.ts';
import { type ConvertOptions, convertDockerfile } from '../../src/frontend/dockerfile/convert.ts';
import { goDuration, goQuoteRune, healthcheckHistory } from '../../src/frontend/dockerfile/image-config.ts';
import { type DefinitionVertex, parseDefinition, pb } from '../../src/llb/index.ts';

const execFileP = promisify(execFile);
const DOCKER = '/usr/bin/docker';

const EMPTY_CONFIG: ImageConfig = {
  architecture: 'amd64',
  os: 'linux',
  rootfs: { type: 'layers', diff_ids: [] },
};

function resolverOf(configs: Record<string, ImageConfig> = {}) {
  const calls: string[] = [];
  const fn = async (ref: string, platform: Platform) => {
    calls.push(`${ref}@${platform.os}/${platform.architecture}`);
    return { config: structuredClone(configs[ref] ?? EMPTY_CONFIG) };
  };
  return { fn, calls };
}

async function convert(text: string, opts: Partial<ConvertOptions> = {}) {
  const r = await convertDockerfile(text, {
    imageResolver: resolverOf().fn,
    buildPlatform: 'linux/amd64',
    ...opts,
  });
  const g = parseDefinition(r.definition);
  return { ...r, g, ops: g.vertices };
}

function execs(ops: readonly DefinitionVertex[]) {
  return ops.filter((v) => v.op.op.case === 'exec').map((v) => v.op.op.value as pb.ExecOp);
}
function files(ops: readonly DefinitionVertex[]) {
  return ops.filter((v) => v.op.op.case === 'file').map((v) => v.op.op.value as pb.FileOp);
}
function sources(ops: readonly DefinitionVertex[]) {
  return ops.filter((v) => v.op.op.case === 'source').map((v) => v.op.op.value as pb.SourceOp);
}
function copies(ops: readonly DefinitionVertex[]) {
  return files(ops).flatMap((f) =>
    f.actions.filter((a) => a.action.case === 'copy').map((a) => a.action.value as pb.FileActionCopy),
  );
}

// ---------------------------------------------------------------------------

async function dockerUsable(): Promise<string | undefined> {
  try {
    await execFileP(DOCKER, ['info'], { timeout: 20_000 });
    return undefined;
  } catch (err) {
    return `docker is not usable here (${(err as Error).message.split('\n')[0]})`;
  }
}

/** The config JSON docker stored for an image (history included). */
async function dockerConfig(ref: string, tmp: string): Promise<ImageConfig> {
  const dir = await mkdtemp(join(tmp, 'save-'));
  await execFileP('bash', ['-c', `${DOCKER} save ${ref} | tar -C ${dir} -x`]);
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as { Config: string }[];
  return JSON.parse(await readFile(join(dir, manifest[0]!.Config), 'utf8')) as ImageConfig;
}

const CONFIG_FIELDS = [
  'Env',
  'Cmd',
  'Entrypoint',
  'WorkingDir',
  'User',
  'Labels',
  'ExposedPorts',
  'Volumes',
  'Healthcheck',
  'StopSignal',
  'OnBuild',
  'Shell',
  'ArgsEscaped',
] as const;

function pick(cfg: ImageConfig) {
  const c = (cfg.config ?? {}) as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const f of CONFIG_FIELDS) {
    const v = c[f];
    if (v !== undefined && v !== null && v !== '' && !(Array.isArray(v) && v.length === 0)) out[f] = v;
  }
  return {
    config: out,
    author: cfg.author,
    history: (cfg.history ?? []).map((h) => [h.created_by ?? '', h.empty_layer ?? false]),
  };
}

const CASES: { name: string; dockerfile: string; target?: string; buildArgs?: Record<string, string> }[] = [
  {
    name: 'FROM scratch: WorkingDir "/"; an ENTRYPOINT alone sets no ArgsEscaped',
    dockerfile: `FROM scratch
COPY --from=kiln-test/busybox /bin/busybox /bin/busybox
ENV ONLY=scratch
ENTRYPOINT ["/bin/busybox", "true"]
`,
  },
  {
    name: 'ENTRYPOINT then CMD: ArgsEscaped comes from CMD',
    dockerfile: `FROM kiln-test/busybox
ENTRYPOINT ["/bin/echo"]
CMD ["hi"]
`,
  },
  {
    name: 'every metadata instruction, ARG/ENV scoping, RUN history, COPY/ADD',
    buildArgs: { V: '2.0', UNUSED: 'u' },
    dockerfile: `ARG BASE=kiln-test/busybox
FROM $BASE AS base
ARG V=1.0
ARG UNUSED
ENV A=b C="d e" \\
    F=\${V}x
ENV LEGACY value with spaces
LABEL org.x="y z" ver=$V
MAINTAINER Jane <j@x>
WORKDIR /app
WORKDIR sub
USER nobody:nogroup
EXPOSE 80 443/udp 8000-8002
VOLUME /data ["/v1", "/v2"]
VOLUME /a /b
STOPSIGNAL SIGTERM
SHELL ["/bin/sh", "-ec"]
HEALTHCHECK --interval=5s --timeout=3s --start-period=1s --retries=4 CMD wget -q localhost || exit 1
ONBUILD RUN echo onbuild $V
ONBUILD COPY . /x
ENTRYPOINT ["/bin/echo"]
CMD hello world
RUN echo $V $A
RUN ["echo", "exec"]
ARG LATE=z
RUN echo $LATE
COPY Dockerfile /df
COPY --chown=1:2 --chmod=640 Dockerfile /df2
ADD Dockerfile /df3
`,
  },
  {
    name: 'ARG without value, ENV over ARG, expanded ARG defaults, platform ARGs',
    dockerfile: `FROM kiln-test/busybox
ARG NOVAL
ARG EMPTY=
ARG X=1
ARG Y=$X-y
ENV Z=$Y X=fromenv
ENV abc=hello
ENV abc=bye def=$abc
ARG TARGETPLATFORM
ARG BUILDARCH
RUN echo $X $NOVAL $TARGETPLATFORM > /o
`,
  },
  {
    name: 'multi-stage: COPY --from name and index, global ARG re-declared, ENTRYPOINT after CMD, PATH',
    dockerfile: `ARG IMG=kiln-test/busybox
FROM \${IMG} AS one
RUN echo one > /o
FROM alpine-not-needed AS unused
RUN false
FROM $IMG
ARG IMG
CMD ["a", "b"]
ENTRYPOINT echo x
COPY --from=one /o /o
COPY --from=0 /o /dir/
EXPOSE 53/udp 80
LABEL "q q"=1
ENV PATH=/x:$PATH
`,
  },
  {
    name: 'stage bases: inherited CMD reset by ENTRYPOINT, ONBUILD triggers run and clear, HEALTHCHECK forms',
    target: 's3',
    dockerfile: `FROM kiln-test/busybox AS base
CMD ["base"]
FROM base AS s1
HEALTHCHECK CMD ["true"]
onbuild run echo x
ENTRYPOINT ["ep"]
FROM scratch AS s2
HEALTHCHECK NONE
FROM s1 AS s3
HEALTHCHECK --interval=90s --retries=65 CMD true
`,
  },
  {
    name: 'FROM scratch: default PATH, USER from ENV, WORKDIR / and relative, empty CMD',
    dockerfile: `FROM scratch
HEALTHCHECK NONE
ENV U=1000
USER $U
WORKDIR /
workdir rel
CMD
`,
  },
];

describe('convert: image config and history equal docker (BuildKit v0.8)', () => {
  let tmp: string;
  let skip: string | undefined;
  let baseConfig: ImageConfig;
  const tags: string[] = [];
  before(async () => {
    tmp = await mkdtemp(join(os.tmpdir(), 'kiln-convert-'));
    skip = await dockerUsable();
    if (skip) return;
    try {
      await execFileP(DOCKER, ['image', 'inspect', 'kiln-test/busybox:latest']);
    } catch {
      const rootfs = join(tmp, 'rootfs');
      await execFileP('bash', [join(import.meta.dirname, '../../scripts/make-busybox-rootfs.sh'), rootfs]);
      await execFileP('bash', ['-c', `tar -C ${rootfs} -c . | ${DOCKER} import - kiln-test/busybox:latest`]);
    }
    baseConfig = await dockerConfig('kiln-test/busybox:latest', tmp);
  });
  after(async () => {
    if (tags.length > 0) await execFileP(DOCKER, ['rmi', '-f', ...tags]).catch(() => undefined);
    await rm(tmp, { recursive: true, force: true });
  });

  for (const [i, c] of CASES.entries()) {
    it(c.name, async (t) => {
      if (skip) return t.skip(skip);
      const dir = await mkdtemp(join(tmp, 'ctx-'));
      await writeFile(join(dir, 'Dockerfile'), c.dockerfile);
      const tag = `kiln-test/convert-${i}:latest`;
      tags.push(tag);
      const args = ['build', '-q', '-t', tag];
      if (c.target) args.push('--target', c.target);
      for (const [k, v] of Object.entries(c.buildArgs ?? {})) args.push('--build-arg', `${k}=${v}`);
      await execFileP(DOCKER, [...args, dir], {
        env: { ...process.env, DOCKER_BUILDKIT: '1' },
        timeout: 120_000,
      });
      const theirs = await dockerConfig(tag, tmp);
      const { fn } = resolverOf({
        'kiln-test/busybox': baseConfig,
        'kiln-test/busybox:latest': baseConfig,
      });
      const ours = await convertDockerfile(c.dockerfile, {
        imageResolver: fn,
        buildArgs: c.buildArgs,
        target: c.target,
        buildPlatform: 'linux/amd64',
      });
      assert.deepEqual(pick(ours.imageConfig), pick(theirs));
      assert.equal(ours.imageConfig.architecture, theirs.architecture);
      assert.equal(ours.imageConfig.os, theirs.os);
    });
  }
});

describe('convert: LLB structure', () => {
  it('RUN: shell and exec forms, SHELL, env from ENV and ARGs, cwd, user, proxy args out of history', async () => {
    const r = await convert(
      `FROM busybox
ARG A=1
ENV E=e
WORKDIR /w
USER 1000
RUN echo $A
SHELL ["/bin/bash", "-xc"]
RUN echo two
RUN ["ls", "-l"]
`,
      { buildArgs: { HTTP_PROXY: 'http://proxy:3128', A: '9' } },
    );
    const ex = execs(r.ops);
    assert.equal(ex.length, 3);
    assert.deepEqual(ex[0]!.meta!.args, ['/bin/sh', '-c', 'echo $A']);
    assert.deepEqual(ex[1]!.meta!.args, ['/bin/bash', '-xc', 'echo two']);
    assert.deepEqual(ex[2]!.meta!.args, ['ls', '-l']);
    assert.deepEqual(ex[0]!.meta!.env, [
      'A=9',
      'E=e',
      'HTTP_PROXY=http://proxy:3128',
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    ]);
    assert.equal(ex[0]!.meta!.cwd, '/w');
    assert.equal(ex[0]!.meta!.user, '1000');
    const hist = r.imageConfig.history!.map((h) => h.created_by);
    assert.ok(hist.includes('RUN |1 A=9 /bin/sh -c echo $A # buildkit'));
    assert.ok(!hist.join('\n').includes('proxy'));
    // WORKDIR made the directory with parents, owned by nobody (USER came later).
    const mk = files(r.ops)[0]!.actions[0]!.action;
    assert.equal(mk.case, 'mkdir');
    assert.equal((mk.value as pb.FileActionMkDir).path, '/w');
    assert.equal((mk.value as pb.FileActionMkDir).makeParents, true);
  });

  it('RUN --mount: bind, cache, tmpfs, secret, ssh with their options; --network; --security', async () => {
    const r = await convert(
      `FROM busybox AS build
RUN touch /built
FROM busybox
ARG CID=mycache
RUN --mount=type=bind,source=src,target=/src \\
    --mount=type=bind,from=build,src=/built,dst=/b,rw \\
    --mount=type=cache,target=/root/.cache,id=$CID,sharing=locked,mode=0700,uid=1000,gid=1000 \\
    --mount=type=cache,target=/c2,ro \\
    --mount=type=tmpfs,target=/t,size=64m \\
    --mount=type=secret,id=tok,target=/run/secrets/t,mode=0440,uid=5,required=true \\
    --mount=type=secret,id=aws \\
    --mount=type=ssh,id=gh,required \\
    --mount=type=ssh \\
    --network=none --security=insecure make
`,
    );
    const ex = execs(r.ops).at(-1)!;
    const m = ex.mounts.slice(1);
    assert.deepEqual(
      m.map((x) => [x.dest, x.type, x.readonly, x.selector]),
      [
        ['/src', pb.MountType.BIND, true, '/src'],
        ['/b', pb.MountType.BIND, false, '/built'],
        ['/root/.cache', pb.MountType.CACHE, false, '/cache'],
        ['/c2', pb.MountType.CACHE, true, ''],
        ['/t', pb.MountType.TMPFS, false, ''],
        ['/run/secrets/t', pb.MountType.SECRET, true, ''],
        ['/run/secrets/aws', pb.MountType.SECRET, true, ''],
        ['/run/buildkit/ssh_agent.0', pb.MountType.SSH, true, ''],
        ['/run/buildkit/ssh_agent.1', pb.MountType.SSH, true, ''],
      ],
    );
    assert.equal(m[2]!.cache!.id, 'mycache');
    assert.equal(m[2]!.cache!.sharing, pb.CacheSharing.LOCKED);
    assert.equal(m[3]!.cache!.id, '/c2');
    assert.equal(m[4]!.tmpfs!.size, 64n << 20n);
    assert.deepEqual(
      [m[5]!.secret!.id, m[5]!.secret!.mode, m[5]!.secret!.uid, m[5]!.secret!.optional],
      ['tok', 0o440, 5, false],
    );
    assert.equal(m[6]!.secret!.optional, true);
    assert.deepEqual([m[7]!.ssh!.id, m[7]!.ssh!.optional], ['gh', false]);
    assert.deepEqual([m[8]!.ssh!.id, m[8]!.ssh!.optional], ['default', true]);
    assert.ok(ex.meta!.env.includes('SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0'));
    assert.equal(ex.network, pb.NetworkMode.NONE);
    assert.equal(ex.security, pb.SecurityMode.INSECURE);
    // The cache's initial directory carries mode and owner.
    const cacheDir = files(r.ops)
      .flatMap((f) => f.actions)
      .find((a) => a.action.case === 'mkdir' && (a.action.value as pb.FileActionMkDir).path === '/cache');
    assert.equal((cacheDir!.action.value as pb.FileActionMkDir).mode, 0o700);
    // The bind mount from the context limits the transfer to `src`.
    const ctx = sources(r.ops).find((s) => s.identifier === 'local://context')!;
    assert.equal(ctx.attrs['local.followpaths'], JSON.stringify(['src']));
    assert.deepEqual(
      r.stages.map((s) => s.used),
      [true, true],
    );
  });

  it('RUN heredocs: a lone heredoc is the script; with a command, the shell reads the bodies', async () => {
    const r = await convert(`FROM busybox
RUN <<EOF
echo one
echo two
EOF
RUN cat <<A > /a && cat <<-B > /b
alpha
A
\tbeta
\tB
RUN <<EOF
#!/usr/bin/env python3
print(1)
EOF
`);
    const ex = execs(r.ops);
    assert.deepEqual(ex[0]!.meta!.args, ['/bin/sh', '-c', 'echo one\necho two\n']);
    assert.deepEqual(ex[1]!.meta!.args, [
      '/bin/sh',
      '-c',
      'cat <<A > /a && cat <<-B > /b\nalpha\nA\nbeta\nB',
    ]);
    assert.deepEqual(ex[2]!.meta!.args, ['/dev/pipes/script']);
    const script = files(r.ops)
      .flatMap((f) => f.actions)
      .find((a) => a.action.case === 'mkfile')!.action.value as pb.FileActionMkFile;
    assert.equal(new TextDecoder().decode(script.data), '#!/usr/bin/env python3\nprint(1)\n');
    assert.equal(script.mode, 0o755);
  });

  it('COPY: context paths, wildcards, dirs, --chown/--chmod, --exclude, --parents, --link, heredoc files, .dockerignore', async () => {
    const r = await convert(
      `FROM busybox
ARG D=/opt
WORKDIR /app
COPY --chown=app:app --chmod=0600 a.txt b/ $D/
COPY src/*.go ./
COPY --exclude=*.md --exclude=tmp docs /docs
COPY --parents ./x/./y/*.c /out
COPY --link c.txt /c.txt
COPY <<EOF <<'RAW' /etc/
v=$D
EOF
raw $D
RAW
`,
      { dockerignore: ['*.log', '!keep.log'] },
    );
    const cp = copies(r.ops);
    assert.deepEqual(
      cp.map((c) => [c.src, c.dest]),
      [
        ['/a.txt', '/opt/'],
        ['/b', '/opt/'],
        ['/src/*.go', '/app/'],
        ['/docs', '/docs'],
        ['/x', '/out/'],
        ['/c.txt', '/c.txt'],
        ['/EOF', '/etc/EOF'],
        ['/RAW', '/etc/RAW'],
      ],
    );
    assert.equal(cp[0]!.mode, 0o600);
    assert.equal(cp[0]!.owner!.user!.user.value, 'app');
    assert.ok(cp.slice(0, 4).every((c) => c.createDestPath && c.allowWildcard && c.dirContentsOnly));
    assert.deepEqual(cp[3]!.excludePatterns, ['*.md', 'tmp']);
    assert.deepEqual(cp[4]!.includePatterns, ['y/*.c']);
    const bodies = files(r.ops)
      .flatMap((f) => f.actions)
      .filter((a) => a.action.case === 'mkfile')
      .map((a) => new TextDecoder().decode((a.action.value as pb.FileActionMkFile).data));
    assert.deepEqual(bodies.sort(), ['raw $D\n', 'v=/opt\n']);
    // --link: the copy lands on scratch and is merged onto the stage.
    assert.ok(r.ops.some((v) => v.op.op.case === 'merge'));
    const ctx = sources(r.ops).filter((s) => s.identifier === 'local://context');
    assert.equal(ctx.length, 1, 'one context source for the whole build');
    assert.equal(ctx[0]!.attrs['local.followpaths'], undefined, '--parents needs the whole context');
    assert.equal(
      ctx[0]!.attrs['local.excludepatterns'] ?? ctx[0]!.attrs['local.exclude'],
      JSON.stringify(['*.log', '!keep.log']),
    );
    const hist = r.imageConfig.history!.map((h) => h.created_by);
    assert.ok(hist.includes('COPY a.txt b/ /opt/ # buildkit'), hist.join('\n'));
  });

  it('reads only the context paths the build uses', async () => {
    const r = await convert(`FROM busybox
COPY package.json src/*.ts /app/
RUN --mount=type=bind,target=/cfg,source=config true
`);
    const ctx = sources(r.ops).find((s) => s.identifier === 'local://context')!;
    assert.equal(ctx.attrs['local.followpaths'], JSON.stringify(['config', 'package.json', 'src']));
  });

  it('ADD: URLs → http, git URLs → git, --checksum, --keep-git-dir, local files', async () => {
    const sum = `sha256:${'a'.repeat(64)}`;
    const r = await convert(`FROM busybox
ADD --checksum=${sum} --chmod=755 https://example.com/dl/tool.tar.gz /usr/local/bin/tool
ADD https://example.com/x/file.txt /data/
ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.12.0:docs /src
ADD git@github.com:org/repo.git /repo
ADD local.tar /l/
`);
    const src = sources(r.ops);
    const h1 = src.find((s) => s.identifier === 'https://example.com/dl/tool.tar.gz')!;
    assert.equal(h1.attrs['http.checksum'], sum);
    assert.equal(h1.attrs['http.filename'], 'tool');
    assert.equal(h1.attrs['http.perm'], '0755');
    const h2 = src.find((s) => s.identifier === 'https://example.com/x/file.txt')!;
    assert.equal(h2.attrs['http.filename'], 'file.txt');
    const g = src.find((s) => s.identifier === 'git://github.com/moby/buildkit.git#v0.12.0')!;
    assert.equal(g.attrs['git.keepgitdir'], 'true');
    assert.equal(g.attrs['git.subdir'], 'docs');
    assert.ok(src.some((s) => s.identifier === 'git://github.com/org/repo.git'));
    const cp = copies(r.ops);
    assert.deepEqual(
      cp.map((c) => [c.src, c.dest]),
      [
        ['/tool', '/usr/local/bin/tool'],
        ['/file.txt', '/data/'],
        ['/', '/src'],
        ['/', '/repo'],
        ['/local.tar', '/l/'],
      ],
    );
    // Only the local ADD source is extracted if it is an archive (URLs and git never are).
    assert.deepEqual(
      cp.map((c) => c.attemptUnpack),
      [false, false, false, false, true],
    );
    const plain = copies((await convert('FROM busybox\nCOPY local.tar /l/\n')).ops);
    assert.equal(plain[0]!.attemptUnpack, false);
    await assert.rejects(
      convert('FROM busybox\nADD --checksum=nope https://e.com/x /x\n'),
      /Dockerfile:2: invalid --checksum/,
    );
    await assert.rejects(
      convert('FROM busybox\nCOPY https://e.com/x /x\n'),
      /Dockerfile:2: COPY does not support URL/,
    );
  });

  it('stages: the target decides; unused stages are not resolved nor in the definition', async () => {
    const text = `ARG V=3
FROM alpine:$V AS a
RUN echo a
FROM debian AS b
RUN echo b
FROM busybox AS c
COPY --from=a /x /x
FROM c
RUN echo final
`;
    const res = resolverOf();
    const r = await convert(text, { imageResolver: res.fn });
    assert.deepEqual(r.stages, [
      { name: 'a', index: 0, used: true },
      { name: 'b', index: 1, used: false },
      { name: 'c', index: 2, used: true },
      { name: 'stage-3', index: 3, used: true },
    ]);
    assert.deepEqual(res.calls.sort(), ['alpine:3@linux/amd64', 'busybox@linux/amd64']);
    const ids = sources(r.ops)
      .map((s) => s.identifier)
      .sort();
    assert.deepEqual(ids, [
      'docker-image://docker.io/library/alpine:3',
      'docker-image://docker.io/library/busybox:latest',
    ]);
    assert.ok(!execs(r.ops).some((e) => e.meta!.args.includes('echo b')));

    const rb = await convert(text, { target: 'b' });
    assert.deepEqual(
      rb.stages.map((s) => s.used),
      [false, true, false, false],
    );
    assert.deepEqual(
      execs(rb.ops).map((e) => e.meta!.args.at(-1)),
      ['echo b'],
    );
    await assert.rejects(convert(text, { target: 'nope' }), /failed to reach build target "nope"/);
  });

  it('platform args: global ARGs in FROM, --platform, TARGET*/BUILD* values', async () => {
    const r = await convert(
      `FROM --platform=$BUILDPLATFORM busybox AS tool
ARG TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM TARGETPLATFORM
RUN echo $TARGETOS/$TARGETARCH/$TARGETVARIANT from $BUILDPLATFORM to $TARGETPLATFORM
FROM busybox
COPY --from=tool /x /x
`,
      { platform: 'linux/arm/v7' },
    );
    const ex = execs(r.ops)[0]!;
    assert.ok(ex.meta!.env.includes('TARGETARCH=arm'));
    assert.ok(ex.meta!.env.includes('TARGETVARIANT=v7'));
    assert.ok(ex.meta!.env.includes('BUILDPLATFORM=linux/amd64'));
    assert.ok(ex.meta!.env.includes('TARGETPLATFORM=linux/arm/v7'));
    const imgs = r.ops.filter((v) => v.op.op.case === 'source');
    const plats = imgs.map((v) => `${v.op.platform?.architecture}${v.op.platform?.variant ?? ''}`).sort();
    assert.deepEqual(plats, ['amd64', 'armv7']);
    assert.equal(r.imageConfig.architecture, 'amd64', 'EMPTY_CONFIG of the resolver');
  });

  it('global ARG of a platform name keeps its value; resolver errors carry the line', async () => {
    const r = await convert('ARG TARGETARCH\nFROM busybox:$TARGETARCH\n', { platform: 'linux/arm64' });
    assert.equal(sources(r.ops)[0]!.identifier, 'docker-image://docker.io/library/busybox:arm64');
    await assert.rejects(
      convert('FROM busybox\n\nFROM alpine\n', {
        imageResolver: async () => {
          throw new Error('registry down');
        },
      }),
      /Dockerfile:3: resolve image "alpine": registry down/,
    );
  });

  it('pins a resolved digest and inherits the base image env, workdir and user', async () => {
    const dg = `sha256:${'b'.repeat(64)}`;
    const r = await convertDockerfile('FROM node:22\nRUN npm ci\n', {
      imageResolver: async () => ({
        digest: dg,
        config: {
          ...EMPTY_CONFIG,
          config: { Env: ['PATH=/node/bin', 'NODE_VERSION=22'], WorkingDir: '/srv', User: 'node' },
        },
      }),
    });
    const g = parseDefinition(r.definition);
    assert.equal(sources(g.vertices)[0]!.identifier, `docker-image://docker.io/library/node:22@${dg}`);
    const ex = execs(g.vertices)[0]!;
    assert.deepEqual(ex.meta!.env, ['NODE_VERSION=22', 'PATH=/node/bin']);
    assert.equal(ex.meta!.cwd, '/srv');
    assert.equal(ex.meta!.user, 'node');
  });

  it('COPY --from an image, ONBUILD triggers of a base image, extra labels, empty CMD', async () => {
    const res = resolverOf({
      'base/app': {
        ...EMPTY_CONFIG,
        config: { OnBuild: ['RUN echo trig', 'COPY ctx.txt /ctx.txt'], Labels: { a: '1' } },
      },
    });
    const r = await convert('FROM base/app\nCOPY --from=alpine:3 /etc/os-release /os\nCMD\n', {
      imageResolver: res.fn,
      labels: { b: '2' },
    });
    assert.ok(sources(r.ops).some((s) => s.identifier === 'docker-image://docker.io/library/alpine:3'));
    assert.deepEqual(
      execs(r.ops).map((e) => e.meta!.args),
      [['/bin/sh', '-c', 'echo trig']],
    );
    assert.deepEqual(
      copies(r.ops).map((c) => c.src),
      ['/ctx.txt', '/etc/os-release'],
    );
    const ctx = sources(r.ops).find((s) => s.identifier === 'local://context')!;
    assert.equal(ctx.attrs['local.followpaths'], JSON.stringify(['ctx.txt']), 'trigger paths are read too');
    assert.equal(r.imageConfig.config!.OnBuild, null);
    assert.deepEqual(r.imageConfig.config!.Labels, { a: '1', b: '2' });
    assert.deepEqual(r.imageConfig.config!.Cmd, ['/bin/sh', '-c', '']);
    assert.deepEqual(res.calls, ['base/app@linux/amd64'], 'COPY --from images need no config');
  });

  it('errors carry the line: unknown instructions, bad flags, bad mounts, bad values', async () => {
    const cases: [string, RegExp][] = [
      ['FROM busybox\nFOO bar\n', /Dockerfile:2: unknown instruction: FOO/],
      ['FROM busybox\nCOPY --nope=1 a /b\n', /Dockerfile:2: unknown flag: --nope/],
      ['FROM busybox\nRUN --mount=type=cache,bogus=1 true\n', /Dockerfile:2: unexpected key 'bogus'/],
      [
        'FROM busybox\nRUN --mount=type=weird,target=/x true\n',
        /Dockerfile:2: --mount: unsupported mount type "weird"/,
      ],
      ['FROM busybox\nRUN --network=bridge true\n', /Dockerfile:2: unsupported network mode/],
      ['FROM busybox\n\nHEALTHCHECK --interval=xs CMD true\n', /Dockerfile:3: invalid duration "xs"/],
      ['FROM busybox\nCOPY --chmod=u+x a /b\n', /Dockerfile:2: invalid --chmod/],
      ['FROM busybox\nEXPOSE 80/icmp\n', /Dockerfile:2: invalid protocol/],
      ['FROM busybox\nSHELL /bin/sh\n', /Dockerfile:2: SHELL requires the arguments to be in JSON form/],
      ['FROM busybox\nWORKDIR\n', /Dockerfile:2: WORKDIR requires exactly one argument/],
      ['FROM busybox AS 1x\n', /Dockerfile:1: invalid name for build stage/],
      ['FROM busybox\nONBUILD ONBUILD RUN x\n', /Dockerfile:2: Chaining ONBUILD/],
      [
        'FROM busybox\nADD --checksum=sha256:' + 'a'.repeat(64) + ' f /b\n',
        /Dockerfile:2: --checksum needs an http\(s\) source/,
      ],
      ['FROM busybox\nCOPY --from=1 /a /b\n', /Dockerfile:2: invalid from flag value 1/],
      ['ENV A=b\nFROM busybox\n', /Dockerfile:1: ENV before the first FROM/],
      ['FROM $NOPE\n', /Dockerfile:1: base name \(\$NOPE\) should not be blank/],
      ['FROM busybox\nENV A=$' + '{B:?mustbeset}\n', /Dockerfile:2: .*mustbeset/],
    ];
    for (const [text, re] of cases) await assert.rejects(convert(text), re, text);
  });
});

describe('convert: Go formatting of history values', () => {
  it('formats durations and runes like Go', () => {
    assert.deepEqual([0, 1, 1500, 2e6, 1.5e9, 90e9, 3600e9, 3661.5e9].map(goDuration), [
      '0s',
      '1ns',
      '1.5µs',
      '2ms',
      '1.5s',
      '1m30s',
      '1h0m0s',
      '1h1m1.5s',
    ]);
    assert.deepEqual([0, 3, 65, 39, 92, 10, 233].map(goQuoteRune), [
      "'\\x00'",
      "'\\x03'",
      "'A'",
      "'\\''",
      "'\\\\'",
      "'\\n'",
      "'é'",
    ]);
    assert.equal(
      healthcheckHistory({
        test: ['CMD', 'a b'],
        interval: 0,
        timeout: 0,
        startPeriod: 0,
        startInterval: 0,
        retries: 3,
      }),
      `HEALTHCHECK &{["CMD" "a b"] "0s" "0s" "0s" '\\x03'}`,
    );
  });

  it('warns about build args nothing consumed, not about global or proxy ones', async () => {
    const r = await convert('ARG G\nFROM busybox\nARG S\nRUN true\n', {
      buildArgs: { G: '1', S: '2', NOPE: '3', http_proxy: 'x' },
    });
    assert.deepEqual(
      r.warnings.map((w) => w.message),
      ['build argument "NOPE" was not consumed'],
    );
  });
});

describe('kiln debug dump-llb', () => {
  it('prints one JSON op per line, inputs first, terminal last, digests of the op bytes', async () => {
    const dir = await mkdtemp(join(os.tmpdir(), 'kiln-dumpllb-'));
    try {
      await writeFile(
        join(dir, 'app.Dockerfile'),
        'FROM kiln-test/none-such AS a\nCOPY x /x\nRUN --mount=type=cache,target=/c true\n',
      );
      await writeFile(join(dir, 'app.Dockerfile.dockerignore'), '*.log\n');
      const { stdout, stderr } = await execFileP(
        process.execPath,
        [
          join(import.meta.dirname, '../../src/cli/main.ts'),
          '--root',
          join(dir, 'root'),
          'debug',
          'dump-llb',
          '-f',
          join(dir, 'app.Dockerfile'),
          dir,
        ],
        { timeout: 60_000 },
      );
      assert.match(stderr, /warning: image "kiln-test\/none-such".*using an empty config/);
      const lines = stdout
        .trim()
        .split('\n')
        .map(
          (l) =>
            JSON.parse(l) as {
              Op: Record<string, unknown>;
              Digest: string;
              OpMetadata: Record<string, unknown>;
            },
        );
      const kinds = lines.map(
        (l) => Object.keys(l.Op).find((k) => k !== 'inputs' && k !== 'platform') ?? 'terminal',
      );
      assert.deepEqual(kinds, ['source', 'source', 'file', 'exec', 'terminal']);
      const seen = new Set<string>();
      for (const l of lines) {
        assert.match(l.Digest, /^sha256:[0-9a-f]{64}$/);
        for (const input of (l.Op.inputs ?? []) as { digest: string }[])
          assert.ok(seen.has(input.digest), 'inputs come first');
        seen.add(l.Digest);
      }
      const ctx = lines[1]!.Op.source as { identifier: string; attrs: Record<string, string> };
      assert.equal(ctx.identifier, 'local://context');
      assert.equal(ctx.attrs['local.exclude'], '["*.log"]');
      assert.deepEqual(lines[3]!.OpMetadata.caps, { 'exec.mount.cache': true });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
