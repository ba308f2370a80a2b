/**
 * Races between a connection taking a session (restore, create) and what can happen meanwhile:
 * a close by key, a close by the connection itself, an update. Real sockets on 127.0.0.1 (ws).
 * The invariants: the client ends holding what the server's connection holds, and a connection
 * never holds a session the store deleted.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { SessionNotFoundError } from '../../src/errors.ts';
import type { IncomingMessage, ReplyValue } from '../../src/peer/peer.ts';
import type { Connection } from '../../src/server/connection.ts';
import type { Server } from '../../src/server/server.ts';
import { MemorySessionManager } from '../../src/session/memory-store.ts';
import type { Session, SessionAttachResult, SessionManager } from '../../src/session/session.ts';
import { login, sessionApp, whoami } from '../fixtures/session-helpers.ts';
import { afterMicrotasks, connectClient, delay, gate, startServer, waitFor } from '../helpers.ts';

/**
 * A store with only the three required hooks and `onSessionUpdate` (no cross-process counting,
 * as `FileSessionManager`), whose lookups read the session and then wait while `holdLookup` is set.
 */
class GatedPlainStore implements SessionManager {
  readonly inner = new MemorySessionManager();
  holdLookup: Promise<void> | undefined;
  lookups = 0;
  onSessionCreated(session: Session): Promise<void> {
    return this.inner.onSessionCreated(session);
  }
  async onSessionLookup(key: string): Promise<Session | null> {
    const found = await this.inner.onSessionLookup(key);
    this.lookups++;
    await this.holdLookup;
    return found;
  }
  onSessionClosed(key: string): Promise<void> {
    return this.inner.onSessionClosed(key);
  }
  onSessionUpdate(key: string, info: Readonly<Record<string, unknown>> | undefined): Promise<Session | null> {
    return this.inner.onSessionUpdate(key, info);
  }
}

/**
 * A server on a `GatedPlainStore`, an owner holding a session, and a second client restoring it
 * whose lookup has read the session and waits until `held.open()`.
 */
async function restoreHeldInLookup(t: TestContext) {
  const store = new GatedPlainStore();
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const owner = await connectClient(t, url);
  const { key } = await login(owner, 'ada');
  const late = await connectClient(t, url);
  const held = gate();
  store.holdLookup = held.wait;
  const restoring = late.restoreSession(key);
  await waitFor(() => store.lookups === 1, 1_000, "the restore's lookup");
  return { store, server, owner, key, late, held, restoring };
}

test('server.closeSession(key) while a restore is looking the session up: the restore gets "not found", nothing holds the deleted session', async (t) => {
  // The lookup has read the session when it is closed by key.
  const { store, server, key, late, held, restoring } = await restoreHeldInLookup(t);
  assert.equal(await server.closeSession(key), 1, 'the owner held it');
  assert.equal(await store.inner.onSessionLookup(key), null, 'deleted');
  held.open();
  await assert.rejects(restoring, SessionNotFoundError);
  assert.equal(late.session, null);
  assert.deepEqual(await whoami(late), null, 'the server side holds nothing either');
  assert.deepEqual(server.sessionConnections(key), []);
  assert.equal(server.activeSessionCount, 0);
});

/**
 * A memory store that, once `after` is set, runs it just after the next attach has been counted:
 * by default in the next turn of the event loop, the same as the restore's reply, so that what it
 * sends reaches the client in the same read as that reply; `schedule` chooses another moment.
 */
class AfterAttach extends MemorySessionManager {
  after: ((key: string) => void) | undefined;
  schedule: (run: () => void) => void = setImmediate;
  override async onSessionAttach(key: string, limit: number): Promise<SessionAttachResult> {
    const result = await super.onSessionAttach(key, limit);
    const after = this.after;
    this.after = undefined;
    if (after !== undefined) this.schedule(() => after(key));
    return result;
  }
}

async function restoredThen(t: TestContext, then: (server: Server, key: string) => void) {
  const store = new AfterAttach();
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const owner = await connectClient(t, url);
  const { key } = await login(owner, 'ada');
  const late = await connectClient(t, url);
  const events: string[] = [];
  for (const event of ['sessionCreated', 'sessionUpdated', 'sessionRestored'] as const) {
    late.on(event, (session: Session) => events.push(`${event} ${JSON.stringify(session.info ?? null)}`));
  }
  late.on('sessionClosed', () => events.push('sessionClosed'));
  store.after = (k) => then(server, k);
  const restored = await late.restoreSession(key);
  assert.equal(restored.key, key);
  return { server, late, key, events };
}

test('a close by key right after a restore was answered (same read at the client): the client ends without the session', async (t) => {
  const { server, late, key, events } = await restoredThen(t, (server, key) => void server.closeSession(key));
  await waitFor(() => events.includes('sessionClosed'), 1_000, 'sessionClosed');
  await delay(20);
  assert.deepEqual(events, ['sessionRestored {"user":"ada"}', 'sessionClosed']);
  assert.equal(late.session, null, 'as the server: the session is closed');
  assert.deepEqual(await whoami(late), null);
  assert.deepEqual(server.sessionConnections(key), []);
});

test('an update right after a restore was answered (same read at the client): the client ends with the new info', async (t) => {
  const { late, key, events } = await restoredThen(
    t,
    (server, key) => void server.updateSession(key, { user: 'grace' }),
  );
  await waitFor(() => events.length === 2, 1_000, 'the update');
  await delay(20);
  assert.deepEqual(events, ['sessionRestored {"user":"ada"}', 'sessionUpdated {"user":"grace"}']);
  assert.deepEqual(late.session?.info, { user: 'grace' }, 'as the server');
  assert.deepEqual(await whoami(late), { key, info: { user: 'grace' } });
});

/**
 * Microtask turns swept over by the tests below: well past the few between the store's answer to
 * an attach and the connection taking the session.
 */
const SWEEP = 12;

test('a close by key landing at any step of a restore taking the session: nothing holds the deleted session', async (t) => {
  const store = new AfterAttach();
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const owner = await connectClient(t, url);
  const late = await connectClient(t, url);
  for (let hops = 0; hops < SWEEP; hops++) {
    const { key } = await login(owner, 'ada');
    let closed: Promise<number> | undefined;
    store.schedule = (run) => afterMicrotasks(hops, run);
    store.after = () => {
      closed = server.closeSession(key);
    };
    // Restored then closed (sessionClosed follows), or not found: either way, nothing held after.
    await late.restoreSession(key).catch((error: unknown) => assert.ok(error instanceof SessionNotFoundError));
    assert.ok(closed !== undefined, 'closed by key');
    await closed;
    assert.deepEqual(await whoami(late), null, `${hops} turns: the connection holds nothing`);
    assert.equal(late.session, null, `${hops} turns: nor does the client`);
  }
  assert.equal(server.activeSessionCount, 0);
});

test('an update landing at any step of a restore taking the session: the client ends with it', async (t) => {
  const store = new AfterAttach();
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const owner = await connectClient(t, url);
  const { key } = await login(owner, 'ada');
  const late = await connectClient(t, url);
  for (let hops = 0; hops < SWEEP; hops++) {
    const info = { user: `user ${hops}` };
    let updated: Promise<number> | undefined;
    store.schedule = (run) => afterMicrotasks(hops, run);
    store.after = () => {
      updated = server.updateSession(key, info);
    };
    await late.restoreSession(key);
    assert.ok(updated !== undefined, 'updated');
    await updated;
    assert.deepEqual(await whoami(late), { key, info }, `${hops} turns: the connection has the update`);
    assert.deepEqual(late.session?.info, info, `${hops} turns: and so does the client`);
    await late.closeSession();
  }
});

/** A memory store that, once `after` is set, runs it just after the next detach was counted (see AfterAttach). */
class AfterDetach extends MemorySessionManager {
  after: ((key: string) => void) | undefined;
  override async onSessionDetach(key: string): Promise<number> {
    const left = await super.onSessionDetach(key);
    const after = this.after;
    this.after = undefined;
    if (after !== undefined) setImmediate(() => after(key));
    return left;
  }
}

test('client.closeSession() answered, then a new session created at once (same read at the client): the client holds the new one', async (t) => {
  const store = new AfterDetach();
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const client = await connectClient(t, url);
  await login(client, 'ada');
  const conn = [...server.connections][0]!;
  let created: Promise<Session> | undefined;
  store.after = () => {
    created = conn.createSession({ user: 'bob' });
  };
  await client.closeSession();
  await waitFor(() => created !== undefined, 1_000, 'the new session');
  const fresh = await created!;
  await delay(20);
  assert.equal(conn.session?.key, fresh.key);
  assert.equal(client.session?.key, fresh.key, 'the client holds what the server holds');
  assert.deepEqual(await whoami(client), { key: fresh.key, info: { user: 'bob' } });
});

/** A memory store whose detaches wait while `holdDetach` is set. */
class SlowDetach extends MemorySessionManager {
  holdDetach: Promise<void> | undefined;
  detaches = 0;
  override async onSessionDetach(key: string): Promise<number> {
    this.detaches++;
    await this.holdDetach;
    return super.onSessionDetach(key);
  }
}

test('conn.closeSession() while the store counts the detach, and a createSession in another handler: no type 22 after the new session', async (t) => {
  const store = new SlowDetach();
  const app = async (conn: Connection, message: IncomingMessage): Promise<ReplyValue> => {
    if (message.name === 'logout') {
      await conn.closeSession();
      return 'out';
    }
    return sessionApp(conn, message);
  };
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: app, concurrency: 2 });
  const client = await connectClient(t, url);
  const first = await login(client, 'ada');
  const conn = [...server.connections][0]!;
  const held = gate();
  store.holdDetach = held.wait;
  const logout = client.request('logout', utf8(''));
  await waitFor(() => store.detaches === 1, 1_000, 'the detach');
  // The connection is closing its session: a second one must not slip in meanwhile.
  const relogin = await client.request('login', utf8('bob')).then(
    (reply) => payloadText(reply),
    (error: unknown) => error,
  );
  held.open();
  assert.equal(payloadText(await logout), 'out');
  await delay(20);
  assert.equal(
    client.session?.key ?? null,
    conn.session?.key ?? null,
    `the client holds what the server holds (login: ${String(relogin)})`,
  );
  assert.notEqual(conn.session?.key, first.key);
  assert.equal(await store.onSessionLookup(first.key), null, 'the first session is deleted');
});

test('conn.closeSession() when the store fails to count the detach: rejects, and the client is told all the same', async (t) => {
  const store = new SlowDetach();
  const app = async (conn: Connection, message: IncomingMessage): Promise<ReplyValue> => {
    if (message.name === 'logout') {
      const failed = await conn.closeSession().then(
        () => 'no error',
        (error: unknown) => (error as Error).message,
      );
      return failed;
    }
    return sessionApp(conn, message);
  };
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: app });
  const client = await connectClient(t, url);
  await login(client, 'ada');
  store.holdDetach = Promise.reject(new Error('store down'));
  store.holdDetach.catch(() => {});
  assert.equal(payloadText(await client.request('logout', utf8(''))), 'store down');
  const conn = [...server.connections][0]!;
  assert.equal(conn.session, null);
  await waitFor(() => client.session === null, 1_000, 'the client to be told');
  assert.deepEqual(await whoami(client), null);
});

test('a session the server creates while the client reads its key store to restore an old one: the client keeps the new one', async (t) => {
  const store = new MemorySessionManager();
  let createOnConnect = false;
  const { url, server } = await startServer(t, {
    sessionManager: store,
    onRequest: sessionApp,
    onClientConnected: async (conn) => {
      // Once the client has spoken: its key store is being read meanwhile.
      if (createOnConnect && (await conn.negotiated())) await conn.createSession({ user: 'anonymous' });
    },
  });
  const first = await connectClient(t, url);
  const old = await login(first, 'ada');
  // A key store that is slow to answer, remembering the old session.
  let stored: string | null = old.key;
  const keyStore = {
    load: async () => {
      await delay(100);
      return stored;
    },
    save: (key: string) => {
      stored = key;
    },
    clear: () => {
      stored = null;
    },
  };
  createOnConnect = true;
  const client = await connectClient(t, url, { autoConnect: false, sessionKeyStore: keyStore });
  const errors: unknown[] = [];
  client.on('error', (error) => errors.push(error));
  await client.connect();
  await delay(20);
  const conn = [...server.connections].at(-1)!;
  assert.ok(conn.session !== null, 'the server created a session on the connection');
  assert.equal(client.session?.key, conn.session.key, 'the client holds it too');
  assert.equal(stored, conn.session.key, 'and its key store remembers it');
  assert.deepEqual(errors, []);
});

test("the last connection closing its session while a restore here is looking it up: the restore gets 'not found'", async (t) => {
  const { store, server, owner, late, held, restoring } = await restoreHeldInLookup(t);
  // The owner, its only holder, closes it: deleted while the lookup (which read it) waits.
  await owner.closeSession();
  await waitFor(() => store.inner.size === 0, 1_000, 'deleted');
  held.open();
  await assert.rejects(restoring, SessionNotFoundError);
  assert.equal(late.session, null);
  assert.deepEqual(await whoami(late), null);
  assert.equal(server.activeSessionCount, 0);
});

/** A memory store shared by two servers whose deletes by `onSessionClosed` come late. */
class SlowDelete extends MemorySessionManager {
  override async onSessionClosed(key: string): Promise<void> {
    await delay(200);
    return super.onSessionClosed(key);
  }
}

test('the last connection anywhere closing its session: it is gone with the count, so a restore on another server cannot take it meanwhile', async (t) => {
  const store = new SlowDelete();
  const a = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const b = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const owner = await connectClient(t, a.url);
  const { key } = await login(owner, 'ada');
  const closing = owner.closeSession();
  // Counted off and deleted in one step (the store's onSessionDetach with closing); before, the
  // session stayed until the late onSessionClosed, and this restore took it.
  await waitFor(() => a.server.activeSessionCount === 0, 1_000, 'the owner counted off');
  const other = await connectClient(t, b.url);
  await assert.rejects(other.restoreSession(key), SessionNotFoundError);
  await closing;
  assert.equal(other.session, null);
  assert.equal(b.server.activeSessionCount, 0);
});
