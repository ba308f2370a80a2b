/**
 * The browser transport's own rules, checked in Node with `ws`'s WebSocket injected in place of
 * the browser's (same interface: binaryType, on* handlers, bufferedAmount, close(code, reason)),
 * against a scripted `ws` server on 127.0.0.1. Runs everywhere; chromium.test.ts runs the real
 * thing in a browser.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { createServer as createNetServer, type Socket } from 'node:net';
import { type TestContext, test } from 'node:test';
import { type WebSocket as WsSocket, WebSocket, WebSocketServer } from 'ws';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { Client } from '../../src/client/client.ts';
import { silentLogger } from '../../src/logger.ts';
import { Server } from '../../src/server/server.ts';
import { type BrowserTransportOptions, browserTransport } from '../../transports/browser.ts';
import type { ConnectFailure, SocketHandlers, TransportSocket } from '../../transports/types.ts';
import { wsTransport } from '../../transports/ws.ts';
import { waitFor } from '../helpers.ts';

const InjectedWebSocket = WebSocket as unknown as typeof globalThis.WebSocket;

function transport(options: Omit<BrowserTransportOptions, 'WebSocket'> = {}) {
  return browserTransport({ ...options, WebSocket: InjectedWebSocket });
}

/** A scripted server: `onConnection` gets each server-side socket. */
async function rawServer(t: TestContext, onConnection: (ws: WsSocket) => void = () => {}): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss.on('connection', onConnection);
  await new Promise<void>((resolve) => wss.once('listening', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const client of wss.clients) client.terminate();
        wss.close(() => resolve());
      }),
  );
  return `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/`;
}

interface Recorder extends SocketHandlers {
  readonly messages: Array<[string, boolean]>;
  readonly closes: Array<[number, string]>;
  drains: number;
  readonly closed: Promise<[number, string]>;
}

/** Handlers that record what they get; messages as text for readable assertions. */
function recorder(): Recorder {
  let resolveClosed!: (value: [number, string]) => void;
  const closed = new Promise<[number, string]>((resolve) => {
    resolveClosed = resolve;
  });
  const r: Recorder = {
    messages: [],
    closes: [],
    drains: 0,
    closed,
    onMessage: (data, binary) =>
      r.messages.push([binary ? [...data].join(',') : new TextDecoder().decode(data), binary]),
    onDrain: () => {
      r.drains++;
    },
    onPing: () => {},
    onClose: (code, reason) => {
      r.closes.push([code, reason]);
      resolveClosed([code, reason]);
    },
  };
  return r;
}

async function connect(
  t: TestContext,
  url: string,
  handlers: SocketHandlers,
  options: Omit<BrowserTransportOptions, 'WebSocket'> = {},
) {
  const socket = await transport(options).connect(url, { maxMessageSize: 1024, connectTimeout: 2000 }, handlers);
  t.after(() => socket.terminate());
  return socket;
}

/** The next connection a raw server accepts. */
function nextConnection(): { onConnection: (ws: WsSocket) => void; accepted: Promise<WsSocket> } {
  let resolve!: (ws: WsSocket) => void;
  const accepted = new Promise<WsSocket>((r) => {
    resolve = r;
  });
  return { onConnection: (ws) => resolve(ws), accepted };
}

function closeOf(ws: WsSocket): Promise<[number, string]> {
  return new Promise((resolve) =>
    ws.once('close', (code: number, reason: Buffer) => resolve([code, reason.toString()])),
  );
}

function nextMessage(ws: WsSocket): Promise<[string, boolean]> {
  return new Promise((resolve) =>
    ws.once('message', (data: Buffer, isBinary: boolean) =>
      resolve([isBinary ? [...data].join(',') : data.toString(), isBinary]),
    ),
  );
}

const tick = (ms = 20): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('binary and text messages both ways', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  const socket = await connect(t, url, r);
  const server = await accepted;
  server.send(Uint8Array.of(1, 2, 255));
  server.send('héllo 😀');
  await tick();
  assert.deepEqual(r.messages, [
    ['1,2,255', true],
    ['héllo 😀', false],
  ]);
  const got = nextMessage(server);
  assert.equal(socket.send(Uint8Array.of(7, 8).subarray(1)), 'ok');
  assert.deepEqual(await got, ['8', true]);
  const text = nextMessage(server);
  assert.equal(socket.sendText('ünïcode'), 'ok');
  assert.deepEqual(await text, ['ünïcode', false]);
  assert.equal(socket.remoteAddress, '');
});

test('connect rejects without status when nothing listens, and never calls onClose', async () => {
  const probe = createNetServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  const r = recorder();
  const error = (await transport()
    .connect(`ws://127.0.0.1:${port}/`, { maxMessageSize: 1024, connectTimeout: 2000 }, r)
    .then(
      () => assert.fail('connected'),
      (e: unknown) => e,
    )) as ConnectFailure;
  assert.ok(error instanceof Error);
  assert.match(error.message, /^the WebSocket closed before it opened \(code 1006\)$/);
  assert.equal(error.status, undefined);
  await tick();
  assert.deepEqual(r.closes, []);
});

test('connect rejects a refused upgrade the same way (a browser sees no status)', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, verifyClient: () => false });
  await new Promise<void>((resolve) => wss.once('listening', resolve));
  t.after(() => new Promise<void>((resolve) => wss.close(() => resolve())));
  const r = recorder();
  const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/`;
  await assert.rejects(
    transport().connect(url, { maxMessageSize: 1024, connectTimeout: 2000 }, r),
    (e: ConnectFailure) => {
      assert.equal(e.status, undefined);
      return true;
    },
  );
  assert.deepEqual(r.closes, []);
});

/** A server that accepts TCP and never answers the upgrade; `sockets` are its open connections. */
async function silentServer(t: TestContext): Promise<{ url: string; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const silent = createNetServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // Read (and drop) the upgrade request, so that the client's FIN is seen.
    socket.resume();
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    return new Promise<void>((resolve) => silent.close(() => resolve()));
  });
  return { url: `ws://127.0.0.1:${(silent.address() as AddressInfo).port}/`, sockets };
}

test('connect times out with ETIMEDOUT and closes the attempt', async (t) => {
  const { url, sockets } = await silentServer(t);
  const r = recorder();
  const started = performance.now();
  await assert.rejects(
    transport().connect(url, { maxMessageSize: 1024, connectTimeout: 100 }, r),
    (e: ConnectFailure & { code?: string }) => {
      assert.equal(e.code, 'ETIMEDOUT');
      assert.match(e.message, /timed out after 100 ms/);
      return true;
    },
  );
  assert.ok(performance.now() - started < 1500);
  // The attempt's TCP connection is closed.
  for (let i = 0; i < 100 && sockets.size > 0; i++) await tick(10);
  assert.equal(sockets.size, 0);
  assert.deepEqual(r.closes, []);
});

test('an aborted signal ends the attempt at once with ABORT_ERR and closes its connection', async (t) => {
  const { url, sockets } = await silentServer(t);
  const r = recorder();
  const controller = new AbortController();
  const attempt = transport().connect(
    url,
    { maxMessageSize: 1024, connectTimeout: 30_000, signal: controller.signal },
    r,
  );
  // The server has the attempt's connection (and never answers it).
  await waitFor(() => sockets.size === 1, 2000, 'the attempt to reach the server');
  const started = performance.now();
  controller.abort();
  await assert.rejects(attempt, (e: ConnectFailure & { code?: string }) => {
    assert.equal(e.code, 'ABORT_ERR');
    assert.match(e.message, /connect aborted/);
    return true;
  });
  assert.ok(performance.now() - started < 1500, 'rejected at the abort, not at connectTimeout');
  await waitFor(() => sockets.size === 0, 2000, "the attempt's connection to close");
  assert.deepEqual(r.closes, []);

  // A signal aborted before the call: rejected the same way, without waiting for anything.
  await assert.rejects(
    transport().connect(url, { maxMessageSize: 1024, connectTimeout: 30_000, signal: AbortSignal.abort() }, r),
    (e: ConnectFailure & { code?: string }) => e.code === 'ABORT_ERR',
  );
  await waitFor(() => sockets.size === 0, 2000, "the second attempt's connection to close");
});

test('client.close() while the browser transport connects ends the attempt at once', async (t) => {
  const { url, sockets } = await silentServer(t);
  const client = new Client(url, {
    transport: transport(),
    connectTimeout: 30_000,
    reconnect: false,
    logger: silentLogger,
  });
  client.on('error', () => {});
  const connecting = client.connect().catch((error: unknown) => error);
  await waitFor(() => sockets.size === 1, 2000, 'the attempt to reach the server');
  const started = performance.now();
  await client.close();
  assert.ok(performance.now() - started < 1500, 'close() waited for connectTimeout');
  assert.ok((await connecting) instanceof Error, 'connect() rejects');
  await waitFor(() => sockets.size === 0, 2000, "the attempt's connection to close");
});

test('a malformed URL and bad options are refused', async () => {
  await assert.rejects(
    transport().connect('not a url', { maxMessageSize: 1024, connectTimeout: 100 }, recorder()),
    SyntaxError,
  );
  await assert.rejects(
    transport().connect('ws://127.0.0.1:1/', { maxMessageSize: 0, connectTimeout: 100 }, recorder()),
    RangeError,
  );
  assert.throws(() => browserTransport({ highWaterMark: -1 }), RangeError);
  assert.throws(() => browserTransport({ maxPausedBytes: Number.NaN }), RangeError);
});

test('a message over maxMessageSize closes: the owner sees 1009, the peer 1000 with the code in the reason', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  await connect(t, url, r);
  const server = await accepted;
  const serverClosed = closeOf(server);
  server.send(new Uint8Array(1024));
  server.send(new Uint8Array(1025));
  server.send(Uint8Array.of(1));
  assert.deepEqual(await r.closed, [1009, 'message too big']);
  assert.deepEqual(await serverClosed, [1000, '1009: message too big']);
  assert.equal(r.messages.length, 1, 'the message at the limit arrives, nothing after the one over it');
  assert.deepEqual(r.closes.length, 1);
});

test('close codes a browser cannot send go out as 1000 with the code in the reason', async (t) => {
  for (const [code, reason, wire] of [
    [1002, 'bad frame', [1000, '1002: bad frame']],
    [1008, 'policy', [1000, '1008: policy']],
    [4001, 'app', [4001, 'app']],
    [1000, 'bye', [1000, 'bye']],
  ] as const) {
    const { onConnection, accepted } = nextConnection();
    const url = await rawServer(t, onConnection);
    const r = recorder();
    const socket = await connect(t, url, r);
    const serverClosed = closeOf(await accepted);
    socket.close(code, reason);
    socket.close(code, reason); // safe twice
    assert.equal(socket.send(Uint8Array.of(1)), 'dropped');
    assert.deepEqual(await serverClosed, wire);
    assert.deepEqual(await r.closed, [code, reason], 'the owner sees the code it closed with');
    await tick();
    assert.equal(r.closes.length, 1);
    assert.throws(() => socket.close(1005, ''), RangeError);
  }
});

test('a long close reason is cut to 123 bytes of whole characters', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const socket = await connect(t, url, recorder());
  const serverClosed = closeOf(await accepted);
  socket.close(1011, 'é'.repeat(100));
  const [code, reason] = await serverClosed;
  assert.equal(code, 1000);
  assert.ok(Buffer.byteLength(reason) <= 123);
  assert.ok(reason.startsWith('1011: éé'));
  assert.ok(!reason.includes('\ufffd'));
});

test('the server closing is reported once, with its code and reason', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  const socket = await connect(t, url, r);
  (await accepted).close(4000, 'bye');
  assert.deepEqual(await r.closed, [4000, 'bye']);
  socket.close(1000, '');
  socket.terminate();
  await tick();
  assert.deepEqual(r.closes, [[4000, 'bye']]);
  assert.equal(socket.send(Uint8Array.of(1)), 'dropped');
});

test('terminate reports 1006 at once (on a microtask), exactly once', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  const socket = await connect(t, url, r);
  const server = await accepted;
  const serverClosed = closeOf(server);
  socket.terminate();
  assert.deepEqual(r.closes, [], 'not re-entrant');
  server.send(Uint8Array.of(1)); // ignored from now on
  await Promise.resolve();
  assert.deepEqual(r.closes, [[1006, '']]);
  assert.equal(socket.send(Uint8Array.of(1)), 'dropped');
  socket.terminate();
  await serverClosed;
  await tick();
  assert.deepEqual(r.closes, [[1006, '']]);
  assert.deepEqual(r.messages, []);
});

test('pause queues what arrives; resume delivers it in order, asynchronously', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  let socket: TransportSocket | undefined;
  const delivered: string[] = [];
  const handlers: SocketHandlers = {
    ...r,
    onMessage: (data, binary) => {
      r.onMessage(data, binary);
      delivered.push(String(data[0]));
      // An owner that pauses from inside its handler stops the flush at once.
      if (data[0] === 2) socket?.pause();
    },
  };
  socket = await connect(t, url, handlers);
  const server = await accepted;
  socket.pause();
  for (let i = 1; i <= 4; i++) server.send(Uint8Array.of(i));
  await tick(50);
  assert.deepEqual(delivered, []);
  socket.resume();
  assert.deepEqual(delivered, [], 'not within resume()');
  await tick();
  assert.deepEqual(delivered, ['1', '2']);
  server.send(Uint8Array.of(5));
  await tick();
  assert.deepEqual(delivered, ['1', '2']);
  socket.resume();
  await tick();
  assert.deepEqual(delivered, ['1', '2', '3', '4', '5']);
});

test('messages queued during a pause are delivered before onClose when not paused', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  const socket = await connect(t, url, r);
  const server = await accepted;
  socket.pause();
  server.send(Uint8Array.of(1));
  server.send(Uint8Array.of(2));
  await tick();
  socket.resume();
  server.close(1000, 'done');
  await r.closed;
  assert.deepEqual(r.messages, [
    ['1', true],
    ['2', true],
  ]);
});

test('past maxPausedBytes the connection closes with 1008', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  const socket = await connect(t, url, r, { maxPausedBytes: 1000 });
  const server = await accepted;
  const serverClosed = closeOf(server);
  socket.pause();
  // 2 x (400 + 512) = 1824: the second finds 912 queued (< 1000) and is kept, the third closes.
  for (let i = 0; i < 5; i++) server.send(new Uint8Array(400));
  assert.deepEqual(await r.closed, [1008, 'read buffer limit exceeded']);
  assert.deepEqual(await serverClosed, [1000, '1008: read buffer limit exceeded']);
  assert.deepEqual(r.messages, [], 'a paused owner gets nothing');
});

test('tiny messages count what keeping them costs: a flood of 1-byte messages closes near maxPausedBytes of memory', async (t) => {
  // A queued 1-byte message holds ~650 bytes in Chromium (measured on Chromium 156: ~149 bytes of
  // V8 heap, 64 of Blink's for its ArrayBuffer, its backing store outside both), so the adapter
  // counts 1 + 512 for it: 16 fit under 8 KiB (16 x 513 = 8208), the 17th closes. Counted as
  // 1 + 64, 127 fitted, some ten times maxPausedBytes of memory.
  let arrived = 0;
  let closedAt: number | undefined;
  // ws's WebSocket, counting the messages it hands the adapter until the adapter closes it.
  class Counting extends WebSocket {
    constructor(...args: ConstructorParameters<typeof WebSocket>) {
      super(...args);
      this.addEventListener('message', () => {
        arrived++;
      });
    }
    override close(...args: Parameters<WebSocket['close']>): void {
      closedAt ??= arrived;
      super.close(...args);
    }
  }
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  const socket = await browserTransport({
    maxPausedBytes: 8192,
    WebSocket: Counting as unknown as typeof globalThis.WebSocket,
  }).connect(url, { maxMessageSize: 1024, connectTimeout: 2000 }, r);
  t.after(() => socket.terminate());
  const server = await accepted;
  socket.pause();
  for (let i = 0; i < 200; i++) server.send(new Uint8Array(1));
  assert.deepEqual(await r.closed, [1008, 'read buffer limit exceeded']);
  assert.equal(closedAt, 17, 'closed by the 17th message: 16 were kept');
});

test('send answers backpressure above highWaterMark, then onDrain once the buffer went down', async (t) => {
  const { onConnection, accepted } = nextConnection();
  const url = await rawServer(t, onConnection);
  const r = recorder();
  const socket = await transport({ highWaterMark: 1024 }).connect(
    url,
    { maxMessageSize: 1 << 24, connectTimeout: 2000 },
    r,
  );
  t.after(() => socket.terminate());
  const server = await accepted;
  let received = 0;
  server.on('message', (data: Buffer) => {
    received += data.length;
  });
  const results = new Set<string>();
  for (let i = 0; i < 8; i++) results.add(socket.send(new Uint8Array(1 << 20)));
  assert.ok(results.has('backpressure'), [...results].join());
  assert.ok(socket.bufferedAmount > 1024);
  for (let i = 0; i < 300 && r.drains === 0; i++) await tick(10);
  assert.equal(r.drains, 1);
  assert.ok(socket.bufferedAmount <= 1024);
  for (let i = 0; i < 300 && received < 8 << 20; i++) await tick(10);
  assert.equal(received, 8 << 20);
});

test('a Client over the browser transport talks to a Server', async (t) => {
  const server = new Server({
    transport: wsTransport({ host: '127.0.0.1', port: 0 }),
    logger: silentLogger,
    onRequest: (_conn, msg) => msg.payload,
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  const client = new Client(`ws://127.0.0.1:${server.address()!.port}/`, {
    transport: transport(),
    reconnect: false,
    logger: silentLogger,
  });
  t.after(() => client.close());
  await client.connect();
  assert.equal(client.supportsV21, true);
  assert.equal(payloadText(await client.request('echo', utf8('héllo 😀'))), 'héllo 😀');
});

test('a long pause queue is delivered whole and in order, across pauses from the owner', async () => {
  // A WebSocket stand-in that the test drives by hand: 20,000 messages arrive during a pause (the
  // queue's bookkeeping compacts past 1,024 delivered entries), and the owner pauses twice midway.
  let fake: { readyState: number; onopen?: () => void; onmessage?: (event: { data: ArrayBuffer }) => void };
  class FakeWebSocket {
    readyState = 0;
    binaryType = '';
    bufferedAmount = 0;
    onopen?: () => void;
    onmessage?: (event: { data: ArrayBuffer }) => void;
    onclose?: () => void;
    onerror?: () => void;
    constructor() {
      fake = this;
      queueMicrotask(() => {
        this.readyState = 1;
        this.onopen?.();
      });
    }
    send(): void {}
    close(): void {}
  }
  const count = 20_000;
  const seen: number[] = [];
  let socket: TransportSocket | undefined;
  socket = await browserTransport({
    WebSocket: FakeWebSocket as unknown as typeof globalThis.WebSocket,
    // 20,000 x (4 + 512) bytes counted: past the 8 MiB default.
    maxPausedBytes: 16 << 20,
  }).connect(
    'ws://127.0.0.1/',
    { maxMessageSize: 1024, connectTimeout: 2000 },
    {
      onMessage: (data) => {
        const n = new DataView(data.buffer, data.byteOffset, 4).getUint32(0);
        seen.push(n);
        if (n === 5_000 || n === 15_000) socket?.pause();
      },
      onClose: () => {},
      onDrain: () => {},
      onPing: () => {},
    },
  );
  socket.pause();
  for (let i = 1; i <= count; i++) {
    const data = new ArrayBuffer(4);
    new DataView(data).setUint32(0, i);
    fake!.onmessage?.({ data });
  }
  for (const expected of [5_000, 15_000, count]) {
    socket.resume();
    await tick(0);
    await waitFor(() => seen.length === expected, 5_000, `${expected} messages`);
  }
  assert.ok(
    seen.every((n, i) => n === i + 1),
    'in order, none lost or repeated',
  );
});
