/**
 * OCI image-spec data types (descriptor, manifest, index, image config) and
 * the Docker schema 2 media types that registries still serve, as plain
 * immutable data with free functions. `parseManifest`/`parseIndex`/
 * `parseImageConfig` check the shape that Kiln relies on (required fields and
 * their types, descriptor digests) and quote what is wrong; unknown fields
 * are kept. Docker schema 1 manifests are not supported.
 */
import { type Digest, parseDigest } from '../digest.ts';
import { errInvalidArgument } from '../errors.ts';

export const MediaType = {
  OciDescriptor: 'application/vnd.oci.descriptor.v1+json',
  OciLayout: 'application/vnd.oci.layout.header.v1+json',
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  OciLayer: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OciLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OciLayerNonDistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  OciLayerNonDistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  OciEmpty: 'application/vnd.oci.empty.v1+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DockerLayerForeignGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  DockerSchema1SignedManifest: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;
export type MediaType = (typeof MediaType)[keyof typeof MediaType];

export const AnnotationRefName = 'org.opencontainers.image.ref.name';
export const AnnotationCreated = 'org.opencontainers.image.created';

export interface Platform {
  architecture: string;
  os: string;
  'os.version'?: string;
  'os.features'?: string[];
  variant?: string;
  features?: string[];
}

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  data?: string;
  platform?: Platform;
  artifactType?: string;
}

export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface Index {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface HealthConfig {
  Test?: string[];
  Interval?: number;
  Timeout?: number;
  StartPeriod?: number;
  StartInterval?: number;
  Retries?: number;
}

/** The runtime part of an image config (`config` in the OCI image config). */
export interface ContainerConfig {
  User?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, Record<string, never>>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  ArgsEscaped?: boolean;
  Healthcheck?: HealthConfig;
  OnBuild?: string[] | null;
  Shell?: string[];
}

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

export interface ImageConfig {
  created?: string;
  author?: string;
  architecture: string;
  os: string;
  'os.version'?: string;
  'os.features'?: string[];
  variant?: string;
  config?: ContainerConfig;
  rootfs: { type: 'layers'; diff_ids: Digest[] };
  history?: HistoryEntry[];
}

export function isManifestMediaType(mt: string): boolean {
  return mt === MediaType.OciManifest || mt === MediaType.DockerManifest;
}

export function isIndexMediaType(mt: string): boolean {
  return mt === MediaType.OciIndex || mt === MediaType.DockerManifestList;
}

export function isConfigMediaType(mt: string): boolean {
  return mt === MediaType.OciConfig || mt === MediaType.DockerConfig;
}

/** Layer media types Kiln can unpack (tar, gzip, zstd; OCI and Docker). */
export function isLayerMediaType(mt: string): boolean {
  return (
    mt === MediaType.OciLayer ||
    mt === MediaType.OciLayerGzip ||
    mt === MediaType.OciLayerZstd ||
    mt === MediaType.OciLayerNonDistributable ||
    mt === MediaType.OciLayerNonDistributableGzip ||
    mt === MediaType.DockerLayerGzip ||
    mt === MediaType.DockerLayerForeignGzip
  );
}

/** Checks a descriptor's shape; `where` names it in errors (e.g. `layers[2]`). */
export function validateDescriptor(value: unknown, where = 'descriptor'): Descriptor {
  if (typeof value !== 'object' || value === null)
    throw errInvalidArgument(`invalid ${where}: not an object`);
  const d = value as Record<string, unknown>;
  if (typeof d.mediaType !== 'string' || d.mediaType === '') {
    throw errInvalidArgument(`invalid ${where}: mediaType ${JSON.stringify(d.mediaType)} is not a string`);
  }
  if (typeof d.digest !== 'string') {
    throw errInvalidArgument(`invalid ${where}: digest ${JSON.stringify(d.digest)} is not a string`);
  }
  parseDigest(d.digest);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw errInvalidArgument(
      `invalid ${where}: size ${JSON.stringify(d.size)} is not a non-negative integer`,
    );
  }
  return value as Descriptor;
}

function parseJson(bytes: Uint8Array | string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(typeof bytes === 'string' ? bytes : new TextDecoder().decode(bytes));
  } catch (err) {
    throw errInvalidArgument(`cannot parse ${what}: ${(err as Error).message}`, err);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw errInvalidArgument(`cannot parse ${what}: not a JSON object`);
  }
  return v as Record<string, unknown>;
}

export function parseManifest(bytes: Uint8Array | string): Manifest {
  const m = parseJson(bytes, 'image manifest');
  if (m.schemaVersion !== 2) {
    throw errInvalidArgument(`unsupported image manifest schemaVersion ${JSON.stringify(m.schemaVersion)}`);
  }
  if (m.mediaType !== undefined && !isManifestMediaType(String(m.mediaType))) {
    throw errInvalidArgument(`image manifest has mediaType "${String(m.mediaType)}"`);
  }
  validateDescriptor(m.config, 'manifest config');
  if (!Array.isArray(m.layers)) throw errInvalidArgument('invalid image manifest: layers is not an array');
  m.layers.forEach((l, i) => {
    validateDescriptor(l, `manifest layers[${i}]`);
  });
  return m as unknown as Manifest;
}

export function parseIndex(bytes: Uint8Array | string): Index {
  const m = parseJson(bytes, 'image index');
  if (m.schemaVersion !== 2) {
    throw errInvalidArgument(`unsupported image index schemaVersion ${JSON.stringify(m.schemaVersion)}`);
  }
  if (m.mediaType !== undefined && !isIndexMediaType(String(m.mediaType))) {
    throw errInvalidArgument(`image index has mediaType "${String(m.mediaType)}"`);
  }
  if (!Array.isArray(m.manifests)) throw errInvalidArgument('invalid image index: manifests is not an array');
  m.manifests.forEach((d, i) => {
    validateDescriptor(d, `index manifests[${i}]`);
  });
  return m as unknown as Index;
}

export function parseImageConfig(bytes: Uint8Array | string): ImageConfig {
  const c = parseJson(bytes, 'image config');
  if (typeof c.architecture !== 'string' || typeof c.os !== 'string') {
    throw errInvalidArgument('invalid image config: architecture and os must be strings');
  }
  const rootfs = c.rootfs as { type?: unknown; diff_ids?: unknown } | undefined;
  if (rootfs?.type !== 'layers' || !Array.isArray(rootfs.diff_ids)) {
    throw errInvalidArgument('invalid image config: rootfs must be {type: "layers", diff_ids: [...]}');
  }
  for (const id of rootfs.diff_ids) parseDigest(String(id));
  return c as unknown as ImageConfig;
}

/**
 * Media type of a manifest or index document from its own `mediaType` field,
 * or from its shape when the field is absent (allowed by OCI).
 */
export function detectManifestMediaType(bytes: Uint8Array | string): string {
  const m = parseJson(bytes, 'manifest');
  if (typeof m.mediaType === 'string') return m.mediaType;
  if (Array.isArray(m.manifests)) return MediaType.OciIndex;
  if (m.config !== undefined) return MediaType.OciManifest;
  throw errInvalidArgument('cannot tell the media type of a manifest without mediaType, config or manifests');
}
