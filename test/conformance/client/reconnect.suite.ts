/**
 * The client's connection loop over real sockets: reconnect after a server restart, requests
 * waiting for a connection (queue limit, timeout), pending requests failing at once when the
 * connection drops, and permanent refusals that stop the loop.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { Client, type ClientOptions } from '../../../src/client/client.ts';
import { ConnectError, DisconnectedError, QueueFullError, TimeoutError } from '../../../src/errors.ts';
import type { Connection } from '../../../src/server/connection.ts';
import { transportUnderTest } from '../../transport-under-test.ts';
import { connectClient, delay, recordingLogger, startServer, waitFor } from '../../helpers.ts';
import { aborted, freePort, outcome, settledAtOnce, sharedSignalBatches, startServerOnPort } from './helpers.ts';

const echo = { onRequest: (_conn: Connection, msg: { payload: ReturnType<typeof utf8> }) => msg.payload };

/** A client that is not awaited: for tests where no server answers. Closed after the test. */
function looseClient(t: { after(fn: () => unknown): void }, url: string, options: ClientOptions): Client {
  const client = new Client(url, { transport: transportUnderTest().client(), logger: recordingLogger(), ...options });
  t.after(() => client.close());
  return client;
}

test('reconnects after a server restart on the same port; a request sent meanwhile waits and succeeds', async (t) => {
  const first = await startServer(t, echo);
  const client = await connectClient(t, first.url, { reconnect: { initialDelay: 50, maxDelay: 200 } });
  const events: string[] = [];
  client.on('disconnect', ({ code }) => events.push(`disconnect ${code}`));
  client.on('reconnecting', () => events.push('reconnecting'));
  client.on('connect', () => events.push('connect'));
  assert.equal(payloadText(await client.request('echo', utf8('one'))), 'one');

  await first.server.shutdown({ timeout: 200 });
  await waitFor(() => events.includes('reconnecting'), 1_000, 'a reconnect attempt');
  assert.equal(client.isConnected, false);
  assert.deepEqual(events.slice(0, 2), ['disconnect 1001', 'reconnecting']);

  // Sent while nobody listens: waits for the connection.
  const waiting = outcome(client.request('echo', utf8('two'), { timeout: 2_500 }));
  await delay(120);
  assert.equal(client.isConnected, false);

  await startServerOnPort(t, first.port, echo);
  const result = await waiting;
  assert.equal(result.ok, true, String(result.error));
  assert.equal(payloadText(result.value!), 'two');
  assert.equal(client.isConnected, true);
  assert.equal(events.at(-1), 'connect');
  assert.equal(events.filter((e) => e === 'connect').length, 1);
  assert.equal(events.filter((e) => e.startsWith('disconnect')).length, 1);
  assert.equal(payloadText(await client.request('echo', utf8('three'))), 'three');
});

test('reconnect: false — a request while disconnected fails at once with DisconnectedError', async (t) => {
  const { server, url } = await startServer(t, echo);
  const client = await connectClient(t, url, { reconnect: false });
  const disconnected = new Promise<number>((resolve) => client.once('disconnect', ({ code }) => resolve(code)));
  await server.shutdown({ timeout: 200 });
  assert.equal(await disconnected, 1001);
  await waitFor(() => client.state === 'disconnected', 1_000, "state 'disconnected'");

  const result = await settledAtOnce(outcome(client.request('echo', utf8('x'), { timeout: 5_000 })));
  assert.ok(result !== undefined, 'rejected at once');
  assert.ok(result.error instanceof DisconnectedError, String(result.error));
  assert.equal(client.signal('s', utf8('x')), false, 'a signal is not sent either');
});

test('maxQueuedRequests: 2 — the third waiting request gets QueueFullError', async (t) => {
  const port = await freePort();
  const client = looseClient(t, `ws://127.0.0.1:${port}/`, {
    reconnect: { initialDelay: 50, maxDelay: 100 },
    maxQueuedRequests: 2,
  });
  const one = outcome(client.request('a', utf8('1'), { timeout: 0 }));
  const two = outcome(client.request('b', utf8('2'), { timeout: 0 }));
  const three = await settledAtOnce(outcome(client.request('c', utf8('3'), { timeout: 0 })));
  assert.ok(three !== undefined, 'rejected at once');
  assert.ok(three.error instanceof QueueFullError, String(three.error));

  // The two waiting requests are settled by close(), with DisconnectedError.
  await client.close();
  for (const result of [await one, await two])
    assert.ok(result.error instanceof DisconnectedError, String(result.error));
  // Once closed, requests fail at once.
  await assert.rejects(client.request('d', utf8('4')), DisconnectedError);
});

test('a waiting request with timeout 100 and no server gets TimeoutError', async (t) => {
  const port = await freePort();
  const client = looseClient(t, `ws://127.0.0.1:${port}/`, { reconnect: { initialDelay: 20, maxDelay: 50 } });
  const since = performance.now();
  const result = await outcome(client.request('x', utf8('x'), { timeout: 100 }), since);
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  // Never early; how late is the loaded machine's business (it was "< 600 ms"). The message names
  // the timeout that fired.
  assert.ok(result.ms >= 99, `timed out after ${result.ms} ms`);
  assert.match(result.error.message, /within 100 ms/);
});

test('a waiting request is aborted by its signal while no server is up', async (t) => {
  const port = await freePort();
  const client = looseClient(t, `ws://127.0.0.1:${port}/`, { reconnect: { initialDelay: 20, maxDelay: 50 } });
  const controller = new AbortController();
  const pending = outcome(client.request('x', utf8('x'), { timeout: 0, signal: controller.signal }));
  await delay(30);
  controller.abort();
  const result = await settledAtOnce(pending);
  assert.ok(result !== undefined, 'rejected at once with the abort');
  assert.equal((result.error as Error)?.name, 'CanceledError', String(result.error));
});

test('50 waiting requests sharing one AbortSignal: one listener on it while they wait, none once they settle', async (t) => {
  const port = await freePort();
  const client = looseClient(t, `ws://127.0.0.1:${port}/`, { reconnect: { initialDelay: 20, maxDelay: 50 } });
  await sharedSignalBatches(
    t,
    (name, payload, signal) => client.request(name, payload, { timeout: 5_000, signal }),
    // The second batch waits for this server, then moves to the connection with its signal.
    () => startServerOnPort(t, port, echo),
  );
});

test('pending requests reject with DisconnectedError at once when the server terminates the connection', async (t) => {
  let conn: Connection | undefined;
  let handlerAborts = 0;
  let handlerStarts = 0;
  const { url } = await startServer(t, {
    onClientConnected: (c) => {
      conn = c;
    },
    onRequest: async (_c, _msg, ctx) => {
      handlerStarts++;
      await aborted(ctx.signal);
      handlerAborts++;
    },
  });
  for (const reconnect of [false, { initialDelay: 50 }] as const) {
    conn = undefined;
    const client = await connectClient(t, url, { reconnect });
    await waitFor(() => conn !== undefined, 1_000, 'onClientConnected');
    const pending = Array.from({ length: 5 }, (_, i) => client.request(`r${i}`, utf8('x'), { timeout: 60_000 }));
    await waitFor(
      () => handlerStarts === pending.length * (reconnect === false ? 1 : 2),
      1_000,
      'the handlers to start',
    );
    conn!.terminate();
    const results = await Promise.all(pending.map((p) => outcome(p)));
    // Not at the 60 s deadline (that would be TimeoutError); checked by the error, not by a clock
    // (it was "< 500 ms", which a loaded machine can stall the process for).
    for (const result of results) assert.ok(result.error instanceof DisconnectedError, String(result.error));
    await client.close();
  }
  await waitFor(() => handlerAborts === 10, 1_000, 'the server to abort every handler of the dropped connections');
});

test('a refused upgrade (403) is permanent: connect() rejects with ConnectError 403 and no retry', async (t) => {
  let attempts = 0;
  const { url } = await startServer(t, {
    beforeUpgrade: () => {
      attempts++;
      return false;
    },
  });
  const client = looseClient(t, url, { reconnect: { initialDelay: 20, maxDelay: 50 }, autoConnect: false });
  const reconnecting: number[] = [];
  client.on('reconnecting', ({ attempt }) => reconnecting.push(attempt));
  const errors: Error[] = [];
  client.on('error', (error) => errors.push(error));

  const result = await outcome(client.connect());
  assert.ok(result.error instanceof ConnectError, String(result.error));
  assert.equal(result.error.status, 403);
  await delay(150);
  assert.equal(attempts, 1);
  assert.deepEqual(reconnecting, []);
  assert.equal(errors.length, 1);
  assert.equal(client.state, 'disconnected');
  // Requests fail at once now.
  await assert.rejects(client.request('x', utf8('x')), DisconnectedError);
});

test('a 503 refusal is transient: the client retries until it is let in', async (t) => {
  let attempts = 0;
  const { url } = await startServer(t, {
    ...echo,
    beforeUpgrade: () => {
      attempts++;
      return attempts < 3 ? { accept: false, status: 503 } : true;
    },
  });
  const client = looseClient(t, url, { reconnect: { initialDelay: 20, maxDelay: 50 }, autoConnect: false });
  const reconnecting: number[] = [];
  client.on('reconnecting', ({ attempt }) => reconnecting.push(attempt));
  await client.connect();
  assert.equal(attempts, 3);
  assert.deepEqual(reconnecting, [1, 2]);
  assert.equal(payloadText(await client.request('echo', utf8('in'))), 'in');
});

test('reconnect.maxAttempts bounds the initial connection attempts', async (t) => {
  const port = await freePort();
  const client = looseClient(t, `ws://127.0.0.1:${port}/`, {
    reconnect: { maxAttempts: 3, delay: () => 10 },
    autoConnect: false,
  });
  const errors: Error[] = [];
  client.on('error', (error) => errors.push(error));
  const reconnecting: number[] = [];
  client.on('reconnecting', ({ attempt }) => reconnecting.push(attempt));
  const result = await outcome(client.connect());
  assert.ok(result.error instanceof ConnectError, String(result.error));
  assert.equal(errors.length, 3, 'three attempts');
  assert.deepEqual(reconnecting, [1, 2]);
  assert.equal(client.state, 'disconnected');
});

test('reconnect.maxAttempts bounds the attempts after a lost connection the same way', async (t) => {
  const { server, url } = await startServer(t, echo);
  const client = await connectClient(t, url, { reconnect: { maxAttempts: 3, delay: () => 10 } });
  const errors: Error[] = [];
  client.on('error', (error) => errors.push(error));
  const gaveUp = new Promise<void>((resolve) =>
    client.on('state', (state) => {
      if (state === 'disconnected') resolve();
    }),
  );
  await server.shutdown({ timeout: 200 });
  await gaveUp;
  assert.equal(errors.length, 3, `attempts after the loss: ${errors.length}`);
});
