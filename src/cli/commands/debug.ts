/**
 * `kiln debug ...`: developer commands that expose the Dockerfile front end
 * without touching the state directory.
 *
 * - `kiln debug dump-dockerfile FILE`: parse FILE and print the AST dump
 *   (the conformance format of dump.ts). Parse errors are thrown as
 *   DockerfileSyntaxError (`FILE:LINE: ...`); main.ts prints them to stderr
 *   and exits 1.
 * - `kiln debug expand WORD [--env K=V ...] [--words] [--escape CHAR]`: run
 *   the shell lexer on WORD and print the result (one word per line with
 *   --words).
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { errInvalidArgument, wrap } from '../../core/errors.ts';
import { dumpAst } from '../../frontend/dockerfile/dump.ts';
import { parseDockerfile } from '../../frontend/dockerfile/parser.ts';
import { ShellLex } from '../../frontend/dockerfile/shell.ts';

export interface DebugIo {
  stdout: (text: string) => void;
}

const defaultIo: DebugIo = { stdout: (t) => process.stdout.write(t) };

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function registerDebugCommands(program: Command, io: DebugIo = defaultIo): void {
  const debug = program.command('debug').description('developer tools for the Dockerfile front end');

  debug
    .command('dump-dockerfile')
    .description('parse a Dockerfile and print its AST, one instruction per line')
    .argument('<file>', 'Dockerfile to parse')
    .addHelpText(
      'after',
      `
Prints one line per instruction: (keyword ["--flag" ...] "arg" ...). Nothing
is expanded. A syntax error prints FILE:LINE: message and exits with 1.

Examples:
  kiln debug dump-dockerfile ./Dockerfile
  kiln debug dump-dockerfile test/fixtures/app/Dockerfile`,
    )
    .action(async (file: string) => {
      let bytes: Uint8Array;
      try {
        bytes = await readFile(file);
      } catch (err) {
        throw wrap(err, `read Dockerfile "${file}"`);
      }
      io.stdout(dumpAst(parseDockerfile(bytes, { filename: file })));
    });

  debug
    .command('expand')
    .description('expand a word with the Dockerfile shell lexer (quotes, escapes, variables)')
    .argument('<word>', 'the word to expand (quote it for your own shell)')
    .option('-e, --env <K=V>', 'define a variable (repeatable)', collect, [] as string[])
    .option('--words', 'split into words like RUN/CMD shell-form processing; print one per line')
    .option('--escape <char>', 'escape character: \\ (default) or `', '\\')
    .addHelpText(
      'after',
      `
Examples:
  kiln debug expand '\${NAME:-world}'                   -> world
  kiln debug expand '\${NAME:-world}' --env NAME=kiln    -> kiln
  kiln debug expand 'a "b c" $X' --env X='d e' --words  -> a / b c / d / e
  kiln debug expand '\${FILE%.*}' --env FILE=app.tar.gz  -> app.tar
  kiln debug expand 'C:\\dir' --escape '\`'              -> C:\\dir`,
    )
    .action((word: string, opts: { env: string[]; words?: boolean; escape: string }) => {
      if (opts.escape !== '\\' && opts.escape !== '`') {
        throw errInvalidArgument(`invalid --escape "${opts.escape}": want \\ or \``);
      }
      const env = new Map<string, string>();
      for (const kv of opts.env) {
        const eq = kv.indexOf('=');
        if (eq <= 0) throw errInvalidArgument(`invalid --env "${kv}": want NAME=VALUE`);
        env.set(kv.slice(0, eq), kv.slice(eq + 1));
      }
      const lex = new ShellLex(opts.escape, {});
      if (opts.words) {
        for (const w of lex.processWords(word, env)) io.stdout(w + '\n');
      } else {
        io.stdout(lex.processWord(word, env) + '\n');
      }
    });
}
