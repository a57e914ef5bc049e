/**
 * Platforms (`os/arch[/variant]`): parsing, normalization, matching and the
 * choice of one manifest from an index.
 *
 * Normalization: os and arch lower-case; `x86_64`/`x86-64` → amd64,
 * `aarch64` → arm64, `i386`/`i686`/`x86` → 386, `armhf` → arm/v7,
 * `armel` → arm/v6, `armv7l` → arm/v7; a bare variant digit gets its "v"
 * (`7` → v7). Default variants: arm64 → v8, arm → v7, so `linux/arm64`
 * and `linux/arm64/v8` are the same platform. amd64's `v1` variant is the
 * same as none. `os.version`/`os.features` are kept but not compared.
 *
 * Selection: an exact (normalized) match wins; with fallbacks (the default)
 * a host may also run older variants of its architecture (arm/v8 → v7, v6,
 * v5), 32-bit arm on arm64, and 386 on amd64, in that order of preference.
 * Among equal candidates, the first in index order wins. Descriptors without
 * a platform (and attestation entries such as `unknown/unknown`) never match.
 */
import { errInvalidArgument } from '../errors.ts';
import type { Descriptor, Platform } from './types.ts';

const KNOWN_OS = new Set([
  'aix',
  'android',
  'darwin',
  'dragonfly',
  'freebsd',
  'illumos',
  'ios',
  'js',
  'linux',
  'netbsd',
  'openbsd',
  'plan9',
  'solaris',
  'wasip1',
  'windows',
]);

function normalizeArch(
  arch: string,
  variant: string | undefined,
): { architecture: string; variant?: string } {
  let a = arch.toLowerCase();
  let v = variant?.toLowerCase() || undefined;
  if (v !== undefined && /^[0-9]+$/.test(v)) v = `v${v}`;
  switch (a) {
    case 'x86_64':
    case 'x86-64':
    case 'amd64':
      a = 'amd64';
      if (v === 'v1') v = undefined;
      break;
    case 'i386':
    case 'i486':
    case 'i586':
    case 'i686':
    case 'x86':
    case '386':
      a = '386';
      v = undefined;
      break;
    case 'aarch64':
    case 'arm64':
      a = 'arm64';
      if (v === undefined || v === 'v8.0') v = 'v8';
      break;
    case 'armhf':
      a = 'arm';
      v ??= 'v7';
      break;
    case 'armel':
      a = 'arm';
      v ??= 'v6';
      break;
    case 'arm':
      v ??= 'v7';
      break;
    default: {
      const m = /^armv([5-8])l?$/.exec(a);
      if (m) {
        a = 'arm';
        v ??= `v${m[1]}`;
      }
    }
  }
  return v === undefined ? { architecture: a } : { architecture: a, variant: v };
}

/** A copy of `p` in normalized form (see the module comment). */
export function normalizePlatform(p: Platform): Platform {
  let os = p.os.toLowerCase();
  if (os === 'macos') os = 'darwin';
  const { architecture, variant } = normalizeArch(p.architecture, p.variant);
  const out: Platform = { os, architecture };
  if (variant !== undefined) out.variant = variant;
  if (p['os.version'] !== undefined) out['os.version'] = p['os.version'];
  if (p['os.features'] !== undefined) out['os.features'] = [...p['os.features']];
  if (p.features !== undefined) out.features = [...p.features];
  return out;
}

/** The platform this process runs on, normalized. */
export function hostPlatform(): Platform {
  const archMap: Record<string, string> = {
    x64: 'amd64',
    ia32: '386',
    arm64: 'arm64',
    arm: 'arm',
    ppc64: 'ppc64le',
    s390x: 's390x',
    riscv64: 'riscv64',
    loong64: 'loong64',
    mips64el: 'mips64le',
  };
  const os = process.platform === 'win32' ? 'windows' : process.platform;
  let variant: string | undefined;
  if (process.arch === 'arm') {
    const v = (process.config.variables as Record<string, unknown>).arm_version;
    if (v !== undefined) variant = `v${String(v)}`;
  }
  return normalizePlatform({ os, architecture: archMap[process.arch] ?? process.arch, variant });
}

/**
 * Parses `os/arch[/variant]`, `arch` (os = host os) or a known `os` alone
 * (arch = host arch); throws InvalidArgument quoting `s`.
 */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  const bad = (why: string): never => {
    throw errInvalidArgument(`invalid platform "${s}": ${why}`);
  };
  if (parts.length > 3) bad('want os/arch[/variant]');
  for (const part of parts) {
    if (!/^[A-Za-z0-9_.-]+$/.test(part)) bad(`bad component "${part}"`);
  }
  const host = hostPlatform();
  if (parts.length === 1) {
    const only = parts[0]!.toLowerCase();
    if (KNOWN_OS.has(only)) {
      return normalizePlatform({ os: only, architecture: host.architecture, variant: host.variant });
    }
    return normalizePlatform({ os: host.os, architecture: only });
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  if (!KNOWN_OS.has(os.toLowerCase()) && os.toLowerCase() !== 'macos')
    bad(`unknown operating system "${os}"`);
  return normalizePlatform({ os, architecture, variant });
}

/** `os/arch[/variant]` of the normalized platform. */
export function formatPlatform(p: Platform): string {
  const n = normalizePlatform(p);
  return `${n.os}/${n.architecture}${n.variant ? `/${n.variant}` : ''}`;
}

/** True when `have` is the same platform as `want` after normalization. */
export function platformEquals(want: Platform, have: Platform): boolean {
  const a = normalizePlatform(want);
  const b = normalizePlatform(have);
  return a.os === b.os && a.architecture === b.architecture && (a.variant ?? '') === (b.variant ?? '');
}

/**
 * Platforms a host of platform `want` can run, best first: `want` itself,
 * then (if `fallbacks`) older variants and 32-bit siblings.
 */
export function compatiblePlatforms(want: Platform, fallbacks = true): Platform[] {
  const w = normalizePlatform(want);
  const out: Platform[] = [w];
  if (!fallbacks) return out;
  const armBelow = (top: number): void => {
    for (let v = top; v >= 5; v--) out.push({ os: w.os, architecture: 'arm', variant: `v${v}` });
  };
  if (w.architecture === 'arm' && w.variant && /^v[5-8]$/.test(w.variant)) {
    armBelow(Number(w.variant.slice(1)) - 1);
  } else if (w.architecture === 'arm64') {
    armBelow(8);
  } else if (w.architecture === 'amd64') {
    out.push({ os: w.os, architecture: '386' });
  }
  return out;
}

/** Creates a matcher ranking platforms for `want` (lower rank is better; -1: no match). */
export function platformMatcher(
  want: Platform = hostPlatform(),
  fallbacks = true,
): {
  match(p: Platform): boolean;
  rank(p: Platform): number;
} {
  const list = compatiblePlatforms(want, fallbacks);
  const rank = (p: Platform): number => list.findIndex((c) => platformEquals(c, p));
  return { rank, match: (p) => rank(p) >= 0 };
}

/**
 * The descriptor from an index's `manifests` best suited to `want` (host
 * platform by default), or undefined when none matches.
 */
export function selectManifest(
  manifests: readonly Descriptor[],
  want: Platform = hostPlatform(),
  options: { fallbacks?: boolean } = {},
): Descriptor | undefined {
  const m = platformMatcher(want, options.fallbacks ?? true);
  let best: Descriptor | undefined;
  let bestRank = Number.POSITIVE_INFINITY;
  for (const d of manifests) {
    if (!d.platform) continue;
    const r = m.rank(d.platform);
    if (r >= 0 && r < bestRank) {
      best = d;
      bestRank = r;
    }
  }
  return best;
}
