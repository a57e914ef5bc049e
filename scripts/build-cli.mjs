// Bundles the kiln CLI (src/cli/main.ts and everything it imports, npm
// dependencies included) into build/cli/js/ with esbuild, one chunk per
// command module (main.ts loads commands with dynamic import()).
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
import { mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'build/cli/js');

let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  // The CLI still runs from the sources (bin/kiln falls back); just slower to start.
  console.error('build-cli: esbuild is not installed; bin/kiln will run from the sources');
  process.exit(0);
}

const tmp = `${out}.tmp-${process.pid}`;
rmSync(tmp, { recursive: true, force: true });
mkdirSync(dirname(out), { recursive: true });
try {
  await esbuild.build({
    entryPoints: [join(root, 'src/cli/main.ts')],
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
