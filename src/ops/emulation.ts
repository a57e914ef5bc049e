/**
 * Can this host run an exec for a given platform? Natively (the host's own
 * architecture, or 386 on amd64 and arm on arm64), or through a binfmt_misc
 * handler, as BuildKit does when qemu-user handlers are registered
 * (Debian: `qemu-user-static` + `binfmt-support`).
 *
 * `checkExecPlatform(platform)` resolves when the platform's binaries can
 * run here and fails with FailedPrecondition otherwise, naming the platform
 * and the handler it needs (`qemu-aarch64`). A handler counts when it is
 * enabled, binfmt_misc itself is enabled, its magic matches an ELF
 * executable header of the platform's machine, and it has the `F` flag
 * (the interpreter is opened when registered, so it works inside a
 * container's root file system, which does not hold the interpreter).
 *
 * Limits: only Linux platforms; the ELF header checked is an executable of
 * the platform's word size and byte order (what its busybox or shell is);
 * handlers matched by file extension are ignored.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { errFailedPrecondition } from '../core/errors.ts';

/** Where the kernel shows binfmt_misc handlers. */
export const BINFMT_DIR = '/proc/sys/fs/binfmt_misc';

interface Machine {
  /** ELF e_machine. */
  readonly machine: number;
  readonly bits: 32 | 64;
  readonly bigEndian: boolean;
  /** The qemu-user name for the architecture (handler `qemu-<name>`). */
  readonly qemu: string;
}

const MACHINES: Readonly<Record<string, Machine>> = {
  amd64: { machine: 62, bits: 64, bigEndian: false, qemu: 'x86_64' },
  '386': { machine: 3, bits: 32, bigEndian: false, qemu: 'i386' },
  arm64: { machine: 183, bits: 64, bigEndian: false, qemu: 'aarch64' },
  arm: { machine: 40, bits: 32, bigEndian: false, qemu: 'arm' },
  ppc64le: { machine: 21, bits: 64, bigEndian: false, qemu: 'ppc64le' },
  s390x: { machine: 22, bits: 64, bigEndian: true, qemu: 's390x' },
  riscv64: { machine: 243, bits: 64, bigEndian: false, qemu: 'riscv64' },
  mips64le: { machine: 8, bits: 64, bigEndian: false, qemu: 'mips64el' },
};

/** The host's architecture as an OCI platform architecture. */
export function hostArchitecture(): string {
  return (
    ({ x64: 'amd64', ia32: '386', arm64: 'arm64', arm: 'arm' } as Record<string, string>)[process.arch] ??
    process.arch
  );
}

/** True when the host runs `arch` binaries without emulation. */
export function runsNatively(arch: string, host: string = hostArchitecture()): boolean {
  return arch === host || (host === 'amd64' && arch === '386') || (host === 'arm64' && arch === 'arm');
}

/** The first 20 bytes of an ELF executable for `m`. */
export function elfHeader(m: Machine): Buffer {
  const h = Buffer.alloc(20);
  h.write('\x7fELF', 0, 'latin1');
  h[4] = m.bits === 64 ? 2 : 1;
  h[5] = m.bigEndian ? 2 : 1;
  h[6] = 1;
  if (m.bigEndian) {
    h.writeUInt16BE(2, 16);
    h.writeUInt16BE(m.machine, 18);
  } else {
    h.writeUInt16LE(2, 16);
    h.writeUInt16LE(m.machine, 18);
  }
  return h;
}

/** One binfmt_misc handler, as its /proc file describes it. */
export interface BinfmtHandler {
  readonly name: string;
  readonly enabled: boolean;
  readonly interpreter: string;
  readonly flags: string;
  readonly offset: number;
  readonly magic?: Buffer;
  readonly mask?: Buffer;
}

/** Parses a handler file (`enabled`, `interpreter X`, `flags: F`, `offset N`, `magic HEX`, `mask HEX`). */
export function parseHandler(name: string, text: string): BinfmtHandler {
  const lines = text.split('\n');
  const field = (k: string): string | undefined =>
    lines
      .find((l) => l.startsWith(`${k} `) || l.startsWith(`${k}: `))
      ?.replace(/^[^ ]+ /, '')
      .trim();
  const hex = (v: string | undefined): Buffer | undefined => (v ? Buffer.from(v, 'hex') : undefined);
  const magic = hex(field('magic'));
  const mask = hex(field('mask'));
  return {
    name,
    enabled: lines[0]?.trim() === 'enabled',
    interpreter: field('interpreter') ?? '',
    flags: field('flags') ?? '',
    offset: Number(field('offset') ?? 0),
    ...(magic ? { magic } : {}),
    ...(mask ? { mask } : {}),
  };
}

/** True when `handler`'s magic (under its mask) matches `header`. */
export function handlerMatches(handler: BinfmtHandler, header: Buffer): boolean {
  const { magic, mask, offset } = handler;
  if (!magic || offset + magic.length > header.length) return false;
  for (let i = 0; i < magic.length; i++) {
    const m = mask ? (mask[i] ?? 0xff) : 0xff;
    if (((header[offset + i] ?? 0) & m) !== (magic[i]! & m)) return false;
  }
  return true;
}

async function readHandlers(dir: string): Promise<{ enabled: boolean; handlers: BinfmtHandler[] }> {
  const status = await fs.readFile(path.join(dir, 'status'), 'utf8').catch(() => undefined);
  if (status === undefined) return { enabled: false, handlers: [] };
  const handlers: BinfmtHandler[] = [];
  for (const name of await fs.readdir(dir)) {
    if (name === 'status' || name === 'register') continue;
    const text = await fs.readFile(path.join(dir, name), 'utf8').catch(() => undefined);
    if (text !== undefined) handlers.push(parseHandler(name, text));
  }
  return { enabled: status.trim() === 'enabled', handlers };
}

export interface PlatformLike {
  readonly os?: string;
  readonly architecture?: string;
  readonly variant?: string;
}

function describe(p: PlatformLike): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/**
 * Resolves when an exec for `platform` can run on this host (no platform or
 * no architecture: the host's); else FailedPrecondition naming the platform
 * and the missing `qemu-<arch>` handler.
 */
export async function checkExecPlatform(
  platform: PlatformLike | undefined,
  opts: { binfmtDir?: string; hostArch?: string } = {},
): Promise<void> {
  const arch = platform?.architecture;
  if (!arch) return;
  const host = opts.hostArch ?? hostArchitecture();
  const where = `run a process for platform "${describe(platform)}" on this linux/${host} host`;
  if (platform.os && platform.os !== 'linux')
    throw errFailedPrecondition(`${where}: only linux processes can run`);
  if (runsNatively(arch, host)) return;
  const m = MACHINES[arch];
  if (!m) throw errFailedPrecondition(`${where}: no emulation is known for architecture "${arch}"`);
  const handler = `qemu-${m.qemu}`;
  const dir = opts.binfmtDir ?? BINFMT_DIR;
  const { enabled, handlers } = await readHandlers(dir);
  const hint = `install qemu-user-static and binfmt-support (they register ${handler} with the F flag)`;
  if (!enabled)
    throw errFailedPrecondition(`${where}: binfmt_misc is not mounted or disabled at ${dir}; ${hint}`);
  const header = elfHeader(m);
  const matching = handlers.filter((h) => h.enabled && handlerMatches(h, header));
  if (matching.length === 0)
    throw errFailedPrecondition(`${where}: no enabled binfmt_misc handler "${handler}" in ${dir}; ${hint}`);
  if (!matching.some((h) => h.flags.includes('F'))) {
    throw errFailedPrecondition(
      `${where}: the binfmt_misc handler "${matching[0]!.name}" lacks the F flag, so its interpreter is not found inside the container; register ${handler} with flags F`,
    );
  }
}
