/**
 * OCI image layout (image-spec `image-layout.md`), as a directory or a tar:
 * `oci-layout` ({"imageLayoutVersion":"1.0.0"}), `index.json` (an image
 * index whose entries name images with `org.opencontainers.image.ref.name`
 * = the tag and, as containerd writes it, `io.containerd.image.name` = the
 * full name) and `blobs/<alg>/<hex>`.
 *
 * Reading (`readImageArchive`, shared with ./docker-archive.ts): one pass
 * over a directory or a tar (plain or gzip-compressed); every file under
 * `blobs/` is ingested into the content store verified against the digest
 * its path names (a mismatch is DataLoss and nothing is kept); other files
 * up to 4 MiB whose names end in `.json`, and `oci-layout`/`repositories`,
 * are kept in memory; any other file (docker-archive layer tars) is ingested
 * under the digest of its bytes. Hostile paths (`..`, absolute) are refused.
 *
 * Import (`importOciLayout`): each index entry must have all its content;
 * manifests and indexes get containerd's GC labels; image names come from
 * `options.name` (as is when it has a tag or digest or the entry has no
 * ref.name, else `<its repository>:<ref.name>`), else
 * `io.containerd.image.name`, else the ref.name, else the digest.
 *
 * Export (`exportOciLayout`): the images' targets (with `platform`, an
 * index's matching manifest instead) and everything below them. A directory
 * is created or merged into (entries of the same name replaced); each file is
 * written to a temporary name, fsynced and renamed, index.json last. A tar
 * is written to a temporary file in the same directory, fsynced and renamed.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { createGunzip } from 'node:zlib';
import { readTar, type TarHeader, TarWriter } from '../archive/tar.ts';
import { ingestStream } from '../content/store.ts';
import type { ContentStore } from '../content/types.ts';
import { type Digest, parseDigest } from '../digest.ts';
import { errDataLoss, errInvalidArgument, errNotFound, isErrno, isKilnError, wrap } from '../errors.ts';
import { writeOutputFile } from '../fs/safe.ts';
import type { Core, Image } from '../metadata/index.ts';
import {
  ANNOTATION_IMAGE_NAME,
  addLabels,
  encodeJson,
  indexGCLabels,
  MAX_JSON_BLOB,
  manifestGCLabels,
  readAll,
  walkImage,
} from './content.ts';
import { selectManifest } from './platform.ts';
import { parseReference } from './reference.ts';
import {
  AnnotationRefName,
  type Descriptor,
  type Index,
  isIndexMediaType,
  isManifestMediaType,
  MediaType,
  type Platform,
  parseIndex,
  parseManifest,
} from './types.ts';

export interface ArchiveFiles {
  /** Files ingested into the content store, by path. */
  blobs: Map<string, { digest: Digest; size: number }>;
  /** Small metadata files, by path. */
  small: Map<string, Uint8Array>;
}

const BLOB_PATH = /^blobs\/([a-z0-9]+)\/([a-f0-9]+)$/;

function cleanPath(name: string): string | undefined {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..'))
    throw errInvalidArgument(`read image archive: entry "${name}" leaves the archive`);
  return parts.length === 0 ? undefined : parts.join('/');
}

function keepInMemory(p: string, size: number): boolean {
  if (p.startsWith('blobs/') || size > MAX_JSON_BLOB) return false;
  return p.endsWith('.json') || p === 'oci-layout' || p === 'repositories';
}

async function* chunks(s: AsyncIterable<unknown>): AsyncGenerator<Uint8Array> {
  for await (const c of s) yield c as Uint8Array;
}

async function collect(body: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of body) parts.push(c);
  return Buffer.concat(parts);
}

let importSeq = 0;

async function ingestFile(
  store: ContentStore,
  p: string,
  size: number,
  body: AsyncIterable<Uint8Array>,
  out: ArchiveFiles,
): Promise<void> {
  const m = BLOB_PATH.exec(p);
  const ref = `import-${process.pid}-${Date.now().toString(36)}-${importSeq++}`;
  let expected: Digest | undefined;
  if (m) {
    try {
      expected = parseDigest(`${m[1]}:${m[2]}`).digest;
    } catch (err) {
      throw wrap(err, `read image archive: blob "${p}"`);
    }
  }
  try {
    const digest = await ingestStream(store, ref, body, { total: size, ...(expected ? { expected } : {}) });
    out.blobs.set(p, { digest, size });
  } catch (err) {
    await store.abort(ref).catch(() => {});
    if (isKilnError(err, 'DataLoss')) throw errDataLoss(`read image archive: "${p}": ${err.message}`, err);
    throw wrap(err, `read image archive: ingest "${p}"`);
  }
}

/** Reads a directory or (gzipped) tar image archive (see the module comment). */
export async function readImageArchive(store: ContentStore, source: string): Promise<ArchiveFiles> {
  const out: ArchiveFiles = { blobs: new Map(), small: new Map() };
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(source);
  } catch (err) {
    throw wrap(err, `read image archive "${source}"`);
  }
  if (st.isDirectory()) {
    const visit = async (dir: string): Promise<void> => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        const abs = path.join(dir, e.name);
        const rel = path.relative(source, abs);
        if (e.isDirectory()) await visit(abs);
        else if (e.isFile()) {
          const size = (await stat(abs)).size;
          if (keepInMemory(rel, size)) out.small.set(rel, await readFile(abs));
          else
            await ingestFile(
              store,
              rel,
              size,
              chunks(createReadStream(abs, { highWaterMark: 1 << 20 })),
              out,
            );
        }
      }
    };
    await visit(source);
    return out;
  }
  const fh = await open(source, 'r');
  const head = Buffer.alloc(2);
  await fh.read(head, 0, 2, 0);
  await fh.close();
  const raw = createReadStream(source, { highWaterMark: 1 << 20 });
  const stream = head[0] === 0x1f && head[1] === 0x8b ? raw.pipe(createGunzip()) : raw;
  try {
    for await (const entry of readTar(chunks(stream))) {
      if (entry.header.type !== 'file') continue;
      const p = cleanPath(entry.header.name);
      if (p === undefined) continue;
      if (keepInMemory(p, entry.header.size)) out.small.set(p, await collect(entry.body));
      else await ingestFile(store, p, entry.header.size, entry.body, out);
    }
  } catch (err) {
    throw wrap(err, `read image archive "${source}"`);
  } finally {
    raw.destroy();
  }
  return out;
}

/** Sets containerd GC labels on every manifest and index reachable from `target`. */
export async function labelImageContent(store: ContentStore, target: Descriptor): Promise<void> {
  for (const n of await walkImage(store, target)) {
    if (!n.bytes) continue;
    if (isIndexMediaType(n.desc.mediaType)) {
      const idx = parseIndex(n.bytes);
      await addLabels(store, n.desc.digest, indexGCLabels(idx.manifests.map((d, i) => [i, d])));
    } else if (isManifestMediaType(n.desc.mediaType)) {
      const m = parseManifest(n.bytes);
      await addLabels(store, n.desc.digest, manifestGCLabels(m.config, m.layers));
    }
  }
}

/** Creates or repoints image `name` at `target`. */
export function setImage(core: Core, name: string, target: Descriptor): Image {
  const t = { mediaType: target.mediaType, digest: target.digest, size: target.size };
  try {
    return core.images.create({ name, target: t });
  } catch (err) {
    if (!isKilnError(err, 'AlreadyExists')) throw err;
    return core.images.update({ name, target: t }, ['target']);
  }
}

export interface ImportOptions {
  /** Image name (one image) or repository for tags (several). */
  name?: string;
}

/** Imports the images of an OCI layout read by `readImageArchive` into `store` (a leased view of core.content). */
export async function importOciLayout(
  core: Core,
  store: ContentStore,
  files: ArchiveFiles,
  options: ImportOptions = {},
): Promise<Image[]> {
  const raw = files.small.get('index.json');
  if (!raw) throw errNotFound('import OCI layout: index.json is missing');
  const index = parseIndex(raw);
  const images: Image[] = [];
  for (const [i, d] of index.manifests.entries()) {
    const desc: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
    try {
      await labelImageContent(store, desc);
    } catch (err) {
      throw wrap(err, `import OCI layout: index.json manifests[${i}] (${d.digest})`);
    }
    const refName = d.annotations?.[AnnotationRefName];
    let name: string | undefined;
    if (options.name) {
      const base = parseReference(options.name);
      const explicit =
        options.name.lastIndexOf(':') > options.name.lastIndexOf('/') || base.digest !== undefined;
      name =
        explicit || !refName || !/^\w[\w.-]{0,127}$/.test(refName) ? base.full : `${base.name}:${refName}`;
    }
    name ??= d.annotations?.[ANNOTATION_IMAGE_NAME];
    if (!name && refName) {
      try {
        name = refName.includes('/') || refName.includes(':') ? parseReference(refName).full : refName;
      } catch {
        name = refName;
      }
    }
    images.push(setImage(core, name ?? d.digest, desc));
  }
  return images;
}

export interface ExportImage {
  name: string;
  target: Descriptor;
}

export interface ExportOptions {
  /** 'dir' (default when `out` has no .tar suffix) or 'tar'. */
  as?: 'dir' | 'tar';
  /** Export only this platform's manifest of an index. */
  platform?: Platform;
}

/** Resolves images for export: with `platform`, an index target becomes its matching manifest. */
export async function exportTargets(
  store: ContentStore,
  images: ExportImage[],
  platform: Platform | undefined,
): Promise<ExportImage[]> {
  const out: ExportImage[] = [];
  for (const img of images) {
    let target = img.target;
    if (platform && isIndexMediaType(target.mediaType)) {
      const idx = parseIndex(await readAll(store, target.digest));
      const m = selectManifest(idx.manifests, platform);
      if (!m)
        throw errNotFound(`export "${img.name}": no manifest for the platform in index ${target.digest}`);
      target = m;
    }
    out.push({ name: img.name, target });
  }
  return out;
}

function indexEntry(img: ExportImage): Descriptor {
  const d: Descriptor = { mediaType: img.target.mediaType, digest: img.target.digest, size: img.target.size };
  if (img.target.platform) d.platform = img.target.platform;
  let tag = img.name;
  try {
    const r = parseReference(img.name);
    tag = r.tag ?? r.digest ?? img.name;
  } catch {
    // a free-form name: use it as is
  }
  d.annotations = { [ANNOTATION_IMAGE_NAME]: img.name, [AnnotationRefName]: tag };
  return d;
}

/** The unique blobs of `images`, children first. */
export async function exportBlobs(store: ContentStore, images: ExportImage[]): Promise<Descriptor[]> {
  const seen = new Set<string>();
  const blobs: Descriptor[] = [];
  for (const img of images) {
    for (const n of await walkImage(store, img.target)) {
      if (seen.has(n.desc.digest)) continue;
      seen.add(n.desc.digest);
      blobs.push(n.desc);
    }
  }
  return blobs;
}

async function writeFileAtomic(file: string, data: Uint8Array | AsyncIterable<Uint8Array>): Promise<void> {
  const tmp = `${file}.tmp-${randomBytes(4).toString('hex')}`;
  const fh = await open(tmp, 'w', 0o644);
  try {
    if (data instanceof Uint8Array) await fh.write(data);
    else for await (const c of data) await fh.write(c);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  await rename(tmp, file);
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Writes a tar file atomically: `fill(writer)` adds the entries. An output
 * that is a device or FIFO (e.g. /dev/null) is written in place, never
 * replaced (../fs/safe.ts `writeOutputFile`).
 */
export async function writeTarFile(out: string, fill: (w: TarWriter) => Promise<void>): Promise<void> {
  await writeOutputFile(out, async (fh) => {
    const w = new TarWriter(async (c) => {
      await fh.write(c);
    });
    await fill(w);
    await w.finish();
  });
}

export function fileHeader(name: string, size: number): TarHeader {
  return { name, type: 'file', mode: 0o644, uid: 0, gid: 0, size, mtime: 0 };
}

export function dirHeader(name: string): TarHeader {
  return { name, type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 };
}

const LAYOUT_FILE = encodeJson({ imageLayoutVersion: '1.0.0' });

/** Adds an OCI layout (oci-layout, index.json, blobs) to a tar being written. */
export async function addLayoutToTar(
  w: TarWriter,
  store: ContentStore,
  images: ExportImage[],
  blobs: Descriptor[],
): Promise<void> {
  const index: Index = {
    schemaVersion: 2,
    mediaType: MediaType.OciIndex,
    manifests: images.map(indexEntry),
  };
  const indexBytes = encodeJson(index);
  await w.add(fileHeader('oci-layout', LAYOUT_FILE.byteLength), LAYOUT_FILE);
  await w.add(fileHeader('index.json', indexBytes.byteLength), indexBytes);
  await w.add(dirHeader('blobs/'));
  const algs = [...new Set(blobs.map((b) => parseDigest(b.digest).algorithm))];
  for (const a of algs) await w.add(dirHeader(`blobs/${a}/`));
  for (const b of blobs) {
    const { algorithm, hex } = parseDigest(b.digest);
    await w.add(fileHeader(`blobs/${algorithm}/${hex}`, b.size), store.read(b.digest));
  }
}

/** Exports images as an OCI layout directory or tar (see the module comment). */
export async function exportOciLayout(
  core: Core,
  imagesIn: ExportImage[],
  out: string,
  options: ExportOptions = {},
): Promise<{ blobs: number; bytes: number }> {
  if (imagesIn.length === 0) throw errInvalidArgument(`export "${out}": no images given`);
  const store = core.content;
  const images = await exportTargets(store, imagesIn, options.platform);
  const blobs = await exportBlobs(store, images);
  const bytes = blobs.reduce((n, b) => n + b.size, 0);
  const asTar = (options.as ?? (out.endsWith('.tar') ? 'tar' : 'dir')) === 'tar';
  if (asTar) {
    await writeTarFile(out, (w) => addLayoutToTar(w, store, images, blobs));
    return { blobs: blobs.length, bytes };
  }
  await mkdir(out, { recursive: true });
  for (const b of blobs) {
    const { algorithm, hex } = parseDigest(b.digest);
    const dir = path.join(out, 'blobs', algorithm);
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, hex);
    try {
      if ((await stat(file)).size === b.size) continue;
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw err;
    }
    await writeFileAtomic(file, store.read(b.digest));
  }
  let index: Index = { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] };
  try {
    index = parseIndex(await readFile(path.join(out, 'index.json')));
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw wrap(err, `export "${out}": existing index.json`);
  }
  const entries = images.map(indexEntry);
  const names = new Set(entries.map((e) => e.annotations![ANNOTATION_IMAGE_NAME]));
  index.manifests = [
    ...index.manifests.filter((d) => !names.has(d.annotations?.[ANNOTATION_IMAGE_NAME] ?? '')),
    ...entries,
  ];
  await writeFileAtomic(path.join(out, 'oci-layout'), LAYOUT_FILE);
  for (const a of await readdir(path.join(out, 'blobs')).catch(() => []))
    await fsyncDir(path.join(out, 'blobs', a));
  await writeFileAtomic(path.join(out, 'index.json'), encodeJson(index));
  await fsyncDir(out);
  return { blobs: blobs.length, bytes };
}
