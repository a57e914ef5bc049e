/** `kiln diff` and `kiln apply`: the diff service on snapshots of the namespace. */
import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import type { Digest } from '../../core/digest.ts';
import { apply, type Compression, compare } from '../../core/diff/index.ts';
import { parseDigest } from '../../core/digest.ts';
import type { Mount, Snapshotter } from '../../core/snapshots/types.ts';
import type { CliContext } from '../context.ts';
import { collect, parseKeyValues, printJson } from '../format.ts';

/**
 * Mounts for reading snapshot `key`: an active snapshot or view as it is, a
 * committed one through a temporary view (removed by the returned cleanup).
 */
async function readMounts(
  sn: Snapshotter,
  key: string,
): Promise<{ mounts: Mount[]; cleanup(): Promise<void> }> {
  const info = await sn.stat(key);
  if (info.kind !== 'committed') return { mounts: await sn.mounts(key), cleanup: async () => {} };
  const viewKey = `diff-view-${randomUUID()}`;
  const mounts = await sn.view(viewKey, key);
  return { mounts, cleanup: () => sn.remove(viewKey) };
}

function compressionArg(v: string): Compression {
  if (v === 'gzip' || v === 'zstd' || v === 'none') return v;
  if (v === 'uncompressed') return 'none';
  throw new Error(`invalid --compression "${v}": want gzip, zstd or uncompressed`);
}

export function registerDiffCommands(program: Command, ctx: CliContext): void {
  program
    .command('diff')
    .description('compute the OCI layer that turns LOWER into UPPER and store it as content')
    .argument('<first>', 'LOWER snapshot, or UPPER when only one is given (then LOWER is its parent)')
    .argument('[second]', 'UPPER snapshot')
    .option('--compression <type>', 'gzip, zstd or uncompressed', compressionArg, 'gzip' as Compression)
    .option('--compression-level <n>', 'gzip 1-9, zstd 1-22', (v) => Number.parseInt(v, 10))
    .option('--source-date-epoch <seconds>', 'clamp file times to this (default $SOURCE_DATE_EPOCH)', (v) =>
      Number.parseInt(v, 10),
    )
    .option('--label <key=value>', 'label for the layer blob (repeatable)', collect)
    .addHelpText(
      'after',
      `
Prints the layer's descriptor (media type, digest, size, uncompressed digest) as JSON.

Examples:
  kiln diff base work                     layer from committed "base" to active "work"
  kiln diff work                          the same: LOWER defaults to the parent of "work"
  kiln diff --compression zstd base app
  kiln diff --label containerd.io/gc.root=keep work   keep the blob through "kiln gc"`,
    )
    .action(
      async (
        first: string,
        second: string | undefined,
        opts: {
          compression: Compression;
          compressionLevel?: number;
          sourceDateEpoch?: number;
          label?: string[];
        },
      ) => {
        const core = await ctx.core();
        const sn = await core.snapshotter();
        const upperKey = second ?? first;
        let lowerKey = second ? first : undefined;
        if (!second) lowerKey = (await sn.stat(upperKey)).parent;
        const sde =
          opts.sourceDateEpoch ??
          (process.env.SOURCE_DATE_EPOCH ? Number(process.env.SOURCE_DATE_EPOCH) : undefined);
        if (sde !== undefined && !Number.isSafeInteger(sde))
          throw new Error(`invalid source date epoch "${sde}"`);
        const upper = await readMounts(sn, upperKey);
        try {
          const lower = lowerKey ? await readMounts(sn, lowerKey) : { mounts: [], cleanup: async () => {} };
          try {
            const desc = await compare(lower.mounts, upper.mounts, core.content, {
              compression: opts.compression,
              ...(opts.compressionLevel !== undefined ? { level: opts.compressionLevel } : {}),
              ...(sde !== undefined ? { sourceDateEpoch: sde } : {}),
              labels: parseKeyValues(opts.label, 'label'),
            });
            printJson(desc);
          } finally {
            await lower.cleanup();
          }
        } finally {
          await upper.cleanup();
        }
      },
    );

  program
    .command('apply')
    .description('unpack a layer blob onto an active snapshot, honouring whiteouts')
    .argument('<key>', 'active snapshot')
    .argument('<digest>', 'layer blob in the content store')
    .addHelpText(
      'after',
      `
Hostile archives (paths escaping the root, links out of it) are refused and nothing is written outside.

Examples:
  kiln snapshot prepare unpacked
  kiln apply unpacked sha256:4f2a…
  kiln snapshot commit layer1 unpacked`,
    )
    .action(async (key: string, digest: string) => {
      const core = await ctx.core();
      const sn = await core.snapshotter();
      const d: Digest = parseDigest(digest).digest;
      const info = await core.content.info(d);
      const desc = await apply(
        { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: d, size: info.size },
        core.content,
        await sn.mounts(key),
      );
      printJson(desc);
    });
}
