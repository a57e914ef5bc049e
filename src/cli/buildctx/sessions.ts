/**
 * `--secret` and `--ssh` of `kiln build`, read into the worker's session
 * (src/ops/env.ts `Sessions`):
 *
 * - `--secret id=ID,src=FILE` (also `source=`), `id=ID,env=VAR`, with an
 *   optional `type=file|env`; `id=ID` alone takes the environment variable
 *   ID when set, else the file ID (buildx's rule). The value is read now.
 * - `--ssh default` (the `SSH_AUTH_SOCK` agent), `--ssh ID` (the same agent
 *   under another id), `--ssh ID=SOCKET`; repeatable, one agent socket per
 *   id (the session's `sshAgents`). Limit: BuildKit's key files and several
 *   sockets for one id are refused with an error saying so.
 */
import { type Stats, statSync } from 'node:fs';
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

/**
 * The ssh agents from `--ssh` values, id → socket path (undefined when none):
 * `ID` alone takes `SSH_AUTH_SOCK`, `ID=SOCKET` that socket. Each id has one
 * agent socket; key files (which BuildKit also takes) are refused.
 */
export function parseSsh(specs: readonly string[]): Record<string, string> | undefined {
  const agents: Record<string, string> = {};
  const ids = specs.map((spec) => (spec.includes('=') ? spec.slice(0, spec.indexOf('=')) : spec));
  const dup = ids.find((id, i) => ids.indexOf(id) !== i);
  if (dup !== undefined) throw errInvalidArgument(`--ssh: id "${dup}" is given twice`);
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    const id = eq < 0 ? spec : spec.slice(0, eq);
    if (!id || id.includes(','))
      throw errInvalidArgument(`invalid --ssh "${spec}": want default, ID or ID=SOCKET`);
    let sock = eq < 0 ? undefined : spec.slice(eq + 1);
    if (sock === undefined || sock === '') {
      sock = process.env.SSH_AUTH_SOCK;
      if (!sock) throw errNotFound(`--ssh ${id}: SSH_AUTH_SOCK is not set (give ${id}=SOCKET)`);
    }
    const paths = sock.split(',').filter((p) => p !== '');
    if (paths.length > 1) {
      throw errInvalidArgument(
        `--ssh "${spec}": one agent socket per id is supported, got ${paths.length} paths`,
      );
    }
    const abs = path.resolve(paths[0] ?? sock);
    let st: Stats;
    try {
      st = statSync(abs);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw errNotFound(`--ssh "${spec}": socket "${abs}" not found`);
      throw err;
    }
    if (!st.isSocket()) {
      const what = st.isFile()
        ? 'a file (ssh key files are not supported: load the key into an ssh-agent)'
        : 'not a socket';
      throw errInvalidArgument(`--ssh "${spec}": "${abs}" is ${what}`);
    }
    agents[id] = abs;
  }
  return Object.keys(agents).length > 0 ? agents : undefined;
}
