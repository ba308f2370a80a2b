/**
 * upgradeTimeout: an async beforeUpgrade that does not settle in time is refused with 503, its
 * late verdict (accept or rejection) is ignored, shutdown answers a pending upgrade at once, a
 * client leaving mid-decision breaks nothing, and the option is validated. Runs on every
 * transport; the tests that need a raw socket only where there are real ones.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { ConnectError, InvalidArgumentError } from '../../../src/errors.ts';
import { DEFAULT_UPGRADE_TIMEOUT } from '../../../src/server/options.ts';
import { Server } from '../../../src/server/server.ts';
import { connectClient, delay, gate, recordingLogger, startServer, waitFor } from '../../helpers.ts';
import { transportUnderTest } from '../../transport-under-test.ts';
import { refusedConnect, within } from './wire.ts';

const network = transportUnderTest().caps.network;
const NEVER = (): Promise<never> => new Promise<never>(() => {});
const TIMEOUT_WARNING = /did not settle in time/;

/** Opens a raw ws connection that must be refused; resolves with the HTTP status and body. */
function rawRefusal(url: string): Promise<{ status: number; body: string }> {
  const ws = new WebSocket(url);
  ws.on('error', () => {});
  const result = new Promise<{ status: number; body: string }>((resolve, reject) => {
    ws.once('open', () => reject(new Error('the upgrade was accepted')));
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
  });
  return within(result, 5_000, `a refusal from ${url}`).finally(() => ws.terminate());
}

test('a beforeUpgrade that never settles is refused with 503 after upgradeTimeout and a warning is logged', async (t) => {
  let calls = 0;
  const { url, server, logger } = await startServer(t, {
    upgradeTimeout: 200,
    beforeUpgrade: () => {
      calls++;
      return NEVER();
    },
  });
  const { error, elapsed } = await refusedConnect(t, `${url}?token=query-secret`, {
    authorization: 'Bearer header-secret',
  });
  assert.equal(error.status, 503);
  assert.equal(calls, 1);
  // Never tight: not before the deadline (give the clock a little slack), well before 5 s.
  assert.ok(elapsed >= 150, `refused after ${elapsed} ms, before the 200 ms timeout`);
  assert.ok(elapsed < 4_000, `refused after ${elapsed} ms`);
  assert.equal(server.connections.size, 0);

  const warnings = logger.entries.filter((e) => e.level === 'warn' && TIMEOUT_WARNING.test(e.message));
  assert.equal(warnings.length, 1);
  assert.equal(warnings[0]!.context?.timeout, 200);
  const logged = JSON.stringify(logger.entries);
  assert.ok(!logged.includes('header-secret'), 'no request headers in the log');
  assert.ok(!logged.includes('query-secret'), 'no query string in the log');
  assert.ok(!logger.entries.some((e) => e.level === 'error'));
});

test('the timed-out refusal says "upgrade decision timed out" over HTTP', { skip: !network }, async (t) => {
  const { url } = await startServer(t, { upgradeTimeout: 200, beforeUpgrade: NEVER });
  const refusal = await rawRefusal(url);
  assert.equal(refusal.status, 503);
  assert.equal(refusal.body, 'upgrade decision timed out');
});

test('a beforeUpgrade that accepts after upgradeTimeout makes no connection', async (t) => {
  let settled = false;
  let connected = 0;
  const { url, server } = await startServer(t, {
    upgradeTimeout: 100,
    beforeUpgrade: async () => {
      await delay(400);
      settled = true;
      return { accept: true, info: { late: true } };
    },
    onClientConnected: () => {
      connected++;
    },
  });
  const { error } = await refusedConnect(t, url);
  assert.equal(error.status, 503);
  await waitFor(() => settled, 2_000, 'the late verdict');
  await delay(100);
  assert.equal(connected, 0, 'onClientConnected must not run');
  assert.equal(server.connections.size, 0);
});

test('a beforeUpgrade that rejects after upgradeTimeout is ignored: no unhandled rejection, no error logged', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
  };
  process.on('unhandledRejection', onUnhandled);
  t.after(() => process.off('unhandledRejection', onUnhandled));
  let rejected = false;
  const { url, server, logger } = await startServer(t, {
    upgradeTimeout: 100,
    beforeUpgrade: async () => {
      await delay(300);
      rejected = true;
      throw new Error('late auth failure');
    },
  });
  const { error } = await refusedConnect(t, url);
  assert.equal(error.status, 503);
  await waitFor(() => rejected, 2_000, 'the late rejection');
  // Unhandled rejections are reported after the microtask queue drains: give it a few turns.
  await delay(100);
  assert.deepEqual(unhandled, []);
  assert.ok(!logger.entries.some((e) => e.level === 'error'), 'the late rejection is not logged as a failure');
  assert.equal(server.connections.size, 0);
});

test('a beforeUpgrade settling before upgradeTimeout decides as usual (accept and refusal)', async (t) => {
  const { url, logger } = await startServer(t, {
    upgradeTimeout: 2_000,
    beforeUpgrade: async (request) => {
      await delay(50);
      return request.query === 'deny'
        ? { accept: false, status: 401, reason: 'bad token' }
        : { accept: true, info: 'ok' };
    },
    onRequest: (conn) => String(conn.info),
  });
  const client = await connectClient(t, url);
  assert.equal(payloadText(await client.request('who', utf8(''))), 'ok');
  const { error } = await refusedConnect(t, `${url}?deny`);
  assert.equal(error.status, 401);
  assert.ok(!logger.entries.some((e) => TIMEOUT_WARNING.test(e.message)));
});

test('shutdown while beforeUpgrade runs refuses that upgrade with 503 at once, not at the deadline', async (t) => {
  const held = gate();
  let hookCalls = 0;
  let handlerStarted = false;
  const { url, server, logger } = await startServer(t, {
    upgradeTimeout: 60_000,
    beforeUpgrade: (request) => {
      if (request.query !== 'hang') return true;
      hookCalls++;
      return NEVER();
    },
    onRequest: async () => {
      handlerStarted = true;
      await held.wait;
      return 'done';
    },
  });
  // A request in flight keeps the drain (and so the transport) going while the upgrade is answered.
  const busy = await connectClient(t, url);
  const inFlight = busy.request('slow', utf8(''));
  inFlight.catch(() => {}); // awaited below; handled now in case an assertion fails first
  await waitFor(() => handlerStarted, 2_000, 'the slow handler');

  const pending = refusedConnect(t, `${url}?hang`);
  await waitFor(() => hookCalls === 1, 2_000, 'beforeUpgrade to run');
  const shutdown = server.shutdown({ timeout: 5_000 });
  const { error, elapsed } = await pending;
  assert.equal(error.status, 503);
  assert.ok(elapsed < 4_000, `refused after ${elapsed} ms`);
  assert.ok(!logger.entries.some((e) => TIMEOUT_WARNING.test(e.message)), 'a shutdown refusal is not a timeout');

  held.open();
  assert.equal(payloadText(await inFlight), 'done');
  await within(shutdown, 5_000, 'shutdown');
});

test('shutdown with an upgrade pending and nothing else in flight completes promptly', async (t) => {
  let hookCalls = 0;
  const { url, server } = await startServer(t, {
    upgradeTimeout: 60_000,
    beforeUpgrade: () => {
      hookCalls++;
      return NEVER();
    },
  });
  const client = await connectClient(t, url, { autoConnect: false });
  // The transport may be stopped before it writes the 503: only "it fails" is certain here.
  const attempt = client.connect().then(
    () => assert.fail('the upgrade was accepted'),
    (err: unknown) => err,
  );
  await waitFor(() => hookCalls === 1, 2_000, 'beforeUpgrade to run');
  await within(server.shutdown({ timeout: 5_000 }), 4_000, 'shutdown');
  assert.ok((await within(attempt, 4_000, 'the failed connect')) instanceof ConnectError);
});

test('a client leaving while beforeUpgrade runs breaks nothing, at the deadline or on a late accept', {
  skip: !network,
}, async (t) => {
  let hooks = 0;
  const verdicts: Array<() => void> = [];
  const told: string[] = [];
  let connected = 0;
  const { url, server, logger } = await startServer(t, {
    upgradeTimeout: 300,
    beforeUpgrade: (request) => {
      if (request.query === '') return true;
      hooks++;
      request.signal?.addEventListener('abort', () => told.push(request.query));
      if (request.query === 'hang') return NEVER();
      // Accepts once the test says so: after the client left, before the deadline.
      return new Promise((resolve) => verdicts.push(() => resolve(true)));
    },
    onClientConnected: () => {
      connected++;
    },
  });
  for (const query of ['hang', 'late-accept']) {
    const ws = new WebSocket(`${url}?${query}`);
    ws.on('error', () => {});
    const before = hooks;
    await waitFor(() => hooks === before + 1, 2_000, `beforeUpgrade for ${query}`);
    const gone = new Promise((resolve) => ws.once('close', resolve));
    ws.terminate();
    await within(gone, 2_000, 'the client socket to close');
  }
  await delay(50);
  verdicts.shift()!();
  // Both hooks were told their client left; past the deadline, the hung one is not reported as
  // late (its client is gone), and the late accept opened nothing.
  await waitFor(() => told.length === 2, 2_000, 'the hooks told');
  assert.deepEqual(told, ['hang', 'late-accept']);
  await delay(400);
  assert.ok(!logger.entries.some((e) => TIMEOUT_WARNING.test(e.message)));
  assert.equal(connected, 0);
  assert.equal(server.connections.size, 0);
  assert.ok(!logger.entries.some((e) => e.level === 'error'));
  // The server still serves.
  const client = await connectClient(t, url);
  assert.equal(client.isConnected, true);
  assert.equal(connected, 1);
});

test('upgradeTimeout must be an integer in 1..2147483647 (InvalidArgumentError); default 10 s', () => {
  assert.equal(DEFAULT_UPGRADE_TIMEOUT, 10_000);
  const make = (upgradeTimeout: unknown): Server =>
    new Server({
      transport: transportUnderTest().server(),
      logger: recordingLogger(),
      upgradeTimeout: upgradeTimeout as number,
    });
  for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, '100']) {
    assert.throws(() => make(bad), InvalidArgumentError, String(bad));
  }
  for (const good of [undefined, 1, 200, 2 ** 31 - 1]) make(good);
});
