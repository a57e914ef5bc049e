/**
 * The client's HTTP/1.1 transport (src/client/http1.ts): the response
 * parser on bytes split at every offset, and requests against Node's own
 * HTTP server on a unix socket (chunked streaming, Content-Length, a body
 * framed by the connection's end, an early close, an abort). The Connect
 * calls over it run against kilnd in test/cli/daemon.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { request, ResponseParser } from '../../src/client/http1.ts';

/** Feeds `wire` to a parser `step` bytes at a time; returns the head, the body and whether it ended. */
function parseIn(
  wire: Buffer,
  step: number,
): { status: number; headers: ReadonlyMap<string, string>; body: string; done: boolean } {
  const p = new ResponseParser();
  let status = 0;
  let headers: ReadonlyMap<string, string> = new Map();
  const body: Buffer[] = [];
  let done = false;
  for (let off = 0; off < wire.length; off += step) {
    const part = p.push(wire.subarray(off, off + step));
    if (part.head) {
      status = part.head.statusCode;
      headers = part.head.headers;
    }
    body.push(...part.data);
    done ||= part.done;
  }
  return { status, headers, body: Buffer.concat(body).toString(), done };
}

test('chunked, Content-Length and interim responses parse the same whatever the reads split', () => {
  const chunked = Buffer.from(
    'HTTP/1.1 100 Continue\r\n\r\n' +
      'HTTP/1.1 200 OK\r\nContent-Type: application/connect+proto\r\nX-A: 1\r\nx-a: 2\r\nTransfer-Encoding: chunked\r\n\r\n' +
      '5\r\nhello\r\n' +
      '1;ext=1\r\n,\r\n' +
      'b\r\n 0123456789\r\n' +
      '0\r\nTrailer: x\r\n\r\n',
  );
  const length = Buffer.from('HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\n{"code":""}');
  for (const step of [1, 2, 3, 7, 64, 4096]) {
    const c = parseIn(chunked, step);
    assert.deepEqual([c.status, c.body, c.done], [200, 'hello, 0123456789', true], `chunked, step ${step}`);
    assert.equal(c.headers.get('x-a'), '1, 2');
    assert.equal(c.headers.get('content-type'), 'application/connect+proto');
    const l = parseIn(length, step);
    assert.deepEqual([l.status, l.body, l.done], [404, '{"code":""}', true], `length, step ${step}`);
  }
});

test('a body framed by the end of the connection ends with it; a cut-off body or head is an error', () => {
  const p = new ResponseParser();
  const part = p.push(Buffer.from('HTTP/1.1 200 OK\r\n\r\nall of it'));
  assert.equal(Buffer.concat(part.data).toString(), 'all of it');
  p.end();
  assert.equal(p.done, true);

  const cut = new ResponseParser();
  cut.push(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort'));
  assert.throws(() => cut.end(), /closed in the middle of the response body/);
  const none = new ResponseParser();
  none.push(Buffer.from('HTTP/1.1 200'));
  assert.throws(() => none.end(), /closed before a response/);
});

test('malformed responses are refused with a message that says what is wrong', () => {
  const cases: [string, RegExp][] = [
    ['SSH-2.0-OpenSSH\r\n\r\n', /not an HTTP\/1\.1 status line: "SSH-2\.0-OpenSSH"/],
    ['HTTP/1.1 200 OK\r\nno colon here\r\n\r\n', /malformed header line: "no colon here"/],
    ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', /bad chunk size "zz"/],
    ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n', /not followed by CRLF/],
    ['HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n', /unsupported transfer coding "gzip"/],
    ['HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', /bad Content-Length "-1"/],
    ['HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab', /bytes after the end of the response/],
  ];
  for (const [wire, want] of cases)
    assert.throws(() => new ResponseParser().push(Buffer.from(wire)), want, wire);
});

void describe('requests on a unix socket against node:http', () => {
  let dir: string;
  let sock: string;
  let server: http.Server;
  const seen: { method?: string; url?: string; headers: http.IncomingHttpHeaders; body: string }[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'kiln-http1-'));
    sock = path.join(dir, 's.sock');
    server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        seen.push({
          method: req.method,
          url: req.url,
          headers: req.headers,
          body: Buffer.concat(chunks).toString(),
        });
        if (req.url === '/stream') {
          // Chunked: several writes with pauses, the last one large.
          res.writeHead(200, { 'content-type': 'application/connect+proto' });
          let n = 0;
          const tick = (): void => {
            if (n < 3) {
              res.write(`part${n++};`);
              setTimeout(tick, 5);
            } else res.end(Buffer.alloc(3 * 1024 * 1024, 0x61));
          };
          tick();
        } else if (req.url === '/hang') {
          res.writeHead(200);
          res.write('started');
          req.socket.on('close', () => seen.push({ url: '/hang closed', headers: {}, body: '' }));
        } else if (req.url === '/drop') {
          res.writeHead(200, { 'content-length': '100' });
          res.write('only this');
          setTimeout(() => req.socket.destroy(), 5);
        } else {
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end('{"code":"unimplemented","message":"no such method"}');
        }
      });
    });
    await new Promise<void>((r) => server.listen(sock, r));
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await rm(dir, { recursive: true, force: true });
  });

  const read = async (body: AsyncIterable<Buffer>): Promise<Buffer> => {
    const out: Buffer[] = [];
    for await (const c of body) out.push(c);
    return Buffer.concat(out);
  };

  test('a streamed chunked response arrives whole, and the request is what the server saw', async () => {
    const res = await request(sock, {
      method: 'POST',
      path: '/stream',
      headers: { 'Content-Type': 'application/connect+proto', 'Connect-Protocol-Version': '1' },
      body: Buffer.from('ping'),
    });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers.get('transfer-encoding'), 'chunked');
    const body = await read(res.body);
    assert.equal(body.subarray(0, 18).toString(), 'part0;part1;part2;');
    assert.equal(body.length, 18 + 3 * 1024 * 1024);
    assert.equal(res.complete, true);
    const s = seen.find((x) => x.url === '/stream')!;
    assert.deepEqual(
      [s.method, s.body, s.headers['content-length'], s.headers['connect-protocol-version']],
      ['POST', 'ping', '4', '1'],
    );
  });

  test('an error status comes with its body', async () => {
    const res = await request(sock, { method: 'POST', path: '/nope', headers: {}, body: new Uint8Array() });
    assert.deepEqual([res.statusCode, res.statusMessage], [404, 'Not Found']);
    assert.match((await read(res.body)).toString(), /unimplemented/);
  });

  test('a connection dropped mid-body fails the read; nothing listening fails the request with the connect error', async () => {
    const res = await request(sock, { method: 'POST', path: '/drop', headers: {}, body: new Uint8Array() });
    await assert.rejects(
      read(res.body),
      /closed in the middle of the response body|before the end of the response/,
    );
    assert.equal(res.complete, false);
    await assert.rejects(
      request(path.join(dir, 'absent.sock'), {
        method: 'POST',
        path: '/',
        headers: {},
        body: new Uint8Array(),
      }),
      (err: NodeJS.ErrnoException) => err.code === 'ENOENT' && err.syscall === 'connect',
    );
  });

  test('aborting closes the connection, which the server sees; the read fails with the abort error', async () => {
    const ac = new AbortController();
    const res = await request(sock, {
      method: 'POST',
      path: '/hang',
      headers: {},
      body: new Uint8Array(),
      signal: ac.signal,
      abortError: () => new Error('stopped by the test'),
    });
    const it = res.body[Symbol.asyncIterator]();
    assert.equal((await it.next()).value?.toString(), 'started');
    ac.abort();
    await assert.rejects(it.next(), /stopped by the test/);
    for (let i = 0; i < 100 && !seen.some((x) => x.url === '/hang closed'); i++)
      await new Promise((r) => setTimeout(r, 10));
    assert.ok(
      seen.some((x) => x.url === '/hang closed'),
      'the server saw the connection close',
    );
  });

  test('a server that is not HTTP gets a clear error', async () => {
    const raw = path.join(dir, 'raw.sock');
    // It reads what it is sent (resume), or it would never see the client close.
    const rawServer = net.createServer((s) => s.resume().end('SSH-2.0-OpenSSH_9.2\r\n\r\n'));
    await new Promise<void>((r) => rawServer.listen(raw, r));
    try {
      await assert.rejects(
        request(raw, { method: 'POST', path: '/', headers: {}, body: new Uint8Array() }),
        /not an HTTP\/1\.1 status line/,
      );
    } finally {
      await new Promise((r) => rawServer.close(r));
    }
  });
});
