/**
 * Runs the shared Dockerfile parser / shell lexer conformance data
 * (../shared/conformance beside the repository, see its README section 6) against parser.ts,
 * dump.ts and shell.ts. The data is read at run time from
 * <repo root>/../shared/conformance and never copied into the repo. Cases are
 * discovered by listing directories; finding none fails the suite.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { dumpAst } from '../../src/frontend/dockerfile/dump.ts';
import { DockerfileSyntaxError, parseDockerfile } from '../../src/frontend/dockerfile/parser.ts';
import { ShellLex } from '../../src/frontend/dockerfile/shell.ts';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DATA = resolve(repoRoot, '../shared/conformance');

function listCases(sub: string): string[] {
  const dir = join(DATA, sub);
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
}

const positive = listCases('dockerfile-parser');
const negative = listCases('dockerfile-parser-negative');

void test('conformance data is present', () => {
  assert.ok(existsSync(DATA), `conformance data not found at ${DATA}`);
  assert.ok(positive.length > 0, `no parser cases under ${DATA}/dockerfile-parser`);
  assert.ok(negative.length > 0, `no negative cases under ${DATA}/dockerfile-parser-negative`);
});

void describe('dockerfile-parser', () => {
  for (const name of positive) {
    void test(name, () => {
      const dir = join(DATA, 'dockerfile-parser', name);
      const source = readFileSync(join(dir, 'Dockerfile'));
      const want = readFileSync(join(dir, 'result'), 'utf8').replaceAll('\r\n', '\n');
      const got = dumpAst(parseDockerfile(source, { filename: `${name}/Dockerfile` }));
      if (got !== want) {
        const g = got.split('\n');
        const w = want.split('\n');
        let i = 0;
        while (i < Math.max(g.length, w.length) && g[i] === w[i]) i++;
        assert.fail(
          `dump differs at line ${i + 1}:\n  got:  ${g[i] ?? '<none>'}\n  want: ${w[i] ?? '<none>'}`,
        );
      }
    });
  }
});

void describe('dockerfile-parser-negative', () => {
  for (const name of negative) {
    void test(name, () => {
      const source = readFileSync(join(DATA, 'dockerfile-parser-negative', name, 'Dockerfile'));
      assert.throws(
        () => parseDockerfile(source, { filename: `${name}/Dockerfile` }),
        (err: unknown) => err instanceof DockerfileSyntaxError && err.file === `${name}/Dockerfile`,
      );
    });
  }
});

void test('dockerfile-parser-lines', () => {
  const dir = join(DATA, 'dockerfile-parser-lines');
  const expected = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8')) as {
    root: { startLine: number; endLine: number };
    instructions: { keyword: string; startLine: number; endLine: number }[];
  };
  const r = parseDockerfile(readFileSync(join(dir, 'Dockerfile')));
  assert.deepEqual({ startLine: r.startLine, endLine: r.endLine }, expected.root);
  assert.deepEqual(
    r.instructions.map((n) => ({ keyword: n.keyword, startLine: n.startLine, endLine: n.endLine })),
    expected.instructions,
  );
});

// ---------------------------------------------------------------------------
// Shell lexer

function readLines(file: string): string[] {
  const path = join(DATA, 'shell-lexer', file);
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8').split('\n');
}

const ENV_VAR_ENV = new Map([
  ['PWD', '/home'],
  ['SHELL', 'bash'],
  ['KOREAN', '한국어'],
  ['NULL', ''],
]);

let envVarCases = 0;
let envVarSkipped = 0;
void describe('shell-lexer/envVarTest', () => {
  const lex = new ShellLex('\\');
  readLines('envVarTest').forEach((line, i) => {
    if (line.startsWith('#') || line.trim() === '') return;
    const fields = line.split('|').map((f) => f.trim());
    const [platform, input, expected] = fields as [string, string, string];
    const name = `envVarTest:${i + 1}`;
    if (fields.length !== 3) {
      void test(name, () => assert.fail(`malformed line: ${JSON.stringify(line)}`));
      return;
    }
    if (platform === 'W') {
      envVarSkipped++;
      void test(`${name} ${input}`, {
        skip: 'Windows-only (W) case: variable names are case-insensitive there',
      }, () => {});
      return;
    }
    envVarCases++;
    void test(`${name} ${input}`, () => {
      if (expected === 'error') {
        assert.throws(() => lex.processWord(input, ENV_VAR_ENV), `expected an error for ${input}`);
      } else {
        assert.equal(lex.processWord(input, ENV_VAR_ENV), expected);
      }
    });
  });
});

let wordsCases = 0;
void describe('shell-lexer/wordsTest', () => {
  const lex = new ShellLex('\\');
  const env = new Map<string, string>();
  readLines('wordsTest').forEach((line, i) => {
    if (line.startsWith('#') || line.trim() === '') return;
    if (line.startsWith('ENV ')) {
      const def = line.slice(4).replace(/^ +/, '');
      const eq = def.indexOf('=');
      env.set(def.slice(0, eq), def.slice(eq + 1));
      return;
    }
    const snapshot = new Map(env); // definitions so far, not later ones
    const bar = line.indexOf('|');
    const input = line.slice(0, bar).trim();
    const right = line.slice(bar + 1).replace(/^ +/, '');
    wordsCases++;
    void test(`wordsTest:${i + 1} ${input}`, () => {
      if (right === 'error') {
        assert.throws(() => lex.processWords(input, snapshot));
      } else {
        assert.deepEqual(lex.processWords(input, snapshot), right.split(','));
      }
    });
  });
});

void test('shell-lexer cases were found', () => {
  assert.ok(envVarCases > 0, 'no envVarTest cases read');
  assert.ok(wordsCases > 0, 'no wordsTest cases read');
});

after(() => {
  process.stdout.write(
    `# conformance: ${positive.length} parser, ${negative.length} negative, ` +
      `${envVarCases} envVarTest (${envVarSkipped} Windows-only W lines skipped), ${wordsCases} wordsTest\n`,
  );
});
