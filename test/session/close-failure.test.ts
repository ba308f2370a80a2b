/**
 * A client closes its session (type 31) and the server's store fails: the client is told the
 * close failed (InternalError), and afterwards it holds the session exactly when its connection
 * on the server does. Where the store still has the session, the connection keeps it, so the
 * client can try again; where the store deleted it after all, the close succeeded; where the
 * connection cannot hold it any more (the store is down), the client is told it lost it. What
 * happens to the session while the store fails (an update, a close by key, another connection
 * closing it) is not lost on the connection, which holds nothing then.
 */
import assert from 'node:assert/strict';
import { after, describe, it, type TestContext } from 'node:test';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import type { Client } from '../../src/client/client.ts';
import { InternalError } from '../../src/errors.ts';
import { MemorySessionManager } from '../../src/session/memory-store.ts';
import { type RedisCommandClient, RedisSessionManager } from '../../src/session/redis-store.ts';
import type { Session, SessionAttachResult, SessionManager } from '../../src/session/session.ts';
import { login, sessionApp, whoami } from '../fixtures/session-helpers.ts';
import { afterMicrotasks, connectClient, gate, startServer, waitFor } from '../helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, uniquePrefix } from './redis.ts';

/**
 * Store failures on demand, for the stores below: `fail` waits for `hold` (the test acts
 * meanwhile, the connection holding nothing), then throws. `started` counts the failures begun.
 */
class Faults {
  hold: Promise<void> | undefined;
  started = 0;
  async fail(message: string): Promise<never> {
    this.started++;
    await this.hold;
    throw new Error(message);
  }
}

/** A store without the counting hooks (each server counts its own), whose deletes fail on demand. */
class PlainStore implements SessionManager {
  readonly inner = new MemorySessionManager();
  readonly faults = new Faults();
  /** Deletes that fail without deleting (the store is unreachable). */
  failDeletes = 0;
  /** Deletes that delete, then fail (the answer was lost). */
  loseDeletes = 0;
  onSessionCreated(session: Session): Promise<void> {
    return this.inner.onSessionCreated(session);
  }
  onSessionLookup(key: string): Promise<Session | null> {
    return this.inner.onSessionLookup(key);
  }
  onSessionUpdate(key: string, info: Readonly<Record<string, unknown>> | undefined): Promise<Session | null> {
    return this.inner.onSessionUpdate(key, info);
  }
  /** Whether the store has the session, without a call the server would count. */
  async stored(key: string): Promise<boolean> {
    return (await this.inner.onSessionLookup(key)) !== null;
  }
  async onSessionClosed(key: string): Promise<void> {
    if (this.failDeletes > 0) {
      this.failDeletes--;
      await this.faults.fail('store down');
    }
    await this.inner.onSessionClosed(key);
    if (this.loseDeletes > 0) {
      this.loseDeletes--;
      await this.faults.fail('connection to the store lost');
    }
  }
}

/** A counting store whose attaches and detaches fail on demand, before or after doing their work. */
class CountingStore extends MemorySessionManager {
  readonly faults = new Faults();
  /** Detaches that fail without doing anything (the store is unreachable). */
  failDetaches = 0;
  /** Detaches that do their work, then fail (the answer was lost). */
  loseDetaches = 0;
  failAttaches = 0;
  /** What `onSessionClosed` waits for before deleting (a slow delete). */
  holdDeletes: Promise<void> | undefined;
  /** Run once, as the next attach is answered. */
  afterAttach: (() => void) | undefined;
  override async onSessionDetach(key: string, closing?: boolean): Promise<number> {
    if (this.failDetaches > 0) {
      this.failDetaches--;
      await this.faults.fail('store down');
    }
    const left = await super.onSessionDetach(key, closing);
    if (this.loseDetaches > 0) {
      this.loseDetaches--;
      await this.faults.fail('connection to the store lost');
    }
    return left;
  }
  override async onSessionAttach(key: string, limit: number): Promise<SessionAttachResult> {
    if (this.failAttaches > 0) {
      this.failAttaches--;
      throw new Error('store down');
    }
    const result = await super.onSessionAttach(key, limit);
    const after = this.afterAttach;
    this.afterAttach = undefined;
    after?.();
    return result;
  }
  override async onSessionClosed(key: string): Promise<void> {
    await this.holdDeletes;
    return super.onSessionClosed(key);
  }
  async stored(key: string): Promise<boolean> {
    return (await this.onSessionLookup(key)) !== null;
  }
}

type FailingStore = PlainStore | CountingStore;

/**
 * Microtask turns swept over by the tests below: well past the few between the store's answer to
 * the take-back's attach and the connection taking the session.
 */
const SWEEP = 12;

async function setup(t: TestContext, store: SessionManager) {
  const { server, url, logger } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const client = await connectClient(t, url);
  const session = await login(client);
  const events: string[] = [];
  for (const name of ['sessionCreated', 'sessionUpdated', 'sessionClosed'] as const) {
    client.on(name, () => events.push(name));
  }
  return { server, url, client, key: session.key, events, logger };
}

/** The client's session and its connection's on the server, side by side. */
async function bothSides(client: Client): Promise<{ client: string | null; server: string | null }> {
  return { client: client.session?.key ?? null, server: (await whoami(client))?.key ?? null };
}

/** The close succeeded: neither side holds the session nor does the store, and the client heard so. */
async function assertClosed(
  { server, client, key, events }: Awaited<ReturnType<typeof setup>>,
  store: FailingStore,
): Promise<void> {
  assert.deepEqual(await bothSides(client), { client: null, server: null });
  assert.equal(await store.stored(key), false, 'deleted');
  assert.equal(server.activeSessionCount, 0);
  assert.deepEqual(events, ['sessionClosed']);
}

/**
 * The client's close, once its store call that fails (armed by the caller) has begun: it waits,
 * the connection holding nothing, until `fail()`.
 */
async function closeHeld(client: Client, store: FailingStore): Promise<{ closing: Promise<void>; fail: () => void }> {
  const held = gate();
  store.faults.hold = held.wait;
  const closing = client.closeSession();
  await waitFor(() => store.faults.started === 1, 1_000, 'the failing store call');
  return { closing, fail: held.open };
}

describe('client closeSession when the store fails', () => {
  it('a store that could not delete the session: InternalError, and both sides still hold it; a retry closes it', async (t) => {
    const store = new PlainStore();
    const ctx = await setup(t, store);
    const { server, client, key, events, logger } = ctx;
    store.failDeletes = 1;
    await assert.rejects(client.closeSession(), InternalError);
    assert.deepEqual(await bothSides(client), { client: key, server: key });
    assert.equal(server.sessionConnections(key).length, 1);
    assert.ok(await store.stored(key), 'still stored');
    assert.deepEqual(events, []);
    assert.ok(logger.entries.some((e) => e.level === 'error' && e.message.includes('failed to close a session')));

    await client.closeSession();
    await assertClosed(ctx, store);
  });

  for (const store of [new CountingStore(), new PlainStore()]) {
    const counts = store instanceof CountingStore ? 'a store' : 'a store without counts';
    it(`${counts} that deleted the session but answered with an error: the close succeeded`, async (t) => {
      const ctx = await setup(t, store);
      if (store instanceof CountingStore) store.loseDetaches = 1;
      else store.loseDeletes = 1;
      await ctx.client.closeSession();
      await assertClosed(ctx, store);
    });
  }

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
    assert.ok(await store.stored(key));
  });

  it('an update of the session while the failing delete runs: the client gets it with the session taken back', async (t) => {
    const store = new PlainStore();
    const { server, client, key, events } = await setup(t, store);
    store.failDeletes = 1;
    const { closing, fail } = await closeHeld(client, store);
    assert.equal(await server.updateSession(key, { user: 'grace' }), 0, 'no connection holds it meanwhile');
    fail();
    await assert.rejects(closing, InternalError);
    assert.deepEqual(client.session?.info, { user: 'grace' });
    assert.deepEqual(await whoami(client), { key, info: { user: 'grace' } });
    assert.deepEqual(events, ['sessionUpdated']);
  });

  it('an update by another connection of the session while the failing detach runs: the client gets it with the session taken back', async (t) => {
    const store = new CountingStore();
    const { server, client, key, events, url } = await setup(t, store);
    const other = await connectClient(t, url);
    await other.restoreSession(key);
    store.loseDetaches = 1;
    const { closing, fail } = await closeHeld(client, store);
    assert.equal(payloadText(await other.request('rename', utf8('grace'))), 'ok');
    fail();
    await assert.rejects(closing, InternalError);
    assert.deepEqual(client.session?.info, { user: 'grace' });
    assert.deepEqual(await whoami(client), { key, info: { user: 'grace' } });
    assert.deepEqual(events, ['sessionUpdated']);
    assert.equal(server.sessionConnections(key).length, 2);
  });

  it('a close by key landing at any step of the take-back: nothing holds the deleted session', async (t) => {
    const store = new CountingStore();
    const { server, client } = await setup(t, store);
    for (let hops = 0; hops < SWEEP; hops++) {
      const { key } = client.session ?? (await login(client));
      let closed: Promise<number> | undefined;
      store.failDetaches = 1;
      store.afterAttach = () =>
        afterMicrotasks(hops, () => {
          closed = server.closeSession(key);
        });
      // Closed by key before the connection took the session back (the close succeeded) or after
      // (InternalError, then sessionClosed): either way, nothing held after.
      await client.closeSession().catch((error: unknown) => assert.ok(error instanceof InternalError));
      assert.ok(closed !== undefined, 'closed by key');
      await closed;
      assert.deepEqual(await bothSides(client), { client: null, server: null }, `${hops} turns`);
    }
    assert.equal(server.activeSessionCount, 0);
  });

  it('an update landing at any step of the take-back: the client ends with it', async (t) => {
    const store = new CountingStore();
    const { client, key, server } = await setup(t, store);
    for (let hops = 0; hops < SWEEP; hops++) {
      const info = { user: `user ${hops}` };
      let updated: Promise<number> | undefined;
      store.failDetaches = 1;
      store.afterAttach = () =>
        afterMicrotasks(hops, () => {
          updated = server.updateSession(key, info);
        });
      await assert.rejects(client.closeSession(), InternalError);
      assert.ok(updated !== undefined, 'updated');
      await updated;
      assert.deepEqual(await whoami(client), { key, info }, `${hops} turns: the connection has the update`);
      assert.deepEqual(client.session?.info, info, `${hops} turns: and so does the client`);
    }
  });

  it('closed by key while the failing delete runs: the close succeeded, nothing holds the deleted session', async (t) => {
    const store = new PlainStore();
    const ctx = await setup(t, store);
    store.failDeletes = 1;
    const { closing, fail } = await closeHeld(ctx.client, store);
    assert.equal(await ctx.server.closeSession(ctx.key), 0, 'no connection holds it meanwhile');
    fail();
    await closing;
    await assertClosed(ctx, store);
  });

  it('closed by key while the failing detach runs, its delete still under way when the session is taken back: the close succeeded', async (t) => {
    const store = new CountingStore();
    const ctx = await setup(t, store);
    const deleting = gate();
    store.failDetaches = 1;
    store.holdDeletes = deleting.wait;
    const { closing, fail } = await closeHeld(ctx.client, store);
    const byKey = ctx.server.closeSession(ctx.key);
    fail();
    // The store still has the session (its delete waits): only the close by key can tell.
    const outcome = await closing.then(
      () => 'closed',
      (error: unknown) => error,
    );
    deleting.open();
    assert.equal(await byKey, 0, 'no connection held it when it was closed');
    assert.equal(outcome, 'closed');
    await assertClosed(ctx, store);
  });

  it('another connection restores and closes the session while the failing delete runs: the close succeeded', async (t) => {
    const store = new PlainStore();
    const ctx = await setup(t, store);
    store.failDeletes = 1;
    const { closing, fail } = await closeHeld(ctx.client, store);
    const other = await connectClient(t, ctx.url);
    await other.restoreSession(ctx.key);
    await other.closeSession();
    assert.equal(await store.stored(ctx.key), false, 'deleted by the other connection');
    fail();
    await closing;
    await assertClosed(ctx, store);
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
