/**
 * How the proxy closes a user's connection whose response went out before the request body
 * arrived (nginx's lingering close): the response says `Connection: close`, the proxy ends its
 * side and reads and drops what still comes for at most `lingerTimeout`, then closes. The user
 * gets the whole answer (not a reset), the proxy does not read an endless body for ever, and a
 * request whose body arrived before the answer keeps its connection.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, test } from 'node:test';
import { TunnelProxy } from '../../src/apps/tunnel/proxy.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { startNode, waitRegistered } from '../fixtures/tunnel-cluster-helpers.ts';
import { ID, readBody, startAgent, startProxy, startTarget } from '../fixtures/tunnel-helpers.ts';
import { delay, recordingLogger, waitFor } from '../helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, uniquePrefix } from '../session/redis.ts';

interface Parsed {
  readonly status: number;
  readonly headers: Map<string, string>;
  readonly body: string;
  /** Bytes of the response (head and body); what follows is not part of it. */
  readonly length: number;
}

/** The first response in `bytes`, once it is whole (Content-Length bodies only), else undefined. */
function parseResponse(bytes: Buffer): Parsed | undefined {
  const end = bytes.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const lines = bytes.subarray(0, end).toString('latin1').split('\r\n');
  const status = Number(lines[0]!.split(' ')[1]);
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  const length = Number(headers.get('content-length') ?? 0);
  if (bytes.length < end + 4 + length) return undefined;
  return {
    status,
    headers,
    body: bytes.subarray(end + 4, end + 4 + length).toString('utf8'),
    length: end + 4 + length,
  };
}

const BLOCK = Buffer.alloc(64 * 1024, 'u');
const CHUNK = Buffer.concat([Buffer.from(`${BLOCK.length.toString(16)}\r\n`), BLOCK, Buffer.from('\r\n')]);

interface UploadResult {
  /** The response, when it arrived whole. */
  readonly response: Parsed | undefined;
  /** The first socket error, and whether it came before the whole response. */
  readonly error: string | undefined;
  readonly errorBeforeResponse: boolean;
  /** Body bytes written after the whole response arrived. */
  readonly sentAfterResponse: number;
  /** The proxy ended its side (FIN) after the response. */
  readonly ended: boolean;
  /** Milliseconds from the whole response to the connection's close; undefined when still open at the deadline. */
  readonly closedAfter: number | undefined;
}

/**
 * A user that sends `head`, then body bytes (`chunked` blocks or raw ones) as fast as the socket
 * takes them, at most `maxBytes`, and goes on sending after the response unless `stopOnResponse`:
 * resolves once the connection closed, or at `deadline` ms.
 */
function rawUpload(
  port: number,
  head: string,
  options: {
    chunked: boolean;
    maxBytes: number;
    stopOnResponse: boolean;
    deadline: number;
    /** Milliseconds between blocks (else as fast as the socket takes them). */
    pace?: number;
    /** Reads nothing until the whole body went, as clients that send before they read do. */
    readAfterSending?: boolean;
    /** Bytes per raw block (not chunked). @default 64 KiB */
    block?: number;
  },
): Promise<UploadResult> {
  return new Promise((resolve) => {
    // Half-open allowed: a user that goes on sending after the proxy's FIN, as one that does not
    // look at its socket while it uploads would.
    const socket: Socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let received = Buffer.alloc(0);
    let response: Parsed | undefined;
    let respondedAt = 0;
    let error: string | undefined;
    let errorBeforeResponse = false;
    let sent = 0;
    let sentAfterResponse = 0;
    let ended = false;
    let stopped = false;
    let pacer: ReturnType<typeof setTimeout> | undefined;
    const finish = (closed: boolean): void => {
      clearTimeout(timer);
      clearTimeout(pacer);
      stopped = true;
      socket.destroy();
      resolve({
        response,
        error,
        errorBeforeResponse,
        sentAfterResponse,
        ended,
        closedAfter: closed && response !== undefined ? performance.now() - respondedAt : undefined,
      });
    };
    const timer = setTimeout(() => finish(false), options.deadline);
    socket.on('data', (bytes: Buffer) => {
      if (response !== undefined) return;
      received = Buffer.concat([received, bytes]);
      response = parseResponse(received);
      if (response === undefined) return;
      respondedAt = performance.now();
      if (options.stopOnResponse) finish(true);
    });
    socket.on('end', () => {
      ended = response !== undefined;
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (error !== undefined) return;
      error = e.code ?? e.message;
      errorBeforeResponse = response === undefined;
    });
    socket.on('close', () => finish(true));
    const pump = (): void => {
      pacer = undefined;
      while (!stopped && !socket.destroyed && sent < options.maxBytes) {
        const piece = options.chunked ? CHUNK : BLOCK.subarray(0, options.block ?? BLOCK.length);
        // Body bytes (a chunk's framing not counted).
        const bytes = options.chunked ? BLOCK.length : piece.length;
        sent += bytes;
        if (response !== undefined) sentAfterResponse += bytes;
        const last = sent >= options.maxBytes;
        // Once the last byte was handed to the kernel: read the answer.
        const more = socket.write(piece, last && options.readAfterSending ? () => socket.resume() : undefined);
        if (options.pace !== undefined) {
          pacer = setTimeout(pump, options.pace);
          return;
        }
        if (!more) {
          socket.once('drain', pump);
          return;
        }
      }
    };
    if (options.readAfterSending) socket.pause();
    socket.write(head);
    pump();
  });
}

/** Body bytes sent by each user of the 413 test. */
const SENT = 8 * 1024 * 1024;

/**
 * A user that sends its whole body (SENT bytes) before it reads, as many simple clients do: the
 * 413 waits in its socket meanwhile, and a reset would lose it. It must arrive whole, closing.
 */
async function sendsWhole413(port: number, head: string, chunked: boolean, label: string): Promise<void> {
  const result = await rawUpload(port, head, {
    chunked,
    maxBytes: SENT,
    stopOnResponse: true,
    deadline: 10_000,
    readAfterSending: true,
  });
  assert.equal(result.errorBeforeResponse, false, `${label}: ${result.error} before the whole 413`);
  assert.ok(result.response !== undefined, `${label}: no whole response`);
  assert.equal(result.response.status, 413, label);
  assert.equal(result.response.headers.get('connection'), 'close', label);
  assert.equal((JSON.parse(result.response.body) as { code: string }).code, 'BODY_TOO_LARGE');
}

test('a 413 to a user still sending the body arrives whole, never lost to a reset (20 times)', async (t) => {
  const target = await startTarget(t, (req, res) => {
    readBody(req).then(
      () => res.end('read it all'),
      () => {},
    );
  });
  const proxy = await startProxy(t, { maxRequestBody: 64 * 1024 });
  await startAgent(t, proxy, { target: target.url });
  for (let i = 0; i < 20; i++) {
    // Announced over the limit (refused before any of it is read), and chunked (refused mid-body).
    const announced = i % 2 === 0;
    const head =
      `POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nx-duplexwire-client-id: ${ID}\r\n` +
      (announced ? `Content-Length: ${SENT}\r\n\r\n` : 'Transfer-Encoding: chunked\r\n\r\n');
    await sendsWhole413(proxy.port, head, !announced, `exchange ${i}`);
  }
  await waitFor(() => proxy.proxy.inflight === 0, 3000, 'nothing in flight');
});

test('an early answer to an endless upload: whole, Connection: close, and the connection closed within the linger', async (t) => {
  let reached = 0;
  const target = await startTarget(t, (req, res) => {
    reached++;
    // Answers without reading the body, as a 401 or a quick 200 does.
    req.on('error', () => {});
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '5' });
    res.end('early');
  });
  const proxy = await startProxy(t, { lingerTimeout: 1000 });
  await startAgent(t, proxy, { target: target.url });
  const head = `POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nx-duplexwire-client-id: ${ID}\r\nTransfer-Encoding: chunked\r\n\r\n`;
  // 64 KiB every 20 ms, for ever: only the proxy can end this.
  const result = await rawUpload(proxy.port, head, {
    chunked: true,
    maxBytes: Number.POSITIVE_INFINITY,
    stopOnResponse: false,
    deadline: 20_000,
    pace: 20,
  });
  assert.ok(result.response !== undefined, `no whole response (error: ${result.error})`);
  assert.equal(result.response.status, 200);
  assert.equal(result.response.body, 'early');
  assert.equal(result.response.headers.get('connection'), 'close');
  assert.equal(result.errorBeforeResponse, false);
  assert.ok(result.ended, 'the proxy ends its side after the response');
  assert.ok(result.closedAfter !== undefined, 'the connection is still open 20 s later');
  // Lingering (1 s), not closed at once, nor left open: a timer never fires early, and anything
  // near the deadline would mean the linger was not what closed it.
  assert.ok(
    result.closedAfter >= 500 && result.closedAfter < 10_000,
    `closed ${result.closedAfter} ms after the response`,
  );
  assert.ok(result.sentAfterResponse > 0, 'the user was still sending when the proxy closed');
  assert.equal(reached, 1);
  await waitFor(() => proxy.proxy.inflight === 0, 3000, 'nothing in flight');
});

test('a refused WebSocket upgrade whose user never closes its side is closed within the linger', async (t) => {
  // Node's server leaves an upgrade request's socket to its 'upgrade' listener: an answer that
  // only ended it lived as long as the user kept its own half open.
  const proxy = await startProxy(t, { lingerTimeout: 1000 });
  const upgrade = (extra: string): string =>
    'GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
    `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`;
  // No client id (400, refused before routing), and an id without an agent (503, once routed).
  for (const [extra, status] of [
    ['', 400],
    [`x-duplexwire-client-id: ${ID}\r\n`, 503],
  ] as const) {
    // 1 KiB every 50 ms after the request (frames sent early, say), for ever: only the proxy can end this.
    const result = await rawUpload(proxy.port, upgrade(extra), {
      chunked: false,
      maxBytes: Number.POSITIVE_INFINITY,
      stopOnResponse: false,
      deadline: 20_000,
      pace: 50,
      block: 1024,
    });
    assert.ok(result.response !== undefined, `${status}: no whole response (error: ${result.error})`);
    assert.equal(result.response.status, status);
    assert.equal(result.response.headers.get('connection'), 'close');
    assert.ok(result.ended, `${status}: the proxy ends its side after the response`);
    assert.ok(result.closedAfter !== undefined, `${status}: the connection is still open 20 s later`);
    assert.ok(result.closedAfter < 10_000, `${status}: closed ${result.closedAfter} ms after the response`);
  }
});

test('a request pipelined behind an answer that closes the connection is not served (RFC 9112 §9.6)', async (t) => {
  const paths: string[] = [];
  let sawSecond: () => void = () => {};
  const second = new Promise<void>((resolve) => {
    sawSecond = resolve;
  });
  let release: () => void = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const target = await startTarget(t, (req, res) => {
    paths.push(req.url ?? '');
    req.on('error', () => {});
    if (req.url === '/second') {
      sawSecond();
      res.end('second');
      return;
    }
    // An early answer that is still going out when the second request arrives (chunked: the
    // agent holds a small response with a Content-Length until it is whole).
    res.writeHead(200);
    res.write('ear');
    void released.then(() => res.end('ly'));
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const size = 256 * 1024;
  const socket = connect(proxy.port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.on('error', () => {});
  let received = Buffer.alloc(0);
  socket.on('data', (bytes: Buffer) => {
    received = Buffer.concat([received, bytes]);
  });
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.write(
    `POST /first HTTP/1.1\r\nHost: 127.0.0.1\r\nx-duplexwire-client-id: ${ID}\r\nContent-Length: ${size}\r\n\r\n`,
  );
  socket.write(Buffer.alloc(1024, 'a'));
  await waitFor(() => received.includes('ear'), 5000, 'the early answer has begun');
  assert.match(received.toString('latin1'), /\r\nconnection: close\r\n/i);
  // The rest of the body, and a second request behind it (not ended: Node's server ends its own
  // side when the user does, which would cut the first response off).
  socket.write(
    Buffer.concat([
      Buffer.alloc(size - 1024, 'a'),
      Buffer.from(`GET /second HTTP/1.1\r\nHost: 127.0.0.1\r\nx-duplexwire-client-id: ${ID}\r\n\r\n`),
    ]),
  );
  // Proving that something does not happen takes a wait: it would be served well within it.
  await Promise.race([second, delay(1000)]);
  release();
  await Promise.race([
    closed,
    new Promise((_, reject) => setTimeout(() => reject(new Error('connection still open')), 10_000).unref()),
  ]);
  const text = received.toString('latin1');
  assert.equal(text.match(/HTTP\/1\.1 \d{3} /g)?.length, 1, `one response only: ${text}`);
  assert.ok(text.endsWith('\r\nly\r\n0\r\n\r\n'), `the whole first response: ${text}`);
  assert.deepEqual(paths, ['/first']);
});

test('a body that arrived before the answer keeps the connection alive (no Connection: close)', async (t) => {
  const target = await startTarget(t, (req, res) => {
    readBody(req).then(
      (body) => {
        const text = String(body.length);
        res.writeHead(200, { 'content-length': String(text.length) });
        res.end(text);
      },
      () => {},
    );
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const socket = connect(proxy.port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.on('error', () => {});
  let received = Buffer.alloc(0);
  socket.on('data', (bytes: Buffer) => {
    received = Buffer.concat([received, bytes]);
  });
  let closed = false;
  socket.once('close', () => {
    closed = true;
  });
  const streamed = Buffer.alloc(300 * 1024, 's');
  const requests: Array<{ head: string; body: Buffer; expect: string }> = [
    // Streamed (over the inline limit), with a Content-Length.
    { head: `Content-Length: ${streamed.length}\r\n`, body: streamed, expect: String(streamed.length) },
    // Chunked.
    {
      head: 'Transfer-Encoding: chunked\r\n',
      body: Buffer.concat([CHUNK, CHUNK, Buffer.from('0\r\n\r\n')]),
      expect: String(2 * BLOCK.length),
    },
    // Inline, then none.
    { head: 'Content-Length: 5\r\n', body: Buffer.from('hello'), expect: '5' },
    { head: '', body: Buffer.alloc(0), expect: '0' },
  ];
  for (const [i, { head, body, expect }] of requests.entries()) {
    received = Buffer.alloc(0);
    socket.write(`POST /${i} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-duplexwire-client-id: ${ID}\r\n${head}\r\n`);
    socket.write(body);
    await waitFor(() => parseResponse(received) !== undefined || closed, 10_000, `response ${i}`);
    const reply = parseResponse(received);
    assert.ok(reply !== undefined, `request ${i}: the connection closed without a response`);
    assert.equal(reply.status, 200, `request ${i}`);
    assert.equal(reply.body, expect, `request ${i}`);
    assert.equal(reply.headers.get('connection'), 'keep-alive', `request ${i}`);
    assert.equal(closed, false, `request ${i}`);
  }
});

test('lingerTimeout takes a duration of at least 1 ms', () => {
  const make = (lingerTimeout: number | string) =>
    new TunnelProxy({ insecure: true, logger: recordingLogger(), processMetrics: false, lingerTimeout });
  assert.throws(() => make(0), InvalidArgumentError);
  assert.throws(() => make(2 ** 31), InvalidArgumentError);
  assert.throws(() => make('soon'), RangeError);
  make('250ms');
});

const connected = await connectRedis();
if (connected instanceof Error) {
  redisUnreachable('a 413 relayed from a peer proxy to a user still sending the body arrives whole', connected);
} else {
  const redis = connected;
  after(() => redis.quit());

  test('a 413 relayed from a peer proxy to a user still sending the body arrives whole (10 times)', async (t) => {
    const prefix = uniquePrefix();
    t.after(() => deletePrefix(redis, prefix));
    const target = await startTarget(t, (req, res) => {
      readBody(req).then(
        () => res.end('read it all'),
        () => {},
      );
    });
    // A forwards to B, which has the agent and the smaller limit: B's 413 closes both connections.
    const a = await startNode(t, redis, prefix, { maxRequestBody: Number.POSITIVE_INFINITY });
    const b = await startNode(t, redis, prefix, { maxRequestBody: 64 * 1024 });
    await startAgent(t, b, { target: target.url });
    await waitRegistered(redis, prefix, ID, [b.advertise]);
    for (let i = 0; i < 10; i++) {
      const head = `POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nx-duplexwire-client-id: ${ID}\r\nTransfer-Encoding: chunked\r\n\r\n`;
      await sendsWhole413(a.port, head, true, `exchange ${i}`);
    }
    assert.equal(a.proxy.metrics.cluster.peerFailures, 0);
    await waitFor(() => a.proxy.inflight === 0 && b.proxy.inflight === 0, 3000, 'nothing in flight');
  });
}
