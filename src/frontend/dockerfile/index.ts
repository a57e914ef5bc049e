/**
 * The Dockerfile frontend's public entry: parse (parser.ts, shell.ts,
 * flags.ts, dump.ts), typed instructions (instructions.ts), conversion to
 * LLB plus the image config (convert.ts, image-config.ts,
 * platform-args.ts), and `.dockerignore` matching (dockerignore.ts).
 *
 * @example
 * ```ts
 * import { convertDockerfile, parseDockerignore } from './index.ts';
 * const { definition, imageConfig } = await convertDockerfile(text, {
 *   target: 'build',
 *   buildArgs: { VERSION: '1.2' },
 *   dockerignore: parseDockerignore(ignoreText),
 *   imageResolver: async (ref, platform) => ({ config: await lookUp(ref, platform) }),
 * });
 * ```
 */
export {
  type ConvertOptions,
  type ConvertResult,
  type ConvertWarning,
  convertDockerfile,
  type ImageResolver,
  type ResolvedImage,
  type StageInfo,
} from './convert.ts';
export {
  cleanPattern,
  dockerignoreNames,
  IgnoreMatcher,
  matchComponent,
  parseDockerignore,
} from './dockerignore.ts';
export { dumpAst, dumpNode, goQuote } from './dump.ts';
export { checkFlags, INSTRUCTION_FLAGS, parseFlags, parseInstructionFlags } from './flags.ts';
export {
  DEFAULT_PATH,
  goDuration,
  HISTORY_COMMENT,
  healthcheckHistory,
} from './image-config.ts';
export { type Instruction, parseInstruction, parseInstructions } from './instructions.ts';
export {
  DockerfileSyntaxError,
  type Directives,
  type Heredoc,
  type Node,
  type ParseResult,
  parseDockerfile,
} from './parser.ts';
export { PLATFORM_ARG_NAMES, PROXY_ARGS, platformArgs } from './platform-args.ts';
export { ShellLex } from './shell.ts';
