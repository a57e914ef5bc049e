/**
 * Helpers for node:sqlite connections: prepared statements compiled once per
 * SQL text (callers pass constant texts, so the cache stays small; compiling
 * a statement costs tens of microseconds and a container start runs dozens),
 * and how a WAL-mode connection is closed (`closeDatabase`).
 */
import { closeSync, fdatasyncSync, openSync } from 'node:fs';
import type { DatabaseSync, StatementSync } from 'node:sqlite';

/** A function that returns `db`'s prepared statement for a SQL text, compiling it on first use. */
export function statementCache(db: DatabaseSync): (sql: string) => StatementSync {
  const statements = new Map<string, StatementSync>();
  return (sql) => {
    let st = statements.get(sql);
    if (!st) {
      st = db.prepare(sql);
      statements.set(sql, st);
    }
    return st;
  };
}

let exitAfterClose = false;
const parked = new Set<DatabaseSync>();

/**
 * Declares that this process exits with `process.exit()` right after its stores close (the CLI:
 * ../cli/program.ts `startCli`). `closeDatabase` then parks connections instead of closing them.
 */
export function closeForExit(): void {
  exitAfterClose = true;
}

/**
 * Closes a WAL-mode connection to the database file `file`.
 *
 * Normally: a passive checkpoint, then close; SQLite's last connection checkpoints again and
 * deletes the WAL, and the next process to write creates it anew. That is two fsyncs at the close
 * and two more (the WAL and its directory) at the next first write, per database: with three
 * databases, ~4 ms of a 100 ms no-change build, and on this ext4 now and then 50 ms for one.
 *
 * In a process about to exit (`closeForExit`): the WAL is fdatasynced, which makes every commit as
 * durable as the checkpoint would, and the connection is left open. `process.exit()` does not
 * close it (Node's normal teardown would, and so checkpoint), so the WAL stays for the next
 * process, which appends to it; SQLite checkpoints it once it reaches `wal_autocheckpoint`
 * (1,000 pages). A process that dies instead loses nothing either: the WAL is recovered at the
 * next open.
 */
export function closeDatabase(db: DatabaseSync, file: string): void {
  if (!db.isOpen || parked.has(db)) return;
  if (exitAfterClose) {
    parked.add(db);
    syncFile(`${file}-wal`);
    return;
  }
  try {
    db.exec('PRAGMA wal_checkpoint(PASSIVE)');
  } catch {
    // busy: the last connection's close checkpoints anyway
  }
  db.close();
}

function syncFile(file: string): void {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // nothing written: no WAL
    throw err;
  }
  try {
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
