/**
 * Which OCI runtime containers use, chosen once per state directory: the
 * result of `probeRuntime` (crun, with the hybrid-cgroup workaround, else
 * runc) is cached in `<root>/runtime/selected.json` so that starting a
 * container does not pay a probe container each time. `KILN_RUNTIME=crun|runc`
 * forces a runtime (no probe, nothing cached). Delete the file to probe again.
 */
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { errInvalidArgument } from '../errors.ts';
import { runDirFor } from '../rundir.ts';
import { OciRuntime, probeRuntime, type RuntimeName } from '../runtime/runtime.ts';
import { writeFileAtomic } from '../runtime/spec.ts';

interface Selected {
  name: RuntimeName;
  hideUnifiedCgroup: boolean;
}

export async function selectRuntime(root: string, env = process.env): Promise<OciRuntime> {
  // The runtime's state is ephemeral (rundir.ts); the choice is kept with the root.
  const stateDir = path.join(runDirFor(root), 'runtime');
  const forced = env.KILN_RUNTIME;
  if (forced) {
    if (forced !== 'crun' && forced !== 'runc') {
      throw errInvalidArgument(`KILN_RUNTIME "${forced}" is invalid: want crun or runc`);
    }
    return new OciRuntime({ name: forced, stateDir, hideUnifiedCgroup: true });
  }
  const file = path.join(root, 'runtime', 'selected.json');
  try {
    const s = JSON.parse(await readFile(file, 'utf8')) as Selected;
    if (s.name === 'crun' || s.name === 'runc') {
      return new OciRuntime({ name: s.name, stateDir, hideUnifiedCgroup: s.hideUnifiedCgroup });
    }
  } catch {
    // not probed yet, or unreadable: probe
  }
  const { runtime } = await probeRuntime({ stateDir, hideUnifiedCgroup: true });
  const selected: Selected = { name: runtime.name, hideUnifiedCgroup: runtime.hideUnifiedCgroup };
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, JSON.stringify(selected), 0o600);
  return runtime;
}
