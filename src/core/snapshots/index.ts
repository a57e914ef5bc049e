/**
 * Entry point of the snapshot drivers: `createSnapshotter(driver, root)`
 * opens a driver root (creating it, running startup recovery) and
 * `supportsOverlay(dir)` probes whether overlayfs can be mounted with upper
 * and work directories on the filesystem holding `dir` (it mounts and
 * unmounts a tiny overlay under `dir`). The contract is in types.ts.
 */
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { errInvalidArgument, errUnavailable } from '../errors.ts';
import { mountAll, unmountAll } from '../mount/mount.ts';
import { NativeSnapshotter } from './native.ts';
import { OverlaySnapshotter } from './overlay.ts';
import type { Snapshotter } from './types.ts';
import { noteLeftover } from '../lock.ts';

export type { Kind, Mount, SnapshotInfo, SnapshotOptions, Snapshotter, Usage } from './types.ts';
export type SnapshotterDriver = 'overlayfs' | 'native';

/** True when an overlay with lower, upper and work directories mounts under `dir` and works. */
export async function supportsOverlay(dir: string): Promise<boolean> {
  await mkdir(dir, { recursive: true });
  const probe = await mkdtemp(path.join(dir, 'tmp-overlay-probe-'));
  const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((n) => path.join(probe, n));
  await Promise.all([lower, upper, work, merged].map((d) => mkdir(d)));
  await writeFile(path.join(lower, 'f'), 'x');
  let ok: boolean;
  try {
    await mountAll(
      [
        {
          type: 'overlay',
          source: 'overlay',
          options: [`lowerdir=${lower}`, `upperdir=${upper}`, `workdir=${work}`],
        },
      ],
      merged,
    );
    try {
      ok = (await readFile(path.join(merged, 'f'), 'utf8')) === 'x';
    } finally {
      // If this throws, the probe directory is left for recovery: never rm through a mount.
      await unmountAll(merged);
    }
  } catch {
    ok = false;
    noteLeftover(); // the probe directory may be left (see above)
  }
  await rm(probe, { recursive: true, force: true });
  return ok;
}

/** Opens the snapshot driver `driver` with its state in `root`. */
export async function createSnapshotter(driver: SnapshotterDriver, root: string): Promise<Snapshotter> {
  switch (driver) {
    case 'overlayfs': {
      // Open first (taking the root's lock), then probe in snapshots/ under a tmp- name:
      // only an exclusive opener's startup cleanup removes a leftover probe, never a live one.
      // A successful probe is remembered, so later opens skip it.
      const sn = await OverlaySnapshotter.open(root);
      const marker = path.join(root, 'overlay-supported');
      if (
        !(await access(marker).then(
          () => true,
          () => false,
        ))
      ) {
        if (!(await supportsOverlay(path.join(root, 'snapshots')))) {
          await sn.close();
          throw errUnavailable(`open snapshotter "overlayfs" at "${root}": overlayfs is not supported there`);
        }
        await writeFile(marker, 'probed\n');
      }
      return sn;
    }
    case 'native':
      return NativeSnapshotter.open(root);
    default:
      throw errInvalidArgument(`open snapshotter: unknown driver "${String(driver)}"`);
  }
}
