/**
 * Per-registry TLS files in docker's `certs.d` layout.
 *
 * A certs directory holds one folder per registry host, named as the host
 * is written in references (`host` or `host:port`): `<dir>/<host>/`.
 * In that folder (docker's convention, also read by containerd):
 *   - `*.crt`  CA certificates (PEM) trusted for that host, IN ADDITION to
 *              Node's default roots (its bundle plus NODE_EXTRA_CA_CERTS);
 *   - `*.cert` a client certificate (PEM) whose key is the `.key` file of
 *              the same base name (`client.cert` + `client.key`).
 * Other files are ignored. Directories are searched in order and the FIRST
 * one with a folder for the host is used alone (no merging across
 * directories). A `.cert` without its `.key` (or the reverse) is an
 * InvalidArgument naming both paths. Limits: one client certificate per
 * host (the first pair by name; more are refused rather than guessed
 * between); Docker Hub's folder may be named `docker.io` or
 * `registry-1.docker.io`; files are read when a host is first contacted
 * (HttpClient caches the result for its lifetime).
 */
import { readdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { errInvalidArgument, isErrno } from '../errors.ts';

/** Docker's system-wide certs directory. */
export const DOCKER_CERTS_DIR = '/etc/docker/certs.d';

/** The directories used when none are configured: docker's. */
export const DEFAULT_CERTS_DIRS: readonly string[] = [DOCKER_CERTS_DIR];

/** Kiln's default search list for a state root: `<root>/certs.d`, then docker's. */
export function defaultCertsDirs(root: string): string[] {
  return [join(root, 'certs.d'), DOCKER_CERTS_DIR];
}

export interface HostTLS {
  /** The folder the files came from. */
  dir: string;
  /** Extra CA certificates (PEM text), one entry per `.crt` file. */
  ca: string[];
  /** Client certificate and key (PEM text) with their paths. */
  client?: { cert: string; key: string; certPath: string; keyPath: string };
}

/** Folder names that may hold a host's files, best first. */
function hostFolderNames(host: string): string[] {
  if (host === 'registry-1.docker.io' || host === 'docker.io' || host === 'index.docker.io') {
    return ['docker.io', 'registry-1.docker.io', 'index.docker.io'];
  }
  return [host];
}

async function listFolder(dir: string): Promise<string[] | undefined> {
  try {
    return (await readdir(dir, { withFileTypes: true }))
      .filter((e) => e.isFile() || e.isSymbolicLink())
      .map((e) => e.name)
      .sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
    throw errInvalidArgument(`read certs directory "${dir}": ${(err as Error).message}`, err);
  }
}

async function readPem(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw errInvalidArgument(`read TLS file "${path}": ${(err as Error).message}`, err);
  }
}

/**
 * The TLS files for `host` (host[:port]) from the first of `dirs` that has a
 * folder for it; undefined when none has.
 */
export async function loadHostTLS(host: string, dirs: readonly string[]): Promise<HostTLS | undefined> {
  for (const base of dirs) {
    for (const name of hostFolderNames(host)) {
      const dir = join(base, name);
      const files = await listFolder(dir);
      if (files === undefined) continue;
      const ca: string[] = [];
      for (const f of files.filter((f) => f.endsWith('.crt'))) ca.push(await readPem(join(dir, f)));
      const certs = files.filter((f) => f.endsWith('.cert'));
      const keys = files.filter((f) => f.endsWith('.key'));
      for (const k of keys) {
        if (!certs.includes(`${k.slice(0, -'.key'.length)}.cert`)) {
          throw errInvalidArgument(
            `TLS files for "${host}": key "${join(dir, k)}" has no client certificate "${join(dir, `${k.slice(0, -4)}.cert`)}"`,
          );
        }
      }
      for (const c of certs) {
        if (!keys.includes(`${c.slice(0, -'.cert'.length)}.key`)) {
          throw errInvalidArgument(
            `TLS files for "${host}": client certificate "${join(dir, c)}" has no key "${join(dir, `${c.slice(0, -5)}.key`)}"`,
          );
        }
      }
      if (certs.length > 1) {
        throw errInvalidArgument(
          `TLS files for "${host}": ${certs.length} client certificates in "${dir}" (${certs.join(', ')}); only one is supported`,
        );
      }
      const out: HostTLS = { dir, ca };
      if (certs.length === 1) {
        const certPath = join(dir, certs[0]!);
        const keyPath = join(dir, `${certs[0]!.slice(0, -'.cert'.length)}.key`);
        out.client = { cert: await readPem(certPath), key: await readPem(keyPath), certPath, keyPath };
      }
      return out;
    }
  }
  return undefined;
}

/** Node's default roots plus `extra`: what a connection to a host with a `.crt` trusts. */
export function caBundle(extra: readonly string[]): string[] {
  // node:tls loaded on first use (an ESM import would load it at every command's start-up).
  const tls = createRequire(import.meta.url)('node:tls') as typeof import('node:tls');
  return [...tls.getCACertificates('default'), ...extra];
}
