/**
 * The `kiln` program's frame, shared by its two entries: ./main.ts (every
 * command, the engine in this process) and ./remote.ts (`kiln --host ADDR
 * build`, which loads no engine code). The global options, how their values
 * become `Globals`, and how a command line's outcome becomes an exit code.
 * Nothing here loads the engine.
 */
import { Command, CommanderError } from 'commander';
import type { Logger } from 'pino';
import { KilnError } from '../core/errors.ts';
import { noteLeftover } from '../core/lock.ts';
import { closeForExit } from '../core/sqlite.ts';

export interface Globals {
  root: string;
  namespace: string;
  snapshotter: 'overlayfs' | 'native';
  logLevel: string;
  /** A kilnd address (`--host` / KILN_HOST): commands that support it run there. */
  host?: string;
}

export function defaultRoot(): string {
  if (process.getuid?.() === 0) return '/var/lib/kiln';
  const xdg = process.env.XDG_DATA_HOME ?? `${process.env.HOME ?? '/tmp'}/.local/share`;
  return `${xdg}/kiln`;
}

/** The structured logger (JSON on stderr); pino is loaded here, on first use. */
export async function createLogger(level: string): Promise<Logger> {
  const mod = await import('pino');
  // Bundled as ESM (build/cli/js), the CommonJS module comes back as a default export only.
  const pino = mod.pino ?? mod.default;
  return pino({ level, base: undefined }, pino.destination(2));
}

/** Global options that take a value (the command word comes after them); bin/kiln knows them too. */
export const VALUE_OPTIONS = new Set([
  '--root',
  '-n',
  '--namespace',
  '--snapshotter',
  '--log-level',
  '--host',
]);

/** The program with its global options and help; commands are added by the caller. */
export function newProgram(): Command {
  return new Command('kiln')
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
    .option(
      '--host <address>',
      'run builds on this kilnd, e.g. unix:///run/kiln/kilnd.sock (env KILN_HOST; default: in this process); other commands run in this process, with a warning',
      process.env.KILN_HOST || undefined,
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
}

/** The global options' values, checked. */
export function globalsOf(program: Command): Globals {
  const o = program.opts<{
    root: string;
    namespace: string;
    snapshotter: string;
    logLevel: string;
    host?: string;
  }>();
  if (o.snapshotter !== 'overlayfs' && o.snapshotter !== 'native') {
    throw new Error(`invalid --snapshotter "${o.snapshotter}": want overlayfs or native`);
  }
  return {
    root: o.root,
    namespace: o.namespace,
    snapshotter: o.snapshotter,
    logLevel: o.logLevel,
    ...(o.host ? { host: o.host } : {}),
  };
}

/** Parses and runs a command line (`argv` as in process.argv); resolves to the exit code, having printed any error. */
export async function runProgram(
  program: Command,
  argv: string[],
  close: () => Promise<void>,
): Promise<number> {
  for (const cmd of program.commands) cmd.exitOverride();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit with 0; usage errors were already printed by commander.
      return err.exitCode === 0 ? 0 : 2;
    }
    // A command that failed may have left cleanup undone: the next start recovers (core/lock.ts).
    noteLeftover();
    const msg = err instanceof KilnError ? err.message : err instanceof Error ? err.message : String(err);
    process.stderr.write(`kiln: error: ${msg}\n`);
    if (process.env.KILN_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return 1;
  } finally {
    await close();
  }
}

/** Runs `run` on this process's command line and sets the exit code from it. */
export function startCli(run: (argv: string[]) => Promise<number>): void {
  // A reader that went away (`kiln images ls | head`) is not an error.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  // The stores park their SQLite connections at close instead of checkpointing (core/sqlite.ts):
  // the process exits with process.exit(), which leaves them be, as soon as the command is done.
  closeForExit();
  void run(process.argv)
    .then(
      (code) => {
        process.exitCode = code;
      },
      (err: unknown) => {
        process.stderr.write(`kiln: error: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exitCode = 1;
      },
    )
    // Writes to a pipe can still be queued (a full pipe, a slow reader): let them out first.
    .then(() => Promise.all([drained(process.stdout), drained(process.stderr)]))
    .finally(() => process.exit());
}

/** Resolves once everything written to `stream` so far has left the process (or failed to). */
function drained(stream: NodeJS.WriteStream): Promise<void> {
  if (stream.writableLength === 0 || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => stream.write('', () => resolve()));
}
