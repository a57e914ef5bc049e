import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  formatPlatform,
  hostPlatform,
  normalizePlatform,
  parsePlatform,
  platformEquals,
  platformMatcher,
  selectManifest,
} from '../../src/core/images/platform.ts';
import type { Descriptor, Platform } from '../../src/core/images/types.ts';

void test('parse and normalize', () => {
  assert.deepEqual(parsePlatform('linux/arm64'), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.deepEqual(parsePlatform('linux/amd64'), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(parsePlatform('linux/arm/v7'), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(parsePlatform('linux/arm'), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(parsePlatform('linux/x86_64'), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(parsePlatform('linux/aarch64'), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.deepEqual(parsePlatform('Linux/ARM64/8'), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.deepEqual(parsePlatform('linux/armhf'), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(parsePlatform('linux/armel'), { os: 'linux', architecture: 'arm', variant: 'v6' });
  assert.deepEqual(parsePlatform('linux/i686'), { os: 'linux', architecture: '386' });
  assert.deepEqual(parsePlatform('amd64'), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(parsePlatform('linux'), hostPlatform());
  assert.equal(formatPlatform({ os: 'linux', architecture: 'aarch64' }), 'linux/arm64/v8');
  assert.equal(formatPlatform({ os: 'linux', architecture: 'amd64', variant: 'v1' }), 'linux/amd64');
  assert.equal(formatPlatform(normalizePlatform({ os: 'linux', architecture: 'riscv64' })), 'linux/riscv64');
  for (const bad of ['', 'linux/', 'a/b/c/d', 'plan10/amd64', 'linux/am d64']) {
    assert.throws(
      () => parsePlatform(bad),
      (e: Error) => e.message.includes(`"${bad}"`),
      bad,
    );
  }
});

void test('host platform matches what the machine reports', () => {
  const host = hostPlatform();
  assert.equal(host.os, 'linux');
  const arch = process.arch === 'x64' ? 'amd64' : process.arch;
  assert.equal(host.architecture, arch);
});

void test('equality treats arm64 without variant as v8', () => {
  assert.ok(
    platformEquals(
      { os: 'linux', architecture: 'arm64' },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    ),
  );
  assert.ok(
    !platformEquals(
      { os: 'linux', architecture: 'arm' },
      { os: 'linux', architecture: 'arm', variant: 'v6' },
    ),
  );
  assert.ok(
    !platformEquals({ os: 'linux', architecture: 'amd64' }, { os: 'windows', architecture: 'amd64' }),
  );
});

function desc(n: number, platform?: Platform): Descriptor {
  const d: Descriptor = {
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    digest: `sha256:${String(n).padStart(64, '0')}`,
    size: 100 + n,
  };
  if (platform) d.platform = platform;
  return d;
}

void test('select from an index: exact match, fallbacks, defaults', () => {
  const index = [
    desc(0, { os: 'unknown', architecture: 'unknown' }),
    desc(1, { os: 'linux', architecture: 'amd64' }),
    desc(2, { os: 'linux', architecture: 'arm', variant: 'v6' }),
    desc(3, { os: 'linux', architecture: 'arm', variant: 'v7' }),
    desc(4, { os: 'linux', architecture: 'arm64', variant: 'v8' }),
    desc(5, { os: 'linux', architecture: '386' }),
    desc(6),
  ];
  assert.equal(selectManifest(index, parsePlatform('linux/amd64'))?.digest, index[1]!.digest);
  assert.equal(selectManifest(index, { os: 'linux', architecture: 'arm64' })?.digest, index[4]!.digest);
  assert.equal(selectManifest(index, parsePlatform('linux/arm/v7'))?.digest, index[3]!.digest);
  // arm/v8 host: no v8 entry, falls back to the newest older variant
  assert.equal(selectManifest(index, parsePlatform('linux/arm/v8'))?.digest, index[3]!.digest);
  assert.equal(selectManifest(index, parsePlatform('linux/arm/v8'), { fallbacks: false }), undefined);
  assert.equal(selectManifest(index, parsePlatform('linux/s390x')), undefined);
  // arm64 without an arm64 entry can run 32-bit arm, best variant first
  const armOnly = index.filter((d) => d.platform?.architecture === 'arm');
  assert.equal(selectManifest(armOnly, parsePlatform('linux/arm64'))?.digest, index[3]!.digest);
  // amd64 falls back to 386
  assert.equal(selectManifest([index[5]!], parsePlatform('linux/amd64'))?.digest, index[5]!.digest);
  // default: the host's platform
  const host = hostPlatform();
  const hostEntry = index.find((d) => d.platform && platformEquals(d.platform, host));
  assert.equal(selectManifest(index)?.digest, hostEntry?.digest);
  // the first of equal candidates wins
  const twice = [
    desc(7, { os: 'linux', architecture: 'aarch64' }),
    desc(8, { os: 'linux', architecture: 'arm64' }),
  ];
  assert.equal(selectManifest(twice, parsePlatform('linux/arm64'))?.digest, twice[0]!.digest);
  const m = platformMatcher(parsePlatform('linux/arm/v7'));
  assert.ok(m.match({ os: 'linux', architecture: 'arm', variant: 'v5' }));
  assert.ok(!m.match({ os: 'linux', architecture: 'arm64' }));
});
