/**
 * The worker's definition loading (vertex digests, names, inputs, options)
 * and its scratch and result-loading edges, without execs.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { image, local, marshal, mkdir, parseDefinition, scratch } from '../../src/llb/index.ts';
import { mountAll } from '../../src/core/mount/mount.ts';
import { readMountinfo } from '../../src/core/mount/mountinfo.ts';
import { runDirFor } from '../../src/core/rundir.ts';
import { SCRATCH } from '../../src/ops/refs.ts';
import { type Fixture, makeFixture } from './fixture.ts';

let fx: Fixture;
before(async () => {
  fx = await makeFixture();
});
after(async () => {
  await fx?.close();
});

test('loadDefinition builds vertices with op digests, readable names and options', () => {
  const w = fx.worker();
  const st = image('busybox')
    .run({ shell: 'make all', ignoreCache: true })
    .root()
    .file(mkdir('/out', 0o755).copy(local('ctx'), '/src', '/out/src'), { description: 'COPY src' });
  const def = marshal(st);
  const edge = w.loadDefinition(def);
  assert.ok(edge);
  const graph = parseDefinition(def);
  assert.equal(edge.vertex.digest, graph.output?.digest);
  assert.equal(edge.vertex.name, 'COPY src', 'the custom name wins');
  const exec = edge.vertex.inputs.find((e) => e.vertex.name.startsWith('exec'))?.vertex;
  assert.equal(exec?.name, 'exec /bin/sh -c make all');
  assert.equal(exec?.options.ignoreCache, true);
  assert.equal(exec?.inputs[0]?.vertex.name, 'docker-image://docker.io/library/busybox:latest');
  assert.ok(edge.vertex.inputs.some((e) => e.vertex.name === 'local://ctx'));
  for (const v of graph.vertices) assert.ok(v.digest.startsWith('sha256:'));
});

test('an empty definition solves to scratch; unknown result ids are refused', async () => {
  const w = fx.worker();
  assert.equal(w.loadDefinition(marshal(scratch())), undefined);
  assert.equal(await w.solveDefinition(marshal(scratch())), SCRATCH);
  await assert.rejects(w.loadResult('kiln-result-nope'), /no committed snapshot/);
  const r = await w.loadResult('busybox-base');
  assert.equal(r.id, 'busybox-base');
  await r.release();
});

test('a missing local directory names the source', async () => {
  const w = fx.worker();
  await assert.rejects(
    w.solveDefinition(marshal(local('absent'))),
    /local source "absent": not provided by the session/,
  );
});

test('recover unmounts and removes bundles left by a crashed process (and where bundles were kept before)', async () => {
  const w = fx.worker();
  const dirs = [path.join(runDirFor(fx.root), 'bundles'), path.join(fx.root, 'ops', 'bundles')];
  for (const bundles of dirs) {
    const stale = path.join(bundles, 'stale', 'secrets');
    await fs.mkdir(stale, { recursive: true });
    await mountAll([{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }], stale);
    await fs.writeFile(path.join(stale, 's'), 'secret');
  }
  await w.recover();
  for (const bundles of dirs) {
    assert.equal((await readMountinfo()).filter((m) => m.mountPoint.startsWith(bundles)).length, 0);
    await assert.rejects(fs.stat(bundles), /ENOENT/);
  }
});

test('prune removes cache records and their result snapshots; the next solve runs again', async () => {
  const w = fx.worker();
  const def = marshal(scratch().file(mkdir('/pruned', 0o755)));
  const r1 = await w.solveDefinition(def);
  const id = r1.id;
  await r1.release();
  const kept = await w.prune({ olderThanMs: 3_600_000 });
  assert.deepEqual(kept, [], 'recent records are kept');
  const removed = await w.prune();
  assert.ok(removed.includes(id), removed.join(' '));
  await assert.rejects((await fx.core.snapshotter()).stat(id), /not found/);
  assert.deepEqual(await w.cache.list(), []);
  const r2 = await w.solveDefinition(def);
  assert.notEqual(r2.id, id, 'solved again into a new result');
  await r2.release();
});
