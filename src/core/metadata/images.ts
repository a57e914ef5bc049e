/**
 * Image records per namespace (containerd's images.Store): a name bound to a
 * target descriptor (an OCI manifest or index), with labels and
 * timestamps. Images are GC roots: their target, and what it references,
 * is kept. Names are free-form (usually a reference such as
 * `docker.io/library/busybox:latest`); the target digest is validated.
 */
import type { Filters, Labels } from '../content/types.ts';
import { compileFilters, fieldLookup } from '../content/filters.ts';
import { type Digest, parseDigest } from '../digest.ts';
import { errAlreadyExists, errInvalidArgument, errNotFound } from '../errors.ts';
import { applyLabelUpdate, decodeLabels, encodeLabels, type MetadataDB, validateLabels } from './db.ts';
import { validateNamespace } from './namespaces.ts';

/** OCI content descriptor (the fields an image target needs). */
export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  annotations?: Record<string, string>;
}

export interface Image {
  name: string;
  target: Descriptor;
  labels: Labels;
  createdAt: Date;
  updatedAt: Date;
}

export interface ImageInput {
  name: string;
  target: Descriptor;
  labels?: Labels;
}

interface Row {
  name: string;
  media_type: string;
  digest: string;
  size: number;
  annotations: string | null;
  labels: string;
  created_at: number;
  updated_at: number;
}

function toImage(row: Row): Image {
  const target: Descriptor = { mediaType: row.media_type, digest: row.digest as Digest, size: row.size };
  if (row.annotations !== null) target.annotations = JSON.parse(row.annotations) as Record<string, string>;
  return {
    name: row.name,
    target,
    labels: decodeLabels(row.labels),
    createdAt: new Date(row.created_at),
    updatedAt: new Date(row.updated_at),
  };
}

function validateTarget(target: Descriptor | undefined, what: string): asserts target is Descriptor {
  if (!target) throw errInvalidArgument(`${what}: target is required`);
  if (typeof target.mediaType !== 'string' || target.mediaType === '') {
    throw errInvalidArgument(`${what}: target media type is required`);
  }
  try {
    parseDigest(target.digest);
  } catch (err) {
    throw errInvalidArgument(`${what}: invalid target digest "${target.digest}"`, err);
  }
  if (!Number.isSafeInteger(target.size) || target.size < 0) {
    throw errInvalidArgument(`${what}: invalid target size ${target.size}`);
  }
}

export class ImageStore {
  readonly #db: MetadataDB;
  readonly namespace: string;

  constructor(db: MetadataDB, namespace: string) {
    this.#db = db;
    validateNamespace(namespace);
    this.namespace = namespace;
  }

  #row(name: string): Row | undefined {
    return this.#db.get<Row>('SELECT * FROM images WHERE ns = ? AND name = ?', this.namespace, name);
  }

  get(name: string): Image {
    const row = this.#row(name);
    if (!row) throw errNotFound(`get image "${name}": not found in namespace "${this.namespace}"`);
    return toImage(row);
  }

  /**
   * Images of the namespace. Filter fields: `name`, `target.digest`,
   * `target.mediatype`, `labels.<k>`.
   */
  list(filters?: Filters): Image[] {
    const match = compileFilters(filters);
    return this.#db
      .all<Row>('SELECT * FROM images WHERE ns = ? ORDER BY name', this.namespace)
      .map(toImage)
      .filter((img) =>
        match(
          fieldLookup(
            { name: img.name, 'target.digest': img.target.digest, 'target.mediatype': img.target.mediaType },
            img.labels,
          ),
        ),
      );
  }

  create(input: ImageInput): Image {
    const what = `create image "${input.name}"`;
    if (typeof input.name !== 'string' || input.name === '')
      throw errInvalidArgument('create image: name is required');
    validateTarget(input.target, what);
    validateLabels(input.labels, what);
    return this.#db.transaction(() => {
      if (this.#row(input.name)) throw errAlreadyExists(`${what}: already exists`);
      const now = Date.now();
      this.#db.ensureNamespace(this.namespace);
      this.#db.run(
        `INSERT INTO images (ns, name, media_type, digest, size, annotations, labels, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        this.namespace,
        input.name,
        input.target.mediaType,
        input.target.digest,
        input.target.size,
        input.target.annotations ? JSON.stringify(input.target.annotations) : null,
        encodeLabels(input.labels),
        now,
        now,
      );
      return this.get(input.name);
    });
  }

  /**
   * Updates an image. fieldpaths: `target`, `labels`, `labels.<k>`,
   * `annotations`; none means target and all labels.
   */
  update(input: { name: string; target?: Descriptor; labels?: Labels }, fieldpaths?: string[]): Image {
    const what = `update image "${input.name}"`;
    validateLabels(input.labels, what);
    return this.#db.transaction(() => {
      const cur = this.get(input.name);
      let target = cur.target;
      let labels = cur.labels;
      const paths = fieldpaths && fieldpaths.length > 0 ? fieldpaths : ['target', 'labels'];
      const labelPaths: string[] = [];
      for (const fp of paths) {
        if (fp === 'target') {
          if (input.target !== undefined) {
            validateTarget(input.target, what);
            target = { ...input.target };
          } else if (fieldpaths?.length) {
            throw errInvalidArgument(`${what}: "target" given as field path but no target`);
          }
        } else if (fp === 'annotations') {
          if (!input.target) throw errInvalidArgument(`${what}: "annotations" needs a target`);
          target = { ...target };
          if (input.target.annotations) target.annotations = { ...input.target.annotations };
          else delete target.annotations;
        } else if (fp === 'labels' || fp.startsWith('labels.')) {
          labelPaths.push(fp);
        } else {
          throw errInvalidArgument(`${what}: cannot update field "${fp}"`);
        }
      }
      if (labelPaths.length > 0) labels = applyLabelUpdate(labels, input.labels ?? {}, labelPaths, what);
      this.#db.run(
        `UPDATE images SET media_type = ?, digest = ?, size = ?, annotations = ?, labels = ?, updated_at = ?
         WHERE ns = ? AND name = ?`,
        target.mediaType,
        target.digest,
        target.size,
        target.annotations ? JSON.stringify(target.annotations) : null,
        encodeLabels(labels),
        Math.max(Date.now(), cur.updatedAt.getTime()),
        this.namespace,
        input.name,
      );
      return this.get(input.name);
    });
  }

  delete(name: string): void {
    this.#db.transaction(() => {
      const r = this.#db.run('DELETE FROM images WHERE ns = ? AND name = ?', this.namespace, name);
      if (Number(r.changes) === 0) {
        throw errNotFound(`delete image "${name}": not found in namespace "${this.namespace}"`);
      }
    });
  }
}
