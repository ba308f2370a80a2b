/**
 * The fault proxy itself (test/fixtures/fault-proxy.ts), over raw TCP: each fault does what it
 * says, so that the fault scenarios' passing means something. A plain TCP server behind it
 * records what it gets and can talk back.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { type TestContext, test } from 'node:test';
import { FaultProxy } from '../fixtures/fault-proxy.ts';
import { delay, waitFor } from '../helpers.ts';

interface End {
  readonly socket: Socket;
  /** Bytes received so far. */
  readonly received: Buffer[];
  bytes(): number;
  /** Set when the peer's FIN arrived. */
  ended: boolean;
  /** The error the socket failed with (ECONNRESET for a reset). */
  error: (Error & { code?: string }) | undefined;
  readonly closed: Promise<void>;
}

function watch(socket: Socket): End {
  const end: End = {
    socket,
    received: [],
    bytes: () => end.received.reduce((n, b) => n + b.length, 0),
    ended: false,
    error: undefined,
    // Not events.once: it rejects on 'error', and a reset is one.
    closed: new Promise<void>((resolve) => socket.once('close', () => resolve())),
  };
  socket.on('data', (chunk: Buffer) => end.received.push(chunk));
  socket.on('end', () => {
    end.ended = true;
  });
  socket.on('error', (error) => {
    end.error = error;
  });
  return end;
}

/** A TCP server behind a FaultProxy, and a client connected through it. */
async function rig(t: TestContext, maxHeldBytes?: number) {
  const accepted: End[] = [];
  const server = createServer({ allowHalfOpen: true }, (socket) => accepted.push(watch(socket)));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const proxy = await FaultProxy.start({
    targetPort: (server.address() as AddressInfo).port,
    ...(maxHeldBytes === undefined ? {} : { maxHeldBytes }),
  });
  const next = proxy.nextLink();
  const socket = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
  const client = watch(socket);
  await once(socket, 'connect');
  const link = await next;
  await waitFor(() => accepted.length === 1, 2_000, 'the server side');
  t.after(async () => {
    socket.destroy();
    for (const end of accepted) end.socket.destroy();
    await proxy.close();
    await new Promise((resolve) => server.close(resolve));
  });
  return { proxy, link, client, server: accepted[0]!, socket };
}

test('fault proxy: transparent without faults, both ways, FIN passed on', async (t) => {
  const { client, server, socket } = await rig(t);
  socket.write('hello');
  server.socket.write('world');
  await waitFor(() => server.bytes() === 5 && client.bytes() === 5, 2_000, 'both ways');
  assert.equal(Buffer.concat(server.received).toString(), 'hello');
  assert.equal(Buffer.concat(client.received).toString(), 'world');
  socket.end();
  await waitFor(() => server.ended, 2_000, 'the FIN');
  // Half-closed: the other way still flows.
  server.socket.end('bye');
  await waitFor(() => client.ended, 2_000, 'the FIN back');
  assert.equal(Buffer.concat(client.received).toString(), 'worldbye');
});

test('fault proxy: split writes segments of 1..N bytes, latency holds them, order is kept', async (t) => {
  const { link, server, socket } = await rig(t);
  link.up.split(2).latency(40);
  const started = performance.now();
  const data = Buffer.from(Array.from({ length: 200 }, (_, i) => i));
  socket.write(data);
  await waitFor(() => server.bytes() === 200, 5_000, 'everything');
  assert.ok(performance.now() - started >= 35, 'the latency');
  assert.deepEqual(Buffer.concat(server.received), data);
  assert.ok(link.up.segments >= 100, `${link.up.segments} segments`);
  assert.ok(server.received.length >= 20, `read in ${server.received.length} pieces`);
});

test('fault proxy: throttle paces the bytes', async (t) => {
  const { link, client, server } = await rig(t);
  link.down.throttle(20_000);
  const started = performance.now();
  server.socket.write(Buffer.alloc(10_000));
  await waitFor(() => client.bytes() === 10_000, 5_000, 'everything');
  const took = performance.now() - started;
  assert.ok(took >= 350, `10 kB at 20 kB/s took ${Math.round(took)} ms`);
});

test('fault proxy: pause holds bytes (at most maxHeldBytes, then TCP pushes back), resume delivers them in order', async (t) => {
  const { link, server, socket } = await rig(t, 64 * 1024);
  link.up.pause();
  const data = Buffer.alloc(4 * 1024 * 1024, 3);
  socket.write(data);
  await delay(200);
  assert.equal(server.bytes(), 0, 'nothing passes');
  assert.ok(link.up.held > 0);
  assert.ok(link.up.maxHeld <= 64 * 1024 + 64 * 1024, `held ${link.up.maxHeld}`);
  assert.ok(socket.writableLength > 0, 'the sender is pushed back');
  link.up.resume();
  await waitFor(() => server.bytes() === data.length, 10_000, 'everything');
  assert.ok(link.up.maxHeld <= 64 * 1024 + 64 * 1024, `held ${link.up.maxHeld}`);
});

test('fault proxy: a FIN behind a pause is held too (a partition)', async (t) => {
  const { link, server, socket } = await rig(t);
  link.up.pause();
  socket.end('last');
  await delay(100);
  assert.equal(server.ended, false);
  link.up.resume();
  await waitFor(() => server.ended, 2_000, 'the FIN');
  assert.equal(Buffer.concat(server.received).toString(), 'last');
});

test('fault proxy: end() half-closes one direction only', async (t) => {
  const { link, client, server, socket } = await rig(t);
  link.down.end();
  await waitFor(() => client.ended, 2_000, 'the FIN to the client');
  assert.equal(server.ended, false);
  socket.write('still flowing');
  await waitFor(() => server.bytes() === 13, 2_000, 'the other way');
});

test('fault proxy: reset() resets both ends (ECONNRESET)', async (t) => {
  const { link, client, server } = await rig(t);
  link.reset();
  await waitFor(() => client.socket.destroyed && server.socket.destroyed, 5_000, 'both ends');
  assert.equal(client.error?.code, 'ECONNRESET');
  assert.equal(server.error?.code, 'ECONNRESET');
  await link.closed;
});

test('fault proxy: dropAfter(n) lets exactly n bytes through, then resets', async (t) => {
  const { link, client, server, socket } = await rig(t);
  link.up.dropAfter(1000);
  socket.write(Buffer.alloc(5000, 1));
  await waitFor(() => client.socket.destroyed && (server.socket.destroyed || server.ended), 5_000, 'both ends');
  assert.equal(link.up.forwarded, 1000);
  assert.ok(server.bytes() <= 1000);
  assert.equal(client.error?.code, 'ECONNRESET');
  // A reset (usually seen as ECONNRESET; Linux may show a RST landing on unread bytes as an end).
  assert.ok(server.error?.code === 'ECONNRESET' || server.ended, 'the server side ended');
});

test('fault proxy: close() ends every link and the listener', async (t) => {
  const { proxy, client, server } = await rig(t);
  await proxy.close();
  await waitFor(() => client.socket.destroyed && server.socket.destroyed, 5_000, 'both ends');
  assert.equal(proxy.links.size, 0);
  await assert.rejects(
    new Promise((resolve, reject) => connect(proxy.port, '127.0.0.1').once('connect', resolve).once('error', reject)),
    { code: 'ECONNREFUSED' },
  );
});
