/**
 * The build arguments a Dockerfile gets without declaring a value: the
 * platform arguments (BUILDPLATFORM, BUILDOS, BUILDARCH, BUILDVARIANT,
 * TARGETPLATFORM, TARGETOS, TARGETARCH, TARGETVARIANT), defined in the
 * global scope (usable in FROM) and inside a stage after `ARG NAME`, and the
 * proxy arguments (HTTP_PROXY, ... in both cases), which RUN receives from
 * `--build-arg` without an ARG line and which stay out of the image history.
 *
 * Values follow the Dockerfile reference: `os/arch[/variant]` for the
 * *PLATFORM arguments, an empty string for a missing variant.
 */
import { formatPlatform, normalizePlatform } from '../../core/images/platform.ts';
import type { Platform } from '../../core/images/types.ts';

/** Names of the proxy arguments usable without an ARG instruction. */
export const PROXY_ARGS: ReadonlySet<string> = new Set([
  'HTTP_PROXY',
  'http_proxy',
  'HTTPS_PROXY',
  'https_proxy',
  'FTP_PROXY',
  'ftp_proxy',
  'NO_PROXY',
  'no_proxy',
  'ALL_PROXY',
  'all_proxy',
]);

/** Names of the predefined platform arguments. */
export const PLATFORM_ARG_NAMES = [
  'BUILDPLATFORM',
  'BUILDOS',
  'BUILDARCH',
  'BUILDVARIANT',
  'TARGETPLATFORM',
  'TARGETOS',
  'TARGETARCH',
  'TARGETVARIANT',
] as const;

/**
 * A platform as BuildKit shows it in these arguments: normalized, but arm64's
 * default variant v8 left out (`--platform linux/arm64` gives TARGETPLATFORM
 * `linux/arm64` and an empty TARGETVARIANT, as docker 20.10's BuildKit does).
 */
function argPlatform(p: Platform): { text: string; os: string; arch: string; variant: string } {
  const n = normalizePlatform(p);
  const variant = n.architecture === 'arm64' && n.variant === 'v8' ? '' : (n.variant ?? '');
  const text = variant ? formatPlatform(n) : `${n.os}/${n.architecture}`;
  return { text, os: n.os, arch: n.architecture, variant };
}

/** The platform arguments for a build on `build` that targets `target`. */
export function platformArgs(build: Platform, target: Platform): Map<string, string> {
  const b = argPlatform(build);
  const t = argPlatform(target);
  return new Map([
    ['BUILDPLATFORM', b.text],
    ['BUILDOS', b.os],
    ['BUILDARCH', b.arch],
    ['BUILDVARIANT', b.variant],
    ['TARGETPLATFORM', t.text],
    ['TARGETOS', t.os],
    ['TARGETARCH', t.arch],
    ['TARGETVARIANT', t.variant],
  ]);
}
