/**
 * Prepared statements of a node:sqlite connection, compiled once per SQL
 * text: callers pass constant texts, so the cache stays small. Compiling a
 * statement costs tens of microseconds; a container start runs dozens.
 */
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
