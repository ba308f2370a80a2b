/**
 * The server's registry of active sessions over real sockets: counts as sessions are created,
 * restored on more connections, closed and left; a disconnect keeping the session stored; and
 * maxSessionConnections, including 50 restores racing for one slot against a slow store (the
 * reference checked the limit, awaited the store, then registered: a check-then-act race).
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import type { Client } from '../../../src/client/client.ts';
import { MaxSessionConnectionsError } from '../../../src/errors.ts';
import { defaultKeyGenerator } from '../../../src/session/session.ts';
import {
  login,
  sendRestore,
  sessionJsonOf,
  sessionServer,
  skipAcceptConf,
  typeAndId,
  whoami,
} from '../../fixtures/session-helpers.ts';
import { connectClient, hex, type RawPeer, rawPeer, waitFor } from '../../helpers.ts';
import { newestConnection } from '../server/wire.ts';

test('activeSessionCount and sessionConnections follow creates, restores, closes and departures', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  assert.equal(server.activeSessionCount, 0);

  const a = await connectClient(t, url);
  const { key } = await login(a, 'ada');
  assert.equal(server.activeSessionCount, 1);
  assert.equal(server.sessionConnections(key).length, 1);

  const b = await connectClient(t, url);
  await b.restoreSession(key);
  assert.equal(server.activeSessionCount, 1, 'a second connection is not a second session');
  assert.equal(server.sessionConnections(key).length, 2);

  const c = await connectClient(t, url);
  const other = await login(c, 'bob');
  assert.equal(server.activeSessionCount, 2);
  assert.equal(server.sessionConnections(other.key).length, 1);

  await a.close();
  await waitFor(() => server.sessionConnections(key).length === 1, 1_000, 'a leaving the registry');
  assert.equal(server.activeSessionCount, 2);
  assert.equal(await spy.has(key), true, 'leaving does not delete');

  await b.closeSession();
  assert.equal(server.sessionConnections(key).length, 0);
  assert.equal(server.activeSessionCount, 1);
  assert.equal(await spy.has(key), false, 'closed by its last connection: deleted');

  const cConn = server.sessionConnections(other.key)[0]!;
  cConn.terminate();
  await waitFor(() => server.activeSessionCount === 0, 1_000, 'the registry to empty');
  assert.deepEqual(server.sessionConnections(other.key), []);
  assert.equal(await spy.has(other.key), true, 'a dropped connection keeps its session stored');
  assert.equal(spy.count('closed'), 1);
});

test('two connections on one session: closing one leaves the other with its session, still stored', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const a = await connectClient(t, url);
  const { key } = await login(a, 'ada');
  const b = await connectClient(t, url);
  await b.restoreSession(key);
  const bConn = await newestConnection(server, 2);

  await a.close();
  await waitFor(() => server.connections.size === 1, 1_000, 'a to leave');
  assert.equal(b.session?.key, key);
  assert.equal(bConn.session?.key, key);
  assert.deepEqual(server.sessionConnections(key), [bConn]);
  assert.deepEqual(await whoami(b), { key, info: { user: 'ada' } });
  assert.equal(await spy.has(key), true);
  assert.equal(spy.count('closed'), 0);
});

test('a disconnect keeps the session in the store; a new connection restores it', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const a = await connectClient(t, url);
  const session = await login(a, 'ada');
  const lost = new Promise<void>((resolve) => a.once('disconnect', () => resolve()));
  (await newestConnection(server)).terminate();
  await lost;
  await waitFor(() => server.activeSessionCount === 0, 1_000, 'the registry to empty');
  assert.equal(await spy.has(session.key), true);
  assert.equal(spy.count('closed'), 0);

  const b = await connectClient(t, url);
  const restored = await b.restoreSession(session.key);
  assert.equal(restored.key, session.key);
  assert.deepEqual(restored.info, { user: 'ada' });
  assert.equal(server.activeSessionCount, 1);
});

test('maxSessionConnections 4: the fifth restore gets type 4 / MaxSessionConnectionsError; a free slot is reusable', async (t) => {
  const { url, server, spy } = await sessionServer(t, { maxSessionConnections: 4 });
  const clients: Client[] = [await connectClient(t, url)];
  const { key } = await login(clients[0]!);
  for (let i = 1; i < 4; i++) {
    const client = await connectClient(t, url);
    await client.restoreSession(key);
    clients.push(client);
  }
  assert.equal(server.sessionConnections(key).length, 4);
  const lookups = spy.count('lookup');

  const fifth = await connectClient(t, url);
  await assert.rejects(fifth.restoreSession(key), MaxSessionConnectionsError);
  assert.equal(fifth.session, null);
  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRestore(peer, 9, key);
  assert.equal(hex(await peer.next()), typeAndId(0x04, 9));
  // The limit is checked after the lookup (check and register are one synchronous step then).
  assert.equal(spy.count('lookup'), lookups + 2);
  assert.equal(server.sessionConnections(key).length, 4);
  assert.deepEqual(await whoami(fifth), null);

  await clients[3]!.close();
  await waitFor(() => server.sessionConnections(key).length === 3, 1_000, 'a slot to free');
  assert.equal((await fifth.restoreSession(key)).key, key);
  assert.equal(server.sessionConnections(key).length, 4);
});

/** `count` raw peers past their AcceptConf. */
async function rawPeers(t: TestContext, url: string, count: number): Promise<RawPeer[]> {
  return Promise.all(
    Array.from({ length: count }, async () => {
      const peer = await rawPeer(t, url);
      await skipAcceptConf(peer);
      return peer;
    }),
  );
}

test('50 raw restores of one key at once, limit 1, slow store: exactly one 192, 49 type 4', async (t) => {
  const { url, server, spy } = await sessionServer(t, { maxSessionConnections: 1, spy: { lookupDelay: 20 } });
  const owner = await connectClient(t, url);
  const { key } = await login(owner);
  await owner.close();
  await waitFor(() => server.activeSessionCount === 0, 1_000, 'the owner to leave');

  const peers = await rawPeers(t, url, 50);
  for (const peer of peers) sendRestore(peer, 1, key);
  const replies = await Promise.all(peers.map((peer) => peer.next(3_000)));
  const restored = replies.filter((reply) => reply[0] === 0xc0);
  const refused = replies.filter((reply) => hex(reply) === typeAndId(0x04, 1));
  assert.equal(restored.length, 1, 'exactly one restore wins');
  assert.equal(refused.length, 49, `the others get type 4, got ${replies.map((r) => r[0]).join(',')}`);
  assert.equal(sessionJsonOf(restored[0]!, 1).k, key);
  assert.equal(spy.count('lookup'), 50, 'every restore looks up; the limit is checked after');
  assert.equal(server.sessionConnections(key).length, 1);
  assert.equal(server.activeSessionCount, 1);
});

test('50 Clients restoring one key at once, limit 1, slow store: one success, 49 MaxSessionConnectionsError', async (t) => {
  const { url, server } = await sessionServer(t, { maxSessionConnections: 1, spy: { lookupDelay: 20 } });
  const owner = await connectClient(t, url);
  const { key } = await login(owner);
  await owner.close();
  await waitFor(() => server.activeSessionCount === 0, 1_000, 'the owner to leave');

  const clients = await Promise.all(Array.from({ length: 50 }, () => connectClient(t, url)));
  const results = await Promise.allSettled(clients.map((client) => client.restoreSession(key)));
  const won = results.filter((r) => r.status === 'fulfilled');
  const lost = results.filter((r) => r.status === 'rejected');
  assert.equal(won.length, 1);
  assert.equal(lost.length, 49);
  for (const r of lost) assert.ok((r as PromiseRejectedResult).reason instanceof MaxSessionConnectionsError);
  assert.equal(clients.filter((client) => client.session?.key === key).length, 1);
  assert.equal(server.sessionConnections(key).length, 1);
});

test('50 restores at once without a limit (0): all succeed on 50 connections', async (t) => {
  const { url, server } = await sessionServer(t, { spy: { lookupDelay: 20 } });
  const owner = await connectClient(t, url);
  const { key } = await login(owner);
  const peers = await rawPeers(t, url, 50);
  for (const peer of peers) sendRestore(peer, 2, key);
  const replies = await Promise.all(peers.map((peer) => peer.next(3_000)));
  for (const reply of replies) assert.equal(sessionJsonOf(reply, 2).k, key);
  assert.equal(server.sessionConnections(key).length, 51);
  assert.equal(server.activeSessionCount, 1);
});

test('50 restores of an unknown key at once, limit 1: all type 3 (not found), registry empty after', async (t) => {
  const { url, server, spy } = await sessionServer(t, { maxSessionConnections: 1, spy: { lookupDelay: 20 } });
  const unknown = defaultKeyGenerator.generate();
  const peers = await rawPeers(t, url, 50);
  for (const peer of peers) sendRestore(peer, 3, unknown);
  const replies = await Promise.all(peers.map((peer) => peer.next(3_000)));
  for (const reply of replies) assert.equal(hex(reply), typeAndId(0x03, 3));
  assert.equal(spy.count('lookup'), 50);
  assert.equal(server.activeSessionCount, 0);
  assert.deepEqual(server.sessionConnections(unknown), []);
});
