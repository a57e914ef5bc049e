/**
 * What every CLI command gets: the global options (state root, namespace,
 * snapshotter, output format), a structured logger, and the engine core,
 * opened lazily so that commands which need no state (e.g. `kiln debug`)
 * never touch the state directory.
 */
import path from 'node:path';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import { LocalContentStore } from '../core/content/store.ts';
import { acquireStateLock, markersFor, type StateLock } from '../core/lock.ts';
import { openCore, type Core } from '../core/metadata/index.ts';
import { setTempMountRoot } from '../core/mount/mount.ts';
import { recoverMounts } from '../core/mount/recovery.ts';
import { runDirFor } from '../core/rundir.ts';
import { removeStaleBundles } from '../ops/bundles.ts';
import { createLogger, type Globals, globalsOf } from './program.ts';

export { defaultRoot, type Globals } from './program.ts';

export interface CliContext {
  globals(): Globals;
  /** The structured logger (stderr); pino is loaded on first use, not at start-up. */
  log(): Promise<Logger>;
  /**
   * Opens the core for the global root and namespace; closed when the command ends.
   * The first Kiln process on a root (holding its lock alone) recovers what a killed
   * earlier run left: temporary mounts and exec bundles.
   */
  core(): Promise<Core>;
  /** True when this process opened the root with no other Kiln process on it. */
  recovered(): boolean;
  close(): Promise<void>;
}

const STALE_INGEST_MS = 24 * 3600 * 1000;

export function createContext(program: Command): CliContext {
  return createContextFor(() => globalsOf(program));
}

/** A context over given global options (the CLI's, or kilnd's own). */
export function createContextFor(globals: () => Globals): CliContext {
  let core: Promise<Core> | undefined;
  let logger: Logger | undefined;
  let lock: StateLock | undefined;
  return {
    globals,
    async log() {
      logger ??= await createLogger(globals().logLevel);
      return logger;
    },
    core() {
      const g = globals();
      if (!core && g.host) {
        // kilnd serves builds only (so far): say where this command's work happens instead.
        process.stderr.write(
          `kiln: warning: --host (or KILN_HOST) ${g.host} applies to builds only; this command runs in this process on ${g.root}\n`,
        );
      }
      core ??= (async () => {
        // Temporary mounts live under the root; a killed earlier run may have left some.
        const mountDir = `${g.root}/mounts`;
        setTempMountRoot(mountDir);
        lock = acquireStateLock(`${g.root}/lock`, { markers: markersFor(g.root) });
        try {
          // Alone on the root, and every earlier process released it cleanly: nothing to recover.
          if (lock.mustRecover || !lock.exclusive) {
            const report = await recoverMounts(mountDir);
            if (report.unmounted.length > 0 || report.removed.length > 0) {
              (await this.log()).info(
                { unmounted: report.unmounted, removed: report.removed },
                'recovered stale mounts',
              );
            }
          }
          if (lock.mustRecover) {
            // Exec bundles belong to running builds; with the root to ourselves, any left are stale.
            await removeStaleBundles(runDirFor(g.root), path.join(g.root, 'ops'));
            lock.recovered();
          }
        } finally {
          lock.downgrade();
        }
        const opened = await openCore({ root: g.root, namespace: g.namespace, snapshotter: g.snapshotter });
        if (lock.exclusive && opened.localContent instanceof LocalContentStore) {
          // Interrupted ingests stay resumable for a day; older ones are abandoned.
          await opened.localContent.cleanupStaleIngests(STALE_INGEST_MS);
        }
        return opened;
      })();
      return core;
    },
    recovered() {
      return lock?.exclusive ?? false;
    },
    async close() {
      // A core that failed to open has already reported its error.
      const opened = await core?.catch(() => undefined);
      await opened?.close();
      lock?.release();
    },
  };
}
