/**
 * The steps of a definition whose results become the layers of an image made
 * from its output: `layerChain(graph)`.
 *
 * An image's layers are the chain of snapshots below the output, each one a
 * step's result on top of the one before. That chain is found in the graph by
 * starting at the output and following, at each op, the tree the output was
 * made from: for an exec, the input mounted at "/" (only the root file system
 * output continues the chain: another mount's output is not on top of the
 * image's tree); for a file op, the tree its action changes (through earlier
 * actions of the same op to one of its inputs). It ends at a source (an
 * image's own layers), at an empty tree, and at merge and diff ops, whose
 * results are not one snapshot on top of another.
 *
 * Returns each step's digest with the output index on the chain. A step may
 * be cached and its snapshot shared with another chain: the map says which
 * results are worth computing layers for ahead of an export
 * (../exporter/layers.ts `prepareLayer`), nothing more.
 */
import type { Input } from '../gen/kiln/llb/v1/llb_pb.ts';
import type { DefinitionGraph } from './definition.ts';

export function layerChain(graph: DefinitionGraph): Map<string, number> {
  const chain = new Map<string, number>();
  let at: Input | undefined = graph.output;
  while (at !== undefined && !chain.has(at.digest)) {
    const vertex = graph.get(at.digest);
    if (!vertex) break;
    const op = vertex.op.op;
    const index: number = at.index;
    let next: Input | undefined;
    if (op.case === 'exec') {
      const root = op.value.mounts.find((m) => m.output === index);
      if (root?.dest !== '/') break;
      next = root.input === undefined ? undefined : vertex.op.inputs[root.input];
    } else if (op.case === 'file') {
      const actions = op.value.actions;
      let action = actions.findLastIndex((a) => a.output === index);
      if (action < 0) break;
      let from = actions[action]?.input?.from;
      // An action may change an earlier action's tree: follow to the op's input.
      for (let hops = 0; from?.case === 'action' && hops < actions.length; hops++) {
        action = from.value;
        from = actions[action]?.input?.from;
      }
      next = from?.case === 'opInput' ? vertex.op.inputs[from.value] : undefined;
    } else break;
    chain.set(vertex.digest, index);
    at = next;
  }
  return chain;
}
