/**
 * Dockerfile → LLB: turns a Dockerfile into the LLB definition of its
 * target stage and the image config (with history) that stage produces.
 *
 * Contract:
 * - Stages are dispatched on demand starting from the target, so stages the
 *   target does not need are neither resolved nor in the definition
 *   (`stages[i].used` says which were). Independent stages are independent
 *   subgraphs, so the solver can run them in parallel.
 * - ARG scoping follows the Dockerfile reference: ARGs before the first FROM
 *   are global (usable in FROM, re-declared with `ARG NAME` inside a stage);
 *   `--build-arg` overrides declared defaults; the platform args are
 *   predefined; proxy args reach RUN without an ARG and stay out of history.
 * - Variables are expanded (ShellLex) in FROM, ARG, ENV, LABEL, COPY/ADD
 *   (sources, dest, --from, --chown, --chmod), EXPOSE, STOPSIGNAL, USER,
 *   VOLUME, WORKDIR and RUN --mount options; never in RUN/CMD/ENTRYPOINT
 *   commands (the shell does it) or ONBUILD triggers.
 * - RUN: `[...SHELL, line]` for the shell form (SHELL default
 *   `["/bin/sh","-c"]`), argv for the exec form; env = image env plus the
 *   stage's build args with values (ENV wins over ARG). Heredocs: a command
 *   that is only `<<EOF` runs the body as a script with the shell (or, with
 *   a `#!` line, as an executable file); otherwise the shell gets the line
 *   followed by the bodies and terminators, as a POSIX shell reads them.
 * - COPY/ADD from the context use one `local(contextName)` source whose
 *   `followPaths` are the context paths the build uses (no limit when some
 *   instruction uses the whole context) and whose `exclude` patterns are the
 *   .dockerignore lines.
 *
 * - Image config and history follow docker 20.10's BuildKit (see
 *   image-config.ts): CMD (not ENTRYPOINT) sets ArgsEscaped, ENTRYPOINT clears a
 *   CMD inherited from the base, ONBUILD triggers of the base run first and
 *   are cleared, ONBUILD and global ARGs write no history.
 *
 * - ADD of a local or --from source sets the copy's `attemptUnpack` (tar
 *   archives are extracted); URL and git sources are never extracted.
 *
 * - RUN --mount=type=secret,env=NAME sets the secret as the variable NAME
 *   of that RUN only (LLB `secretEnv`): never in the image config or history.
 *
 * Limits: one target platform per conversion (a stage's FROM --platform
 * makes that stage's RUNs run for its platform: emulated by the exec op
 * when foreign).
 */
import { posix } from 'node:path';
import { parseDigest } from '../../core/digest.ts';
import { errInvalidArgument, errNotFound, KilnError } from '../../core/errors.ts';
import { hostPlatform, normalizePlatform, parsePlatform } from '../../core/images/platform.ts';
import { parseReference } from '../../core/images/reference.ts';
import type { ImageConfig, Platform } from '../../core/images/types.ts';
import type { Definition } from '../../gen/kiln/llb/v1/llb_pb.ts';
import {
  type CopyOptions,
  copy,
  git,
  http,
  image,
  local,
  marshal,
  merge,
  mkdir,
  mkfile,
  type MountSpec,
  type SecretEnvSpec,
  SourceMap,
  type State,
  scratch,
} from '../../llb/index.ts';
import {
  addHistory,
  cloneImageConfig,
  emptyImageConfig,
  envMap,
  goList,
  goQuoteList,
  goSetMap,
  healthcheckHistory,
  setEnv,
} from './image-config.ts';
import {
  type CopyInstruction,
  type FromInstruction,
  type Instruction,
  type MountOption,
  parseInstruction,
  type RunInstruction,
} from './instructions.ts';
import { DockerfileSyntaxError, type Heredoc, type Node, parseDockerfile } from './parser.ts';
import { PLATFORM_ARG_NAMES, PROXY_ARGS, platformArgs } from './platform-args.ts';
import { ShellLex } from './shell.ts';

export interface ResolvedImage {
  /** Manifest digest: pins the image source when given. */
  digest?: string;
  config: ImageConfig;
}

export type ImageResolver = (ref: string, platform: Platform) => Promise<ResolvedImage>;

export interface ConvertOptions {
  /** Dockerfile name for errors and source maps; default `Dockerfile`. */
  filename?: string;
  /** Stage name to build; default the last stage. */
  target?: string;
  buildArgs?: Readonly<Record<string, string>>;
  /** Target platform (`linux/arm64` or a Platform); default the build platform. */
  platform?: Platform | string;
  /** Platform the build runs on; default the host's. */
  buildPlatform?: Platform | string;
  /** Labels added to the image config after the Dockerfile's. */
  labels?: Readonly<Record<string, string>>;
  imageResolver: ImageResolver;
  /** Name of the local source holding the build context; default `context`. */
  contextName?: string;
  /** .dockerignore patterns (see dockerignore.ts parseDockerignore). */
  dockerignore?: readonly string[];
  /** Time stamped on history entries; default none. */
  created?: Date;
}

export interface StageInfo {
  name: string;
  index: number;
  used: boolean;
}

export interface ConvertWarning {
  message: string;
  line: number;
}

export interface ConvertResult {
  definition: Definition;
  imageConfig: ImageConfig;
  stages: StageInfo[];
  warnings: ConvertWarning[];
}

const DEFAULT_SHELL = ['/bin/sh', '-c'];

interface Stage {
  index: number;
  /** Lower-case name, or undefined. */
  name?: string;
  from: FromInstruction;
  commands: Instruction[];
}

interface BuildArg {
  key: string;
  value: string | undefined;
}

/** What a dispatched stage leaves for its users. */
interface StageResult {
  state: State;
  config: ImageConfig;
  platform: Platform;
}

function isLocalContext(s: string): boolean {
  return !/^[a-z][a-z0-9+.-]*:\/\//i.test(s) && !/^git@/.test(s);
}

function isGitUrl(s: string): boolean {
  if (/^git@[^:]+:/.test(s) || s.startsWith('git://')) return true;
  if (/^https?:\/\//.test(s)) {
    const noFrag = s.split('#')[0]!;
    return noFrag.endsWith('.git');
  }
  return false;
}

/** Converts a Dockerfile to LLB plus the image config of its target stage. */
export async function convertDockerfile(
  source: string | Uint8Array,
  options: ConvertOptions,
): Promise<ConvertResult> {
  const c = new Converter(source, options);
  return c.run();
}

/** Private: one conversion. */
class Converter {
  readonly file: string;
  readonly opts: ConvertOptions;
  readonly source: string | Uint8Array;
  readonly warnings: ConvertWarning[] = [];
  readonly buildPlatform: Platform;
  readonly targetPlatform: Platform;
  readonly platformArgs: Map<string, string>;
  readonly buildArgs: Map<string, string>;
  readonly usedBuildArgs = new Set<string>();
  lex!: ShellLex;
  sourceMap!: SourceMap;
  stages: Stage[] = [];
  globalArgs = new Map<string, string | undefined>();
  /** Global ARG values plus the platform args: the variables FROM can use. */
  metaEnv = new Map<string, string>();
  readonly results = new Map<number, Promise<StageResult>>();
  readonly resolved = new Map<string, Promise<ResolvedImage>>();
  /** Context paths the build reads ('/' for all of it). */
  readonly contextPaths = new Set<string>();
  /** The context source of the second pass. */
  contextState: State | undefined;
  /** True during the first (path-collecting) pass. */
  collecting = false;

  constructor(source: string | Uint8Array, opts: ConvertOptions) {
    this.source = source;
    this.opts = opts;
    this.file = opts.filename ?? 'Dockerfile';
    this.buildPlatform = toPlatform(opts.buildPlatform) ?? hostPlatform();
    this.targetPlatform = toPlatform(opts.platform) ?? this.buildPlatform;
    this.platformArgs = platformArgs(this.buildPlatform, this.targetPlatform);
    this.buildArgs = new Map(Object.entries(opts.buildArgs ?? {}));
  }

  fail(node: Node, msg: string, cause?: unknown): never {
    throw new DockerfileSyntaxError(this.file, node.startLine, msg, { cause });
  }

  /** Expands `word` with `env`, mapping lexer errors to the instruction's line. */
  expand(node: Node, word: string, env: ReadonlyMap<string, string>): string {
    try {
      return this.lex.processWord(word, env);
    } catch (err) {
      return this.fail(node, (err as Error).message, err);
    }
  }

  async run(): Promise<ConvertResult> {
    const parsed = parseDockerfile(this.source, { filename: this.file });
    for (const w of parsed.warnings) this.warnings.push({ message: w.message, line: w.line });
    this.lex = new ShellLex(parsed.escapeChar);
    this.sourceMap = new SourceMap(this.file, this.source, 'Dockerfile');
    const instructions = parsed.instructions.map((n) => parseInstruction(n, this.file));

    // Global ARGs, then stages.
    const metaEnv = new Map(this.platformArgs);
    let i = 0;
    for (; i < instructions.length && instructions[i]!.kind !== 'from'; i++) {
      const ins = instructions[i]!;
      if (ins.kind !== 'arg')
        this.fail(
          ins.node,
          `${ins.node.keyword.toUpperCase()} before the first FROM: only ARG may come first`,
        );
      for (const a of ins.args) {
        // `ARG TARGETARCH` without a default keeps the predefined value.
        let value: string | undefined =
          a.value === undefined ? this.platformArgs.get(a.key) : this.expand(ins.node, a.value, metaEnv);
        if (this.buildArgs.has(a.key)) {
          value = this.buildArgs.get(a.key);
          this.usedBuildArgs.add(a.key);
        }
        this.globalArgs.set(a.key, value);
        if (value !== undefined) metaEnv.set(a.key, value);
        else metaEnv.delete(a.key);
      }
    }
    if (i >= instructions.length)
      throw new DockerfileSyntaxError(this.file, 0, 'no build stage in Dockerfile (want a FROM)');
    for (; i < instructions.length; i++) {
      const ins = instructions[i]!;
      if (ins.kind === 'from') {
        if (ins.name !== undefined && this.stages.some((s) => s.name === ins.name)) {
          this.fail(ins.node, `duplicate stage name "${ins.name}"`);
        }
        this.stages.push({ index: this.stages.length, name: ins.name, from: ins, commands: [] });
      } else {
        this.stages.at(-1)!.commands.push(ins);
      }
    }
    this.metaEnv = metaEnv;

    let target = this.stages.length - 1;
    if (this.opts.target !== undefined && this.opts.target !== '') {
      const t = this.opts.target.toLowerCase();
      target = this.stages.findIndex((s) => s.name === t);
      if (target < 0) throw errNotFound(`failed to reach build target "${this.opts.target}" in ${this.file}`);
    }
    this.checkCycles();
    // Start resolving the base images of statically reachable stages now, in parallel.
    for (const idx of this.reachable(target)) {
      const s = this.stages[idx]!;
      const base = this.baseOf(s);
      if (base.kind === 'image') void this.resolve(base.ref, base.platform).catch(() => undefined);
    }
    // Pass 1 records the context paths the build reads; pass 2 builds the
    // graph with a context source limited to them (dispatch is cheap; image
    // resolutions are cached).
    this.collecting = true;
    await this.dispatch(target);
    this.collecting = false;
    this.results.clear();
    const passWarnings = this.warnings.length;
    const result = await this.dispatch(target);
    this.warnings.splice(passWarnings); // the second pass repeats the first one's warnings
    const cfg = result.config;
    for (const [k, v] of Object.entries(this.opts.labels ?? {})) {
      cfg.config!.Labels = { ...(cfg.config!.Labels ?? {}), [k]: v };
    }
    for (const k of this.buildArgs.keys()) {
      if (!this.usedBuildArgs.has(k) && !PROXY_ARGS.has(k)) {
        this.warnings.push({ message: `build argument "${k}" was not consumed`, line: 0 });
      }
    }
    const definition = marshal(result.state, { platform: this.targetPlatform });
    return {
      definition,
      imageConfig: cfg,
      stages: this.stages.map((s) => ({
        name: s.name ?? `stage-${s.index}`,
        index: s.index,
        used: this.results.has(s.index),
      })),
      warnings: this.warnings,
    };
  }

  /**
   * The local context source (one op for the whole build), reading `path`.
   * The first pass only records paths; the second makes the real source.
   */
  context(path: string): State {
    // No trailing slash: `link/` must send the symlink `link` (and its target).
    const p = posix.join('/', path).replace(/(.)\/+$/, '$1');
    if (this.collecting) {
      this.contextPaths.add(p);
      return local(this.opts.contextName ?? 'context');
    }
    if (!this.contextState) this.contextState = this.makeContext();
    return this.contextState;
  }

  private makeContext(): State {
    // The first pass recorded every path the build reads (see context()).
    const paths = [...this.contextPaths];
    const opts: { followPaths?: string[]; exclude?: string[]; sharedKeyHint: string } = {
      sharedKeyHint: this.opts.contextName ?? 'context',
    };
    if (paths.length > 0 && !paths.includes('/'))
      opts.followPaths = paths.map((p) => p.replace(/^\//, '')).sort();
    if (this.opts.dockerignore?.length) opts.exclude = [...this.opts.dockerignore];
    return local(this.opts.contextName ?? 'context', opts);
  }

  baseOf(
    s: Stage,
  ):
    | { kind: 'scratch' }
    | { kind: 'stage'; index: number }
    | { kind: 'image'; ref: string; platform: Platform } {
    const node = s.from.node;
    const name = this.expandMeta(node, s.from.image);
    if (name === '') this.fail(node, `base name (${s.from.image}) should not be blank`);
    const prev = this.stages.findIndex((x) => x.index < s.index && x.name === name.toLowerCase());
    if (prev >= 0) return { kind: 'stage', index: prev };
    if (name === 'scratch') return { kind: 'scratch' };
    return { kind: 'image', ref: name, platform: this.stagePlatform(s) };
  }

  expandMeta(node: Node, word: string): string {
    return this.expand(node, word, this.metaEnv);
  }

  stagePlatform(s: Stage): Platform {
    if (s.from.platform === undefined) return this.targetPlatform;
    const p = this.expandMeta(s.from.node, s.from.platform);
    try {
      return parsePlatform(p);
    } catch (err) {
      return this.fail(s.from.node, `invalid --platform "${p}": ${(err as Error).message}`, err);
    }
  }

  /** The stages stage `i` depends on, by a static look at FROM, COPY --from and RUN --mount from=. */
  stageDeps(i: number): number[] {
    const s = this.stages[i]!;
    const deps: number[] = [];
    const base = this.baseOf(s);
    if (base.kind === 'stage') deps.push(base.index);
    for (const ins of s.commands) {
      const froms: string[] = [];
      if ((ins.kind === 'copy' || ins.kind === 'add') && ins.from !== undefined) froms.push(ins.from);
      if (ins.kind === 'run') {
        for (const m of ins.mounts) for (const o of m) if (o.key === 'from' && o.value) froms.push(o.value);
      }
      for (const f of froms) {
        const idx = this.stageRef(f, i);
        if (idx !== undefined) deps.push(idx);
      }
    }
    return deps;
  }

  /** Stages the target needs (see stageDeps). */
  reachable(target: number): Set<number> {
    const seen = new Set<number>();
    const visit = (i: number): void => {
      if (seen.has(i)) return;
      seen.add(i);
      for (const d of this.stageDeps(i)) visit(d);
    };
    visit(target);
    return seen;
  }

  /**
   * Fails when stages depend on each other in a cycle (a --from naming the
   * stage itself or a later stage that depends back), with BuildKit's
   * message naming the stage where the cycle closes.
   */
  checkCycles(): void {
    const done = new Set<number>();
    const path = new Set<number>();
    const visit = (i: number): void => {
      if (done.has(i)) return;
      if (path.has(i)) {
        const s = this.stages[i]!;
        throw errInvalidArgument(`circular dependency detected on stage: ${s.name ?? `stage-${s.index}`}`);
      }
      path.add(i);
      for (const d of this.stageDeps(i)) visit(d);
      path.delete(i);
      done.add(i);
    };
    for (let i = 0; i < this.stages.length; i++) visit(i);
  }

  /**
   * A stage referred to by name or index from stage `current`, or undefined
   * (an image). A name may be any stage's, earlier or later (as BuildKit;
   * checkCycles refuses cycles); an index must be an earlier stage's.
   */
  stageRef(ref: string, current: number): number | undefined {
    if (/^[0-9]+$/.test(ref)) {
      const n = Number(ref);
      if (n >= current) return undefined;
      return n;
    }
    const idx = this.stages.findIndex((s) => s.name === ref.toLowerCase());
    return idx >= 0 ? idx : undefined;
  }

  resolve(ref: string, platform: Platform): Promise<ResolvedImage> {
    const key = `${ref}|${platform.os}/${platform.architecture}/${platform.variant ?? ''}`;
    let p = this.resolved.get(key);
    if (!p) {
      p = this.opts.imageResolver(ref, platform);
      this.resolved.set(key, p);
    }
    return p;
  }

  dispatch(index: number): Promise<StageResult> {
    let p = this.results.get(index);
    if (!p) {
      p = this.dispatchStage(this.stages[index]!);
      this.results.set(index, p);
    }
    return p;
  }

  private async dispatchStage(s: Stage): Promise<StageResult> {
    const base = this.baseOf(s);
    const stageName = s.name ?? `stage-${s.index}`;
    const location = this.sourceMap.lines(s.from.node.startLine, s.from.node.endLine);
    let state: State;
    let config: ImageConfig;
    let platform: Platform;
    if (base.kind === 'stage') {
      const r = await this.dispatch(base.index);
      state = r.state;
      config = structuredClone(r.config);
      platform = r.platform;
    } else if (base.kind === 'scratch') {
      platform = this.stagePlatform(s);
      config = emptyImageConfig(platform);
      state = scratch().platform(platform);
    } else {
      platform = base.platform;
      let resolved: ResolvedImage;
      try {
        resolved = await this.resolve(base.ref, platform);
      } catch (err) {
        const msg = `${this.file}:${s.from.node.startLine}: resolve image "${base.ref}": ${(err as Error).message}`;
        throw new KilnError(err instanceof KilnError ? err.code : 'Unavailable', msg, { cause: err });
      }
      config = cloneImageConfig(resolved.config, platform);
      let ref = base.ref;
      if (resolved.digest) {
        const parsed = parseReference(ref);
        if (!parsed.digest)
          ref = `${parsed.name}${parsed.tag ? `:${parsed.tag}` : ''}@${parseDigest(resolved.digest).digest}`;
      }
      state = image(ref, {
        platform: s.from.platform !== undefined ? platform : undefined,
        config: { Env: config.config?.Env, WorkingDir: config.config?.WorkingDir, User: config.config?.User },
        description: `[${stageName} 1/${this.stepCount(s)}] FROM ${parseReference(base.ref).full}`,
        location,
      });
    }
    state = state.platform(platform);
    // Make the state's env exactly the config's (a stage base may carry build args).
    const d = new StageDispatch(this, s, stageName, state, config, platform);
    const triggers = config.config?.OnBuild ?? [];
    if (config.config) config.config.OnBuild = null;
    for (const t of triggers) await d.trigger(t);
    for (const ins of s.commands) await d.dispatch(ins);
    return { state: d.state, config: d.config, platform };
  }

  stepCount(s: Stage): number {
    return (
      1 +
      s.commands.filter(
        (c) => c.kind === 'run' || c.kind === 'copy' || c.kind === 'add' || c.kind === 'workdir',
      ).length
    );
  }
}

function toPlatform(p: Platform | string | undefined): Platform | undefined {
  if (p === undefined) return undefined;
  return typeof p === 'string' ? parsePlatform(p) : normalizePlatform(p);
}

/** Private: the state of one stage while its instructions are applied. */
class StageDispatch {
  readonly c: Converter;
  readonly stage: Stage;
  readonly name: string;
  state: State;
  config: ImageConfig;
  readonly platform: Platform;
  readonly args: BuildArg[] = [];
  cmdSet = false;
  step = 1;

  constructor(
    c: Converter,
    stage: Stage,
    name: string,
    state: State,
    config: ImageConfig,
    platform: Platform,
  ) {
    this.c = c;
    this.stage = stage;
    this.name = name;
    this.state = state;
    this.config = config;
    this.platform = platform;
    this.syncEnv();
  }

  get cc(): NonNullable<ImageConfig['config']> {
    this.config.config ??= {};
    return this.config.config;
  }

  /** Makes the LLB state's env equal to the config's Env. */
  syncEnv(): void {
    const want = envMap(this.cc);
    for (const k of Object.keys(this.state.env())) if (!want.has(k)) this.state = this.state.delEnv(k);
    for (const [k, v] of want) this.state = this.state.addEnv(k, v);
  }

  /** Build args with values, with the image env taking precedence. */
  argValues(): Map<string, string> {
    const env = envMap(this.cc);
    const out = new Map<string, string>();
    for (const a of this.args) {
      if (env.has(a.key)) continue;
      if (a.value !== undefined) out.set(a.key, a.value);
    }
    return out;
  }

  /** The environment for variable expansion: build args overlaid by the image env. */
  expandEnv(): Map<string, string> {
    return new Map([...this.argValues(), ...envMap(this.cc)]);
  }

  x(node: Node, word: string): string {
    return this.c.expand(node, word, this.expandEnv());
  }

  history(text: string, layer: boolean): void {
    addHistory(this.config, text, layer, this.c.opts.created);
  }

  desc(node: Node, text: string): { description: string; location: ReturnType<SourceMap['lines']> } {
    this.step++;
    return {
      description: `[${this.name} ${this.step}/${this.c.stepCount(this.stage)}] ${text}`,
      location: this.c.sourceMap.lines(node.startLine, node.endLine),
    };
  }

  async trigger(expression: string): Promise<void> {
    let parsed: ReturnType<typeof parseDockerfile>;
    try {
      parsed = parseDockerfile(expression, { filename: `${this.c.file} (ONBUILD trigger)` });
    } catch (err) {
      return this.c.fail(
        this.stage.from.node,
        `invalid ONBUILD trigger "${expression}": ${(err as Error).message}`,
        err,
      );
    }
    for (const n of parsed.instructions) {
      const node = { ...n, startLine: this.stage.from.node.startLine, endLine: this.stage.from.node.endLine };
      await this.dispatch(parseInstruction(node, this.c.file));
    }
  }

  async dispatch(ins: Instruction): Promise<void> {
    const node = ins.node;
    const cc = this.cc;
    switch (ins.kind) {
      case 'from':
        return this.c.fail(node, 'unexpected FROM');
      case 'arg': {
        const parts: string[] = [];
        for (const a of ins.args) {
          let value: string | undefined;
          let shown: string | undefined;
          if (a.value !== undefined) {
            value = this.x(node, a.value);
            shown = value;
          } else if (this.c.globalArgs.has(a.key)) {
            value = this.c.globalArgs.get(a.key);
          } else if ((PLATFORM_ARG_NAMES as readonly string[]).includes(a.key)) {
            value = this.c.platformArgs.get(a.key);
          }
          if (this.c.buildArgs.has(a.key)) {
            value = this.c.buildArgs.get(a.key);
            this.c.usedBuildArgs.add(a.key);
          }
          const i = this.args.findIndex((b) => b.key === a.key);
          if (i >= 0) this.args.splice(i, 1);
          this.args.push({ key: a.key, value });
          parts.push(shown === undefined ? a.key : `${a.key}=${shown}`);
        }
        this.history(`ARG ${parts.join(' ')}`, false);
        return;
      }
      case 'env': {
        const env = this.expandEnv();
        const parts: string[] = [];
        for (const p of ins.pairs) {
          const k = this.c.expand(node, p.key, env);
          const v = this.c.expand(node, p.value, env);
          setEnv(cc, k, v);
          parts.push(`${k}=${v}`);
        }
        this.syncEnv();
        this.history(`ENV ${parts.join(' ')}`, false);
        return;
      }
      case 'label': {
        const env = this.expandEnv();
        const parts: string[] = [];
        const labels = { ...(cc.Labels ?? {}) };
        for (const p of ins.pairs) {
          const k = this.c.expand(node, p.key, env);
          const v = this.c.expand(node, p.value, env);
          if (k === '') this.c.fail(node, 'LABEL names can not be blank');
          labels[k] = v;
          parts.push(`${k}=${v}`);
        }
        cc.Labels = labels;
        this.history(`LABEL ${parts.join(' ')}`, false);
        return;
      }
      case 'maintainer':
        this.config.author = ins.value;
        this.history(`MAINTAINER ${ins.value}`, false);
        return;
      case 'workdir': {
        const p = this.x(node, ins.value);
        if (p === '') this.c.fail(node, 'WORKDIR can not be empty');
        const wd = posix.isAbsolute(p) ? posix.normalize(p) : posix.join('/', cc.WorkingDir || '/', p);
        const clean = wd.length > 1 && wd.endsWith('/') ? wd.slice(0, -1) : wd;
        cc.WorkingDir = clean;
        this.state = this.state.dir(clean);
        let layer = false;
        if (clean !== '/') {
          const user = cc.User;
          this.state = this.state.file(
            mkdir(clean, 0o755, user ? { parents: true, owner: user } : { parents: true }),
            this.desc(node, `WORKDIR ${clean}`),
          );
          layer = true;
        }
        this.history(`WORKDIR ${clean}`, layer);
        return;
      }
      case 'user': {
        const u = this.x(node, ins.value);
        cc.User = u;
        this.state = this.state.user(u);
        this.history(`USER ${u}`, false);
        return;
      }
      case 'stopsignal': {
        const sig = this.x(node, ins.value);
        if (!/^(SIG[A-Z0-9+-]+|[0-9]+)$/i.test(sig)) this.c.fail(node, `invalid STOPSIGNAL "${sig}"`);
        cc.StopSignal = sig;
        this.history(`STOPSIGNAL ${sig}`, false);
        return;
      }
      case 'expose': {
        const ports: string[] = [];
        for (const raw of ins.values) {
          for (const w of this.x(node, raw)
            .split(/\s+/)
            .filter((s) => s !== ''))
            ports.push(...parsePorts(w, (m) => this.c.fail(node, m)));
        }
        const exposed = { ...(cc.ExposedPorts ?? {}) };
        for (const p of ports) exposed[p] = {};
        cc.ExposedPorts = exposed;
        this.history(`EXPOSE ${goSetMap(ports)}`, false);
        return;
      }
      case 'volume': {
        const vols: string[] = [];
        for (const raw of ins.values) {
          const v = this.x(node, raw);
          if (v.trim() === '') this.c.fail(node, 'VOLUME specified can not be an empty string');
          vols.push(v);
        }
        const volumes = { ...(cc.Volumes ?? {}) };
        for (const v of vols) volumes[v] = {};
        cc.Volumes = volumes;
        this.history(`VOLUME ${goList(vols)}`, false);
        return;
      }
      case 'shell':
        cc.Shell = [...ins.shell];
        this.history(`SHELL ${goList(ins.shell)}`, false);
        return;
      case 'cmd':
      case 'entrypoint': {
        const argv = ins.shellForm ? [...(cc.Shell ?? DEFAULT_SHELL), ins.cmd.join(' ')] : [...ins.cmd];
        const value = argv; // an empty shell form is `[...shell, ""]`, as docker writes it
        if (ins.kind === 'cmd') {
          cc.Cmd = value;
          this.cmdSet = true;
        } else {
          cc.Entrypoint = value;
          if (!this.cmdSet) delete cc.Cmd;
        }
        // BuildKit v0.8 sets ArgsEscaped for CMD only.
        if (ins.kind === 'cmd') cc.ArgsEscaped = true;
        this.history(`${ins.kind.toUpperCase()} ${goQuoteList(value)}`, false);
        return;
      }
      case 'healthcheck': {
        const h: NonNullable<typeof cc.Healthcheck> = { Test: [...ins.test] };
        if (ins.interval) h.Interval = ins.interval;
        if (ins.timeout) h.Timeout = ins.timeout;
        if (ins.startPeriod) h.StartPeriod = ins.startPeriod;
        if (ins.startInterval) h.StartInterval = ins.startInterval;
        if (ins.retries) h.Retries = ins.retries;
        cc.Healthcheck = h;
        this.history(healthcheckHistory(ins), false);
        return;
      }
      case 'onbuild':
        // The reference writes no history entry for ONBUILD.
        cc.OnBuild = [...(cc.OnBuild ?? []), ins.expression];
        return;
      case 'run':
        return this.run(ins);
      case 'copy':
      case 'add':
        return this.copy(ins);
    }
  }

  /** A stage (by name or index), an image, or the context, for --from / from=. */
  async fromState(node: Node, ref: string): Promise<State> {
    const idx = this.c.stageRef(ref, this.stage.index);
    if (idx !== undefined) return (await this.c.dispatch(idx)).state;
    if (/^[0-9]+$/.test(ref))
      this.c.fail(node, `invalid from flag value ${ref}: refers to current or future build stage`);
    try {
      return image(ref, { platform: this.platform });
    } catch (err) {
      return this.c.fail(node, `invalid from "${ref}": ${(err as Error).message}`, err);
    }
  }

  async run(ins: RunInstruction): Promise<void> {
    const node = ins.node;
    const shell = this.cc.Shell ?? DEFAULT_SHELL;
    let args: string[];
    const extraFiles: MountSpec[] = [];
    if (!ins.shellForm) {
      args = [...ins.cmd];
    } else if (ins.heredocs.length === 1 && /^<<-?["']?[^\s]+["']?$/.test((ins.cmd[0] ?? '').trim())) {
      const body = ins.heredocs[0]!.content;
      if (body.startsWith('#!')) {
        const script = scratch().file(mkfile('/script', 0o755, body));
        extraFiles.push({ target: '/dev/pipes/', source: script, readonly: true });
        args = ['/dev/pipes/script'];
      } else {
        args = [...shell, body];
      }
    } else {
      let line = ins.cmd[0] ?? '';
      for (const h of ins.heredocs) line += `\n${h.content}${h.name}`;
      args = [...shell, line];
    }
    if (args.length === 0 || (args.length === 1 && args[0] === ''))
      this.c.fail(node, 'RUN: the command is empty');
    const argValues = this.argValues();
    const env: Record<string, string> = Object.fromEntries(argValues);
    for (const k of PROXY_ARGS) {
      const v = this.c.buildArgs.get(k);
      if (v !== undefined && !(k in env)) {
        env[k] = v;
        this.c.usedBuildArgs.add(k);
      }
    }
    const mounts: MountSpec[] = [...extraFiles];
    const secretEnv: SecretEnvSpec[] = [];
    let ssh = 0;
    for (const m of ins.mounts) {
      const got = await this.mount(node, m, ssh);
      if (got.secretEnv) {
        const name = got.secretEnv.name;
        if (secretEnv.some((e) => e.name === name))
          this.c.fail(node, `--mount: two secrets set environment variable "${name}"`);
        secretEnv.push(got.secretEnv);
      }
      const spec = got.mount;
      if (!spec) continue;
      if (spec.type === 'ssh') {
        // The first agent socket is announced to the command, as BuildKit does.
        if (ssh === 0 && !('SSH_AUTH_SOCK' in env) && !envMap(this.cc).has('SSH_AUTH_SOCK')) {
          env.SSH_AUTH_SOCK = posix.resolve(this.cc.WorkingDir || '/', spec.target);
        }
        ssh++;
      }
      mounts.push(spec);
    }
    const network = ins.network === 'none' ? 'none' : ins.network === 'host' ? 'host' : undefined;
    const d = this.desc(node, node.original);
    this.state = this.state
      .run({
        args,
        env,
        mounts,
        ...(secretEnv.length > 0 ? { secretEnv } : {}),
        ...(network ? { network } : {}),
        ...(ins.security === 'insecure' ? { security: 'insecure' as const } : {}),
        ...d,
      })
      .root();
    // History: build args declared in the stage (values as RUN sees them), then the argv.
    const envNow = envMap(this.cc);
    const shown = this.args.map((a) => `${a.key}=${envNow.get(a.key) ?? a.value ?? ''}`);
    const prefix = shown.length > 0 ? `|${shown.length} ${shown.join(' ')} ` : '';
    this.history(`RUN ${prefix}${args.join(' ')} # buildkit`, true);
  }

  /**
   * One `--mount`: a mount, a secret environment variable, or both (a secret
   * with `env=` and a `target=`); `sshIndex` numbers the default agent
   * socket paths.
   */
  async mount(
    node: Node,
    opts: MountOption[],
    sshIndex: number,
  ): Promise<{ mount?: MountSpec; secretEnv?: SecretEnvSpec }> {
    const env = this.expandEnv();
    const o = new Map<string, string | undefined>();
    for (const { key, value } of opts) {
      const k =
        key === 'dst' || key === 'destination'
          ? 'target'
          : key === 'src'
            ? 'source'
            : key === 'readonly'
              ? 'ro'
              : key === 'readwrite'
                ? 'rw'
                : key;
      o.set(k, value === undefined ? undefined : this.c.expand(node, value, env));
    }
    const fail = (m: string): never => this.c.fail(node, `--mount: ${m}`);
    const bool = (k: string): boolean | undefined => {
      if (!o.has(k)) return undefined;
      const v = o.get(k);
      if (v === undefined || v.toLowerCase() === 'true') return true;
      if (v.toLowerCase() === 'false') return false;
      return fail(`invalid value for ${k}: "${v}"`);
    };
    const int = (k: string, octal = false): number | undefined => {
      const v = o.get(k);
      if (v === undefined) return undefined;
      if (!(octal ? /^[0-7]+$/ : /^[0-9]+$/).test(v)) fail(`invalid value for ${k}: "${v}"`);
      return Number.parseInt(v, octal ? 8 : 10);
    };
    const type = o.get('type') ?? 'bind';
    let readonly: boolean | undefined;
    if (bool('ro') !== undefined) readonly = bool('ro');
    if (bool('rw') !== undefined) readonly = !bool('rw');
    const target = o.get('target');
    const from = o.get('from');
    const source = o.get('source');
    const fromState = async (): Promise<State | undefined> =>
      from === undefined ? undefined : this.fromState(node, from);
    switch (type) {
      case 'bind': {
        if (!target) return fail('bind mount needs a target');
        const src = (await fromState()) ?? this.c.context(source ?? '/');
        return {
          mount: {
            type: 'bind',
            target: target!,
            source: src,
            ...(source && posix.join('/', source) !== '/' ? { selector: posix.join('/', source) } : {}),
            readonly: readonly ?? true,
          },
        };
      }
      case 'cache': {
        if (!target) return fail('cache mount needs a target');
        const sharing = o.get('sharing') ?? 'shared';
        if (sharing !== 'shared' && sharing !== 'private' && sharing !== 'locked') {
          return fail(`invalid sharing "${sharing}": want shared, private or locked`);
        }
        const mode = int('mode', true);
        const uid = int('uid');
        const gid = int('gid');
        let src = await fromState();
        let selector = source ? posix.join('/', source) : undefined;
        if (!src && (mode !== undefined || uid !== undefined || gid !== undefined)) {
          src = scratch().file(
            mkdir('/cache', mode ?? 0o755, { owner: { user: uid ?? 0, group: gid ?? 0 } }),
          );
          selector = '/cache';
        }
        return {
          mount: {
            type: 'cache',
            target: target!,
            id: o.get('id') || target!,
            sharing,
            ...(src ? { source: src } : {}),
            ...(selector && selector !== '/' ? { selector } : {}),
            readonly: readonly ?? false,
          },
        };
      }
      case 'tmpfs': {
        if (!target) return fail('tmpfs mount needs a target');
        const size = o.get('size');
        return {
          mount: {
            type: 'tmpfs',
            target: target!,
            ...(size !== undefined ? { size: parseSize(size, fail) } : {}),
          },
        };
      }
      case 'secret': {
        // The Dockerfile reference: id defaults to the target's base name (`source` is an alias of
        // id); the target defaults to /run/secrets/<id> only when no env is given; with env and a
        // target the secret is both a file and a variable.
        const envName = o.get('env');
        if (o.has('env') && !envName) fail('secret env= needs a variable name');
        const id = o.get('id') || source || (target ? posix.basename(target) : undefined);
        if (!id) return fail('secret mount needs an id or a target');
        const optional = !(bool('required') ?? false);
        const mode = int('mode', true);
        const uid = int('uid');
        const gid = int('gid');
        const t = target || (envName === undefined ? `/run/secrets/${id}` : undefined);
        const out: { mount?: MountSpec; secretEnv?: SecretEnvSpec } = {};
        if (envName !== undefined) {
          if (envName.includes('=')) fail(`invalid secret env name "${envName}"`);
          out.secretEnv = { name: envName, id, optional };
        }
        if (t !== undefined) {
          out.mount = {
            type: 'secret',
            target: t,
            id,
            ...(uid !== undefined ? { uid } : {}),
            ...(gid !== undefined ? { gid } : {}),
            ...(mode !== undefined ? { mode } : {}),
            optional,
          };
        }
        return out;
      }
      case 'ssh': {
        if (o.has('env')) fail('env= is only for secret mounts, not ssh');
        const id = o.get('id') || undefined;
        const required = bool('required') ?? false;
        const mode = int('mode', true);
        const uid = int('uid');
        const gid = int('gid');
        return {
          mount: {
            type: 'ssh',
            target: target || `/run/buildkit/ssh_agent.${sshIndex}`,
            ...(id !== undefined ? { id } : {}),
            ...(uid !== undefined ? { uid } : {}),
            ...(gid !== undefined ? { gid } : {}),
            ...(mode !== undefined ? { mode } : {}),
            optional: !required,
          },
        };
      }
      default:
        return fail(`unsupported mount type "${type}": want bind, cache, tmpfs, secret or ssh`);
    }
  }

  async copy(ins: CopyInstruction): Promise<void> {
    const node = ins.node;
    const env = this.expandEnv();
    const isAdd = ins.kind === 'add';
    const kw = ins.kind.toUpperCase();
    const dest0 = this.c.expand(node, ins.dest, env);
    const wd = this.cc.WorkingDir || '/';
    let dest = posix.isAbsolute(dest0) ? dest0 : posix.join('/', wd, dest0);
    // Several sources onto a path without a trailing slash: BuildKit copies each onto that path in
    // turn (the last wins), unlike the legacy builder, which refuses; Kiln follows BuildKit.
    const dirDest = dest0.endsWith('/') || dest0.endsWith('/.') || dest0 === '.';
    if (dirDest && !dest.endsWith('/')) dest += '/';
    const opts: CopyOptions = {
      createDestPath: true,
      allowWildcard: true,
      allowEmptyWildcard: true,
      followSymlinks: true,
      copyDirContentsOnly: true,
    };
    if (ins.chown !== undefined) {
      const owner = this.c.expand(node, ins.chown, env);
      if (owner !== '') opts.owner = owner;
    }
    let chmod: number | undefined;
    if (ins.chmod !== undefined) {
      const m = this.c.expand(node, ins.chmod, env);
      if (!/^[0-7]{1,4}$/.test(m))
        this.c.fail(node, `invalid --chmod "${m}": want an octal mode such as 0755`);
      chmod = Number.parseInt(m, 8);
      opts.mode = chmod;
    }
    if (ins.exclude.length > 0) opts.exclude = ins.exclude.map((e) => this.c.expand(node, e, env));
    if (ins.checksum !== undefined && !isAdd) this.c.fail(node, 'COPY does not take --checksum');
    const checksum = ins.checksum === undefined ? undefined : this.c.expand(node, ins.checksum, env);
    let fromState: State | undefined;
    if (ins.from !== undefined) fromState = await this.fromState(node, this.c.expand(node, ins.from, env));
    const heredocs = new Map<string, Heredoc>(ins.heredocs.map((h) => [h.name, h]));

    const shownSources: string[] = [];
    let actions: ReturnType<typeof copy> | undefined;
    const add = (from: State, src: string, to: string, o: CopyOptions): void => {
      actions = actions ? actions.copy(from, src, to, o) : copy(from, src, to, o);
    };
    for (const raw of ins.sources) {
      const hd = raw.startsWith('<<')
        ? heredocs.get(raw.replace(/^<<-?/, '').replace(/["']/g, ''))
        : undefined;
      if (hd) {
        const content = hd.expand ? this.c.expand(node, hd.content, env) : hd.content;
        const file = scratch().file(mkfile(`/${hd.name}`, chmod ?? 0o644, content));
        const to = dest.endsWith('/') ? `${dest}${hd.name}` : dest;
        add(file, `/${hd.name}`, to, {
          ...opts,
          mode: undefined,
          copyDirContentsOnly: false,
          followSymlinks: false,
        });
        shownSources.push(raw);
        continue;
      }
      const src = this.c.expand(node, raw, env);
      shownSources.push(src);
      if (isAdd && fromState === undefined && isGitUrl(src)) {
        const [url, frag = ''] = src.split('#', 2) as [string, string?];
        const [ref, subdir] = frag.split(':', 2) as [string, string?];
        const g = git(url, ref, { keepGitDir: ins.keepGitDir, ...(subdir ? { subdir } : {}) });
        add(g, '/', dest, opts);
        continue;
      }
      if (isAdd && fromState === undefined && /^https?:\/\//.test(src)) {
        const u = new URL(src);
        let name = posix.basename(u.pathname) || '__unnamed__';
        if (!dest.endsWith('/')) name = posix.basename(dest);
        const hopts: { checksum?: string; filename: string; chmod?: number } = { filename: name };
        if (checksum !== undefined) {
          try {
            hopts.checksum = parseDigest(checksum).digest;
          } catch (err) {
            this.c.fail(node, `invalid --checksum "${checksum}": ${(err as Error).message}`, err);
          }
        }
        if (chmod !== undefined) hopts.chmod = chmod;
        const h = http(src, hopts);
        add(h, `/${name}`, dest, opts);
        continue;
      }
      if (!isLocalContext(src)) this.c.fail(node, `${kw} does not support URL sources ("${src}")`);
      if (checksum !== undefined) this.c.fail(node, `--checksum needs an http(s) source, not "${src}"`);
      const from = fromState ?? this.c.context(ins.parents ? '/' : contextPath(src));
      if (ins.parents) {
        // `a/./b/*.c`: the part before `/./` is not kept in the destination.
        const p = `/${src.replace(/^(?:\.\/)+/, '')}`;
        const pivot = p.indexOf('/./');
        const root = pivot >= 0 ? posix.join('/', p.slice(0, pivot)) : '/';
        const pattern = posix.normalize(pivot >= 0 ? p.slice(pivot + 3) : p).replace(/^\/+/, '');
        add(from, root, dest.endsWith('/') ? dest : `${dest}/`, { ...opts, include: [pattern] });
      } else {
        add(from, posix.join('/', src), dest, isAdd ? { ...opts, attemptUnpack: true } : opts);
      }
    }
    if (!actions) this.c.fail(node, `${kw} has no source`);
    const text = `${kw} ${[...shownSources, dest0].join(' ')}`;
    const d = this.desc(node, node.original);
    if (ins.link) {
      const layer = scratch().platform(this.platform).file(actions!, d);
      const merged = merge([this.state, layer]);
      this.state = this.state.withOutput(merged.output());
    } else {
      this.state = this.state.file(actions!, d);
    }
    this.history(`${text} # buildkit`, true);
  }
}

/** The part of a context source path to transfer: up to the first wildcard's directory. */
function contextPath(src: string): string {
  const wild = src.search(/[*?[\\]/);
  return wild >= 0 ? src.slice(0, src.lastIndexOf('/', wild) + 1) : src;
}

/** EXPOSE port specs → `port/proto` keys (ranges expanded). */
export function parsePorts(spec: string, fail: (msg: string) => never): string[] {
  const m = /^(?:(?:[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?:[0-9]*:)?([0-9]+)(?:-([0-9]+))?(?:\/([a-zA-Z]+))?$/.exec(
    spec,
  );
  if (!m) return fail(`invalid port "${spec}" in EXPOSE`);
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  const proto = (m[3] ?? 'tcp').toLowerCase();
  if (proto !== 'tcp' && proto !== 'udp' && proto !== 'sctp')
    fail(`invalid protocol "${m[3]}" in EXPOSE "${spec}"`);
  if (lo < 0 || hi > 65535 || hi < lo) fail(`invalid port range "${spec}" in EXPOSE`);
  const out: string[] = [];
  for (let p = lo; p <= hi; p++) out.push(`${p}/${proto}`);
  return out;
}

/** `64m`, `1g`, `512` (bytes) → bytes. */
function parseSize(s: string, fail: (m: string) => never): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)i?b?$/i.exec(s.trim());
  if (!m) return fail(`invalid size "${s}"`);
  const mult: Record<string, number> = {
    '': 1,
    k: 1024,
    m: 1024 ** 2,
    g: 1024 ** 3,
    t: 1024 ** 4,
    p: 1024 ** 5,
  };
  return Math.floor(Number(m[1]) * mult[m[2]!.toLowerCase()]!);
}
