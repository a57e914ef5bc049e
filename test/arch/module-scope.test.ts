/**
 * The CLI starts from a V8 start-up snapshot (src/cli/snapshot.ts): every
 * module's top level runs once, when the snapshot is made, and what it
 * computed is then frozen into every later process. So no module may read,
 * while it loads, anything that belongs to the process: its environment,
 * working directory, pid, the time, random bytes, the machine (CPUs, temp
 * directory, home). This walks the top level of every module under src/
 * with the TypeScript parser and fails on such reads outside functions.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { listTs } from './source-files.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const src = join(root, 'src');

/** Expressions whose value belongs to the running process (matched on their source text). */
const PROCESS_FACTS = [
  /^process\.(env|cwd|pid|ppid|argv|execPath|getuid|getgid|umask|hrtime|uptime|stdout|stderr|stdin)\b/,
  /^(os\.)?(tmpdir|homedir|cpus|availableParallelism|hostname|userInfo|loadavg)\(/,
  /^Date\.now\(|^new Date\(\)|^performance\.now\(/,
  /^(crypto\.)?(randomBytes|randomUUID|randomInt)\(|^Math\.random\(/,
];

/** Source texts of process reads evaluated when `file` loads (function bodies are skipped). */
function loadTimeReads(file: string): string[] {
  const sf = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const found: string[] = [];
  const visit = (node: ts.Node): void => {
    // Code in these runs later, when called; a class body's static blocks and fields do run.
    if (
      ts.isFunctionLike(node) &&
      !ts.isClassStaticBlockDeclaration(node as ts.Node as ts.ClassStaticBlockDeclaration)
    ) {
      return;
    }
    if (
      ts.isPropertyDeclaration(node) &&
      !node.modifiers?.some((m) => m.kind === ts.SyntaxKind.StaticKeyword)
    )
      return;
    if (ts.isPropertyAccessExpression(node) || ts.isCallExpression(node) || ts.isNewExpression(node)) {
      const text = node.getText(sf);
      if (PROCESS_FACTS.some((re) => re.test(text))) {
        const { line } = sf.getLineAndCharacterOfPosition(node.getStart(sf));
        found.push(`${relative(root, file)}:${line + 1}: ${text.split('\n')[0]}`);
        return;
      }
    }
    ts.forEachChild(node, visit);
  };
  for (const stmt of sf.statements) visit(stmt);
  return found;
}

test('no module reads process facts while it loads (they would be frozen into the CLI start-up snapshot)', () => {
  const found = listTs(src)
    .filter((f) => !f.startsWith(join(src, 'gen')))
    .flatMap(loadTimeReads);
  assert.deepEqual(found, []);
});

test('the check finds load-time reads, and not reads inside functions', () => {
  const dir = join(root, 'test/arch/fixtures');
  assert.deepEqual(
    loadTimeReads(join(dir, 'module-scope-sample.ts')).map((l) => l.replace(/^.*?:(\d+): /, '$1: ')),
    ['3: process.env.KILN_SAMPLE', '4: os.tmpdir()', '5: Date.now()', '7: process.pid'],
  );
});
