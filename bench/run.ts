/**
 * Runs Kiln's benchmarks, each as its own process (so one's memory and
 * page-cache state does not leak into the next): `npm run bench` runs all,
 * `npm run bench -- ingest layer-export` runs the named ones; arguments
 * starting with `--` go to every benchmark run (e.g. `npm run bench --
 * build-suite --runs 1 --only 5`, where an option's value follows it). Each benchmark
 * measures Kiln and its reference in the same run and writes
 * bench/results/<name>.json and .md; docs/performance.md summarises them.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const all = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
  .map((f) => f.slice(0, -3))
  .sort();
// Options (`--x`, and the value after an option that has no `=`) are passed on; the rest are names.
const wanted: string[] = [];
const passOn: string[] = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]!;
  if (a.startsWith('--')) {
    passOn.push(a);
    const next = argv[i + 1];
    if (
      !a.includes('=') &&
      next !== undefined &&
      !next.startsWith('--') &&
      !existsSync(join(here, `${next}.ts`))
    )
      passOn.push(argv[++i]!);
  } else wanted.push(a);
}
for (const name of wanted) {
  if (!existsSync(join(here, `${name}.ts`))) {
    console.error(`bench: unknown benchmark "${name}"; known: ${all.join(', ')}`);
    process.exit(2);
  }
}
let failed = 0;
for (const name of wanted.length > 0 ? wanted : all) {
  console.log(`\n=== bench ${name}`);
  const r = spawnSync(process.execPath, [join(here, `${name}.ts`), ...passOn], { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`bench ${name} failed (exit ${r.status ?? r.signal})`);
    failed++;
  }
}
process.exit(failed > 0 ? 1 : 0);
