import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, request as httpRequest, type Server } from 'node:http';
import { createServer as createNetServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import {
  DEFAULT_HIGH_WATER_MARK,
  type WsServerTransportOptions,
  wsClientTransport,
  wsTransport,
} from '../../transports/ws.ts';
import type {
  ConnectFailure,
  ServerTransport,
  SocketHandlers,
  TransportSocket,
  UpgradeDecision,
  UpgradeRequest,
} from '../../transports/types.ts';
import { bytes, delay, type Recorder, recorder, text, until } from './helpers.ts';

const MAX = 1024 * 1024;

interface Accepted {
  readonly socket: TransportSocket;
  readonly request: UpgradeRequest;
  readonly rec: Recorder;
}

interface Fixture {
  readonly transport: ServerTransport;
  readonly url: string;
  readonly accepted: Accepted[];
  readonly upgrades: UpgradeRequest[];
}

interface FixtureOptions {
  readonly transport?: WsServerTransportOptions;
  readonly maxMessageSize?: number;
  readonly upgrade?: (request: UpgradeRequest) => UpgradeDecision | Promise<UpgradeDecision>;
  /** Runs inside `connection`, before the handlers are returned. */
  readonly onConnection?: (socket: TransportSocket) => void;
  readonly hooks?: Partial<SocketHandlers>;
}

async function startServer(t: TestContext, options: FixtureOptions = {}): Promise<Fixture> {
  const transport = wsTransport({ port: 0, ...options.transport } as WsServerTransportOptions);
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
  return { transport, url: `ws://127.0.0.1:${address.port}`, accepted, upgrades };
}

async function connect(
  t: TestContext,
  url: string,
  options: { headers?: Record<string, string>; maxMessageSize?: number; hooks?: Partial<SocketHandlers> } = {},
): Promise<{ socket: TransportSocket; rec: Recorder }> {
  const rec = recorder(options.hooks);
  const socket = await wsClientTransport().connect(
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
  await until(() => rec.messages.length === 2, 'client messages');
  assert.deepEqual(rec.messages[0], { data: new Uint8Array(0), binary: true });
  assert.deepEqual(rec.messages[1], { data: new TextEncoder().encode('✓'), binary: false });
  assert.equal(remote.socket.remoteAddress, '127.0.0.1');
  assert.equal(socket.remoteAddress, '127.0.0.1');
});

test('delivered bytes are plain Uint8Arrays that stay valid after later messages', async (t) => {
  const server = await startServer(t);
  const { socket } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  const count = 200;
  for (let i = 0; i < count; i++) socket.send(new Uint8Array(300).fill(i));
  await until(() => remote.rec.messages.length === count, 'all messages');
  for (let i = 0; i < count; i++) {
    const { data } = remote.rec.messages[i]!;
    assert.equal(Object.getPrototypeOf(data), Uint8Array.prototype);
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
  assert.equal(server.accepted[0]!.request, request, 'connection() gets the same request');

  await connect(t, `${server.url}/`);
  await until(() => server.upgrades.length === 2, 'second upgrade');
  assert.equal(server.upgrades[1]!.query, '');
  assert.equal(server.upgrades[1]!.path, '/');
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
        : { accept: false, status: 503, body: 'busy', headers: { 'Retry-After': '5', 'Content-Length': '999' } },
  });
  const port = server.transport.address()!.port;
  const busy = await rawUpgrade(port, '/');
  assert.equal(busy.status, 503);
  assert.equal(busy.body, 'busy');
  assert.equal(busy.headers['retry-after'], '5');
  assert.equal(busy.headers['content-length'], '4');
  assert.equal(busy.headers.connection, 'close');
  assert.equal(busy.headers['content-type'], 'text/plain; charset=utf-8');

  const bad = await rawUpgrade(port, '/bad');
  assert.equal(bad.status, 500);
  assert.equal(bad.body, '');
  assert.equal(bad.headers['x-evil'], undefined);
  assert.equal(bad.headers['set-cookie'], undefined);
});

test('an async upgrade decision is awaited; a throwing one answers 500 without detail', async (t) => {
  const server = await startServer(t, {
    upgrade: async (request) => {
      await delay(20);
      if (request.path === '/boom') throw new Error('database password is hunter2');
      return { accept: true };
    },
  });
  const { socket } = await connect(t, `${server.url}/ok`);
  assert.equal(socket.send(bytes(7)), 'ok');
  await until(() => server.accepted[0]?.rec.messages.length === 1, 'message after async accept');

  await assert.rejects(
    wsClientTransport().connect(`${server.url}/boom`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    {
      status: 500,
      body: '',
    },
  );
});

test('a client that leaves during an async decision is dropped quietly', async (t) => {
  let decide: ((decision: UpgradeDecision) => void) | undefined;
  const server = await startServer(t, {
    upgrade: () =>
      new Promise<UpgradeDecision>((resolve) => {
        decide = resolve;
      }),
  });
  const rec = recorder();
  const attempt = wsClientTransport().connect(server.url, { maxMessageSize: MAX, connectTimeout: 100 }, rec);
  await assert.rejects(attempt, { code: 'ETIMEDOUT' });
  await delay(30);
  decide!({ accept: true });
  await delay(30);
  assert.equal(server.accepted.length, 0);
  assert.deepEqual(rec.events, []);
});

test('a message over maxMessageSize closes with 1009 on both ends (server limit)', async (t) => {
  const server = await startServer(t, { maxMessageSize: 1000 });
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  assert.equal(socket.send(new Uint8Array(1000)), 'ok');
  assert.equal(socket.send(new Uint8Array(1001)), 'ok');
  const remote = server.accepted[0]!;
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.equal(remote.rec.messages.length, 1);
  assert.deepEqual(remote.rec.closes, [{ code: 1009, reason: '' }]);
  assert.deepEqual(rec.closes, [{ code: 1009, reason: '' }]);
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

test('close code and reason are seen on both ends, once; close is safe to repeat', async (t) => {
  const server = await startServer(t);
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  socket.send(bytes(1));
  socket.close(4001, 'bye');
  socket.close(4002, 'again');
  assert.equal(socket.send(bytes(2)), 'dropped');
  assert.equal(socket.sendText('x'), 'dropped');
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(remote.rec.events, ['message', 'close']);
  assert.deepEqual(remote.rec.closes, [{ code: 4001, reason: 'bye' }]);
  assert.deepEqual(rec.closes, [{ code: 4001, reason: 'bye' }]);
  socket.close(1000, '');
  socket.ping();
  remote.socket.close(1000, '');
  assert.equal(remote.socket.send(bytes(3)), 'dropped');
  await delay(20);
  assert.equal(rec.closes.length, 1);
  assert.equal(remote.rec.closes.length, 1);
});

test('the server closes with a long reason cut to 123 bytes of valid UTF-8', async (t) => {
  const server = await startServer(t);
  const { rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  assert.throws(() => remote.socket.close(1005, ''), RangeError);
  assert.throws(() => remote.socket.close(2000, ''), RangeError);
  remote.socket.close(1001, 'é'.repeat(100));
  await until(() => rec.closes.length === 1 && remote.rec.closes.length === 1, 'both closes');
  assert.deepEqual(rec.closes, [{ code: 1001, reason: 'é'.repeat(61) }]);
  assert.deepEqual(remote.rec.closes, [{ code: 1001, reason: 'é'.repeat(61) }]);
});

test('terminate is seen as 1006 on both ends', async (t) => {
  const server = await startServer(t);
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  remote.socket.terminate();
  remote.socket.terminate();
  await until(() => rec.closes.length === 1 && remote.rec.closes.length === 1, 'both closes');
  assert.deepEqual(rec.closes, [{ code: 1006, reason: '' }]);
  assert.deepEqual(remote.rec.closes, [{ code: 1006, reason: '' }]);
  socket.terminate();
  assert.equal(socket.send(bytes(1)), 'dropped');
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
  await until(() => remote.rec.messages.length === 10, 'messages after resume');
  assert.deepEqual(
    remote.rec.messages.map((m) => m.data[0]),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
  );
});

test('send answers backpressure when the peer stops reading, then onDrain once it reads', async (t) => {
  const server = await startServer(t);
  const { socket: client, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  client.pause();

  // One buffer for every send: server frames are not masked, so ws queues views of it and the
  // loop costs no memory however full the kernel buffers are.
  const chunk = new Uint8Array(64 * 1024);
  let sent = 0;
  let result: string = 'ok';
  for (; sent < 2000 && result === 'ok'; ) {
    result = remote.socket.send(chunk);
    sent++;
  }
  assert.equal(result, 'backpressure');
  assert.ok(remote.socket.bufferedAmount > DEFAULT_HIGH_WATER_MARK);
  assert.equal(remote.rec.drains, 0);

  client.resume();
  await until(() => remote.rec.drains === 1, 'drain');
  assert.ok(remote.socket.bufferedAmount <= DEFAULT_HIGH_WATER_MARK);
  await until(() => rec.messages.length === sent, 'all messages', 5000);
  assert.equal(remote.rec.drains, 1);
});

test('the client side sees backpressure and onDrain too', async (t) => {
  const server = await startServer(t, { onConnection: (socket) => socket.pause() });
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  const chunk = new Uint8Array(64 * 1024);
  let sent = 0;
  let result: string = 'ok';
  for (; sent < 2000 && result === 'ok'; ) {
    result = socket.send(chunk);
    sent++;
  }
  assert.equal(result, 'backpressure');
  remote.socket.resume();
  await until(() => rec.drains === 1, 'drain');
  await until(() => remote.rec.messages.length === sent, 'all messages', 5000);
});

test('attach mode: only the configured path is handled; the server is left running', async (t) => {
  const http: Server = createServer((_req, res) => res.end('app'));
  // Another upgrade listener, as a second library on the same server would be.
  http.on('upgrade', (req, socket) => {
    if (req.url?.startsWith('/other'))
      socket.end('HTTP/1.1 418 I am a teapot\r\nContent-Length: 6\r\nConnection: close\r\n\r\nteapot');
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => http.close(() => resolve())));
  t.after(() => http.closeAllConnections());
  const port = (http.address() as { port: number }).port;

  const server = await startServer(t, { transport: { server: http, path: '/ws' } });
  assert.deepEqual(server.transport.address(), { host: '127.0.0.1', port });
  const url = `ws://127.0.0.1:${port}`;

  const { socket } = await connect(t, `${url}/ws?x=1`);
  assert.equal(socket.send(bytes(1)), 'ok');
  await until(() => server.accepted[0]?.rec.messages.length === 1, 'message');

  await assert.rejects(
    wsClientTransport().connect(`${url}/other`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    {
      status: 418,
      body: 'teapot',
    },
  );
  assert.equal(server.upgrades.length, 1, 'the transport did not see /other');

  const res = await fetch(`http://127.0.0.1:${port}/`);
  assert.equal(await res.text(), 'app');

  const listenersBefore = http.listenerCount('upgrade');
  await server.transport.stop();
  assert.equal(http.listenerCount('upgrade'), listenersBefore - 1);
  assert.equal(http.listening, true);
  assert.equal(server.transport.address(), null);
});

test('owned server: other paths get 404, plain HTTP 426, other upgrades 400', async (t) => {
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
  await res.text();
  const h2c = await new Promise<number>((resolve, reject) => {
    const port = server.transport.address()!.port;
    const req = httpRequest({
      host: '127.0.0.1',
      port,
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
  await connect(t, `${server.url}/ws`);
});

test('connecting to a closed port rejects with ECONNREFUSED and never calls onClose', async () => {
  const port = await closedPort();
  const rec = recorder();
  await assert.rejects(
    wsClientTransport().connect(`ws://127.0.0.1:${port}/`, { maxMessageSize: MAX, connectTimeout: 2000 }, rec),
    {
      code: 'ECONNREFUSED',
    },
  );
  await delay(20);
  assert.deepEqual(rec.events, []);
});

test('a malformed URL or a bad maxMessageSize rejects', async () => {
  const client = wsClientTransport();
  await assert.rejects(
    client.connect('not a url', { maxMessageSize: MAX, connectTimeout: 100 }, recorder()),
    SyntaxError,
  );
  await assert.rejects(
    client.connect('ws://127.0.0.1:1/', { maxMessageSize: 0, connectTimeout: 100 }, recorder()),
    RangeError,
  );
});

test('stop() terminates open connections, is idempotent, and frees the port', async (t) => {
  const server = await startServer(t);
  const a = await connect(t, server.url);
  const b = await connect(t, server.url);
  await until(() => server.accepted.length === 2, 'connections');

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
  assert.equal(server.transport.address(), null);
  await server.transport.stop();
  await assert.rejects(
    wsClientTransport().connect(server.url, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    {
      code: 'ECONNREFUSED',
    },
  );
});

test('start() is idempotent and rejects when the port is taken', async (t) => {
  const server = await startServer(t);
  const port = server.transport.address()!.port;
  await server.transport.start(
    { upgrade: () => ({ accept: true }), connection: () => recorder() },
    { maxMessageSize: MAX },
  );
  assert.equal(server.transport.address()!.port, port);

  const other = wsTransport({ port });
  await assert.rejects(
    other.start({ upgrade: () => ({ accept: true }), connection: () => recorder() }, { maxMessageSize: MAX }),
    {
      code: 'EADDRINUSE',
    },
  );
  assert.equal(other.address(), null);
  await other.stop();
});

test('stop() during start() leaves nothing listening', async () => {
  const transport = wsTransport({ port: 0 });
  const started = transport.start(
    { upgrade: () => ({ accept: true }), connection: () => recorder() },
    { maxMessageSize: MAX },
  );
  await transport.stop();
  await started;
  assert.equal(transport.address(), null);
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

test('wss: TLS server and client with a test CA', async (t) => {
  let dir: string;
  try {
    dir = mkdtempSync(join(tmpdir(), 'duplexwire-tls-'));
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
  const key = readFileSync(join(dir, 'key.pem'));
  const cert = readFileSync(join(dir, 'cert.pem'));
  const server = await startServer(t, { transport: { tls: { key, cert } } });
  const url = server.url.replace('ws:', 'wss:');

  await assert.rejects(
    wsClientTransport().connect(url, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    (err: NodeJS.ErrnoException) => {
      assert.match(String(err.code), /SELF_SIGNED|UNABLE_TO_VERIFY/);
      return true;
    },
  );

  const rec = recorder();
  const socket = await wsClientTransport({ tls: { ca: cert } }).connect(
    url,
    { maxMessageSize: MAX, connectTimeout: 2000 },
    rec,
  );
  t.after(() => socket.terminate());
  socket.sendText('secure');
  await until(() => server.accepted[0]?.rec.messages.length === 1, 'message over TLS');
  assert.equal(text(server.accepted[0]!.rec.messages[0]!.data), 'secure');
});

test('a raw peer sending a text frame is delivered with binary=false', async (t) => {
  const server = await startServer(t);
  const port = server.transport.address()!.port;
  const raw: Socket = netConnect(port, '127.0.0.1');
  t.after(() => raw.destroy());
  await new Promise<void>((resolve) => raw.once('connect', () => resolve()));
  raw.write(
    'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
  );
  // Masked text frame "hi" (RFC 6455 §5.7), sent with the upgrade so it lands in `head`.
  raw.write(Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0x68, 0x69]));
  await until(() => server.accepted[0]?.rec.messages.length === 1, 'text frame');
  assert.deepEqual(server.accepted[0]!.rec.messages[0], { data: new TextEncoder().encode('hi'), binary: false });
});
