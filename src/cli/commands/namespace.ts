/** `kiln namespace`: list, create, label and remove namespaces. */
import type { Command } from 'commander';
import type { CliContext } from '../context.ts';
import { collect, formatLabels, parseKeyValues, table } from '../format.ts';

export function registerNamespaceCommands(program: Command, ctx: CliContext): void {
  const ns = program
    .command('namespace')
    .alias('ns')
    .description('manage namespaces (they isolate content, snapshots, images and leases)')
    .addHelpText(
      'after',
      '\nExamples:\n  kiln namespace ls\n  kiln namespace create ci --label team=build\n  kiln namespace rm ci',
    );

  ns.command('ls')
    .description('list namespaces')
    .option('-q, --quiet', 'print only names')
    .action(async (opts: { quiet?: boolean }) => {
      const core = await ctx.core();
      const list = core.namespaces.list();
      if (opts.quiet) for (const n of list) process.stdout.write(`${n.name}\n`);
      else table([['NAME', 'LABELS'], ...list.map((n) => [n.name, formatLabels(n.labels)])]);
    });

  ns.command('create')
    .description('create a namespace')
    .argument('<name>')
    .option('--label <key=value>', 'label to set (repeatable)', collect)
    .action(async (name: string, opts: { label?: string[] }) => {
      const core = await ctx.core();
      core.namespaces.create(name, parseKeyValues(opts.label, 'label'));
    });

  ns.command('label')
    .description('set labels on a namespace (an empty value removes the label)')
    .argument('<name>')
    .argument('<key=value...>')
    .action(async (name: string, kvs: string[]) => {
      const core = await ctx.core();
      const labels = parseKeyValues(kvs, 'label');
      core.namespaces.update(
        name,
        labels,
        Object.keys(labels).map((k) => `labels.${k}`),
      );
    });

  ns.command('rm')
    .description('remove namespaces; refused while a namespace holds content, snapshots, images or leases')
    .argument('<name...>')
    .action(async (names: string[]) => {
      const core = await ctx.core();
      for (const n of names) {
        core.namespaces.delete(n);
        process.stdout.write(`${n}\n`);
      }
    });
}
