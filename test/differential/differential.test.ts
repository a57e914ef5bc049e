/**
 * Differential tests: every case under test/differential/corpus is built by
 * docker's BuildKit (docker 20.10, BuildKit v0.8, `/usr/bin/docker` with
 * DOCKER_BUILDKIT=1) and by `kiln build`; the final file systems, the image
 * configs and (for failing cases) the error kinds must agree. See
 * harness.ts for what is compared and normalized.
 *
 * One test per case directory, two at a time (one Kiln root each). A case
 * whose case.json records a `knownDifference` is reported as todo with that
 * text (its differences are still printed); `skipReason` skips it. Without
 * a docker daemon (`docker info` fails) every case is skipped.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  type Base,
  classifyError,
  diffConfigs,
  diffTrees,
  dockerAvailable,
  loadCorpus,
  prepareBase,
  prepareKilnRoot,
  RootPool,
  removeKilnRoot,
  normalizeConfig,
  runCase,
  walkTree,
} from './harness.ts';

const cases = await loadCorpus();
const docker = dockerAvailable();
const noDocker = docker ? undefined : 'docker daemon not available (`/usr/bin/docker info` failed)';

let tmp = '';
let pool: RootPool | undefined;
const roots: string[] = [];

describe('differential: kiln build vs docker BuildKit v0.8', { concurrency: 2 }, () => {
  before(async () => {
    if (!docker) return;
    tmp = await mkdtemp(path.join(os.tmpdir(), 'kiln-diff-'));
    const base: Base = await prepareBase(tmp);
    for (const name of ['root-a', 'root-b']) {
      const root = path.join(tmp, name);
      roots.push(root);
      await prepareKilnRoot(root, base);
    }
    pool = new RootPool(roots);
  });

  after(async () => {
    for (const r of roots) await removeKilnRoot(r);
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('the corpus has at least 40 cases, each with a Dockerfile', () => {
    assert.ok(cases.length >= 40, `only ${cases.length} cases`);
  });

  test('the comparison reports file system, config and error differences', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'kiln-diff-self-'));
    try {
      for (const side of ['a', 'b']) {
        await mkdir(path.join(dir, side, 'd'), { recursive: true });
        await chmod(path.join(dir, side), 0o755);
        await chmod(path.join(dir, side, 'd'), side === 'a' ? 0o755 : 0o700);
        await writeFile(path.join(dir, side, 'd/f'), side === 'a' ? 'same' : 'diff');
        await symlink(side === 'a' ? 'f' : 'g', path.join(dir, side, 'd/l'));
      }
      await writeFile(path.join(dir, 'b/extra'), '');
      await chmod(path.join(dir, 'b/extra'), 0o644);
      const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
      assert.deepEqual(diffTrees(await walkTree(path.join(dir, 'a')), await walkTree(path.join(dir, 'b'))), [
        '/d: mode docker=0755 kiln=0700',
        `/d/f: sha256 docker="${sha('same')}" kiln="${sha('diff')}"`,
        '/d/l: link docker="f" kiln="g"',
        '/extra: only in kiln (file mode=0644 uid=0 gid=0 size=0)',
      ]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    const cfg = (cmd: string[], created: string): Record<string, unknown> => ({
      architecture: 'amd64',
      os: 'linux',
      created,
      config: { Cmd: cmd, Env: ['A=1'], Labels: null, Hostname: '' },
      history: [{ created, created_by: 'CMD', empty_layer: true }],
      rootfs: { type: 'layers', diff_ids: [`sha256:${created}`] },
    });
    // Times and layer digests are normalized away; the Cmd is not.
    assert.deepEqual(diffConfigs(normalizeConfig(cfg(['a'], '1')), normalizeConfig(cfg(['a'], '2'))), []);
    assert.deepEqual(diffConfigs(normalizeConfig(cfg(['a'], '1')), normalizeConfig(cfg(['b'], '1'))), [
      'config.Cmd[0]: docker="a" kiln="b"',
    ]);
    // Error kinds, from the two builders' real messages.
    assert.deepEqual(
      classifyError(
        'docker',
        'failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 3: unknown instruction: FOO\n',
      ),
      {
        kind: 'unknown-instruction',
        line: 3,
        message:
          'failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 3: unknown instruction: FOO',
      },
    );
    assert.equal(classifyError('kiln', 'error: Dockerfile:3: unknown instruction: FOO\n').line, 3);
    assert.equal(
      classifyError('docker', 'executor failed running [/bin/sh -c exit 7]: exit code: 7').exitCode,
      7,
    );
    assert.equal(
      classifyError(
        'kiln',
        'error: vertex "[stage-0 3/4] RUN exit 7" failed: process "/bin/sh -c exit 7" did not complete successfully: exit code 7',
      ).exitCode,
      7,
    );
  });

  for (const c of cases) {
    const skip = noDocker ?? c.spec.skipReason;
    const todo = c.spec.knownDifference;
    test(c.name, { timeout: 180_000, ...(skip ? { skip } : {}), ...(todo ? { todo } : {}) }, async (t) => {
      const result = await pool!.use((root) => runCase(c, root, tmp));
      if (!result.docker.ok) t.diagnostic(`both failed as expected: ${result.docker.error?.kind}`);
      if (todo) for (const d of result.differences) t.diagnostic(d);
      assert.deepEqual(
        result.differences,
        [],
        `${c.name}: kiln differs from docker BuildKit:\n  ${result.differences.join('\n  ')}`,
      );
    });
  }
});
