/**
 * `kiln debug ...`: developer commands that expose the Dockerfile front end
 * without touching the state directory.
 *
 * - `kiln debug dump-dockerfile FILE`: parse FILE and print the AST dump
 *   (the conformance format of dump.ts). Parse errors are thrown as
 *   DockerfileSyntaxError (`FILE:LINE: ...`); main.ts prints them to stderr
 *   and exits 1.
 * - `kiln debug expand WORD [--env K=V ...] [--words] [--escape CHAR]`: run
 *   the shell lexer on WORD and print the result (one word per line with
 *   --words).
 * - `kiln debug dump-llb [-f Dockerfile] [--target T] [--build-arg K=V]
 *   [--platform P] [CONTEXT]`: convert a Dockerfile and print its LLB like
 *   `buildctl debug dump-llb`: one JSON object per op (`Op`, `Digest`,
 *   `OpMetadata`), inputs first, the terminal last. Base image configs come
 *   from the local image store when the image is there; otherwise an empty
 *   config is used and a warning is printed to stderr.
 */
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fromBinary, toJson } from '@bufbuild/protobuf';
import type { Command } from 'commander';
import { sha256 } from '../../core/digest.ts';
import { errInvalidArgument, isErrno, wrap } from '../../core/errors.ts';
import { readJsonBlob } from '../../core/images/content.ts';
import { formatPlatform, hostPlatform, selectManifest } from '../../core/images/platform.ts';
import { parseReference } from '../../core/images/reference.ts';
import {
  type Descriptor,
  type ImageConfig,
  isIndexMediaType,
  parseIndex,
  type Platform,
} from '../../core/images/types.ts';
import { readManifestAndConfig } from '../../core/images/unpack.ts';
import { type Core, openCore } from '../../core/metadata/index.ts';
import { convertDockerfile, type ResolvedImage } from '../../frontend/dockerfile/convert.ts';
import { dockerignoreNames, parseDockerignore } from '../../frontend/dockerfile/dockerignore.ts';
import { dumpAst } from '../../frontend/dockerfile/dump.ts';
import { parseDockerfile } from '../../frontend/dockerfile/parser.ts';
import { ShellLex } from '../../frontend/dockerfile/shell.ts';
import { OpMetadataSchema, OpSchema } from '../../gen/kiln/llb/v1/llb_pb.ts';
import { parseDefinition } from '../../llb/index.ts';

export interface DebugIo {
  stdout: (text: string) => void;
  stderr?: (text: string) => void;
}

const defaultIo: DebugIo = { stdout: (t) => process.stdout.write(t), stderr: (t) => process.stderr.write(t) };

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw wrap(err, `read "${path}"`);
  }
}

/** Reads an image's config from the local store (the platform's entry of an index). */
async function storeImageConfig(core: Core, ref: string, platform: Platform): Promise<ResolvedImage> {
  const img = core.images.get(parseReference(ref).full);
  let desc = img.target as Descriptor;
  if (isIndexMediaType(desc.mediaType)) {
    const index = parseIndex(await readJsonBlob(core.content, desc, 'index'));
    const m = selectManifest(index.manifests, platform);
    if (!m) throw errInvalidArgument(`image "${ref}": no manifest for ${formatPlatform(platform)}`);
    desc = m;
  }
  const { config } = await readManifestAndConfig(core.content, desc);
  return { digest: desc.digest, config };
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function registerDebugCommands(program: Command, io: DebugIo = defaultIo): void {
  const debug = program.command('debug').description('developer tools for the Dockerfile front end');

  debug
    .command('dump-dockerfile')
    .description('parse a Dockerfile and print its AST, one instruction per line')
    .argument('<file>', 'Dockerfile to parse')
    .addHelpText(
      'after',
      `
Prints one line per instruction: (keyword ["--flag" ...] "arg" ...). Nothing
is expanded. A syntax error prints FILE:LINE: message and exits with 1.

Examples:
  kiln debug dump-dockerfile ./Dockerfile
  kiln debug dump-dockerfile test/fixtures/app/Dockerfile`,
    )
    .action(async (file: string) => {
      let bytes: Uint8Array;
      try {
        bytes = await readFile(file);
      } catch (err) {
        throw wrap(err, `read Dockerfile "${file}"`);
      }
      io.stdout(dumpAst(parseDockerfile(bytes, { filename: file })));
    });

  debug
    .command('expand')
    .description('expand a word with the Dockerfile shell lexer (quotes, escapes, variables)')
    .argument('<word>', 'the word to expand (quote it for your own shell)')
    .option('-e, --env <K=V>', 'define a variable (repeatable)', collect, [] as string[])
    .option('--words', 'split into words like RUN/CMD shell-form processing; print one per line')
    .option('--escape <char>', 'escape character: \\ (default) or `', '\\')
    .addHelpText(
      'after',
      `
Examples:
  kiln debug expand '\${NAME:-world}'                   -> world
  kiln debug expand '\${NAME:-world}' --env NAME=kiln    -> kiln
  kiln debug expand 'a "b c" $X' --env X='d e' --words  -> a / b c / d / e
  kiln debug expand '\${FILE%.*}' --env FILE=app.tar.gz  -> app.tar
  kiln debug expand 'C:\\dir' --escape '\`'              -> C:\\dir`,
    )
    .action((word: string, opts: { env: string[]; words?: boolean; escape: string }) => {
      if (opts.escape !== '\\' && opts.escape !== '`') {
        throw errInvalidArgument(`invalid --escape "${opts.escape}": want \\ or \``);
      }
      const env = new Map<string, string>();
      for (const kv of opts.env) {
        const eq = kv.indexOf('=');
        if (eq <= 0) throw errInvalidArgument(`invalid --env "${kv}": want NAME=VALUE`);
        env.set(kv.slice(0, eq), kv.slice(eq + 1));
      }
      const lex = new ShellLex(opts.escape, {});
      if (opts.words) {
        for (const w of lex.processWords(word, env)) io.stdout(w + '\n');
      } else {
        io.stdout(lex.processWord(word, env) + '\n');
      }
    });

  debug
    .command('dump-llb')
    .description("convert a Dockerfile and print its LLB, one JSON op per line (like buildctl's dump-llb)")
    .argument('[context]', 'build context directory', '.')
    .option('-f, --file <path>', 'Dockerfile (default: CONTEXT/Dockerfile)')
    .option('--target <stage>', 'stage to build (default: the last one)')
    .option('--build-arg <K=V>', 'set a build argument (repeatable)', collect, [] as string[])
    .option('--platform <os/arch>', 'target platform (default: the host)')
    .addHelpText(
      'after',
      `
Each line is {"Op": ..., "Digest": "sha256:...", "OpMetadata": ...}. Base image
configs come from the local image store (kiln pull) when present; otherwise an
empty config is used and a warning goes to stderr.

Examples:
  kiln debug dump-llb .
  kiln debug dump-llb -f app.Dockerfile --target build --build-arg V=2 ./src
  kiln debug dump-llb . | jq -c '.Op.op.case'`,
    )
    .action(
      async (
        context: string,
        opts: { file?: string; target?: string; buildArg: string[]; platform?: string },
      ) => {
        const file = opts.file ?? join(context, 'Dockerfile');
        let text: Uint8Array;
        try {
          text = await readFile(file);
        } catch (err) {
          throw wrap(err, `read Dockerfile "${file}"`);
        }
        const buildArgs: Record<string, string> = {};
        for (const kv of opts.buildArg) {
          const eq = kv.indexOf('=');
          if (eq <= 0) throw errInvalidArgument(`invalid --build-arg "${kv}": want NAME=VALUE`);
          buildArgs[kv.slice(0, eq)] = kv.slice(eq + 1);
        }
        const [specific, generic] = dockerignoreNames(file);
        const ignore =
          (await readOptional(join(dirname(file), specific!))) ??
          (await readOptional(join(context, generic!)));
        const warn = (m: string): void => (io.stderr ?? ((t) => process.stderr.write(t)))(`warning: ${m}\n`);
        const g = program.opts<{ root: string; namespace: string }>();
        let core: Promise<Core | undefined> | undefined;
        const getCore = (): Promise<Core | undefined> => {
          core ??= openCore({ root: g.root, namespace: g.namespace }).catch((err: unknown) => {
            warn(`cannot open the image store at "${g.root}": ${(err as Error).message}`);
            return undefined;
          });
          return core;
        };
        const imageResolver = async (ref: string, platform: Platform): Promise<ResolvedImage> => {
          const c = await getCore();
          if (c) {
            try {
              return await storeImageConfig(c, ref, platform);
            } catch (err) {
              warn(
                `image "${ref}" (${formatPlatform(platform)}): ${(err as Error).message}; using an empty config`,
              );
            }
          }
          const empty: ImageConfig = {
            architecture: platform.architecture,
            os: platform.os,
            rootfs: { type: 'layers', diff_ids: [] },
          };
          return { config: empty };
        };
        try {
          const r = await convertDockerfile(text, {
            filename: file,
            target: opts.target,
            buildArgs,
            platform: opts.platform,
            buildPlatform: hostPlatform(),
            imageResolver,
            dockerignore: ignore === undefined ? undefined : parseDockerignore(ignore),
          });
          for (const w of r.warnings) warn(w.line > 0 ? `${file}:${w.line}: ${w.message}` : w.message);
          parseDefinition(r.definition); // validates before printing
          r.definition.def.forEach((bytes) => {
            const digest = sha256(bytes);
            const md = r.definition.metadata[digest];
            const line = {
              Op: toJson(OpSchema, fromBinary(OpSchema, bytes)),
              Digest: digest,
              OpMetadata: md ? toJson(OpMetadataSchema, md) : {},
            };
            io.stdout(`${JSON.stringify(line)}\n`);
          });
        } finally {
          const c = core ? await core : undefined;
          await c?.close();
        }
      },
    );
}
