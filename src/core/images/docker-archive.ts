/**
 * docker-archive tars: what `docker save` writes and `docker load` reads.
 * `manifest.json` is `[{"Config": path, "RepoTags": ["name:tag"], "Layers":
 * [path, ...]}]`; the config is the image config JSON (its sha256 is the
 * image ID); each layer is a tar (docker 20.10 writes `<id>/layer.tar`
 * uncompressed, docker ≥ 25 writes `blobs/sha256/<hex>` inside an OCI
 * layout; `docker load` decompresses gzip/zstd layers too).
 *
 * Import (`importDockerArchive`, from files read by ./oci-layout.ts
 * `readImageArchive`): per entry, the config is stored with the OCI config
 * media type; layers are stored as given (media type by detected
 * compression), or gzip-compressed when `compress: 'gzip'`; an uncompressed
 * layer must hash to the config's diff_id (DataLoss otherwise); every layer
 * gets `containerd.io/uncompressed`. An OCI manifest is made and stored with
 * GC labels; the image record is `options.name` for a one-image archive,
 * else each RepoTag (normalized reference), else `options.name` or the
 * manifest digest if untagged.
 *
 * Export (`exportDockerArchive`): one tar that is both a docker-archive and
 * an OCI layout, as docker ≥ 25 writes it: `manifest.json`, `oci-layout`,
 * `index.json` and `blobs/sha256/<hex>` (config and layers as stored, i.e.
 * usually gzip; `docker load` accepts them). An index target is replaced by
 * its manifest for `platform` (default: the host's). Written to a temporary
 * file, fsynced and renamed.
 */
import { Readable } from 'node:stream';
import { createGzip } from 'node:zlib';
import type { ContentStore } from '../content/types.ts';
import { type Digest, parseDigest, sha256 } from '../digest.ts';
import { errDataLoss, errInvalidArgument, errNotFound, wrap } from '../errors.ts';
import type { Core, Image } from '../metadata/index.ts';
import {
  encodeJson,
  jsonDescriptor,
  LABEL_UNCOMPRESSED,
  layerMediaTypeFor,
  manifestGCLabels,
  readAll,
  readJsonBlob,
  writeBlob,
} from './content.ts';
import {
  type ArchiveFiles,
  addLayoutToTar,
  type ExportImage,
  exportBlobs,
  exportTargets,
  fileHeader,
  type ImportOptions,
  setImage,
  writeTarFile,
} from './oci-layout.ts';
import { hostPlatform } from './platform.ts';
import { familiarName, parseReference } from './reference.ts';
import {
  type Descriptor,
  isIndexMediaType,
  type Manifest,
  MediaType,
  type Platform,
  parseImageConfig,
  parseManifest,
} from './types.ts';

export interface DockerManifestEntry {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
}

export interface DockerImportOptions extends ImportOptions {
  /** 'gzip' compresses uncompressed layers; default: store them as given. */
  compress?: 'gzip' | 'none';
}

async function firstBytes(store: ContentStore, digest: Digest, n: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let got = 0;
  for await (const c of store.read(digest, { start: 0, end: n })) {
    parts.push(c);
    got += c.byteLength;
    if (got >= n) break;
  }
  return Buffer.concat(parts);
}

async function gzipBlob(store: ContentStore, digest: Digest, diffID: Digest): Promise<Descriptor> {
  const gz = Readable.from(store.read(digest)).pipe(createGzip({ level: 6 }));
  const parts: Buffer[] = [];
  for await (const c of gz) parts.push(c as Buffer);
  const bytes = Buffer.concat(parts);
  const desc: Descriptor = {
    mediaType: MediaType.OciLayerGzip,
    digest: sha256(bytes),
    size: bytes.byteLength,
  };
  await writeBlob(store, desc, bytes, { [LABEL_UNCOMPRESSED]: diffID });
  return desc;
}

/** Imports the images of a docker-archive read by `readImageArchive` into `store` (a leased view). */
export async function importDockerArchive(
  core: Core,
  store: ContentStore,
  files: ArchiveFiles,
  options: DockerImportOptions = {},
): Promise<Image[]> {
  const raw = files.small.get('manifest.json');
  if (!raw) throw errNotFound('import docker archive: manifest.json is missing');
  let entries: DockerManifestEntry[];
  try {
    entries = JSON.parse(Buffer.from(raw).toString('utf8')) as DockerManifestEntry[];
    if (!Array.isArray(entries)) throw new Error('not a JSON array');
  } catch (err) {
    throw errInvalidArgument(`import docker archive: invalid manifest.json: ${(err as Error).message}`, err);
  }
  const blobOf = async (p: string, what: string): Promise<{ digest: Digest; size: number }> => {
    const b = files.blobs.get(p);
    if (b) return b;
    const small = files.small.get(p);
    if (small) {
      const desc = jsonDescriptor(MediaType.OciConfig, small);
      await writeBlob(store, desc, small);
      return desc;
    }
    throw errNotFound(`import docker archive: ${what} "${p}" named in manifest.json is not in the archive`);
  };
  const images: Image[] = [];
  for (const [i, e] of entries.entries()) {
    const where = `import docker archive: manifest.json[${i}]`;
    if (typeof e.Config !== 'string' || !Array.isArray(e.Layers)) {
      throw errInvalidArgument(`${where}: want Config (string) and Layers (array)`);
    }
    const cfgBlob = await blobOf(e.Config, 'config');
    const config: Descriptor = { mediaType: MediaType.OciConfig, ...cfgBlob };
    const cfg = parseImageConfig(await readJsonBlob(store, config, 'image config'));
    const diffIDs = cfg.rootfs.diff_ids;
    if (diffIDs.length !== e.Layers.length) {
      throw errDataLoss(
        `${where}: ${e.Layers.length} layers but the config lists ${diffIDs.length} diff_ids`,
      );
    }
    const layers: Descriptor[] = [];
    for (const [j, p] of e.Layers.entries()) {
      const b = await blobOf(p, 'layer');
      const diffID = diffIDs[j]!;
      const mediaType = layerMediaTypeFor(await firstBytes(store, b.digest, 4));
      if (mediaType === MediaType.OciLayer) {
        if (b.digest !== diffID) {
          throw errDataLoss(
            `${where}: layer "${p}" has digest ${b.digest}, but the config's diff_id is ${diffID}`,
          );
        }
        if (options.compress === 'gzip') {
          layers.push(await gzipBlob(store, b.digest, diffID));
          continue;
        }
      }
      await store.update({ digest: b.digest, labels: { [LABEL_UNCOMPRESSED]: diffID } }, [
        `labels.${LABEL_UNCOMPRESSED}`,
      ]);
      layers.push({ mediaType, digest: b.digest, size: b.size });
    }
    const m: Manifest = { schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers };
    const mbytes = encodeJson(m);
    const mdesc = jsonDescriptor(MediaType.OciManifest, mbytes);
    await writeBlob(store, mdesc, mbytes, manifestGCLabels(config, layers));
    const tags = (e.RepoTags ?? []).map((t) => {
      try {
        return parseReference(t).full;
      } catch (err) {
        throw wrap(err, `${where}: RepoTags`);
      }
    });
    // `name` renames the image of a one-image archive; with several, it names only untagged ones.
    const named = options.name ? parseReference(options.name).full : undefined;
    const names =
      named && (entries.length === 1 || tags.length === 0)
        ? [named]
        : tags.length > 0
          ? tags
          : [mdesc.digest];
    for (const n of names) images.push(setImage(core, n, mdesc));
  }
  return images;
}

export interface DockerExportOptions {
  /** Platform for index targets (default: the host's). */
  platform?: Platform;
}

function repoTag(name: string): string | undefined {
  try {
    const r = parseReference(name);
    if (r.tag === undefined) return undefined;
    return `${familiarName(r)}:${r.tag}`;
  } catch {
    return undefined;
  }
}

/** Writes `images` as a docker-archive (also an OCI layout) tar at `out`. */
export async function exportDockerArchive(
  core: Core,
  imagesIn: ExportImage[],
  out: string,
  options: DockerExportOptions = {},
): Promise<{ blobs: number; bytes: number }> {
  if (imagesIn.length === 0) throw errInvalidArgument(`export "${out}": no images given`);
  const store = core.content;
  const images = await exportTargets(store, imagesIn, options.platform ?? hostPlatform());
  // Images sharing a manifest share one manifest.json entry with several RepoTags.
  const byManifest = new Map<string, DockerManifestEntry>();
  for (const img of images) {
    if (isIndexMediaType(img.target.mediaType)) {
      throw errInvalidArgument(`export "${img.name}" as docker-archive: nested index ${img.target.digest}`);
    }
    let entry = byManifest.get(img.target.digest);
    if (!entry) {
      const m = parseManifest(await readAll(store, img.target.digest));
      const path = (d: Descriptor): string => {
        const { algorithm, hex } = parseDigest(d.digest);
        return `blobs/${algorithm}/${hex}`;
      };
      entry = { Config: path(m.config), RepoTags: [], Layers: m.layers.map(path) };
      byManifest.set(img.target.digest, entry);
    }
    const tag = repoTag(img.name);
    if (tag) entry.RepoTags!.push(tag);
  }
  const manifestJson = encodeJson([...byManifest.values()]);
  const blobs = await exportBlobs(store, images);
  await writeTarFile(out, async (w) => {
    await addLayoutToTar(w, store, images, blobs);
    await w.add(fileHeader('manifest.json', manifestJson.byteLength), manifestJson);
  });
  return { blobs: blobs.length, bytes: blobs.reduce((n, b) => n + b.size, 0) };
}
