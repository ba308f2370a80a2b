/**
 * Sessions end to end over real sockets (127.0.0.1, port 0): creating (type 21 before the reply),
 * restoring (type 192 with the session JSON), closing from either side (31 → empty 191, no 22;
 * server → 22), refusals (unknown and invalid keys, sessions disabled, a second session), custom
 * key generators and the parseSessionInfo hooks. Each wire fact is checked with a raw peer, each
 * API with the real Client.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { utf8 } from '../../../protocol/payload.ts';
import {
  DisconnectedError,
  InternalError,
  InvalidArgumentError,
  InvalidStateError,
  RequestError,
  SessionNotFoundError,
  SessionsDisabledError,
} from '../../../src/errors.ts';
import { defaultKeyGenerator, type Session, type SessionKeyGenerator } from '../../../src/session/session.ts';
import {
  countingGenerator,
  login,
  RFC3339_UTC_FRACTION,
  rawLogin,
  sendClose,
  sendRequest,
  sendRestore,
  sessionApp,
  sessionJsonOf,
  sessionServer,
  SpyManager,
  skipAcceptConf,
  typeAndId,
  whoami,
} from '../../fixtures/session-helpers.ts';
import { connectClient, delay, gate, hex, rawPeer, startServer, waitFor } from '../../helpers.ts';
import { newestConnection } from '../server/wire.ts';

test('type 21 arrives before the reply of the request that created the session, JSON k,c,l,i', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRequest(peer, 7, 'login', 'ada');

  const first = await peer.next();
  assert.equal(first[0], 0x15, `first message should be NotifySessionCreated, got ${hex(first)}`);
  const json = sessionJsonOf(first);
  assert.deepEqual(Object.keys(json), ['k', 'c', 'l', 'i']);
  assert.ok(defaultKeyGenerator.isValid(json.k as string), 'a default key: 64 base64url characters');
  assert.match(json.c as string, RFC3339_UTC_FRACTION);
  assert.match(json.l as string, RFC3339_UTC_FRACTION);
  assert.equal(json.c, json.l, 'a new session was last looked up when it was created');
  assert.deepEqual(json.i, { user: 'ada' });

  const second = await peer.next();
  assert.equal(hex(second), `${typeAndId(0xc0, 7)}${hex(utf8('ok').data)}`, 'then the reply');

  // Stored before the client was told; registered on this connection.
  assert.deepEqual(spy.calls, [{ hook: 'created', key: json.k }]);
  assert.equal(await spy.has(json.k as string), true);
  assert.equal(server.activeSessionCount, 1);
  assert.equal(server.sessionConnections(json.k as string).length, 1);
});

test('a session without info: type 21 JSON has no "i"', async (t) => {
  const { url } = await sessionServer(t);
  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRequest(peer, 1, 'login', '');
  assert.deepEqual(Object.keys(sessionJsonOf(await peer.next())), ['k', 'c', 'l']);
});

test('client: sessionCreated fires before the login reply resolves; client.session has key and info', async (t) => {
  const { url } = await sessionServer(t);
  const client = await connectClient(t, url);
  const order: string[] = [];
  let created: Session | undefined;
  client.on('sessionCreated', (session) => {
    order.push('sessionCreated');
    created = session;
  });
  await client.request('login', utf8('ada')).then(() => order.push('reply'));
  assert.deepEqual(order, ['sessionCreated', 'reply']);
  assert.equal(client.session, created);
  assert.deepEqual(created?.info, { user: 'ada' });
  assert.ok(defaultKeyGenerator.isValid(created!.key));
  assert.equal(created?.creation.getTime(), created?.lastLookup.getTime());
  assert.deepEqual(await whoami(client), { key: created!.key, info: { user: 'ada' } });
});

test('restore replies type 192 (UTF-8) with the session JSON: k, c, l, i in order, RFC 3339 UTC', async (t) => {
  const { url, spy } = await sessionServer(t);
  const owner = await connectClient(t, url);
  const session = await login(owner, 'ada');
  const bare = await connectClient(t, url);
  const bareSession = await login(bare, '');

  await delay(5); // so the restore's lastLookup is later than the creation
  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRestore(peer, 0x1122, session.key);
  const json = sessionJsonOf(await peer.next(), 0x1122);
  assert.deepEqual(Object.keys(json), ['k', 'c', 'l', 'i']);
  assert.equal(json.k, session.key);
  assert.match(json.c as string, RFC3339_UTC_FRACTION);
  assert.match(json.l as string, RFC3339_UTC_FRACTION);
  assert.equal(json.c, session.creation.toISOString());
  assert.ok(Date.parse(json.l as string) > Date.parse(json.c as string), 'the lookup moved lastLookup');
  assert.deepEqual(json.i, { user: 'ada' });
  assert.equal(spy.count('lookup'), 1);

  const other = await rawPeer(t, url);
  await skipAcceptConf(other);
  sendRestore(other, 2, bareSession.key);
  assert.deepEqual(Object.keys(sessionJsonOf(await other.next(), 2)), ['k', 'c', 'l'], 'no "i" without info');
});

test('client.restoreSession on a second connection: sessionRestored, same key and info, server side set', async (t) => {
  const { url, server } = await sessionServer(t);
  const owner = await connectClient(t, url);
  const session = await login(owner, 'ada');
  const second = await connectClient(t, url);
  const restoredEvent = new Promise<Session>((resolve) => second.once('sessionRestored', resolve));
  const restored = await second.restoreSession(session.key);
  assert.equal(await restoredEvent, restored);
  assert.equal(second.session, restored);
  assert.equal(restored.key, session.key);
  assert.deepEqual(restored.info, { user: 'ada' });
  assert.equal(restored.creation.getTime(), session.creation.getTime());
  assert.deepEqual(await whoami(second), { key: session.key, info: { user: 'ada' } });
  assert.equal(server.sessionConnections(session.key).length, 2);
});

test('unknown key: SessionNotFoundError on client.restoreSession, raw type 3; one lookup each', async (t) => {
  const { url, spy, server } = await sessionServer(t);
  const unknown = defaultKeyGenerator.generate();
  const client = await connectClient(t, url);
  await assert.rejects(client.restoreSession(unknown), SessionNotFoundError);
  assert.equal(client.session, null);

  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRestore(peer, 3, unknown);
  assert.equal(hex(await peer.next()), typeAndId(0x03, 3));
  assert.deepEqual(spy.calls, [
    { hook: 'lookup', key: unknown },
    { hook: 'lookup', key: unknown },
  ]);
  assert.equal(server.activeSessionCount, 0, 'a failed restore leaves no registration');
  assert.deepEqual(await whoami(client), null, 'the connection stays usable');
});

test('invalid keys (length, alphabet, traversal, 2000 bytes, non-ASCII) get type 3 without any store lookup', async (t) => {
  const { url, spy, server } = await sessionServer(t);
  const valid = defaultKeyGenerator.generate();
  const keys: Array<string | Uint8Array> = [
    'x',
    valid.slice(1), // 63 characters
    `${valid}A`, // 65 characters
    `${valid.slice(0, 63)}!`, // outside base64url
    `${valid.slice(0, 63)}=`,
    `${valid.slice(0, 63)}/`,
    `${valid.slice(0, 63)}\n`,
    `../../../../etc/passwd${'A'.repeat(42)}`, // 64 characters with traversal
    'A'.repeat(2000),
    new Uint8Array(64).fill(0xff),
    Uint8Array.of(...new TextEncoder().encode(valid.slice(0, 62)), 0xc3, 0xa9), // 64 bytes, UTF-8 é
  ];
  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  for (const [i, key] of keys.entries()) sendRestore(peer, 100 + i, key);
  for (let i = 0; i < keys.length; i++) {
    assert.equal(hex(await peer.next()), typeAndId(0x03, 100 + i), `key #${i}`);
  }
  const client = await connectClient(t, url);
  await assert.rejects(client.restoreSession('../sessions/x'), SessionNotFoundError);
  assert.equal(spy.count('lookup'), 0, 'no invalid key reaches the store');
  assert.equal(server.activeSessionCount, 0);
  // The connection is still open and answers.
  sendRequest(peer, 999, 'whoami');
  assert.equal(hex(await peer.next()), `${typeAndId(0xc0, 999)}${hex(utf8('null').data)}`);
});

test('client close (31): empty 191 reply, store onSessionClosed, and NO type 22', async (t) => {
  const { url, spy, server } = await sessionServer(t);
  const { peer, key } = await rawLogin(t, url);
  sendClose(peer, 2);
  const reply = await peer.next();
  assert.equal(hex(reply), typeAndId(0xbf, 2), 'an empty binary reply, nothing else');
  // The very next message is the reply to a later request: no 22 came in between.
  sendRequest(peer, 3, 'whoami');
  assert.equal(hex(await peer.next()), `${typeAndId(0xc0, 3)}${hex(utf8('null').data)}`);
  await delay(30);
  assert.equal(peer.messages.length, 5, 'AcceptConf, 21, login reply, close reply, whoami reply: no more');
  assert.deepEqual(
    spy.calls.filter((c) => c.hook === 'closed'),
    [{ hook: 'closed', key }],
  );
  assert.equal(await spy.has(key), false);
  assert.equal(server.activeSessionCount, 0);

  // Without a session: also an empty 191, and no store call.
  sendClose(peer, 4);
  assert.equal(hex(await peer.next()), typeAndId(0xbf, 4));
  assert.equal(spy.count('closed'), 1);
});

test('client.closeSession(): session null, one sessionClosed, store deleted, server side cleared', async (t) => {
  const { url, spy, server } = await sessionServer(t);
  const client = await connectClient(t, url);
  const { key } = await login(client);
  let closedEvents = 0;
  client.on('sessionClosed', () => closedEvents++);
  await client.closeSession();
  assert.equal(client.session, null);
  assert.equal(closedEvents, 1);
  assert.deepEqual(await whoami(client), null);
  assert.equal(closedEvents, 1, 'no type 22 followed');
  assert.equal(spy.count('closed'), 1);
  assert.equal(await spy.has(key), false);
  assert.equal(server.activeSessionCount, 0);
  assert.deepEqual(server.sessionConnections(key), []);
  await client.closeSession(); // nothing to close: no request, no event
  assert.equal(closedEvents, 1);
  assert.equal(spy.count('closed'), 1);
});

test('a second createSession on one connection fails with InvalidStateError and keeps the key', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  const { key } = await login(client);
  await assert.rejects(conn.createSession({ user: 'eve' }), InvalidStateError);
  // Through a request handler too: the client sees an internal error, its session unchanged.
  await assert.rejects(client.request('login', utf8('eve')), InternalError);
  assert.equal(conn.session?.key, key);
  assert.deepEqual(conn.session?.info, { user: 'ada' });
  assert.deepEqual(await whoami(client), { key, info: { user: 'ada' } });
  assert.equal(client.session?.key, key);
  assert.equal(spy.count('created'), 1);
  assert.equal(server.activeSessionCount, 1);
});

test('two createSession calls at once on one connection: one session, the other InvalidStateError', async (t) => {
  const { url, server, spy } = await sessionServer(t, { spy: { createDelay: 30 } });
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  const results = await Promise.allSettled([conn.createSession({ n: 1 }), conn.createSession({ n: 2 })]);
  assert.equal(results[0].status, 'fulfilled');
  assert.equal(results[1].status, 'rejected');
  assert.ok((results[1] as PromiseRejectedResult).reason instanceof InvalidStateError);
  const { key } = (results[0] as PromiseFulfilledResult<Session>).value;
  await waitFor(() => client.session !== null, 1_000, 'type 21 at the client');
  assert.equal(client.session?.key, key);
  assert.equal(spy.count('created'), 1);
});

test('restore on a connection that already has a session is refused; its session is kept', async (t) => {
  const { url, server } = await sessionServer(t);
  const other = await login(await connectClient(t, url), 'bob');
  const client = await connectClient(t, url);
  const mine = await login(client, 'ada');
  await assert.rejects(
    client.restoreSession(other.key),
    (error) => error instanceof RequestError && error.code === 'SESSION_ACTIVE',
  );
  assert.equal(client.session?.key, mine.key);
  assert.deepEqual(await whoami(client), { key: mine.key, info: { user: 'ada' } });
  assert.equal(server.sessionConnections(other.key).length, 1);
});

test('custom key generator: its keys reach the client; its isValid gates restores', async (t) => {
  let n = 0;
  const generator: SessionKeyGenerator = {
    generate: () => `sess-${String(++n).padStart(6, '0')}`,
    isValid: (key) => /^sess-\d{6}$/.test(key),
  };
  const { url, spy } = await sessionServer(t, { sessionKeyGenerator: generator });
  const client = await connectClient(t, url);
  const session = await login(client);
  assert.equal(session.key, 'sess-000001');
  assert.deepEqual(await whoami(client), { key: 'sess-000001', info: { user: 'ada' } });
  assert.equal(await spy.has('sess-000001'), true);

  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRestore(peer, 1, defaultKeyGenerator.generate()); // fine for the default generator, not this one
  assert.equal(hex(await peer.next()), typeAndId(0x03, 1));
  assert.equal(spy.count('lookup'), 0);
  sendRestore(peer, 2, 'sess-000001');
  assert.equal(sessionJsonOf(await peer.next(), 2).k, 'sess-000001');
  assert.equal(spy.count('lookup'), 1);
});

test('a key generator returning "" makes createSession reject (InvalidArgumentError); nothing stored', async (t) => {
  const { url, server, spy } = await sessionServer(t, {
    sessionKeyGenerator: { generate: () => '', isValid: () => true },
  });
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  await assert.rejects(conn.createSession({ user: 'ada' }), InvalidArgumentError);
  await assert.rejects(client.request('login', utf8('ada')), InternalError);
  assert.deepEqual(spy.calls, []);
  assert.equal(spy.inner.size, 0);
  assert.equal(conn.session, null);
  assert.equal(client.session, null, 'no type 21 reached the client');
  assert.equal(server.activeSessionCount, 0);
});

test('sessions disabled: create/close reject SessionsDisabledError; raw restore and close get type 5', async (t) => {
  const generator = countingGenerator();
  const { url, server } = await startServer(t, {
    sessions: false,
    sessionKeyGenerator: generator,
    onRequest: sessionApp,
  });
  assert.equal(server.sessionsEnabled, false);
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  await assert.rejects(conn.createSession({ user: 'ada' }), SessionsDisabledError);
  await assert.rejects(conn.closeSession(), SessionsDisabledError);
  await assert.rejects(server.closeSession(defaultKeyGenerator.generate()), SessionsDisabledError);
  await assert.rejects(client.request('login', utf8('ada')), InternalError);
  await assert.rejects(client.restoreSession(defaultKeyGenerator.generate()), SessionsDisabledError);
  assert.equal(client.session, null);

  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRestore(peer, 1, defaultKeyGenerator.generate());
  assert.equal(hex(await peer.next()), typeAndId(0x05, 1));
  sendRestore(peer, 2, 'not a key at all');
  assert.equal(hex(await peer.next()), typeAndId(0x05, 2));
  sendClose(peer, 3);
  assert.equal(hex(await peer.next()), typeAndId(0x05, 3));
  // No session machinery ran: the key generator was never asked anything.
  assert.equal(generator.generated, 0);
  assert.equal(generator.validated, 0);
  assert.equal(server.activeSessionCount, 0);
});

test('server conn.closeSession(): the client gets type 22, then the store no longer has it', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const { peer, key } = await rawLogin(t, url);
  const conn = await newestConnection(server);
  assert.equal(conn.session?.key, key);
  await conn.closeSession();
  assert.equal(hex(await peer.next()), '16', 'NotifySessionClosed is one byte');
  assert.equal(conn.session, null);
  assert.equal(server.activeSessionCount, 0);
  assert.deepEqual(
    spy.calls.filter((c) => c.hook === 'closed'),
    [{ hook: 'closed', key }],
  );
  // A later restore of that key finds nothing.
  sendRestore(peer, 2, key);
  assert.equal(hex(await peer.next()), typeAndId(0x03, 2));
  await conn.closeSession(); // no session: nothing sent, no store call
  sendRequest(peer, 3, 'whoami');
  assert.equal(hex(await peer.next()), `${typeAndId(0xc0, 3)}${hex(utf8('null').data)}`);
  assert.equal(spy.count('closed'), 1);
});

test('server conn.closeSession(): the Client emits sessionClosed and drops its session', async (t) => {
  const { url, server } = await sessionServer(t);
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  await login(client);
  const closed = new Promise<void>((resolve) => client.once('sessionClosed', resolve));
  await conn.closeSession();
  await closed;
  assert.equal(client.session, null);
  assert.deepEqual(await whoami(client), null);
});

test('server.closeSession(key) closes it on every connection holding it; the store deletes it', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const a = await connectClient(t, url);
  const { key } = await login(a);
  const b = await connectClient(t, url);
  await b.restoreSession(key);
  const bystander = await connectClient(t, url);
  const other = await login(bystander, 'bob');
  assert.equal(server.sessionConnections(key).length, 2);
  assert.equal(server.activeSessionCount, 2);

  const closedA = new Promise<void>((resolve) => a.once('sessionClosed', resolve));
  const closedB = new Promise<void>((resolve) => b.once('sessionClosed', resolve));
  assert.equal(await server.closeSession(key), 2);
  await Promise.all([closedA, closedB]);
  assert.equal(a.session, null);
  assert.equal(b.session, null);
  assert.deepEqual(await whoami(a), null);
  assert.deepEqual(await whoami(b), null);
  assert.deepEqual(server.sessionConnections(key), []);
  assert.equal(server.activeSessionCount, 1, 'the other session is untouched');
  assert.equal(await spy.has(key), false);
  assert.equal(await spy.has(other.key), true);
  assert.equal(bystander.session?.key, other.key);
  assert.deepEqual(
    spy.calls.filter((c) => c.hook === 'closed'),
    [{ hook: 'closed', key }],
  );
  await assert.rejects(b.restoreSession(key), SessionNotFoundError);
});

test('createSession on a closed connection fails with DisconnectedError; nothing stored', async (t) => {
  const { url, server, spy } = await sessionServer(t);
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  await client.close();
  await conn.closed;
  await assert.rejects(conn.createSession({ user: 'ada' }), DisconnectedError);
  assert.deepEqual(spy.calls, []);
  assert.equal(server.activeSessionCount, 0);
});

test('connection lost while the store creates the session: DisconnectedError, nothing left behind', async (t) => {
  const { url, server, spy } = await sessionServer(t, { spy: { createDelay: 50 } });
  await connectClient(t, url);
  const conn = await newestConnection(server);
  const creating = conn.createSession({ user: 'ada' });
  await waitFor(() => spy.count('created') === 1, 1_000, 'the create hook');
  conn.terminate();
  await assert.rejects(creating, DisconnectedError);
  assert.equal(conn.session, null);
  assert.equal(server.activeSessionCount, 0);
  // Nobody was told this key: a stored copy could never be restored nor closed.
  const key = spy.calls[0]!.key;
  assert.equal(await spy.has(key), false, 'the orphan session is deleted from the store');
});

test('parseSessionInfo: server hook on restore (conn.session and reply), client hook on created and restored', async (t) => {
  const serverParsed: unknown[] = [];
  const { url, server, spy } = await sessionServer(t, {
    parseSessionInfo: (info) => {
      serverParsed.push(info);
      return { ...info, serverParsed: true };
    },
  });
  const clientParse = (info: Readonly<Record<string, unknown>>) => ({ ...info, clientParsed: true });
  const a = await connectClient(t, url, { parseSessionInfo: clientParse });
  const created = await login(a, 'ada');
  assert.deepEqual(created.info, { user: 'ada', clientParsed: true }, 'client hook on type 21');
  assert.deepEqual(await whoami(a), { key: created.key, info: { user: 'ada' } }, 'no server hook on create');
  assert.deepEqual(serverParsed, []);

  const b = await connectClient(t, url, { parseSessionInfo: clientParse });
  const restored = await b.restoreSession(created.key);
  assert.deepEqual(restored.info, { user: 'ada', serverParsed: true, clientParsed: true });
  assert.deepEqual(serverParsed, [{ user: 'ada' }], 'the server hook got the stored info');
  const conn = server.sessionConnections(created.key).find((c) => c !== [...server.connections][0]);
  assert.deepEqual(conn?.session?.info, { user: 'ada', serverParsed: true });
  // What the hooks return is not written back.
  assert.deepEqual((await spy.inner.onSessionLookup(created.key))?.info, { user: 'ada' });

  // Without a hook, the client sees what the server sent.
  const c = await connectClient(t, url);
  assert.deepEqual((await c.restoreSession(created.key)).info, { user: 'ada', serverParsed: true });
});

test('a throwing server parseSessionInfo: the restore gets type 2 and leaves no registration', async (t) => {
  const { url, server } = await sessionServer(t, {
    parseSessionInfo: () => {
      throw new Error('cannot parse');
    },
  });
  const owner = await connectClient(t, url);
  const { key } = await login(owner);
  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRestore(peer, 5, key);
  assert.equal(hex(await peer.next()), typeAndId(0x02, 5));
  assert.equal(server.sessionConnections(key).length, 1, 'only the owner');
  const client = await connectClient(t, url);
  await assert.rejects(client.restoreSession(key), InternalError);
  assert.equal(client.session, null);
});

test('a server parseSessionInfo returning what JSON cannot hold: type 2, and the connection holds no session', async (t) => {
  const { url, server } = await sessionServer(t, { parseSessionInfo: (info) => ({ ...info, since: new Date(0) }) });
  const owner = await connectClient(t, url);
  const { key } = await login(owner);
  const client = await connectClient(t, url);
  const conn = await newestConnection(server, 2);
  await assert.rejects(client.restoreSession(key), InternalError);
  assert.equal(client.session, null);
  assert.equal(conn.session, null, 'the server side agrees with the client');
  assert.equal(server.sessionConnections(key).length, 1, 'only the owner');
  assert.deepEqual(await whoami(client), null);
});

/** A SpyManager whose lookups and deletes wait until their gate is opened. */
class GatedSpy extends SpyManager {
  readonly lookups = gate();
  readonly deletes = gate();

  override async onSessionLookup(key: string): Promise<Session | null> {
    const session = super.onSessionLookup(key);
    await this.lookups.wait;
    return session;
  }

  override async onSessionClosed(key: string): Promise<void> {
    const closed = super.onSessionClosed(key);
    await this.deletes.wait;
    await closed;
  }
}

test('a restore (32) in flight when shutdown begins is answered before the connection closes 1001', async (t) => {
  const spy = new GatedSpy();
  const { url, server } = await startServer(t, { sessionManager: spy, onRequest: sessionApp });
  const { key } = await rawLogin(t, url);
  const peer = await rawPeer(t, url);
  await skipAcceptConf(peer);
  sendRestore(peer, 5, key);
  await waitFor(() => spy.count('lookup') === 1, 2_000, 'the lookup');
  const stopping = server.shutdown({ timeout: 5_000 });
  // Draining: a new request is refused (type 1); the restore still waits for the store.
  sendRequest(peer, 6, 'whoami');
  assert.equal(hex(await peer.next()), typeAndId(0x01, 6));
  spy.lookups.open();
  assert.equal(sessionJsonOf(await peer.next(), 5).k, key);
  assert.equal((await peer.closed).code, 1001);
  await stopping;
});

test('a close-session (31) in flight when conn.close() begins is answered before the connection closes', async (t) => {
  const spy = new GatedSpy();
  const { url, server } = await startServer(t, { sessionManager: spy, onRequest: sessionApp });
  const { peer, key } = await rawLogin(t, url);
  const conn = await newestConnection(server);
  sendClose(peer, 2);
  await waitFor(() => spy.count('closed') === 1, 2_000, 'the delete');
  const closing = conn.close();
  sendRequest(peer, 3, 'whoami');
  assert.equal(hex(await peer.next()), typeAndId(0x01, 3));
  spy.deletes.open();
  assert.equal(hex(await peer.next()), typeAndId(0xbf, 2));
  assert.equal((await peer.closed).code, 1000);
  await closing;
  assert.equal(await spy.has(key), false);
});
