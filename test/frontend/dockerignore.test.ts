/**
 * .dockerignore parsing and matching: unit cases, then a differential test
 * against docker's builder (docker 20.10 BuildKit): a context with tricky
 * names is built with `COPY . /ctx`, the image is listed with `find`, and
 * the listing must equal what IgnoreMatcher keeps. Skipped (with a message)
 * when docker is not usable.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import {
  cleanPattern,
  dockerignoreNames,
  IgnoreMatcher,
  matchComponent,
  parseDockerignore,
} from '../../src/frontend/dockerfile/dockerignore.ts';

const execFileP = promisify(execFile);
const DOCKER = '/usr/bin/docker';

async function dockerUsable(): Promise<string | undefined> {
  try {
    await execFileP(DOCKER, ['info'], { timeout: 20_000 });
  } catch (err) {
    return `docker is not usable here (${(err as Error).message.split('\n')[0]})`;
  }
  return undefined;
}

/** Paths (relative, dirs and files) a transfer filtered by `m` keeps. */
async function kept(root: string, m: IgnoreMatcher): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, rel: string): Promise<boolean> => {
    let any = false;
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) {
        const excluded = m.matches(p);
        if (excluded && !m.mayIncludeUnder(p)) continue;
        const before = out.length;
        const inner = await walk(join(dir, e.name), p);
        if (!excluded || inner) {
          out.splice(before, 0, p);
          any = true;
        }
      } else if (!m.matches(p)) {
        out.push(p);
        any = true;
      }
    }
    return any;
  };
  await walk(root, '');
  return out.sort();
}

describe('dockerignore: parsing', () => {
  it('drops comments and blanks, trims, cleans, strips a leading slash, keeps ! exceptions', () => {
    assert.deepEqual(parseDockerignore('# c\n\n  a/b/  \n/logs/*.log\n! keep//x/./y\nsub/../z\n*/x\n\r\n'), [
      'a/b',
      'logs/*.log',
      '!keep/x/y',
      'z',
      '*/x',
    ]);
    assert.equal(cleanPattern('/'), '/');
    assert.equal(cleanPattern('./a/'), 'a');
    assert.deepEqual(dockerignoreNames('sub/app.Dockerfile'), [
      'app.Dockerfile.dockerignore',
      '.dockerignore',
    ]);
  });

  it('matches components like Go filepath.Match', () => {
    assert.ok(matchComponent('*.go', 'a.go'));
    assert.ok(!matchComponent('*.go', 'a.go.txt'));
    assert.ok(matchComponent('a?c', 'abc'));
    assert.ok(!matchComponent('a?c', 'ac'));
    assert.ok(matchComponent('[a-c]x', 'bx'));
    assert.ok(!matchComponent('[^a-c]x', 'bx'));
    assert.ok(matchComponent('[^a-c]x', 'dx'));
    assert.ok(matchComponent('b\\[1]', 'b[1]'));
    assert.ok(matchComponent('\\*', '*'));
    assert.ok(!matchComponent('\\*', 'x'));
  });

  it('matches paths: parents, **, exceptions, last match wins', () => {
    const m = new IgnoreMatcher(
      parseDockerignore('**/*.md\nsrc/**/*.test.ts\nkeep\n!keep/sub\n*/y\ndocs/**'),
    );
    assert.ok(m.matches('README.md'));
    assert.ok(m.matches('a/b/c.md'));
    assert.ok(m.matches('src/x.test.ts'), '** matches zero components in the middle');
    assert.ok(m.matches('src/a/b/x.test.ts'));
    assert.ok(!m.matches('src/x.ts'));
    assert.ok(m.matches('keep/drop.txt'), 'a parent directory match excludes the children');
    assert.ok(!m.matches('keep/sub/k.txt'), 'an exception re-includes');
    assert.ok(m.mayIncludeUnder('keep'));
    assert.ok(!m.mayIncludeUnder('x/y'));
    assert.ok(m.matches('x/y/z'));
    assert.ok(!m.matches('x'));
    assert.ok(!m.matches('docs'), 'a trailing ** needs at least one component');
    assert.ok(m.matches('docs/a'));
    assert.throws(() => new IgnoreMatcher(['a[']), /unterminated \[/);
  });
});

describe('dockerignore: against docker build', () => {
  const roots: string[] = [];
  after(async () => {
    for (const r of roots) await rm(r, { recursive: true, force: true });
    await execFileP(DOCKER, ['rmi', '-f', 'kiln-test/dockerignore:latest']).catch(() => undefined);
  });

  it('keeps exactly the files docker sends for a dozen tricky patterns', async (t) => {
    const why = await dockerUsable();
    if (why) return t.skip(why);
    await execFileP(DOCKER, ['image', 'inspect', 'kiln-test/busybox:latest']).catch(async () => {
      const rootfs = await mkdtemp(join(os.tmpdir(), 'kiln-bb-'));
      roots.push(rootfs);
      await execFileP('bash', [join(import.meta.dirname, '../../scripts/make-busybox-rootfs.sh'), rootfs]);
      await execFileP('bash', ['-c', `tar -C ${rootfs} -c . | ${DOCKER} import - kiln-test/busybox:latest`]);
    });
    const ctx = await mkdtemp(join(os.tmpdir(), 'kiln-ignore-'));
    roots.push(ctx);
    const files = [
      'a/b/c/f.txt',
      'a/b/g.md',
      'a/h.txt',
      'x/y/z/q.go',
      'x/y/r.go',
      'keep/sub/k.txt',
      'keep/drop.txt',
      'docs/README.md',
      'docs/notes.txt',
      'logs/1.log',
      'logs/important.log',
      '.git/HEAD',
      'node_modules/m/index.js',
      'src/lib/x.ts',
      'src/lib/x.test.ts',
      'src/x.test.ts',
      'src/main.ts',
      'deep/er/foo/bar',
      'deep/foo',
      'root.log',
      'sub/root.log',
      '?q',
      'abc',
      'abd',
      'abcd',
      'b[1]',
      'tmp/cache/x',
      'tmp/keep.txt',
      'Dockerfile',
    ];
    for (const f of files) {
      await mkdir(join(ctx, f, '..'), { recursive: true });
      await writeFile(join(ctx, f), f);
    }
    const ignore = [
      '# comment',
      '**/*.md',
      '/logs/*.log',
      '!logs/important.log',
      'node_modules/',
      '.git',
      '*/y',
      'keep',
      '!keep/sub',
      'src/**/*.test.ts',
      '**/foo',
      'ab?',
      'root.log',
      'b\\[1]',
      'tmp/**',
      '!tmp/keep.txt',
      '  ./sub//./root.log  ',
    ].join('\n');
    await writeFile(join(ctx, '.dockerignore'), ignore);
    await writeFile(join(ctx, 'Dockerfile'), 'FROM kiln-test/busybox\nCOPY . /ctx\n');
    await execFileP(DOCKER, ['build', '-q', '-t', 'kiln-test/dockerignore', ctx], {
      env: { ...process.env, DOCKER_BUILDKIT: '1' },
      timeout: 120_000,
    });
    const { stdout } = await execFileP(DOCKER, ['run', '--rm', 'kiln-test/dockerignore', 'find', '/ctx']);
    const seen = stdout
      .split('\n')
      .filter((l) => l.startsWith('/ctx/'))
      .map((l) => l.slice(5))
      .sort();
    const mine = await kept(ctx, new IgnoreMatcher(parseDockerignore(ignore)));
    assert.deepEqual(mine, seen);
  });
});
