// bin/kiln, the launcher: which entry it starts (the start-up snapshot, the bundle or the sources)
// for a checkout laid out in a temporary directory. `sh -x` shows the command it execs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const bundle = join(repo, 'build/cli/js/main.js');
const blob = join(repo, 'build/cli/snap/kiln.blob');
const made = existsSync(bundle) && existsSync(blob);

describe('bin/kiln launcher', {
  skip: made ? false : 'no CLI bundle or start-up snapshot (scripts/build-cli.mjs)',
}, () => {
  let co = '';
  // Older than the bundle (which the layout links to, with its chunks): the sources are current.
  const old = made ? new Date(statSync(bundle).mtimeMs - 3_600_000) : new Date();

  /** Runs the checkout's launcher; returns the line of the command it execs and its output. */
  const launch = (): { exec: string; stdout: string; status: number | null } => {
    const r = spawnSync('sh', ['-x', join(co, 'bin/kiln'), '--version'], { encoding: 'utf8' });
    const exec = r.stderr.split('\n').find((l) => l.startsWith('+ exec ')) ?? '';
    return { exec, stdout: r.stdout.trim(), status: r.status };
  };

  before(() => {
    co = realpathSync(mkdtempSync(join(tmpdir(), 'kiln-launcher-')));
    mkdirSync(join(co, 'bin'));
    copyFileSync(join(repo, 'bin/kiln'), join(co, 'bin/kiln'));
    symlinkSync(join(repo, 'node_modules'), join(co, 'node_modules'));
    mkdirSync(join(co, 'src/cli'), { recursive: true });
    writeFileSync(join(co, 'src/cli/main.ts'), '// a source file\n');
    writeFileSync(join(co, 'package-lock.json'), '{}\n');
    mkdirSync(join(co, 'build/cli/snap'), { recursive: true });
    symlinkSync(dirname(bundle), join(co, 'build/cli/js'));
    symlinkSync(blob, join(co, 'build/cli/snap/kiln.blob'));
    for (const f of ['src/cli/main.ts', 'src/cli', 'src', 'package-lock.json'])
      utimesSync(join(co, f), old, old);
  });
  after(() => rmSync(co, { recursive: true, force: true }));

  it('starts the start-up snapshot made for this checkout', () => {
    writeFileSync(join(co, 'build/cli/snap/root'), `${co}\n`);
    const r = launch();
    assert.match(r.exec, /--snapshot-blob \S*build\/cli\/snap\/kiln\.blob kiln --version$/);
    assert.equal(r.status, 0);
    assert.match(r.stdout, /^\d+\.\d+\.\d+/);
  });

  it('starts the bundle when the snapshot was made for another checkout, or records none', () => {
    writeFileSync(join(co, 'build/cli/snap/root'), `${repo}\n`);
    let r = launch();
    assert.doesNotMatch(r.exec, /--snapshot-blob/);
    assert.match(r.exec, /build\/cli\/js\/main\.js --version$/);
    assert.equal(r.status, 0);
    assert.match(r.stdout, /^\d+\.\d+\.\d+/);
    rmSync(join(co, 'build/cli/snap/root'));
    r = launch();
    assert.match(r.exec, /build\/cli\/js\/main\.js --version$/);
  });

  it('starts the sources when a source file is newer than the bundle', () => {
    writeFileSync(join(co, 'build/cli/snap/root'), `${co}\n`);
    const now = new Date();
    utimesSync(join(co, 'src/cli/main.ts'), now, now);
    const r = launch();
    assert.match(r.exec, /src\/cli\/main\.ts --version$/);
    utimesSync(join(co, 'src/cli/main.ts'), old, old);
  });
});
