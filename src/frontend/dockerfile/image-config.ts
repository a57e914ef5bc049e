/**
 * The image config a Dockerfile build produces, and its history entries in
 * the exact text BuildKit (v0.8, the docker 20.10 reference on this machine)
 * writes: `ENV a=b`, `CMD ["sh" "-c" "x"]` (Go's %q of a string slice),
 * `VOLUME [/a /b]` (%v), `EXPOSE map[80/tcp:{}]`, `HEALTHCHECK &{["CMD" "x"]
 * "5s" "0s" "0s" '\x03'}` (%q of the health config struct), `RUN |1 A=b
 * /bin/sh -c x # buildkit` (" # buildkit" marks entries that made a layer
 * from a build step), comment `buildkit.dockerfile.v0`, `empty_layer` for
 * metadata-only steps.
 *
 * Limits: history entries carry no `created` time unless the caller gives
 * one (the exporter stamps them); `rootfs.diff_ids` lists the base image's
 * layers only (the exporter appends the built ones).
 */
import { formatPlatform } from '../../core/images/platform.ts';
import type { ContainerConfig, HistoryEntry, ImageConfig, Platform } from '../../core/images/types.ts';
import { goQuote } from './dump.ts';

export const HISTORY_COMMENT = 'buildkit.dockerfile.v0';
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** A fresh config for `FROM scratch` on `platform` (Env holds the default PATH, WorkingDir is "/", as BuildKit's). */
export function emptyImageConfig(platform: Platform): ImageConfig {
  const cfg: ImageConfig = {
    architecture: platform.architecture,
    os: platform.os,
    config: { Env: [`PATH=${DEFAULT_PATH}`], WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: [] },
    history: [],
  };
  if (platform.variant) cfg.variant = platform.variant;
  return cfg;
}

/** A deep copy of a config, with `config` and `history` present and a default PATH. */
export function cloneImageConfig(src: ImageConfig, platform: Platform): ImageConfig {
  const cfg = structuredClone(src) as ImageConfig;
  cfg.architecture ||= platform.architecture;
  cfg.os ||= platform.os;
  if (!src.architecture && platform.variant) cfg.variant = platform.variant;
  cfg.config ??= {};
  cfg.history ??= [];
  cfg.rootfs ??= { type: 'layers', diff_ids: [] };
  const env = cfg.config.Env ?? [];
  if (!env.some((kv) => kv.startsWith('PATH='))) env.unshift(`PATH=${DEFAULT_PATH}`);
  cfg.config.Env = env;
  return cfg;
}

/** Sets (or replaces in place) a variable in a config's Env list. */
export function setEnv(config: ContainerConfig, key: string, value: string): void {
  const env = config.Env ?? [];
  const i = env.findIndex((kv) => kv === key || kv.startsWith(`${key}=`));
  if (i >= 0) env[i] = `${key}=${value}`;
  else env.push(`${key}=${value}`);
  config.Env = env;
}

/** The Env list as a map (later entries win). */
export function envMap(config: ContainerConfig | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const kv of config?.Env ?? []) {
    const i = kv.indexOf('=');
    if (i < 0) out.set(kv, '');
    else out.set(kv.slice(0, i), kv.slice(i + 1));
  }
  return out;
}

/** Appends a history entry (`layer` false: an empty_layer entry). */
export function addHistory(cfg: ImageConfig, createdBy: string, layer: boolean, created?: Date): void {
  const h: HistoryEntry = {};
  if (created) h.created = created.toISOString();
  h.created_by = createdBy;
  h.comment = HISTORY_COMMENT;
  if (!layer) h.empty_layer = true;
  cfg.history ??= [];
  cfg.history.push(h);
}

/** Go's `%q` of a []string: `["a" "b"]`. */
export function goQuoteList(list: readonly string[]): string {
  return `[${list.map(goQuote).join(' ')}]`;
}

/** Go's `%v` of a []string: `[a b]`. */
export function goList(list: readonly string[]): string {
  return `[${list.join(' ')}]`;
}

/** Go's `%v` of a map[string]struct{}: `map[a:{} b:{}]`, keys sorted. */
export function goSetMap(keys: Iterable<string>): string {
  const sorted = [...new Set(keys)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `map[${sorted.map((k) => `${k}:{}`).join(' ')}]`;
}

/** Go's strconv.QuoteRune (`%q` of an int). */
export function goQuoteRune(n: number): string {
  const short: Record<number, string> = {
    7: '\\a',
    8: '\\b',
    12: '\\f',
    10: '\\n',
    13: '\\r',
    9: '\\t',
    11: '\\v',
  };
  if (n === 0x27) return "'\\''";
  if (n === 0x5c) return "'\\\\'";
  if (short[n] !== undefined) return `'${short[n]}'`;
  if (n >= 0x20 && n < 0x7f) return `'${String.fromCharCode(n)}'`;
  if (n < 0x20 || n === 0x7f) return `'\\x${n.toString(16).padStart(2, '0')}'`;
  if (n > 0x10ffff || (n >= 0xd800 && n <= 0xdfff)) return "'�'";
  const ch = String.fromCodePoint(n);
  if (/^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u.test(ch)) return `'${ch}'`;
  return n < 0x10000 ? `'\\u${n.toString(16).padStart(4, '0')}'` : `'\\U${n.toString(16).padStart(8, '0')}'`;
}

/** Go's time.Duration.String for a duration in nanoseconds. */
export function goDuration(ns: number): string {
  if (ns === 0) return '0s';
  const neg = ns < 0;
  let n = Math.abs(Math.round(ns));
  const frac = (v: number, digits: number): string => {
    const whole = Math.floor(v / 10 ** digits);
    const rest = v % 10 ** digits;
    if (rest === 0) return String(whole);
    return `${whole}.${String(rest).padStart(digits, '0').replace(/0+$/, '')}`;
  };
  let out: string;
  if (n < 1e3) out = `${n}ns`;
  else if (n < 1e6) out = `${frac(n, 3)}µs`;
  else if (n < 1e9) out = `${frac(n, 6)}ms`;
  else {
    const h = Math.floor(n / 3600e9);
    n -= h * 3600e9;
    const m = Math.floor(n / 60e9);
    n -= m * 60e9;
    out = `${h > 0 ? `${h}h` : ''}${h > 0 || m > 0 ? `${m}m` : ''}${frac(n, 9)}s`;
  }
  return neg ? `-${out}` : out;
}

/** The HEALTHCHECK history text (`%q` of the health config pointer). */
export function healthcheckHistory(h: {
  test: readonly string[];
  interval: number;
  timeout: number;
  startPeriod: number;
  startInterval: number;
  retries: number;
}): string {
  const parts = [goQuoteList(h.test), goQuote(goDuration(h.interval)), goQuote(goDuration(h.timeout))];
  parts.push(goQuote(goDuration(h.startPeriod)));
  // The reference's struct has no StartInterval; newer ones print it before Retries.
  if (h.startInterval !== 0) parts.push(goQuote(goDuration(h.startInterval)));
  parts.push(goQuoteRune(h.retries));
  return `HEALTHCHECK &{${parts.join(' ')}}`;
}

/** `os/arch[/variant]` of a config. */
export function configPlatform(cfg: Pick<ImageConfig, 'os' | 'architecture' | 'variant'>): string {
  return formatPlatform({ os: cfg.os, architecture: cfg.architecture, variant: cfg.variant });
}
