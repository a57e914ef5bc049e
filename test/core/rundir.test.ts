/**
 * The run directory (src/core/rundir.ts): where a root's ephemeral state goes, on tmpfs.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statfsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { unmountAll } from '../../src/core/mount/mount.ts';
import { readMountinfo } from '../../src/core/mount/mountinfo.ts';
import { runDirFor } from '../../src/core/rundir.ts';

const TMPFS_MAGIC = 0x01021994;
const rundirModule = fileURLToPath(new URL('../../src/core/rundir.ts', import.meta.url));
let base = '';

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'kiln-rundir-'));
});

after(async () => {
  await unmountAll(base);
  await rm(base, { recursive: true, force: true });
});

/** runDirFor(root) in a new process with `env`, so that the base is chosen afresh. */
function runDirIn(root: string, env: NodeJS.ProcessEnv): string {
  const code = `import { runDirFor } from ${JSON.stringify(rundirModule)}; process.stdout.write(runDirFor(${JSON.stringify(root)}));`;
  return execFileSync(process.execPath, ['--input-type=module', '-e', code], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
}

test('a root gets one run directory on tmpfs, mode 0700, named by its real path', async () => {
  const root = path.join(base, 'root-a');
  const dir = runDirFor(root);
  assert.equal(statfsSync(dir).type, TMPFS_MAGIC);
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  assert.equal(readFileSync(path.join(dir, 'root'), 'utf8'), `${root}\n`);
  assert.equal(runDirFor(`${root}/`), dir);
  assert.notEqual(runDirFor(path.join(base, 'root-b')), dir);
  // The same root through a symlink, in another process: the same directory.
  await symlink(base, path.join(os.tmpdir(), path.basename(base) + '-link'));
  try {
    assert.equal(runDirIn(path.join(`${base}-link`, 'root-a'), {}), dir);
  } finally {
    await rm(`${base}-link`);
  }
});

test('an empty base that is not a tmpfs gets one mounted, a busy one is used as it is; without a usable base the state stays under the root', async () => {
  const onDisk = path.join(base, 'run-kiln');
  const root = path.join(base, 'root-c');
  const dir = runDirIn(root, { KILN_RUN_DIR: onDisk });
  assert.equal(path.dirname(dir), onDisk);
  assert.equal(statfsSync(onDisk).type, TMPFS_MAGIC);
  // A second process finds it mounted and mounts nothing more.
  assert.equal(runDirIn(root, { KILN_RUN_DIR: onDisk }), dir);
  assert.equal((await readMountinfo()).filter((m) => m.mountPoint === onDisk).length, 1);
  await unmountAll(onDisk);

  // A directory on disk that already holds something is used as it is, never mounted over.
  const busy = path.join(base, 'busy');
  await mkdir(busy);
  await writeFile(path.join(busy, 'kilnd.sock'), '');
  const onBusy = runDirIn(path.join(base, 'root-d'), { KILN_RUN_DIR: busy });
  assert.equal(path.dirname(onBusy), busy);
  assert.notEqual(statfsSync(busy).type, TMPFS_MAGIC);
  assert.ok(existsSync(path.join(busy, 'kilnd.sock')));

  const file = path.join(base, 'a-file');
  execFileSync('touch', [file]);
  assert.equal(runDirIn(root, { KILN_RUN_DIR: path.join(file, 'below') }), path.join(root, 'run'));
  assert.ok(existsSync(path.join(root, 'run')));
});
