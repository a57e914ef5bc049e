/**
 * The committed generated code in src/gen is what `buf generate` makes from
 * proto/ today (regenerated into a temporary directory and compared file by
 * file), and it runs under Node's type stripping.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(relative(dir, join(e.parentPath, e.name)));
  }
  return out.sort();
}

test('src/gen is up to date with proto/', async (t) => {
  const tmp = await mkdtemp(join(tmpdir(), 'kiln-bufgen-'));
  t.after(() => rm(tmp, { recursive: true, force: true }));
  const bin = join(root, 'node_modules/.bin');
  // protoc-gen-es is a Node script: put the project's Node (26) first on PATH.
  await run(join(bin, 'buf'), ['generate', '-o', tmp], {
    cwd: root,
    env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` },
  });
  const fresh = join(tmp, 'src/gen');
  const committed = join(root, 'src/gen');
  const files = await listFiles(fresh);
  assert.ok(files.includes('kiln/llb/v1/llb_pb.ts'), `generated files: ${files.join(', ')}`);
  assert.deepEqual(await listFiles(committed), files, 'src/gen has exactly the generated files');
  for (const f of files) {
    const want = await readFile(join(fresh, f), 'utf8');
    const have = await readFile(join(committed, f), 'utf8');
    assert.ok(have === want, `src/gen/${f} is stale: run \`npx buf generate\``);
  }
});

test('the generated enums are plain objects (erasable syntax)', async () => {
  const text = await readFile(join(root, 'src/gen/kiln/llb/v1/llb_pb.ts'), 'utf8');
  assert.doesNotMatch(text, /^export (declare )?enum /m);
  assert.match(text, /^export const NetworkMode = \{/m);
  const mod = await import('../../src/gen/kiln/llb/v1/llb_pb.ts');
  assert.deepEqual([mod.NetworkMode.HOST, mod.MountType.CACHE], [1, 4]);
});
