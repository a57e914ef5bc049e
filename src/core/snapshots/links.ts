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

/** The label value for a set of keys (undefined for none). */
export function linkedKeysLabel(keys: Iterable<string>): string | undefined {
  const all = [...new Set(keys)].sort();
  return all.length ? all.join(',') : undefined;
}
