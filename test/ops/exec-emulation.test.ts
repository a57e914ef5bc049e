/**
 * Execs for a foreign platform (src/ops/emulation.ts and the exec op):
 *
 * - the binfmt_misc check on handler files written to a temp directory
 *   (Debian's qemu-aarch64 entry as the kernel shows it): native platforms
 *   pass, a matching handler with flag F passes, and a missing or disabled
 *   handler, one without F, or binfmt_misc disabled fail naming the
 *   platform and the `qemu-<arch>` handler;
 * - a real RUN on an arm64 busybox (Debian's busybox-static:arm64) with the
 *   exec's platform linux/arm64 prints `aarch64` through qemu-user (the
 *   handler is registered here when missing; skipped with the reason when
 *   that cannot be done);
 * - a RUN for a platform with no handler fails before running, naming it.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../src/core/errors.ts';
import { copy, image, local, marshal, scratch } from '../../src/llb/index.ts';
import { checkExecPlatform, elfHeader, handlerMatches, parseHandler } from '../../src/ops/emulation.ts';
import { arm64Busybox, ensureQemuAarch64 } from './exec-emulation-fixture.ts';
import { collect, type Fixture, logsOf, makeFixture } from './fixture.ts';

const QEMU_AARCH64 = `enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
`;

let tmp: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-binfmt-'));
});
after(async () => {
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

async function binfmtDir(name: string, status: string, handlers: Record<string, string>): Promise<string> {
  const dir = path.join(tmp, name);
  await fs.mkdir(dir);
  await fs.writeFile(path.join(dir, 'status'), `${status}\n`);
  await fs.writeFile(path.join(dir, 'register'), '');
  for (const [n, text] of Object.entries(handlers)) await fs.writeFile(path.join(dir, n), text);
  return dir;
}

describe('checkExecPlatform', () => {
  test('the qemu-aarch64 magic matches an arm64 ELF executable and not an amd64 one', () => {
    const h = parseHandler('qemu-aarch64', QEMU_AARCH64);
    assert.equal(h.flags, 'POF');
    assert.equal(h.interpreter, '/usr/libexec/qemu-binfmt/aarch64-binfmt-P');
    assert.ok(handlerMatches(h, elfHeader({ machine: 183, bits: 64, bigEndian: false, qemu: 'aarch64' })));
    assert.ok(!handlerMatches(h, elfHeader({ machine: 62, bits: 64, bigEndian: false, qemu: 'x86_64' })));
  });

  test('native platforms need no handler; arm64 passes with an enabled F handler', async () => {
    const none = await binfmtDir('none', 'enabled', {});
    await checkExecPlatform({ os: 'linux', architecture: 'amd64' }, { binfmtDir: none, hostArch: 'amd64' });
    await checkExecPlatform({ os: 'linux', architecture: '386' }, { binfmtDir: none, hostArch: 'amd64' });
    await checkExecPlatform(undefined, { binfmtDir: none, hostArch: 'amd64' });
    // The handler's file name does not matter: its magic does.
    const ok = await binfmtDir('ok', 'enabled', { 'any-name': QEMU_AARCH64 });
    await checkExecPlatform(
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
      { binfmtDir: ok, hostArch: 'amd64' },
    );
  });

  test('missing, disabled or F-less handlers and a disabled binfmt_misc name the platform and handler', async () => {
    const arm64 = { os: 'linux', architecture: 'arm64', variant: 'v8' };
    const cases: [string, Promise<string>, RegExp][] = [
      ['none', binfmtDir('missing', 'enabled', {}), /no enabled binfmt_misc handler "qemu-aarch64"/],
      [
        'disabled handler',
        binfmtDir('off', 'enabled', { 'qemu-aarch64': QEMU_AARCH64.replace('enabled', 'disabled') }),
        /no enabled binfmt_misc handler "qemu-aarch64"/,
      ],
      [
        'no F',
        binfmtDir('nof', 'enabled', { 'qemu-aarch64': QEMU_AARCH64.replace('flags: POF', 'flags: PO') }),
        /handler "qemu-aarch64" lacks the F flag/,
      ],
      [
        'binfmt off',
        binfmtDir('all-off', 'disabled', { 'qemu-aarch64': QEMU_AARCH64 }),
        /binfmt_misc is not mounted or disabled/,
      ],
    ];
    for (const [what, dir, re] of cases) {
      await assert.rejects(
        checkExecPlatform(arm64, { binfmtDir: await dir, hostArch: 'amd64' }),
        (err: unknown) => {
          assert.ok(isKilnError(err, 'FailedPrecondition'), `${what}: ${String(err)}`);
          assert.match((err as Error).message, /platform "linux\/arm64\/v8" on this linux\/amd64 host/);
          assert.match((err as Error).message, re, what);
          return true;
        },
      );
    }
    await assert.rejects(
      checkExecPlatform({ os: 'windows', architecture: 'amd64' }, { hostArch: 'amd64' }),
      /only linux processes can run/,
    );
  });
});

describe('foreign-platform execs', () => {
  let fx: Fixture;
  before(async () => {
    fx = await makeFixture();
  });
  after(async () => {
    await fx?.close();
  });

  test('RUN on an arm64 busybox prints aarch64 under qemu-user emulation', async (t) => {
    const why = await ensureQemuAarch64();
    if (why) return t.skip(why);
    const bb = await arm64Busybox();
    if ('skip' in bb) return t.skip(bb.skip);
    const rootfs = path.join(tmp, 'arm64-rootfs');
    await fs.mkdir(path.join(rootfs, 'bin'), { recursive: true });
    await fs.copyFile(bb.path, path.join(rootfs, 'bin/busybox'));
    await fs.chmod(path.join(rootfs, 'bin/busybox'), 0o755);
    for (const applet of ['sh', 'uname', 'echo'])
      await fs.symlink('busybox', path.join(rootfs, 'bin', applet));

    const w = fx.worker({ locals: { arm64: rootfs } });
    const st = scratch()
      .file(copy(local('arm64'), '/', '/', { copyDirContentsOnly: true }))
      .platform('linux/arm64')
      .run({ args: ['/bin/sh', '-c', 'echo "machine=$(uname -m)"'] })
      .root();
    const progress = collect();
    const r = await w.solveDefinition(marshal(st, { platform: 'linux/amd64' }), { progress });
    await r.release();
    assert.match(logsOf(progress.events), /^machine=aarch64$/m);
  });

  test('RUN for a platform without a handler fails before running, naming it', async (t) => {
    const candidates = [
      ['riscv64', 'qemu-riscv64'],
      ['s390x', 'qemu-s390x'],
      ['ppc64le', 'qemu-ppc64le'],
    ] as const;
    let pick: (typeof candidates)[number] | undefined;
    for (const c of candidates) {
      if (
        !(await fs.access(`/proc/sys/fs/binfmt_misc/${c[1]}`).then(
          () => true,
          () => false,
        ))
      ) {
        pick = c;
        break;
      }
    }
    if (!pick) return t.skip('every candidate architecture has a binfmt_misc handler here');
    const w = fx.worker();
    const st = image('busybox', { platform: 'linux/amd64' })
      .platform(`linux/${pick[0]}`)
      .run({ shell: 'echo SHOULD-NOT-RUN' })
      .root();
    const progress = collect();
    await assert.rejects(w.solveDefinition(marshal(st), { progress }), (err: Error) => {
      assert.match(err.message, new RegExp(`platform "linux/${pick[0]}"`));
      assert.match(err.message, new RegExp(`"${pick[1]}"`));
      return true;
    });
    assert.doesNotMatch(logsOf(progress.events), /SHOULD-NOT-RUN/);
  });
});
