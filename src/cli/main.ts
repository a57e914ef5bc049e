/**
 * The `kiln` command line. Runs the engine in-process (no daemon needed), or
 * with --host / KILN_HOST sends builds to a kilnd (src/daemon).
 * Global options: --root (state directory), --namespace / KILN_NAMESPACE,
 * --snapshotter, --log-level, --host. Exit codes: 0 success, 1 failure, 2 usage error.
 */
import { Command, CommanderError } from 'commander';
import { KilnError } from '../core/errors.ts';
import { type CliContext, createContext, defaultRoot } from './context.ts';

type Register = (program: Command, ctx: CliContext) => void;

/**
 * Command modules, loaded on demand: a command loads only its own module (and
 * what that imports), so `kiln run` does not pay for the build front end.
 * Help, version and unknown commands load them all.
 */
const MODULES: Record<string, () => Promise<Register>> = {
  namespace: async () => (await import('./commands/namespace.ts')).registerNamespaceCommands,
  content: async () => (await import('./commands/content.ts')).registerContentCommands,
  snapshot: async () => (await import('./commands/snapshot.ts')).registerSnapshotCommands,
  diff: async () => (await import('./commands/diff.ts')).registerDiffCommands,
  gc: async () => (await import('./commands/gc.ts')).registerGcCommand,
  images: async () => (await import('./commands/images.ts')).registerImageCommands,
  run: async () => (await import('./commands/run.ts')).registerRunCommands,
  build: async () => (await import('./commands/build.ts')).registerBuildCommand,
  debug: async () => {
    const { registerDebugCommands } = await import('./commands/debug.ts');
    return (program) => registerDebugCommands(program);
  },
};

/** Command word (and aliases) → the module that registers it. */
const COMMANDS: Record<string, string> = {
  namespace: 'namespace',
  ns: 'namespace',
  content: 'content',
  snapshot: 'snapshot',
  snapshots: 'snapshot',
  diff: 'diff',
  apply: 'diff',
  gc: 'gc',
  pull: 'images',
  push: 'images',
  images: 'images',
  image: 'images',
  run: 'run',
  exec: 'run',
  ps: 'run',
  kill: 'run',
  rm: 'run',
  events: 'run',
  build: 'build',
  debug: 'debug',
};

/** Global options that take a value (the command word comes after them). */
const VALUE_OPTIONS = new Set(['--root', '-n', '--namespace', '--snapshotter', '--log-level', '--host']);

/** The modules a command line needs: its command's, or all when there is none or it is unknown. */
export function modulesFor(args: string[]): string[] {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (VALUE_OPTIONS.has(a)) {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    const mod = COMMANDS[a];
    return mod ? [mod] : Object.keys(MODULES);
  }
  return Object.keys(MODULES);
}

export async function buildProgram(args: string[]): Promise<{ program: Command; close(): Promise<void> }> {
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
    .option(
      '--host <address>',
      'run builds on this kilnd, e.g. unix:///run/kiln/kilnd.sock (env KILN_HOST; default: in this process)',
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
  const ctx = createContext(program);
  const registers = await Promise.all(modulesFor(args).map((name) => MODULES[name]!()));
  for (const register of registers) register(program, ctx);
  for (const cmd of program.commands) cmd.exitOverride();
  return { program, close: () => ctx.close() };
}

/** Runs one command line (`argv` as in process.argv); resolves to the exit code. */
export async function runMain(argv: string[]): Promise<number> {
  const { program, close } = await buildProgram(argv.slice(2));
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

/** Runs the command line of this process: what `kiln` does (also from the start-up snapshot, ./snapshot.ts). */
export function start(): void {
  // A reader that went away (`kiln images ls | head`) is not an error.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  void runMain(process.argv).then((code) => {
    process.exitCode = code;
  });
}

// No top-level await: the start-up snapshot bundles this module as CommonJS.
if (import.meta.main) start();
