/**
 * Merge on overlayfs links layers instead of copying them (src/core/diff/link.ts):
 * the merged tree equals the one the copying snapshotter's tar replay makes
 * (paths, types, modes, owners, xattrs, contents, link targets, hard links),
 * including a later input's deletions, a directory re-created over its own
 * whiteout (it must not show the lower input's old entries again) and a file
 * replaced by a directory; and the merged files share the inputs' inodes.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { native } from '../../src/core/native/index.ts';
import { marshal, merge, mkdir, rm, scratch, type State } from '../../src/llb/index.ts';
import type { Result } from '../../src/solver/types.ts';
import { type Fixture, makeFixture } from './fixture.ts';

let overlay: Fixture;
let copying: Fixture;

before(async () => {
  overlay = await makeFixture();
  copying = await makeFixture({ snapshotter: 'native' });
});
after(async () => {
  await overlay?.close();
  await copying?.close();
});

/** The merge under test: A is the bottom input, B's layers add, delete and re-create over A. */
function definition(): State {
  const a = scratch()
    .file(mkdir('/x', 0o755).mkfile('/x/from-a', 0o644, 'a').mkfile('/f', 0o600, 'file in a'))
    .file(mkdir('/keep', 0o700).mkfile('/keep/k', 0o640, 'kept', { owner: { user: 7, group: 8 } }));
  const b = scratch()
    .file(mkdir('/x', 0o755).mkfile('/x/from-b1', 0o644, 'b1').mkfile('/f', 0o644, 'b replaces f'))
    .file(rm('/x').rm('/f'))
    .file(
      mkdir('/x', 0o750)
        .mkfile('/x/from-b3', 0o4755, 'b3')
        .mkdir('/f', 0o711)
        .mkfile('/f/inner', 0o644, 'now a dir'),
    )
    .file(mkdir('/keep', 0o755).mkfile('/keep/added', 0o644, 'added by b'));
  return merge([a, b]);
}

interface Entry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  content?: string;
  xattrs?: string;
}

async function describe(dir: string): Promise<Record<string, Entry>> {
  const out: Record<string, Entry> = {};
  const walk = async (abs: string, rel: string): Promise<void> => {
    for (const name of (await fs.readdir(abs)).sort()) {
      const p = path.join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await fs.lstat(p);
      const e: Entry = {
        type: st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'link' : st.isFile() ? 'file' : 'other',
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
      };
      if (st.isFile())
        e.content = createHash('sha256')
          .update(await fs.readFile(p))
          .digest('hex');
      const names = native()
        .llistxattr(p)
        .filter((n) => !n.startsWith('trusted.overlay.'))
        .sort();
      if (names.length > 0) e.xattrs = names.join(',');
      out[r] = e;
      if (st.isDirectory()) await walk(p, r);
    }
  };
  await walk(dir, '');
  return out;
}

async function solve(fx: Fixture, st: State): Promise<Result> {
  return fx.worker().solveDefinition(marshal(st));
}

test('overlay merge links layers and gives the tree the copying replay gives', async () => {
  const viaLinks = await solve(overlay, definition());
  const viaTar = await solve(copying, definition());
  try {
    const got = await overlay.read(viaLinks, (dir) => describe(dir));
    const want = await copying.read(viaTar, (dir) => describe(dir));
    assert.deepEqual(got, want);
    // What stacking means here: B deleted /x and /f and re-created them, so A's entries are gone.
    assert.deepEqual(
      Object.keys(got).sort(),
      ['f', 'f/inner', 'keep', 'keep/added', 'keep/k', 'x', 'x/from-b3'].sort(),
    );
    assert.equal(got.x!.mode, 0o750);
    assert.equal(got['x/from-b3']!.mode, 0o4755);
    assert.equal(got.keep!.mode, 0o755, 'the upper layer sets the directory mode');
    assert.deepEqual([got['keep/k']!.uid, got['keep/k']!.gid], [7, 8]);
    // No data was copied: the merged file is the input layer's inode.
    const nlink = await overlay.read(viaLinks, async (dir) => (await fs.lstat(`${dir}/f/inner`)).nlink);
    assert.ok(nlink >= 2, `f/inner has ${nlink} link(s): it was copied, not linked`);
  } finally {
    await Promise.all([viaLinks.release(), viaTar.release()]);
  }
});
