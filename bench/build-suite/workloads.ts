/**
 * The build suite's workloads: each is a directory bench/build-suite/<id>
 * holding its Dockerfile (and static files), plus a generator that writes a
 * complete, deterministic build context (same bytes every time; fresh
 * mtimes) and a one-line source change. Contexts are generated, not
 * committed, because two of them are large (workload 5 is 150 MB).
 *
 * Limits: the "packages" of workload 3 are made in memory by
 * `makePackages` and must be served by the caller over HTTP (build arg
 * PKG_BASE); `change(dir, rev)` rewrites one marker line, rev 0 restores the
 * original text.
 */
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { packTar } from '../../src/core/archive/tar.ts';

const here = import.meta.dirname;

export interface Workload {
  /** Directory name under bench/build-suite (also the key in results). */
  id: string;
  title: string;
  /** Base images the Dockerfile uses ('busybox', 'debian-gcc'). */
  bases: readonly ('busybox' | 'debian-gcc')[];
  /** Uses RUN --mount (the legacy builder cannot build it). */
  cacheMount: boolean;
  /** Needs the package server (build arg PKG_BASE). */
  packages: boolean;
  /**
   * Creates tens of thousands of files: the suite waits after the resets and
   * after builds that delete many files until the deleted inodes no longer
   * slow ext4's inode allocation (see docs/performance.md).
   */
  settle?: boolean;
  /** Writes the context into `dir` (which exists and is empty). */
  generate(dir: string): Promise<void>;
  /** Applies the one-line source change number `rev` (0 = the original line). */
  change(dir: string, rev: number): Promise<void>;
}

/** Deterministic pseudo-random bytes (sha256 in counter mode), seeded by a string. */
export function prandom(seed: string, bytes: number): Buffer {
  const out = Buffer.allocUnsafe(bytes);
  let off = 0;
  for (let i = 0; off < bytes; i++) {
    const block = createHash('sha256').update(`${seed}:${i}`).digest();
    off += block.copy(out, off);
  }
  return out;
}

/** Base64-like text from `prandom` (gzip gets it to ~75%, like source or data files). */
function text(seed: string, bytes: number): Buffer {
  return Buffer.from(
    prandom(seed, Math.ceil((bytes * 3) / 4))
      .toString('base64')
      .slice(0, bytes),
  );
}

async function put(file: string, data: string | Buffer): Promise<void> {
  await mkdir(join(file, '..'), { recursive: true });
  await writeFile(file, data);
}

/** Replaces the line starting with `prefix` in `file` by `line`. */
async function replaceLine(file: string, prefix: string, line: string): Promise<void> {
  const lines = (await readFile(file, 'utf8')).split('\n');
  const i = lines.findIndex((l) => l.startsWith(prefix));
  if (i < 0) throw new Error(`change: no line starting with "${prefix}" in ${file}`);
  lines[i] = line;
  await writeFile(file, lines.join('\n'));
}

/** One C translation unit of `fns` functions (about 8 ms of gcc -O2 each on this machine). */
function cModule(name: string, fns: number): string {
  const out = ['#include <stdint.h>', '#include "lib.h"', ''];
  for (let i = 1; i <= fns; i++) {
    out.push(
      `static uint64_t ${name}_f${i}(uint64_t x) {`,
      `  uint64_t a[64];`,
      `  for (int i = 0; i < 64; i++) a[i] = x * (uint64_t)(i + ${i}) ^ (x >> (i % 13));`,
      `  for (int r = 0; r < 8; r++)`,
      `    for (int i = 1; i < 64; i++) a[i] += (a[i - 1] * 2654435761u) ^ (a[(i * 7) % 64] >> 3) ^ ${i}u;`,
      `  uint64_t s = 0;`,
      `  for (int i = 0; i < 64; i++) s ^= a[i] + (s << 5) + (s >> 2);`,
      `  return s;`,
      `}`,
    );
  }
  out.push(`uint64_t ${name}_sum(uint64_t x) {`, '  uint64_t s = x;');
  for (let i = 1; i <= fns; i++) out.push(`  s ^= ${name}_f${i}(s + ${i});`);
  out.push('  return s;', '}', '');
  return out.join('\n');
}

const MARKER = '#define BENCH_REV ';

/** A C project: Makefile, include/lib.h, src/main.c and `mods` modules of `fns` functions. */
async function cProject(dir: string, mods: number, fns: number): Promise<void> {
  await mkdir(join(dir, 'src'), { recursive: true });
  await copyFile(join(here, 'Makefile.c-project'), join(dir, 'Makefile'));
  const names = Array.from({ length: mods }, (_, i) => `mod${String(i + 1).padStart(2, '0')}`);
  await put(
    join(dir, 'include/lib.h'),
    ['#include <stdint.h>', ...names.map((n) => `uint64_t ${n}_sum(uint64_t x);`), ''].join('\n'),
  );
  for (const n of names) await put(join(dir, 'src', `${n}.c`), cModule(n, fns));
  await put(
    join(dir, 'src/main.c'),
    [
      '#include <stdio.h>',
      '#include "lib.h"',
      `${MARKER}0`,
      'int main(void) {',
      '  uint64_t s = BENCH_REV;',
      ...names.map((n) => `  s = ${n}_sum(s);`),
      '  printf("rev %d checksum %016llx\\n", BENCH_REV, (unsigned long long)s);',
      '  return 0;',
      '}',
      '',
    ].join('\n'),
  );
}

async function dockerfile(id: string, dir: string): Promise<void> {
  await copyFile(join(here, id, 'Dockerfile'), join(dir, 'Dockerfile'));
}

/** The package tarballs of workload 3: name → .tgz bytes, and the lockfile text. */
export async function makePackages(): Promise<{ files: Map<string, Buffer>; lockfile: string }> {
  const files = new Map<string, Buffer>();
  const lock: string[] = [];
  for (let p = 0; p < 40; p++) {
    const name = `pkg-${String(p).padStart(2, '0')}`;
    const entries = [];
    for (let f = 0; f < 12; f++) {
      const body = text(`${name}/${f}`, 4000 + ((p * 7919 + f * 104729) % 30000));
      entries.push({
        header: {
          name: `lib/file${f}.js`,
          type: 'file' as const,
          mode: 0o644,
          uid: 0,
          gid: 0,
          size: body.length,
          mtime: 1700000000,
        },
        body,
      });
    }
    const chunks: Uint8Array[] = [];
    for await (const c of packTar([
      {
        header: {
          name: 'lib/',
          type: 'directory',
          mode: 0o755,
          uid: 0,
          gid: 0,
          size: 0,
          mtime: 1700000000,
        },
      },
      ...entries,
    ]))
      chunks.push(c);
    const tgz = gzipSync(Buffer.concat(chunks), { level: 6 });
    files.set(`${name}.tgz`, tgz);
    lock.push(`${name} ${createHash('sha256').update(tgz).digest('hex')}`);
  }
  return { files, lockfile: `${lock.join('\n')}\n` };
}

export const WORKLOADS: readonly Workload[] = [
  {
    id: '1-multistage-c',
    title: 'multi-stage compiled C program (debian-gcc → busybox)',
    bases: ['busybox', 'debian-gcc'],
    cacheMount: false,
    packages: false,
    async generate(dir) {
      await dockerfile(this.id, dir);
      await cProject(dir, 4, 30);
    },
    async change(dir, rev) {
      await replaceLine(join(dir, 'src/main.c'), MARKER, `${MARKER}${rev}`);
    },
  },
  {
    id: '2-three-stages',
    title: 'three independent heavy stages (compile, generate, compress) merged',
    bases: ['busybox', 'debian-gcc'],
    cacheMount: false,
    packages: false,
    async generate(dir) {
      await dockerfile(this.id, dir);
      await cProject(join(dir, 'compile'), 3, 40);
      await mkdir(join(dir, 'data'));
      await mkdir(join(dir, 'compress'));
      await copyFile(join(here, this.id, 'gen.sh'), join(dir, 'data/gen.sh'));
      await copyFile(join(here, this.id, 'make.sh'), join(dir, 'compress/make.sh'));
    },
    async change(dir, rev) {
      await replaceLine(join(dir, 'compile/src/main.c'), MARKER, `${MARKER}${rev}`);
    },
  },
  {
    id: '3-lockfile-app',
    title: 'dependencies from a lockfile (HTTP, sha256-verified), then the source',
    bases: ['busybox'],
    cacheMount: false,
    packages: true,
    async generate(dir) {
      await dockerfile(this.id, dir);
      await put(join(dir, 'package-lock.txt'), (await makePackages()).lockfile);
      for (let i = 0; i < 200; i++) {
        const body = text(`src/${i}`, 1500 + ((i * 7919) % 3000));
        await put(join(dir, 'src', `mod${Math.floor(i / 20)}`, `file${i}.js`), `// module ${i}\n${body}\n`);
      }
      await put(join(dir, 'src/index.js'), `const REV = 0;\nconsole.log('app', REV);\n`);
    },
    async change(dir, rev) {
      await replaceLine(join(dir, 'src/index.js'), 'const REV = ', `const REV = ${rev};`);
    },
  },
  {
    id: '4-cache-mount',
    title: 'make with its objects in RUN --mount=type=cache',
    bases: ['busybox', 'debian-gcc'],
    cacheMount: true,
    packages: false,
    async generate(dir) {
      await dockerfile(this.id, dir);
      await cProject(dir, 8, 30);
    },
    async change(dir, rev) {
      await replaceLine(join(dir, 'src/main.c'), MARKER, `${MARKER}${rev}`);
    },
  },
  {
    id: '5-big-context',
    title: 'context of 20,000 small files and three 50 MB files',
    bases: ['busybox'],
    cacheMount: false,
    packages: false,
    settle: true,
    async generate(dir) {
      await dockerfile(this.id, dir);
      for (let d = 0; d < 100; d++) {
        const sub = join(dir, 'small', `d${String(d).padStart(3, '0')}`);
        await mkdir(sub, { recursive: true });
        const writes = [];
        for (let f = 0; f < 200; f++) {
          const n = d * 200 + f;
          writes.push(writeFile(join(sub, `f${n}.txt`), `file ${n}\n${'x'.repeat((n * 37) % 900)}\n`));
        }
        await Promise.all(writes);
      }
      await mkdir(join(dir, 'big'));
      for (let b = 0; b < 3; b++)
        await writeFile(join(dir, 'big', `blob${b}.bin`), text(`big${b}`, 50 << 20));
      await writeFile(join(dir, 'small/d000/f0.txt'), 'rev 0\nfile 0\n');
    },
    async change(dir, rev) {
      await replaceLine(join(dir, 'small/d000/f0.txt'), 'rev ', `rev ${rev}`);
    },
  },
];
