/** `kiln content`: the namespace's content-addressed blobs. */
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { ingestStream } from '../../core/content/store.ts';
import { type Digest, parseDigest } from '../../core/digest.ts';
import type { CliContext } from '../context.ts';
import { age, collect, formatLabels, humanSize, parseKeyValues, printJson, table } from '../format.ts';

function digestArg(value: string): Digest {
  return parseDigest(value).digest;
}

export function registerContentCommands(program: Command, ctx: CliContext): void {
  const content = program
    .command('content')
    .description('manage content: blobs named by their digest')
    .addHelpText(
      'after',
      `
Examples:
  kiln content ls
  kiln content ls --filter 'labels.containerd.io/gc.root'
  echo hello | kiln content ingest my-ref
  kiln content get sha256:5891b5b5… > blob
  kiln content label sha256:5891b5b5… containerd.io/gc.root=keep
  kiln content rm sha256:5891b5b5…`,
    );

  content
    .command('ls')
    .description('list blobs')
    .option('-q, --quiet', 'print only digests')
    .option(
      '--filter <expr>',
      'filter such as digest==…, size==…, labels.KEY==VALUE (repeatable: OR)',
      collect,
    )
    .action(async (opts: { quiet?: boolean; filter?: string[] }) => {
      const core = await ctx.core();
      const rows: string[][] = [['DIGEST', 'SIZE', 'AGE', 'LABELS']];
      await core.content.walk((info) => {
        if (opts.quiet) process.stdout.write(`${info.digest}\n`);
        else rows.push([info.digest, humanSize(info.size), age(info.createdAt), formatLabels(info.labels)]);
      }, opts.filter);
      if (!opts.quiet) table(rows);
    });

  content
    .command('info')
    .description("print a blob's record as JSON")
    .argument('<digest>', 'blob digest', digestArg)
    .action(async (digest: Digest) => {
      const core = await ctx.core();
      printJson(await core.content.info(digest));
    });

  content
    .command('get')
    .description('write a blob to standard output')
    .argument('<digest>', 'blob digest', digestArg)
    .action(async (digest: Digest) => {
      const core = await ctx.core();
      await pipeline(core.content.read(digest), process.stdout, { end: false });
    });

  content
    .command('ingest')
    .description(
      'store standard input as a blob under an ingest ref (resumes an interrupted ingest of the same ref)',
    )
    .argument('<ref>', 'ingest reference chosen by the caller')
    .option('--expected-digest <digest>', 'fail unless the bytes have this digest', digestArg)
    .option('--expected-size <bytes>', 'fail unless this many bytes arrive', (v) => {
      const n = Number(v);
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`invalid --expected-size "${v}"`);
      return n;
    })
    .option('--label <key=value>', 'label to set on the blob (repeatable)', collect)
    .action(
      async (ref: string, opts: { expectedDigest?: Digest; expectedSize?: number; label?: string[] }) => {
        const core = await ctx.core();
        const digest = await ingestStream(core.content, ref, process.stdin, {
          ...(opts.expectedDigest ? { expected: opts.expectedDigest } : {}),
          ...(opts.expectedSize !== undefined ? { total: opts.expectedSize } : {}),
          labels: parseKeyValues(opts.label, 'label'),
        });
        process.stdout.write(`${digest}\n`);
      },
    );

  content
    .command('active')
    .description('list ingests in progress or interrupted')
    .action(async () => {
      const core = await ctx.core();
      const list = await core.content.listStatuses();
      table([
        ['REF', 'OFFSET', 'TOTAL', 'STARTED'],
        ...list.map((s) => [s.ref, String(s.offset), s.total ? String(s.total) : '-', age(s.startedAt)]),
      ]);
    });

  content
    .command('abort')
    .description('discard an ingest and its bytes')
    .argument('<ref>')
    .action(async (ref: string) => {
      const core = await ctx.core();
      await core.content.abort(ref);
    });

  content
    .command('label')
    .description('set labels on a blob (an empty value removes the label)')
    .argument('<digest>', 'blob digest', digestArg)
    .argument('<key=value...>')
    .action(async (digest: Digest, kvs: string[]) => {
      const core = await ctx.core();
      const labels = parseKeyValues(kvs, 'label');
      const info = await core.content.update(
        { digest, labels },
        Object.keys(labels).map((k) => `labels.${k}`),
      );
      process.stdout.write(`${formatLabels(info.labels)}\n`);
    });

  content
    .command('rm')
    .description(
      'remove blobs from the namespace (the bytes go at the next gc, if no namespace refers to them)',
    )
    .argument('<digest...>', 'blob digests')
    .action(async (digests: string[]) => {
      const core = await ctx.core();
      for (const d of digests) {
        await core.content.delete(digestArg(d));
        process.stdout.write(`${d}\n`);
      }
    });
}
