/**
 * The builder API: immutable states, the ops and edges each call produces,
 * de-duplication of shared subgraphs, and digests that do not depend on the
 * order settings were made in.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import {
  copy,
  type DefinitionGraph,
  type DefinitionVertex,
  diff,
  git,
  http,
  image,
  local,
  marshal,
  merge,
  mkdir,
  mkfile,
  parseDefinition,
  pb,
  rm,
  type State,
  scratch,
} from '../../src/llb/index.ts';

const AMD64 = 'linux/amd64';

function graphOf(state: State, platform = AMD64): DefinitionGraph {
  return parseDefinition(marshal(state, { platform }));
}

function theOnly(g: DefinitionGraph, kind: string): DefinitionVertex {
  const found = g.vertices.filter((v) => v.op.op.case === kind);
  assert.equal(found.length, 1, `want exactly one ${kind} op, got ${found.length}`);
  return found[0]!;
}

function outputVertex(g: DefinitionGraph): DefinitionVertex {
  return g.get(g.output!.digest)!;
}

function execOf(v: DefinitionVertex): pb.ExecOp {
  assert.equal(v.op.op.case, 'exec');
  return v.op.op.value as pb.ExecOp;
}

const rejects = (fn: () => unknown, code: string, re: RegExp) =>
  assert.throws(fn, (err: unknown) => isKilnError(err) && err.code === code && re.test(err.message));

describe('determinism', () => {
  test('env set in different orders gives the same digests; a different value does not', () => {
    const a = image('busybox')
      .addEnv('A', '1')
      .addEnv('B', '2')
      .run({ args: ['env'], env: { C: '3', D: '4' } });
    const b = image('busybox')
      .addEnv('B', '2')
      .addEnv('A', '1')
      .run({ args: ['env'], env: { D: '4', C: '3' } });
    const da = marshal(a, { platform: AMD64 });
    const db = marshal(b, { platform: AMD64 });
    assert.deepEqual(da.def, db.def);
    assert.deepEqual(execOf(outputVertex(parseDefinition(da))).meta!.env, ['A=1', 'B=2', 'C=3', 'D=4']);
    const c = image('busybox')
      .addEnv('A', '1')
      .addEnv('B', '3')
      .run({ args: ['env'], env: { C: '3', D: '4' } });
    assert.notEqual(graphOf(c).digest, parseDefinition(da).digest);
  });

  test('a graph built twice, in different construction orders, marshals to the same bytes', () => {
    const build = (reverse: boolean) => {
      const parts = [
        () => local('context', { include: ['src/**'], sharedKeyHint: 'ctx' }),
        () => image('busybox', { description: { b: '2', a: '1' } }),
      ];
      const [ctx, base] = (
        reverse
          ? [...parts]
              .reverse()
              .map((f) => f())
              .reverse()
          : parts.map((f) => f())
      ) as [State, State];
      return base
        .run({
          shell: 'make',
          mounts: [{ target: '/src', source: ctx, readonly: true }],
          description: 'make',
        })
        .root();
    };
    assert.deepEqual(
      marshal(build(false), { platform: AMD64 }).def,
      marshal(build(true), { platform: AMD64 }).def,
    );
  });

  test('the marshal platform changes image and exec ops, not local or file ops', () => {
    const s = image('busybox')
      .run({ args: ['true'] })
      .root()
      .file(copy(local('ctx'), '/a', '/a'));
    const x = graphOf(s, 'linux/amd64');
    const y = graphOf(s, 'linux/arm64');
    for (const kind of ['exec'] as const) assert.notEqual(theOnly(x, kind).digest, theOnly(y, kind).digest);
    const img = (g: DefinitionGraph) => g.vertices.find((v) => v.op.op.case === 'source' && v.op.platform)!;
    assert.notEqual(img(x).digest, img(y).digest);
    assert.deepEqual(img(y).op.platform?.architecture, 'arm64');
    const loc = (g: DefinitionGraph) => g.vertices.find((v) => v.op.op.case === 'source' && !v.op.platform)!;
    assert.equal(loc(x).digest, loc(y).digest);
    // An explicit state platform wins over the marshal default.
    const pinned = image('busybox', { platform: 'linux/arm64' });
    assert.equal(graphOf(pinned, 'linux/amd64').digest, graphOf(pinned, 'linux/arm64').digest);
  });
});

describe('structure', () => {
  test('an exec with a cache mount and a copy from another state has the expected inputs and edges', () => {
    const ctx = local('context');
    const base = image('busybox');
    const built = base.dir('/app').run({
      shell: 'make',
      mounts: [
        { target: '/app', source: ctx },
        { type: 'cache', target: '/root/.cache', sharing: 'locked' },
        { type: 'tmpfs', target: 'tmp', size: 1 << 20 },
      ],
    });
    const out = scratch().file(
      mkdir('/srv', 0o755).copy(built.getMount('/app'), 'bin/', '/srv/', { mode: 0o755 }),
    );
    const g = graphOf(out);

    const exec = theOnly(g, 'exec');
    const baseDigest = graphOf(base).output!.digest;
    const ctxDigest = graphOf(ctx).output!.digest;
    assert.deepEqual(
      exec.op.inputs.map((i) => [i.digest, i.index]),
      [
        [baseDigest, 0],
        [ctxDigest, 0],
      ],
    );
    const e = execOf(exec);
    assert.deepEqual(e.meta!.args, ['/bin/sh', '-c', 'make']);
    assert.equal(e.meta!.cwd, '/app');
    const [root, app, cache, tmpfs] = e.mounts;
    assert.equal(e.mounts.length, 4);
    assert.deepEqual([root!.dest, root!.input, root!.output, root!.type], ['/', 0, 0, pb.MountType.BIND]);
    assert.deepEqual([app!.dest, app!.input, app!.output, app!.readonly], ['/app', 1, 1, false]);
    assert.equal(cache!.type, pb.MountType.CACHE);
    assert.equal(cache!.input, undefined);
    assert.equal(cache!.output, undefined);
    assert.deepEqual([cache!.cache?.id, cache!.cache?.sharing], ['/root/.cache', pb.CacheSharing.LOCKED]);
    assert.deepEqual(
      [tmpfs!.dest, tmpfs!.type, tmpfs!.tmpfs?.size],
      ['/app/tmp', pb.MountType.TMPFS, 1048576n],
    );
    assert.deepEqual(exec.metadata?.caps, {
      'exec.mount.bind': true,
      'exec.mount.cache': true,
      'exec.mount.tmpfs': true,
    });

    // The file op reads the exec's /app output (index 1) as the copy source.
    const file = theOnly(g, 'file');
    assert.deepEqual(
      file.op.inputs.map((i) => [i.digest, i.index]),
      [[exec.digest, 1]],
    );
    const actions = (file.op.op.value as pb.FileOp).actions;
    assert.equal(actions.length, 2);
    assert.equal(actions[0]!.input?.from.case, undefined, 'mkdir starts from scratch');
    assert.equal(actions[0]!.output, undefined);
    assert.deepEqual(actions[1]!.input?.from, { case: 'action', value: 0 });
    assert.deepEqual(actions[1]!.secondaryInput?.from, { case: 'opInput', value: 0 });
    assert.equal(actions[1]!.output, 0);
    const cp = actions[1]!.action.value as pb.FileActionCopy;
    // The mount's tree is the context's: 'bin/' is resolved against its cwd ("/").
    assert.deepEqual([cp.src, cp.dest, cp.mode], ['/bin', '/srv/', 0o755]);
    assert.equal(g.output!.digest, file.digest);
  });

  test('shared subgraphs appear once; equal ops built separately are one op', () => {
    const base = image('busybox');
    const a = base.run({ args: ['touch', '/a'] }).root();
    const b = base.run({ args: ['touch', '/b'] }).root();
    const again = image('busybox')
      .run({ args: ['touch', '/a'] })
      .root(); // equal to `a`, built anew
    const g = graphOf(merge([a, b, again]));
    const def = marshal(merge([a, b, again]), { platform: AMD64 });
    assert.equal(def.def.length, g.vertices.length + 1, 'no duplicate op entries');
    assert.equal(g.vertices.filter((v) => v.op.op.case === 'source').length, 1);
    assert.equal(g.vertices.filter((v) => v.op.op.case === 'exec').length, 2);
    const m = theOnly(g, 'merge');
    // `a` and `again` are one input, used twice.
    assert.equal(m.op.inputs.length, 2);
    assert.deepEqual(
      (m.op.op.value as pb.MergeOp).inputs.map((i) => i.input),
      [0, 1, 0],
    );
    // Every input of every op appears earlier in the list.
    const seen = new Set<string>();
    for (const v of g.vertices) {
      for (const i of v.op.inputs) assert.ok(seen.has(i.digest), `${v.digest} listed before its input`);
      seen.add(v.digest);
    }
  });

  test('the same exec reached through root() and a mount is one op with two outputs used', () => {
    const run = image('busybox').run({ args: ['true'], mounts: [{ target: '/out' }] });
    const g = graphOf(merge([run.root(), run.getMount('/out')]));
    const exec = theOnly(g, 'exec');
    assert.deepEqual(
      theOnly(g, 'merge').op.inputs.map((i) => [i.digest, i.index]),
      [
        [exec.digest, 0],
        [exec.digest, 1],
      ],
    );
    const out = execOf(exec).mounts[1]!;
    assert.deepEqual([out.dest, out.input, out.output], ['/out', undefined, 1]);
  });

  test('file chains run in order, relative paths resolved against the working directory', () => {
    const s = image('busybox')
      .dir('/etc')
      .file(
        mkdir('app', 0o750, { parents: true, owner: 'app:1000' })
          .mkfile('app/conf', 0o600, 'x=1\n', { owner: 1000, timestamp: new Date(1_000_000) })
          .rm('motd', { allowNotFound: true }),
      );
    const actions = (theOnly(graphOf(s), 'file').op.op.value as pb.FileOp).actions;
    assert.deepEqual(
      actions.map((a) => [a.input?.from, a.output]),
      [
        [{ case: 'opInput', value: 0 }, undefined],
        [{ case: 'action', value: 0 }, undefined],
        [{ case: 'action', value: 1 }, 0],
      ],
    );
    const mk = actions[0]!.action.value as pb.FileActionMkDir;
    assert.deepEqual([mk.path, mk.mode, mk.makeParents], ['/etc/app', 0o750, true]);
    assert.deepEqual(mk.owner?.user?.user, { case: 'name', value: 'app' });
    assert.deepEqual(mk.owner?.group?.user, { case: 'id', value: 1000 });
    const mf = actions[1]!.action.value as pb.FileActionMkFile;
    assert.equal(new TextDecoder().decode(mf.data), 'x=1\n');
    assert.deepEqual(mf.owner?.user?.user, { case: 'id', value: 1000 });
    assert.equal(mf.owner?.group, undefined);
    assert.equal(mf.timestamp?.seconds, 1000n);
    assert.equal((actions[2]!.action.value as pb.FileActionRm).path, '/etc/motd');
  });

  test('copy options reach the copy action; attemptUnpack is off unless asked and changes the digest', () => {
    const ctx = local('ctx');
    const op = (s: State) => theOnly(graphOf(s), 'file');
    const plain = op(image('busybox').file(copy(ctx, '/a.tar', '/x/')));
    const unpack = op(image('busybox').file(copy(ctx, '/a.tar', '/x/', { attemptUnpack: true })));
    const cp = (v: DefinitionVertex) =>
      (v.op.op.value as pb.FileOp).actions[0]!.action.value as pb.FileActionCopy;
    assert.equal(cp(plain).attemptUnpack, false);
    assert.equal(cp(unpack).attemptUnpack, true);
    assert.notEqual(plain.digest, unpack.digest);
  });

  test('merge drops scratch inputs; diff records lower and upper', () => {
    const base = image('busybox');
    assert.equal(merge([scratch(), base, scratch()]), base);
    assert.ok(merge([scratch()]).isScratch());
    const upper = base.run({ args: ['true'] }).root();
    const g = graphOf(diff(base, upper));
    const d = theOnly(g, 'diff');
    const value = d.op.op.value as pb.DiffOp;
    assert.deepEqual([value.lower?.input, value.upper?.input], [0, 1]);
    assert.equal(d.op.inputs[1]!.digest, theOnly(g, 'exec').digest);
    const fromNothing = theOnly(graphOf(diff(scratch(), base)), 'diff').op.op.value as pb.DiffOp;
    assert.deepEqual([fromNothing.lower?.input, fromNothing.upper?.input], [undefined, 0]);
  });

  test('scratch marshals to an empty definition; exec on scratch has no root input', () => {
    assert.deepEqual(marshal(scratch()).def, []);
    const root = execOf(theOnly(graphOf(scratch().run({ args: ['/x'] })), 'exec')).mounts[0]!;
    assert.equal(root.input, undefined);
  });
});

describe('sources', () => {
  const source = (s: State) => outputVertex(graphOf(s)).op.op.value as pb.SourceOp;

  test('image references are normalized and config seeds the settings', () => {
    assert.equal(source(image('busybox')).identifier, 'docker-image://docker.io/library/busybox:latest');
    assert.deepEqual(source(image('busybox', { resolveMode: 'pull' })).attrs, {
      'image.resolvemode': 'pull',
    });
    const s = image('localhost:5000/a/b:1', {
      config: { Env: ['PATH=/bin', 'X=a=b'], WorkingDir: '/w', User: 'nobody' },
    });
    assert.equal(source(s).identifier, 'docker-image://localhost:5000/a/b:1');
    assert.deepEqual(
      [s.getEnv('PATH'), s.getEnv('X'), s.getDir(), s.getUser()],
      ['/bin', 'a=b', '/w', 'nobody'],
    );
    const e = execOf(outputVertex(graphOf(s.run({ args: ['id'] }))));
    assert.deepEqual([e.meta!.env, e.meta!.cwd, e.meta!.user], [['PATH=/bin', 'X=a=b'], '/w', 'nobody']);
    rejects(() => image('Not A Ref'), 'InvalidArgument', /invalid reference "Not A Ref"/);
  });

  test('local, git and http carry their options as attributes', () => {
    const l = source(
      local('context', { include: ['src', '*.json'], exclude: ['**/*.md'], followPaths: ['a'] }),
    );
    assert.equal(l.identifier, 'local://context');
    assert.deepEqual(l.attrs, {
      'local.include': '["src","*.json"]',
      'local.exclude': '["**/*.md"]',
      'local.followpaths': '["a"]',
    });
    const g = source(
      git('https://user:tok@github.com/org/repo.git', 'v1.0', { keepGitDir: true, subdir: 'docs' }),
    );
    assert.equal(g.identifier, 'git://github.com/org/repo.git#v1.0');
    assert.deepEqual(g.attrs, {
      'git.fullurl': 'https://user:tok@github.com/org/repo.git',
      'git.keepgitdir': 'true',
      'git.subdir': 'docs',
    });
    assert.equal(source(git('git@github.com:org/repo.git')).identifier, 'git://github.com/org/repo.git');
    assert.equal(
      source(git('github.com/org/repo', 'main')).attrs['git.fullurl'],
      'https://github.com/org/repo',
    );
    const sum = `sha256:${'a'.repeat(64)}`;
    const h = source(http('https://example.com/f.tgz', { checksum: sum, filename: 'f.tgz', chmod: 0o755 }));
    assert.equal(h.identifier, 'https://example.com/f.tgz');
    assert.deepEqual(h.attrs, { 'http.checksum': sum, 'http.filename': 'f.tgz', 'http.perm': '0755' });
    rejects(() => http('ftp://x/y'), 'InvalidArgument', /unsupported URL scheme in "ftp:\/\/x\/y"/);
    rejects(() => http('https://x/y', { checksum: 'md5:abc' }), 'InvalidArgument', /md5:abc/);
    rejects(() => git('https://h/r#main'), 'InvalidArgument', /contains "#"/);
  });
});

describe('states', () => {
  test('every method returns a new state and leaves the receiver unchanged', () => {
    const a = image('busybox');
    const b = a
      .addEnv('K', 'v')
      .dir('/w')
      .user('nobody')
      .network('host')
      .hostname('h')
      .platform('linux/arm64');
    assert.notEqual(a, b);
    assert.deepEqual(
      [a.getEnv('K'), a.getDir(), a.getUser(), a.getNetwork(), a.getHostname()],
      [undefined, '/', '', 'sandbox', ''],
    );
    assert.deepEqual(
      [b.getEnv('K'), b.getDir(), b.getUser(), b.getNetwork(), b.getHostname()],
      ['v', '/w', 'nobody', 'host', 'h'],
    );
    assert.equal(a.getPlatform(), undefined);
    assert.deepEqual(b.getPlatform(), { os: 'linux', architecture: 'arm64', variant: 'v8' });
    assert.equal(b.dir('sub').dir('../x').getDir(), '/w/x');
    assert.equal(b.delEnv('K').getEnv('K'), undefined);
    assert.deepEqual(b.addEnv('A', '1').env(), { A: '1', K: 'v' });
    // Settings after a run do not change that run.
    const run = a.run({ args: ['true'] });
    const later = run.addEnv('LATE', '1');
    assert.equal(graphOf(run).digest, graphOf(later).digest);
    assert.notEqual(
      graphOf(later.run({ args: ['true'] })).digest,
      graphOf(run.run({ args: ['true'] })).digest,
    );
  });

  test('state settings reach the exec op', () => {
    const s = image('busybox')
      .network('none')
      .security('insecure')
      .hostname('builder')
      .addExtraHost('db', '10.0.0.2')
      .user('1000:1000');
    const e = execOf(
      outputVertex(graphOf(s.run({ args: ['id'], extraHosts: [{ host: 'x', ip: '10.0.0.3' }] }))),
    );
    assert.equal(e.network, pb.NetworkMode.NONE);
    assert.equal(e.security, pb.SecurityMode.INSECURE);
    assert.deepEqual([e.meta!.hostname, e.meta!.user], ['builder', '1000:1000']);
    assert.deepEqual(
      e.meta!.extraHosts.map((h) => `${h.host}=${h.ip}`),
      ['db=10.0.0.2', 'x=10.0.0.3'],
    );
    const hostNet = execOf(outputVertex(graphOf(s.run({ args: ['id'], network: 'host' }))));
    assert.equal(hostNet.network, pb.NetworkMode.HOST);
    // "sandbox" is the default encoding: explicit and implicit give one digest.
    assert.equal(
      graphOf(image('busybox').run({ args: ['id'], network: 'sandbox' })).digest,
      graphOf(image('busybox').run({ args: ['id'] })).digest,
    );
  });

  test('getMount: writable bind results, read-only sources, and refusals', () => {
    const ctx = local('ctx');
    const run = image('busybox').run({
      args: ['true'],
      mounts: [
        { target: '/ro', source: ctx, readonly: true },
        { type: 'cache', target: '/c' },
        { type: 'secret', target: '/run/secrets/token' },
      ],
    });
    assert.equal(run.getMount('/ro'), ctx);
    rejects(() => run.getMount('/c'), 'InvalidArgument', /a cache mount has no result/);
    rejects(() => run.getMount('/nope'), 'NotFound', /no mount at "\/nope"/);
    const secret = execOf(outputVertex(graphOf(run))).mounts[3]!;
    assert.deepEqual(
      [secret.type, secret.secret?.id, secret.secret?.mode],
      [pb.MountType.SECRET, 'token', 0o400],
    );
  });

  test('invalid input is refused with InvalidArgument naming the value', () => {
    const b = image('busybox');
    rejects(() => b.run({}), 'InvalidArgument', /command is empty/);
    rejects(() => b.run({ args: ['a'], shell: 'b' }), 'InvalidArgument', /either args or shell/);
    rejects(() => b.addEnv('A=B', 'x'), 'InvalidArgument', /"A=B"/);
    rejects(
      () =>
        b.run({
          args: ['x'],
          mounts: [{ target: '/m' }, { type: 'tmpfs', target: '/m' }],
        }),
      'InvalidArgument',
      /two mounts target "\/m"/,
    );
    rejects(() => b.run({ args: ['x'], mounts: [{ target: '/' }] }), 'InvalidArgument', /over "\/"/);
    rejects(() => b.network('bridge' as 'host'), 'InvalidArgument', /"bridge"/);
    rejects(() => mkdir('/x', 0o17777), 'InvalidArgument', /mode "8191"/);
    rejects(() => rm(''), 'InvalidArgument', /path "" is empty/);
    rejects(() => b.file(mkfile('/f', 0o644, 'x', { owner: 'a:b:c' })).marshal(), 'InvalidArgument', /"b:c"/);
  });
});
