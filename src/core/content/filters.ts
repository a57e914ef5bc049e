/**
 * containerd-style filter expressions, shared by every store that walks:
 * `field==value`, `field!=value`, `field~=regexp`, bare `field` (present).
 * Several expressions are OR-ed; comma-separated clauses in one are AND-ed.
 * Values may be double-quoted to hold commas.
 */
import { errInvalidArgument } from '../errors.ts';

type Clause = { field: string; op: '==' | '!=' | '~=' | 'present'; value: string; re?: RegExp };

function splitClauses(expr: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const ch of expr) {
    if (ch === '"') quoted = !quoted;
    if (ch === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (quoted) throw errInvalidArgument(`invalid filter "${expr}": unterminated quote`);
  out.push(cur);
  return out.map((s) => s.trim()).filter((s) => s !== '');
}

function parseClause(text: string, expr: string): Clause {
  const m = /^([A-Za-z0-9_.\-/]+)\s*(==|!=|~=)\s*(.*)$/.exec(text);
  if (!m) {
    if (/^[A-Za-z0-9_.\-/]+$/.test(text)) return { field: text, op: 'present', value: '' };
    throw errInvalidArgument(`invalid filter "${expr}": cannot parse "${text}"`);
  }
  const [, field, op, raw] = m as unknown as [string, string, '==' | '!=' | '~=', string];
  const value = raw.startsWith('"') && raw.endsWith('"') && raw.length >= 2 ? raw.slice(1, -1) : raw;
  if (op === '~=') {
    try {
      return { field, op, value, re: new RegExp(value) };
    } catch (err) {
      throw errInvalidArgument(`invalid filter "${expr}": bad regular expression "${value}"`, err);
    }
  }
  return { field, op, value };
}

export type Matcher = (lookup: (field: string) => string | undefined) => boolean;

/** Compiles filters into a predicate over a field lookup; no filters match everything. */
export function compileFilters(filters: string[] | undefined): Matcher {
  if (!filters || filters.length === 0) return () => true;
  const alternatives = filters.map((expr) => splitClauses(expr).map((c) => parseClause(c, expr)));
  return (lookup) =>
    alternatives.some((clauses) =>
      clauses.every((c) => {
        const v = lookup(c.field);
        switch (c.op) {
          case 'present':
            return v !== undefined;
          case '==':
            return v === c.value;
          case '!=':
            return v !== c.value;
          case '~=':
            return v !== undefined && c.re!.test(v);
          default:
            return false;
        }
      }),
    );
}

/** Lookup for objects with labels: `labels.<key>` plus the given plain fields. */
export function fieldLookup(
  fields: Record<string, string | undefined>,
  labels: Record<string, string>,
): (field: string) => string | undefined {
  return (field) => {
    if (field.startsWith('labels.')) return labels[field.slice('labels.'.length)];
    return fields[field];
  };
}
