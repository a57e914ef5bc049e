/**
 * `kilnd`: serves the engine's API (gRPC, and the Connect protocol;
 * src/control/server.ts) to `kiln --host` and to the TypeScript client
 * (src/client). One daemon per state root; it shares
 * the root with embedded `kiln` commands (the root's lock is held shared).
 * SIGINT/SIGTERM stop it cleanly: running builds are canceled and their
 * mounts and processes released, the store closed, the socket removed.
 */
import { Command, CommanderError } from 'commander';
import { DEFAULT_ADDRESS, socketPath } from '../client/index.ts';
import { createContextFor, defaultRoot, type Globals } from '../cli/context.ts';
import { selectRuntime } from '../core/containers/select.ts';
import { KilnError } from '../core/errors.ts';
import { serve, VERSION } from '../control/server.ts';

interface DaemonOptions {
  root: string;
  addr: string;
  namespace: string;
  snapshotter: string;
  logLevel: string;
}

export async function runDaemon(argv: string[]): Promise<number> {
  const program = new Command('kilnd')
    .description('kilnd: the Kiln engine served over gRPC and the Connect protocol')
    .version(VERSION)
    .option('--root <dir>', 'state directory (env KILN_ROOT)', process.env.KILN_ROOT ?? defaultRoot())
    .option('--addr <address>', 'where to listen: unix:///path/to/socket', DEFAULT_ADDRESS)
    .option('-n, --namespace <name>', 'namespace of requests that name none', 'default')
    .option('--snapshotter <name>', 'snapshotter driver: overlayfs or native', 'overlayfs')
    .option('--log-level <level>', 'log level: trace, debug, info, warn, error', 'info')
    .exitOverride()
    .addHelpText(
      'after',
      `
Clients: kiln --host ADDRESS build …, or KILN_HOST=ADDRESS kiln build …

Examples:
  kilnd                                     serve /var/lib/kiln on ${DEFAULT_ADDRESS}
  kilnd --root /srv/kiln --addr unix:///tmp/kilnd.sock
  KILN_HOST=unix:///tmp/kilnd.sock kiln build -t app .`,
    );
  try {
    program.parse(argv);
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    throw err;
  }
  const o = program.opts<DaemonOptions>();
  if (o.snapshotter !== 'overlayfs' && o.snapshotter !== 'native') {
    process.stderr.write(
      `kilnd: error: invalid --snapshotter "${o.snapshotter}": want overlayfs or native\n`,
    );
    return 2;
  }
  const globals: Globals = {
    root: o.root,
    namespace: o.namespace,
    snapshotter: o.snapshotter,
    logLevel: o.logLevel,
  };
  const ctx = createContextFor(() => globals);
  const log = await ctx.log();
  try {
    const socket = socketPath(o.addr);
    await ctx.core();
    const runtime = await selectRuntime(o.root);
    const engine = {
      root: o.root,
      namespace: o.namespace,
      snapshotter: o.snapshotter,
      core: () => ctx.core(),
      close: () => ctx.close(),
    };
    const server = await serve({ engine, socket, log, runtime: runtime.name });
    await new Promise<void>((resolve) => {
      // Kept for the daemon's life (not `once`): the temporary-mount cleanup's own handler
      // (src/core/mount/mount.ts) re-raises a signal that nobody else listens to.
      let stopping = false;
      const stop = (sig: NodeJS.Signals): void => {
        if (stopping) return;
        stopping = true;
        log.info({ signal: sig }, 'stopping');
        resolve();
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    });
    await server.close();
    return 0;
  } catch (err) {
    await ctx.close().catch(() => undefined);
    const msg = err instanceof KilnError || err instanceof Error ? err.message : String(err);
    process.stderr.write(`kilnd: error: ${msg}\n`);
    return 1;
  }
}

/** Runs kilnd with this process's command line. */
export function startDaemon(): void {
  void runDaemon(process.argv).then((code) => {
    process.exitCode = code;
  });
}

if (import.meta.main) startDaemon();
