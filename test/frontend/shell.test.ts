// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the strings are shell expansions, not JS templates
/**
 * Shell lexer beyond the conformance data: glob pattern expansions checked
 * against real bash, matched/unmatched tracking, raw modes used for heredoc
 * detection, the backtick escape character, error messages, and the
 * `kiln debug expand` command.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { Command } from 'commander';
import { registerDebugCommands } from '../../src/cli/commands/debug.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { ShellLex } from '../../src/frontend/dockerfile/shell.ts';

const ENV: Record<string, string> = {
  F: 'app.tar.gz',
  P: '/usr/local/bin/tool',
  S: 'foobarbaz',
  E: '',
  STAR: 'a*b*c',
  U: 'héllo wörld',
  SP: 'two  spaces',
};

/** Expressions whose meaning is the same in bash and in the Dockerfile lexer. */
const BASH_COMPARABLE = [
  '${F%.*}',
  '${F%%.*}',
  '${F#*.}',
  '${F##*.}',
  '${P##*/}',
  '${P%/*}',
  '${S#f*b}',
  '${S##f*b}',
  '${S%b*}',
  '${S%%b*}',
  '${S/ba/fo}',
  '${S//ba/fo}',
  '${S/b?/X}',
  '${S//[ab]/_}',
  '${S//[!ab]/_}',
  '${S//[a-c]/.}',
  '${STAR//\\*/-}',
  '${STAR/\\*/-}',
  '${STAR#a\\*}',
  '${S/zz/yy}',
  '${S//o}',
  '${E#x}',
  '${NOPE%x}',
  '${U//ö/o}',
  '${U#h?}',
  '${S/b*/X}',
  '${S//a*z/Q}',
  '${P/"/usr"/X}',
  "${P/'/usr'/X}",
  '${S//r/$F}',
  '${NOPE:-$S}',
  '${E:-empty}',
  '${E-unset}',
  '${S:+set}',
  '${E+set}',
  '${E:+set}',
  'x${S}y$F',
  '\'$S\'"$S"',
];

function bashExpand(expr: string): string {
  const assigns = Object.entries(ENV)
    .map(([k, v]) => `${k}='${v}'`)
    .join('; ');
  return execFileSync('bash', ['-c', `${assigns}; printf %s ${expr.startsWith('$') ? `"${expr}"` : expr}`], {
    encoding: 'utf8',
  });
}

void describe('pattern and default expansions agree with bash', () => {
  const lex = new ShellLex('\\');
  for (const expr of BASH_COMPARABLE) {
    void test(expr, () => {
      assert.equal(lex.processWord(expr, ENV), bashExpand(expr));
    });
  }
});

void describe('ShellLex', () => {
  const lex = new ShellLex('\\');

  void test('Map and Record environments behave the same', () => {
    const m = new Map(Object.entries(ENV));
    assert.equal(lex.processWord('${F%%.*}-$S', m), 'app-foobarbaz');
    assert.equal(lex.processWord('${F%%.*}-$S', ENV), 'app-foobarbaz');
    // inherited properties are not variables
    assert.equal(lex.processWord('[$toString]', {}), '[]');
  });

  void test('processWordWithMatches reports used and unset variables', () => {
    const r = lex.processWordWithMatches('$S ${NOPE:-x} ${F#a} ${MISSING} $1 ${E}', ENV);
    assert.equal(r.result, 'foobarbaz x pp.tar.gz   ');
    assert.deepEqual([...r.matched].sort(), ['E', 'F', 'S']);
    assert.deepEqual([...r.unmatched].sort(), ['MISSING', 'NOPE']);
  });

  void test('processWords splits unquoted expansions but not quoted ones', () => {
    assert.deepEqual(lex.processWords('a $SP "$SP" b\\ c', ENV), [
      'a',
      'two',
      'spaces',
      'two  spaces',
      'b c',
    ]);
    assert.deepEqual(lex.processWords('   ', ENV), []);
    assert.equal(lex.processWordsWithMatches('x  y', ENV).result, 'x y');
  });

  void test('errors name the input and the problem', () => {
    const cases: [string, RegExp][] = [
      ['${}', /bad substitution/],
      ['${a:=b}', /unsupported modifier ":="/],
      ['${a:1}', /unsupported modifier ":1"/],
      ['${S', /missing '}'/],
      ['${S:-x', /missing '}'/],
      ['"abc', /double-quote/],
      ["'abc", /single-quote/],
      ['${NOPE:?must be set}', /NOPE: must be set/],
      ['${E:?}', /E: is not allowed to be unset or empty/],
      ['${NOPE?}', /NOPE: is not allowed to be unset/],
      ['${a.b}', /unexpected "\."/],
    ];
    for (const [input, re] of cases) {
      assert.throws(
        () => lex.processWord(input, ENV),
        (err: unknown) =>
          isKilnError(err, 'InvalidArgument') && re.test(err.message) && err.message.includes(input),
        input,
      );
    }
  });

  void test('backtick escape character: backslash is literal', () => {
    const bt = new ShellLex('`');
    assert.equal(bt.processWord('C:\\dir\\$S', ENV), 'C:\\dir\\foobarbaz');
    assert.equal(bt.processWord('`$S and "`"q`""', ENV), '$S and "q"');
    assert.equal(bt.processWord('${STAR//`*/-}', ENV), 'a-b-c');
    assert.equal(bt.processWord('${P//\\/x}', { P: 'a\\b\\c' }), 'axbxc');
  });

  void test('raw modes keep quotes and escapes; skipUnsetEnv keeps unset references', () => {
    const raw = new ShellLex('\\', { rawQuotes: true, rawEscapes: true, skipUnsetEnv: true });
    assert.deepEqual(raw.processWords(`cat <<"EOF" 'a b' \\x $NOPE \${NOPE} $S`, ENV), [
      'cat',
      '<<"EOF"',
      "'a b'",
      '\\x',
      '$NOPE',
      '${NOPE}',
      'foobarbaz',
    ]);
  });

  void test('positional and special parameters are never set', () => {
    assert.equal(lex.processWord('[$0$1${10}$@$*$#$?$-$$$!]', ENV), '[]');
    assert.equal(lex.processWord('${1:-one}${#:-hash}', ENV), 'onehash');
  });

  void test('rejects an invalid escape character', () => {
    assert.throws(() => new ShellLex('x' as '\\'), /invalid escape character "x"/);
  });
});

void describe('kiln debug expand', () => {
  function run(args: string[]): string {
    let out = '';
    const program = new Command('kiln').exitOverride();
    registerDebugCommands(program, { stdout: (t) => (out += t) });
    for (const c of program.commands) {
      c.exitOverride();
      for (const s of c.commands) s.exitOverride();
    }
    program.parse(['node', 'kiln', 'debug', 'expand', ...args]);
    return out;
  }

  void test('expands one word with --env', () => {
    assert.equal(run(['${NAME:-world}']), 'world\n');
    assert.equal(run(['${NAME:-world}', '--env', 'NAME=kiln']), 'kiln\n');
    assert.equal(run(['${F%.*}', '-e', 'F=app.tar.gz', '-e', 'X=1']), 'app.tar\n');
  });

  void test('--words prints one word per line', () => {
    assert.equal(run(['a "b c" $X', '--env', 'X=d e', '--words']), 'a\nb c\nd\ne\n');
  });

  void test('--escape selects the backtick', () => {
    assert.equal(run(['C:\\dir`$X', '--escape', '`']), 'C:\\dir$X\n');
  });

  void test('bad input is an error', () => {
    assert.throws(() => run(['x', '--env', 'novalue']), /invalid --env "novalue"/);
    assert.throws(() => run(['x', '--escape', '/']), /invalid --escape "\/"/);
    assert.throws(() => run(['${}']), /bad substitution/);
  });

  void test('help text carries examples', () => {
    const program = new Command('kiln');
    registerDebugCommands(program);
    const expand = program.commands
      .find((c) => c.name() === 'debug')!
      .commands.find((c) => c.name() === 'expand')!;
    let help = '';
    expand.configureOutput({ writeOut: (s) => (help += s) });
    expand.outputHelp();
    assert.match(help, /Examples:/);
    assert.match(help, /--words/);
  });
});
