/**
 * Where exec ops keep their OCI bundles: `<run dir>/bundles/<random>` (../core/rundir.ts), on
 * tmpfs where possible; before that they were under `<root>/ops/bundles`. A bundle belongs to a
 * running build step: only a process that has the root to itself (startup recovery) may remove
 * what is left there. A small module of its own, so that the CLI's start-up recovery does not
 * load the exec op.
 */
import path from 'node:path';
import { removeTree } from '../core/fs/safe.ts';
import { unmountAll } from '../core/mount/mount.ts';

/** The directory of exec bundles in run directory `runDir`. */
export function bundlesDir(runDir: string): string {
  return path.join(runDir, 'bundles');
}

/**
 * Unmounts and deletes the exec bundles a crashed process left (their secret tmpfs included), in
 * the run directory and where earlier versions kept them (`<stateDir>/bundles`).
 */
export async function removeStaleBundles(runDir: string, stateDir: string): Promise<void> {
  for (const dir of [bundlesDir(runDir), path.join(stateDir, 'bundles')]) {
    await unmountAll(dir);
    // Never recursively through a mount that could not be unmounted.
    await removeTree(dir);
  }
}
