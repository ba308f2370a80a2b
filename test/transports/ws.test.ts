/**
 * The `ws` transports: the server transport contract (server-contract.ts), then what only this
 * adapter has: attaching to an HTTP server the application owns, and client-side argument checks.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';
import { DEFAULT_HIGH_WATER_MARK, wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { bytes, connectWith, MAX, rawUpgrade, rawWebSocket, recorder, serve, until } from './helpers.ts';
import { loopbackFactory, serverTransportContract } from './server-contract.ts';

serverTransportContract(
  'ws',
  loopbackFactory(
    async ({ host, port = 0, path, tls }) =>
      wsTransport({
        host,
        port,
        ...(path === undefined ? {} : { path }),
        // PEM contents: the ws transport takes what `https.createServer` takes.
        ...(tls === undefined ? {} : { tls: { key: readFileSync(tls.keyFile), cert: readFileSync(tls.certFile) } }),
      }),
    DEFAULT_HIGH_WATER_MARK,
  ),
  {
    network: true,
    tls: true,
    pauseHoldsReadMessages: false,
    pauseHoldsClose: true,
    closeReportsPeerCode: true,
    farOversizeGetsCloseFrame: true,
    framesBeforeUpgrade: true,
  },
);

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

  const server = await serve(t, wsTransport({ server: http, path: '/ws' }));
  assert.deepEqual(server.transport.address(), { host: '127.0.0.1', port });
  const url = `ws://127.0.0.1:${port}`;

  const { socket } = await connectWith(t, wsClientTransport(), `${url}/ws?x=1`);
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

test('attach mode with exclusive: the transport answers every upgrade (404 other paths, 400 other protocols)', async (t) => {
  const http: Server = createServer((_req, res) => res.end('app'));
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => http.close(() => resolve())));
  t.after(() => http.closeAllConnections());
  const port = (http.address() as { port: number }).port;
  const server = await serve(t, wsTransport({ server: http, path: '/ws', exclusive: true }));
  const url = `ws://127.0.0.1:${port}`;
  await connectWith(t, wsClientTransport(), `${url}/ws`);
  await assert.rejects(
    wsClientTransport().connect(`${url}/other`, { maxMessageSize: MAX, connectTimeout: 2000 }, recorder()),
    { status: 404 },
  );
  assert.equal((await rawUpgrade(port, '/ws', { upgrade: 'h2c' })).status, 400);
  assert.equal(server.upgrades.length, 1);
  // Before the server's close in t.after, which waits for every connection.
  await server.transport.stop();
});

test("acceptNoProtocol: a server choosing none of the offered subprotocols is accepted with protocol ''", async (t) => {
  // Answers with no subprotocol (twice), then 'chat.v2', then none.
  const choices = ['', '', 'chat.v2'];
  let next = 0;
  const server = await serve(t, wsTransport({ host: '127.0.0.1', port: 0 }), {
    upgrade: () => ({ accept: true, protocol: choices[next++] ?? '' }),
  });
  const url = `ws://127.0.0.1:${server.transport.address()!.port}/`;
  const client = wsClientTransport();
  const offer = { maxMessageSize: MAX, connectTimeout: 2000, protocols: ['chat.v1', 'chat.v2'] };
  // Without it, ws's own rule: the attempt fails.
  await assert.rejects(client.connect(url, offer, recorder()), /Server sent no subprotocol/);
  // With it: the server's choice as it is, none or one.
  const rec = recorder();
  const none = await client.connect(url, { ...offer, acceptNoProtocol: true }, rec);
  t.after(() => none.terminate());
  assert.equal(none.protocol, '');
  assert.equal(none.sendText('hello'), 'ok');
  await until(() => server.accepted.at(-1)?.rec.messages.length === 1, 'a message over it');
  assert.equal(server.accepted.at(-1)!.socket.protocol, '');
  const chosen = await client.connect(url, { ...offer, acceptNoProtocol: true }, recorder());
  t.after(() => chosen.terminate());
  assert.equal(chosen.protocol, 'chat.v2');
  // Offering nothing is unchanged.
  const plain = await client.connect(
    url,
    { maxMessageSize: MAX, connectTimeout: 2000, acceptNoProtocol: true },
    recorder(),
  );
  t.after(() => plain.terminate());
  assert.equal(plain.protocol, '');

  // A server answering one that was not offered still fails the attempt (RFC 6455 §4.1).
  const rogue = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'never-offered' });
  t.after(() => new Promise<void>((resolve) => rogue.close(() => resolve())));
  await new Promise((resolve) => rogue.once('listening', resolve));
  rogue.on('connection', (ws) => ws.on('error', () => {}));
  const rogueUrl = `ws://127.0.0.1:${(rogue.address() as AddressInfo).port}/`;
  await assert.rejects(
    client.connect(rogueUrl, { ...offer, acceptNoProtocol: true }, recorder()),
    /Server sent an invalid subprotocol/,
  );
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

// Found by the fault suite (test/chaos/faults.ts): without it a message that takes longer than the
// read timeout to arrive over a slow link was cut by that timeout, its bytes coming all along.
test('onActivity: chunks that complete no message are reported, on both ends; whole small messages and pings are not', async (t) => {
  const server = await serve(t, wsTransport({ host: '127.0.0.1', port: 0 }));
  const { socket, rec } = await connectWith(t, wsClientTransport(), server.url);
  await until(() => server.accepted.length === 1, 'accepted');
  const remote = server.accepted[0]!;
  for (let i = 0; i < 20; i++) {
    socket.send(bytes(i));
    remote.socket.send(bytes(i));
  }
  socket.ping();
  remote.socket.ping();
  await until(() => rec.messages.length === 20 && remote.rec.messages.length === 20, 'small messages');
  await until(() => rec.pings === 2 && remote.rec.pings === 2, 'pings and pongs');
  assert.equal(rec.activities, 0);
  assert.equal(remote.rec.activities, 0);
  // 512 KiB cannot come in one read (64 KiB at most): the reads before the last complete nothing.
  const large = new Uint8Array(512 * 1024).fill(9);
  socket.send(large);
  remote.socket.send(large);
  await until(() => rec.messages.length === 21 && remote.rec.messages.length === 21, 'large messages');
  assert.ok(rec.activities >= 3, `client: ${rec.activities}`);
  assert.ok(remote.rec.activities >= 3, `server: ${remote.rec.activities}`);
});

test('a client sending more than 64 KiB before its upgrade is answered is cut off, and the owner told', async (t) => {
  const fixture = await serve(t, wsTransport({ host: '127.0.0.1', port: 0 }), {
    upgrade: () => new Promise(() => {}),
  });
  const raw = await rawWebSocket(t, fixture.port, '', false);
  await until(() => fixture.upgrades.length === 1, 'the upgrade asked about');
  const closed = new Promise<void>((resolve) => raw.once('close', () => resolve()));
  raw.write(Buffer.alloc(64 * 1024 + 1));
  await closed;
  await until(() => fixture.upgrades[0]!.signal?.aborted === true, 'the signal aborted');
});

test("a header named __proto__ reaches the owner like any other (Node's req.headers loses it), repeats joined", async (t) => {
  // (uWebSockets.js refuses a header name with `_` in its parser: the contract cannot ask it.)
  const fixture = await serve(t, wsTransport({ host: '127.0.0.1', port: 0 }));
  await rawWebSocket(t, fixture.port, '__proto__: y\r\n__Proto__: z\r\nConstructor: c\r\n');
  await until(() => fixture.upgrades.length === 1, 'the upgrade asked about');
  const { headers } = fixture.upgrades[0]!;
  assert.deepEqual(Object.getOwnPropertyDescriptor(headers, '__proto__')?.value, 'y, z');
  assert.equal(Object.getPrototypeOf(headers), null);
  assert.equal(headers.constructor, 'c');
});

test('a client gone when the decision comes, its socket closing but not closed yet: the signal is aborted all the same', async (t) => {
  const http = createServer();
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => http.close(() => resolve())));
  let accept = (): void => {};
  // Registered before the transport's: the decision comes in the very read that brings the
  // client's FIN, before the socket, destroyed for it, emits 'close'.
  http.on('upgrade', (_req, socket: Duplex) => socket.once('end', () => accept()));
  const fixture = await serve(t, wsTransport({ server: http }), {
    upgrade: () =>
      new Promise((resolve) => {
        accept = () => resolve({ accept: true });
      }),
  });
  const raw = await rawWebSocket(t, (http.address() as AddressInfo).port, '', false);
  await until(() => fixture.upgrades.length === 1, 'the upgrade asked about');
  raw.end();
  await until(() => fixture.upgrades[0]!.signal?.aborted === true, 'the signal aborted');
  assert.equal(fixture.accepted.length, 0);
});

test("writeBatching 'immediate': the sends of a turn stay corked past its microtasks, written at setImmediate, in order", async (t) => {
  for (const writeBatching of ['microtask', 'immediate'] as const) {
    const fixture = await serve(t, wsTransport({ host: '127.0.0.1', port: 0, writeBatching }));
    const { rec } = await connectWith(t, wsClientTransport({ writeBatching }), fixture.url);
    await until(() => fixture.accepted.length === 1, 'accepted');
    const server = fixture.accepted[0]!.socket;
    for (let i = 0; i < 3; i++) server.send(Uint8Array.of(i));
    await Promise.resolve();
    await Promise.resolve();
    // Corked bytes are still the socket's own; a microtask's uncork has handed them to the OS.
    if (writeBatching === 'immediate') assert.ok(server.bufferedAmount > 0, 'still corked after the microtasks');
    else assert.equal(server.bufferedAmount, 0, 'written once the microtasks ran');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(server.bufferedAmount, 0);
    await until(() => rec.messages.length === 3, 'the three messages');
    assert.deepEqual(
      rec.messages.map((m) => [...m.data]),
      [[0], [1], [2]],
    );
  }
  assert.throws(() => wsTransport({ writeBatching: 'later' as 'immediate' }), RangeError);
  assert.throws(() => wsClientTransport({ writeBatching: 'later' as 'immediate' }), RangeError);
});
