/** `kiln gc`: mark and sweep across all namespaces. */
import type { Command } from 'commander';
import type { CliContext } from '../context.ts';
import { printJson } from '../format.ts';

export function registerGcCommand(program: Command, ctx: CliContext): void {
  program
    .command('gc')
    .description('remove content and snapshots that no image, lease or label refers to (all namespaces)')
    .option('--json', 'print the full result as JSON')
    .addHelpText(
      'after',
      '\nRoots are images, unexpired leases and objects labelled containerd.io/gc.root; references follow\ncontainerd.io/gc.ref.content* and containerd.io/gc.ref.snapshot.<driver>* labels and snapshot parents.\n\nExamples:\n  kiln gc\n  kiln gc --json | jq .removed.blobs',
    )
    .action(async (opts: { json?: boolean }) => {
      const core = await ctx.core();
      const r = await core.gc();
      if (opts.json) printJson(r);
      else {
        process.stdout.write(
          `removed ${r.removedContent} content records, ${r.removedBlobs} blobs, ${r.removedSnapshots} snapshots ` +
            `(${r.removedBackendSnapshots} in drivers), ${r.removedIngests} ingests, ${r.removedLeases} expired leases ` +
            `in ${r.durationMs.toFixed(1)} ms\n`,
        );
      }
    });
}
