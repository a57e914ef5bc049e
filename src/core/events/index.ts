/**
 * Public entry of the events package: typed event envelopes (types.ts), the
 * in-process bus (bus.ts) and the cross-process JSON-lines log that
 * `kiln events` follows (log.ts).
 */
export {
  EventBus,
  type EventFilter,
  matchFilters,
  parseFilter,
  type Publisher,
} from './bus.ts';
export { EVENTS_FILE, EventLog, type EventLogOptions, type TailOptions, tailEvents } from './log.ts';
export { type Envelope, type EventPayloads, isTopic, TOPICS, type Topic } from './types.ts';
export type * from './types.ts';
