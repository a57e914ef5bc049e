/**
 * Cache keys and vertex identities (pure functions).
 *
 * - Vertex key: sha256 over the op's cache-map digest and, per input in
 *   order, either that input's edge key or (for a content-based dep) the
 *   dep's selector and the content checksum of the selected paths.
 * - Edge key, i.e. the key of one output: `<vertex key>#<output index>`; it is
 *   what a consumer hashes into its own key. So key(vertex, output) covers the
 *   op digest, the output index and the inputs, as the design asks.
 * - Vertex identity (for merging identical work across solves): sha256 over
 *   `Vertex.digest`, `ignoreCache` and the inputs' identities and output
 *   indexes. Computed iteratively (no recursion depth limit) and memoized per
 *   Vertex object.
 */
import { sha256 } from '../core/digest.ts';
import { errInvalidArgument } from '../core/errors.ts';
import type { Vertex } from './types.ts';

/** One input's part of a vertex key. */
export type KeyPart = { readonly key: string } | { readonly selector: string; readonly checksum: string };

export function vertexKey(opDigest: string, parts: readonly KeyPart[]): string {
  const enc = parts.map((p) => ('key' in p ? ['k', p.key] : ['c', p.selector, p.checksum]));
  return sha256(JSON.stringify(['kiln.solver.key.v1', opDigest, enc]));
}

export function edgeKey(vertexKey: string, index: number): string {
  return `${vertexKey}#${index}`;
}

const ids = new WeakMap<Vertex, string>();

/** The identity of a vertex and its whole ancestry. */
export function vertexId(root: Vertex): string {
  const known = ids.get(root);
  if (known !== undefined) return known;
  // Iterative post-order walk.
  const stack: { v: Vertex; expanded: boolean }[] = [{ v: root, expanded: false }];
  const onPath = new Set<Vertex>();
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (ids.has(top.v)) {
      stack.pop();
      continue;
    }
    if (!top.expanded) {
      top.expanded = true;
      onPath.add(top.v);
      for (const e of top.v.inputs) {
        if (onPath.has(e.vertex)) throw errInvalidArgument(`vertex "${e.vertex.name}" is its own ancestor`);
        if (!ids.has(e.vertex)) stack.push({ v: e.vertex, expanded: false });
      }
      continue;
    }
    stack.pop();
    onPath.delete(top.v);
    const inputs = top.v.inputs.map((e) => [ids.get(e.vertex), e.index]);
    ids.set(top.v, sha256(JSON.stringify([top.v.digest, top.v.options.ignoreCache === true, inputs])));
  }
  return ids.get(root)!;
}
