/**
 * Updating a session's info end to end: `conn.updateSession(info)` and
 * `server.updateSession(key, info)` over the transport under test (no raw sockets, so it runs on
 * the memory transport too; the one wire-level test is skipped there). Every connection holding
 * the session gets type 21 again with the same key, the Client emits `sessionUpdated` (never
 * `sessionCreated`), `conn.session` follows, a client that restores later gets the new info, and
 * updates reach connections whose restore is still looking up or attaching the session.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import type { Client } from '../../../src/client/client.ts';
import {
  DisconnectedError,
  InternalError,
  InvalidArgumentError,
  InvalidStateError,
  SessionNotFoundError,
  SessionStoreUnsupportedError,
  SessionsDisabledError,
} from '../../../src/errors.ts';
import { MemorySessionManager } from '../../../src/session/memory-store.ts';
import {
  defaultKeyGenerator,
  type Session,
  type SessionAttachResult,
  type SessionManager,
} from '../../../src/session/session.ts';
import {
  login,
  rawLogin,
  sendRestore,
  sessionApp,
  sessionJsonOf,
  sessionServer,
  skipAcceptConf,
  whoami,
} from '../../fixtures/session-helpers.ts';
import { connectClient, delay, gate, hex, rawPeer, startServer, waitFor } from '../../helpers.ts';
import { transportUnderTest } from '../../transport-under-test.ts';
import { newestConnection, within } from '../server/wire.ts';

const FAST_RECONNECT = { initialDelay: 20, maxDelay: 60 } as const;

type SessionEvent = 'sessionCreated' | 'sessionUpdated' | 'sessionRestored' | 'sessionClosed';

/** Records the session events of `client`, in order, with the info each carried. */
function sessionEvents(client: Client): Array<{ event: SessionEvent; info?: unknown }> {
  const seen: Array<{ event: SessionEvent; info?: unknown }> = [];
  for (const event of ['sessionCreated', 'sessionUpdated', 'sessionRestored'] as const) {
    client.on(event, (session: Session) => seen.push({ event, info: session.info }));
  }
  client.on('sessionClosed', () => seen.push({ event: 'sessionClosed' }));
  return seen;
}

function nextUpdate(client: Client, ms = 2_000): Promise<Session> {
  return within(new Promise((resolve) => client.once('sessionUpdated', resolve)), ms, "'sessionUpdated'");
}

test('conn.updateSession: every connection of the session gets the new info, same key; sessionUpdated, not sessionCreated', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const a = await connectClient(t, url);
  const session = await login(a, 'ada');
  const b = await connectClient(t, url);
  await b.restoreSession(session.key);
  const bystander = await connectClient(t, url);
  const other = await login(bystander, 'bob');
  const seenA = sessionEvents(a);
  const seenB = sessionEvents(b);
  const seenBystander = sessionEvents(bystander);
  const order: string[] = [];
  a.on('sessionUpdated', () => order.push('sessionUpdated'));
  const updatedB = nextUpdate(b);

  await a.request('rename', utf8('grace')).then(() => order.push('reply'));
  assert.deepEqual(order, ['sessionUpdated', 'reply'], 'told before the reply of the request that updated it');
  const fromB = await updatedB;
  for (const client of [a, b]) {
    assert.equal(client.session?.key, session.key, 'the same key');
    assert.deepEqual(client.session?.info, { user: 'grace' });
    assert.equal(client.session?.creation.getTime(), session.creation.getTime());
    assert.deepEqual(await whoami(client), { key: session.key, info: { user: 'grace' } }, 'conn.session follows');
  }
  assert.equal(b.session, fromB);
  assert.deepEqual(seenA, [{ event: 'sessionUpdated', info: { user: 'grace' } }]);
  assert.deepEqual(seenB, [{ event: 'sessionUpdated', info: { user: 'grace' } }]);
  for (const conn of server.sessionConnections(session.key)) assert.deepEqual(conn.session?.info, { user: 'grace' });

  // The store has it; nobody else heard of it.
  assert.deepEqual((await spy.inner.onSessionLookup(session.key))?.info, { user: 'grace' });
  assert.deepEqual(seenBystander, []);
  assert.deepEqual(await whoami(bystander), { key: other.key, info: { user: 'bob' } });
  assert.deepEqual(
    spy.calls.filter((c) => c.hook === 'updated'),
    [{ hook: 'updated', key: session.key }],
  );
});

test('server.updateSession(key): resolves with the connections told; info replaced (not merged), or removed with undefined', async (t) => {
  const { url, server } = await sessionServer(t);
  const a = await connectClient(t, url);
  const { key } = await login(a, 'ada');
  const b = await connectClient(t, url);
  await b.restoreSession(key);

  const both = Promise.all([nextUpdate(a), nextUpdate(b)]);
  assert.equal(await server.updateSession(key, { name: 'Ada Lovelace', roles: ['admin'] }), 2);
  await both;
  assert.deepEqual(a.session?.info, { name: 'Ada Lovelace', roles: ['admin'] }, 'user is gone: replaced');

  const again = nextUpdate(a);
  assert.equal(await server.updateSession(key, undefined), 2);
  assert.equal((await again).info, undefined);
  assert.deepEqual(await whoami(a), { key, info: null });
  await waitFor(() => b.session?.info === undefined, 1_000, 'b to hear of it');
  assert.equal(server.sessionConnections(key)[0]?.session?.info, undefined);
});

test('wire: each connection of the session gets a type 21 with the same k and c, the stored l and the new i', async (t) => {
  if (!transportUnderTest().caps.network) {
    t.skip('raw peers need real sockets');
    return;
  }
  const { url, server, spy } = await sessionServer(t);
  const first = await rawLogin(t, url, 'ada');
  const second = await rawPeer(t, url);
  await skipAcceptConf(second);
  sendRestore(second, 2, first.key);
  const restored = sessionJsonOf(await second.next(), 2);

  assert.equal(await server.updateSession(first.key, { user: 'grace' }), 2);
  const stored = await spy.inner.onSessionLookup(first.key);
  for (const peer of [first.peer, second]) {
    const json = sessionJsonOf(await peer.next());
    assert.deepEqual(Object.keys(json), ['k', 'c', 'l', 'i']);
    assert.equal(json.k, first.key);
    assert.equal(json.c, restored.c);
    assert.equal(json.l, restored.l, "the restore's lookup time, as stored: an update is not a lookup");
    assert.deepEqual(json.i, { user: 'grace' });
  }
  assert.ok(stored);

  await server.updateSession(first.key, undefined);
  assert.deepEqual(Object.keys(sessionJsonOf(await first.peer.next())), ['k', 'c', 'l'], 'no "i" without info');
  await delay(20);
  assert.equal(first.peer.messages.length, 5, 'AcceptConf, 21, login reply, two updates: nothing else');
  assert.ok(
    first.peer.messages.every((m) => hex(m) !== '16'),
    'no 22',
  );
});

test('a client away during the update restores the session with the new info on reconnect', async (t) => {
  const { url, server } = await sessionServer(t);
  const client = await connectClient(t, url, { reconnect: FAST_RECONNECT });
  const session = await login(client, 'ada');
  const seen = sessionEvents(client);
  const restored = within(
    new Promise<Session>((resolve) => client.once('sessionRestored', resolve)),
    3_000,
    "'sessionRestored'",
  );
  const lost = within(new Promise((resolve) => client.once('disconnect', resolve)), 2_000, "'disconnect'");
  (await newestConnection(server)).terminate();
  await lost;
  await waitFor(() => server.sessionConnections(session.key).length === 0, 1_000, 'the connection to leave');
  assert.equal(await server.updateSession(session.key, { user: 'grace' }), 0, 'nobody here to tell');

  const again = await restored;
  assert.equal(again.key, session.key);
  assert.deepEqual(again.info, { user: 'grace' });
  await waitFor(() => client.isConnected, 1_000, 'connected');
  assert.deepEqual(await whoami(client), { key: session.key, info: { user: 'grace' } });
  assert.deepEqual(seen, [{ event: 'sessionRestored', info: { user: 'grace' } }]);
});

test('update of an unknown or closed key: SessionNotFoundError, nothing sent, nothing stored', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const unknown = defaultKeyGenerator.generate();
  await assert.rejects(server.updateSession(unknown, { user: 'eve' }), SessionNotFoundError);
  assert.equal(await spy.has(unknown), false, 'an update never creates a session');
  await assert.rejects(server.updateSession('../not-a-key', { user: 'eve' }), SessionNotFoundError);
  assert.equal(spy.calls.filter((c) => c.hook === 'updated' && c.key === '../not-a-key').length, 0, 'no store call');

  const client = await connectClient(t, url);
  const { key } = await login(client, 'ada');
  const seen = sessionEvents(client);
  assert.equal(await server.closeSession(key), 1);
  await waitFor(() => client.session === null, 1_000, 'the close to arrive');
  await assert.rejects(server.updateSession(key, { user: 'eve' }), SessionNotFoundError);
  assert.equal(await spy.has(key), false);
  await delay(20);
  assert.deepEqual(seen, [{ event: 'sessionClosed' }], 'no 21 after the 22');
  assert.deepEqual(await whoami(client), null);
});

test('a session gone from the store while its connection holds it: conn.updateSession rejects SessionNotFoundError', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const client = await connectClient(t, url);
  const { key } = await login(client, 'ada');
  await spy.inner.onSessionClosed(key); // expired, or deleted behind the server's back
  const conn = await newestConnection(server);
  await assert.rejects(conn.updateSession({ user: 'grace' }), SessionNotFoundError);
  assert.deepEqual(conn.session?.info, { user: 'ada' }, 'the connection keeps what it had');
  assert.deepEqual(client.session?.info, { user: 'ada' });
});

test('errors: no session (InvalidStateError), bad info (InvalidArgumentError), closed connection (DisconnectedError)', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  await assert.rejects(conn.updateSession({ user: 'ada' }), InvalidStateError);
  await assert.rejects(client.request('rename', utf8('ada')), InternalError, 'through a handler: type 2');

  const { key } = await login(client, 'ada');
  const seen = sessionEvents(client);
  for (const info of [{ when: new Date() }, { n: Number.NaN }, { u: undefined }, [1] as unknown as object]) {
    await assert.rejects(conn.updateSession(info as Record<string, unknown>), InvalidArgumentError);
    await assert.rejects(server.updateSession(key, info as Record<string, unknown>), InvalidArgumentError);
  }
  assert.equal(spy.count('updated'), 0, 'refused before the store');
  assert.deepEqual((await spy.inner.onSessionLookup(key))?.info, { user: 'ada' });

  await client.close();
  await conn.closed;
  await assert.rejects(conn.updateSession({ user: 'grace' }), DisconnectedError);
  assert.deepEqual(seen, []);
});

test('sessions disabled: conn.updateSession and server.updateSession reject SessionsDisabledError', async (t) => {
  const { url, server } = await startServer(t, { sessions: false, onRequest: sessionApp });
  await connectClient(t, url);
  const conn = await newestConnection(server);
  await assert.rejects(conn.updateSession({ user: 'ada' }), SessionsDisabledError);
  await assert.rejects(server.updateSession(defaultKeyGenerator.generate(), { user: 'ada' }), SessionsDisabledError);
});

test('a store without onSessionUpdate: SessionStoreUnsupportedError naming the hook; nothing changes anywhere', async (t) => {
  const inner = new MemorySessionManager();
  const legacy: SessionManager = {
    onSessionCreated: (session) => inner.onSessionCreated(session),
    onSessionLookup: (key) => inner.onSessionLookup(key),
    onSessionClosed: (key) => inner.onSessionClosed(key),
  };
  const { url, server } = await startServer(t, { sessionManager: legacy, onRequest: sessionApp });
  const client = await connectClient(t, url);
  const { key } = await login(client, 'ada');
  const seen = sessionEvents(client);
  const conn = await newestConnection(server);
  const unsupported = (error: unknown): boolean =>
    error instanceof SessionStoreUnsupportedError &&
    error.code === 'ERR_SESSION_STORE_UNSUPPORTED' &&
    error.hook === 'onSessionUpdate' &&
    error.message.includes('onSessionUpdate');
  await assert.rejects(conn.updateSession({ user: 'grace' }), unsupported);
  await assert.rejects(server.updateSession(key, { user: 'grace' }), unsupported);
  await assert.rejects(client.request('rename', utf8('grace')), InternalError);
  assert.deepEqual(conn.session?.info, { user: 'ada' }, 'not updated in memory only');
  assert.deepEqual((await inner.onSessionLookup(key))?.info, { user: 'ada' });
  await delay(20);
  assert.deepEqual(seen, []);
  assert.deepEqual(client.session?.info, { user: 'ada' });
});

/** A memory store whose lookups and attaches wait while `hold` is set: the windows of a restore. */
class Gated extends MemorySessionManager {
  holdLookup: Promise<void> | undefined;
  holdAttach: Promise<void> | undefined;
  lookups = 0;
  attaches = 0;
  override async onSessionLookup(key: string): Promise<Session | null> {
    const found = await super.onSessionLookup(key);
    this.lookups++;
    await this.holdLookup;
    return found;
  }
  override async onSessionAttach(key: string, limit: number): Promise<SessionAttachResult> {
    this.attaches++;
    await this.holdAttach;
    return super.onSessionAttach(key, limit);
  }
}

async function restoringWhileUpdated(t: TestContext, window: 'lookup' | 'attach'): Promise<void> {
  const store = new Gated();
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const owner = await connectClient(t, url);
  const { key } = await login(owner, 'ada');
  const late = await connectClient(t, url);
  const seen = sessionEvents(late);
  const held = gate();
  if (window === 'lookup') store.holdLookup = held.wait;
  else store.holdAttach = held.wait;
  const attachesBefore = store.attaches;
  const restoring = late.restoreSession(key);
  // The lookup has read { user: 'ada' } (or the attach is being counted) when the update lands.
  await waitFor(
    () => (window === 'lookup' ? store.lookups === 1 : store.attaches === attachesBefore + 1),
    1_000,
    `the restore's ${window}`,
  );
  assert.equal(
    await server.updateSession(key, { user: 'grace' }),
    1,
    'told: the owner; the late one is not attached yet',
  );
  held.open();
  const restored = await restoring;
  assert.deepEqual(restored.info, { user: 'grace' }, 'the restore reply carries the update');
  assert.deepEqual(late.session?.info, { user: 'grace' });
  assert.deepEqual(await whoami(late), { key, info: { user: 'grace' } }, 'and conn.session');
  assert.deepEqual(await whoami(owner), { key, info: { user: 'grace' } });
  assert.deepEqual(seen, [{ event: 'sessionRestored', info: { user: 'grace' } }]);
}

test('an update while a restore is looking the session up reaches that connection', (t) =>
  restoringWhileUpdated(t, 'lookup'));

test('an update while a restore is attaching the session reaches that connection', (t) =>
  restoringWhileUpdated(t, 'attach'));

test('updates racing a close by key: the client never gets the session back after the close', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  for (let round = 0; round < 5; round++) {
    const client = await connectClient(t, url);
    const { key } = await login(client, 'ada');
    const seen = sessionEvents(client);
    const results = await Promise.allSettled([
      server.updateSession(key, { user: 'one' }),
      server.closeSession(key),
      server.updateSession(key, { user: 'two' }),
    ]);
    for (const result of [results[0], results[2]]) {
      if (result.status === 'rejected') assert.ok(result.reason instanceof SessionNotFoundError, String(result.reason));
    }
    await waitFor(() => client.session === null, 1_000, 'the close');
    await delay(20);
    assert.equal(client.session, null, `round ${round}: the session stays closed at the client`);
    assert.equal(seen.at(-1)?.event, 'sessionClosed', `round ${round}: ${JSON.stringify(seen)}`);
    assert.deepEqual(await whoami(client), null);
    assert.equal(await spy.has(key), false);
  }
});

test('20 updates of one session at once end on the last, at the client, on the server and in the store', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const client = await connectClient(t, url);
  const { key } = await login(client, 'ada');
  const updates: unknown[] = [];
  client.on('sessionUpdated', (session) => updates.push(session.info));
  const counts = await Promise.all(Array.from({ length: 20 }, (_, n) => server.updateSession(key, { n })));
  assert.deepEqual(counts, Array(20).fill(1));
  await waitFor(() => updates.length === 20, 2_000, 'every update at the client');
  assert.deepEqual(
    updates,
    Array.from({ length: 20 }, (_, n) => ({ n })),
    'in call order',
  );
  assert.deepEqual(client.session?.info, { n: 19 });
  assert.deepEqual(await whoami(client), { key, info: { n: 19 } });
  assert.deepEqual((await spy.inner.onSessionLookup(key))?.info, { n: 19 });
});

test("the client's parseSessionInfo shapes an updated session too", async (t) => {
  const { url, server } = await sessionServer(t);
  const client = await connectClient(t, url, { parseSessionInfo: (info) => ({ ...info, parsed: true }) });
  const { key } = await login(client, 'ada');
  const updated = nextUpdate(client);
  await server.updateSession(key, { user: 'grace' });
  assert.deepEqual((await updated).info, { user: 'grace', parsed: true });
  assert.equal(payloadText(await client.request('whoami', utf8(''))).includes('parsed'), false);
});
