/**
 * The `kiln` command line. Runs the engine in-process (no daemon needed).
 * Global options: --root (state directory), --namespace / KILN_NAMESPACE,
 * --snapshotter, --log-level. Exit codes: 0 success, 1 failure, 2 usage error.
 */
import { Command, CommanderError } from 'commander';
import { KilnError } from '../core/errors.ts';
import { registerBuildCommand } from './commands/build.ts';
import { registerContentCommands } from './commands/content.ts';
import { registerDebugCommands } from './commands/debug.ts';
import { registerDiffCommands } from './commands/diff.ts';
import { registerGcCommand } from './commands/gc.ts';
import { registerImageCommands } from './commands/images.ts';
import { registerNamespaceCommands } from './commands/namespace.ts';
import { registerRunCommands } from './commands/run.ts';
import { registerSnapshotCommands } from './commands/snapshot.ts';
import { createContext, defaultRoot } from './context.ts';

export function buildProgram(): { program: Command; close(): Promise<void> } {
  const program = new Command('kiln');
  program
    .description('Kiln: a container image builder and container core')
    .version('0.1.0')
    .option('--root <dir>', 'state directory', process.env.KILN_ROOT ?? defaultRoot())
    .option(
      '-n, --namespace <name>',
      'namespace (env KILN_NAMESPACE)',
      process.env.KILN_NAMESPACE ?? 'default',
    )
    .option(
      '--snapshotter <name>',
      'snapshotter driver: overlayfs or native',
      process.env.KILN_SNAPSHOTTER ?? 'overlayfs',
    )
    .option(
      '--log-level <level>',
      'log level: trace, debug, info, warn, error',
      process.env.KILN_LOG_LEVEL ?? 'warn',
    )
    .enablePositionalOptions()
    .showHelpAfterError()
    .exitOverride()
    .addHelpText(
      'after',
      `
Examples:
  kiln snapshot import base ./rootfs        import a directory as a committed snapshot
  kiln snapshot prepare work base           make a writable snapshot on top of it
  kiln diff base work                       export the change as an OCI layer
  kiln content ls                           list blobs in the namespace
  kiln -n other content ls                  the same, in namespace "other"`,
    );
  const ctx = createContext(program);
  registerNamespaceCommands(program, ctx);
  registerContentCommands(program, ctx);
  registerSnapshotCommands(program, ctx);
  registerDiffCommands(program, ctx);
  registerGcCommand(program, ctx);
  registerImageCommands(program, ctx);
  registerRunCommands(program, ctx);
  registerBuildCommand(program, ctx);
  registerDebugCommands(program);
  for (const cmd of program.commands) cmd.exitOverride();
  return { program, close: () => ctx.close() };
}

async function main(argv: string[]): Promise<number> {
  const { program, close } = buildProgram();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit with 0; usage errors were already printed by commander.
      return err.exitCode === 0 ? 0 : 2;
    }
    const msg = err instanceof KilnError ? err.message : err instanceof Error ? err.message : String(err);
    process.stderr.write(`kiln: error: ${msg}\n`);
    if (process.env.KILN_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return 1;
  } finally {
    await close();
  }
}

process.exitCode = await main(process.argv);
