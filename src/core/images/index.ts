/**
 * Public entry of src/core/images: the image operations on a Core — pull
 * (fetch + unpack + record), unpack, push, and import/export of OCI layouts
 * (directory or tar) and docker-archive tars. References, OCI types and
 * platforms live in ./reference.ts, ./types.ts and ./platform.ts. See each
 * module for its contract and limits.
 *
 * `importImages(core, source)` reads a directory or a (gzipped) tar once,
 * under a lease, and imports it as an OCI layout when it has `index.json`,
 * else as a docker-archive when it has `manifest.json`; the lease is deleted
 * once the image records exist (what no image refers to is left to GC).
 * `exportImages(core, names, out, {format})` exports images by name.
 */
import type { Core, Image } from '../metadata/index.ts';
import { type DockerImportOptions, exportDockerArchive, importDockerArchive } from './docker-archive.ts';
import { type ExportImage, exportOciLayout, importOciLayout, readImageArchive } from './oci-layout.ts';
import { resolveImage } from './push.ts';
import type { Platform } from './types.ts';
import { errInvalidArgument } from '../errors.ts';

export {
  chainIDs,
  readManifestAndConfig,
  type UnpackOptions,
  type UnpackProgress,
  type UnpackResult,
  unpack,
} from './unpack.ts';
export { type BlobKind, type PullOptions, type PullProgress, type PullResult, pull } from './pull.ts';
export {
  imageTarget,
  resolveImage,
  type PushOptions,
  type PushProgress,
  type PushResult,
  push,
} from './push.ts';
export {
  type ArchiveFiles,
  type ExportImage,
  type ExportOptions,
  exportOciLayout,
  type ImportOptions,
  importOciLayout,
  readImageArchive,
} from './oci-layout.ts';
export {
  type DockerExportOptions,
  type DockerImportOptions,
  type DockerManifestEntry,
  exportDockerArchive,
  importDockerArchive,
} from './docker-archive.ts';

export interface ImportResult {
  format: 'oci' | 'docker';
  images: Image[];
}

/** Imports an OCI layout (dir or tar) or a docker-archive tar (see the module comment). */
export async function importImages(
  core: Core,
  source: string,
  options: DockerImportOptions = {},
): Promise<ImportResult> {
  const lease = core.leases.create({ ttlMs: 24 * 3600 * 1000, labels: { 'kiln.dev/import': source } });
  try {
    const store = core.content.withLease(lease.id);
    const files = await readImageArchive(store, source);
    if (files.small.has('index.json')) {
      return { format: 'oci', images: await importOciLayout(core, store, files, options) };
    }
    if (files.small.has('manifest.json')) {
      return { format: 'docker', images: await importDockerArchive(core, store, files, options) };
    }
    throw errInvalidArgument(
      `import "${source}": neither an OCI layout (index.json) nor a docker-archive (manifest.json)`,
    );
  } finally {
    core.leases.delete(lease.id);
  }
}

export interface ExportImagesOptions {
  format?: 'oci' | 'docker';
  /** For OCI: 'tar' or 'dir' (default: tar when `out` ends in .tar). Docker archives are always tars. */
  as?: 'dir' | 'tar';
  platform?: Platform;
}

/** Exports images (names in the store) to `out`. */
export async function exportImages(
  core: Core,
  names: string[],
  out: string,
  options: ExportImagesOptions = {},
): Promise<{ blobs: number; bytes: number }> {
  const images: ExportImage[] = names.map((n) => {
    const img = resolveImage(core, n);
    return { name: img.name, target: img.target as ExportImage['target'] };
  });
  if (options.format === 'docker') {
    return exportDockerArchive(core, images, out, options.platform ? { platform: options.platform } : {});
  }
  return exportOciLayout(core, images, out, {
    ...(options.as ? { as: options.as } : {}),
    ...(options.platform ? { platform: options.platform } : {}),
  });
}
