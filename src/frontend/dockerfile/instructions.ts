/**
 * Typed Dockerfile instructions from parser nodes: every instruction's flags
 * are checked against the table in flags.ts and its arguments against the
 * Dockerfile reference (counts, forms, durations, mount options). Nothing is
 * expanded here: values that take variables stay as written (the converter
 * expands them with the stage's environment).
 *
 * Errors are DockerfileSyntaxError at the instruction's start line
 * (`Dockerfile:7: unknown instruction: FOO`).
 *
 * Limits: `RUN --mount` options are split and checked for known keys and
 * well-formed values here; their meaning is applied in convert.ts.
 */
import { parseFlags, INSTRUCTION_FLAGS } from './flags.ts';
import { DockerfileSyntaxError, goTrim, type Heredoc, type Node } from './parser.ts';

interface Base {
  /** The parser node (line span, original text). */
  node: Node;
}

export interface FromInstruction extends Base {
  kind: 'from';
  image: string;
  /** Stage name as written (lower-cased by the converter); undefined without AS. */
  name?: string;
  platform?: string;
}

export interface KeyValue {
  key: string;
  value: string;
}

export interface ArgInstruction extends Base {
  kind: 'arg';
  args: { key: string; value?: string }[];
}

export interface EnvInstruction extends Base {
  kind: 'env' | 'label';
  /** Raw words (quotes kept); the converter expands and unquotes both. */
  pairs: KeyValue[];
}

export interface RunInstruction extends Base {
  kind: 'run';
  /** Exec form: the argv; shell form: one element, the command line. */
  cmd: string[];
  shellForm: boolean;
  heredocs: Heredoc[];
  mounts: MountOption[][];
  network?: 'default' | 'none' | 'host';
  security?: 'sandbox' | 'insecure';
}

/** One `key[=value]` of a `--mount` flag. */
export interface MountOption {
  key: string;
  value: string | undefined;
}

export interface CopyInstruction extends Base {
  kind: 'copy' | 'add';
  sources: string[];
  dest: string;
  heredocs: Heredoc[];
  from?: string;
  chown?: string;
  chmod?: string;
  link: boolean;
  parents: boolean;
  exclude: string[];
  checksum?: string;
  keepGitDir: boolean;
  unpack?: boolean;
}

export interface CommandInstruction extends Base {
  kind: 'cmd' | 'entrypoint';
  cmd: string[];
  shellForm: boolean;
}

export interface ShellInstruction extends Base {
  kind: 'shell';
  shell: string[];
}

export interface SingleValueInstruction extends Base {
  kind: 'workdir' | 'user' | 'stopsignal' | 'maintainer';
  value: string;
}

export interface ListInstruction extends Base {
  kind: 'expose' | 'volume';
  values: string[];
}

export interface HealthcheckInstruction extends Base {
  kind: 'healthcheck';
  /** `["NONE"]`, `["CMD", ...argv]` or `["CMD-SHELL", line]`. */
  test: string[];
  /** Durations in nanoseconds (0 when not given). */
  interval: number;
  timeout: number;
  startPeriod: number;
  startInterval: number;
  retries: number;
}

export interface OnbuildInstruction extends Base {
  kind: 'onbuild';
  /** The trigger as written (`RUN echo hi`). */
  expression: string;
}

export type Instruction =
  | FromInstruction
  | ArgInstruction
  | EnvInstruction
  | RunInstruction
  | CopyInstruction
  | CommandInstruction
  | ShellInstruction
  | SingleValueInstruction
  | ListInstruction
  | HealthcheckInstruction
  | OnbuildInstruction;

const STAGE_NAME_RE = /^[a-z][a-z0-9-_.]*$/;

const MOUNT_KEYS = new Set([
  'type',
  'target',
  'dst',
  'destination',
  'source',
  'src',
  'from',
  'ro',
  'readonly',
  'rw',
  'readwrite',
  'id',
  'sharing',
  'mode',
  'uid',
  'gid',
  'required',
  'size',
  'env',
]);

/** Parses one node into a typed instruction; `file` names the Dockerfile in errors. */
export function parseInstruction(node: Node, file = 'Dockerfile'): Instruction {
  const fail = (msg: string): never => {
    throw new DockerfileSyntaxError(file, node.startLine, msg);
  };
  const kw = node.keyword;
  const upper = kw.toUpperCase();
  const opts = { file };
  const needArgs = (n: number): void => {
    if (node.args.length < n)
      fail(`${upper} requires at least ${n === 1 ? 'one argument' : `${n} arguments`}`);
  };
  const exactlyOne = (): string => {
    if (node.args.length !== 1 || goTrim(node.args[0]!) === '')
      fail(`${upper} requires exactly one argument`);
    return node.args[0]!;
  };
  switch (kw) {
    case 'from': {
      const f = parseFlags(node, INSTRUCTION_FLAGS.from, opts);
      const a = node.args;
      if (a.length !== 1 && !(a.length === 3 && a[1]!.toLowerCase() === 'as')) {
        fail('FROM requires either one or three arguments (FROM image [AS name])');
      }
      const out: FromInstruction = { kind: 'from', node, image: a[0]! };
      if (a.length === 3) {
        const name = a[2]!.toLowerCase();
        if (!STAGE_NAME_RE.test(name)) {
          fail(`invalid name for build stage: "${a[2]}", name can't start with a number or contain symbols`);
        }
        out.name = name;
      }
      if (f.platform !== undefined) out.platform = f.platform;
      return out;
    }
    case 'arg': {
      parseFlags(node, INSTRUCTION_FLAGS.arg, opts);
      needArgs(1);
      const args = node.args.map((w) => {
        const eq = w.indexOf('=');
        const key = eq < 0 ? w : w.slice(0, eq);
        if (key === '') fail(`ARG names can not be blank ("${w}")`);
        return eq < 0 ? { key } : { key, value: w.slice(eq + 1) };
      });
      return { kind: 'arg', node, args };
    }
    case 'env':
    case 'label': {
      parseFlags(node, INSTRUCTION_FLAGS[kw], opts);
      if (node.args.length === 0) fail(`${upper} requires at least one argument`);
      const pairs: KeyValue[] = [];
      for (let i = 0; i < node.args.length; i += 3) {
        const key = node.args[i]!;
        if (key === '') fail(`${upper} names can not be blank`);
        pairs.push({ key, value: node.args[i + 1] ?? '' });
      }
      return { kind: kw, node, pairs };
    }
    case 'run': {
      const f = parseFlags(node, INSTRUCTION_FLAGS.run, opts);
      if (node.args.length === 0 && node.heredocs.length === 0) fail('RUN requires at least one argument');
      const out: RunInstruction = {
        kind: 'run',
        node,
        cmd: [...node.args],
        shellForm: !node.json,
        heredocs: node.heredocs,
        mounts: f.mount.map((m) => parseMountOptions(m, fail)),
      };
      if (f.network !== undefined) {
        if (f.network !== 'default' && f.network !== 'none' && f.network !== 'host') {
          fail(`unsupported network mode "${f.network}": want default, none or host`);
        }
        out.network = f.network as 'default' | 'none' | 'host';
      }
      if (f.security !== undefined) {
        if (f.security !== 'sandbox' && f.security !== 'insecure') {
          fail(`unsupported security mode "${f.security}": want sandbox or insecure`);
        }
        out.security = f.security as 'sandbox' | 'insecure';
      }
      return out;
    }
    case 'copy':
    case 'add': {
      const f =
        kw === 'copy'
          ? parseFlags(node, INSTRUCTION_FLAGS.copy, opts)
          : parseFlags(node, INSTRUCTION_FLAGS.add, opts);
      const min = node.heredocs.length > 0 ? 1 : 2;
      if (node.args.length < min)
        fail(`${upper} requires at least two arguments, but only ${node.args.length} provided`);
      const heredocNames = new Set(node.heredocs.map((h) => h.name));
      const words = node.args;
      const sources = words.slice(0, -1);
      // A heredoc source is the `<<NAME` word; keep it as written for the converter.
      for (const s of sources) {
        if (s.startsWith('<<') && !heredocNames.has(s.replace(/^<<-?/, '').replace(/["']/g, ''))) {
          fail(`${upper}: heredoc "${s}" has no body`);
        }
      }
      const out: CopyInstruction = {
        kind: kw,
        node,
        sources,
        dest: words.at(-1)!,
        heredocs: node.heredocs,
        link: f.link ?? false,
        parents: 'parents' in f ? ((f as { parents?: boolean }).parents ?? false) : false,
        exclude: [...f.exclude],
        keepGitDir:
          'keep-git-dir' in f ? ((f as { 'keep-git-dir'?: boolean })['keep-git-dir'] ?? false) : false,
      };
      if ('from' in f && f.from !== undefined) {
        if (f.from === '') fail('COPY --from needs a stage, image or context name');
        out.from = f.from;
      }
      if (f.chown !== undefined) out.chown = f.chown;
      if (f.chmod !== undefined) out.chmod = f.chmod;
      if ('checksum' in f && f.checksum !== undefined) out.checksum = f.checksum;
      if ('unpack' in f && f.unpack !== undefined) out.unpack = f.unpack;
      return out;
    }
    case 'cmd':
    case 'entrypoint':
      parseFlags(node, INSTRUCTION_FLAGS[kw], opts);
      return { kind: kw, node, cmd: [...node.args], shellForm: !node.json };
    case 'shell':
      parseFlags(node, INSTRUCTION_FLAGS.shell, opts);
      if (!node.json) fail('SHELL requires the arguments to be in JSON form');
      if (node.args.length === 0) fail('SHELL requires at least one argument');
      return { kind: 'shell', node, shell: [...node.args] };
    case 'workdir':
    case 'user':
    case 'stopsignal':
    case 'maintainer':
      parseFlags(node, INSTRUCTION_FLAGS[kw], opts);
      return { kind: kw, node, value: exactlyOne() };
    case 'expose':
    case 'volume': {
      parseFlags(node, INSTRUCTION_FLAGS[kw], opts);
      needArgs(1);
      if (kw === 'volume') {
        for (const v of node.args) if (goTrim(v) === '') fail('VOLUME specified can not be an empty string');
      }
      return { kind: kw, node, values: [...node.args] };
    }
    case 'healthcheck':
      return parseHealthcheck(node, file, fail);
    case 'onbuild': {
      parseFlags(node, INSTRUCTION_FLAGS.onbuild, opts);
      const next = node.next;
      if (!next) fail('ONBUILD requires at least one argument');
      const inner = next!.keyword;
      if (inner === 'onbuild') fail("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
      if (inner === 'from' || inner === 'maintainer')
        fail(`${inner.toUpperCase()} isn't allowed as an ONBUILD trigger`);
      parseInstruction(next!, file); // the trigger must itself be valid
      const m = /^onbuild[ \t]+/i.exec(node.original);
      return { kind: 'onbuild', node, expression: m ? node.original.slice(m[0].length) : next!.original };
    }
    default:
      return fail(`unknown instruction: ${upper}`);
  }
}

/** Parses every node; the first error wins. */
export function parseInstructions(nodes: readonly Node[], file = 'Dockerfile'): Instruction[] {
  return nodes.map((n) => parseInstruction(n, file));
}

/** Splits a `--mount` value (CSV; fields may be double-quoted) into options. */
export function parseMountOptions(value: string, fail: (msg: string) => never): MountOption[] {
  const fields: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (ch === '"') {
      if (quoted && value[i + 1] === '"') {
        cur += '"';
        i++;
      } else {
        quoted = !quoted;
      }
    } else if (ch === ',' && !quoted) {
      fields.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  if (quoted) fail(`invalid mount "${value}": unterminated quote`);
  fields.push(cur);
  const out: MountOption[] = [];
  for (const field of fields) {
    if (field === '') continue;
    const eq = field.indexOf('=');
    const key = (eq < 0 ? field : field.slice(0, eq)).toLowerCase().trim();
    if (!MOUNT_KEYS.has(key)) fail(`unexpected key '${key}' in '${field}' (--mount=${value})`);
    out.push({ key, value: eq < 0 ? undefined : field.slice(eq + 1) });
  }
  return out;
}

/** Go time.ParseDuration (units ns, us, µs, ms, s, m, h); result in nanoseconds. */
export function parseGoDuration(s: string): number | undefined {
  if (s === '0') return 0;
  const m = /^([-+]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)$/.exec(s);
  if (!m) return undefined;
  const unit: Record<string, number> = {
    ns: 1,
    us: 1e3,
    µs: 1e3,
    μs: 1e3,
    ms: 1e6,
    s: 1e9,
    m: 60e9,
    h: 3600e9,
  };
  let total = 0;
  for (const part of m[2]!.matchAll(/(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(part[1]) * unit[part[2]!]!;
  }
  total = Math.round(total);
  return m[1] === '-' ? -total : total;
}

const MIN_DURATION_NS = 1e6; // 1ms, Docker's minimum for health check durations

function parseHealthcheck(node: Node, file: string, fail: (msg: string) => never): HealthcheckInstruction {
  const f = parseFlags(node, INSTRUCTION_FLAGS.healthcheck, { file });
  if (node.args.length === 0) fail('HEALTHCHECK requires at least one argument');
  const typ = node.args[0]!.toUpperCase();
  const base = {
    kind: 'healthcheck' as const,
    node,
    interval: 0,
    timeout: 0,
    startPeriod: 0,
    startInterval: 0,
    retries: 0,
  };
  if (typ === 'NONE') {
    if (node.args.length > 1) fail('HEALTHCHECK NONE takes no arguments');
    const given = Object.entries(f).filter(([, v]) => v !== undefined);
    if (given.length > 0) fail('HEALTHCHECK NONE takes no flags');
    return { ...base, test: ['NONE'] };
  }
  if (typ !== 'CMD') fail(`Unknown type "${typ}" in HEALTHCHECK (try CMD)`);
  const cmd = node.args.slice(1);
  if (cmd.length === 0 || (cmd.length === 1 && goTrim(cmd[0]!) === '' && !node.json)) {
    fail('Missing command after HEALTHCHECK CMD');
  }
  const test = node.json ? ['CMD', ...cmd] : ['CMD-SHELL', cmd[0]!];
  const dur = (name: string, v: string | undefined): number => {
    if (v === undefined || v === '') return 0;
    const d = parseGoDuration(v);
    if (d === undefined) fail(`invalid duration "${v}" for --${name}`);
    if (d! < 0) fail(`--${name} "${v}" cannot be negative`);
    if (d! !== 0 && d! < MIN_DURATION_NS) fail(`--${name} "${v}" cannot be less than 1ms`);
    return d!;
  };
  let retries = 0;
  if (f.retries !== undefined && f.retries !== '') {
    if (!/^[-+]?\d+$/.test(f.retries)) fail(`invalid --retries "${f.retries}": not an integer`);
    retries = Number(f.retries);
    if (retries < 0) fail('--retries cannot be negative');
  }
  return {
    ...base,
    test,
    interval: dur('interval', f.interval),
    timeout: dur('timeout', f.timeout),
    startPeriod: dur('start-period', f['start-period']),
    startInterval: dur('start-interval', f['start-interval']),
    retries,
  };
}
