/**
 * The build memo (src/control/memo.ts) through executeBuild on a real root:
 * a repeated build is answered from it, and every input it stands for ends
 * it when it changes (context files, build args, the base image, the name's
 * target, a prune, the code's identity), as do builds it must not answer.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type BuildOutcome, type BuildParams, executeBuild } from '../../src/control/build.ts';
import { type MemoKeyInput, memoKey } from '../../src/control/memo.ts';
import { removeTree } from '../../src/core/fs/safe.ts';
import { importImages } from '../../src/core/images/index.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { unmountAll } from '../../src/core/mount/mount.ts';
import type { ProgressEvent } from '../../src/solver/progress.ts';
import { Worker, workerCache } from '../../src/worker/worker.ts';
import { makeBusyboxLayout } from '../core/fixtures/busybox-image.ts';

let base = '';
let core: Core;

const DOCKERFILE = [
  'FROM busybox AS build',
  'ARG FLAVOUR=plain',
  'COPY msg.txt /msg.txt',
  'RUN echo "$FLAVOUR $(cat /msg.txt)" > /out.txt',
  'FROM busybox',
  'COPY --from=build /out.txt /out.txt',
  '',
].join('\n');

const RUN_STEP = '[build 3/3] RUN echo "$FLAVOUR $(cat /msg.txt)" > /out.txt';

function params(context: string, over: Partial<BuildParams> = {}): BuildParams {
  return {
    context,
    tags: ['memo:1'],
    buildArgs: {},
    labels: {},
    secrets: {},
    noCache: false,
    noCacheFilter: [],
    outputs: [],
    pull: false,
    insecureRegistries: [],
    certsDirs: [],
    ...over,
  };
}

interface Built {
  outcome: BuildOutcome;
  events: ProgressEvent[];
}

async function build(
  context: string,
  over: Partial<BuildParams> = {},
  codeId: string | null = 'code-1',
): Promise<Built> {
  const events: ProgressEvent[] = [];
  const outcome = await executeBuild(core, params(context, over), {
    root: core.root,
    emit: (ev) => events.push(ev),
    signal: new AbortController().signal,
    ...(codeId ? { codeId } : {}),
  });
  assert.equal(outcome.summary.error, undefined, JSON.stringify(outcome.summary.error));
  return { outcome, events };
}

/** Final state of each vertex by name: cached, done (ran), error. */
function states(events: readonly ProgressEvent[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const ev of events) {
    if (ev.type !== 'vertex' || ev.completed === undefined) continue;
    out.set(ev.name, ev.error ? 'error' : ev.cached ? 'cached' : 'done');
  }
  return out;
}

async function contextDir(name: string, msg: string): Promise<string> {
  const dir = path.join(base, name);
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'Dockerfile'), DOCKERFILE);
  await writeFile(path.join(dir, 'msg.txt'), msg);
  return dir;
}

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'kiln-memo-'));
  core = await openCore({ root: path.join(base, 'root'), namespace: 'memo' });
  const { layout } = await makeBusyboxLayout(path.join(base, 'bb'));
  await importImages(core, layout, { name: 'busybox:latest' });
});

after(async () => {
  await unmountAll(base);
  await removeTree(base);
});

describe('build memo', () => {
  test('a repeated build is answered from the memo: same image, steps shown cached, files written', async () => {
    const dir = await contextDir('ctx-repeat', 'hello\n');
    const first = await build(dir);
    assert.equal(first.outcome.memo, undefined);
    assert.equal(states(first.events).get(RUN_STEP), 'done');

    const iid = path.join(base, 'iid');
    const meta = path.join(base, 'meta.json');
    const again = await build(dir, { iidfile: iid, metadataFile: meta });
    assert.equal(again.outcome.memo, true);
    assert.equal(again.outcome.imageId, first.outcome.imageId);
    assert.deepEqual(again.outcome.summary.results, first.outcome.summary.results);
    const s = states(again.events);
    for (const name of states(first.events).keys()) assert.ok(s.has(name), `${name} shown again`);
    assert.equal(s.get(RUN_STEP), 'cached');
    assert.equal(s.get('[stage-1 2/2] COPY --from=build /out.txt /out.txt'), 'cached');
    assert.equal(await readFile(iid, 'utf8'), first.outcome.imageId);
    const m = JSON.parse(await readFile(meta, 'utf8')) as Record<string, unknown>;
    assert.equal(m['containerimage.config.digest'], first.outcome.imageId);
    assert.equal(m['image.name'], 'docker.io/library/memo:1');

    // Without the memo, the solver gives the same image from its cache.
    const plain = await build(dir, {}, null);
    assert.equal(plain.outcome.memo, undefined);
    assert.equal(plain.outcome.imageId, first.outcome.imageId);
  });

  test('a changed context file, build arg or Dockerfile is a miss; the new build is memoised in turn', async () => {
    const dir = await contextDir('ctx-change', 'one\n');
    const first = await build(dir);
    assert.equal((await build(dir)).outcome.memo, true);

    await writeFile(path.join(dir, 'msg.txt'), 'two\n');
    const changed = await build(dir);
    assert.equal(changed.outcome.memo, undefined);
    assert.notEqual(changed.outcome.imageId, first.outcome.imageId);
    assert.equal(states(changed.events).get(RUN_STEP), 'done');
    assert.equal((await build(dir)).outcome.memo, true);

    const arg = await build(dir, { buildArgs: { FLAVOUR: 'spicy' } });
    assert.equal(arg.outcome.memo, undefined);
    assert.notEqual(arg.outcome.imageId, changed.outcome.imageId);
    const argAgain = await build(dir, { buildArgs: { FLAVOUR: 'spicy' } });
    assert.equal(argAgain.outcome.memo, true);
    assert.equal(argAgain.outcome.imageId, arg.outcome.imageId);

    // Back to the earlier inputs: the name points to the build-arg image now, so the build runs
    // (from the solver's cache) and points it back; then the memo answers again.
    const back = await build(dir);
    assert.equal(back.outcome.memo, undefined);
    assert.equal(back.outcome.imageId, changed.outcome.imageId);
    assert.equal(states(back.events).get(RUN_STEP), 'cached');
    assert.equal((await build(dir)).outcome.memo, true);

    await writeFile(path.join(dir, 'Dockerfile'), `${DOCKERFILE}LABEL x=y\n`);
    const df = await build(dir);
    assert.equal(df.outcome.memo, undefined);
    assert.notEqual(df.outcome.imageId, changed.outcome.imageId);
  });

  test('a tag moved away, a base image tag moved, a prune or another code identity is a miss', async () => {
    const dir = await contextDir('ctx-state', 'state\n');
    const first = await build(dir, { tags: ['state:1'] });
    assert.equal((await build(dir, { tags: ['state:1'] })).outcome.memo, true);

    // The name now points elsewhere: the build runs (from the solver's cache) and points it back.
    const other = core.images.get('docker.io/library/busybox:latest').target;
    core.images.update({ name: 'docker.io/library/state:1', target: other }, ['target']);
    const moved = await build(dir, { tags: ['state:1'] });
    assert.equal(moved.outcome.memo, undefined);
    assert.equal(moved.outcome.imageId, first.outcome.imageId);
    assert.equal(
      core.images.get('docker.io/library/state:1').target.digest,
      first.outcome.summary.results[0]!.match(/manifest (\S+)\)/)![1],
    );

    // Another code identity never uses this one's entries.
    assert.equal((await build(dir, { tags: ['state:1'] }, 'code-2')).outcome.memo, undefined);

    // The cache records gone some other way than a prune: the entry's record is missing, a miss.
    const index = workerCache(core);
    try {
      for (const r of await index.list()) await index.delete(r.key);
    } finally {
      index.close();
    }
    const dropped = await build(dir, { tags: ['state:1'] });
    assert.equal(dropped.outcome.memo, undefined);
    assert.equal(states(dropped.events).get(RUN_STEP), 'done');
    assert.equal((await build(dir, { tags: ['state:1'] })).outcome.memo, true);

    // The build cache pruned: the memo goes with it, and the steps run again.
    const w = new Worker({ core });
    try {
      await w.prune();
    } finally {
      w.close();
    }
    const pruned = await build(dir, { tags: ['state:1'] });
    assert.equal(pruned.outcome.memo, undefined);
    assert.equal(states(pruned.events).get(RUN_STEP), 'done');

    // The base image's tag points to another image: the lookup gives another digest, a miss.
    const rebased = await contextDir('ctx-base', 'base\n');
    await writeFile(path.join(rebased, 'Dockerfile'), 'FROM busybox\nRUN echo base > /b.txt\n');
    const baseImg = await build(rebased, { tags: ['newbase:1'] });
    const b1 = await build(dir, { tags: ['state:1'] });
    assert.equal((await build(dir, { tags: ['state:1'] })).outcome.memo, true);
    const newBase = core.images.get('docker.io/library/newbase:1').target;
    const oldBase = core.images.get('docker.io/library/busybox:latest').target;
    core.images.update({ name: 'docker.io/library/busybox:latest', target: newBase }, ['target']);
    try {
      const b2 = await build(dir, { tags: ['state:1'] });
      assert.equal(b2.outcome.memo, undefined);
      assert.notEqual(b2.outcome.imageId, b1.outcome.imageId);
      assert.ok(baseImg.outcome.imageId);
    } finally {
      core.images.update({ name: 'docker.io/library/busybox:latest', target: oldBase }, ['target']);
    }
  });

  test('the key: none for builds the memo must not answer; every input changes it', () => {
    const context = {
      dir: '/ctx',
      dockerfileName: 'Dockerfile',
      dockerfile: 'FROM busybox\n',
      dockerignore: [],
      kind: 'dir' as const,
      cleanup: async () => {},
    };
    const outputs = [{ type: 'image' as const, names: ['docker.io/library/k:1'] }];
    const key = (over: Partial<BuildParams> = {}, more: Partial<MemoKeyInput> = {}) =>
      memoKey({
        codeId: 'c',
        core,
        params: params('/ctx', over),
        context,
        outputs,
        epoch: undefined,
        ...more,
      });
    const base = key();
    assert.match(base ?? '', /^sha256:[0-9a-f]{64}$/);
    assert.equal(key(), base, 'stable');
    for (const [what, k] of [
      ['no code identity', key({}, { codeId: undefined })],
      ['--pull', key({ pull: true })],
      ['--no-cache', key({ noCache: true })],
      ['--no-cache-filter', key({ noCacheFilter: ['build'] })],
      ['secrets', key({ secrets: { s: new Uint8Array(1) } })],
      ['ssh', key({ ssh: { default: '/agent.sock' } })],
      ['a git context', key({}, { context: { ...context, kind: 'git' } })],
      ['a push', key({}, { outputs: [{ ...outputs[0]!, push: true }] })],
      ['a tar output', key({}, { outputs: [{ type: 'tar', names: [], dest: '/x.tar' }] })],
      ['no output', key({}, { outputs: [] })],
    ] as const) {
      assert.equal(k, undefined, what);
    }
    const changed = [
      key({ buildArgs: { A: '1' } }),
      key({ labels: { l: 'v' } }),
      key({ target: 'build' }),
      key({ platform: 'linux/arm64' }),
      key({ network: 'none' }),
      key({}, { epoch: 1 }),
      key({}, { codeId: 'd' }),
      key({}, { context: { ...context, dockerfile: 'FROM busybox\nRUN true\n' } }),
      key({}, { context: { ...context, dockerignore: ['*.log'] } }),
      key({}, { context: { ...context, dir: '/other' } }),
      key({}, { outputs: [{ type: 'image', names: ['docker.io/library/k:2'] }] }),
    ];
    assert.equal(new Set([base, ...changed]).size, changed.length + 1);
  });

  test('builds the memo must not answer are never memoised', async () => {
    const dir = await contextDir('ctx-never', 'never\n');
    await build(dir, { noCache: true });
    assert.equal((await build(dir, { noCache: true })).outcome.memo, undefined, '--no-cache');
    await build(dir, { secrets: { s: new TextEncoder().encode('x') } });
    assert.equal(
      (await build(dir, { secrets: { s: new TextEncoder().encode('x') } })).outcome.memo,
      undefined,
      'secrets',
    );
    const tar = path.join(base, 'never.tar');
    await build(dir, { outputs: [`type=tar,dest=${tar}`], tags: [] });
    assert.equal(
      (await build(dir, { outputs: [`type=tar,dest=${tar}`], tags: [] })).outcome.memo,
      undefined,
      'tar output',
    );

    // An image whose config takes its time from the clock (no layer to take it from) would differ.
    const clock = path.join(base, 'ctx-clock');
    await mkdir(clock, { recursive: true });
    await writeFile(path.join(clock, 'Dockerfile'), 'FROM scratch\nENV A=1\n');
    const c1 = await build(clock, { tags: ['clock:1'] });
    const c2 = await build(clock, { tags: ['clock:1'] });
    assert.equal(c2.outcome.memo, undefined, 'clock');
    assert.notEqual(c2.outcome.imageId, c1.outcome.imageId);
  });
});
