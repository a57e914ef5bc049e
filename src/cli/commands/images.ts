/**
 * `kiln pull`, `kiln push` and `kiln images` (alias `kiln image`): ls,
 * inspect, tag, rm, import, export. Registry options: `--insecure-registry
 * HOST` (plain HTTP; loopback hosts always are) and a registries file
 * (`--registry-config FILE`, default `<root>/registries.json` when present):
 * `{"insecure": ["host:port"], "mirrors": {"docker.io": ["mirror:5000"]}}`.
 * Credentials come from the docker config (`$DOCKER_CONFIG/config.json` or
 * `~/.docker/config.json`). TLS per registry (docker's certs.d layout:
 * `<dir>/<host[:port]>/*.crt` CA roots, `*.cert` + `*.key` client
 * certificate): `--certs-dir DIR` (repeatable), else `<root>/certs.d` then
 * `/etc/docker/certs.d`; CAs for every host: Node's `NODE_EXTRA_CA_CERTS`.
 * Progress goes to standard error (one line per blob state change), results
 * to standard output.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import type { Digest } from '../../core/digest.ts';
import { isErrno } from '../../core/errors.ts';
import { exportImages, importImages, pull, push, resolveImage, unpack } from '../../core/images/index.ts';
import { formatPlatform, hostPlatform, parsePlatform, selectManifest } from '../../core/images/platform.ts';
import { parseReference } from '../../core/images/reference.ts';
import {
  type Descriptor,
  isIndexMediaType,
  isManifestMediaType,
  parseImageConfig,
  parseIndex,
  parseManifest,
} from '../../core/images/types.ts';
import type { Core } from '../../core/metadata/index.ts';
import {
  Authorizer,
  defaultCertsDirs,
  dockerConfigCredentials,
  type RemoteOptions,
} from '../../core/remotes/index.ts';
import type { CliContext } from '../context.ts';
import { age, collect, humanSize, printJson, table } from '../format.ts';

interface RegistryFile {
  insecure?: string[];
  mirrors?: Record<string, string[]>;
}

interface RegistryOpts {
  insecureRegistry?: string[];
  registryConfig?: string;
  certsDir?: string[];
}

async function registrySettings(
  ctx: CliContext,
  opts: RegistryOpts,
): Promise<{ remote: RemoteOptions; mirrors: Record<string, string[]> }> {
  const file = opts.registryConfig ?? path.join(ctx.globals().root, 'registries.json');
  let cfg: RegistryFile = {};
  try {
    cfg = JSON.parse(await readFile(file, 'utf8')) as RegistryFile;
  } catch (err) {
    if (!(isErrno(err, 'ENOENT') && opts.registryConfig === undefined)) {
      throw new Error(`read registry config "${file}": ${(err as Error).message}`);
    }
  }
  const remote: RemoteOptions = {
    insecure: [...(cfg.insecure ?? []), ...(opts.insecureRegistry ?? [])],
    authorizer: new Authorizer({ credentials: dockerConfigCredentials() }),
    certsDirs: opts.certsDir?.length ? opts.certsDir : defaultCertsDirs(ctx.globals().root),
  };
  return { remote, mirrors: cfg.mirrors ?? {} };
}

function short(d: string): string {
  return d.slice(7, 19);
}

function progressPrinter(
  quiet: boolean | undefined,
): (p: { digest: Digest; kind: string; status: string; total: number }) => void {
  const last = new Map<string, string>();
  return (p) => {
    if (quiet) return;
    const key = `${p.digest} ${p.kind}`;
    if (last.get(key) === p.status) return;
    last.set(key, p.status);
    if (p.status === 'waiting' || p.status === 'pushing') return;
    process.stderr.write(
      `${short(p.digest)}  ${p.kind.padEnd(8)} ${p.status.padEnd(11)} ${humanSize(p.total)}\n`,
    );
  };
}

function addRegistryOptions(cmd: Command): Command {
  return cmd
    .option(
      '--insecure-registry <host>',
      'use plain HTTP for this registry host[:port] (repeatable)',
      collect,
    )
    .option(
      '--registry-config <file>',
      'registries file: {"insecure": [...], "mirrors": {"docker.io": [...]}}',
    )
    .option(
      '--certs-dir <dir>',
      'per-registry TLS files, <dir>/<host[:port]>/{*.crt,*.cert,*.key} (repeatable; ' +
        'default <root>/certs.d, then /etc/docker/certs.d)',
      collect,
    );
}

/** Total size of what the image's platform manifest needs (what is in the store). */
async function imageSize(core: Core, target: Descriptor): Promise<{ size: number; platforms: string[] }> {
  const readJson = async (d: Descriptor): Promise<Uint8Array> => {
    const parts: Uint8Array[] = [];
    for await (const c of core.content.read(d.digest)) parts.push(c);
    return Buffer.concat(parts);
  };
  try {
    let manifestDesc = target;
    let platforms: string[] = [];
    if (isIndexMediaType(target.mediaType)) {
      const idx = parseIndex(await readJson(target));
      platforms = idx.manifests.filter((d) => d.platform).map((d) => formatPlatform(d.platform!));
      const m = selectManifest(idx.manifests, hostPlatform()) ?? idx.manifests[0];
      if (!m) return { size: target.size, platforms };
      manifestDesc = m;
    }
    if (!isManifestMediaType(manifestDesc.mediaType)) return { size: target.size, platforms };
    const m = parseManifest(await readJson(manifestDesc));
    if (platforms.length === 0) {
      const cfg = parseImageConfig(await readJson(m.config));
      platforms = [
        formatPlatform({
          os: cfg.os,
          architecture: cfg.architecture,
          ...(cfg.variant ? { variant: cfg.variant } : {}),
        }),
      ];
    }
    return { size: [m.config, ...m.layers].reduce((n, d) => n + d.size, manifestDesc.size), platforms };
  } catch {
    return { size: target.size, platforms: ['?'] };
  }
}

export function registerImageCommands(program: Command, ctx: CliContext): void {
  addRegistryOptions(
    program
      .command('pull')
      .description('fetch an image from a registry, unpack it into snapshots and record it')
      .argument('<ref>', 'image reference, e.g. localhost:5000/app:v1')
      .option(
        '--platform <os/arch[/variant]>',
        'platform to pull from a multi-platform image (default: this host)',
      )
      .option('--all-platforms', 'fetch every platform of an index (the host platform is unpacked)')
      .option('--no-unpack', 'only fetch the content, do not unpack')
      .option('--name <name>', 'record the image under this name instead of the reference')
      .option('-q, --quiet', 'no progress; print only the digest'),
  )
    .addHelpText(
      'after',
      `
Examples:
  kiln pull localhost:5000/busybox:latest
  kiln pull --platform linux/arm64 registry.example.com/app:1.2
  kiln pull --all-platforms --no-unpack myregistry:5000/app@sha256:4f2a…
  kiln pull --insecure-registry myregistry:5000 myregistry:5000/app:v1`,
    )
    .action(
      async (
        ref: string,
        opts: RegistryOpts & {
          platform?: string;
          allPlatforms?: boolean;
          unpack: boolean;
          name?: string;
          quiet?: boolean;
        },
      ) => {
        const core = await ctx.core();
        const parsed = parseReference(ref);
        const { remote, mirrors } = await registrySettings(ctx, opts);
        const started = Date.now();
        const r = await pull(core, parsed, {
          remote,
          mirrors: mirrors[parsed.domain] ?? [],
          onMirrorError: (m, err) => {
            if (!opts.quiet) process.stderr.write(`mirror ${m}: ${err.message}; trying the next\n`);
          },
          ...(opts.platform ? { platform: parsePlatform(opts.platform) } : {}),
          ...(opts.allPlatforms ? { allPlatforms: true } : {}),
          unpack: opts.unpack,
          snapshotter: ctx.globals().snapshotter,
          ...(opts.name ? { name: opts.name } : {}),
          progress: progressPrinter(opts.quiet),
        });
        if (opts.quiet) {
          process.stdout.write(`${r.target.digest}\n`);
          return;
        }
        process.stdout.write(
          `${r.image.name}\nDigest: ${r.target.digest}\n` +
            `Fetched ${r.blobsFetched} blobs (${humanSize(r.bytesFetched)}), reused ${r.blobsReused}, in ${((Date.now() - started) / 1000).toFixed(1)} s\n` +
            (r.unpacked?.chainID ? `Unpacked: ${r.unpacked.chainID} (${r.unpacked.snapshotter})\n` : ''),
        );
      },
    );

  addRegistryOptions(
    program
      .command('push')
      .description('push an image to a registry')
      .argument('<image>', 'image name in the store (also the destination unless <dest> is given)')
      .argument('[dest]', 'destination reference')
      .option('--platform <os/arch[/variant]>', 'push only this platform of a multi-platform image')
      .option('-q, --quiet', 'no progress; print only the digest'),
  )
    .addHelpText(
      'after',
      `
Examples:
  kiln push localhost:5000/app:v1
  kiln push app:v1 localhost:5000/team/app:v1
  kiln push --insecure-registry myregistry:5000 myregistry:5000/app:v1`,
    )
    .action(
      async (
        image: string,
        dest: string | undefined,
        opts: RegistryOpts & { platform?: string; quiet?: boolean },
      ) => {
        const core = await ctx.core();
        const src = resolveImage(core, image);
        const { remote } = await registrySettings(ctx, opts);
        const r = await push(core, src.name, dest ?? image, {
          remote,
          ...(opts.platform ? { platform: parsePlatform(opts.platform) } : {}),
          progress: progressPrinter(opts.quiet),
        });
        if (opts.quiet) {
          process.stdout.write(`${r.target.digest}\n`);
          return;
        }
        const count = (k: string): number => r.blobs.filter((b) => b.result === k).length;
        process.stdout.write(
          `${r.ref.full}\nDigest: ${r.target.digest}\n` +
            `Blobs: ${count('uploaded')} uploaded, ${count('mounted')} mounted, ${count('exists')} already there\n`,
        );
      },
    );

  const images = program
    .command('images')
    .alias('image')
    .description('manage images: names bound to a manifest or index in the content store')
    .addHelpText(
      'after',
      `
Examples:
  kiln images ls
  kiln images inspect localhost:5000/app:v1
  kiln images tag localhost:5000/app:v1 app:stable
  kiln images rm app:stable               (the content goes at the next "kiln gc")
  kiln image import ./busybox-oci          an OCI layout directory, or a tar of one
  kiln image import saved.tar              a "docker save" archive
  kiln image export out.tar app:v1 --format docker   then: docker load -i out.tar
  kiln image export ./layout app:v1                  an OCI layout directory`,
    );

  images
    .command('ls')
    .alias('list')
    .description('list images')
    .option('-q, --quiet', 'print only names')
    .option('--filter <expr>', 'filter such as name==…, labels.KEY==VALUE (repeatable: OR)', collect)
    .action(async (opts: { quiet?: boolean; filter?: string[] }) => {
      const core = await ctx.core();
      const list = core.images.list(opts.filter);
      if (opts.quiet) {
        for (const i of list) process.stdout.write(`${i.name}\n`);
        return;
      }
      const rows: string[][] = [['NAME', 'TYPE', 'DIGEST', 'SIZE', 'PLATFORMS', 'CREATED']];
      for (const i of list) {
        const { size, platforms } = await imageSize(core, i.target as Descriptor);
        rows.push([
          i.name,
          isIndexMediaType(i.target.mediaType) ? 'index' : 'manifest',
          i.target.digest,
          humanSize(size),
          platforms.join(',') || '-',
          age(i.createdAt),
        ]);
      }
      table(rows);
    });

  images
    .command('inspect')
    .description('print an image record, its manifest(s) and config as JSON')
    .argument('<name>')
    .action(async (name: string) => {
      const core = await ctx.core();
      const img = resolveImage(core, name);
      const read = async (d: Descriptor): Promise<unknown> => {
        const parts: Uint8Array[] = [];
        try {
          for await (const c of core.content.read(d.digest)) parts.push(c);
        } catch {
          return null; // not in the store (e.g. another platform)
        }
        return JSON.parse(Buffer.concat(parts).toString('utf8')) as unknown;
      };
      const target = img.target as Descriptor;
      const out: Record<string, unknown> = {
        name: img.name,
        target,
        labels: img.labels,
        createdAt: img.createdAt,
        updatedAt: img.updatedAt,
      };
      let manifestDesc: Descriptor | undefined = target;
      if (isIndexMediaType(target.mediaType)) {
        const idx = (await read(target)) as { manifests: Descriptor[] } | null;
        out.index = idx;
        manifestDesc = idx ? selectManifest(idx.manifests, hostPlatform()) : undefined;
      }
      if (manifestDesc) {
        const m = (await read(manifestDesc)) as { config: Descriptor } | null;
        out.manifest = m;
        if (m) out.config = await read(m.config);
      }
      printJson(out);
    });

  images
    .command('tag')
    .description('give an image another name')
    .argument('<source>')
    .argument('<target...>')
    .action(async (source: string, targets: string[]) => {
      const core = await ctx.core();
      const img = resolveImage(core, source);
      for (const t of targets) {
        const name = parseReference(t).full;
        try {
          core.images.create({ name, target: img.target });
        } catch {
          core.images.update({ name, target: img.target }, ['target']);
        }
        process.stdout.write(`${name}\n`);
      }
    });

  images
    .command('rm')
    .alias('remove')
    .description('remove image names (content and snapshots go at the next gc if nothing else uses them)')
    .argument('<name...>')
    .action(async (names: string[]) => {
      const core = await ctx.core();
      for (const n of names) {
        const img = resolveImage(core, n);
        core.images.delete(img.name);
        process.stdout.write(`${img.name}\n`);
      }
    });

  images
    .command('import')
    .description(
      'import images from an OCI layout (directory or tar) or a docker-archive ("docker save") tar',
    )
    .argument('<source>', 'directory or tar file (gzip allowed)')
    .option('--name <name>', 'image name (one image) or repository for the layout tags')
    .option('--gzip', 'gzip uncompressed docker-archive layers (default: store them as given)')
    .option('--unpack', 'unpack the imported images for this platform')
    .action(async (source: string, opts: { name?: string; gzip?: boolean; unpack?: boolean }) => {
      const core = await ctx.core();
      const r = await importImages(core, source, {
        ...(opts.name ? { name: opts.name } : {}),
        ...(opts.gzip ? { compress: 'gzip' as const } : {}),
      });
      if (opts.unpack) {
        for (const img of r.images) {
          let m: Descriptor | undefined = img.target as Descriptor;
          if (isIndexMediaType(m.mediaType)) {
            const parts: Uint8Array[] = [];
            for await (const c of core.content.read(m.digest)) parts.push(c);
            m = selectManifest(parseIndex(Buffer.concat(parts)).manifests, hostPlatform());
          }
          if (m) await unpack(core, m, { snapshotter: ctx.globals().snapshotter });
        }
      }
      for (const img of r.images) process.stdout.write(`${img.name}  ${img.target.digest}\n`);
    });

  images
    .command('export')
    .description('export images as an OCI layout (directory or tar) or a docker-archive tar')
    .argument('<out>', 'output: a .tar file, or a directory for an OCI layout')
    .argument('<name...>', 'images to export')
    .option('--format <format>', 'oci or docker', 'oci')
    .option('--platform <os/arch[/variant]>', 'export only this platform of multi-platform images')
    .action(async (out: string, names: string[], opts: { format: string; platform?: string }) => {
      if (opts.format !== 'oci' && opts.format !== 'docker') {
        throw new Error(`invalid --format "${opts.format}": want oci or docker`);
      }
      const core = await ctx.core();
      const r = await exportImages(core, names, out, {
        format: opts.format,
        ...(opts.platform ? { platform: parsePlatform(opts.platform) } : {}),
      });
      process.stdout.write(`${out}: ${r.blobs} blobs, ${humanSize(r.bytes)}\n`);
    });
}
