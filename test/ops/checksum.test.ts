/**
 * Pure parts of the ops layer: Go filepath.Match semantics, dockerignore-style
 * pattern lists, and content checksums (what they cover, what they ignore,
 * and that the file hash cache spares re-reading unchanged files).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { checksumTree, type FileHashCache, type FileStamp } from '../../src/ops/checksum.ts';
import { resolveInRoot } from '../../src/ops/fsutil.ts';
import { matchGlob, PatternMatcher } from '../../src/ops/patterns.ts';

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-sum-'));
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

test('matchGlob follows Go filepath.Match', () => {
  const cases: [string, string, boolean][] = [
    ['*.txt', 'a.txt', true],
    ['*.txt', 'dir/a.txt', false],
    ['*', '.hidden', true],
    ['a?c', 'abc', true],
    ['a?c', 'a/c', false],
    ['[a-c]x', 'bx', true],
    ['[^a-c]x', 'bx', false],
    ['[^a-c]x', 'dx', true],
    ['[!a-c]x', 'dx', true],
    ['\\*', '*', true],
    ['\\*', 'a', false],
    ['dir/*', 'dir/file', true],
  ];
  for (const [p, n, want] of cases) assert.equal(matchGlob(p, n), want, `${p} ~ ${n}`);
  assert.throws(() => matchGlob('[abc', 'a'), /syntax error in pattern/);
});

test('PatternMatcher: dockerignore semantics', () => {
  const m = new PatternMatcher(['*.md', 'build/', '!build/keep', '**/*.tmp', '/abs']);
  assert.equal(m.matches('README.md'), true);
  assert.equal(m.matches('docs/a.md'), false, '* does not cross directories');
  assert.equal(m.matches('build'), true);
  assert.equal(m.matches('build/out.o'), true, 'a matching parent matches its children');
  assert.equal(m.matches('build/keep'), false, 'exception');
  assert.equal(m.matches('a/b/c.tmp'), true);
  assert.equal(m.matches('abs'), true);
  assert.equal(m.hasExclusions, true);
});

test('checksumTree covers content, mode, owner and links, not timestamps; selectors narrow it', async () => {
  await fs.mkdir(`${dir}/t/src`, { recursive: true });
  await fs.mkdir(`${dir}/t/docs`, { recursive: true });
  await fs.writeFile(`${dir}/t/src/a.c`, 'a');
  await fs.writeFile(`${dir}/t/docs/x`, 'x');
  await fs.symlink('a.c', `${dir}/t/src/link`);
  const root = `${dir}/t`;
  const all1 = await checksumTree(root, '/');
  const src1 = await checksumTree(root, '/src');
  await fs.utimes(`${dir}/t/src/a.c`, 1000, 1000);
  assert.equal(await checksumTree(root, '/'), all1, 'timestamps are ignored');
  await fs.writeFile(`${dir}/t/docs/x`, 'changed');
  assert.notEqual(await checksumTree(root, '/'), all1);
  assert.equal(await checksumTree(root, '/src'), src1, 'a change outside the selector does not count');
  await fs.chmod(`${dir}/t/src/a.c`, 0o600);
  const src2 = await checksumTree(root, '/src');
  assert.notEqual(src2, src1, 'mode counts');
  await fs.lchown(`${dir}/t/src/a.c`, 1234, 1234);
  const src3 = await checksumTree(root, '/src');
  assert.notEqual(src3, src2, 'owner counts');
  await fs.unlink(`${dir}/t/src/link`);
  await fs.symlink('elsewhere', `${dir}/t/src/link`);
  assert.notEqual(await checksumTree(root, '/src'), src3, 'link target counts');
  const wild = await checksumTree(root, '/src/*.c');
  assert.notEqual(await checksumTree(root, '/nothing'), wild);
  assert.equal(await checksumTree(root, JSON.stringify(['/src/*.c'])), wild);
});

test('the file hash cache spares re-reading unchanged files', async () => {
  await fs.mkdir(`${dir}/c`, { recursive: true });
  for (let i = 0; i < 20; i++) await fs.writeFile(`${dir}/c/f${i}`, `content ${i}`);
  const map = new Map<string, string>();
  let computed = 0;
  const key = (f: string, s: FileStamp): string =>
    [f, s.size, s.mtimeSec, s.mtimeNsec, s.ctimeSec, s.ctimeNsec, s.ino].join('\0');
  const cache: FileHashCache = {
    get: (f, s) => map.get(key(f, s)),
    set: (f, s, v) => {
      computed++;
      map.set(key(f, s), v);
    },
  };
  const first = await checksumTree(`${dir}/c`, '/', { cache });
  assert.equal(computed, 20);
  assert.equal(await checksumTree(`${dir}/c`, '/', { cache }), first);
  assert.equal(computed, 20, 'nothing re-read');
  await fs.writeFile(`${dir}/c/f3`, 'new content');
  assert.notEqual(await checksumTree(`${dir}/c`, '/', { cache }), first);
  assert.equal(computed, 21, 'only the changed file re-read');
});

test('resolveInRoot keeps symlinks inside the root', async () => {
  await fs.mkdir(`${dir}/r/usr/bin`, { recursive: true });
  await fs.symlink('/usr/bin', `${dir}/r/bin`);
  await fs.symlink('../../../../etc', `${dir}/r/usr/bin/up`);
  assert.equal(await resolveInRoot(`${dir}/r`, '/bin/sh'), `${dir}/r/usr/bin/sh`);
  assert.equal(await resolveInRoot(`${dir}/r`, '/bin/up/passwd'), `${dir}/r/etc/passwd`);
  assert.equal(await resolveInRoot(`${dir}/r`, '/bin', false), `${dir}/r/bin`);
});
