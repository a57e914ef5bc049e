/**
 * The thin entry of `kiln`: `kiln --host ADDR build …` (or KILN_HOST), which
 * bin/kiln starts instead of ./main.ts when the command is `build` and a
 * kilnd address is given. Same program, same options and output as the full
 * CLI (./program.ts, ./commands/build.ts), but it loads no engine code and no
 * node:http2: the daemon does the work, and this process starts (from its
 * own start-up snapshot, ./remote-snapshot.ts), sends the request and prints
 * the progress in ~35 ms instead of the full CLI's ~100 (docs/performance.md).
 *
 * Any other command line is the full CLI's (bin/kiln decides; ./main.ts
 * handles `--host` the same way, only slower to start).
 */
import type { CliContext } from './context.ts';
import { registerBuildCommand } from './commands/build.ts';
import { createLogger, globalsOf, newProgram, runProgram, startCli } from './program.ts';
import { KilnError } from '../core/errors.ts';
import type { Logger } from 'pino';

/** Runs `kiln --host … build …` (`argv` as in process.argv); resolves to the exit code. */
export async function runRemote(argv: string[]): Promise<number> {
  const program = newProgram();
  let logger: Logger | undefined;
  const ctx: CliContext = {
    globals: () => globalsOf(program),
    async log() {
      logger ??= await createLogger(globalsOf(program).logLevel);
      return logger;
    },
    core() {
      return Promise.reject(
        new KilnError('Internal', 'the thin kiln client has no engine: run it with --host or KILN_HOST'),
      );
    },
    recovered: () => false,
    close: async () => undefined,
  };
  registerBuildCommand(program, ctx);
  return runProgram(program, argv, ctx.close);
}

// No top-level await (as ./main.ts).
if (import.meta.main) startCli(runRemote);
