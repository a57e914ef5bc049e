import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { parseGroup, parsePasswd, resolveUser, resolveUserInRootfs } from '../../src/core/runtime/user.ts';

const PASSWD = [
  'root:x:0:0:root:/root:/bin/sh',
  '# a comment',
  '',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  'app:x:1000:1000:App User,,,:/home/app:/bin/bash',
  'broken:x:notanumber:1::/:/bin/sh',
  'short:x:5',
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false',
].join('\n');

const GROUP = [
  'root:x:0:',
  'daemon:x:1:',
  'wheel:x:10:app,other',
  'audio:x:29: app ',
  'app:x:1000:',
  'staff:x:50:other',
  'bad:x:x:app',
  'nogroup:x:65534:',
].join('\n');

void describe('passwd and group parsing', () => {
  void test('parses entries and skips comments, blank and malformed lines', () => {
    const p = parsePasswd(PASSWD);
    assert.deepEqual(
      p.map((e) => e.name),
      ['root', 'daemon', 'app', 'nobody'],
    );
    assert.deepEqual(p[2], { name: 'app', uid: 1000, gid: 1000, home: '/home/app', shell: '/bin/bash' });
    const g = parseGroup(GROUP);
    assert.deepEqual(
      g.map((e) => e.name),
      ['root', 'daemon', 'wheel', 'audio', 'app', 'staff', 'nogroup'],
    );
    assert.deepEqual(g[2].members, ['app', 'other']);
    assert.deepEqual(g[3].members, ['app']);
    assert.deepEqual(g[0].members, []);
  });
});

void describe('resolveUser', () => {
  const passwd = parsePasswd(PASSWD);
  const groups = parseGroup(GROUP);
  const r = (s: string) => resolveUser(s, passwd, groups);

  void test('empty means root with its home', () => {
    assert.deepEqual(r(''), { uid: 0, gid: 0, additionalGids: [], home: '/root', name: 'root' });
  });

  void test('a name takes uid, gid, home from passwd and supplementary groups from group', () => {
    assert.deepEqual(r('app'), {
      uid: 1000,
      gid: 1000,
      additionalGids: [10, 29],
      home: '/home/app',
      name: 'app',
    });
  });

  void test('a uid present in passwd is resolved like its name', () => {
    assert.deepEqual(r('1000'), r('app'));
  });

  void test('a numeric uid absent from passwd is accepted with gid 0 and home /', () => {
    assert.deepEqual(r('4242'), { uid: 4242, gid: 0, additionalGids: [], home: '/' });
  });

  void test('uid:gid is accepted even when neither exists', () => {
    assert.deepEqual(r('4242:4343'), { uid: 4242, gid: 4343, additionalGids: [], home: '/' });
  });

  void test('name:group resolves the group by name and drops supplementary groups', () => {
    assert.deepEqual(r('app:staff'), {
      uid: 1000,
      gid: 50,
      additionalGids: [],
      home: '/home/app',
      name: 'app',
    });
    assert.deepEqual(r('nobody:10'), {
      uid: 65534,
      gid: 10,
      additionalGids: [],
      home: '/nonexistent',
      name: 'nobody',
    });
  });

  void test('unknown names fail with docker-style messages', () => {
    assert.throws(
      () => r('ghost'),
      (err: unknown) =>
        isKilnError(err, 'NotFound') &&
        err.message === 'unable to find user ghost: no matching entries in passwd file',
    );
    assert.throws(
      () => r('app:ghosts'),
      (err: unknown) =>
        isKilnError(err, 'NotFound') &&
        err.message === 'unable to find group ghosts: no matching entries in group file',
    );
  });

  void test('the primary group is not repeated among supplementary groups', () => {
    const g = parseGroup('app:x:1000:app\nwheel:x:10:app\n');
    assert.deepEqual(resolveUser('app', passwd, g).additionalGids, [10]);
  });
});

void describe('resolveUserInRootfs', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'kiln-user-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  void test('reads etc/passwd and etc/group from the rootfs', async () => {
    await mkdir(path.join(dir, 'etc'));
    await writeFile(path.join(dir, 'etc/passwd'), PASSWD);
    await writeFile(path.join(dir, 'etc/group'), GROUP);
    assert.deepEqual((await resolveUserInRootfs(dir, 'app')).additionalGids, [10, 29]);
  });

  void test('a rootfs without databases accepts numeric ids only', async () => {
    const empty = path.join(dir, 'empty');
    await mkdir(empty);
    assert.deepEqual(await resolveUserInRootfs(empty, '7:8'), {
      uid: 7,
      gid: 8,
      additionalGids: [],
      home: '/',
    });
    await assert.rejects(resolveUserInRootfs(empty, 'nobody'), /unable to find user nobody/);
  });
});
