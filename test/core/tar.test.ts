// Kiln's tar codec against GNU tar: tar reads what we write (listing and
// extraction incl. xattrs), we read what tar writes (pax, gnu formats).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  encodeHeader,
  packTar,
  readTar,
  type TarEntry,
  type TarHeader,
  TarWriter,
} from '../../src/core/archive/tar.ts';
import { isKilnError } from '../../src/core/errors.ts';
import { native } from '../../src/core/native/index.ts';

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

async function* once(b: Uint8Array): AsyncGenerator<Uint8Array> {
  // Odd-sized chunks exercise the reader's block assembly.
  for (let i = 0; i < b.length; i += 777) yield b.subarray(i, i + 777);
}

async function readAll(b: Uint8Array): Promise<{ header: TarHeader; data: Buffer }[]> {
  const out: { header: TarHeader; data: Buffer }[] = [];
  for await (const e of readTar(once(b)) as AsyncIterable<TarEntry>) {
    out.push({ header: e.header, data: await collect(e.body) });
  }
  return out;
}

const CAP = Buffer.from('0100000200040000000000000000000000000000', 'hex'); // cap_net_bind_service=ep
const BINARY = Buffer.from([0, 1, 10, 61, 0xff, 0x0a, 0x20, 0]);
const LONG_SPLIT = `${'d'.repeat(60)}/${'e'.repeat(70)}/${'x'.repeat(90)}`; // 222 bytes, ustar prefix split
const LONG_PAX = `${'p'.repeat(120)}/${'q'.repeat(200)}`; // no valid split
const LONG_LINK = `../${'t'.repeat(150)}`;

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-tar-'));
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

function sampleEntries(): { header: TarHeader; body?: Uint8Array }[] {
  const t = 1_700_000_000;
  return [
    { header: { name: 'd/', type: 'directory', mode: 0o1755, uid: 0, gid: 0, size: 0, mtime: t } },
    {
      header: {
        name: 'd/cap',
        type: 'file',
        mode: 0o4755,
        uid: 0,
        gid: 0,
        size: 5,
        mtime: t,
        xattrs: new Map([
          ['security.capability', CAP],
          ['user.bin', BINARY],
        ]),
      },
      body: Buffer.from('hello'),
    },
    {
      header: {
        name: 'd/hard',
        type: 'link',
        mode: 0o4755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: t,
        linkname: 'd/cap',
      },
    },
    {
      header: {
        name: 'd/sym',
        type: 'symlink',
        mode: 0o777,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: t,
        linkname: LONG_LINK,
      },
    },
    {
      header: {
        name: 'd/big-ids',
        type: 'file',
        mode: 0o640,
        uid: 3_000_000,
        gid: 4_000_000,
        size: 0,
        mtime: t,
      },
    },
    { header: { name: 'd/fifo', type: 'fifo', mode: 0o600, uid: 1, gid: 2, size: 0, mtime: t } },
    {
      header: {
        name: 'd/null',
        type: 'char',
        mode: 0o666,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: t,
        devmajor: 1,
        devminor: 3,
      },
    },
    {
      header: { name: 'd/sub', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 1, mtime: t, mtimeNsec: 5e8 },
      body: Buffer.from('s'),
    },
    { header: { name: 'd/héllo wörld', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: t } },
    {
      header: {
        name: `${LONG_SPLIT.slice(0, 61)}`,
        type: 'directory',
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: t,
      },
    },
    {
      header: {
        name: `${LONG_SPLIT.slice(0, 132)}`,
        type: 'directory',
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: t,
      },
    },
    {
      header: { name: LONG_SPLIT, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 3, mtime: t },
      body: Buffer.from('abc'),
    },
    {
      header: {
        name: `${LONG_PAX.slice(0, 121)}`,
        type: 'directory',
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: t,
      },
    },
    {
      header: { name: LONG_PAX, type: 'file', mode: 0o600, uid: 0, gid: 0, size: 600, mtime: t },
      body: Buffer.alloc(600, 7),
    },
  ];
}

void describe('tar writer', () => {
  void it('is deterministic and read back identically by our reader', async () => {
    const a = await collect(packTar(sampleEntries(), { subsecond: true }));
    const b = await collect(packTar(sampleEntries(), { subsecond: true }));
    assert.ok(a.equals(b));
    assert.equal(a.length % 512, 0);
    const got = await readAll(a);
    const want = sampleEntries();
    assert.equal(got.length, want.length);
    for (let i = 0; i < want.length; i++) {
      const w = want[i]!;
      const g = got[i]!;
      assert.equal(g.header.name, w.header.name);
      assert.equal(g.header.type, w.header.type);
      assert.equal(g.header.mode, w.header.mode);
      assert.equal(g.header.uid, w.header.uid);
      assert.equal(g.header.gid, w.header.gid);
      assert.equal(g.header.mtime, w.header.mtime);
      assert.equal(g.header.mtimeNsec ?? 0, w.header.mtimeNsec ?? 0);
      assert.equal(g.header.linkname, w.header.linkname);
      assert.deepEqual(g.header.xattrs, w.header.xattrs);
      assert.deepEqual(g.data, Buffer.from(w.body ?? new Uint8Array(0)));
    }
  });

  void it('copyAll with recycled buffers: the same bytes; the sink gets only buffers from take, bodies may refill theirs', async () => {
    const size = 4096;
    const sizes = [0, 1, 511, 512, 1000, 1024, 4095, 4096, 4097, 9000, 3 * 4096, 20_000];
    const files = sizes.map((n, i) => {
      const body = Buffer.alloc(n);
      for (let j = 0; j < n; j++) body[j] = (i * 31 + j * 7) & 0xff;
      return { name: `f${i}`, body };
    });
    const header = (name: string, n: number): TarHeader => ({
      name,
      type: 'file',
      mode: 0o644,
      uid: 0,
      gid: 0,
      size: n,
      mtime: 1_700_000_000,
    });
    const plain = await collect(
      packTar(
        files.map((f) => ({ header: header(f.name, f.body.length), body: f.body })),
        { bufferSize: size },
      ),
    );
    const pool: Uint8Array[] = [];
    const given = new Set<ArrayBufferLike>();
    const out: Buffer[] = [];
    const tw = new TarWriter(
      (c) => {
        assert.ok(given.has(c.buffer), 'a chunk of a packing buffer from take');
        out.push(Buffer.from(c));
        pool.push(new Uint8Array(c.buffer)); // done with it: back to the pool
      },
      {
        bufferSize: size,
        copyAll: true,
        take: () => {
          const b = pool.pop() ?? new Uint8Array(size);
          given.add(b.buffer);
          return b;
        },
      },
    );
    // Each body arrives in pieces of one reused buffer, refilled as soon as the writer asks for more.
    const scratch = Buffer.alloc(5000);
    async function* pieces(body: Buffer): AsyncGenerator<Uint8Array> {
      for (let off = 0; off < body.length; off += scratch.length) {
        const n = body.copy(scratch, 0, off, Math.min(off + scratch.length, body.length));
        yield scratch.subarray(0, n);
        scratch.fill(0xee);
      }
    }
    for (const f of files) await tw.add(header(f.name, f.body.length), pieces(f.body));
    await tw.finish();
    assert.ok(Buffer.concat(out).equals(plain));
    assert.ok(given.size < 4, `${given.size} packing buffers for ${plain.length} bytes`);
  });

  void it('is listed and extracted by GNU tar with the same metadata and binary xattrs', async () => {
    const file = path.join(dir, 'ours.tar');
    await fs.writeFile(file, await collect(packTar(sampleEntries(), { subsecond: true })));
    const listing = execFileSync('tar', ['--numeric-owner', '--full-time', '-tvf', file], {
      encoding: 'utf8',
    });
    const lines = listing.trim().split('\n');
    assert.match(lines[1]!, /^-rwsr-xr-x 0\/0 +5 2023-11-14 22:13:20 d\/cap$/);
    assert.match(lines[2]!, /^hrwsr-xr-x 0\/0 +0 2023-11-14 22:13:20 d\/hard link to d\/cap$/);
    assert.ok(lines[3]!.endsWith(`d/sym -> ${LONG_LINK}`));
    assert.match(lines[4]!, /^-rw-r----- 3000000\/4000000 /);
    assert.match(lines[6]!, /^crw-rw-rw- 0\/0 +1,3 /);
    assert.match(lines[7]!, /2023-11-14 22:13:20\.5 d\/sub$/);
    assert.ok(lines.some((l) => l.endsWith(' d/héllo wörld')));
    assert.ok(lines.some((l) => l.endsWith(` ${LONG_SPLIT}`)));
    assert.ok(lines.some((l) => l.endsWith(` ${LONG_PAX}`)));

    const out = path.join(dir, 'ours-x');
    await fs.mkdir(out);
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--same-owner', '-xpf', file, '-C', out]);
    const cap = path.join(out, 'd/cap');
    assert.deepEqual(native().lgetxattr(cap, 'security.capability'), CAP);
    assert.deepEqual(native().lgetxattr(cap, 'user.bin'), BINARY);
    const st = await fs.lstat(cap);
    assert.equal(st.mode & 0o7777, 0o4755);
    assert.equal(st.nlink, 2);
    assert.equal((await fs.lstat(path.join(out, 'd/hard'))).ino, st.ino);
    assert.equal(await fs.readlink(path.join(out, 'd/sym')), LONG_LINK);
    const ids = await fs.lstat(path.join(out, 'd/big-ids'));
    assert.equal(ids.uid, 3_000_000);
    assert.equal(ids.gid, 4_000_000);
    assert.ok((await fs.lstat(path.join(out, 'd/fifo'))).isFIFO());
    const dev = await fs.lstat(path.join(out, 'd/null'));
    assert.ok(dev.isCharacterDevice());
    assert.equal(dev.rdev, (1 << 8) | 3);
    assert.equal((await fs.readFile(path.join(out, LONG_PAX))).length, 600);
    assert.equal(await fs.readFile(path.join(out, LONG_SPLIT), 'utf8'), 'abc');
    assert.equal((await fs.lstat(path.join(out, 'd'))).mode & 0o7777, 0o1755);
  });

  void it('uses pax records only when needed and sub-second mtimes only when asked', () => {
    const h: TarHeader = {
      name: 'a',
      type: 'file',
      mode: 0o644,
      uid: 0,
      gid: 0,
      size: 0,
      mtime: 1,
      mtimeNsec: 5,
    };
    assert.equal(encodeHeader(h).length, 512);
    const withNs = Buffer.from(encodeHeader(h, { subsecond: true }));
    assert.ok(withNs.length > 512);
    assert.ok(withNs.includes('mtime=1.000000005\n'));
    const big = Buffer.from(encodeHeader({ ...h, size: 9_000_000_000 }));
    assert.ok(big.includes('size=9000000000\n'));
  });

  void it('rejects a body whose size does not match the header', async () => {
    const entries = [
      {
        header: { name: 'x', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 4, mtime: 0 } as TarHeader,
        body: Buffer.from('abc'),
      },
    ];
    await assert.rejects(
      collect(packTar(entries)),
      (e) => isKilnError(e, 'InvalidArgument') && /"x"/.test(e.message),
    );
  });
});

void describe('tar reader', () => {
  let tree: string;
  before(async () => {
    tree = path.join(dir, 'tree');
    await fs.mkdir(path.join(tree, 'sub'), { recursive: true });
    await fs.writeFile(path.join(tree, 'f'), 'file body\n');
    await fs.chown(path.join(tree, 'f'), 3_000_000, 7);
    await fs.chmod(path.join(tree, 'f'), 0o2750);
    execFileSync('setcap', ['cap_net_bind_service=+ep', path.join(tree, 'f')]);
    native().lsetxattr(path.join(tree, 'f'), 'user.bin', BINARY, 0);
    await fs.link(path.join(tree, 'f'), path.join(tree, 'hl'));
    await fs.symlink(LONG_LINK, path.join(tree, 'sl'));
    execFileSync('mkfifo', [path.join(tree, 'fifo')]);
    native().mknod(path.join(tree, 'blk'), 0o60640, 7, 300);
    await fs.mkdir(path.join(tree, path.dirname(LONG_PAX)), { recursive: true });
    await fs.writeFile(path.join(tree, LONG_PAX), Buffer.alloc(70_000, 'z'));
    await fs.utimes(path.join(tree, LONG_PAX), 1_600_000_000.25, 1_600_000_000.25);
  });

  async function checkTree(entries: { header: TarHeader; data: Buffer }[], format: string): Promise<void> {
    const by = new Map(entries.map((e) => [e.header.name.replace(/^\.\//, ''), e]));
    // GNU tar stores the first of the two hard-linked names it meets as the file.
    const [f, other] =
      by.get('f')?.header.type === 'file' ? [by.get('f')!, by.get('hl')!] : [by.get('hl')!, by.get('f')!];
    assert.ok(f && other, format);
    assert.equal(f.header.type, 'file');
    assert.equal(f.header.uid, 3_000_000);
    assert.equal(f.header.gid, 7);
    assert.equal(f.header.mode, 0o2750);
    assert.equal(f.data.toString(), 'file body\n');
    assert.equal(other.header.type, 'link');
    assert.equal(other.header.linkname?.replace(/^\.\//, ''), f.header.name.replace(/^\.\//, ''));
    assert.equal(by.get('sl')?.header.linkname, LONG_LINK);
    assert.equal(by.get('fifo')?.header.type, 'fifo');
    const blk = by.get('blk')!;
    assert.equal(blk.header.type, 'block');
    assert.equal(blk.header.devmajor, 7);
    assert.equal(blk.header.devminor, 300);
    const long = by.get(LONG_PAX)!;
    assert.equal(long.data.length, 70_000);
    assert.equal(long.header.mtime, 1_600_000_000);
    if (format === 'pax') {
      assert.deepEqual(f.header.xattrs?.get('security.capability'), CAP);
      assert.deepEqual(f.header.xattrs?.get('user.bin'), BINARY);
      assert.equal(long.header.mtimeNsec, 250_000_000);
    }
  }

  for (const format of ['pax', 'gnu', 'ustar']) {
    void it(`reads GNU tar --format=${format} (gnu: L/K long names)`, async () => {
      if (format === 'ustar') {
        // ustar cannot hold the long names, big uid or xattrs: only check a plain archive.
        const file = path.join(dir, 'plain.tar');
        execFileSync('tar', ['--format=ustar', '-cf', file, '-C', path.join(tree, 'sub'), '.']);
        const got = await readAll(await fs.readFile(file));
        assert.deepEqual(
          got.map((e) => e.header.name),
          ['./'],
        );
        return;
      }
      const file = path.join(dir, `${format}.tar`);
      const args = ['--format=' + format, '-cf', file, '-C', tree, '.'];
      if (format === 'pax') args.unshift('--xattrs', '--xattrs-include=*');
      execFileSync('tar', args);
      await checkTree(await readAll(await fs.readFile(file)), format);
    });
  }

  void it('reports a corrupt header checksum with its offset and entry name', async () => {
    const tarball = await collect(
      packTar([{ header: { name: 'victim', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0 } }]),
    );
    tarball[0x80] = 0x41; // inside the header, outside the name
    await assert.rejects(readAll(tarball), (e) => {
      assert.ok(isKilnError(e, 'DataLoss'));
      assert.match(e.message, /checksum mismatch at offset 0 \(entry "victim"\)/);
      return true;
    });
  });

  void it('reports a truncated body', async () => {
    const tarball = await collect(
      packTar([
        {
          header: { name: 'big', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 2000, mtime: 0 },
          body: Buffer.alloc(2000),
        },
      ]),
    );
    await assert.rejects(
      readAll(tarball.subarray(0, 1024)),
      /unexpected end of archive in the body of "big"/,
    );
  });

  void it('reads GNU base-256 numbers and pax global headers (python tarfile)', async () => {
    // A GNU-format entry whose uid needs base-256 (tar writes it for ids > 2097151).
    const file = path.join(dir, 'b256.tar');
    const src = path.join(dir, 'b256');
    await fs.mkdir(src);
    await fs.writeFile(path.join(src, 'x'), '');
    await fs.chown(path.join(src, 'x'), 0o7777777 + 10, 0);
    execFileSync('tar', ['--format=gnu', '-cf', file, '-C', src, 'x']);
    const raw = await fs.readFile(file);
    assert.equal(raw[108]! & 0x80, 0x80, 'GNU tar used base-256');
    const [e] = await readAll(raw);
    assert.equal(e!.header.uid, 0o7777777 + 10);
    // A global header applies to the entries after it.
    const py = `import tarfile,io
t=tarfile.open('${dir}/g.tar','w',format=tarfile.PAX_FORMAT,pax_headers={'comment':'hi','uname':'gl'})
i=tarfile.TarInfo('a'); t.addfile(i,io.BytesIO(b''))
t.close()`;
    execFileSync('python3', ['-c', py]);
    const [g] = await readAll(await fs.readFile(path.join(dir, 'g.tar')));
    assert.equal(g!.header.name, 'a');
    assert.equal(g!.header.pax?.comment, 'hi');
  });
});
