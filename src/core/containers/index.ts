/**
 * Public entry of the containers package: records (store.ts), the service
 * for containers, tasks and exec (service.ts), runtime selection
 * (select.ts), and `openContainers`, which puts them together for a Core
 * and runs startup recovery.
 */
import path from 'node:path';
import { EVENTS_FILE, EventLog } from '../events/log.ts';
import type { Core } from '../metadata/index.ts';
import { selectRuntime } from './select.ts';
import { ContainerService } from './service.ts';

/** The container service of a Core, publishing to `<root>/events.log`, after recovery of stale tasks. */
export async function openContainers(
  core: Core,
  options: { recover?: boolean } = {},
): Promise<ContainerService> {
  const runtime = await selectRuntime(core.root);
  const events = new EventLog({ file: path.join(core.root, EVENTS_FILE) });
  const svc = new ContainerService({ core, runtime, events });
  if (options.recover ?? true) await svc.recover();
  return svc;
}

export { ownerAlive } from '../runtime/owner.ts';
export { selectRuntime } from './select.ts';
export {
  ContainerService,
  type CreateContainerOptions,
  type ExecOptions,
  mergeEnv,
  type TaskIO,
} from './service.ts';
export {
  type Container,
  type ContainerInput,
  type ContainerSpec,
  ContainerStore,
  type Network,
  type TaskStatus,
  validateContainerId,
} from './store.ts';
