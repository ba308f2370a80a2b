/**
 * maxPendingUpgrades: upgrades an async beforeUpgrade is deciding at once are bounded (one more is
 * refused with 503 before the hook runs), they count against maxConnections, every way a pending
 * upgrade ends frees its place (accepted, refused, thrown, timed out, client gone, refused for
 * the limit itself), and the option is validated.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { WebSocket } from 'ws';
import type { Client } from '../../../src/client/client.ts';
import { type ConnectError, InvalidArgumentError } from '../../../src/errors.ts';
import { DEFAULT_MAX_PENDING_UPGRADES } from '../../../src/server/options.ts';
import { Server } from '../../../src/server/server.ts';
import type { UpgradeRequest } from '../../../transports/types.ts';
import { connectClient, gate, recordingLogger, startServer, waitFor } from '../../helpers.ts';
import { transportUnderTest } from '../../transport-under-test.ts';
import { refusedConnect, within } from './wire.ts';

const network = transportUnderTest().caps.network;

/** Starts a connect that must be refused; resolves with its ConnectError. */
async function refused(t: TestContext, url: string): Promise<ConnectError> {
  return (await refusedConnect(t, url)).error;
}

/** Starts connects whose upgrades the test holds; resolves once each is being decided. */
async function pendingConnects(
  t: TestContext,
  url: string,
  count: number,
  hookCalls: () => number,
): Promise<{ clients: Client[]; connected: Promise<unknown> }> {
  const before = hookCalls();
  const clients = await Promise.all(Array.from({ length: count }, () => connectClient(t, url, { autoConnect: false })));
  const connected = Promise.all(clients.map((client) => client.connect()));
  connected.catch(() => {}); // awaited by the caller; handled now in case an assertion fails first
  await waitFor(() => hookCalls() === before + count, 2_000, `${count} upgrades being decided`);
  return { clients, connected };
}

test('maxPendingUpgrades: one upgrade more than are being decided is refused with 503 before the hook runs; once decided, upgrades are accepted again', async (t) => {
  const held = gate();
  let hookCalls = 0;
  const { url, server } = await startServer(t, {
    maxPendingUpgrades: 3,
    beforeUpgrade: async () => {
      hookCalls++;
      await held.wait;
      return true;
    },
  });
  const { clients, connected } = await pendingConnects(t, url, 3, () => hookCalls);

  const error = await refused(t, url);
  assert.equal(error.status, 503);
  assert.equal(error.body, 'too many pending upgrades');
  assert.equal(hookCalls, 3, 'the refused upgrade never reached beforeUpgrade');

  held.open();
  await within(connected, 5_000, 'the held upgrades');
  assert.ok(clients.every((client) => client.isConnected));
  assert.equal(server.connections.size, 3);
  // The places are free again: as many upgrades can be decided at once as before.
  const more = await pendingConnects(t, url, 3, () => hookCalls);
  await within(more.connected, 5_000, 'three more upgrades');
  assert.equal(server.connections.size, 6);
});

test('every way a pending upgrade ends frees its place: refused, thrown, timed out, refused for the limit', async (t) => {
  let hookCalls = 0;
  const holds: Array<() => void> = [];
  const { url, server } = await startServer(t, {
    maxPendingUpgrades: 1,
    upgradeTimeout: 300,
    beforeUpgrade: async (request: UpgradeRequest) => {
      hookCalls++;
      if (request.query === 'hang') return new Promise<never>(() => {});
      if (request.query === 'hold') await new Promise<void>((resolve) => holds.push(resolve));
      if (request.query === 'refuse') return { accept: false, status: 401 };
      if (request.query === 'throw') throw new Error('auth backend down');
      return true;
    },
  });
  // With one place, an upgrade being decided proves the place was free.
  const provesFree = async (after: string): Promise<void> => {
    const client = await connectClient(t, `${url}?ok`);
    assert.ok(client.isConnected, `a place was free after ${after}`);
  };
  assert.equal((await refused(t, `${url}?refuse`)).status, 401);
  await provesFree('a refusal');
  assert.equal((await refused(t, `${url}?throw`)).status, 500);
  await provesFree('a hook that threw');
  const timedOut = await refused(t, `${url}?hang`);
  assert.equal(timedOut.status, 503);
  assert.equal(timedOut.body, 'upgrade decision timed out');
  await provesFree('a timeout');

  // Refused for the limit itself: the refusal takes no place.
  const { connected } = await pendingConnects(t, `${url}?hold`, 1, () => hookCalls);
  for (let i = 0; i < 3; i++) assert.equal((await refused(t, `${url}?ok`)).body, 'too many pending upgrades');
  holds.shift()!();
  await within(connected, 5_000, 'the held upgrade');
  await provesFree('refusals for the limit');
  assert.equal(server.connections.size, 5);
});

test('a client that leaves while its upgrade is decided frees its place', { skip: !network }, async (t) => {
  let hookCalls = 0;
  const left: string[] = [];
  const { url } = await startServer(t, {
    maxPendingUpgrades: 1,
    upgradeTimeout: 60_000,
    beforeUpgrade: (request) => {
      if (request.query !== 'leave') return true;
      hookCalls++;
      // Never decides: only the client leaving ends this upgrade (well before upgradeTimeout).
      return new Promise<never>((_resolve, reject) => {
        request.signal?.addEventListener('abort', () => {
          left.push(request.query);
          reject(new Error('the client left'));
        });
      });
    },
  });
  for (let round = 1; round <= 3; round++) {
    const ws = new WebSocket(`${url}?leave`);
    ws.on('error', () => {});
    await waitFor(() => hookCalls === round, 2_000, `upgrade ${round} being decided`);
    assert.equal((await refused(t, url)).body, 'too many pending upgrades');
    const gone = new Promise((resolve) => ws.once('close', resolve));
    ws.terminate();
    await within(gone, 2_000, 'the client socket to close');
    await waitFor(() => left.length === round, 2_000, 'the hook told its client left');
  }
  // The place is free again (beforeUpgrade accepts this one at once).
  const client = await connectClient(t, url);
  assert.ok(client.isConnected);
});

test('upgrades being decided count against maxConnections: open + pending never exceed it', async (t) => {
  const held = gate();
  let hookCalls = 0;
  const { url, server } = await startServer(t, {
    maxConnections: 2,
    beforeUpgrade: async (request) => {
      hookCalls++;
      if (request.query === 'hold') await held.wait;
      return true;
    },
  });
  const first = await connectClient(t, url);
  const { connected } = await pendingConnects(t, `${url}?hold`, 1, () => hookCalls);
  const error = await refused(t, url);
  assert.equal(error.status, 503);
  assert.equal(error.body, 'too many connections');
  assert.equal(hookCalls, 2, 'the refused upgrade never reached beforeUpgrade');

  held.open();
  await within(connected, 5_000, 'the held upgrade');
  assert.equal(server.connections.size, 2);
  assert.equal((await refused(t, url)).body, 'too many connections');
  await first.close();
  await waitFor(() => server.connections.size === 1, 2_000, 'the closed connection gone');
  await connectClient(t, url);
  assert.equal(server.connections.size, 2);
});

test('maxPendingUpgrades must be an integer in 1..1e9 (InvalidArgumentError); default 1024', () => {
  assert.equal(DEFAULT_MAX_PENDING_UPGRADES, 1024);
  const make = (maxPendingUpgrades: unknown): Server =>
    new Server({
      transport: transportUnderTest().server(),
      logger: recordingLogger(),
      maxPendingUpgrades: maxPendingUpgrades as number,
    });
  for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 1e9 + 1, '100']) {
    assert.throws(() => make(bad), InvalidArgumentError, String(bad));
  }
  for (const good of [undefined, 1, 1024, 1e9]) make(good);
});
