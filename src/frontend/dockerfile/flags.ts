/**
 * Typed parsing of instruction flags (`--name=value`) against a per-instruction
 * spec, and the table of flags each Dockerfile instruction accepts (from the
 * Dockerfile reference).
 *
 * Rules:
 * - `string` flags need `--name=value` (the value may be empty) and may appear
 *   once; `strings` flags may repeat and collect every value in order;
 *   `bool` flags accept `--name`, `--name=true` or `--name=false` (any case).
 * - Unknown flags, a string flag without a value, a repeated string/bool flag
 *   and a non-boolean value are DockerfileSyntaxError at the instruction's
 *   start line (`Dockerfile:7: unknown flag: --foo`).
 *
 * Values are not validated beyond that (durations, modes, mounts are the
 * instruction layer's job). Flags that only BuildKit's "labs" channel knows
 * (e.g. RUN --device) are not in the table.
 */
import { DockerfileSyntaxError, type Node } from './parser.ts';

export type FlagType = 'string' | 'bool' | 'strings';
export type FlagSpec = Readonly<Record<string, FlagType>>;

/** Parsed values: undefined when a string/bool flag was not given. */
export type FlagValues<S extends FlagSpec> = {
  -readonly [K in keyof S]: S[K] extends 'strings'
    ? string[]
    : S[K] extends 'bool'
      ? boolean | undefined
      : string | undefined;
};

/** Flags accepted by each instruction (lower-case keyword). */
export const INSTRUCTION_FLAGS = {
  from: { platform: 'string' },
  run: { mount: 'strings', network: 'string', security: 'string' },
  copy: {
    from: 'string',
    chown: 'string',
    chmod: 'string',
    link: 'bool',
    parents: 'bool',
    exclude: 'strings',
  },
  add: {
    chown: 'string',
    chmod: 'string',
    link: 'bool',
    exclude: 'strings',
    checksum: 'string',
    'keep-git-dir': 'bool',
    unpack: 'bool',
  },
  healthcheck: {
    interval: 'string',
    timeout: 'string',
    'start-period': 'string',
    'start-interval': 'string',
    retries: 'string',
  },
  arg: {},
  cmd: {},
  entrypoint: {},
  env: {},
  expose: {},
  label: {},
  maintainer: {},
  onbuild: {},
  shell: {},
  stopsignal: {},
  user: {},
  volume: {},
  workdir: {},
} as const satisfies Record<string, FlagSpec>;

export type InstructionKeyword = keyof typeof INSTRUCTION_FLAGS;

export interface ParseFlagsOptions {
  /** File name for error messages; default `Dockerfile`. */
  file?: string;
}

export function parseFlags<S extends FlagSpec>(
  node: Node,
  spec: S,
  options: ParseFlagsOptions = {},
): FlagValues<S> {
  const file = options.file ?? 'Dockerfile';
  const fail = (msg: string): never => {
    throw new DockerfileSyntaxError(file, node.startLine, msg);
  };
  const values: Record<string, string | boolean | string[] | undefined> = {};
  for (const [name, type] of Object.entries(spec)) values[name] = type === 'strings' ? [] : undefined;
  const seen = new Set<string>();

  for (const flag of node.flags) {
    if (!flag.startsWith('--')) fail(`invalid flag "${flag}": flags start with --`);
    const body = flag.slice(2);
    const eq = body.indexOf('=');
    const name = eq < 0 ? body : body.slice(0, eq);
    const value = eq < 0 ? undefined : body.slice(eq + 1);
    const type: FlagType | undefined = Object.hasOwn(spec, name) ? spec[name] : undefined;
    if (type === undefined) {
      fail(`unknown flag: --${name} (${node.keyword.toUpperCase()} accepts ${describe(spec)})`);
      continue;
    }
    if (type !== 'strings' && seen.has(name)) fail(`duplicate flag specified: --${name}`);
    seen.add(name);
    switch (type) {
      case 'string':
        if (value === undefined) fail(`missing a value on flag: --${name}`);
        values[name] = value;
        break;
      case 'strings':
        if (value === undefined) fail(`missing a value on flag: --${name}`);
        (values[name] as string[]).push(value!);
        break;
      case 'bool': {
        if (value === undefined) {
          values[name] = true;
          break;
        }
        const v = value.toLowerCase();
        if (v !== 'true' && v !== 'false')
          fail(`expecting boolean value for flag --${name}, not: "${value}"`);
        values[name] = v === 'true';
        break;
      }
    }
  }
  return values as FlagValues<S>;
}

/** True for a keyword that has an entry in INSTRUCTION_FLAGS. */
export function isInstructionKeyword(keyword: string): keyword is InstructionKeyword {
  return Object.hasOwn(INSTRUCTION_FLAGS, keyword);
}

/**
 * Checks a node's flags against its keyword's table entry and returns them
 * untyped; unknown keywords accept no flags. Typed callers use
 * parseInstructionFlags or parseFlags with a table entry.
 */
export function checkFlags(
  node: Node,
  options: ParseFlagsOptions = {},
): Record<string, string | boolean | string[] | undefined> {
  const spec: FlagSpec = isInstructionKeyword(node.keyword) ? INSTRUCTION_FLAGS[node.keyword] : {};
  return parseFlags(node, spec, options);
}

/** parseFlags with the table entry for the node's keyword. */
export function parseInstructionFlags<K extends InstructionKeyword>(
  node: Node & { keyword: K },
  options: ParseFlagsOptions = {},
): FlagValues<(typeof INSTRUCTION_FLAGS)[K]> {
  return parseFlags(node, INSTRUCTION_FLAGS[node.keyword], options);
}

function describe(spec: FlagSpec): string {
  const names = Object.keys(spec);
  return names.length === 0 ? 'no flags' : names.map((n) => `--${n}`).join(', ');
}
