/**
 * The reconnect delay policy (src/client/backoff.ts): exponential growth, cap, jitter bounds,
 * custom delay functions and option validation.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { DEFAULT_RECONNECT, type ReconnectOptions, reconnectPolicy } from '../../src/client/backoff.ts';
import { Client } from '../../src/client/client.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { silentLogger } from '../../src/logger.ts';
import { Server } from '../../src/server/server.ts';
import { wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { delay, waitFor } from '../helpers.ts';

const delays = (options: ReconnectOptions, attempts: number) =>
  Array.from({ length: attempts }, (_, i) => reconnectPolicy(options).delay(i + 1));

test('without jitter, delays grow by the factor and stop at maxDelay', () => {
  assert.deepEqual(
    delays({ initialDelay: 100, maxDelay: 1_000, factor: 2, jitter: 0 }, 7),
    [100, 200, 400, 800, 1_000, 1_000, 1_000],
  );
  assert.deepEqual(delays({ initialDelay: 50, maxDelay: 200, factor: 3, jitter: 0 }, 4), [50, 150, 200, 200]);
  assert.deepEqual(delays({ initialDelay: 10, maxDelay: 100, factor: 1, jitter: 0 }, 3), [10, 10, 10]);
  // Huge attempt numbers do not overflow past the cap.
  assert.equal(reconnectPolicy({ initialDelay: 10, maxDelay: 500, jitter: 0 }).delay(10_000), 500);
  assert.equal(reconnectPolicy({ initialDelay: 0, maxDelay: 500, jitter: 0 }).delay(5), 0);
});

test('defaults: 500 ms doubling up to 10 s, jitter 0.5, never giving up', () => {
  assert.deepEqual(DEFAULT_RECONNECT, {
    initialDelay: 500,
    maxDelay: 10_000,
    factor: 2,
    jitter: 0.5,
    maxAttempts: Number.POSITIVE_INFINITY,
    minUptime: 5_000,
  });
  const policy = reconnectPolicy({});
  assert.equal(policy.maxAttempts, Number.POSITIVE_INFINITY);
  for (let i = 0; i < 200; i++) {
    const first = policy.delay(1);
    assert.ok(first >= 250 && first <= 500, `delay ${first}`);
    const capped = policy.delay(20);
    assert.ok(capped >= 5_000 && capped <= 10_000, `delay ${capped}`);
  }
});

test('jitter draws each delay from [(1 - jitter) x base, base]', (t) => {
  for (const jitter of [0.1, 0.5, 1]) {
    const policy = reconnectPolicy({ initialDelay: 100, maxDelay: 800, factor: 2, jitter });
    for (let attempt = 1; attempt <= 6; attempt++) {
      const base = Math.min(800, 100 * 2 ** (attempt - 1));
      for (let i = 0; i < 200; i++) {
        const d = policy.delay(attempt);
        assert.ok(
          d >= Math.floor((1 - jitter) * base) && d <= base,
          `jitter ${jitter}, attempt ${attempt}: ${d} not in range of ${base}`,
        );
      }
    }
  }
  // The extremes of Math.random map onto the ends of the range.
  const policy = reconnectPolicy({ initialDelay: 1_000, maxDelay: 1_000, jitter: 0.5 });
  const random = t.mock.method(Math, 'random', () => 0);
  assert.equal(policy.delay(1), 1_000);
  random.mock.mockImplementation(() => 0.999_999);
  assert.equal(policy.delay(1), 500);
  random.mock.restore();
  // The draws spread over the range rather than sticking to one end.
  const samples = Array.from({ length: 500 }, () => policy.delay(1));
  assert.ok(
    Math.min(...samples) < 600 && Math.max(...samples) > 900,
    `${Math.min(...samples)}..${Math.max(...samples)}`,
  );
});

test('a custom delay function replaces the computation; negative results become 0', () => {
  const seen: number[] = [];
  const policy = reconnectPolicy({
    initialDelay: 999,
    jitter: 1,
    delay: (attempt) => {
      seen.push(attempt);
      return attempt === 3 ? -5 : attempt * 7;
    },
  });
  assert.deepEqual(
    [1, 2, 3, 4].map((a) => policy.delay(a)),
    [7, 14, 0, 28],
  );
  assert.deepEqual(seen, [1, 2, 3, 4]);
});

test('invalid options throw InvalidArgumentError', () => {
  const invalid: ReconnectOptions[] = [
    { initialDelay: -1 },
    { initialDelay: 1.5 },
    { initialDelay: Number.NaN },
    { maxDelay: -1 },
    { maxDelay: Number.POSITIVE_INFINITY },
    { factor: 0.5 },
    { factor: Number.NaN },
    { jitter: -0.1 },
    { jitter: 1.5 },
    { jitter: Number.NaN },
    { maxAttempts: 0 },
    { maxAttempts: Number.NaN },
    { minUptime: -1 },
    { minUptime: Number.NaN },
  ];
  for (const options of invalid) {
    assert.throws(() => reconnectPolicy(options), InvalidArgumentError, JSON.stringify(options));
    // The client validates them up front, before any connection attempt.
    assert.throws(
      () => new Client('ws://127.0.0.1:1/', { reconnect: options, autoConnect: false }),
      InvalidArgumentError,
    );
  }
  for (const options of [{ initialDelay: 0 }, { jitter: 0 }, { jitter: 1 }, { factor: 1 }, { maxAttempts: 1 }]) {
    assert.doesNotThrow(() => reconnectPolicy(options), JSON.stringify(options));
  }
});

test('a custom delay is clamped to what setTimeout can wait (no 1 ms overflow, no NaN)', () => {
  // Node fires a timer of more than 2^31 - 1 ms after 1 ms: an unclamped delay would retry in a
  // tight loop.
  for (const value of [Number.NaN, Number.POSITIVE_INFINITY, 2 ** 40]) {
    const d = reconnectPolicy({ delay: () => value }).delay(1);
    assert.ok(Number.isFinite(d) && d >= 0 && d <= 2 ** 31 - 1, `${value} -> ${d}`);
  }
  assert.equal(reconnectPolicy({ delay: () => Number.POSITIVE_INFINITY }).delay(1), 2 ** 31 - 1);
});

/** The delays of the first `count` reconnects of a client to a server that drops every connection at once. */
async function delaysAgainstADroppingServer(t: TestContext, reconnect: ReconnectOptions, count: number) {
  const server = new Server({
    transport: wsTransport({ host: '127.0.0.1', port: 0 }),
    logger: silentLogger,
    // Once the client is connected (its handshake done), a moment later: dropped.
    onClientConnected: (conn) => {
      setTimeout(() => void conn.close(1001, 'not now'), 30);
    },
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  const client = new Client(`ws://127.0.0.1:${server.address()!.port}/`, {
    transport: wsClientTransport(),
    reconnect,
    logger: silentLogger,
  });
  client.on('error', () => {});
  const delays: number[] = [];
  let connects = 0;
  client.on('connect', () => connects++);
  client.on('reconnecting', ({ delay }) => delays.push(delay));
  t.after(() => client.close());
  await waitFor(() => delays.length >= count, 20_000, `${count} reconnects`);
  assert.ok(connects >= count, `each attempt connected (and was dropped): ${connects} connects`);
  return delays.slice(0, count);
}

test('a server that accepts and drops at once is reconnected to with a growing delay (minUptime)', async (t) => {
  const grown = await delaysAgainstADroppingServer(t, { initialDelay: 40, maxDelay: 400, jitter: 0 }, 5);
  assert.deepEqual(grown, [40, 80, 160, 320, 400]);
  // minUptime 0: every connection counts as one that lasted, and the backoff starts over each time.
  const flat = await delaysAgainstADroppingServer(t, { initialDelay: 40, jitter: 0, minUptime: 0 }, 3);
  assert.deepEqual(flat, [40, 40, 40]);
});

test('a configuration error at connect (no transport) is not retried', async (t) => {
  // The source entry point sets no default transport (the package's entry points do).
  const client = new Client('ws://127.0.0.1:1/', { reconnect: { initialDelay: 10 }, logger: silentLogger });
  t.after(() => client.close());
  let reconnects = 0;
  client.on('reconnecting', () => reconnects++);
  client.on('error', () => {});
  const outcome = await Promise.race([
    client.connect().then(
      () => 'connected',
      (error: Error) => error.message,
    ),
    delay(3_000).then(() => 'still trying after 3 s'),
  ]);
  assert.match(outcome, /no default transport here/);
  assert.equal(reconnects, 0);
  assert.equal(client.state, 'disconnected');
});
