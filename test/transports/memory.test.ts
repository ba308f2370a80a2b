/**
 * The in-process transport: the server transport contract (server-contract.ts, without what needs
 * a network), then what only this transport promises: copies taken at send time, any URL form,
 * exact buffered-byte accounting, and closes reported on both ends by the time stop() resolves.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import {
  DEFAULT_HIGH_WATER_MARK,
  MEMORY_ADDRESS,
  type MemoryTransport,
  memoryTransport,
} from '../../transports/memory.ts';
import type { ServerTransport, TransportSocket } from '../../transports/types.ts';
import {
  type Accepted,
  bytes,
  type ConnectOptions,
  connectWith,
  delay,
  type Fixture,
  MAX,
  type Recorder,
  recorder,
  type ServeOptions,
  serve,
  text,
  until,
} from './helpers.ts';
import { type ServerTransportFactory, serverTransportContract } from './server-contract.ts';

/**
 * Every server is its own pair, named by a host of its own; the client reaches the pair its URL
 * names (`ws://memory-3/chat`), so a test can run several servers as over a network.
 */
function memoryFactory(): ServerTransportFactory {
  const pairs = new Map<string, MemoryTransport>();
  const hosts = new WeakMap<ServerTransport, string>();
  let count = 0;
  const pair = (): string => {
    const host = `memory-${++count}`;
    const made = memoryTransport();
    pairs.set(host, made);
    hosts.set(made.server, host);
    return host;
  };
  return {
    remoteAddress: MEMORY_ADDRESS,
    highWaterMark: DEFAULT_HIGH_WATER_MARK,
    server: async () => pairs.get(pair())!.server,
    client: () => ({
      connect(url, options, handlers) {
        const target = pairs.get(new URL(url).host);
        if (target === undefined) return Promise.reject(new Error(`no memory server at ${url}`));
        return target.client.connect(url, options, handlers);
      },
    }),
    url: (transport) => `ws://${hosts.get(transport)}`,
    // A pair that is never started: its own client refuses.
    unreachableUrl: async () => `ws://${pair()}/`,
  };
}

// The flags about handshakes and raw frames do not matter without a network; the others are
// what a conforming WebSocket does.
serverTransportContract('memory', memoryFactory(), {
  network: false,
  tls: false,
  pauseHoldsReadMessages: true,
  pauseHoldsClose: true,
  closeReportsPeerCode: true,
  farOversizeGetsCloseFrame: true,
  framesBeforeUpgrade: true,
});

interface PairFixture extends Fixture {
  readonly pair: MemoryTransport;
  connect(
    url?: string,
    options?: ConnectOptions,
  ): Promise<{ socket: TransportSocket; rec: Recorder; remote: Accepted }>;
}

async function startPair(t: TestContext, options: ServeOptions = {}): Promise<PairFixture> {
  const pair = memoryTransport();
  const fixture = await serve(t, pair.server, options, () => 'memory://test');
  return {
    ...fixture,
    pair,
    async connect(url = 'memory://test/', connectOptions = {}) {
      const client = await connectWith(t, pair.client, url, connectOptions);
      return { ...client, remote: fixture.accepted.at(-1)! };
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

test('a client URL of any scheme, without a path, or only a path reaches the server', async (t) => {
  const f = await startPair(t);
  await f.connect('memory://test:1/chat?room=1', { headers: { 'X-Token': 'abc' } });
  assert.equal(f.upgrades[0]!.headers.host, 'test:1');
  assert.equal(f.upgrades[0]!.url, '/chat?room=1');
  await f.connect('memory://test');
  assert.equal(f.upgrades[1]!.path, '/');
  assert.equal(f.upgrades[1]!.query, '');
  await f.connect('/only/a/path');
  assert.equal(f.upgrades[2]!.url, '/only/a/path');
  assert.equal(f.accepted.length, 3);
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

test('stop() has reported the close on both ends of every connection when it resolves', async (t) => {
  const f = await startPair(t);
  const a = await f.connect();
  const b = await f.connect();
  await Promise.all([f.pair.server.stop(), f.pair.server.stop()]);
  for (const side of [a.rec, b.rec, a.remote.rec, b.remote.rec])
    assert.deepEqual(side.closes, [{ code: 1006, reason: '' }]);
});
