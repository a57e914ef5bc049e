/** `kiln snapshot`: the namespace's snapshots on one driver (--snapshotter). */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { mountAll, unmountAll, withTempMount } from '../../core/mount/mount.ts';
import type { Mount, SnapshotInfo } from '../../core/snapshots/types.ts';
import type { CliContext } from '../context.ts';
import { age, collect, formatLabels, humanSize, parseKeyValues, printJson, table } from '../format.ts';

const execFileAsync = promisify(execFile);

export function mountCommand(m: Mount, target: string): string {
  const opts = m.options.length > 0 ? ` -o ${m.options.join(',')}` : '';
  return `mount -t ${m.type} ${m.source} ${target}${m.target ? `/${m.target}` : ''}${opts}`;
}

function printMounts(mounts: Mount[], target: string | undefined): void {
  if (target) for (const m of mounts) process.stdout.write(`${mountCommand(m, target)}\n`);
}

export function registerSnapshotCommands(program: Command, ctx: CliContext): void {
  const snap = program
    .command('snapshot')
    .alias('snapshots')
    .description('manage snapshots: filesystem trees stacked on committed parents')
    .addHelpText(
      'after',
      `
Examples:
  kiln snapshot import base ./rootfs          commit a directory's tree as snapshot "base"
  kiln snapshot prepare work base             a writable snapshot on top of "base"
  kiln snapshot mount work /mnt/work          mount it; change files; then
  kiln snapshot unmount /mnt/work
  kiln snapshot commit app work               freeze it as "app"
  kiln snapshot tree
  kiln --snapshotter native snapshot ls`,
    );

  snap
    .command('ls')
    .description('list snapshots')
    .option(
      '--filter <expr>',
      'filter such as kind==committed, parent==NAME, labels.KEY (repeatable: OR)',
      collect,
    )
    .action(async (opts: { filter?: string[] }) => {
      const sn = await (await ctx.core()).snapshotter();
      const rows: string[][] = [['KEY', 'PARENT', 'KIND', 'AGE', 'LABELS']];
      await sn.walk((i) => {
        rows.push([i.name, i.parent ?? '', i.kind, age(i.createdAt), formatLabels(i.labels)]);
      }, opts.filter);
      table(rows);
    });

  snap
    .command('tree')
    .description('show snapshots as a tree of parents and children')
    .action(async () => {
      const sn = await (await ctx.core()).snapshotter();
      const all: SnapshotInfo[] = [];
      await sn.walk((i) => {
        all.push(i);
      });
      const children = new Map<string, SnapshotInfo[]>();
      for (const i of all) {
        const k = i.parent ?? '';
        children.set(k, [...(children.get(k) ?? []), i]);
      }
      const print = (parent: string, indent: string): void => {
        for (const c of (children.get(parent) ?? []).sort((a, b) => a.name.localeCompare(b.name))) {
          process.stdout.write(`${indent}\\_ ${c.name} (${c.kind})\n`);
          print(c.name, `${indent}   `);
        }
      };
      print('', '');
    });

  snap
    .command('info')
    .description("print a snapshot's record as JSON")
    .argument('<key>')
    .action(async (key: string) => {
      const sn = await (await ctx.core()).snapshotter();
      printJson(await sn.stat(key));
    });

  for (const kind of ['prepare', 'view'] as const) {
    snap
      .command(kind)
      .description(
        kind === 'prepare'
          ? 'create an active (writable) snapshot, optionally on a committed parent'
          : 'create a read-only view of a committed snapshot',
      )
      .argument('<key>')
      .argument(kind === 'prepare' ? '[parent]' : '<parent>')
      .option('--label <key=value>', 'label to set (repeatable)', collect)
      .option('--mounts <target>', 'print the mount commands for this target')
      .action(
        async (key: string, parent: string | undefined, opts: { label?: string[]; mounts?: string }) => {
          const sn = await (await ctx.core()).snapshotter();
          const labels = parseKeyValues(opts.label, 'label');
          const mounts =
            kind === 'prepare'
              ? await sn.prepare(key, parent, { labels })
              : await sn.view(key, parent, { labels });
          printMounts(mounts, opts.mounts);
        },
      );
  }

  snap
    .command('commit')
    .description('commit an active snapshot under a new name')
    .argument('<name>')
    .argument('<key>', 'the active snapshot')
    .option('--label <key=value>', 'label to set (repeatable)', collect)
    .action(async (name: string, key: string, opts: { label?: string[] }) => {
      const sn = await (await ctx.core()).snapshotter();
      await sn.commit(name, key, { labels: parseKeyValues(opts.label, 'label') });
    });

  snap
    .command('mounts')
    .description('print the mount commands of an active snapshot or view')
    .argument('<target>', 'where it would be mounted')
    .argument('<key>')
    .action(async (target: string, key: string) => {
      const sn = await (await ctx.core()).snapshotter();
      printMounts(await sn.mounts(key), target);
    });

  snap
    .command('mount')
    .description('mount an active snapshot or view on a directory (unmount with "kiln snapshot unmount")')
    .argument('<key>')
    .argument('<target>', 'an existing directory')
    .action(async (key: string, target: string) => {
      const sn = await (await ctx.core()).snapshotter();
      const st = await stat(target).catch(() => undefined);
      if (!st?.isDirectory()) throw new Error(`mount target "${target}" is not an existing directory`);
      await mountAll(await sn.mounts(key), target);
    });

  snap
    .command('unmount')
    .alias('umount')
    .description('unmount everything mounted on a directory')
    .argument('<target>')
    .action(async (target: string) => {
      await unmountAll(target);
    });

  snap
    .command('import')
    .description("commit a directory's tree (modes, owners, links, xattrs) as a snapshot")
    .argument('<name>', 'name of the committed snapshot')
    .argument('<dir>', 'directory to copy in')
    .option('--parent <name>', 'committed parent to stack on')
    .option('--label <key=value>', 'label to set (repeatable)', collect)
    .action(async (name: string, dir: string, opts: { parent?: string; label?: string[] }) => {
      const st = await stat(dir).catch(() => undefined);
      if (!st?.isDirectory()) throw new Error(`import source "${dir}" is not a directory`);
      const sn = await (await ctx.core()).snapshotter();
      const key = `import-${randomUUID()}`;
      const mounts = await sn.prepare(key, opts.parent);
      try {
        await withTempMount(mounts, async (target) => {
          await execFileAsync('cp', ['-a', '--no-target-directory', `${dir}/.`, `${target}/`]);
        });
        await sn.commit(name, key, { labels: parseKeyValues(opts.label, 'label') });
      } catch (err) {
        await sn.remove(key).catch(() => {});
        throw err;
      }
    });

  snap
    .command('label')
    .description('set labels on a snapshot (an empty value removes the label)')
    .argument('<key>')
    .argument('<key=value...>')
    .action(async (key: string, kvs: string[]) => {
      const sn = await (await ctx.core()).snapshotter();
      const labels = parseKeyValues(kvs, 'label');
      const info = await sn.update(
        { name: key, labels },
        Object.keys(labels).map((k) => `labels.${k}`),
      );
      process.stdout.write(`${formatLabels(info.labels)}\n`);
    });

  snap
    .command('usage')
    .description('disk usage of snapshots (their own layer, not their parents)')
    .argument('[key...]')
    .action(async (keys: string[]) => {
      const sn = await (await ctx.core()).snapshotter();
      const names = keys.length > 0 ? keys : [];
      if (names.length === 0) {
        await sn.walk((i) => {
          names.push(i.name);
        });
      }
      const rows: string[][] = [['KEY', 'SIZE', 'INODES']];
      for (const k of names) {
        const u = await sn.usage(k);
        rows.push([k, humanSize(u.size), String(u.inodes)]);
      }
      table(rows);
    });

  snap
    .command('rm')
    .description('remove snapshots; refused while a snapshot has children')
    .argument('<key...>')
    .action(async (keys: string[]) => {
      const sn = await (await ctx.core()).snapshotter();
      for (const k of keys) {
        await sn.remove(k);
        process.stdout.write(`${k}\n`);
      }
    });
}
