/**
 * `--secret` and `--ssh` of `kiln build`, read into the worker's session
 * (src/ops/env.ts `Sessions`):
 *
 * - `--secret id=ID,src=FILE` (also `source=`), `id=ID,env=VAR`, with an
 *   optional `type=file|env`; `id=ID` alone takes the environment variable
 *   ID when set, else the file ID (buildx's rule). The value is read now.
 * - `--ssh default` (the `SSH_AUTH_SOCK` agent), `--ssh default=SOCKET` or
 *   `--ssh ID=SOCKET`. Limit: the session has one agent socket for every
 *   id, so only one socket may be given.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { errInvalidArgument, errNotFound, isErrno } from '../../core/errors.ts';

function fields(spec: string, what: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of spec.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw errInvalidArgument(`invalid ${what} "${spec}": "${part}" is not key=value`);
    out.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1));
  }
  return out;
}

async function readSecretFile(file: string, spec: string): Promise<Uint8Array> {
  try {
    return await readFile(path.resolve(file));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) throw errNotFound(`--secret "${spec}": file "${file}" not found`);
    throw err;
  }
}

/** Reads every `--secret` into id → value. */
export async function parseSecrets(specs: readonly string[]): Promise<Record<string, Uint8Array>> {
  const out: Record<string, Uint8Array> = {};
  for (const spec of specs) {
    const f = fields(spec, '--secret');
    for (const k of f.keys()) {
      if (!['id', 'src', 'source', 'env', 'type'].includes(k)) {
        throw errInvalidArgument(`invalid --secret "${spec}": unknown key "${k}" (want id, src, env, type)`);
      }
    }
    const type = f.get('type');
    if (type !== undefined && type !== 'file' && type !== 'env') {
      throw errInvalidArgument(`invalid --secret "${spec}": type "${type}" (want file or env)`);
    }
    const src = f.get('src') ?? f.get('source');
    const env = f.get('env');
    const id = f.get('id') ?? (src ? path.basename(src) : env);
    if (!id) throw errInvalidArgument(`invalid --secret "${spec}": id is required`);
    if (env !== undefined || (type === 'env' && src === undefined)) {
      const name = env ?? id;
      const v = process.env[name];
      if (v === undefined) throw errNotFound(`--secret "${spec}": environment variable "${name}" is not set`);
      out[id] = new TextEncoder().encode(v);
    } else if (src !== undefined) {
      out[id] = await readSecretFile(src, spec);
    } else if (process.env[id] !== undefined) {
      out[id] = new TextEncoder().encode(process.env[id]);
    } else {
      out[id] = await readSecretFile(id, spec);
    }
  }
  return out;
}

/** The ssh agent socket from `--ssh` values, or undefined. */
export function parseSsh(specs: readonly string[]): string | undefined {
  const sockets = new Set<string>();
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    const id = eq < 0 ? spec : spec.slice(0, eq);
    if (!id) throw errInvalidArgument(`invalid --ssh "${spec}": want default or ID=SOCKET`);
    let sock = eq < 0 ? undefined : spec.slice(eq + 1);
    if (sock === undefined) {
      if (id !== 'default') throw errInvalidArgument(`invalid --ssh "${spec}": want default or ID=SOCKET`);
      sock = process.env.SSH_AUTH_SOCK;
      if (!sock) throw errNotFound(`--ssh default: SSH_AUTH_SOCK is not set`);
    }
    for (const s of sock.split(',')) sockets.add(path.resolve(s));
  }
  if (sockets.size > 1) {
    throw errInvalidArgument(`--ssh: only one agent socket is supported, got ${[...sockets].join(', ')}`);
  }
  return [...sockets][0];
}
