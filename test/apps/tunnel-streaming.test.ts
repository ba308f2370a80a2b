/**
 * Streaming through the tunnel: server-sent events as they are produced, chunked responses kept
 * chunked, large bodies both ways with end-to-end backpressure, and WebSocket passthrough.
 * (The 1 GiB memory measurements with proxy and agent in child processes are in
 * tunnel-memory.test.ts.)
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { test } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import {
  ID,
  pattern,
  send,
  startAgent,
  startProxy,
  startTarget,
  upload,
  writeBlocks,
} from '../fixtures/tunnel-helpers.ts';
import { delay, waitFor } from '../helpers.ts';

test('server-sent events arrive as they are produced', async (t) => {
  let received!: (n: number) => void;
  let waitingFor = 0;
  const receipts = new Map<number, () => void>();
  received = (n) => receipts.get(n)?.();
  const target = await startTarget(t, async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    for (let n = 1; n <= 3; n++) {
      res.write(`data: event ${n}\n\n`);
      // The next event is only written once the user has this one: buffering anywhere in the
      // tunnel would stall the test.
      await new Promise<void>((resolve) => receipts.set(n, resolve));
    }
    res.end();
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const events: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const req = request({
      port: proxy.port,
      host: '127.0.0.1',
      path: '/events',
      headers: { 'x-duplexwire-client-id': ID },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      assert.equal(res.headers['content-type'], 'text/event-stream');
      assert.equal(res.headers['transfer-encoding'], 'chunked');
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (text: string) => {
        buffer += text;
        let end = buffer.indexOf('\n\n');
        while (end >= 0) {
          events.push(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          received(++waitingFor);
          end = buffer.indexOf('\n\n');
        }
      });
      res.on('end', resolve);
    });
    req.end();
  });
  assert.deepEqual(events, ['data: event 1', 'data: event 2', 'data: event 3']);
});

test('chunked responses stay chunked, Content-Length responses keep it; HEAD and 204/304 have no body', async (t) => {
  const target = await startTarget(t, (req, res) => {
    if (req.url === '/chunked') {
      res.write('a'.repeat(100));
      setTimeout(() => res.end('b'.repeat(100)), 20);
    } else if (req.url === '/204') {
      res.writeHead(204).end();
    } else if (req.url === '/304') {
      res.writeHead(304, { etag: '"x"' }).end();
    } else {
      res.writeHead(200, { 'content-length': '5' }).end(req.method === 'HEAD' ? undefined : 'fixed');
    }
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const chunked = await send(proxy.port, { path: '/chunked' });
  assert.equal(chunked.headers['transfer-encoding'], 'chunked');
  assert.equal(chunked.headers['content-length'], undefined);
  assert.equal(chunked.text, 'a'.repeat(100) + 'b'.repeat(100));
  const fixed = await send(proxy.port, { path: '/fixed' });
  assert.equal(fixed.headers['content-length'], '5');
  assert.equal(fixed.headers['transfer-encoding'], undefined);
  assert.equal(fixed.text, 'fixed');
  const head = await send(proxy.port, { method: 'HEAD', path: '/fixed' });
  assert.equal(head.status, 200);
  assert.equal(head.headers['content-length'], '5');
  assert.equal(head.body.length, 0);
  assert.equal((await send(proxy.port, { path: '/204' })).status, 204);
  const notModified = await send(proxy.port, { path: '/304' });
  assert.equal(notModified.status, 304);
  assert.equal(notModified.headers.etag, '"x"');
});

test('a large download streams with its bytes intact, and a slow user holds the target back', async (t) => {
  // Larger than every buffer on the way, the kernel's included (Linux autotunes a loopback receive
  // buffer up to tcp_rmem's maximum, 32 MiB here): a target that is held back must stall.
  const total = 256 * 1024 * 1024;
  const block = pattern(256 * 1024);
  const progress = { sent: 0 };
  const target = await startTarget(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    writeBlocks(res, block, total, progress);
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const hash = createHash('sha256');
  let got = 0;
  let writtenMidPause = 0;
  let writtenEndPause = 0;
  await new Promise<void>((resolve, reject) => {
    const req = request({ port: proxy.port, host: '127.0.0.1', headers: { 'x-duplexwire-client-id': ID } });
    req.on('error', reject);
    req.on('response', (res) => {
      let paused = false;
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        got += chunk.length;
        if (!paused && got >= 8 * 1024 * 1024) {
          paused = true;
          res.pause();
          // While the user reads nothing, the target must stop: windows, not buffers. Once the
          // buffers on the way are full, its writes stall.
          setTimeout(() => {
            writtenMidPause = progress.sent;
          }, 500);
          setTimeout(() => {
            writtenEndPause = progress.sent;
            res.resume();
          }, 800);
        }
      });
      res.on('end', resolve);
    });
    req.end();
  });
  assert.equal(got, total);
  const expected = createHash('sha256');
  for (let n = 0; n < total; n += block.length) expected.update(block);
  assert.equal(hash.digest('hex'), expected.digest('hex'));
  assert.ok(writtenEndPause < total, 'the target did not finish while the user was paused');
  assert.equal(writtenEndPause, writtenMidPause, 'the target stalled while the user was paused');
});

test('a large upload streams with its bytes intact, and a slow target holds the user back', async (t) => {
  // Larger than every buffer on the way, the kernel's included: a held-back user must stall.
  const total = 256 * 1024 * 1024;
  const block = pattern(256 * 1024);
  let read = 0;
  const progress = { sent: 0 };
  let writtenMidPause = 0;
  let writtenEndPause = 0;
  const hash = createHash('sha256');
  const target = await startTarget(t, (req, res) => {
    let paused = false;
    req.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      read += chunk.length;
      if (!paused && read >= 8 * 1024 * 1024) {
        paused = true;
        req.pause();
        setTimeout(() => {
          writtenMidPause = progress.sent;
        }, 500);
        setTimeout(() => {
          writtenEndPause = progress.sent;
          req.resume();
        }, 800);
      }
    });
    req.on('end', () => res.end(String(read)));
  });
  const proxy = await startProxy(t, { maxRequestBody: Number.POSITIVE_INFINITY });
  await startAgent(t, proxy, { target: target.url });
  const reply = await upload(proxy.port, block, total, progress);
  assert.equal(reply, String(total));
  const expected = createHash('sha256');
  for (let n = 0; n < total; n += block.length) expected.update(block);
  assert.equal(hash.digest('hex'), expected.digest('hex'));
  assert.ok(writtenEndPause < total, 'the user did not finish while the target was paused');
  assert.equal(writtenEndPause, writtenMidPause, 'the user stalled while the target was paused');
});

test('WebSocket passthrough: subprotocol, text and binary messages both ways, close code and reason', async (t) => {
  const target = await startTarget(t, (_req, res) => res.end('plain'));
  const wss = new WebSocketServer({
    server: target.server,
    handleProtocols: (protocols) => (protocols.has('chat.v2') ? 'chat.v2' : false),
  });
  t.after(() => wss.close());
  wss.on('connection', (ws, req) => {
    ws.send(`hello ${req.url} ${req.headers['x-forwarded-for']}`);
    ws.on('message', (data, isBinary) => {
      if (!isBinary && data.toString() === 'bye') ws.close(4001, 'see you');
      else ws.send(data, { binary: isBinary });
    });
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/chat?room=1`, ['chat.v1', 'chat.v2'], {
    headers: { 'x-duplexwire-client-id': ID },
  });
  const messages: Array<{ data: string; binary: boolean }> = [];
  ws.on('message', (data: Buffer, binary) =>
    messages.push({ data: binary ? data.toString('hex') : data.toString(), binary }),
  );
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  assert.equal(ws.protocol, 'chat.v2');
  ws.send('text one');
  ws.send(Buffer.from([0, 1, 2, 255]));
  const big = Buffer.alloc(3 * 1024 * 1024, 7);
  ws.send(big);
  await waitFor(() => messages.length === 4, 5000, 'echoes');
  assert.deepEqual(messages[0], { data: 'hello /chat?room=1 127.0.0.1', binary: false });
  assert.deepEqual(messages[1], { data: 'text one', binary: false });
  assert.deepEqual(messages[2], { data: '000102ff', binary: true });
  assert.equal(messages[3]!.data, big.toString('hex'));
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  ws.send('bye');
  assert.deepEqual(await closed, { code: 4001, reason: 'see you' });
  await waitFor(() => proxy.proxy.inflight === 0, 2000, 'the upgraded exchange ended');
});

test('upgrades: h2c refused with 400, a refused WebSocket upgrade passes the target answer, fetch handlers 501', async (t) => {
  const target = await startTarget(t, (_req, res) => res.end('no upgrade here'));
  target.server.on('upgrade', (_req, socket) => {
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nnot ok');
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const h2c = await send(proxy.port, {
    headers: {
      'x-duplexwire-client-id': ID,
      connection: 'Upgrade, HTTP2-Settings',
      upgrade: 'h2c',
      'http2-settings': 'AAMAAABkAARAAAAAAAIAAAAA',
    },
  });
  assert.equal(h2c.status, 400);
  const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/`, { headers: { 'x-duplexwire-client-id': ID } });
  const status = await new Promise<number>((resolve) => {
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.on('error', () => {});
  });
  assert.equal(status, 403);
  await startAgent(t, proxy, { id: '4712', handler: (_r: Request) => new Response('x') });
  const wsFetch = new WebSocket(`ws://127.0.0.1:${proxy.port}/`, { headers: { 'x-duplexwire-client-id': '4712' } });
  const fetchStatus = await new Promise<number>((resolve) => {
    wsFetch.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    wsFetch.on('error', () => {});
  });
  assert.equal(fetchStatus, 501);
  await delay(10);
});

test('a fetch handler’s body in one large piece, and a streamed request body it reads', async (t) => {
  const proxy = await startProxy(t, { maxRequestBody: 64 * 1024 * 1024 });
  const big = pattern(5 * 1024 * 1024);
  await startAgent(t, proxy, {
    handler: async (request: Request) => {
      if (request.method === 'POST') {
        const hash = createHash('sha256');
        let n = 0;
        for await (const chunk of request.body as unknown as AsyncIterable<Uint8Array>) {
          hash.update(chunk);
          n += chunk.length;
        }
        return new Response(`${n} ${hash.digest('hex')}`);
      }
      return new Response(new Uint8Array(big));
    },
  });
  const reply = await send(proxy.port);
  assert.equal(reply.status, 200);
  assert.equal(reply.body.length, big.length);
  assert.ok(reply.body.equals(big));
  const upload = pattern(3 * 1024 * 1024 + 17);
  const posted = await send(proxy.port, { method: 'POST', body: upload, chunked: true });
  assert.equal(posted.text, `${upload.length} ${createHash('sha256').update(upload).digest('hex')}`);
});

test('a target that answers before reading the body: the upload stops, no credit is left behind', async (t) => {
  const target = await startTarget(t, (req, res) => {
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
    });
    req.on('end', () => res.end(String(n)));
  });
  // A raw target that answers at once and then never reads again (nor closes): unlike a Node
  // server, which would read and discard the rest of the body.
  const stubborn = createNetServer((socket) => {
    socket.once('data', () => {
      socket.write('HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied');
      socket.pause();
    });
  });
  await new Promise<void>((resolve) => stubborn.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    stubborn.close();
  });
  const proxy = await startProxy(t, { maxRequestBody: Number.POSITIVE_INFINITY });
  await startAgent(t, proxy, { target: target.url });
  await startAgent(t, proxy, { id: '4712', target: `http://127.0.0.1:${(stubborn.address() as AddressInfo).port}` });
  const body = Buffer.alloc(20 * 1024 * 1024, 1);
  for (let i = 0; i < 3; i++) {
    const early = await send(proxy.port, { method: 'POST', headers: { 'x-duplexwire-client-id': '4712' }, body }).catch(
      (error: Error) => error,
    );
    // Either the 401 arrives, or the connection is reset while the user still sends (both fine).
    if (!(early instanceof Error)) assert.equal(early.status, 401);
  }
  const full = await send(proxy.port, { method: 'POST', path: '/sink', body });
  assert.equal(full.text, String(body.length));
  await waitFor(() => proxy.proxy.agents('4712')[0]!.window.inFlight === 0, 3000, 'connection credit returned');
});

test('full duplex: a target that answers while it still reads the body (an echo) gets all of it, and so does the user', async (t) => {
  const target = await startTarget(t, (req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    // Each piece goes back as it comes: the response streams while the request still streams.
    req.on('data', (chunk: Buffer) => res.write(chunk));
    req.on('end', () => res.end());
  });
  const proxy = await startProxy(t, { maxRequestBody: Number.POSITIVE_INFINITY });
  await startAgent(t, proxy, { target: target.url });
  const total = 8 * 1024 * 1024;
  const block = pattern(64 * 1024);
  const sentHash = createHash('sha256');
  const { received, hash } = await new Promise<{ received: number; hash: string }>((resolve, reject) => {
    const req = request({
      port: proxy.port,
      host: '127.0.0.1',
      method: 'POST',
      headers: { 'x-duplexwire-client-id': ID, 'transfer-encoding': 'chunked' },
    });
    req.on('error', reject);
    let sent = 0;
    let echoed = 0;
    const pump = (): void => {
      // At most 1 MiB ahead of the echo: the rest goes only once the echo came back, so the
      // upload cannot finish before the response started.
      while (sent < total && sent - echoed < 1024 * 1024) {
        sent += block.length;
        sentHash.update(block);
        if (!req.write(block)) {
          req.once('drain', pump);
          return;
        }
      }
      if (sent >= total) req.end();
    };
    req.on('response', (res) => {
      const received = createHash('sha256');
      res.on('data', (c: Buffer) => {
        received.update(c);
        echoed += c.length;
        pump();
      });
      res.on('end', () => resolve({ received: echoed, hash: received.digest('hex') }));
    });
    pump();
  });
  assert.equal(received, total);
  assert.equal(hash, sentHash.digest('hex'));
});
