import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import {
  familiarName,
  parseReference,
  referenceObject,
  withTagDigest,
} from '../../src/core/images/reference.ts';

const D = `sha256:${'ab'.repeat(32)}`;

void test('normalizes docker hub short names', () => {
  const r = parseReference('busybox');
  assert.deepEqual(r, {
    domain: 'docker.io',
    path: 'library/busybox',
    name: 'docker.io/library/busybox',
    tag: 'latest',
    familiar: 'busybox:latest',
    full: 'docker.io/library/busybox:latest',
  });
  assert.equal(parseReference('user/app:1.0').full, 'docker.io/user/app:1.0');
  assert.equal(parseReference('user/app:1.0').familiar, 'user/app:1.0');
  assert.equal(parseReference('docker.io/busybox').full, 'docker.io/library/busybox:latest');
  assert.equal(parseReference('index.docker.io/library/busybox:1').full, 'docker.io/library/busybox:1');
  assert.equal(familiarName(parseReference('docker.io/library/a/b')), 'library/a/b');
});

void test('domains with port, localhost, uppercase host and IPv6', () => {
  const r = parseReference('localhost:5000/a/b:tag');
  assert.equal(r.domain, 'localhost:5000');
  assert.equal(r.path, 'a/b');
  assert.equal(r.tag, 'tag');
  assert.equal(r.familiar, 'localhost:5000/a/b:tag');
  assert.equal(parseReference('localhost/x').domain, 'localhost');
  assert.equal(parseReference('Registry.Example.com/x').domain, 'Registry.Example.com');
  assert.equal(parseReference('[::1]:5000/x:t').domain, '[::1]:5000');
  assert.equal(parseReference('quay.io/org/img').full, 'quay.io/org/img:latest');
  // a first segment without "." or ":" is a path, not a host
  assert.equal(parseReference('foo/bar').domain, 'docker.io');
});

void test('digests, and tag plus digest', () => {
  const r = parseReference(`host:5000/x@${D}`);
  assert.equal(r.digest, D);
  assert.equal(r.tag, undefined);
  assert.equal(r.full, `host:5000/x@${D}`);
  assert.equal(referenceObject(r), D);
  const both = parseReference(`busybox:1.36@${D}`);
  assert.equal(both.tag, '1.36');
  assert.equal(both.digest, D);
  assert.equal(both.full, `docker.io/library/busybox:1.36@${D}`);
  assert.equal(both.familiar, `busybox:1.36@${D}`);
  assert.equal(referenceObject(both), D);
  assert.equal(withTagDigest(both, 'v2', undefined).full, 'docker.io/library/busybox:v2');
});

void test('path component separators', () => {
  for (const ok of ['a.b/c_d', 'a__b/c', 'a---b', 'x/y/z/w', 'a-b.c_d']) {
    assert.doesNotThrow(() => parseReference(ok), ok);
  }
  for (const bad of ['a..b', 'a___b', '-a', 'a-', 'a/', '/a', 'a//b', 'a_.b']) {
    assert.throws(() => parseReference(bad), /invalid reference/, bad);
  }
});

function rejects(value: string, re: RegExp): void {
  assert.throws(
    () => parseReference(value),
    (err: unknown) => {
      assert.ok(isKilnError(err, 'InvalidArgument'), String(err));
      assert.ok(err.message.includes(`"${value}"`), `message quotes the value: ${err.message}`);
      assert.match(err.message, re);
      return true;
    },
  );
}

void test('clear errors that quote the value', () => {
  rejects('', /empty/);
  rejects('Busybox', /must be lowercase/);
  rejects('example.com/Foo/bar:1', /"Foo\/bar" must be lowercase/);
  rejects('busybox:bad/tag!', /bad/);
  rejects('busybox:.bad', /bad tag "\.bad"/);
  rejects(`busybox:${'a'.repeat(129)}`, /bad tag/);
  rejects('busybox@sha256:1234', /bad digest "sha256:1234"/);
  rejects(`busybox@md5:${'a'.repeat(32)}`, /bad digest/);
  rejects(`busybox@sha256:${'AB'.repeat(32)}`, /bad digest/);
  rejects('a'.repeat(64), /image ID/);
  rejects(':tag', /empty/);
  rejects('exa_mple.com:5000/x', /bad registry domain/);
  rejects(`example.com/${'a'.repeat(250)}`, /longer than 255/);
});
