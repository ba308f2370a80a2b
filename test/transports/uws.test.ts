/**
 * The uWebSockets.js server transport, held to the server-side cases of `ws.test.ts` (the clients
 * are the ws client transport and raw `ws`/TCP peers), plus uWS's own hazards: buffers neutered
 * after a callback, sockets invalid after their close, responses invalid after an abort.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, request as httpRequest } from 'node:http';
import { createServer as createNetServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { Client } from '../../src/client/client.ts';
import { Server } from '../../src/server/server.ts';
import type {
  ConnectFailure,
  SendResult,
  ServerTransport,
  SocketHandlers,
  TransportSocket,
  UpgradeDecision,
  UpgradeRequest,
} from '../../transports/types.ts';
import { DEFAULT_HIGH_WATER_MARK, type UwsServerTransportOptions, uwsTransport } from '../../transports/uws.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { bytes, delay, type Recorder, recorder, text, until } from './helpers.ts';

const MAX = 1024 * 1024;
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const silent = { error() {}, warn() {}, info() {}, debug() {} };

interface Accepted {
  readonly socket: TransportSocket;
  readonly request: UpgradeRequest;
  readonly rec: Recorder;
}

interface Fixture {
  readonly transport: ServerTransport;
  readonly port: number;
  readonly url: string;
  readonly accepted: Accepted[];
  readonly upgrades: UpgradeRequest[];
}

interface FixtureOptions {
  readonly transport?: UwsServerTransportOptions;
  readonly maxMessageSize?: number;
  readonly upgrade?: (request: UpgradeRequest) => UpgradeDecision | Promise<UpgradeDecision>;
  /** Runs inside `connection`, before the handlers are returned. */
  readonly onConnection?: (socket: TransportSocket) => void;
  readonly hooks?: Partial<SocketHandlers>;
}

async function startServer(t: TestContext, options: FixtureOptions = {}): Promise<Fixture> {
  const transport = uwsTransport({ port: 0, ...options.transport });
  const accepted: Accepted[] = [];
  const upgrades: UpgradeRequest[] = [];
  await transport.start(
    {
      upgrade(request) {
        upgrades.push(request);
        return options.upgrade?.(request) ?? { accept: true };
      },
      connection(socket, request) {
        const rec = recorder(options.hooks);
        accepted.push({ socket, request, rec });
        options.onConnection?.(socket);
        return rec;
      },
    },
    { maxMessageSize: options.maxMessageSize ?? MAX },
  );
  t.after(() => transport.stop());
  const address = transport.address();
  assert.ok(address);
  return { transport, port: address.port, url: `ws://127.0.0.1:${address.port}`, accepted, upgrades };
}

async function connect(
  t: TestContext,
  url: string,
  options: {
    headers?: Record<string, string>;
    maxMessageSize?: number;
    hooks?: Partial<SocketHandlers>;
    ca?: Buffer;
  } = {},
): Promise<{ socket: TransportSocket; rec: Recorder }> {
  const rec = recorder(options.hooks);
  const client = wsClientTransport(options.ca === undefined ? {} : { tls: { ca: options.ca } });
  const socket = await client.connect(
    url,
    {
      maxMessageSize: options.maxMessageSize ?? MAX,
      connectTimeout: 2000,
      ...(options.headers ? { headers: options.headers } : {}),
    },
    rec,
  );
  t.after(() => socket.terminate());
  return { socket, rec };
}

/** A port nothing listens on (bound then released). */
async function closedPort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Sends a raw upgrade request and returns the plain HTTP response the server answered with. */
function rawUpgrade(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: IncomingMessage['headers']; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      path,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...headers,
      },
    });
    req.on('upgrade', (_res, socket) => {
      socket.destroy();
      reject(new Error('unexpectedly upgraded'));
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A TCP peer that completed a WebSocket handshake by hand, for frames `ws` would never send. */
async function rawWebSocket(t: TestContext, port: number, extraHeaders = '', awaitUpgrade = true): Promise<Socket> {
  const raw: Socket = netConnect(port, '127.0.0.1');
  t.after(() => raw.destroy());
  raw.on('error', () => {});
  await new Promise<void>((resolve) => raw.once('connect', () => resolve()));
  raw.write(
    'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extraHeaders}\r\n`,
  );
  if (!awaitUpgrade) return raw;
  // uWS drops frames a client sends before the 101 (RFC 6455 §4.1 says to wait; `ws` keeps them).
  let head = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      raw.off('data', onData);
      if (head.startsWith('HTTP/1.1 101 ')) resolve();
      else reject(new Error(`not upgraded: ${head}`));
    };
    raw.on('data', onData);
    raw.once('close', () => reject(new Error('closed during the handshake')));
  });
  return raw;
}

/** A masked client frame (RFC 6455 §5.2) with a zero mask, payload < 126 bytes. */
function maskedFrame(opcode: number, payload: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}

test('binary and text messages round trip in both directions', async (t) => {
  const server = await startServer(t);
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;

  assert.equal(socket.send(bytes(1, 2, 3)), 'ok');
  assert.equal(socket.sendText('héllo'), 'ok');
  await until(() => remote.rec.messages.length === 2, 'server messages');
  assert.deepEqual(remote.rec.messages[0], { data: bytes(1, 2, 3), binary: true });
  assert.equal(remote.rec.messages[1]!.binary, false);
  assert.equal(text(remote.rec.messages[1]!.data), 'héllo');

  assert.equal(remote.socket.send(new Uint8Array(0)), 'ok');
  assert.equal(remote.socket.sendText('✓'), 'ok');
  // A view into a larger buffer: only its own bytes go out.
  assert.equal(remote.socket.send(new Uint8Array([9, 8, 7, 6, 5]).subarray(1, 3)), 'ok');
  await until(() => rec.messages.length === 3, 'client messages');
  assert.deepEqual(rec.messages[0], { data: new Uint8Array(0), binary: true });
  assert.deepEqual(rec.messages[1], { data: new TextEncoder().encode('✓'), binary: false });
  assert.deepEqual(rec.messages[2], { data: bytes(8, 7), binary: true });
  assert.equal(remote.socket.remoteAddress, '127.0.0.1');
  assert.equal(remote.socket.bufferedAmount, 0);
});

test('delivered bytes are copies: plain Uint8Arrays that stay valid after later messages', async (t) => {
  const server = await startServer(t);
  const { socket } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  const count = 200;
  for (let i = 0; i < count; i++) socket.send(new Uint8Array(300).fill(i));
  await until(() => remote.rec.messages.length === count, 'all messages');
  await delay(10);
  for (let i = 0; i < count; i++) {
    const { data } = remote.rec.messages[i]!;
    assert.equal(Object.getPrototypeOf(data), Uint8Array.prototype);
    assert.equal(data.byteLength, 300, `message ${i} not neutered`);
    assert.ok(
      data.every((b) => b === i % 256),
      `message ${i} intact`,
    );
  }
});

test('a message sent in connection() reaches the client handlers', async (t) => {
  const server = await startServer(t, { onConnection: (socket) => socket.send(bytes(42)) });
  const { rec } = await connect(t, server.url);
  await until(() => rec.messages.length === 1, 'first message');
  assert.deepEqual(rec.messages[0]!.data, bytes(42));
});

test('upgrade sees url, path, query, lower-cased headers and the remote address', async (t) => {
  const server = await startServer(t);
  await connect(t, `${server.url}/chat?room=1&x=%20`, { headers: { 'X-Token': 'abc', Cookie: 'a=1' } });
  await until(() => server.accepted.length === 1, 'connection');
  const request = server.upgrades[0]!;
  assert.equal(request.url, '/chat?room=1&x=%20');
  assert.equal(request.path, '/chat');
  assert.equal(request.query, 'room=1&x=%20');
  assert.equal(request.headers['x-token'], 'abc');
  assert.equal(request.headers.cookie, 'a=1');
  assert.equal(request.headers.upgrade, 'websocket');
  assert.equal(request.headers['X-Token'], undefined);
  assert.equal(Object.getPrototypeOf(request.headers), null);
  assert.equal(request.remoteAddress, '127.0.0.1');
  assert.equal(server.accepted[0]!.request, request, 'connection() gets the same request object');

  await connect(t, `${server.url}/`);
  await until(() => server.upgrades.length === 2, 'second upgrade');
  assert.equal(server.upgrades[1]!.query, '');
  assert.equal(server.upgrades[1]!.path, '/');
  assert.equal(server.upgrades[1]!.url, '/');
});

test('IPv6 remote addresses are written as Node writes them', async (t) => {
  const transport = uwsTransport({ host: '::', port: 0 });
  const addresses: string[] = [];
  try {
    const connection = (socket: TransportSocket): Recorder => {
      addresses.push(socket.remoteAddress);
      return recorder();
    };
    await transport.start({ upgrade: () => ({ accept: true }), connection }, { maxMessageSize: MAX });
  } catch {
    t.skip('no IPv6 here');
    return;
  }
  t.after(() => transport.stop());
  const port = transport.address()!.port;
  const v6 = await wsClientTransport()
    .connect(`ws://[::1]:${port}/`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder())
    .catch(() => undefined);
  if (v6 === undefined) {
    t.skip('no IPv6 loopback here');
    return;
  }
  t.after(() => v6.terminate());
  await connect(t, `ws://127.0.0.1:${port}/`);
  await until(() => addresses.length === 2, 'connections');
  assert.deepEqual(addresses, ['::1', '::ffff:127.0.0.1']);
});

test('repeated headers are joined as Node joins them', async (t) => {
  const server = await startServer(t);
  await rawWebSocket(
    t,
    server.port,
    'Cookie: a=1\r\nCookie: b=2\r\nX-Multi: 1\r\nX-Multi: 2\r\nUser-Agent: first\r\nUser-Agent: second\r\nConstructor: x\r\n',
  );
  await until(() => server.accepted.length === 1, 'connection');
  const { headers } = server.upgrades[0]!;
  assert.equal(headers.cookie, 'a=1; b=2');
  assert.equal(headers['x-multi'], '1, 2');
  assert.equal(headers['user-agent'], 'first');
  assert.equal(headers.constructor, 'x');
});

test('refusals reach the client as status and body; onClose is never called', async (t) => {
  const server = await startServer(t, {
    upgrade: (request) => {
      const status = Number(request.query);
      return { accept: false, status, body: `no (${status}) é` };
    },
  });
  for (const status of [401, 403, 503]) {
    const rec = recorder();
    await assert.rejects(
      wsClientTransport().connect(`${server.url}/?${status}`, { maxMessageSize: MAX, connectTimeout: 2000 }, rec),
      (err: ConnectFailure) => {
        assert.equal(err.status, status);
        assert.equal(err.body, `no (${status}) é`);
        assert.match(err.message, new RegExp(`upgrade refused with HTTP ${status}`));
        return true;
      },
    );
    await delay(20);
    assert.deepEqual(rec.events, []);
  }
  assert.equal(server.accepted.length, 0);
});

test('refusal is a well-formed HTTP/1.1 response; invalid headers become a bare 500', async (t) => {
  const server = await startServer(t, {
    upgrade: (request) =>
      request.path === '/bad'
        ? { accept: false, status: 403, body: 'secret', headers: { 'X-Evil': 'a\r\nSet-Cookie: x=1' } }
        : request.path === '/status'
          ? { accept: false, status: 99 }
          : {
              accept: false,
              status: 503,
              body: 'busy',
              headers: { 'Retry-After': '5', 'Content-Length': '999', 'X-Latin': 'caf\u00e9' },
            },
  });
  const busy = await rawUpgrade(server.port, '/');
  assert.equal(busy.status, 503);
  assert.equal(busy.body, 'busy');
  assert.equal(busy.headers['retry-after'], '5');
  assert.equal(busy.headers['content-length'], '4');
  assert.equal(busy.headers.connection, 'close');
  assert.equal(busy.headers['content-type'], 'text/plain; charset=utf-8');
  // Written as latin1 like Node does (Node reads it back as latin1).
  assert.equal(busy.headers['x-latin'], 'caf\u00e9');

  const bad = await rawUpgrade(server.port, '/bad');
  assert.equal(bad.status, 500);
  assert.equal(bad.body, '');
  assert.equal(bad.headers['x-evil'], undefined);
  assert.equal(bad.headers['set-cookie'], undefined);

  assert.equal((await rawUpgrade(server.port, '/status')).status, 500);
});

test('an async upgrade decision is awaited; a throwing one answers 500 without detail', async (t) => {
  const server = await startServer(t, {
    upgrade: async (request) => {
      await delay(20);
      if (request.path === '/boom') throw new Error('database password is hunter2');
      if (request.path === '/no') return { accept: false, status: 403, body: 'later no' };
      return { accept: true };
    },
  });
  const { socket } = await connect(t, `${server.url}/ok`);
  assert.equal(socket.send(bytes(7)), 'ok');
  await until(() => server.accepted[0]?.rec.messages.length === 1, 'message after async accept');
  assert.equal(server.accepted[0]!.request, server.upgrades[0], 'same request object after an await');

  await assert.rejects(
    wsClientTransport().connect(`${server.url}/boom`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    {
      status: 500,
      body: '',
    },
  );
  await assert.rejects(
    wsClientTransport().connect(`${server.url}/no`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    {
      status: 403,
      body: 'later no',
    },
  );
});

test('a client that leaves during an async decision is dropped quietly, accepted or refused', async (t) => {
  const decisions: Array<(decision: UpgradeDecision) => void> = [];
  const server = await startServer(t, {
    upgrade: (request) =>
      request.path === '/ok'
        ? { accept: true }
        : new Promise<UpgradeDecision>((resolve) => {
            decisions.push(resolve);
          }),
  });
  const rec = recorder();
  await assert.rejects(wsClientTransport().connect(server.url, { maxMessageSize: MAX, connectTimeout: 100 }, rec), {
    code: 'ETIMEDOUT',
  });
  const raw = await rawWebSocket(t, server.port, '', false);
  await until(() => decisions.length === 2, 'both upgrades pending');
  raw.destroy();
  await delay(30);
  decisions[0]!({ accept: true });
  decisions[1]!({ accept: false, status: 403, body: 'too late' });
  await delay(30);
  assert.equal(server.accepted.length, 0);
  assert.deepEqual(rec.events, []);
  // The server still works.
  const { socket } = await connect(t, `${server.url}/ok`);
  assert.equal(socket.send(bytes(1)), 'ok');
  await until(() => server.accepted[0]?.rec.messages.length === 1, 'message');
});

test('a message over maxMessageSize closes with 1009 on both ends, with a reason', async (t) => {
  const server = await startServer(t, { maxMessageSize: 1000 });
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  assert.equal(socket.send(new Uint8Array(1000)), 'ok');
  assert.equal(socket.send(new Uint8Array(1001)), 'ok');
  const remote = server.accepted[0]!;
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.equal(remote.rec.messages.length, 1);
  assert.deepEqual(remote.rec.closes, [{ code: 1009, reason: 'message too big' }]);
  assert.deepEqual(rec.closes, [{ code: 1009, reason: 'message too big' }]);
});

test('a message over twice maxMessageSize is cut off by uWS: the owner sees 1009, the peer 1006', async (t) => {
  const server = await startServer(t, { maxMessageSize: 1000 });
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  assert.equal(socket.send(new Uint8Array(2001)), 'ok');
  const remote = server.accepted[0]!;
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(remote.rec.closes, [{ code: 1009, reason: '' }]);
  assert.deepEqual(rec.closes, [{ code: 1006, reason: '' }]);
});

test('a message over maxMessageSize closes with 1009 on both ends (client limit)', async (t) => {
  const server = await startServer(t);
  const { rec } = await connect(t, server.url, { maxMessageSize: 100 });
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  remote.socket.send(new Uint8Array(101));
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(rec.closes, [{ code: 1009, reason: '' }]);
  assert.deepEqual(remote.rec.closes, [{ code: 1009, reason: '' }]);
});

test('invalid UTF-8 in a text frame is reported to the owner as 1007', async (t) => {
  const server = await startServer(t);
  const raw = await rawWebSocket(t, server.port);
  await until(() => server.accepted.length === 1, 'connection');
  raw.write(maskedFrame(0x1, Uint8Array.from([0xff, 0xfe])));
  await until(() => server.accepted[0]!.rec.closes.length === 1, 'close');
  assert.deepEqual(server.accepted[0]!.rec.closes, [{ code: 1007, reason: '' }]);
  assert.equal(server.accepted[0]!.rec.messages.length, 0);
});

test('close code and reason are seen on both ends, once; close is safe to repeat', async (t) => {
  const server = await startServer(t);
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  socket.send(bytes(1));
  socket.close(4001, 'bye');
  socket.close(4002, 'again');
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(remote.rec.events, ['message', 'close']);
  assert.deepEqual(remote.rec.closes, [{ code: 4001, reason: 'bye' }]);
  assert.deepEqual(rec.closes, [{ code: 4001, reason: 'bye' }]);
  remote.socket.close(1000, '');
  remote.socket.terminate();
  remote.socket.ping();
  remote.socket.pause();
  remote.socket.resume();
  assert.equal(remote.socket.send(bytes(3)), 'dropped');
  assert.equal(remote.socket.sendText('x'), 'dropped');
  assert.equal(remote.socket.bufferedAmount, 0);
  await delay(20);
  assert.equal(rec.closes.length, 1);
  assert.equal(remote.rec.closes.length, 1);
});

test('the server closes: code and reason on both ends, onClose after close() returns', async (t) => {
  const server = await startServer(t);
  const { rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  assert.throws(() => remote.socket.close(1005, ''), RangeError);
  assert.throws(() => remote.socket.close(2000, ''), RangeError);
  remote.socket.close(1001, 'é'.repeat(100));
  // uWS runs its close callback inside end(); the owner must not be re-entered from close().
  assert.equal(remote.rec.closes.length, 0);
  assert.equal(remote.socket.send(bytes(1)), 'dropped');
  await until(() => rec.closes.length === 1 && remote.rec.closes.length === 1, 'both closes');
  assert.deepEqual(rec.closes, [{ code: 1001, reason: 'é'.repeat(61) }]);
  assert.deepEqual(remote.rec.closes, [{ code: 1001, reason: 'é'.repeat(61) }]);
  assert.throws(() => remote.socket.close(1006, ''), RangeError, 'still a caller bug after the close');
});

test('terminate is seen as 1006 on both ends', async (t) => {
  const server = await startServer(t);
  const { rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  remote.socket.terminate();
  remote.socket.terminate();
  await until(() => rec.closes.length === 1 && remote.rec.closes.length === 1, 'both closes');
  assert.deepEqual(rec.closes, [{ code: 1006, reason: '' }]);
  assert.deepEqual(remote.rec.closes, [{ code: 1006, reason: '' }]);
});

test('closing or terminating inside connection() still reports onClose', async (t) => {
  const server = await startServer(t, {
    onConnection: (socket) => {
      socket.send(bytes(1));
      socket.close(4009, 'full');
    },
  });
  const { rec } = await connect(t, server.url);
  await until(() => rec.closes.length === 1 && server.accepted[0]?.rec.closes.length === 1, 'both closes');
  assert.deepEqual(
    rec.messages.map((m) => m.data),
    [bytes(1)],
  );
  assert.deepEqual(rec.closes, [{ code: 4009, reason: 'full' }]);
  assert.deepEqual(server.accepted[0]!.rec.closes, [{ code: 4009, reason: 'full' }]);
});

test('pause stops delivery; resume delivers the rest in order', async (t) => {
  const server = await startServer(t, { onConnection: (socket) => socket.pause() });
  const { socket } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  for (let i = 0; i < 10; i++) socket.send(bytes(i));
  await delay(50);
  assert.equal(remote.rec.messages.length, 0);
  remote.socket.resume();
  // Delivered asynchronously, as by ws.
  assert.equal(remote.rec.messages.length, 0);
  await until(() => remote.rec.messages.length === 10, 'messages after resume');
  assert.deepEqual(
    remote.rec.messages.map((m) => m.data[0]),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
  );
  // Later messages keep their place behind the waiting ones, and a pause from a handler holds.
  let seen = 0;
  const server2 = await startServer(t, {
    onConnection: (s) => s.pause(),
    hooks: {
      onMessage: () => {
        seen++;
        if (seen === 3) server2.accepted[0]!.socket.pause();
      },
    },
  });
  const c2 = await connect(t, server2.url);
  await until(() => server2.accepted.length === 1, 'connection 2');
  for (let i = 0; i < 5; i++) c2.socket.send(bytes(i));
  await delay(30);
  server2.accepted[0]!.socket.resume();
  await until(() => seen === 3, 'three messages');
  await delay(30);
  assert.equal(seen, 3);
  server2.accepted[0]!.socket.resume();
  await until(() => seen === 5, 'the rest');
  assert.deepEqual(
    server2.accepted[0]!.rec.messages.map((m) => m.data[0]),
    [0, 1, 2, 3, 4],
  );
});

test('a peer that keeps sending while paused is closed with 1008 at maxPausedBytes', async (t) => {
  const server = await startServer(t, {
    transport: { maxPausedBytes: 10_000 },
    onConnection: (socket) => socket.pause(),
  });
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  for (let i = 0; i < 20; i++) socket.send(new Uint8Array(1000));
  const remote = server.accepted[0]!;
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(remote.rec.closes, [{ code: 1008, reason: 'read buffer limit exceeded' }]);
  assert.deepEqual(rec.closes, [{ code: 1008, reason: 'read buffer limit exceeded' }]);
  assert.equal(remote.rec.messages.length, 0, 'a paused owner loses what waited');
});

test('send answers backpressure when the peer stops reading, then onDrain once it reads', async (t) => {
  const server = await startServer(t);
  const { socket: client, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  client.pause();

  const chunk = new Uint8Array(64 * 1024);
  let sent = 0;
  let result: SendResult = 'ok';
  for (; sent < 2000 && result === 'ok'; ) {
    result = remote.socket.send(chunk);
    sent++;
  }
  assert.equal(result, 'backpressure');
  assert.ok(remote.socket.bufferedAmount > DEFAULT_HIGH_WATER_MARK);
  await delay(20);
  assert.equal(remote.rec.drains, 0);

  client.resume();
  await until(() => remote.rec.drains === 1, 'drain');
  assert.ok(remote.socket.bufferedAmount <= DEFAULT_HIGH_WATER_MARK);
  await until(() => rec.messages.length === sent, 'all messages', 5000);
  assert.equal(remote.rec.drains, 1);
});

test('a send beyond maxBackpressure is dropped and closes with 1008, never silently', async (t) => {
  const server = await startServer(t, { transport: { highWaterMark: 1024, maxBackpressure: 256 * 1024 } });
  const { socket: client, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  client.pause();
  const chunk = new Uint8Array(64 * 1024);
  const results = new Set<SendResult>();
  let result: SendResult = 'ok';
  for (let i = 0; i < 2000 && result !== 'dropped'; i++) {
    result = remote.socket.send(chunk);
    results.add(result);
  }
  assert.equal(result, 'dropped');
  assert.ok(results.has('backpressure'), 'backpressure came first');
  await until(() => remote.rec.closes.length === 1, 'owner close');
  assert.deepEqual(remote.rec.closes, [{ code: 1008, reason: 'send buffer limit exceeded' }]);
  client.resume();
  await until(() => rec.closes.length === 1, 'client close', 5000);
  // uWS drops the close frame as well, being over the same limit: the peer sees the TCP close.
  assert.deepEqual(rec.closes, [{ code: 1006, reason: '' }]);
});

test('only the configured path is upgraded (404); plain HTTP gets 426, other upgrades 400', async (t) => {
  const server = await startServer(t, { transport: { path: '/ws' } });
  await assert.rejects(
    wsClientTransport().connect(`${server.url}/nope`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    {
      status: 404,
    },
  );
  assert.equal(server.upgrades.length, 0);
  const res = await fetch(server.url.replace('ws:', 'http:'));
  assert.equal(res.status, 426);
  assert.equal(await res.text(), 'Upgrade Required');
  const h2c = await new Promise<number>((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port: server.port,
      path: '/ws',
      headers: { connection: 'Upgrade', upgrade: 'h2c' },
    });
    req.on('response', (r) => {
      r.resume();
      resolve(r.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(h2c, 400);
  assert.equal((await rawUpgrade(server.port, '/ws', { 'sec-websocket-version': '7' })).status, 400);
  assert.equal((await rawUpgrade(server.port, '/ws', { 'sec-websocket-key': 'not base64 but 24 chars!' })).status, 400);
  assert.equal(server.upgrades.length, 0);
  await connect(t, `${server.url}/ws?x=1`);
  assert.equal(server.upgrades.length, 1);
});

test('connecting to a closed port rejects with ECONNREFUSED', async () => {
  const port = await closedPort();
  await assert.rejects(
    wsClientTransport().connect(`ws://127.0.0.1:${port}/`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    {
      code: 'ECONNREFUSED',
    },
  );
});

test('stop() terminates open connections and pending upgrades, is idempotent, and frees the port', async (t) => {
  let pendingDecisions = 0;
  const server = await startServer(t, {
    upgrade: (request) => {
      if (request.path !== '/pending') return { accept: true };
      pendingDecisions++;
      return new Promise<UpgradeDecision>(() => {});
    },
  });
  const a = await connect(t, server.url);
  const b = await connect(t, server.url);
  await until(() => server.accepted.length === 2, 'connections');
  const pendingAttempt = wsClientTransport().connect(
    `${server.url}/pending`,
    { maxMessageSize: MAX, connectTimeout: 2000 },
    recorder(),
  );
  pendingAttempt.catch(() => {});
  await until(() => pendingDecisions === 1, 'pending upgrade');

  const first = server.transport.stop();
  const second = server.transport.stop();
  await Promise.all([first, second]);
  // Every owner-side onClose ran before stop() resolved.
  assert.deepEqual(
    server.accepted.map((x) => x.rec.closes),
    [[{ code: 1006, reason: '' }], [{ code: 1006, reason: '' }]],
  );
  await until(() => a.rec.closes.length === 1 && b.rec.closes.length === 1, 'client closes');
  assert.equal(a.rec.closes[0]!.code, 1006);
  await assert.rejects(pendingAttempt);
  assert.equal(server.transport.address(), null);
  await server.transport.stop();
  await assert.rejects(
    wsClientTransport().connect(server.url, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    {
      code: 'ECONNREFUSED',
    },
  );
});

test('start() is idempotent and rejects with EADDRINUSE when the port is taken', async (t) => {
  const server = await startServer(t);
  await server.transport.start(
    { upgrade: () => ({ accept: true }), connection: () => recorder() },
    { maxMessageSize: MAX },
  );
  assert.deepEqual(server.transport.address(), { host: '127.0.0.1', port: server.port });

  const other = uwsTransport({ port: server.port });
  await assert.rejects(
    other.start({ upgrade: () => ({ accept: true }), connection: () => recorder() }, { maxMessageSize: MAX }),
    {
      code: 'EADDRINUSE',
    },
  );
  assert.equal(other.address(), null);
  await other.stop();

  // A port held by a plain Node server.
  const http = createHttpServer();
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => http.close(() => resolve())));
  const taken = uwsTransport({ port: (http.address() as { port: number }).port });
  await assert.rejects(
    taken.start({ upgrade: () => ({ accept: true }), connection: () => recorder() }, { maxMessageSize: MAX }),
    {
      code: 'EADDRINUSE',
    },
  );
  assert.equal(taken.address(), null);
  await assert.rejects(
    taken.start({ upgrade: () => ({ accept: true }), connection: () => recorder() }, { maxMessageSize: 0 }),
    RangeError,
  );
});

test('stop() during start() leaves nothing listening; start() after stop() listens again', async (t) => {
  const transport = uwsTransport({ port: 0 });
  const handlers = { upgrade: () => ({ accept: true }) as const, connection: () => recorder() };
  const started = transport.start(handlers, { maxMessageSize: MAX });
  await transport.stop();
  await started;
  assert.equal(transport.address(), null);

  await transport.start(handlers, { maxMessageSize: MAX });
  t.after(() => transport.stop());
  const port = transport.address()!.port;
  const { socket } = await connect(t, `ws://127.0.0.1:${port}`);
  assert.equal(socket.send(bytes(1)), 'ok');
});

test('invalid options are rejected up front (uWS would abort the process on some)', () => {
  assert.throws(() => uwsTransport({ idleTimeout: 5 }), RangeError);
  assert.throws(() => uwsTransport({ idleTimeout: 961 }), RangeError);
  assert.throws(() => uwsTransport({ port: 70000 }), RangeError);
  assert.throws(() => uwsTransport({ path: 'ws' }), RangeError);
  assert.throws(() => uwsTransport({ highWaterMark: -1 }), RangeError);
  assert.throws(() => uwsTransport({ highWaterMark: 1024, maxBackpressure: 1024 }), RangeError);
  assert.throws(() => uwsTransport({ maxPausedBytes: Number.NaN }), RangeError);
  assert.throws(() => uwsTransport({ tls: { key: '', cert: 'x' } }), TypeError);
  uwsTransport({ idleTimeout: 8 });
  uwsTransport({ idleTimeout: 960 });
});

test('ping reaches the peer as onPing, and the pong comes back as onPing', async (t) => {
  const server = await startServer(t);
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  socket.ping();
  await until(() => remote.rec.pings === 1 && rec.pings === 1, 'ping and pong');
  remote.socket.ping();
  await until(() => remote.rec.pings === 2 && rec.pings === 2, 'ping and pong from the server');
});

test('a raw peer sending a text frame is delivered with binary=false', async (t) => {
  const server = await startServer(t);
  const raw = await rawWebSocket(t, server.port);
  // Masked text frame "hi".
  raw.write(maskedFrame(0x1, Uint8Array.from([0x68, 0x69])));
  await until(() => server.accepted[0]?.rec.messages.length === 1, 'text frame');
  assert.deepEqual(server.accepted[0]!.rec.messages[0], { data: new TextEncoder().encode('hi'), binary: false });
});

test('sends after the peer is gone answer dropped and never throw', async (t) => {
  const server = await startServer(t);
  const { socket } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  socket.terminate();
  const results = new Set<SendResult>();
  const deadline = Date.now() + 2000;
  // Sends race the close: each one is ok/backpressure until uWS notices, then dropped.
  while (remote.rec.closes.length === 0 && Date.now() < deadline) {
    results.add(remote.socket.send(bytes(1)));
    results.add(remote.socket.sendText('x'));
    await delay(1);
  }
  assert.equal(remote.rec.closes.length, 1);
  assert.equal(remote.socket.send(bytes(1)), 'dropped');
  assert.equal(remote.socket.sendText('x'), 'dropped');
  assert.equal(remote.socket.bufferedAmount, 0);
  remote.socket.ping();
  remote.socket.close(1000, '');
  remote.socket.terminate();
  for (const result of results) assert.ok(['ok', 'backpressure', 'dropped'].includes(result));
});

test('200 connections destroyed abruptly while the server sends to them: no error escapes', async (t) => {
  const count = 200;
  const server = await startServer(t);
  const clients: WebSocket[] = [];
  t.after(() => {
    for (const ws of clients) ws.terminate();
  });
  let opened = 0;
  for (let i = 0; i < count; i++) {
    const ws = new WebSocket(server.url, { perMessageDeflate: false });
    ws.on('error', () => {});
    ws.once('open', () => opened++);
    clients.push(ws);
  }
  await until(() => server.accepted.length === count && opened === count, 'all connections', 5000);

  // The server writes to every socket on every turn, open or not, until all are closed.
  const results = new Map<SendResult, number>();
  const payload = new Uint8Array(2048);
  let sending = true;
  const loop = (async () => {
    const deadline = Date.now() + 5000;
    while (sending && Date.now() < deadline) {
      for (const { socket } of server.accepted) {
        const result = socket.send(payload);
        results.set(result, (results.get(result) ?? 0) + 1);
        socket.ping();
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  // Destroy the TCP sockets at once, at staggered moments, without a close frame.
  for (const [i, ws] of clients.entries()) {
    setTimeout(() => (ws as unknown as { _socket: Socket | null })._socket?.destroy(), i % 20);
  }
  await until(() => server.accepted.every((a) => a.rec.closes.length === 1), 'all closes', 5000);
  sending = false;
  await loop;
  assert.ok((results.get('dropped') ?? 0) > 0);
  for (const { rec } of server.accepted) {
    assert.equal(rec.closes.length, 1);
    assert.equal(rec.closes[0]!.code, 1006);
  }
});

test('wss: a TLS app from key and certificate files', async (t) => {
  let dir: string;
  try {
    dir = mkdtempSync(join(tmpdir(), 'duplexwire-uws-tls-'));
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
  } catch {
    t.skip('openssl not available');
    return;
  }
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const cert = readFileSync(join(dir, 'cert.pem'));
  const server = await startServer(t, {
    transport: { tls: { key: join(dir, 'key.pem'), cert: join(dir, 'cert.pem') } },
  });
  const url = server.url.replace('ws:', 'wss:');

  await assert.rejects(
    wsClientTransport().connect(url, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    (err: NodeJS.ErrnoException) => {
      assert.match(String(err.code), /SELF_SIGNED|UNABLE_TO_VERIFY/);
      return true;
    },
  );

  const { socket, rec } = await connect(t, url, { ca: cert });
  socket.sendText('secure');
  await until(() => server.accepted[0]?.rec.messages.length === 1, 'message over TLS');
  assert.equal(text(server.accepted[0]!.rec.messages[0]!.data), 'secure');
  server.accepted[0]!.socket.send(bytes(5));
  await until(() => rec.messages.length === 1, 'reply over TLS');

  const missing = uwsTransport({ port: 0, tls: { key: join(dir, 'nope.pem'), cert: join(dir, 'cert.pem') } });
  await assert.rejects(
    missing.start({ upgrade: () => ({ accept: true }), connection: () => recorder() }, { maxMessageSize: MAX }),
    /could not load the TLS key/,
  );
});

test('end to end: the duplexwire Server over uWS with the ws Client', async (t) => {
  const server = new Server({
    transport: uwsTransport({ port: 0 }),
    logger: silent,
    onRequest: (_conn, msg) => msg.payload,
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  const port = server.address()!.port;
  const client = new Client(`ws://127.0.0.1:${port}/`, {
    transport: wsClientTransport(),
    logger: silent,
    reconnect: false,
  });
  t.after(() => client.close());
  const disconnects: Array<{ code: number; reason: string }> = [];
  client.on('disconnect', (info) => disconnects.push(info));
  await client.connect();
  assert.deepEqual(client.serverInfo, {
    major: 2,
    minor: client.serverInfo!.minor,
    readTimeout: client.serverInfo!.readTimeout,
    maxMessageSize: MAX,
  });
  assert.equal(payloadText(await client.request('echo', utf8('over uWS'))), 'over uWS');
  const big = 'x'.repeat(200_000);
  assert.equal(payloadText(await client.request('echo', utf8(big))), big);
  const replies = await Promise.all(Array.from({ length: 100 }, (_, i) => client.request('echo', utf8(`n${i}`))));
  assert.deepEqual(
    replies.map(payloadText),
    Array.from({ length: 100 }, (_, i) => `n${i}`),
  );

  await server.shutdown({ timeout: 200 });
  await until(() => disconnects.length === 1, 'client disconnect');
  assert.equal(server.address(), null);
});

test('loading: a clear error without uWebSockets.js; importing duplexwire never loads it', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'duplexwire-uws-missing-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const file of ['uws.ts', 'close-frame.ts', 'server-lifecycle.ts', 'types.ts'])
    copyFileSync(join(ROOT, 'transports', file), join(dir, file));
  // Outside the package, so `uWebSockets.js` cannot be resolved.
  const missing = `
    try { await import(${JSON.stringify(join(dir, 'uws.ts'))}); console.log('loaded'); }
    catch (e) { console.log(JSON.stringify({ message: e.message, cause: e.cause?.code })); }
  `;
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', missing], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 20_000,
  });
  const result = JSON.parse(out.trim()) as { message: string; cause: string };
  assert.match(
    result.message,
    /^duplexwire\/transports\/uws needs the optional peer dependency uWebSockets\.js: npm install /,
  );
  assert.equal(result.cause, 'MODULE_NOT_FOUND');

  const check = (specifier: string): boolean => {
    const script = `
      import { createRequire } from 'node:module';
      await import(${JSON.stringify(specifier)});
      const cache = createRequire(import.meta.url).cache;
      console.log(Object.keys(cache).some((k) => k.includes('uWebSockets.js')));
    `;
    return JSON.parse(
      execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 20_000,
      }).trim(),
    ) as boolean;
  };
  assert.equal(check(join(ROOT, 'src/index.ts')), false, 'duplexwire does not load uWS');
  assert.equal(check(join(ROOT, 'transports/uws.ts')), true, 'the subpath does');
});
