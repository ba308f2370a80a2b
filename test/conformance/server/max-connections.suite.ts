/**
 * maxConnections: the bound holds for sequential and simultaneous connects (a refusal with 503
 * before `beforeUpgrade`, upgrades being decided taking a place; or 1013 for one that got past the
 * check on a transport that opens connections later than it decides), a closed connection frees
 * its place, and the option is validated. Pending upgrades: pending-upgrades.suite.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import type { Client } from '../../../src/client/client.ts';
import { ConnectError, InvalidArgumentError } from '../../../src/errors.ts';
import { Server } from '../../../src/server/server.ts';
import { connectClient, delay, startServer, waitFor } from '../../helpers.ts';
import { transportUnderTest } from '../../transport-under-test.ts';

test('maxConnections: one more is refused with 503 before beforeUpgrade runs; a closed one frees its place', async (t) => {
  let hookCalls = 0;
  const { url, server } = await startServer(t, {
    maxConnections: 2,
    beforeUpgrade: () => {
      hookCalls++;
      return true;
    },
    onRequest: (_conn, msg) => msg.payload,
  });
  const first = await connectClient(t, url);
  await connectClient(t, url);
  const third = await connectClient(t, url, { autoConnect: false });
  const error = await third.connect().then(
    () => assert.fail('a third connection was accepted'),
    (err: unknown) => err,
  );
  assert.ok(error instanceof ConnectError, String(error));
  if (transportUnderTest().caps.network) assert.equal(error.status, 503);
  assert.equal(hookCalls, 2, 'the refused upgrade never reached beforeUpgrade');
  assert.equal(server.connections.size, 2);
  await first.close();
  await waitFor(() => server.connections.size === 1, 2_000, 'the closed connection gone');
  const again = await connectClient(t, url);
  assert.equal(payloadText(await again.request('echo', utf8('in'))), 'in');
});

test('maxConnections holds under a burst of simultaneous connects, with a slow beforeUpgrade', async (t) => {
  const { url, server } = await startServer(t, {
    maxConnections: 3,
    // Slow and async: the upgrades of the burst are being decided at once.
    beforeUpgrade: () => delay(50).then(() => true),
  });
  let most = 0;
  const watch = setInterval(() => {
    most = Math.max(most, server.connections.size);
  }, 1);
  t.after(() => clearInterval(watch));
  const clients: Client[] = await Promise.all(
    Array.from({ length: 10 }, () => connectClient(t, url, { autoConnect: false })),
  );
  const outcomes = await Promise.allSettled(clients.map((client) => client.connect()));
  await delay(100);
  most = Math.max(most, server.connections.size);
  const connected = clients.filter((client) => client.state === 'connected');
  assert.ok(connected.length >= 1 && connected.length <= 3, `${connected.length} connected`);
  assert.ok(most <= 3, `at most 3 connections at a time, saw ${most}`);
  for (const outcome of outcomes) {
    if (outcome.status === 'rejected') assert.ok(outcome.reason instanceof ConnectError, String(outcome.reason));
  }
  assert.equal(server.connections.size, connected.length);
});

test('maxConnections must be an integer in 1..1e9', () => {
  const transport = transportUnderTest().server();
  for (const maxConnections of [0, -1, 1.5, Number.NaN, 1e9 + 1]) {
    assert.throws(() => new Server({ transport, maxConnections }), InvalidArgumentError);
  }
});
