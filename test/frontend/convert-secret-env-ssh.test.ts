/**
 * Dockerfile → LLB for `RUN --mount=type=secret,env=NAME` (the Dockerfile
 * reference's rules: id defaults to the target's base name, `source` is an
 * alias of id, the target defaults to /run/secrets/<id> only without env,
 * env and target together give both, `required` makes a missing secret an
 * error) and for several `RUN --mount=type=ssh` ids with their options.
 * The secret env must be in the exec op only: never in the image config,
 * the history or the state env of later steps.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ImageConfig } from '../../src/core/images/types.ts';
import { convertDockerfile } from '../../src/frontend/dockerfile/convert.ts';
import { DockerfileSyntaxError } from '../../src/frontend/dockerfile/parser.ts';
import { MountType } from '../../src/gen/kiln/llb/v1/llb_pb.ts';
import { parseDefinition, type pb } from '../../src/llb/index.ts';

const BASE: ImageConfig = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } };

async function convert(text: string) {
  const r = await convertDockerfile(text, {
    imageResolver: async () => ({ config: structuredClone(BASE) }),
    buildPlatform: 'linux/amd64',
  });
  const g = parseDefinition(r.definition);
  const execs = g.vertices.filter((v) => v.op.op.case === 'exec').map((v) => v.op.op.value as pb.ExecOp);
  return { ...r, execs };
}

describe('RUN --mount=type=secret,env=', () => {
  it('sets a secret env entry and no mount; id and name, sorted by name', async () => {
    const { execs } = await convert(
      'FROM busybox\nRUN --mount=type=secret,id=tok,env=TOKEN --mount=type=secret,id=aws,env=AWS_KEY,required true\n',
    );
    const e = execs[0]!;
    assert.deepEqual(
      e.secretEnv.map((s) => [s.name, s.id, s.optional]),
      [
        ['AWS_KEY', 'aws', false],
        ['TOKEN', 'tok', true],
      ],
    );
    assert.deepEqual(
      e.mounts.filter((m) => m.type === MountType.SECRET),
      [],
      'env without target: no file',
    );
    assert.ok(!e.meta!.env.some((v) => v.startsWith('TOKEN=') || v.startsWith('AWS_KEY=')));
  });

  it('env and target together give both; the id defaults to the target base name; source is an alias', async () => {
    const { execs } = await convert(
      'FROM busybox\nRUN --mount=type=secret,target=/etc/npmrc,env=NPMRC,mode=0440 --mount=type=secret,src=gh,env=GH true\n',
    );
    const e = execs[0]!;
    assert.deepEqual(
      e.secretEnv.map((s) => [s.name, s.id]),
      [
        ['GH', 'gh'],
        ['NPMRC', 'npmrc'],
      ],
    );
    const files = e.mounts.filter((m) => m.type === MountType.SECRET);
    assert.deepEqual(
      files.map((m) => [m.dest, m.secret?.id, m.secret?.mode]),
      [['/etc/npmrc', 'npmrc', 0o440]],
    );
  });

  it('without env the file defaults to /run/secrets/<id>', async () => {
    const { execs } = await convert('FROM busybox\nRUN --mount=type=secret,id=tok true\n');
    assert.deepEqual(execs[0]!.secretEnv, []);
    assert.equal(execs[0]!.mounts.find((m) => m.type === MountType.SECRET)?.dest, '/run/secrets/tok');
  });

  it('the secret env reaches neither the image config nor the history', async () => {
    const r = await convert(
      'FROM busybox\nARG V=1\nRUN --mount=type=secret,id=tok,env=TOKEN echo "$TOKEN"\nRUN echo after\n',
    );
    const text = JSON.stringify(r.imageConfig);
    assert.doesNotMatch(text, /TOKEN=/);
    assert.deepEqual(
      r.imageConfig.history?.map((h) => h.created_by),
      [
        'ARG V=1',
        'RUN |1 V=1 /bin/sh -c echo "$TOKEN" # buildkit',
        'RUN |1 V=1 /bin/sh -c echo after # buildkit',
      ],
    );
    assert.deepEqual(r.execs[1]!.secretEnv, [], 'a later RUN does not inherit it');
  });

  it('errors name the line: no id and no target, an empty env, the same variable twice', async () => {
    const cases: [string, RegExp][] = [
      ['RUN --mount=type=secret,env=A true', /secret mount needs an id or a target/],
      ['RUN --mount=type=secret,id=a,env= true', /env= needs a variable name/],
      ['RUN --mount=type=secret,id=a,env=A --mount=type=secret,id=b,env=A true', /two secrets set .*"A"/],
      ['RUN --mount=type=ssh,env=A true', /env= is only for secret mounts/],
    ];
    for (const [line, re] of cases) {
      await assert.rejects(convert(`FROM busybox\n\n${line}\n`), (err: unknown) => {
        assert.ok(err instanceof DockerfileSyntaxError, String(err));
        assert.equal(err.line, 3);
        assert.match(err.message, re);
        return true;
      });
    }
  });
});

describe('RUN --mount=type=ssh with several ids', () => {
  it('keeps each id, target, owner, mode and required flag; SSH_AUTH_SOCK is the first socket', async () => {
    const { execs } = await convert(
      'FROM busybox\nRUN --mount=type=ssh --mount=type=ssh,id=deploy,target=/run/deploy.sock,uid=1000,gid=1001,mode=0660,required true\n',
    );
    const e = execs[0]!;
    const ssh = e.mounts.filter((m) => m.type === MountType.SSH);
    assert.deepEqual(
      ssh.map((m) => [m.dest, m.ssh?.id, m.ssh?.uid, m.ssh?.gid, m.ssh?.mode, m.ssh?.optional]),
      [
        ['/run/buildkit/ssh_agent.0', 'default', 0, 0, 0o600, true],
        ['/run/deploy.sock', 'deploy', 1000, 1001, 0o660, false],
      ],
    );
    assert.ok(e.meta!.env.includes('SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0'));
  });
});
