// The metadata layer on a real state directory: SQLite schema and
// transactions, namespaces, namespaced content over the real local store
// (one blob on disk shared by namespaces), images, leases, and the
// namespaced snapshotter over the real native driver.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import type { ContentStore } from '../../src/core/content/types.ts';
import { type Digest, sha256 } from '../../src/core/digest.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { MetadataDB, MIGRATIONS, SCHEMA_VERSION } from '../../src/core/metadata/db.ts';
import { type Core, openCore } from '../../src/core/metadata/index.ts';
import { NamespaceStore, validateNamespace } from '../../src/core/metadata/namespaces.ts';

function code(c: string, re?: RegExp): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isKilnError(err, c as never), `want KilnError ${c}, got ${String(err)}`);
    if (re) assert.match((err as Error).message, re);
    return true;
  };
}

async function put(store: ContentStore, ref: string, data: string, labels?: Record<string, string>) {
  const w = await store.writer({ ref });
  await w.write(new TextEncoder().encode(data));
  return w.commit({ labels });
}

async function readAll(store: ContentStore, d: Digest): Promise<string> {
  const parts: Uint8Array[] = [];
  for await (const c of store.read(d)) parts.push(c);
  return Buffer.concat(parts).toString('utf8');
}

async function digests(store: ContentStore): Promise<string[]> {
  const out: string[] = [];
  await store.walk((i) => {
    out.push(i.digest);
  });
  return out.sort();
}

let tmp: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-metadata-'));
});
after(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

void describe('metadata database', () => {
  void it('creates metadata.db in WAL mode at the current schema version, and reopens it', async () => {
    const root = path.join(tmp, 'db1');
    const db = new MetadataDB(root);
    assert.equal(db.version, SCHEMA_VERSION);
    assert.equal(db.get<{ journal_mode: string }>('PRAGMA journal_mode')!.journal_mode, 'wal');
    assert.equal(db.get<{ foreign_keys: number }>('PRAGMA foreign_keys')!.foreign_keys, 1);
    new NamespaceStore(db).create('kept');
    db.close();
    // A second open finds the data and applies no migration twice.
    const again = new MetadataDB(root);
    assert.equal(again.version, SCHEMA_VERSION);
    assert.deepEqual(
      new NamespaceStore(again).list().map((n) => n.name),
      ['kept'],
    );
    assert.equal(again.all('SELECT * FROM schema_version').length, SCHEMA_VERSION);
    again.close();
    await fs.access(path.join(root, 'metadata.db'));
  });

  void it('keeps a commit through a SIGKILL and leaves no WAL to replay after close', async () => {
    const root = path.join(tmp, 'db-durable');
    new MetadataDB(root).close();
    // A child commits (synchronous=NORMAL: no fsync) and is killed before it closes anything.
    const child = [
      `import { MetadataDB } from ${JSON.stringify(path.join(import.meta.dirname, '../../src/core/metadata/db.ts'))};`,
      `import { NamespaceStore } from ${JSON.stringify(path.join(import.meta.dirname, '../../src/core/metadata/namespaces.ts'))};`,
      `const db = new MetadataDB(${JSON.stringify(root)});`,
      `new NamespaceStore(db).create('committed-then-killed');`,
      `process.kill(process.pid, 'SIGKILL');`,
    ].join('\n');
    assert.throws(() =>
      execFileSync(process.execPath, ['--input-type=module', '-e', child], { stdio: 'pipe' }),
    );
    const db = new MetadataDB(root);
    assert.equal(db.get<{ synchronous: number }>('PRAGMA synchronous')!.synchronous, 1, 'NORMAL');
    assert.deepEqual(
      new NamespaceStore(db).list().map((n) => n.name),
      ['committed-then-killed'],
    );
    new NamespaceStore(db).create('second');
    db.close();
    // close() checkpointed: every commit is in the database file, the WAL is gone or empty.
    const wal = await fs.stat(path.join(root, 'metadata.db-wal')).catch(() => undefined);
    assert.ok(!wal || wal.size === 0, `WAL left with ${wal?.size} bytes`);
    const raw = new DatabaseSync(path.join(root, 'metadata.db'), { readOnly: true });
    assert.equal((raw.prepare('SELECT count(*) AS n FROM namespaces').get() as { n: number }).n, 2);
    raw.close();
  });

  void it('migrates a version 2 database to 3 keeping its snapshot records; one driver key may then have several records', () => {
    const root = path.join(tmp, 'db-v2');
    execFileSync('mkdir', ['-p', root]);
    const raw = new DatabaseSync(path.join(root, 'metadata.db'));
    raw.exec('CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
    for (const [i, sql] of MIGRATIONS.slice(0, 2).entries()) {
      raw.exec(sql);
      raw.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, 0)').run(i + 1);
    }
    raw.exec(`INSERT INTO namespaces (name, created_at, updated_at) VALUES ('ns', 1, 1);
      INSERT INTO snapshots (ns, snapshotter, name, backend_key, parent, kind, labels, created_at, updated_at)
        VALUES ('ns', 'overlayfs', 'base', 'ns/1/base', NULL, 'committed', '{"a":"b"}', 1, 2);`);
    assert.throws(() =>
      raw.exec(`INSERT INTO snapshots (ns, snapshotter, name, backend_key, kind, created_at, updated_at)
        VALUES ('ns', 'overlayfs', 'alias', 'ns/1/base', 'committed', 1, 1)`),
    );
    raw.close();
    const db = new MetadataDB(root);
    try {
      assert.equal(db.version, 3);
      assert.deepEqual(
        db
          .all('SELECT name, backend_key, labels, created_at, updated_at FROM snapshots')
          .map((r) => ({ ...(r as object) })),
        [{ name: 'base', backend_key: 'ns/1/base', labels: '{"a":"b"}', created_at: 1, updated_at: 2 }],
      );
      db.run(`INSERT INTO snapshots (ns, snapshotter, name, backend_key, kind, created_at, updated_at)
        VALUES ('ns', 'overlayfs', 'alias', 'ns/1/base', 'committed', 1, 1)`);
      assert.equal(db.all("SELECT 1 FROM snapshots WHERE backend_key = 'ns/1/base'").length, 2);
    } finally {
      db.close();
    }
  });

  void it('refuses a database from a newer kiln', async () => {
    const root = path.join(tmp, 'db-newer');
    new MetadataDB(root).close();
    const raw = new DatabaseSync(path.join(root, 'metadata.db'));
    raw.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(SCHEMA_VERSION + 5, 0);
    raw.close();
    assert.throws(() => new MetadataDB(root), code('InvalidArgument', /newer than this kiln/));
  });

  void it('rolls a transaction back when fn throws, nested ones as savepoints', () => {
    const db = new MetadataDB(path.join(tmp, 'db2'));
    const ns = new NamespaceStore(db);
    assert.throws(() =>
      db.transaction(() => {
        ns.create('one');
        throw new Error('boom');
      }),
    );
    assert.deepEqual(ns.list(), []);
    db.transaction(() => {
      ns.create('outer');
      assert.throws(() =>
        db.transaction(() => {
          ns.create('inner');
          throw new Error('inner fails');
        }),
      );
    });
    assert.deepEqual(
      ns.list().map((n) => n.name),
      ['outer'],
    );
    assert.equal(db.sqlite.isTransaction, false);
    db.close();
  });

  void it('makes a second connection wait for the write lock (BEGIN IMMEDIATE)', () => {
    const root = path.join(tmp, 'db3');
    const a = new MetadataDB(root);
    const b = new MetadataDB(root, { busyTimeout: 50 });
    a.sqlite.exec('BEGIN IMMEDIATE');
    assert.throws(() => new NamespaceStore(b).create('blocked'), /locked|busy/i);
    a.sqlite.exec('ROLLBACK');
    new NamespaceStore(b).create('now-ok');
    assert.deepEqual(
      new NamespaceStore(a).list().map((n) => n.name),
      ['now-ok'],
    );
    a.close();
    b.close();
  });
});

void describe('namespaces', () => {
  void it('validates names like containerd', () => {
    for (const ok of ['default', 'a', 'k8s.io', 'my-ns_2', 'a.b-c_d', 'x'.repeat(76)]) validateNamespace(ok);
    for (const bad of ['', 'Upper', 'a..b', '-a', 'a-', 'a/b', 'a b', 'x'.repeat(77), 'é']) {
      assert.throws(() => validateNamespace(bad), code('InvalidArgument', /invalid namespace/), bad);
    }
    assert.throws(() => validateNamespace('x'.repeat(77)), /longer than 76 characters/);
  });

  void it('creates, lists, gets, labels and deletes namespaces', () => {
    const db = new MetadataDB(path.join(tmp, 'ns1'));
    const ns = new NamespaceStore(db);
    const created = ns.create('team-a', { owner: 'alice' });
    assert.deepEqual(created.labels, { owner: 'alice' });
    ns.create('team-b');
    assert.throws(() => ns.create('team-a'), code('AlreadyExists', /namespace "team-a"/));
    assert.deepEqual(
      ns.list().map((n) => n.name),
      ['team-a', 'team-b'],
    );
    assert.deepEqual(ns.update('team-a', { tier: 'gold' }, ['labels.tier']).labels, {
      owner: 'alice',
      tier: 'gold',
    });
    assert.equal(ns.ensure('team-b').name, 'team-b');
    ns.delete('team-b');
    assert.throws(() => ns.get('team-b'), code('NotFound'));
    assert.throws(() => ns.delete('team-b'), code('NotFound'));
    db.close();
  });

  void it('refuses to delete a namespace that still holds content, images, leases or snapshots', async (t) => {
    const core = await openCore({ root: path.join(tmp, 'ns2'), namespace: 'busy', snapshotter: 'native' });
    t.after(() => core.close());
    const d = await put(core.content, 'r', 'held');
    assert.throws(
      () => core.namespaces.delete('busy'),
      code('FailedPrecondition', /not empty \(1 content\)/),
    );
    core.images.create({
      name: 'img',
      target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d, size: 4 },
    });
    core.leases.create({ id: 'l' });
    const sn = await core.snapshotter();
    await sn.prepare('s');
    assert.throws(
      () => core.namespaces.delete('busy'),
      code('FailedPrecondition', /1 content, 1 snapshots, 1 images, 1 leases/),
    );
    await core.content.delete(d);
    core.images.delete('img');
    core.leases.delete('l');
    await sn.remove('s');
    core.namespaces.delete('busy');
    assert.throws(() => core.namespaces.get('busy'), code('NotFound'));
    // Writing into it again brings it back, as containerd does.
    await put(core.content, 'r2', 'again');
    assert.equal(core.namespaces.get('busy').name, 'busy');
  });
});

void describe('namespaced content', () => {
  let core: Core;
  let other: Core;
  before(async () => {
    core = await openCore({ root: path.join(tmp, 'content'), namespace: 'ns-a', snapshotter: 'native' });
    other = core.withNamespace('ns-b');
  });
  after(() => core.close());

  void it('keeps one blob on disk and one record per namespace', async () => {
    const d = await put(core.content, 'ref-1', 'shared bytes', { who: 'a' });
    assert.deepEqual(await digests(other.content), []);
    await assert.rejects(other.content.info(d), code('NotFound', /namespace "ns-b"/));
    await assert.rejects(readAll(other.content, d), code('NotFound'));
    // The same bytes written in the other namespace: a record there, same blob file.
    const blob = path.join(core.root, 'content', 'blobs', 'sha256', d.slice(7));
    const before = await fs.stat(blob);
    assert.equal(await put(other.content, 'ref-1', 'shared bytes', { who: 'b' }), d);
    const afterStat = await fs.stat(blob);
    assert.equal(afterStat.ino, before.ino, 'the blob was not rewritten');
    assert.deepEqual((await core.content.info(d)).labels, { who: 'a' });
    assert.deepEqual((await other.content.info(d)).labels, { who: 'b' });
    assert.equal(core.db.all('SELECT * FROM content WHERE digest = ?', d).length, 2);
    const files = await fs.readdir(path.join(core.root, 'content', 'blobs', 'sha256'));
    assert.equal(files.filter((f) => f === d.slice(7)).length, 1);
  });

  void it('reads a whole blob only where the namespace records it, also once it is kept in memory', async () => {
    const d = await put(core.content, 'ref-mem', 'read by a');
    assert.equal(Buffer.from(await core.content.readBlob!(d, 100)).toString(), 'read by a');
    await assert.rejects(other.content.readBlob!(d, 100), code('NotFound', /namespace "ns-b"/));
    await core.content.delete(d);
    await assert.rejects(core.content.readBlob!(d, 100), code('NotFound', /namespace "ns-a"/));
  });

  void it('needs the bytes to add a blob another namespace has, and verifies them', async () => {
    const d = await put(core.content, 'ref-2', 'only in a');
    const w = await other.content.writer({ ref: 'copy', expected: d });
    await w.write(new TextEncoder().encode('not the same'));
    await assert.rejects(w.commit(), code('DataLoss'));
    await assert.rejects(other.content.info(d), code('NotFound'));
    // Right bytes: the record appears, the shared blob is still the original.
    const w2 = await other.content.writer({ ref: 'copy', expected: d });
    await w2.write(new TextEncoder().encode('only in a'));
    assert.equal(await w2.commit(), d);
    assert.equal((await other.content.info(d)).size, 9);
    assert.equal(await readAll(other.content, d), 'only in a');
    // Now it is in ns-b too: a writer expecting it is refused.
    await assert.rejects(other.content.writer({ ref: 'again', expected: d }), code('AlreadyExists'));
  });

  void it('namespaces ingest refs', async () => {
    const wa = await core.content.writer({ ref: 'same-ref' });
    const wb = await other.content.writer({ ref: 'same-ref' }); // not "in use": another namespace
    await wa.write(new TextEncoder().encode('aaa'));
    await wb.write(new TextEncoder().encode('b'));
    assert.equal((await core.content.status('same-ref')).offset, 3);
    assert.equal((await other.content.status('same-ref')).offset, 1);
    await assert.rejects(
      core.content.writer({ ref: 'same-ref' }),
      code('Unavailable', /ref "same-ref" is in use/),
    );
    assert.deepEqual(
      (await core.content.listStatuses()).map((s) => s.ref),
      ['same-ref'],
    );
    const backendRefs = (await core.localContent.listStatuses()).map((s) => s.ref).sort();
    assert.deepEqual(backendRefs, ['ns-a/same-ref', 'ns-b/same-ref']);
    await wa.close();
    await wb.close();
    await core.content.abort('same-ref');
    await assert.rejects(core.content.status('same-ref'), code('NotFound'));
    assert.equal((await other.content.status('same-ref')).offset, 1);
    await other.content.abort('same-ref');
  });

  void it('deletes only the record; GC removes the blob once no namespace has it', async () => {
    // Both records are GC roots, so only the record deletions free the blob.
    const root = { 'containerd.io/gc.root': 'test' };
    const d = await put(core.content, 'del-1', 'deleted twice', root);
    await put(other.content, 'del-1', 'deleted twice', root);
    await core.content.delete(d);
    await assert.rejects(core.content.info(d), code('NotFound'));
    await assert.rejects(core.content.delete(d), code('NotFound'));
    assert.equal(await readAll(other.content, d), 'deleted twice');
    let res = await core.gc();
    assert.ok(!res.removed.blobs.includes(d), 'blob kept while ns-b records it');
    assert.equal((await core.localContent.info(d)).size, 13);
    await other.content.delete(d);
    res = await core.gc();
    assert.ok(res.removed.blobs.includes(d));
    await assert.rejects(core.localContent.info(d), code('NotFound'));
  });

  void it('updates and filters labels per namespace', async () => {
    const d = await put(core.content, 'lab', 'labelled', { a: '1' });
    await put(other.content, 'lab', 'labelled', { a: '2' });
    assert.deepEqual((await core.content.update({ digest: d, labels: { b: 'x' } }, ['labels.b'])).labels, {
      a: '1',
      b: 'x',
    });
    assert.deepEqual((await other.content.info(d)).labels, { a: '2' });
    const found: string[] = [];
    await core.content.walk(
      (i) => {
        found.push(i.digest);
      },
      ['labels.b==x'],
    );
    assert.deepEqual(found, [d]);
    await assert.rejects(
      core.content.update({ digest: sha256('nope'), labels: {} }),
      code('NotFound', /not found in namespace "ns-a"/),
    );
  });
});

void describe('images', () => {
  let core: Core;
  before(async () => {
    core = await openCore({ root: path.join(tmp, 'images'), namespace: 'default', snapshotter: 'native' });
  });
  after(() => core.close());
  const target = (s: string) => ({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    digest: sha256(s),
    size: s.length,
  });

  void it('creates, gets, lists with filters, updates and deletes image records', () => {
    const a = core.images.create({
      name: 'docker.io/library/a:1',
      target: target('a'),
      labels: { tier: 'x' },
    });
    assert.equal(a.target.digest, sha256('a'));
    core.images.create({
      name: 'docker.io/library/b:1',
      target: { ...target('b'), annotations: { 'org.opencontainers.image.ref.name': '1' } },
    });
    assert.throws(
      () => core.images.create({ name: 'docker.io/library/a:1', target: target('a') }),
      code('AlreadyExists'),
    );
    assert.throws(
      () => core.images.create({ name: 'bad', target: { ...target('c'), digest: 'sha256:xyz' as Digest } }),
      code('InvalidArgument', /invalid target digest "sha256:xyz"/),
    );
    assert.deepEqual(core.images.get('docker.io/library/b:1').target.annotations, {
      'org.opencontainers.image.ref.name': '1',
    });
    assert.deepEqual(
      core.images.list().map((i) => i.name),
      ['docker.io/library/a:1', 'docker.io/library/b:1'],
    );
    assert.deepEqual(
      core.images.list([`target.digest==${sha256('b')}`]).map((i) => i.name),
      ['docker.io/library/b:1'],
    );
    assert.deepEqual(
      core.images.list(['labels.tier==x', 'name~=b:1$']).map((i) => i.name),
      ['docker.io/library/a:1', 'docker.io/library/b:1'],
    );
    const up = core.images.update({ name: 'docker.io/library/a:1', target: target('a2') }, ['target']);
    assert.equal(up.target.digest, sha256('a2'));
    assert.deepEqual(up.labels, { tier: 'x' });
    assert.ok(up.updatedAt.getTime() >= a.updatedAt.getTime());
    const up2 = core.images.update({ name: 'docker.io/library/a:1', labels: { tier: '' } }, ['labels.tier']);
    assert.deepEqual(up2.labels, {});
    // Another namespace does not see them.
    assert.deepEqual(core.withNamespace('other').images.list(), []);
    core.images.delete('docker.io/library/a:1');
    assert.throws(() => core.images.get('docker.io/library/a:1'), code('NotFound'));
    assert.throws(() => core.images.delete('docker.io/library/a:1'), code('NotFound'));
  });
});

void describe('leases', () => {
  let core: Core;
  before(async () => {
    core = await openCore({ root: path.join(tmp, 'leases'), namespace: 'default', snapshotter: 'native' });
  });
  after(() => core.close());

  void it('creates, lists, deletes leases and manages their resources', () => {
    const l = core.leases.create({ id: 'build-1', labels: { purpose: 'test' }, ttlMs: 60_000 });
    assert.ok(l.expiresAt && l.expiresAt.getTime() > Date.now());
    const gen = core.leases.create();
    assert.match(gen.id, /^[a-z0-9]+-[a-f0-9]{12}$/);
    assert.equal(gen.expiresAt, undefined);
    assert.throws(() => core.leases.create({ id: 'build-1' }), code('AlreadyExists'));
    assert.deepEqual(
      core.leases.list(['labels.purpose==test']).map((x) => x.id),
      ['build-1'],
    );
    core.leases.addResource('build-1', { type: 'content', id: sha256('x') });
    core.leases.addResource('build-1', { type: 'snapshots/native', id: 'key' });
    core.leases.addResource('build-1', { type: 'ingests', id: 'ref' });
    core.leases.addResource('build-1', { type: 'content', id: sha256('x') }); // idempotent
    assert.deepEqual(core.leases.listResources('build-1'), [
      { type: 'content', id: sha256('x') },
      { type: 'ingests', id: 'ref' },
      { type: 'snapshots/native', id: 'key' },
    ]);
    core.leases.removeResource('build-1', { type: 'ingests', id: 'ref' });
    assert.equal(core.leases.listResources('build-1').length, 2);
    assert.throws(
      () => core.leases.addResource('build-1', { type: 'bogus' as 'content', id: 'x' }),
      code('InvalidArgument', /unknown resource type "bogus"/),
    );
    assert.throws(() => core.leases.addResource('nope', { type: 'content', id: 'x' }), code('NotFound'));
    assert.deepEqual(core.withNamespace('elsewhere').leases.list(), []);
    core.leases.delete('build-1');
    assert.throws(() => core.leases.get('build-1'), code('NotFound'));
    assert.equal(core.db.all("SELECT * FROM lease_resources WHERE lease = 'build-1'").length, 0);
  });
});

void describe('namespaced snapshotter (native driver)', () => {
  let core: Core;
  before(async () => {
    core = await openCore({ root: path.join(tmp, 'snap'), namespace: 'sa', snapshotter: 'native' });
  });
  after(() => core.close());

  void it('keeps keys per namespace over one driver', async () => {
    const a = await core.snapshotter();
    const b = await core.withNamespace('sb').snapshotter('native');
    const ma = await a.prepare('work', undefined, { labels: { x: '1' } });
    await b.prepare('work');
    assert.equal((await a.stat('work')).kind, 'active');
    assert.deepEqual((await a.stat('work')).labels, { x: '1' });
    assert.deepEqual((await b.stat('work')).labels, {});
    // The driver sees two distinct keys, `<ns>/<seq>/<key>`.
    const keys: string[] = [];
    const driver = (a as unknown as { name: string }).name;
    assert.equal(driver, 'native');
    const rows = core.db.all<{ backend_key: string }>('SELECT backend_key FROM snapshots ORDER BY ns');
    for (const r of rows) keys.push(r.backend_key);
    assert.equal(keys.length, 2);
    assert.match(keys[0]!, /^sa\/\d+\/work$/);
    assert.match(keys[1]!, /^sb\/\d+\/work$/);
    // Mounts point at the driver's directories; writing through them works.
    assert.equal(ma.length, 1);
    const src = ma[0]!.source;
    await fs.writeFile(path.join(src, 'hello'), 'from a');
    await a.commit('base', 'work', { labels: { committed: 'yes' } });
    await assert.rejects(a.stat('work'), code('NotFound'));
    const base = await a.stat('base');
    assert.equal(base.kind, 'committed');
    assert.deepEqual(base.labels, { committed: 'yes' });
    await assert.rejects(b.stat('base'), code('NotFound'));
    await assert.rejects(b.prepare('child', 'base'), code('NotFound', /parent "base" not found/));
    const u = await a.usage('base');
    assert.ok(u.inodes >= 2);
    const mv = await a.view('look', 'base');
    const viewSrc = mv[0]!.source;
    assert.equal(await fs.readFile(path.join(viewSrc, 'hello'), 'utf8'), 'from a');
    const listed: string[] = [];
    await a.walk((i) => {
      listed.push(`${i.name}:${i.kind}:${i.parent ?? ''}`);
    });
    assert.deepEqual(listed, ['base:committed:', 'look:view:base']);
    const filtered: string[] = [];
    await a.walk(
      (i) => {
        filtered.push(i.name);
      },
      ['kind==view'],
    );
    assert.deepEqual(filtered, ['look']);
    await a.remove('look');
    await a.remove('base');
    await b.remove('work');
    const left: string[] = [];
    await (await core.snapshotter()).walk((i) => {
      left.push(i.name);
    });
    assert.deepEqual(left, []);
    assert.equal(core.db.all('SELECT * FROM snapshots').length, 0);
  });

  void it('refuses to remove a snapshot with children', async () => {
    const s = await core.snapshotter();
    await s.prepare('p-work');
    await s.commit('parent', 'p-work');
    await s.prepare('c1', 'parent');
    await s.view('c2', 'parent');
    await assert.rejects(
      s.remove('parent'),
      code('FailedPrecondition', /cannot remove snapshot "parent": it has 2 children/),
    );
    await s.remove('c1');
    await assert.rejects(s.remove('parent'), code('FailedPrecondition', /has 1 child$/));
    await s.remove('c2');
    await s.remove('parent');
    await assert.rejects(s.stat('parent'), code('NotFound'));
  });

  void it('share records a committed snapshot as the same driver snapshot; the driver snapshot goes with the last record', async () => {
    const s = await core.snapshotter();
    const driverKeys = async (): Promise<string[]> => {
      const keys: string[] = [];
      await (await core.driver('native')).walk((i) => {
        keys.push(i.name);
      });
      return keys.sort();
    };
    const before = await driverKeys();
    const [bw] = await s.prepare('sh-base-w');
    await fs.writeFile(path.join(bw!.source, 'a'), 'base file');
    await s.commit('sh-base', 'sh-base-w');
    const [sw] = await s.prepare('sh-s1-w', 'sh-base');
    await fs.writeFile(path.join(sw!.source, 'b'), 'step file');
    await s.commit('sh-s1', 'sh-s1-w');
    const made = (await driverKeys()).filter((k) => !before.includes(k));
    assert.equal(made.length, 2);

    await s.share('sh-c0', 'sh-base', undefined, { labels: { chain: '0' } });
    await s.share('sh-c1', 'sh-s1', 'sh-c0', { labels: { chain: '1' } });
    assert.deepEqual(
      (await driverKeys()).filter((k) => !before.includes(k)),
      made,
      'no driver snapshot made',
    );
    const c1 = await s.stat('sh-c1');
    assert.deepEqual([c1.kind, c1.parent, c1.labels], ['committed', 'sh-c0', { chain: '1' }]);
    assert.deepEqual((await s.stat('sh-s1')).labels, {}, 'labels are per record');

    // The parent must stand for the source's parent; the source must be committed; names are unique.
    await assert.rejects(
      s.share('sh-x', 'sh-s1', undefined),
      code('FailedPrecondition', /not the same snapshot/),
    );
    await assert.rejects(
      s.share('sh-x', 'sh-s1', 'sh-s1'),
      code('FailedPrecondition', /not the same snapshot/),
    );
    await assert.rejects(
      s.share('sh-x', 'sh-base', 'sh-c0'),
      code('FailedPrecondition', /not the same snapshot/),
    );
    await assert.rejects(s.share('sh-c1', 'sh-s1', 'sh-c0'), code('AlreadyExists'));
    await assert.rejects(s.share('sh-x', 'sh-nope', undefined), code('NotFound'));
    await s.prepare('sh-active', 'sh-base');
    await assert.rejects(s.share('sh-x', 'sh-active', 'sh-c0'), code('FailedPrecondition', /is active/));
    await s.remove('sh-active');

    // The build's records go; the shared records keep the trees.
    await s.remove('sh-s1');
    await s.remove('sh-base');
    assert.deepEqual(
      (await driverKeys()).filter((k) => !before.includes(k)),
      made,
    );
    const [v] = await s.view('sh-look', 'sh-c1');
    assert.deepEqual(
      [
        await fs.readFile(path.join(v!.source, 'a'), 'utf8'),
        await fs.readFile(path.join(v!.source, 'b'), 'utf8'),
      ],
      ['base file', 'step file'],
    );
    await s.remove('sh-look');
    await assert.rejects(s.remove('sh-c0'), code('FailedPrecondition', /has 1 child/));
    await s.remove('sh-c1');
    await s.remove('sh-c0');
    assert.deepEqual(await driverKeys(), before, 'the last record took the driver snapshots with it');
  });

  void it('refuses duplicate keys, commits of non-active snapshots and uncommitted parents', async () => {
    const s = await core.snapshotter();
    await s.prepare('dup');
    await assert.rejects(s.prepare('dup'), code('AlreadyExists'));
    await assert.rejects(s.prepare('kid', 'dup'), code('InvalidArgument', /is active, not committed/));
    await s.commit('dup-c', 'dup');
    await s.view('v', 'dup-c');
    await assert.rejects(s.commit('v-c', 'v'), code('FailedPrecondition', /is view, not active/));
    await s.remove('v');
    await s.remove('dup-c');
    // A failed driver call leaves no record behind.
    assert.equal(core.db.all("SELECT * FROM snapshots WHERE name = 'kid'").length, 0);
  });
});

void describe('openCore', () => {
  void it('creates the state layout and the namespace on first use', async () => {
    const root = path.join(tmp, 'layout');
    const core = await openCore({ root, namespace: 'first', snapshotter: 'native' });
    try {
      assert.deepEqual(
        core.namespaces.list().map((n) => n.name),
        ['first'],
      );
      await put(core.content, 'r', 'layout');
      await (await core.snapshotter()).prepare('k');
      const entries = execFileSync('find', [root, '-maxdepth', '2'], { encoding: 'utf8' });
      assert.match(entries, /metadata\.db/);
      assert.match(entries, /content\/blobs/);
      assert.match(entries, /snapshots\/native/);
    } finally {
      await core.close();
    }
    await assert.rejects(
      openCore({ root, namespace: 'Bad Name' }),
      code('InvalidArgument', /invalid namespace/),
    );
  });
});
