import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { DEFAULT_HIGH_WATER_MARK, type MemoryTransport, memoryTransport } from '../../transports/memory.ts';
import type {
  ConnectFailure,
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
  readonly pair: MemoryTransport;
  readonly accepted: Accepted[];
  readonly upgrades: UpgradeRequest[];
  connect(
    url?: string,
    options?: { headers?: Record<string, string>; maxMessageSize?: number; hooks?: Partial<SocketHandlers> },
  ): Promise<{ socket: TransportSocket; rec: Recorder; remote: Accepted }>;
}

async function startPair(
  t: TestContext,
  options: {
    maxMessageSize?: number;
    upgrade?: (request: UpgradeRequest) => UpgradeDecision | Promise<UpgradeDecision>;
    onConnection?: (socket: TransportSocket) => void;
    hooks?: Partial<SocketHandlers>;
  } = {},
): Promise<Fixture> {
  const pair = memoryTransport();
  const accepted: Accepted[] = [];
  const upgrades: UpgradeRequest[] = [];
  await pair.server.start(
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
  t.after(() => pair.server.stop());
  return {
    pair,
    accepted,
    upgrades,
    async connect(url = 'memory://test/', connectOptions = {}) {
      const rec = recorder(connectOptions.hooks);
      const socket = await pair.client.connect(
        url,
        {
          maxMessageSize: connectOptions.maxMessageSize ?? MAX,
          connectTimeout: 1000,
          ...(connectOptions.headers ? { headers: connectOptions.headers } : {}),
        },
        rec,
      );
      t.after(() => socket.terminate());
      return { socket, rec, remote: accepted.at(-1)! };
    },
  };
}

test('binary and text round trip, asynchronously, in order, as copies', async (t) => {
  const f = await startPair(t);
  const { socket, rec, remote } = await f.connect();
  const buffer = bytes(1, 2, 3);
  assert.equal(socket.send(buffer), 'ok');
  buffer.fill(9); // the sender may reuse its buffer at once
  assert.equal(socket.sendText('héllo'), 'ok');
  assert.equal(socket.send(Buffer.from([4])), 'ok');
  assert.equal(remote.rec.messages.length, 0, 'not delivered synchronously');
  await until(() => remote.rec.messages.length === 3, 'server messages');
  assert.deepEqual(remote.rec.messages[0], { data: bytes(1, 2, 3), binary: true });
  assert.equal(remote.rec.messages[1]!.binary, false);
  assert.equal(text(remote.rec.messages[1]!.data), 'héllo');
  assert.equal(Object.getPrototypeOf(remote.rec.messages[2]!.data), Uint8Array.prototype);

  remote.socket.send(bytes(5));
  remote.socket.sendText('✓');
  await until(() => rec.messages.length === 2, 'client messages');
  assert.deepEqual(rec.events, ['message', 'text']);
  assert.equal(socket.remoteAddress, 'memory');
  assert.equal(remote.socket.remoteAddress, 'memory');
});

test('a message sent in connection() reaches the client handlers', async (t) => {
  const f = await startPair(t, { onConnection: (socket) => socket.send(bytes(42)) });
  const { rec } = await f.connect();
  await until(() => rec.messages.length === 1, 'first message');
  assert.deepEqual(rec.messages[0]!.data, bytes(42));
});

test('upgrade sees url, path, query, host, lower-cased headers and remoteAddress', async (t) => {
  const f = await startPair(t);
  await f.connect('memory://test:1/chat?room=1&x=%20', { headers: { 'X-Token': 'abc' } });
  const request = f.upgrades[0]!;
  assert.equal(request.url, '/chat?room=1&x=%20');
  assert.equal(request.path, '/chat');
  assert.equal(request.query, 'room=1&x=%20');
  assert.equal(request.headers['x-token'], 'abc');
  assert.equal(request.headers.host, 'test:1');
  assert.equal(Object.getPrototypeOf(request.headers), null);
  assert.equal(request.remoteAddress, 'memory');
  assert.equal(f.accepted[0]!.request, request);

  await f.connect('memory://test');
  assert.equal(f.upgrades[1]!.path, '/');
  assert.equal(f.upgrades[1]!.query, '');
  await f.connect('/only/a/path');
  assert.equal(f.upgrades[2]!.url, '/only/a/path');
});

test('refusals reject with status and body; a throwing decision is a bare 500', async (t) => {
  const f = await startPair(t, {
    upgrade: async (request) => {
      await delay(5);
      if (request.path === '/boom') throw new Error('secret');
      return { accept: false, status: Number(request.query), body: `no ${request.query}` };
    },
  });
  for (const status of [401, 403, 503]) {
    const rec = recorder();
    await assert.rejects(
      f.pair.client.connect(`memory://x/?${status}`, { maxMessageSize: MAX, connectTimeout: 1000 }, rec),
      (err: ConnectFailure) => {
        assert.equal(err.status, status);
        assert.equal(err.body, `no ${status}`);
        assert.match(err.message, new RegExp(`HTTP ${status}`));
        return true;
      },
    );
    await delay(5);
    assert.deepEqual(rec.events, []);
  }
  await assert.rejects(
    f.pair.client.connect('memory://x/boom', { maxMessageSize: MAX, connectTimeout: 1000 }, recorder()),
    {
      status: 500,
      body: '',
    },
  );
  assert.equal(f.accepted.length, 0);
});

test('a decision slower than connectTimeout rejects with ETIMEDOUT', async (t) => {
  const f = await startPair(t, { upgrade: () => delay(100).then(() => ({ accept: true })) });
  const rec = recorder();
  await assert.rejects(f.pair.client.connect('memory://x/', { maxMessageSize: MAX, connectTimeout: 20 }, rec), {
    code: 'ETIMEDOUT',
  });
  await delay(120);
  assert.equal(f.accepted.length, 0);
  assert.deepEqual(rec.events, []);
});

test('connecting before start or after stop rejects with ECONNREFUSED', async () => {
  const pair = memoryTransport();
  const options = { maxMessageSize: MAX, connectTimeout: 100 };
  await assert.rejects(pair.client.connect('memory://x/', options, recorder()), { code: 'ECONNREFUSED' });
  assert.equal(pair.server.address(), null);
  await pair.server.start({ upgrade: () => ({ accept: true }), connection: () => recorder() }, { maxMessageSize: MAX });
  assert.deepEqual(pair.server.address(), { host: 'memory', port: 0 });
  await pair.server.stop();
  await assert.rejects(pair.client.connect('memory://x/', options, recorder()), { code: 'ECONNREFUSED' });
  assert.equal(pair.server.address(), null);
});

test('a message over the receiver limit closes both ends with 1009', async (t) => {
  const f = await startPair(t, { maxMessageSize: 10 });
  const a = await f.connect('memory://x/', { maxMessageSize: 5 });
  a.socket.send(new Uint8Array(10));
  a.socket.send(new Uint8Array(11));
  a.socket.send(new Uint8Array(1));
  await until(() => a.remote.rec.closes.length === 1 && a.rec.closes.length === 1, 'both closes');
  assert.equal(a.remote.rec.messages.length, 1);
  assert.deepEqual(a.remote.rec.closes, [{ code: 1009, reason: '' }]);
  assert.deepEqual(a.rec.closes, [{ code: 1009, reason: '' }]);

  const b = await f.connect('memory://x/', { maxMessageSize: 5 });
  b.remote.socket.sendText('123456');
  await until(() => b.remote.rec.closes.length === 1 && b.rec.closes.length === 1, 'both closes');
  assert.deepEqual(b.rec.closes, [{ code: 1009, reason: '' }]);
  assert.deepEqual(b.remote.rec.closes, [{ code: 1009, reason: '' }]);
});

test('close arrives after the messages sent before it, on both ends, once', async (t) => {
  const f = await startPair(t);
  const { socket, rec, remote } = await f.connect();
  socket.send(bytes(1));
  socket.send(bytes(2));
  remote.socket.send(bytes(3)); // in flight towards the closing side: still delivered
  socket.close(4000, 'done');
  socket.close(4001, 'again');
  assert.equal(socket.send(bytes(4)), 'dropped');
  assert.equal(socket.sendText('x'), 'dropped');
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(remote.rec.events, ['message', 'message', 'close']);
  assert.deepEqual(rec.events, ['message', 'close']);
  assert.deepEqual(remote.rec.closes, [{ code: 4000, reason: 'done' }]);
  assert.deepEqual(rec.closes, [{ code: 4000, reason: 'done' }]);
  assert.equal(remote.socket.send(bytes(5)), 'dropped');
  remote.socket.close(1000, '');
  socket.terminate();
  await delay(5);
  assert.equal(rec.closes.length, 1);
  assert.equal(remote.rec.closes.length, 1);
});

test('simultaneous closes: each end reports the code the other sent', async (t) => {
  const f = await startPair(t);
  const { socket, rec, remote } = await f.connect();
  socket.close(4001, 'client');
  remote.socket.close(4002, 'server');
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(rec.closes, [{ code: 4002, reason: 'server' }]);
  assert.deepEqual(remote.rec.closes, [{ code: 4001, reason: 'client' }]);
});

test('close validates the code and cuts the reason to 123 bytes of UTF-8', async (t) => {
  const f = await startPair(t);
  const { socket, rec, remote } = await f.connect();
  assert.throws(() => socket.close(1006, ''), RangeError);
  assert.throws(() => socket.close(5000, ''), RangeError);
  socket.close(1000, 'é'.repeat(100));
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(remote.rec.closes, [{ code: 1000, reason: 'é'.repeat(61) }]);
});

test('terminate: both ends see 1006, pending messages are dropped', async (t) => {
  const f = await startPair(t);
  const { socket, rec, remote } = await f.connect();
  socket.send(bytes(1));
  socket.terminate();
  socket.terminate();
  assert.equal(socket.send(bytes(2)), 'dropped');
  assert.equal(remote.socket.send(bytes(3)), 'dropped');
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(remote.rec.events, ['close']);
  assert.deepEqual(rec.closes, [{ code: 1006, reason: '' }]);
  assert.deepEqual(remote.rec.closes, [{ code: 1006, reason: '' }]);
});

test('pause stops delivery (close included); resume delivers the rest in order', async (t) => {
  const f = await startPair(t, {
    hooks: {
      onMessage(data) {
        // Pausing from inside a handler takes effect before the next message.
        if (data[0] === 2) f.accepted[0]!.socket.pause();
      },
    },
  });
  const { socket, rec, remote } = await f.connect();
  for (let i = 0; i < 6; i++) socket.send(bytes(i));
  socket.close(1000, 'end');
  await until(() => remote.rec.messages.length === 3, 'first three');
  await delay(20);
  assert.equal(remote.rec.messages.length, 3);
  assert.equal(rec.closes.length, 0);
  remote.socket.resume();
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'closes after resume');
  assert.deepEqual(
    remote.rec.messages.map((m) => m.data[0]),
    [0, 1, 2, 3, 4, 5],
  );
});

test('backpressure once undelivered bytes pass the high-water mark, then onDrain', async (t) => {
  const f = await startPair(t, { onConnection: (socket) => socket.pause() });
  const { socket, rec, remote } = await f.connect();
  const chunk = new Uint8Array(16 * 1024);
  const results: string[] = [];
  for (let i = 0; i < 5; i++) results.push(socket.send(chunk));
  assert.deepEqual(results, ['ok', 'ok', 'ok', 'ok', 'backpressure']);
  assert.equal(socket.bufferedAmount, 5 * chunk.byteLength);
  assert.ok(socket.bufferedAmount > DEFAULT_HIGH_WATER_MARK);
  await delay(10);
  assert.equal(rec.drains, 0);
  remote.socket.resume();
  await until(() => rec.drains === 1 && remote.rec.messages.length === 5, 'drain');
  assert.equal(socket.bufferedAmount, 0);
  assert.equal(rec.drains, 1);
  assert.equal(socket.send(chunk), 'ok');
  await delay(5);
  assert.equal(rec.drains, 1, 'no drain without a backpressure result');
});

test('ping reaches the peer as onPing, and the pong comes back as onPing', async (t) => {
  const f = await startPair(t);
  const { socket, rec, remote } = await f.connect();
  socket.ping();
  await until(() => remote.rec.pings === 1 && rec.pings === 1, 'ping and pong');
  remote.socket.ping();
  await until(() => remote.rec.pings === 2 && rec.pings === 2, 'ping and pong from the server');
});

test('stop() terminates open connections and is idempotent', async (t) => {
  const f = await startPair(t);
  const a = await f.connect();
  const b = await f.connect();
  await Promise.all([f.pair.server.stop(), f.pair.server.stop()]);
  for (const side of [a.rec, b.rec, a.remote.rec, b.remote.rec])
    assert.deepEqual(side.closes, [{ code: 1006, reason: '' }]);
  await f.pair.server.stop();
  // start() after stop() serves again
  await f.pair.server.start(
    { upgrade: () => ({ accept: true }), connection: () => recorder() },
    { maxMessageSize: MAX },
  );
  const c = await f.pair.client.connect('memory://x/', { maxMessageSize: MAX, connectTimeout: 100 }, recorder());
  assert.equal(c.send(bytes(1)), 'ok');
});

test('stop() during a pending decision makes the attempt fail', async (t) => {
  let decide: ((d: UpgradeDecision) => void) | undefined;
  const f = await startPair(t, {
    upgrade: () =>
      new Promise<UpgradeDecision>((resolve) => {
        decide = resolve;
      }),
  });
  const attempt = f.pair.client.connect('memory://x/', { maxMessageSize: MAX, connectTimeout: 1000 }, recorder());
  await until(() => decide !== undefined, 'decision requested');
  await f.pair.server.stop();
  decide!({ accept: true });
  await assert.rejects(attempt, { code: 'ECONNRESET' });
  assert.equal(f.accepted.length, 0);
});
