/**
 * A client closes its session (type 31) and the server's store fails: the client is told the
 * close failed (InternalError), and afterwards it holds the session exactly when its connection
 * on the server does. Where the store still has the session, the connection keeps it, so the
 * client can try again; where the store deleted it after all, the close succeeded; where the
 * connection cannot hold it any more (the store is down), the client is told it lost it.
 */
import assert from 'node:assert/strict';
import { after, describe, it, type TestContext } from 'node:test';
import type { Client } from '../../src/client/client.ts';
import { InternalError } from '../../src/errors.ts';
import { MemorySessionManager } from '../../src/session/memory-store.ts';
import { type RedisCommandClient, RedisSessionManager } from '../../src/session/redis-store.ts';
import type { Session, SessionAttachResult, SessionManager } from '../../src/session/session.ts';
import { login, sessionApp, whoami } from '../fixtures/session-helpers.ts';
import { connectClient, startServer } from '../helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, uniquePrefix } from './redis.ts';

/** A store without the counting hooks (each server counts its own), whose deletes fail on demand. */
class PlainStore implements SessionManager {
  readonly inner = new MemorySessionManager();
  failDeletes = 0;
  onSessionCreated(session: Session): Promise<void> {
    return this.inner.onSessionCreated(session);
  }
  onSessionLookup(key: string): Promise<Session | null> {
    return this.inner.onSessionLookup(key);
  }
  async onSessionClosed(key: string): Promise<void> {
    if (this.failDeletes > 0) {
      this.failDeletes--;
      throw new Error('store down');
    }
    await this.inner.onSessionClosed(key);
  }
}

/** A counting store whose attaches and detaches fail on demand, before or after doing their work. */
class CountingStore extends MemorySessionManager {
  /** Detaches that fail without doing anything (the store is unreachable). */
  failDetaches = 0;
  /** Detaches that do their work, then fail (the answer was lost). */
  loseDetaches = 0;
  failAttaches = 0;
  override async onSessionDetach(key: string, closing?: boolean): Promise<number> {
    if (this.failDetaches > 0) {
      this.failDetaches--;
      throw new Error('store down');
    }
    const left = await super.onSessionDetach(key, closing);
    if (this.loseDetaches > 0) {
      this.loseDetaches--;
      throw new Error('connection to the store lost');
    }
    return left;
  }
  override async onSessionAttach(key: string, limit: number): Promise<SessionAttachResult> {
    if (this.failAttaches > 0) {
      this.failAttaches--;
      throw new Error('store down');
    }
    return super.onSessionAttach(key, limit);
  }
}

async function setup(t: TestContext, store: SessionManager) {
  const { server, url, logger } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const client = await connectClient(t, url);
  const session = await login(client);
  const events: string[] = [];
  for (const name of ['sessionCreated', 'sessionUpdated', 'sessionClosed'] as const) {
    client.on(name, () => events.push(name));
  }
  return { server, client, key: session.key, events, logger };
}

/** The client's session and its connection's on the server, side by side. */
async function bothSides(client: Client): Promise<{ client: string | null; server: string | null }> {
  return { client: client.session?.key ?? null, server: (await whoami(client))?.key ?? null };
}

describe('client closeSession when the store fails', () => {
  it('a store that could not delete the session: InternalError, and both sides still hold it; a retry closes it', async (t) => {
    const store = new PlainStore();
    const { server, client, key, events, logger } = await setup(t, store);
    store.failDeletes = 1;
    await assert.rejects(client.closeSession(), InternalError);
    assert.deepEqual(await bothSides(client), { client: key, server: key });
    assert.equal(server.sessionConnections(key).length, 1);
    assert.ok(await store.inner.onSessionLookup(key), 'still stored');
    assert.deepEqual(events, []);
    assert.ok(logger.entries.some((e) => e.level === 'error' && e.message.includes('failed to close a session')));

    await client.closeSession();
    assert.deepEqual(await bothSides(client), { client: null, server: null });
    assert.equal(await store.inner.onSessionLookup(key), null);
    assert.equal(server.activeSessionCount, 0);
    assert.deepEqual(events, ['sessionClosed']);
  });

  it('a store that deleted the session but answered with an error: the close succeeded', async (t) => {
    const store = new CountingStore();
    const { server, client, key, events } = await setup(t, store);
    store.loseDetaches = 1;
    await client.closeSession();
    assert.deepEqual(await bothSides(client), { client: null, server: null });
    assert.equal(await store.onSessionLookup(key), null);
    assert.equal(server.activeSessionCount, 0);
    assert.deepEqual(events, ['sessionClosed']);
  });

  it('a store that is down (the connection cannot take the session back): InternalError, and neither side holds it', async (t) => {
    const store = new CountingStore();
    const { server, client, key, events } = await setup(t, store);
    store.failDetaches = 1;
    store.failAttaches = 1;
    await assert.rejects(client.closeSession(), InternalError);
    assert.deepEqual(await bothSides(client), { client: null, server: null });
    assert.equal(server.activeSessionCount, 0);
    assert.deepEqual(events, ['sessionClosed'], 'told it lost the session');
    // Still stored: a client that kept the key elsewhere could restore it.
    assert.ok(await store.onSessionLookup(key));
  });
});

const redis = await connectRedis();
if (redis instanceof Error) {
  redisUnreachable('client closeSession when the Redis store fails', redis);
} else {
  after(() => redis.close());
  describe('client closeSession when the Redis store fails', () => {
    it('the count of the connection off failed: both sides still hold it, counted once; a retry closes it', async (t) => {
      const prefix = uniquePrefix();
      t.after(() => deletePrefix(redis, prefix));
      let failNext = false;
      // The next command fails without reaching Redis, as with a dropped connection.
      const client: RedisCommandClient = {
        sendCommand: (args) => {
          if (!failNext) return redis.sendCommand(args);
          failNext = false;
          return Promise.reject(new Error('connection to Redis lost'));
        },
      };
      const store = new RedisSessionManager({ client, prefix });
      t.after(() => store.close());
      const { server, client: c, key, events } = await setup(t, store);
      failNext = true;
      await assert.rejects(c.closeSession(), InternalError);
      assert.equal(failNext, false, 'the failure was used');
      assert.deepEqual(await bothSides(c), { client: key, server: key });
      assert.equal(server.sessionConnections(key).length, 1);
      assert.deepEqual(events, []);

      await c.closeSession();
      assert.deepEqual(await bothSides(c), { client: null, server: null });
      assert.equal(await store.onSessionLookup(key), null, 'deleted with its last count: it was counted once');
      assert.deepEqual(events, ['sessionClosed']);
    });
  });
}
