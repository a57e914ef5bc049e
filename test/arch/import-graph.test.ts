/**
 * Keeps the layering honest (docs/architecture.md): every module under src/
 * belongs to a layer; a module may import only from its own layer or a lower
 * one, and the file-level import graph has no cycles.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { listTs } from './source-files.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const src = join(root, 'src');

/** Layer ranks: lower numbers are lower layers. Longest matching prefix wins. */
const LAYERS: [prefix: string, rank: number][] = [
  ['core/errors.ts', 0],
  ['core/digest.ts', 0],
  ['core/lock.ts', 0],
  ['core/proc.ts', 0], // process facts from procfs (owner records)
  ['core/rundir.ts', 0], // the run directory on tmpfs (state locks keep their markers there)
  ['core/sqlite.ts', 0], // prepared-statement cache for node:sqlite connections
  ['core/native/', 0],
  ['core/archive/', 1],
  ['core/content/', 1],
  ['core/events/', 1],
  ['core/fs/', 1], // safe removal and path resolution inside roots
  ['core/mount/mountinfo.ts', 1], // no Kiln imports; used by core/fs
  ['core/mount/', 2],
  ['core/snapshots/', 2],
  ['core/images/', 2], // references, OCI types, platforms
  // Image services compose the store, metadata, diff and remotes (containerd keeps these in its client).
  ['core/images/pull.ts', 5],
  ['core/images/push.ts', 5],
  ['core/images/unpack.ts', 5],
  ['core/images/oci-layout.ts', 5],
  ['core/images/docker-archive.ts', 5],
  ['core/images/index.ts', 5],
  ['core/images/content.ts', 5],
  ['core/diff/', 3],
  ['core/metadata/', 3],
  ['core/remotes/', 4],
  ['core/runtime/', 4],
  ['core/containers/', 5],
  ['core/', 5],
  ['gen/', 9],
  ['llb/', 10],
  ['ops/', 11],
  ['solver/types.ts', 10],
  ['solver/progress.ts', 10],
  ['solver/', 12],
  ['worker/', 13],
  ['cache/', 13],
  ['exporter/', 14],
  ['frontend/', 15],
  ['control/', 16],
  ['client/', 17],
  ['cli/', 18],
  ['daemon/', 18], // kilnd's command line
];

function rankOf(file: string): number | undefined {
  let best: [string, number] | undefined;
  for (const [prefix, rank] of LAYERS) {
    if (file.startsWith(prefix) && (!best || prefix.length > best[0].length)) best = [prefix, rank];
  }
  return best?.[1];
}

const IMPORT_RE =
  /(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;

function graph(): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const abs of listTs(src)) {
    const file = relative(src, abs);
    const text = readFileSync(abs, 'utf8');
    const deps: string[] = [];
    for (const m of text.matchAll(IMPORT_RE)) {
      const spec = m[1] ?? m[2];
      if (!spec?.startsWith('.')) continue;
      deps.push(relative(src, resolve(dirname(abs), spec)));
    }
    g.set(file, deps);
  }
  return g;
}

test('every module under src/ belongs to a layer', () => {
  const unmapped = [...graph().keys()].filter((f) => rankOf(f) === undefined);
  assert.deepEqual(unmapped, [], 'add these to LAYERS in this test and to docs/architecture.md');
});

test('no module imports from a higher layer', () => {
  const violations: string[] = [];
  for (const [file, deps] of graph()) {
    const r = rankOf(file);
    for (const dep of deps) {
      const d = rankOf(dep);
      if (r !== undefined && d !== undefined && d > r)
        violations.push(`${file} (layer ${r}) -> ${dep} (layer ${d})`);
    }
  }
  assert.deepEqual(violations, []);
});

test('the import graph has no cycles', () => {
  const g = graph();
  assert.ok(g.size > 0, 'no modules found under src/');
  const state = new Map<string, 'visiting' | 'done'>();
  const cycles: string[] = [];
  const visit = (file: string, path: string[]): void => {
    const s = state.get(file);
    if (s === 'done') return;
    if (s === 'visiting') {
      cycles.push([...path.slice(path.indexOf(file)), file].join(' -> '));
      return;
    }
    state.set(file, 'visiting');
    for (const dep of g.get(file) ?? []) if (g.has(dep)) visit(dep, [...path, file]);
    state.set(file, 'done');
  };
  for (const file of g.keys()) visit(file, []);
  assert.deepEqual(cycles, []);
});

test('the checker itself catches an upward import and a cycle', () => {
  // Guards against a regex that silently matches nothing.
  const sample =
    "import { x } from '../solver/a.ts';\nexport type { Y } from './b.ts';\nconst m = await import('./c.ts');";
  const specs = [...sample.matchAll(IMPORT_RE)].map((m) => m[1] ?? m[2]);
  assert.deepEqual(specs, ['../solver/a.ts', './b.ts', './c.ts']);
  assert.ok((rankOf('solver/a.ts') ?? 0) > (rankOf('core/content/store.ts') ?? 0));
});
