/**
 * Image references in the docker/distribution grammar, normalized:
 *
 *   reference  := name [ ":" tag ] [ "@" digest ]
 *   name       := [ domain "/" ] path-component [ "/" path-component ]*
 *   domain     := host [ ":" port ]       host := dns-name | "[" ipv6 "]"
 *   path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
 *   tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
 *   digest     := algorithm ":" hex     (validated by ../digest.ts: sha256/sha512)
 *
 * The first path segment is a domain only if it contains "." or ":", is
 * "localhost", or has upper-case letters; otherwise the domain is docker.io.
 * On docker.io a single-segment path gets "library/". A reference with neither
 * tag nor digest gets the tag "latest". Both tag and digest may be present;
 * the digest then wins for resolution. Limits: the full name is at most 255
 * characters; a bare 64-hex string is refused (it looks like an image ID).
 */
import { type Digest, parseDigest } from '../digest.ts';
import { errInvalidArgument, isKilnError } from '../errors.ts';

export const DEFAULT_DOMAIN = 'docker.io';
export const LEGACY_DEFAULT_DOMAIN = 'index.docker.io';
export const OFFICIAL_REPO_PREFIX = 'library/';
export const DEFAULT_TAG = 'latest';
export const NAME_TOTAL_LENGTH_MAX = 255;

export interface Reference {
  /** Registry host with optional port, e.g. `docker.io`, `localhost:5000`. */
  domain: string;
  /** Repository path inside the registry, e.g. `library/busybox`. */
  path: string;
  /** `domain/path`. */
  name: string;
  tag?: string;
  digest?: Digest;
  /** The short, familiar form: `busybox:latest`, `localhost:5000/a/b:tag`. */
  familiar: string;
  /** The full normalized form: `docker.io/library/busybox:latest[@digest]`. */
  full: string;
}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN_RE = new RegExp(
  `^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`,
);
const TAG_RE = /^\w[\w.-]{0,127}$/;
const ANCHORED_ID = /^[a-f0-9]{64}$/;

function invalid(value: string, why: string): never {
  throw errInvalidArgument(`invalid reference "${value}": ${why}`);
}

/** Parses and normalizes `s`; throws InvalidArgument quoting `s`. */
export function parseReference(s: string): Reference {
  if (s.length === 0) invalid(s, 'reference is empty');
  if (ANCHORED_ID.test(s))
    invalid(s, 'a 64-character hexadecimal string is an image ID, not a repository name');

  let rest = s;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    const d = rest.slice(at + 1);
    rest = rest.slice(0, at);
    try {
      digest = parseDigest(d).digest;
    } catch (err) {
      invalid(s, `bad digest "${d}"${isKilnError(err) ? ` (${err.message})` : ''}`);
    }
  }

  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) {
      invalid(s, `bad tag "${tag}": want [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
    }
  }
  if (rest.length === 0) invalid(s, 'repository name is empty');

  let domain = DEFAULT_DOMAIN;
  let path = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first) {
      domain = first;
      path = rest.slice(slash + 1);
    }
  }
  if (!DOMAIN_RE.test(domain)) invalid(s, `bad registry domain "${domain}"`);
  if (domain === LEGACY_DEFAULT_DOMAIN) domain = DEFAULT_DOMAIN;
  if (path.toLowerCase() !== path) invalid(s, `repository name "${path}" must be lowercase`);
  for (const component of path.split('/')) {
    if (!PATH_COMPONENT.test(component)) {
      invalid(s, `bad repository path component "${component}" in "${path}"`);
    }
  }
  if (domain === DEFAULT_DOMAIN && !path.includes('/')) path = OFFICIAL_REPO_PREFIX + path;
  const name = `${domain}/${path}`;
  if (name.length > NAME_TOTAL_LENGTH_MAX) {
    invalid(s, `repository name is longer than ${NAME_TOTAL_LENGTH_MAX} characters`);
  }
  if (tag === undefined && digest === undefined) tag = DEFAULT_TAG;
  return build(domain, path, tag, digest);
}

function build(domain: string, path: string, tag: string | undefined, digest: Digest | undefined): Reference {
  const name = `${domain}/${path}`;
  const suffix = (tag !== undefined ? `:${tag}` : '') + (digest !== undefined ? `@${digest}` : '');
  const ref: Reference = { domain, path, name, familiar: '', full: name + suffix };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  ref.familiar = familiarName(ref) + suffix;
  return ref;
}

/** `busybox` for docker.io/library/busybox, `user/app` for docker.io/user/app, else the full name. */
export function familiarName(ref: Pick<Reference, 'domain' | 'path'>): string {
  if (ref.domain !== DEFAULT_DOMAIN) return `${ref.domain}/${ref.path}`;
  if (ref.path.startsWith(OFFICIAL_REPO_PREFIX) && ref.path.indexOf('/', OFFICIAL_REPO_PREFIX.length) < 0) {
    return ref.path.slice(OFFICIAL_REPO_PREFIX.length);
  }
  return ref.path;
}

/** The same repository with another tag and/or digest (undefined removes it). */
export function withTagDigest(
  ref: Reference,
  tag: string | undefined,
  digest: Digest | undefined,
): Reference {
  if (tag !== undefined && !TAG_RE.test(tag)) invalid(`${ref.name}:${tag}`, `bad tag "${tag}"`);
  return build(ref.domain, ref.path, tag, digest);
}

/** The tag or digest to put in `/v2/<name>/manifests/<object>`: the digest if any, else the tag. */
export function referenceObject(ref: Reference): string {
  return ref.digest ?? ref.tag ?? DEFAULT_TAG;
}
