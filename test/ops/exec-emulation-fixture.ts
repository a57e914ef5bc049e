/**
 * Test fixture for foreign-platform execs:
 *
 * - `ensureQemuAarch64()` mounts binfmt_misc when it is not mounted and
 *   registers Debian's qemu-aarch64 handler (qemu-user-static's
 *   /usr/lib/binfmt.d/qemu-aarch64.conf, flags F) when it is missing; it
 *   returns a reason to skip when that cannot be done (the package is not
 *   installed, not root, no binfmt_misc).
 * - `arm64Busybox()` gives the arm64 `/bin/busybox` of Debian's
 *   busybox-static:arm64, fetched with `apt-get download` under a separate
 *   apt state directory (the host's sources, architecture arm64) and cached
 *   in `$TMPDIR/kiln-test-cache`; a reason to skip when apt cannot get it.
 * - `makeTwoPlatformBusybox(dir)` makes an OCI layout whose index holds the
 *   locally made busybox image for linux/amd64 and linux/arm64/v8.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const repo = path.resolve(import.meta.dirname, '../..');
const BINFMT = '/proc/sys/fs/binfmt_misc';
const CONF = '/usr/lib/binfmt.d/qemu-aarch64.conf';

/** Undefined when qemu-aarch64 is registered with flag F; else why not. */
export async function ensureQemuAarch64(): Promise<string | undefined> {
  try {
    await fs.access(path.join(BINFMT, 'status')).catch(async () => {
      await execFileAsync('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT]);
    });
    const entry = path.join(BINFMT, 'qemu-aarch64');
    if (!(await fs.readFile(entry, 'utf8').catch(() => ''))) {
      const conf = await fs.readFile(CONF, 'utf8').catch(() => undefined);
      if (conf === undefined) return `${CONF} is missing: apt-get install qemu-user-static binfmt-support`;
      await fs.writeFile(path.join(BINFMT, 'register'), conf.trim());
    }
    const text = await fs.readFile(entry, 'utf8');
    if (!text.startsWith('enabled')) return 'the qemu-aarch64 binfmt_misc handler is disabled';
    if (!/^flags: .*F/m.test(text)) return 'the qemu-aarch64 binfmt_misc handler lacks the F flag';
    return undefined;
  } catch (err) {
    return `cannot register the qemu-aarch64 binfmt_misc handler: ${(err as Error).message}`;
  }
}

const cacheDir = path.join(os.tmpdir(), 'kiln-test-cache');

/** Path of an arm64 busybox binary, or a reason to skip. */
export async function arm64Busybox(): Promise<{ path: string } | { skip: string }> {
  const bin = path.join(cacheDir, 'busybox-arm64');
  if (
    await fs.access(bin).then(
      () => true,
      () => false,
    )
  )
    return { path: bin };
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-arm64-apt-'));
  try {
    for (const d of ['state/lists/partial', 'cache/archives/partial'])
      await fs.mkdir(path.join(work, d), { recursive: true });
    const opts = [
      '-q',
      '-o',
      'APT::Architecture=arm64',
      '-o',
      'APT::Architectures=arm64',
      '-o',
      `Dir::State=${work}/state`,
      '-o',
      'Dir::State::status=/dev/null',
      '-o',
      `Dir::Cache=${work}/cache`,
    ];
    await execFileAsync('apt-get', [...opts, 'update'], { cwd: work });
    await execFileAsync('apt-get', [...opts, 'download', 'busybox-static'], { cwd: work });
    const deb = (await fs.readdir(work)).find((f) => f.endsWith('_arm64.deb'));
    if (!deb) return { skip: 'apt-get download busybox-static:arm64 gave no package' };
    await execFileAsync('dpkg-deb', ['-x', path.join(work, deb), path.join(work, 'x')]);
    await fs.mkdir(cacheDir, { recursive: true });
    await fs.copyFile(path.join(work, 'x/bin/busybox'), `${bin}.tmp`);
    await fs.chmod(`${bin}.tmp`, 0o755);
    await fs.rename(`${bin}.tmp`, bin);
    return { path: bin };
  } catch (err) {
    return { skip: `cannot fetch busybox-static:arm64 with apt-get: ${(err as Error).message}` };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

function sha(b: Buffer | string): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

async function putBlob(layout: string, data: Buffer | string): Promise<{ digest: string; size: number }> {
  const digest = sha(data);
  await fs.writeFile(path.join(layout, 'blobs/sha256', digest.slice(7)), data);
  return { digest, size: Buffer.byteLength(data) };
}

/** An OCI layout `<dir>/layout` with a linux/amd64 + linux/arm64/v8 busybox index tagged `latest`. */
export async function makeTwoPlatformBusybox(dir: string, arm64Bin: string): Promise<string> {
  const layout = path.join(dir, 'layout');
  await fs.mkdir(path.join(layout, 'blobs/sha256'), { recursive: true });
  const manifests: object[] = [];
  for (const arch of ['amd64', 'arm64']) {
    const rootfs = path.join(dir, `rootfs-${arch}`);
    await execFileAsync('bash', [path.join(repo, 'scripts/make-busybox-rootfs.sh'), rootfs]);
    if (arch === 'arm64') await fs.copyFile(arm64Bin, path.join(rootfs, 'bin/busybox'));
    const tar = path.join(dir, `layer-${arch}.tar`);
    await execFileAsync('tar', ['--sort=name', '--numeric-owner', '-C', rootfs, '-cf', tar, '.']);
    const layer = await putBlob(layout, await fs.readFile(tar));
    const platform =
      arch === 'arm64'
        ? { os: 'linux', architecture: 'arm64', variant: 'v8' }
        : { os: 'linux', architecture: 'amd64' };
    const config = await putBlob(
      layout,
      JSON.stringify({
        ...platform,
        config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'] },
        rootfs: { type: 'layers', diff_ids: [layer.digest] },
      }),
    );
    const manifest = await putBlob(
      layout,
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
      }),
    );
    manifests.push({ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, platform });
  }
  const index = await putBlob(
    layout,
    JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }),
  );
  await fs.writeFile(path.join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await fs.writeFile(
    path.join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.index.v1+json',
          ...index,
          annotations: { 'org.opencontainers.image.ref.name': 'latest' },
        },
      ],
    }),
  );
  return layout;
}
