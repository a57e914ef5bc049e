/**
 * `snapshotChain(sn, name)`: the committed snapshot `name` and its parents,
 * root first. An active or view snapshot in the chain, or a cycle, is an
 * InvalidArgument error.
 */
import { errInvalidArgument } from '../errors.ts';
import type { SnapshotInfo, Snapshotter } from './types.ts';

export async function snapshotChain(sn: Pick<Snapshotter, 'stat'>, name: string): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = [];
  let cur: string | undefined = name;
  const seen = new Set<string>();
  while (cur !== undefined) {
    if (seen.has(cur)) throw errInvalidArgument(`walk snapshot chain of "${name}": cycle at "${cur}"`);
    seen.add(cur);
    const info = await sn.stat(cur);
    if (info.kind !== 'committed') {
      throw errInvalidArgument(`walk snapshot chain of "${name}": "${cur}" is ${info.kind}, not committed`);
    }
    out.push(info);
    cur = info.parent;
  }
  return out.reverse();
}
