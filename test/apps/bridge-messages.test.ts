/**
 * Bridge, messages: every client message is one signed `message` POST, strictly one in flight per
 * connection and in order; a 2xx body goes back to the client; a failed event closes the client
 * with 1011; a stalled backend pauses reading from the client after `maxQueuedMessages`, without
 * losing a message; the size limit applies to client messages (1009) and backend answers.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { CALLBACK_PREFIX } from '../../src/apps/bridge/index.ts';
import {
  type Answer,
  connected,
  messageHoldingBackend,
  roundTrip,
  startBackend,
  startBridge,
  untilMetric,
} from '../fixtures/bridge-helpers.ts';
import { delay, waitFor } from '../helpers.ts';

test('each message is a signed POST with its exact bytes, type and the callback URL; a 2xx body comes back', async (t) => {
  const backend = await startBackend(t, (req) => {
    if (req.event !== 'message') return { status: 204 };
    const body = req.body.toString('utf8');
    if (body === 'reply-text') return { status: 200, contentType: 'text/markdown; charset=utf-8', body: 'réponse' };
    if (body === 'reply-binary')
      return { status: 202, contentType: 'application/x-thing', body: Buffer.from([9, 8, 7]) };
    return { status: 200 };
  });
  const bridge = await startBridge(t, backend);
  const { client, id } = await connected(t, backend, bridge);
  const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  client.ws.send('héllo ✓');
  client.ws.send(binary);
  client.ws.send('');
  client.ws.send('reply-text');
  client.ws.send('reply-binary');
  const messages = await backend.waitFor((r) => r.event === 'message', 5);
  assert.equal(messages.length, 5);
  const token = new URL(messages[0]!.callback!).pathname.slice(CALLBACK_PREFIX.length);
  assert.match(token, /^[A-Za-z0-9_-]{32}$/);
  for (const message of messages) {
    assert.equal(message.method, 'POST');
    assert.equal(message.connection, id);
    assert.equal(message.callback, `${bridge.base}connections/${token}`);
    assert.ok(message.verified, 'signed');
  }
  assert.equal(messages[0]!.contentType, 'text/plain; charset=utf-8');
  assert.equal(messages[0]!.body.toString('utf8'), 'héllo ✓');
  assert.equal(messages[1]!.contentType, 'application/octet-stream');
  assert.deepEqual(messages[1]!.body, binary);
  assert.equal(messages[2]!.contentType, 'text/plain; charset=utf-8');
  assert.equal(messages[2]!.body.length, 0);
  const replies = await client.waitMessages(2);
  assert.equal(replies.length, 2, 'only answers with a body are sent back');
  assert.equal(replies[0]!.binary, false);
  assert.equal(replies[0]!.text, 'réponse');
  assert.equal(replies[1]!.binary, true);
  assert.deepEqual([...replies[1]!.data], [9, 8, 7]);
});

test('strictly one POST in flight per connection, in order, with a slow backend and many messages', async (t) => {
  const COUNT = 300;
  const backend = await startBackend(t, (req) => {
    if (req.event !== 'message') return { status: 204 };
    // 0-3 ms per answer, varying: a reordering or a second request in flight would show.
    return new Promise<Answer>((resolve) =>
      setTimeout(() => resolve({ status: 200, contentType: 'text/plain', body: `ack ${req.body}` }), req.body[0]! % 4),
    );
  });
  const bridge = await startBridge(t, backend, { maxQueuedMessages: 8 });
  const a = await connected(t, backend, bridge);
  const b = await connected(t, backend, bridge);
  for (let i = 0; i < COUNT; i++) {
    a.client.ws.send(`a${i}`);
    b.client.ws.send(Buffer.from(`b${i}`));
  }
  await a.client.waitMessages(COUNT, 10_000);
  await b.client.waitMessages(COUNT, 10_000);
  const bodies = (id: string) => backend.events('message', id).map((r) => r.body.toString('utf8'));
  assert.deepEqual(
    bodies(a.id),
    Array.from({ length: COUNT }, (_, i) => `a${i}`),
  );
  assert.deepEqual(
    bodies(b.id),
    Array.from({ length: COUNT }, (_, i) => `b${i}`),
  );
  assert.deepEqual(
    a.client.messages.map((m) => m.text),
    Array.from({ length: COUNT }, (_, i) => `ack a${i}`),
  );
  assert.equal(backend.maxInFlightOf(a.id), 1, 'one POST at a time per connection');
  assert.equal(backend.maxInFlightOf(b.id), 1, 'one POST at a time per connection');
  assert.equal(backend.maxInFlight, 2, 'the two connections side by side');
});

test('a non-2xx answer closes the client with 1011; the close event counts the messages never posted', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  const backend = await startBackend(t, async (req) => {
    if (req.event !== 'message') return { status: 204 };
    await held;
    return { status: 500, body: 'boom' };
  });
  const bridge = await startBridge(t, backend);
  const { client, id } = await connected(t, backend, bridge);
  for (let i = 0; i < 10; i++) client.ws.send(`m${i}`);
  // Once the pong is back the bridge has read all ten: one posted, nine queued.
  await roundTrip(client);
  release();
  assert.deepEqual(await client.closed, { code: 1011, reason: 'backend error' });
  const [close] = await backend.waitFor((r) => r.event === 'close' && r.connection === id);
  assert.ok(close!.verified);
  assert.deepEqual(close!.json(), { code: 1011, reason: 'backend error', dropped: 9 });
  assert.equal(backend.events('message', id).length, 1, 'nothing more is posted after a failure');
  assert.equal(backend.requests.at(-1), close, 'the close event is the last one');
  await waitFor(() => bridge.bridge.connectionCount === 0);
});

test('a timeout, a broken-off answer and an answer over maxMessageSize close the client with 1011 too', async (t) => {
  const backend = await startBackend(t, (req, res) => {
    if (req.event !== 'message') return { status: 204 };
    const how = req.body.toString('utf8');
    if (how === 'stall') return undefined;
    if (how === 'reset') {
      res.socket?.destroy();
      return undefined;
    }
    return { status: 200, contentType: 'application/octet-stream', body: Buffer.alloc(1025) };
  });
  const bridge = await startBridge(t, backend, { backendTimeout: 300, maxMessageSize: 1024 });
  for (const how of ['stall', 'reset', 'large']) {
    const { client, id } = await connected(t, backend, bridge);
    const started = performance.now();
    client.ws.send(how);
    assert.deepEqual(await client.closed, { code: 1011, reason: 'backend error' }, how);
    if (how === 'stall') assert.ok(performance.now() - started >= 290, 'after backendTimeout');
    const [close] = await backend.waitFor((r) => r.event === 'close' && r.connection === id);
    assert.deepEqual(close!.json(), { code: 1011, reason: 'backend error', dropped: 0 }, how);
    assert.equal(client.messages.length, 0, `${how}: nothing reached the client`);
  }
  const metrics = await (await fetch(`${bridge.base}metrics`)).text();
  assert.match(metrics, /duplexwire_bridge_events_total\{event="message",result="failed"\} 3/);
});

test('a client message over maxMessageSize closes it with 1009; one at the limit goes through', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend, { maxMessageSize: 1024 });
  const { client, id } = await connected(t, backend, bridge);
  client.ws.send(Buffer.alloc(1024, 1));
  await backend.waitFor((r) => r.event === 'message' && r.connection === id);
  client.ws.send(Buffer.alloc(1025, 2));
  assert.equal((await client.closed).code, 1009);
  const [close] = await backend.waitFor((r) => r.event === 'close' && r.connection === id);
  assert.equal(close!.json<{ code: number }>().code, 1009);
  assert.equal(backend.events('message', id).length, 1);
  assert.equal(backend.events('message', id)[0]!.body.length, 1024);
});

for (const [limit, options] of [
  ['maxQueuedMessages', { maxQueuedMessages: 4 }],
  ['maxQueuedBytes', { maxQueuedMessages: 10_000, maxQueuedBytes: 256 * 1024 }],
] as const) {
  test(`a stalled backend: reading pauses at ${limit} (the client backs up), then every message arrives in order`, async (t) => {
    const SIZE = 64 * 1024;
    const COUNT = 512; // 32 MiB
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const backend = await startBackend(t, async (req) => {
      if (req.event === 'message') await held;
      return { status: 204 };
    });
    const bridge = await startBridge(t, backend, {
      ...options,
      maxMessageSize: SIZE,
      backendTimeout: 10_000,
    });
    const sockets: Socket[] = [];
    bridge.server.on('connection', (socket: Socket) => sockets.push(socket));
    const { client, id } = await connected(t, backend, bridge);
    const [socket] = sockets;
    assert.ok(socket, "the bridge's side of the client connection");
    const block = (i: number) => Buffer.alloc(SIZE, i % 251).fill(`#${i}#`, 0, 16);
    for (let i = 0; i < COUNT; i++) client.ws.send(block(i));
    await backend.waitFor((r) => r.event === 'message', 1);
    await waitFor(() => socket.isPaused(), 3000, 'the bridge to stop reading');
    // Nothing may happen now: without the pause the bridge reads all 32 MiB in about 200 ms here.
    await delay(300);
    assert.ok(socket.isPaused(), 'still not reading');
    assert.ok(
      socket.bytesRead < 1024 * 1024,
      `the bridge read ${socket.bytesRead} bytes: about 4 + 2 messages, not 32 MiB`,
    );
    assert.ok(client.ws.bufferedAmount > 16 * 1024 * 1024, `the client backed up: ${client.ws.bufferedAmount}`);
    assert.equal(backend.events('message', id).length, 1, 'one POST in flight, the rest waits');
    release();
    await backend.waitFor((r) => r.event === 'message' && r.connection === id, COUNT, 10_000);
    const got = backend.events('message', id);
    assert.equal(got.length, COUNT);
    for (const [i, r] of got.entries()) assert.ok(r.body.equals(block(i)), `message ${i} intact and in order`);
    assert.equal(client.ws.bufferedAmount, 0);
  });
}

test('one write of 10,000 empty messages: what is read past the pause is bounded, the client closed with 1008 past it', async (t) => {
  // Pausing stops reading, but the ws transport still delivers every message of the chunk it
  // read: without a bound in bytes that counts each message's cost, all 10,000 would queue.
  const COUNT = 10_000;
  const { backend, release } = await messageHoldingBackend(t);
  const limits = { maxQueuedMessages: 4, maxQueuedBytes: 4096, maxMessageSize: 1024 };
  const bridge = await startBridge(t, backend, { ...limits, backendTimeout: 20_000 });
  const { client, id } = await connected(t, backend, bridge);
  client.ws.send('first'); // in flight, held: the rest queues behind it
  await backend.waitFor((r) => r.event === 'message' && r.connection === id);
  // Empty masked text frames (FIN + text, mask bit, zero mask), 6 bytes each, in one write.
  const frame = Buffer.from([0x81, 0x80, 0, 0, 0, 0]);
  const frames = Buffer.concat(Array.from({ length: COUNT }, () => frame));
  (client.ws as unknown as { _socket: Socket })._socket.write(frames);
  await waitFor(() => client.ended !== undefined, 5000, 'the client closed');
  assert.deepEqual(client.ended, { code: 1008, reason: 'too many messages' });
  release();
  const [close] = await backend.waitFor((r) => r.event === 'close' && r.connection === id, 1, 10_000);
  const posted = backend.events('message', id).length - 1;
  const { dropped } = close!.json<{ dropped: number }>();
  // Each message counts 128 bytes and its own against 2 × maxQueuedBytes + maxMessageSize.
  const bound = Math.ceil((2 * limits.maxQueuedBytes + limits.maxMessageSize + 128) / 128);
  assert.ok(posted <= bound, `${posted} messages queued past the pause, at most ${bound}`);
  assert.ok(posted >= limits.maxQueuedMessages, `${posted} queued: the pause limits at least`);
  assert.equal(posted + dropped, COUNT, 'every message read is either posted or counted as dropped');
});

test('a failure while reading is paused still closes the client at once, and the close event follows', async (t) => {
  const SIZE = 64 * 1024;
  const backend = await startBackend(t, (req) => (req.event === 'message' ? undefined : { status: 204 }));
  const bridge = await startBridge(t, backend, { maxQueuedMessages: 2, maxMessageSize: SIZE, backendTimeout: 300 });
  const { client, id } = await connected(t, backend, bridge);
  for (let i = 0; i < 256; i++) client.ws.send(Buffer.alloc(SIZE, i));
  const started = performance.now();
  let timer: ReturnType<typeof setTimeout> | number | undefined;
  const closed = await Promise.race([
    client.closed,
    new Promise<undefined>((resolve) => {
      timer = setTimeout(resolve, 5000); // ws's close timer, were the close frame never read, is 30 s
    }),
  ]);
  clearTimeout(timer);
  assert.deepEqual(closed, { code: 1011, reason: 'backend error' }, 'closed within 5 s');
  assert.ok(performance.now() - started < 5000);
  const [close] = await backend.waitFor((r) => r.event === 'close' && r.connection === id);
  const event = close!.json<{ code: number; dropped: number }>();
  assert.equal(event.code, 1011);
  // All 256 reached the bridge before the client's close frame: one posted, 255 counted.
  assert.equal(event.dropped, 255);
  assert.equal(backend.events('message', id).length, 1);
});

test('messages a client sends after a failure, before it reads the 1011, count as dropped too', async (t) => {
  const backend = await startBackend(t, (req) => (req.event === 'message' ? { status: 500 } : { status: 204 }));
  const bridge = await startBridge(t, backend);
  const { client, id } = await connected(t, backend, bridge);
  client.ws.pause(); // does not see the bridge's close frame yet
  client.ws.send('m0');
  await untilMetric(bridge, /duplexwire_bridge_events_total\{event="message",result="failed"\} 1/);
  for (let i = 1; i <= 5; i++) client.ws.send(`m${i}`);
  client.ws.resume();
  assert.equal((await client.closed).code, 1011);
  const [close] = await backend.waitFor((r) => r.event === 'close' && r.connection === id);
  assert.equal(backend.events('message', id).length, 1);
  assert.equal(close!.json<{ dropped: number }>().dropped, 5, 'every message never posted is counted');
});

test('maxBackendRequests: at most that many POSTs at once over all connections; the others wait their turn', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  const backend = await startBackend(t, async (req) => {
    if (req.event === 'message') await held;
    return { status: 204 };
  });
  const bridge = await startBridge(t, backend, { maxBackendRequests: 2, backendTimeout: 5_000 });
  const clients = await Promise.all([1, 2, 3, 4].map(() => connected(t, backend, bridge)));
  for (const [i, { client }] of clients.entries()) client.ws.send(`from ${i}`);
  await backend.waitFor((r) => r.event === 'message', 2);
  await delay(200);
  assert.equal(backend.events('message').length, 2, 'two sent, two waiting');
  assert.equal(backend.maxInFlight, 2);
  release();
  await backend.waitFor((r) => r.event === 'message', 4);
  assert.equal(backend.maxInFlight, 2);
  assert.deepEqual(
    backend
      .events('message')
      .map((r) => r.body.toString())
      .sort(),
    ['from 0', 'from 1', 'from 2', 'from 3'],
  );
});

test('maxBackendRequests: a POST that waits longer than backendTimeout for its turn fails like a timeout (1011)', async (t) => {
  const backend = await startBackend(t, (req) => (req.event === 'message' ? undefined : { status: 204 }));
  const bridge = await startBridge(t, backend, { maxBackendRequests: 1, backendTimeout: 500 });
  const [a, b, c] = await Promise.all([1, 2, 3].map(() => connected(t, backend, bridge)));
  // a holds the only turn until its POST times out; b waits and gets it then; c, behind b, waits
  // longer than backendTimeout and gives up without being sent.
  a!.client.ws.send('a');
  await backend.waitFor((r) => r.event === 'message');
  b!.client.ws.send('b');
  c!.client.ws.send('c');
  assert.equal((await c!.client.closed).code, 1011);
  assert.equal(backend.events('message', c!.id).length, 0, 'c was never sent');
  assert.equal((await a!.client.closed).code, 1011, 'a timed out');
});

test('many POSTs at once raise no "possible EventTarget memory leak" warning', async (t) => {
  // Each POST, and each one waiting for its turn, listens to the bridge's stop signal until it
  // ends: a dozen at once is ordinary load, not a leak, and must not warn (Node's default limit is 10).
  const COUNT = 12;
  const warnings: string[] = [];
  const onWarning = (warning: Error): void => {
    warnings.push(`${warning.name}: ${warning.message}`);
  };
  process.on('warning', onWarning);
  t.after(() => process.off('warning', onWarning));
  const { backend, release } = await messageHoldingBackend(t);
  // Half of them in flight, half waiting for a turn.
  const bridge = await startBridge(t, backend, { maxBackendRequests: COUNT / 2, backendTimeout: 5_000 });
  const clients = await Promise.all(Array.from({ length: COUNT }, () => connected(t, backend, bridge)));
  for (const [i, { client }] of clients.entries()) client.ws.send(`from ${i}`);
  await backend.waitFor((r) => r.event === 'message', COUNT / 2);
  await Promise.all(clients.map(({ client }) => roundTrip(client)));
  // Warnings are emitted on the next tick.
  await new Promise((resolve) => setImmediate(resolve));
  release();
  await backend.waitFor((r) => r.event === 'message', COUNT);
  assert.deepEqual(
    warnings.filter((w) => w.startsWith('MaxListenersExceededWarning')),
    [],
  );
});
