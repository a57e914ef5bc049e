/**
 * The native directory listing (`readDirStat`: getdents64 + fstatat in the
 * addon) against Node's own lstat and readdir, and `checksumTree` (which
 * walks with it) against an independent reference walk written from the
 * documented line format with readdirSync + lstatSync, the way the walk
 * worked before the native listing: same digests for every entry type,
 * awkward names, selectors, include/exclude filters and a file hash cache.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { sha256 } from '../../src/core/digest.ts';
import { native } from '../../src/core/native/index.ts';
import { readDirStat } from '../../src/core/native/readdir.ts';
import { checksumTree, type FileHashCache, type FileStamp, patternFilter } from '../../src/ops/checksum.ts';
import { resolveInRoot } from '../../src/ops/fsutil.ts';
import { PatternMatcher } from '../../src/ops/patterns.ts';

let dir: string;
let tree: string;
/** A name that is not valid UTF-8 (no JavaScript string names it). */
const BAD = Buffer.from('bad-\xff-name', 'latin1');

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'kiln-ops-native-'));
  tree = path.join(dir, 'tree');
  await fsp.mkdir(path.join(tree, 'sub', 'deeper'), { recursive: true });
  await fsp.mkdir(path.join(tree, 'docs'));
  const names = [
    'a.txt',
    'B.txt',
    'é-accent',
    '\u{1F600}-emoji', // a surrogate pair in UTF-16: sorts before U+E000..U+FFFF
    '\uE000-private', // three UTF-8 bytes starting 0xEE
    '\uFFFD-replacement',
    'quote"and\\backslash',
    'new\nline',
    'tab\there',
    '.hidden',
  ];
  for (const [i, n] of names.entries()) await fsp.writeFile(path.join(tree, n), `content ${i}`);
  fs.writeFileSync(Buffer.concat([Buffer.from(`${tree}/`), BAD]), 'bad name');
  await fsp.writeFile(path.join(tree, 'sub', 'x.c'), 'int x;');
  await fsp.writeFile(path.join(tree, 'sub', 'deeper', 'y.md'), '# y');
  await fsp.writeFile(path.join(tree, 'docs', 'readme.md'), 'docs');
  await fsp.chmod(path.join(tree, 'sub', 'x.c'), 0o4755);
  await fsp.lchown(path.join(tree, 'a.txt'), 1234, 5678);
  await fsp.symlink('a.txt', path.join(tree, 'link'));
  await fsp.symlink('../cible-é/\u{1F600}', path.join(tree, 'sub', 'link-unicode'));
  await fsp.symlink('x'.repeat(1000), path.join(tree, 'sub', 'long-link'));
  native().mknod(path.join(tree, 'fifo'), 0o010644, 0, 0);
  native().mknod(path.join(tree, 'null-dev'), 0o020666, 1, 3);
  // A directory larger than the addon's first buffers (names and records grow).
  await fsp.mkdir(path.join(tree, 'many'));
  for (let i = 0; i < 1200; i++)
    fs.writeFileSync(
      path.join(tree, 'many', `file-with-a-longer-name-${String(i).padStart(5, '0')}`),
      `${i}`,
    );
  // A deep chain.
  let deep = path.join(tree, 'deep');
  for (let i = 0; i < 60; i++) deep = path.join(deep, `d${i}`);
  await fsp.mkdir(deep, { recursive: true });
  await fsp.writeFile(path.join(deep, 'leaf'), 'leaf');
});

after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

test('readDirStat lists what readdir + lstat see, in JavaScript sort order', () => {
  const list = readDirStat(tree);
  const names = fs.readdirSync(tree).sort();
  assert.equal(list.count, names.length);
  let gone = 0;
  for (let i = 0; i < list.count; i++) {
    const name = list.name(i);
    if (list.gone(i)) {
      gone++;
      assert.ok(name.includes('\uFFFD'), `only the non-UTF-8 name is unnameable: ${JSON.stringify(name)}`);
      continue;
    }
    assert.equal(name, names[i], `entry ${i} in order`);
    const st = fs.lstatSync(path.join(tree, name), { bigint: true });
    const where = JSON.stringify(name);
    assert.equal(list.mode(i), Number(st.mode), `${where} mode`);
    assert.equal(list.uid(i), Number(st.uid), `${where} uid`);
    assert.equal(list.gid(i), Number(st.gid), `${where} gid`);
    assert.equal(list.size(i), Number(st.size), `${where} size`);
    assert.equal(list.ino(i), Number(st.ino), `${where} ino`);
    assert.equal(list.dev(i), Number(st.dev), `${where} dev`);
    assert.equal(list.rdev(i), Number(st.rdev), `${where} rdev`);
    assert.equal(
      BigInt(list.mtimeSec(i)) * 1_000_000_000n + BigInt(list.mtimeNsec(i)),
      st.mtimeNs,
      `${where} mtime`,
    );
    assert.equal(
      BigInt(list.ctimeSec(i)) * 1_000_000_000n + BigInt(list.ctimeNsec(i)),
      st.ctimeNs,
      `${where} ctime`,
    );
    assert.equal(list.isDirectory(i), st.isDirectory(), `${where} dir`);
    assert.equal(list.isFile(i), st.isFile(), `${where} file`);
    assert.equal(list.isSymbolicLink(i), st.isSymbolicLink(), `${where} link`);
    assert.equal(list.linkTarget(i), st.isSymbolicLink() ? fs.readlinkSync(path.join(tree, name)) : '');
  }
  assert.equal(gone, 1, 'the non-UTF-8 name is reported as unnameable');
  const sub = readDirStat(path.join(tree, 'sub'));
  const links = Array.from({ length: sub.count }, (_, i) => [sub.name(i), sub.linkTarget(i)]);
  assert.deepEqual(links, [
    ['deeper', ''],
    ['link-unicode', '../cible-é/\u{1F600}'],
    ['long-link', 'x'.repeat(1000)],
    ['x.c', ''],
  ]);
  const many = readDirStat(path.join(tree, 'many'));
  assert.equal(many.count, 1200);
  assert.equal(many.name(1199), 'file-with-a-longer-name-01199');
});

test('readDirStat errors name the path and the system call', () => {
  const missing = path.join(tree, 'nope');
  assert.throws(
    () => readDirStat(missing),
    (err: NodeJS.ErrnoException) => err.code === 'ENOENT' && err.path === missing && err.syscall === 'open',
  );
  assert.throws(
    () => readDirStat(path.join(tree, 'a.txt')),
    (err: NodeJS.ErrnoException) => err.code === 'ENOTDIR',
  );
  fs.symlinkSync(path.join(tree, 'sub'), path.join(dir, 'dir-link'));
  assert.throws(
    () => readDirStat(path.join(dir, 'dir-link')),
    (err: NodeJS.ErrnoException) =>
      (err.code === 'ELOOP' || err.code === 'ENOTDIR') && err.path === path.join(dir, 'dir-link'),
    'a symlinked directory is not followed',
  );
});

// ---------------------------------------------------------------- reference walk

type Filter = { filter?: (rel: string, isDir: boolean) => boolean; descend?: (rel: string) => boolean };

/** The documented lines of one path and everything below it (readdirSync + lstatSync). */
function refLines(host: string, rel: string, out: string[], f: Filter): void {
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(host, { throwIfNoEntry: false });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOTDIR') throw err;
  }
  if (!st) {
    out.push(`missing ${JSON.stringify(rel)}`);
    return;
  }
  const isDir = st.isDirectory();
  const selected = rel === '' || !f.filter || f.filter(rel, isDir);
  if (!selected && !(isDir && f.descend?.(rel))) return;
  const meta = `${st.mode.toString(8)} ${st.uid}:${st.gid}`;
  if (isDir) {
    if (selected) out.push(`dir ${JSON.stringify(rel)} ${meta}`);
    for (const name of fs.readdirSync(host).sort())
      refLines(path.join(host, name), rel === '' ? name : `${rel}/${name}`, out, f);
  } else if (st.isSymbolicLink()) {
    out.push(`link ${JSON.stringify(rel)} ${meta} ${JSON.stringify(fs.readlinkSync(host))}`);
  } else if (st.isFile()) {
    const h = createHash('sha256').update(fs.readFileSync(host)).digest('hex');
    out.push(`file ${JSON.stringify(rel)} ${meta} ${h}`);
  } else {
    out.push(`special ${JSON.stringify(rel)} ${meta} ${st.rdev}`);
  }
}

/** The selector's path is resolved in the root, following symlinks (checksumTree's rule). */
async function refChecksum(root: string, sel: string, f: Filter = {}): Promise<string> {
  const lines = [`select ${JSON.stringify(sel)} 1`, `path ${JSON.stringify(sel)}`];
  refLines(await resolveInRoot(root, sel), '', lines, f);
  return sha256(lines.join('\n'));
}

test('checksumTree gives the reference walk digest: every entry type, awkward names, selectors', async () => {
  for (const sel of ['/', '/sub', '/a.txt', '/link', '/fifo', '/null-dev', '/missing', '/many', '/deep']) {
    assert.equal(await checksumTree(tree, sel), await refChecksum(tree, sel), sel);
  }
  const lines: string[] = [];
  refLines(tree, '', lines, {});
  assert.ok(
    lines.includes(`missing ${JSON.stringify(`bad-\uFFFD-name`)}`),
    'the unnameable entry is "missing"',
  );
  const dev = fs.lstatSync(path.join(tree, 'null-dev'));
  assert.ok(lines.includes(`special "null-dev" ${dev.mode.toString(8)} 0:0 ${dev.rdev}`), 'device number');
  assert.ok(dev.isCharacterDevice() && dev.rdev !== 0);
  assert.ok(lines.some((l) => l.startsWith('file "quote\\"and\\\\backslash"')));
});

test('checksumTree with include/exclude filters gives the reference digest and narrows what counts', async () => {
  const cases: [string[], string[]][] = [
    [[], ['**/*.md']],
    [['sub', 'a.txt'], []],
    [['sub'], ['sub/deeper']],
    [[], ['many', '!many/file-with-a-longer-name-00007']],
    [['**/*.md'], []],
  ];
  for (const [inc, exc] of cases) {
    const f = patternFilter(new PatternMatcher(inc), new PatternMatcher(exc));
    const got = await checksumTree(tree, '/', f);
    assert.equal(got, await refChecksum(tree, '/', f), `include ${inc} exclude ${exc}`);
  }
  // A change in an excluded file does not count; one in an included file does.
  const f = patternFilter(new PatternMatcher([]), new PatternMatcher(['**/*.md']));
  const before = await checksumTree(tree, '/', f);
  await fsp.writeFile(path.join(tree, 'docs', 'readme.md'), 'docs changed');
  assert.equal(await checksumTree(tree, '/', f), before, 'excluded change ignored');
  await fsp.writeFile(path.join(tree, 'sub', 'x.c'), 'int y;');
  assert.notEqual(await checksumTree(tree, '/', f), before, 'included change counts');
});

test('checksumTree through a hash cache: same digest, exact stamps, a rewrite with the same size is seen', async () => {
  const map = new Map<string, { stamp: FileStamp; hash: string }>();
  let misses = 0;
  const cache: FileHashCache = {
    get: (file, s) => {
      const e = map.get(file);
      return e && JSON.stringify(e.stamp) === JSON.stringify(s) ? e.hash : undefined;
    },
    set: (file, s, hash) => {
      misses++;
      map.set(file, { stamp: { ...s }, hash });
    },
  };
  const first = await checksumTree(tree, '/', { cache });
  assert.equal(first, await refChecksum(tree, '/'));
  const filesSeen = misses;
  assert.ok(filesSeen > 1200);
  assert.equal(await checksumTree(tree, '/', { cache }), first);
  assert.equal(misses, filesSeen, 'nothing re-read');
  const stamp = map.get(path.join(tree, 'a.txt'))!.stamp;
  const st = fs.lstatSync(path.join(tree, 'a.txt'), { bigint: true });
  assert.equal(BigInt(stamp.mtimeSec) * 1_000_000_000n + BigInt(stamp.mtimeNsec), st.mtimeNs, 'exact mtime');
  // Same size, new content: the ctime (and mtime) move, the cache misses.
  await fsp.writeFile(path.join(tree, 'a.txt'), 'content X');
  const changed = await checksumTree(tree, '/', { cache });
  assert.notEqual(changed, first);
  assert.equal(changed, await refChecksum(tree, '/'));
  assert.equal(misses, filesSeen + 1, 'only the changed file re-read');
});
