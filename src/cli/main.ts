/**
 * The `kiln` command line. Runs the engine in-process (no daemon needed), or
 * with --host / KILN_HOST sends builds to a kilnd (src/daemon).
 * Global options: --root (state directory), --namespace / KILN_NAMESPACE,
 * --snapshotter, --log-level, --host. Exit codes: 0 success, 1 failure, 2 usage error.
 */
import type { Command } from 'commander';
import { type CliContext, createContext } from './context.ts';
import { newProgram, runProgram, startCli, VALUE_OPTIONS } from './program.ts';

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
  const program = newProgram();
  const ctx = createContext(program);
  const registers = await Promise.all(modulesFor(args).map((name) => MODULES[name]!()));
  for (const register of registers) register(program, ctx);
  return { program, close: () => ctx.close() };
}

/** Runs one command line (`argv` as in process.argv); resolves to the exit code. */
export async function runMain(argv: string[]): Promise<number> {
  const { program, close } = await buildProgram(argv.slice(2));
  return runProgram(program, argv, close);
}

/** Runs the command line of this process: what `kiln` does (also from the start-up snapshot, ./snapshot.ts). */
export function start(): void {
  startCli(runMain);
}

// No top-level await: the start-up snapshot bundles this module as CommonJS.
if (import.meta.main) start();
