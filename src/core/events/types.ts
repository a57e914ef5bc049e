/**
 * Typed events of the container core, after containerd's event topics: every
 * event carries its topic, the namespace it happened in, a timestamp
 * (ISO 8601, UTC) and a topic-specific payload. The payloads are plain JSON
 * data so events can cross process boundaries unchanged (see log.ts).
 */

export interface ContainerCreate {
  id: string;
  image: string;
  runtime: string;
}
export interface ContainerDelete {
  id: string;
}
export interface TaskStart {
  containerId: string;
  pid: number;
}
export interface TaskExit {
  containerId: string;
  exitCode: number;
  signal: string | null;
  exitedAt: string;
}
export interface TaskDelete {
  containerId: string;
  exitCode: number;
}
export interface TaskExecAdded {
  containerId: string;
  execId: string;
  args: string[];
}
export interface ImageEvent {
  name: string;
  target?: string;
}
export interface SnapshotPrepare {
  snapshotter: string;
  key: string;
  parent: string;
}
export interface SnapshotCommit {
  snapshotter: string;
  key: string;
  name: string;
}
export interface SnapshotRemove {
  snapshotter: string;
  key: string;
}

/** Topic → payload. */
export interface EventPayloads {
  '/containers/create': ContainerCreate;
  '/containers/delete': ContainerDelete;
  '/tasks/start': TaskStart;
  '/tasks/exit': TaskExit;
  '/tasks/delete': TaskDelete;
  '/tasks/exec-added': TaskExecAdded;
  '/images/create': ImageEvent;
  '/images/update': ImageEvent;
  '/images/delete': ImageEvent;
  '/snapshots/prepare': SnapshotPrepare;
  '/snapshots/commit': SnapshotCommit;
  '/snapshots/remove': SnapshotRemove;
}

export type Topic = keyof EventPayloads;

export const TOPICS: readonly Topic[] = [
  '/containers/create',
  '/containers/delete',
  '/tasks/start',
  '/tasks/exit',
  '/tasks/delete',
  '/tasks/exec-added',
  '/images/create',
  '/images/update',
  '/images/delete',
  '/snapshots/prepare',
  '/snapshots/commit',
  '/snapshots/remove',
];

/** One event envelope; `event` is typed by `topic`. */
export type Envelope<T extends Topic = Topic> = {
  [K in T]: { timestamp: string; namespace: string; topic: K; event: EventPayloads[K] };
}[T];

export function isTopic(value: string): value is Topic {
  return (TOPICS as readonly string[]).includes(value);
}
