/**
 * Labels that say which build contexts' inodes a snapshot holds by hard
 * links (ops/copylink.ts explains the rule they serve: an inode is in at
 * most one layer of any chain). Written by whatever links one snapshot's
 * files into another (the file op's COPY, the merge op, the image
 * exporter's chain snapshots), read by the file op before it links.
 */

/** Label: which local source (shared key) a committed context snapshot holds (ops/localsync.ts). */
export const LABEL_LOCAL_KEY = 'kiln.io/local.key';

/** Label: keys of the local sources (contexts) whose inodes a snapshot's own directory holds by links. */
export const LABEL_LINKS_LOCAL = 'kiln.io/links.local';

/**
 * Label: for some of the keys of LABEL_LINKS_LOCAL, the context path below
 * which every inode the snapshot received by a link lies (JSON object, key →
 * path relative to the context root, '' for all of it). Written by the file
 * op's COPY; a key without an entry counts as the whole context.
 */
export const LABEL_LINKS_LOCAL_PATHS = 'kiln.io/links.local.paths';

/**
 * Label on a context increment made by a version of Kiln that labels every
 * snapshot receiving links (LABEL_LINKS_LOCAL): only such increments' shared
 * inodes are linked, so a store written before labels existed (whose linked
 * layers say nothing) never gets an inode twice into one chain.
 */
export const LABEL_LINKS_TRACKED = 'kiln.io/local.links-tracked';

/** The keys a snapshot's `kiln.io/links.local` label lists. */
export function linkedKeys(labels: Readonly<Record<string, string>>): string[] {
  const v = labels[LABEL_LINKS_LOCAL];
  return v ? v.split(',') : [];
}

/**
 * The context keys whose inodes a snapshot's own directory may hold: those
 * it received by links (LABEL_LINKS_LOCAL), and its own if it is a context
 * increment. What a snapshot made by linking that directory must record.
 */
export function heldKeys(labels: Readonly<Record<string, string>>): string[] {
  const own = labels[LABEL_LOCAL_KEY];
  return own === undefined ? linkedKeys(labels) : [...linkedKeys(labels), own];
}

/**
 * Per context key whose inodes a snapshot's own directory may hold, the
 * context paths they lie below ('' = the whole context): the file op's
 * record (LABEL_LINKS_LOCAL_PATHS) where it made one, else the whole
 * context (links made by a merge or an exporter chain, and a context
 * increment's own key).
 */
export function heldPaths(labels: Readonly<Record<string, string>>): Map<string, string> {
  let recorded: Record<string, unknown> = {};
  try {
    const v: unknown = JSON.parse(labels[LABEL_LINKS_LOCAL_PATHS] ?? '{}');
    if (v && typeof v === 'object') recorded = v as Record<string, unknown>;
  } catch {
    // unreadable: every key counts as the whole context
  }
  const own = labels[LABEL_LOCAL_KEY];
  const out = new Map<string, string>();
  for (const k of linkedKeys(labels)) {
    const p = recorded[k];
    out.set(k, typeof p === 'string' ? p : '');
  }
  if (own !== undefined) out.set(own, '');
  return out;
}

/** True when context path `rel` is `prefix` or below it ('' covers everything). */
export function pathCovers(prefix: string, rel: string): boolean {
  return prefix === '' || rel === prefix || rel.startsWith(`${prefix}/`);
}

/** The longest common path of two context paths (by whole components; '' when none). */
export function commonPath(a: string, b: string): string {
  const x = a.split('/');
  const y = b.split('/');
  let n = 0;
  while (n < x.length && n < y.length && x[n] === y[n]) n++;
  return x.slice(0, n).join('/');
}

/**
 * The label of a snapshot that received inodes of these contexts by links,
 * from anywhere in them (a merge, an exporter chain snapshot); none for no keys.
 */
export function linkedKeysLabels(keys: Iterable<string>): Record<string, string> {
  const all = [...new Set(keys)].sort();
  return all.length ? { [LABEL_LINKS_LOCAL]: all.join(',') } : {};
}

/**
 * The labels of a snapshot that received inodes by links from contexts:
 * key → common context path of what was linked (the file op's COPY). None
 * when nothing was linked.
 */
export function linkLabels(linked: ReadonlyMap<string, string> | undefined): Record<string, string> {
  if (!linked || linked.size === 0) return {};
  const paths = Object.fromEntries([...linked].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return { ...linkedKeysLabels(linked.keys()), [LABEL_LINKS_LOCAL_PATHS]: JSON.stringify(paths) };
}
