/**
 * Dockerfile parser beyond the conformance data: heredocs (per the Dockerfile
 * reference; the machine's docker 20.10 BuildKit predates them), directives,
 * BOM and CRLF input, errors with file and line, the dump's Go-style quoting,
 * instruction flag parsing, and the `kiln debug dump-dockerfile` command on
 * real files.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Command } from 'commander';
import { registerDebugCommands } from '../../src/cli/commands/debug.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { dumpAst, goQuote } from '../../src/frontend/dockerfile/dump.ts';
import {
  checkFlags,
  INSTRUCTION_FLAGS,
  isInstructionKeyword,
  parseFlags,
  parseInstructionFlags,
} from '../../src/frontend/dockerfile/flags.ts';
import { DockerfileSyntaxError, type Node, parseDockerfile } from '../../src/frontend/dockerfile/parser.ts';

function parse(src: string | Uint8Array) {
  return parseDockerfile(src, { filename: 'Dockerfile' });
}

function syntaxError(line: number, re: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof DockerfileSyntaxError, `not a DockerfileSyntaxError: ${String(err)}`);
    assert.ok(isKilnError(err, 'InvalidArgument'));
    assert.equal(err.line, line, err.message);
    assert.equal(err.file, 'Dockerfile');
    assert.ok(err.message.startsWith(`Dockerfile:${line}: `), err.message);
    assert.match(err.message, re);
    return true;
  };
}

void describe('heredocs', () => {
  void test('RUN <<EOF consumes the body up to the terminator', () => {
    const r = parse('FROM busybox\nRUN <<EOF\necho hi \\\n# not a comment\n\nEOF\nRUN true\n');
    assert.equal(dumpAst(r), '(from "busybox")\n(run "<<EOF")\n(run "true")\n');
    const run = r.instructions[1]!;
    assert.deepEqual(run.heredocs, [
      {
        name: 'EOF',
        content: 'echo hi \\\n# not a comment\n\n',
        expand: true,
        chomp: false,
        fileDescriptor: 0,
      },
    ]);
    assert.equal(run.startLine, 2);
    assert.equal(run.endLine, 6);
    assert.equal(r.instructions[2]!.startLine, 7);
    assert.equal(r.endLine, 7);
  });

  void test('<<- strips leading tabs from body lines and the terminator', () => {
    const r = parse('FROM a\nRUN <<-EOT cat > /x\n\t\tindented\n\t  mixed\n\tEOT\n');
    const doc = r.instructions[1]!.heredocs[0]!;
    assert.equal(doc.chomp, true);
    assert.equal(doc.content, 'indented\n  mixed\n');
    assert.equal(r.instructions[1]!.endLine, 5);
  });

  void test('without - a tab-indented terminator is body text', () => {
    assert.throws(() => parse('FROM a\nRUN <<EOT\nx\n\tEOT\n'), syntaxError(2, /unterminated heredoc "EOT"/));
  });

  void test('quoted names disable expansion', () => {
    const r = parse(
      `FROM a\nRUN <<"EOF"\n$X\nEOF\nRUN <<'EOF'\n$X\nEOF\nRUN <<\\EOF\n$X\nEOF\nRUN <<EOF\n$X\nEOF\n`,
    );
    assert.deepEqual(
      r.instructions
        .slice(1)
        .map((n) => [n.heredocs[0]!.name, n.heredocs[0]!.expand, n.heredocs[0]!.content]),
      [
        ['EOF', false, '$X\n'],
        ['EOF', false, '$X\n'],
        ['EOF', false, '$X\n'],
        ['EOF', true, '$X\n'],
      ],
    );
  });

  void test('several heredocs on one line are read in order (COPY)', () => {
    const r = parse('FROM a\nCOPY <<A <<"B" /dest/\na1\nA\nb1\nb2\nB\nCOPY <<EOF /file\ncontent\nEOF\n');
    assert.equal(dumpAst(r), '(from "a")\n(copy "<<A" "<<\\"B\\"" "/dest/")\n(copy "<<EOF" "/file")\n');
    const [a, b] = r.instructions[1]!.heredocs;
    assert.deepEqual([a!.name, a!.content, a!.expand], ['A', 'a1\n', true]);
    assert.deepEqual([b!.name, b!.content, b!.expand], ['B', 'b1\nb2\n', false]);
    assert.equal(r.instructions[1]!.endLine, 7);
    assert.equal(r.instructions[2]!.heredocs[0]!.content, 'content\n');
  });

  void test('ADD heredoc, file descriptor prefix and an empty body', () => {
    const r = parse('FROM a\nADD <<EOF /x\nEOF\nRUN 3<<EOF cat <&3\nx\nEOF\n');
    assert.deepEqual(r.instructions[1]!.heredocs, [
      { name: 'EOF', content: '', expand: true, chomp: false, fileDescriptor: 0 },
    ]);
    assert.equal(r.instructions[2]!.heredocs[0]!.fileDescriptor, 3);
  });

  void test('not heredocs: JSON form, quoted text, here-strings, other instructions', () => {
    const r = parse(
      'FROM a\nRUN ["cat", "<<EOF"]\nRUN echo "<<EOF" \'<<X\' <<<word\nENV A <<EOF\nLABEL x=<<EOF\nRUN cat<<EOF\n',
    );
    for (const n of r.instructions) assert.deepEqual(n.heredocs, [], n.original);
    assert.equal(r.instructions.length, 6);
  });

  void test('ONBUILD RUN <<EOF: the body belongs to the nested instruction', () => {
    const r = parse('FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\nRUN true\n');
    assert.equal(dumpAst(r), '(from "a")\n(onbuild (run "<<EOF"))\n(run "true")\n');
    assert.equal(r.instructions[1]!.next!.heredocs[0]!.content, 'echo hi\n');
    assert.equal(r.instructions[1]!.endLine, 4);
    assert.equal(r.instructions[1]!.next!.endLine, 4);
  });

  void test('CRLF heredoc bodies lose their CR', () => {
    const r = parse('FROM a\r\nRUN <<EOF\r\nline\r\nEOF\r\n');
    assert.equal(r.instructions[1]!.heredocs[0]!.content, 'line\n');
  });

  void test('unterminated heredoc is an error at the instruction line', () => {
    assert.throws(
      () => parse('FROM a\n\nCOPY <<EOF /x\nbody\n'),
      syntaxError(3, /unterminated heredoc "EOF"/),
    );
  });
});

void describe('input encoding', () => {
  void test('a UTF-8 BOM is ignored, even before a directive', () => {
    const body = Buffer.from('# escape=`\nFROM a `\n  b\nRUN echo C:\\dir\n', 'utf8');
    const r = parse(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), body]));
    assert.equal(r.escapeChar, '`');
    assert.equal(dumpAst(r), '(from "a" "b")\n(run "echo C:\\\\dir")\n');
  });

  void test('CRLF and LF files parse the same, with the same line numbers', () => {
    const lf = 'FROM a\n\nRUN echo \\\n  hi\nENV A=1 \\\n\n  B=2\n';
    const a = parse(lf);
    const b = parse(lf.replaceAll('\n', '\r\n'));
    assert.equal(dumpAst(b), dumpAst(a));
    assert.equal(dumpAst(a), '(from "a")\n(run "echo   hi")\n(env "A" "1" "=" "B" "2" "=")\n');
    assert.deepEqual(
      b.instructions.map((n) => [n.startLine, n.endLine]),
      a.instructions.map((n) => [n.startLine, n.endLine]),
    );
    assert.deepEqual(a.warnings, [{ message: 'empty continuation line', line: 6 }]);
  });

  void test('invalid UTF-8 bytes survive to the dump as \\xNN', () => {
    const bytes = Buffer.concat([
      Buffer.from('FROM a\nLABEL k=v'),
      Buffer.from([0xff, 0xc3]),
      Buffer.from('é\n'),
    ]);
    assert.equal(dumpAst(parse(bytes)), '(from "a")\n(label "k" "v\\xff\\xc3é" "=")\n');
  });
});

void describe('directives and errors', () => {
  void test('syntax and check directives are recorded; names are case-insensitive', () => {
    const r = parse('# SYNTAX = docker/dockerfile:1\n#check=skip=all\n# unknown=1\n# escape=`\nFROM a \\\n');
    assert.deepEqual(r.directives, { syntax: 'docker/dockerfile:1', check: 'skip=all', escape: '\\' });
    assert.equal(r.startLine, 5);
  });

  void test('a repeated directive is an error', () => {
    assert.throws(
      () => parse('# escape=\\\n# escape=`\nFROM a\n'),
      syntaxError(2, /only one escape parser directive/),
    );
  });

  void test('an invalid escape directive is an error', () => {
    assert.throws(() => parse('# escape=x\nFROM a\n'), syntaxError(1, /invalid escape token "x"/));
  });

  void test('a file with only directives has no instructions', () => {
    assert.throws(
      () => parse('# syntax=x\n\n# comment\n'),
      (err: unknown) => err instanceof DockerfileSyntaxError && /file with no instructions/.test(err.message),
    );
  });

  void test('ENV/LABEL errors carry the line', () => {
    assert.throws(() => parse('FROM a\n\nENV lonely\n'), syntaxError(3, /ENV must have two arguments/));
    assert.throws(() => parse('FROM a\nLABEL a=1 \\\n  b\n'), syntaxError(2, /can't find = in "b"/));
  });

  void test('a JSON array holding a non-string is an error', () => {
    assert.throws(
      () => parse('FROM a\nCMD ["a", 1]\n'),
      syntaxError(2, /arrays must be comprised of strings only/),
    );
    assert.throws(() => parse('FROM a\nCOPY ["a", ["b"]]\n'), syntaxError(2, /strings only/));
  });

  void test('json flag, ONBUILD nesting and unknown instructions', () => {
    const r = parse('FROM a\nCMD ["x"]\nCMD x\nONBUILD COPY --from=b a /c\nFOO --bar baz\n');
    assert.deepEqual(
      r.instructions.map((n) => n.json),
      [false, true, false, false, false],
    );
    const onbuild = r.instructions[3]!;
    assert.deepEqual(onbuild.args, []);
    assert.deepEqual(
      [onbuild.next!.keyword, onbuild.next!.flags, onbuild.next!.args],
      ['copy', ['--from=b'], ['a', '/c']],
    );
    assert.equal(
      dumpAst(r).split('\n').slice(3).join('\n'),
      '(onbuild (copy ["--from=b"] "a" "/c"))\n(foo ["--bar"] "")\n',
    );
    assert.equal(onbuild.original, 'ONBUILD COPY --from=b a /c');
  });
});

void describe('goQuote matches Go strconv.Quote', () => {
  const cases: [string, string][] = [
    ['plain', '"plain"'],
    ['q"b\\', '"q\\"b\\\\"'],
    ['\x07\b\f\n\r\t\v', '"\\a\\b\\f\\n\\r\\t\\v"'],
    ['\x00\x1b\x7f', '"\\x00\\x1b\\x7f"'],
    ['\u0085\u00a0\u200b', '"\\u0085\\u00a0\\u200b"'],
    ['♥☃é한', '"♥☃é한"'],
    ['😀𝔸', '"😀𝔸"'],
    ['\u{e0001}\u{f0000}', '"\\U000e0001\\U000f0000"'],
    ['\udcff\ud800', '"\\xff\\ufffd"'],
  ];
  for (const [input, want] of cases)
    void test(JSON.stringify(input), () => assert.equal(goQuote(input), want));
});

void describe('flags', () => {
  function node(line: string, lineNo = 1): Node {
    const r = parse('\n'.repeat(lineNo - 1) + line + '\n');
    return r.instructions[0]!;
  }

  void test('typed values from the instruction table', () => {
    const n = node(
      'COPY --from=build --chown="app user":grp --link --exclude=*.md --exclude=tmp/ --parents=false a b',
    );
    const v = parseInstructionFlags(n as Node & { keyword: 'copy' });
    assert.deepEqual(v, {
      from: 'build',
      chown: 'app user:grp',
      chmod: undefined,
      link: true,
      parents: false,
      exclude: ['*.md', 'tmp/'],
    });
    const run = parseFlags(
      node('RUN --mount=type=cache,target=/c --mount=type=secret,id=s --network=none echo'),
      INSTRUCTION_FLAGS.run,
    );
    assert.deepEqual(run, {
      mount: ['type=cache,target=/c', 'type=secret,id=s'],
      network: 'none',
      security: undefined,
    });
    const hc = parseFlags(
      node('HEALTHCHECK --interval=5s --retries=3 CMD true'),
      INSTRUCTION_FLAGS.healthcheck,
    );
    assert.equal(hc.interval, '5s');
    assert.equal(hc.retries, '3');
    assert.equal(hc.timeout, undefined);
  });

  void test('errors carry the instruction line', () => {
    assert.throws(
      () => parseFlags(node('COPY --foo a b', 7), INSTRUCTION_FLAGS.copy),
      syntaxError(7, /^Dockerfile:7: unknown flag: --foo/),
    );
    assert.throws(
      () => parseFlags(node('FROM --platform busybox', 3), INSTRUCTION_FLAGS.from),
      syntaxError(3, /missing a value on flag: --platform/),
    );
    assert.throws(
      () => parseFlags(node('COPY --link=maybe a b', 2), INSTRUCTION_FLAGS.copy),
      syntaxError(2, /expecting boolean value for flag --link, not: "maybe"/),
    );
    assert.throws(
      () => parseFlags(node('COPY --from=a --from=b x y', 4), INSTRUCTION_FLAGS.copy),
      syntaxError(4, /duplicate flag specified: --from/),
    );
    assert.throws(
      () => parseFlags(node('ADD --from=a x y', 5), INSTRUCTION_FLAGS.add),
      syntaxError(5, /unknown flag: --from/),
    );
    assert.throws(
      () => parseFlags(node('RUN --mount echo', 6), INSTRUCTION_FLAGS.run),
      syntaxError(6, /missing a value on flag: --mount/),
    );
    assert.throws(
      () => parseFlags(node('ENV --x=1 a=b', 8), INSTRUCTION_FLAGS.env),
      syntaxError(8, /unknown flag: --x \(ENV accepts no flags\)/),
    );
  });

  void test('checkFlags looks the keyword up; unknown keywords take no flags', () => {
    assert.deepEqual(checkFlags(node('FROM --platform=linux/arm64 a')), { platform: 'linux/arm64' });
    assert.throws(
      () => checkFlags(node('FOO --x a', 2)),
      syntaxError(2, /unknown flag: --x \(FOO accepts no flags\)/),
    );
    assert.ok(isInstructionKeyword('copy'));
    assert.ok(!isInstructionKeyword('foo'));
  });

  void test('every instruction has an entry', () => {
    for (const kw of [
      'from',
      'run',
      'copy',
      'add',
      'healthcheck',
      'onbuild',
      'env',
      'arg',
      'cmd',
      'workdir',
    ]) {
      assert.ok(Object.hasOwn(INSTRUCTION_FLAGS, kw), kw);
    }
    assert.deepEqual(Object.keys(INSTRUCTION_FLAGS.add).sort(), [
      'checksum',
      'chmod',
      'chown',
      'exclude',
      'keep-git-dir',
      'link',
      'unpack',
    ]);
  });
});

void describe('kiln debug dump-dockerfile', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-dump-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function run(args: string[]): Promise<string> {
    let out = '';
    const program = new Command('kiln').exitOverride();
    registerDebugCommands(program, { stdout: (t) => (out += t) });
    await program.parseAsync(['node', 'kiln', 'debug', 'dump-dockerfile', ...args]);
    return out;
  }

  void test('prints the dump of a real file', async () => {
    const file = join(dir, 'Dockerfile');
    await writeFile(file, 'FROM busybox AS base\nCOPY --chown=1:1 <<EOF /x\nhello\nEOF\nCMD ["sh"]\n');
    assert.equal(
      await run([file]),
      '(from "busybox" "AS" "base")\n(copy ["--chown=1:1"] "<<EOF" "/x")\n(cmd "sh")\n',
    );
  });

  void test('a syntax error names the file and line', async () => {
    const file = join(dir, 'Bad.Dockerfile');
    await writeFile(file, 'FROM a\nRUN true\nENV novalue\n');
    await assert.rejects(run([file]), (err: unknown) => {
      assert.ok(err instanceof DockerfileSyntaxError);
      assert.equal(err.message, `${file}:3: ENV must have two arguments, got only "novalue"`);
      return true;
    });
  });

  void test('a missing file is NotFound', async () => {
    await assert.rejects(run([join(dir, 'nope')]), (err: unknown) => isKilnError(err, 'NotFound'));
  });
});
