/**
 * Sessions shared by several servers: `maxSessionConnections` counted over every server's
 * connections, a session deleted only when its last connection anywhere closes it, and
 * `server.closeSession(key)` reaching every server over the bus.
 *
 * Two cases of the same suite: two Servers sharing one MemorySessionManager and an in-process bus
 * (always run), and two Servers as two processes would be over a real Redis, each with its own
 * `RedisSessionManager`, Redis connections and `redisTopicBus` (skipped with the reason when Redis
 * is unreachable, failing instead in CI; see test/session/redis.ts). The Redis case also covers a
 * process that dies without letting go of its connections (`presenceTtl`).
 */
import assert from 'node:assert/strict';
import { after, describe, it, type TestContext } from 'node:test';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { Client } from '../../src/client/client.ts';
import {
  decodeBusMessage,
  decodeSessionUpdatedBody,
  encodeBusMessage,
  encodeSessionUpdatedBody,
  redisTopicBus,
  SESSIONS_CHANNEL,
  type TopicBus,
} from '../../src/cluster/bus.ts';
import {
  InternalError,
  InvalidArgumentError,
  MaxSessionConnectionsError,
  SessionNotFoundError,
} from '../../src/errors.ts';
import { Server } from '../../src/server/server.ts';
import { MemorySessionManager } from '../../src/session/memory-store.ts';
import { RedisSessionManager } from '../../src/session/redis-store.ts';
import {
  type Session,
  type SessionAttachResult,
  type SessionManager,
  sessionToJson,
} from '../../src/session/session.ts';
import { wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { login, sessionApp, whoami } from '../fixtures/session-helpers.ts';
import { delay, recordingLogger, waitFor } from '../helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, type TestRedisClient, uniquePrefix } from '../session/redis.ts';

/** Connections one session may have, on all servers together, in these tests. */
const LIMIT = 2;
/** The Redis managers' presenceTtl here: short, so a dead process stops counting within a test. */
const PRESENCE_TTL = 900;

/** What the suite needs of a store shared by two servers. */
interface Shared {
  /** The SessionManager and bus of one more server. */
  node(): Promise<{ manager: SessionManager; bus: TopicBus }>;
  /** Whether the store holds `key` (a lookup through its own manager). */
  has(key: string): Promise<boolean>;
}

/** A bus inside this process: every listener of a channel gets each publish, a turn later. */
function localBus(): () => TopicBus {
  const channels = new Map<string, Set<(message: Uint8Array) => void>>();
  return () => {
    const mine = new Map<string, (message: Uint8Array) => void>();
    return {
      publish: async (channel, message) => {
        for (const listener of channels.get(channel) ?? []) queueMicrotask(() => listener(message));
      },
      subscribe: async (channel, listener) => {
        mine.set(channel, listener);
        const set = channels.get(channel) ?? new Set();
        channels.set(channel, set);
        set.add(listener);
      },
      unsubscribe: async (channel) => {
        const listener = mine.get(channel);
        if (listener !== undefined) channels.get(channel)?.delete(listener);
        mine.delete(channel);
      },
    };
  };
}

/**
 * `bus` as a server sees it, with `subscribed` resolving once its subscription to the sessions
 * channel is in place, and, with `hold`, the session updates it hears held until `hold` of them
 * have come, then delivered in the reverse order (`delivered` counts them): the order in which
 * two processes' publishes reach a third is Redis's, not the store's.
 */
function tappedBus(bus: TopicBus, hold = 0) {
  let subscribed!: () => void;
  const tap = {
    subscribed: new Promise<void>((resolve) => {
      subscribed = resolve;
    }),
    delivered: 0,
    bus: {
      publish: (channel, message) => bus.publish(channel, message),
      unsubscribe: (channel) => bus.unsubscribe(channel),
      subscribe: async (channel, listener) => {
        const held: Uint8Array[] = [];
        await bus.subscribe(channel, (message) => {
          const decoded = decodeBusMessage(message);
          const update = decoded === undefined ? undefined : decodeSessionUpdatedBody(decoded.signal);
          if (hold === 0 || channel !== SESSIONS_CHANNEL || update === undefined) {
            listener(message);
            return;
          }
          held.push(message);
          if (held.length < hold) return;
          for (const m of held.reverse()) {
            tap.delivered++;
            listener(m);
          }
        });
        if (channel === SESSIONS_CHANNEL) subscribed();
      },
    } satisfies TopicBus,
  };
  return tap;
}

/** A server with the login/whoami app on `manager` (and `bus`), at most LIMIT connections a session. */
async function startSessionServer(t: TestContext, manager: SessionManager, bus?: TopicBus) {
  const logger = recordingLogger();
  const server = new Server({
    transport: wsTransport({ host: '127.0.0.1', port: 0 }),
    logger,
    sessionManager: manager,
    maxSessionConnections: LIMIT,
    ...(bus === undefined ? {} : { bus }),
    onRequest: sessionApp,
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  return { server, url: `ws://127.0.0.1:${server.address()!.port}/`, logger };
}

/** One more server on the shared store and bus. */
async function startNode(t: TestContext, shared: Shared) {
  const { manager, bus } = await shared.node();
  return startSessionServer(t, manager, bus);
}

/** Servers A and B on one store; a session created by a1 on A and restored by b1 on B. */
async function sessionOnBoth(t: TestContext, shared: Shared) {
  const a = await startNode(t, shared);
  const b = await startNode(t, shared);
  const a1 = await client(t, a.url);
  const { key } = await login(a1);
  const b1 = await client(t, b.url);
  await b1.restoreSession(key);
  return { shared, a, b, a1, b1, key };
}

/** The next `sessionUpdated` of `c`, failing after 2 s rather than hanging the run. */
function updateOf(c: Client): Promise<Session> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no 'sessionUpdated' within 2000 ms")), 2_000);
    c.once('sessionUpdated', (session) => {
      clearTimeout(timer);
      resolve(session);
    });
  });
}

async function client(t: TestContext, url: string): Promise<Client> {
  const c = new Client(url, { transport: wsClientTransport(), reconnect: false, logger: recordingLogger() });
  t.after(() => c.close());
  await c.connect();
  return c;
}

function defineSuite(name: string, makeShared: (t: TestContext) => Promise<Shared>): void {
  describe(`sessions across servers: ${name}`, () => {
    it('maxSessionConnections counts the connections of every server', async (t) => {
      const { shared, a, b, b1, key } = await sessionOnBoth(t, await makeShared(t));

      const b2 = await client(t, b.url);
      await assert.rejects(b2.restoreSession(key), MaxSessionConnectionsError, 'one on A and one on B make two');
      const a2 = await client(t, a.url);
      await assert.rejects(a2.restoreSession(key), MaxSessionConnectionsError);
      assert.equal(b.server.sessionConnections(key).length, 1, 'a refused connection is not registered');

      // A connection that goes away frees its slot everywhere, and the session stays stored.
      await b1.close();
      await waitFor(() => b.server.sessionConnections(key).length === 0, 2_000, 'b1 to leave');
      await b2.restoreSession(key);
      assert.equal(b2.session?.key, key);
      assert.equal(await shared.has(key), true);
    });

    it('a session is deleted only when its last connection anywhere closes it', async (t) => {
      const { shared, a, a1, b1, key } = await sessionOnBoth(t, await makeShared(t));

      await a1.closeSession();
      assert.equal(a1.session, null);
      assert.equal(await shared.has(key), true, 'B still has a connection on it');
      assert.equal(b1.session?.key, key);

      await b1.closeSession();
      assert.equal(await shared.has(key), false, 'closed by the last connection: deleted');
      const late = await client(t, a.url);
      await assert.rejects(late.restoreSession(key), SessionNotFoundError);
    });

    it('server.closeSession(key) closes the session on every server', async (t) => {
      const { shared, a, b, a1, b1, key } = await sessionOnBoth(t, await makeShared(t));
      const closedOnB = new Promise<void>((resolve) => b1.once('sessionClosed', () => resolve()));

      assert.equal(await a.server.closeSession(key), 1, "the count is this server's connections");
      await closedOnB;
      assert.equal(b1.session, null);
      await waitFor(() => b.server.sessionConnections(key).length === 0, 2_000, 'B to drop its connection');
      assert.equal(await shared.has(key), false);
      await waitFor(() => a1.session === null, 2_000, "A's own client to be told");

      // The slots are free again and the key is gone for everyone.
      const b2 = await client(t, b.url);
      await assert.rejects(b2.restoreSession(key), SessionNotFoundError);
      const fresh = await login(b2, 'bob');
      const a2 = await client(t, a.url);
      await a2.restoreSession(fresh.key);
      assert.deepEqual(
        b.logger.entries.filter((e) => e.level === 'error'),
        [],
      );
    });

    it('server.updateSession(key) on A reaches the connections on B; conn.updateSession on B reaches A', async (t) => {
      const { a, b, a1, b1, key } = await sessionOnBoth(t, await makeShared(t));
      const events: string[] = [];
      for (const c of [a1, b1]) {
        c.on('sessionCreated', () => events.push('sessionCreated'));
        c.on('sessionClosed', () => events.push('sessionClosed'));
      }
      const onB = updateOf(b1);
      const onA = updateOf(a1);

      assert.equal(await a.server.updateSession(key, { user: 'grace' }), 1, "the count is this server's connections");
      assert.equal((await onB).key, key);
      assert.deepEqual(b1.session?.info, { user: 'grace' });
      assert.deepEqual((await onA).info, { user: 'grace' });
      await waitFor(
        () => b.server.sessionConnections(key)[0]?.session?.info?.user === 'grace',
        2_000,
        "B's conn.session",
      );
      assert.deepEqual(await whoami(b1), { key, info: { user: 'grace' } });

      // The other way round, through a request handler on B.
      const backOnA = updateOf(a1);
      assert.equal(payloadText(await b1.request('rename', utf8('hopper'))), 'ok');
      assert.deepEqual((await backOnA).info, { user: 'hopper' });
      assert.deepEqual(await whoami(a1), { key, info: { user: 'hopper' } });

      // A client restoring the session anywhere later gets what was stored last.
      const late = await client(t, b.url);
      await b1.close();
      await waitFor(() => b.server.sessionConnections(key).length === 0, 2_000, 'b1 to leave');
      assert.deepEqual((await late.restoreSession(key)).info, { user: 'hopper' });
      assert.deepEqual(events, []);
      for (const { logger } of [a, b]) {
        assert.deepEqual(
          logger.entries.filter((e) => e.level === 'error' || e.level === 'warn'),
          [],
        );
      }
    });

    it("updates by A then B (in the store) heard in the other order on C: C keeps B's, its client is never told A's after it", async (t) => {
      const shared = await makeShared(t);
      const a = await startNode(t, shared);
      const b = await startNode(t, shared);
      const node = await shared.node();
      const tap = tappedBus(node.bus, 2);
      const c = await startSessionServer(t, node.manager, tap.bus);
      await tap.subscribed;
      const a1 = await client(t, a.url);
      const { key } = await login(a1);
      const c1 = await client(t, c.url);
      await c1.restoreSession(key);
      const told: unknown[] = [];
      c1.on('sessionUpdated', (session) => told.push(session.info));

      // The store writes A's first (version 1), then B's (version 2); C hears B's, then A's.
      await a.server.updateSession(key, { user: 'first' });
      await b.server.updateSession(key, { user: 'second' });
      await waitFor(() => tap.delivered === 2, 2_000, 'both updates to reach C');
      // A reply comes after every notification C sent before it: c1 has heard all it will.
      assert.deepEqual(await whoami(c1), { key, info: { user: 'second' } });
      assert.deepEqual(told, [{ user: 'second' }], 'the newer once; the older, heard last, ignored');
      assert.deepEqual(c1.session?.info, { user: 'second' });
      assert.equal(c.server.sessionConnections(key)[0]?.session?.version, 2);
      assert.deepEqual(await whoami(a1), { key, info: { user: 'second' } });
    });

    it('an update the store wrote before another is not applied by its own server after that one', async (t) => {
      const shared = await makeShared(t);
      const node = await shared.node();
      const inner = node.manager;
      let stored!: () => void;
      const storedFirst = new Promise<void>((resolve) => {
        stored = resolve;
      });
      let release!: () => void;
      const released = new Promise<void>((resolve) => {
        release = resolve;
      });
      // A's store call answers late: written first, but applied on A after B's update arrived.
      const late: SessionManager = {
        onSessionCreated: (session) => inner.onSessionCreated(session),
        onSessionLookup: (key) => inner.onSessionLookup(key),
        onSessionClosed: (key) => inner.onSessionClosed(key),
        onSessionAttach: (key, limit) => inner.onSessionAttach!(key, limit),
        onSessionDetach: (key, closing) => inner.onSessionDetach!(key, closing),
        onSessionUpdate: async (key, info) => {
          const session = await inner.onSessionUpdate!(key, info);
          stored();
          await released;
          return session;
        },
      };
      const tap = tappedBus(node.bus);
      const a = await startSessionServer(t, late, tap.bus);
      await tap.subscribed;
      const b = await startNode(t, shared);
      const a1 = await client(t, a.url);
      const { key } = await login(a1);
      const told: unknown[] = [];
      a1.on('sessionUpdated', (session) => told.push(session.info));

      const first = a.server.updateSession(key, { user: 'first' });
      await storedFirst;
      const heard = updateOf(a1);
      await b.server.updateSession(key, { user: 'second' });
      assert.deepEqual((await heard).info, { user: 'second' });
      release();
      assert.equal(await first, 0, "A's update is older than what its connection holds: nobody is told");
      assert.deepEqual(await whoami(a1), { key, info: { user: 'second' } });
      assert.deepEqual(told, [{ user: 'second' }]);
      assert.deepEqual(a1.session?.info, { user: 'second' });
    });

    it('an update of a session closed on another server tells nobody and rejects SessionNotFoundError', async (t) => {
      const { a, b, a1, b1, key } = await sessionOnBoth(t, await makeShared(t));
      await b.server.closeSession(key);
      await waitFor(() => a1.session === null, 2_000, 'the close to reach A');
      let updated = 0;
      for (const c of [a1, b1]) c.on('sessionUpdated', () => updated++);
      await assert.rejects(a.server.updateSession(key, { user: 'eve' }), SessionNotFoundError);
      await delay(50);
      assert.equal(updated, 0);
      assert.equal(a1.session, null);
      assert.equal(b1.session, null);
    });
  });
}

// -----------------------------------------------------------------------------------------------
// One process: two Servers sharing a MemorySessionManager.

defineSuite('a MemorySessionManager shared in one process', async () => {
  const manager = new MemorySessionManager();
  const bus = localBus();
  return {
    node: async () => ({ manager, bus: bus() }),
    has: async (key) => (await manager.onSessionLookup(key)) !== null,
  };
});

describe('sessions across servers: close by key, then restore', () => {
  it('server.closeSession(key) deletes before it tells the others: a restore there once told finds nothing', async (t) => {
    // Deletes take a while (a slow store): announced first, the close let B's restore take it.
    class SlowDelete extends MemorySessionManager {
      override async onSessionClosed(key: string): Promise<void> {
        await delay(150);
        return super.onSessionClosed(key);
      }
    }
    const manager = new SlowDelete();
    const bus = localBus();
    const a = await startSessionServer(t, manager, bus());
    const b = await startSessionServer(t, manager, bus());
    const a1 = await client(t, a.url);
    const { key } = await login(a1);
    const b1 = await client(t, b.url);
    await b1.restoreSession(key);
    const told = new Promise<void>((resolve) => b1.once('sessionClosed', () => resolve()));
    const closing = a.server.closeSession(key);
    await told;
    const b2 = await client(t, b.url);
    await assert.rejects(b2.restoreSession(key), SessionNotFoundError);
    await closing;
    assert.equal(b.server.activeSessionCount, 0);
  });
});

describe('sessions on the bus: what a server does with the session messages of others', () => {
  it('an update from another server is given as a restore gives it (parseSessionInfo); what is not one is logged and ignored', async (t) => {
    const manager = new MemorySessionManager();
    const bus = localBus();
    const other = bus();
    const logger = recordingLogger();
    const server = new Server({
      transport: wsTransport({ host: '127.0.0.1', port: 0 }),
      logger,
      sessionManager: manager,
      bus: bus(),
      parseSessionInfo: (info) => ({ ...info, parsed: true }),
      onRequest: sessionApp,
    });
    await server.listen();
    t.after(() => server.shutdown({ timeout: 200 }));
    const c = await client(t, `ws://127.0.0.1:${server.address()!.port}/`);
    const session = await login(c);
    await delay(20); // the server's subscription to SESSIONS_CHANNEL
    const publish = (body: Uint8Array) => other.publish(SESSIONS_CHANNEL, encodeBusMessage('another-server', body));

    const updated = updateOf(c);
    const stored = await manager.onSessionUpdate(session.key, { user: 'grace' });
    await publish(encodeSessionUpdatedBody(sessionToJson(stored!)));
    assert.deepEqual((await updated).info, { user: 'grace', parsed: true });
    assert.deepEqual(server.sessionConnections(session.key)[0]?.session?.info, { user: 'grace', parsed: true });

    let updates = 0;
    c.on('sessionUpdated', () => updates++);
    const bogus = [
      Uint8Array.of(9, 0x61), // a kind this server does not know (a newer server's)
      encodeSessionUpdatedBody('not json'),
      encodeSessionUpdatedBody(sessionToJson({ ...stored!, key: 'not-a-valid-key', info: { user: 'eve' } })),
    ];
    for (const body of bogus) await publish(body);
    await waitFor(
      () => logger.entries.filter((e) => e.message.includes('not a duplexwire session change')).length === 3,
      1_000,
      'three warnings',
    );
    assert.equal(updates, 0);
    assert.deepEqual(c.session?.info, { user: 'grace', parsed: true });
  });
});

/** A MemorySessionManager whose attaches take `delay` ms: a window for races. */
class SlowAttach extends MemorySessionManager {
  constructor(private readonly attachDelay: number) {
    super();
  }
  override async onSessionAttach(key: string, limit: number): Promise<SessionAttachResult> {
    await delay(this.attachDelay);
    return super.onSessionAttach(key, limit);
  }
}

describe('sessions: a slow store count (pending attaches)', () => {
  async function setup(t: TestContext, manager: MemorySessionManager = new SlowAttach(150)) {
    return { ...(await startSessionServer(t, manager)), manager };
  }

  it('a store whose count fails: the restore gets an internal error, a new session is not kept', async (t) => {
    let failing = false;
    class FailingCount extends MemorySessionManager {
      override async onSessionAttach(key: string, limit: number): Promise<SessionAttachResult> {
        if (failing) throw new Error('count store down');
        return super.onSessionAttach(key, limit);
      }
    }
    const { server, manager, logger, url } = await setup(t, new FailingCount());
    const owner = await client(t, url);
    const { key } = await login(owner);
    failing = true;
    const other = await client(t, url);
    await assert.rejects(other.restoreSession(key), InternalError);
    assert.equal(other.session, null);
    assert.equal(server.sessionConnections(key).length, 1, 'the failed restore left no registration');
    assert.ok(logger.entries.some((e) => e.level === 'error' && e.message.includes('attach')));

    const created: string[] = [];
    const store = manager.onSessionCreated.bind(manager);
    manager.onSessionCreated = async (session) => {
      created.push(session.key);
      await store(session);
    };
    const third = await client(t, url);
    await assert.rejects(login(third), InternalError, 'the handler failed with the store: an internal-error reply');
    assert.equal(created.length, 1);
    assert.equal(await manager.onSessionLookup(created[0]!), null, 'the session nobody was told of is deleted');
    assert.equal(third.session, null);

    failing = false;
    await other.restoreSession(key);
    assert.equal(server.sessionConnections(key).length, 2);
  });

  it('a connection that closes while its restore is counted gives its slot back', async (t) => {
    const { server, url } = await setup(t);
    const owner = await client(t, url);
    const { key } = await login(owner);
    const quitter = await client(t, url);
    const restoring = quitter.restoreSession(key).catch((error: unknown) => error);
    await delay(30);
    await quitter.close();
    await restoring;
    await delay(200);
    assert.equal(server.sessionConnections(key).length, 1, 'only the owner is registered');
    // The slot is free: one more connection fits under the limit of two, and no more.
    const second = await client(t, url);
    await second.restoreSession(key);
    const third = await client(t, url);
    await assert.rejects(third.restoreSession(key), MaxSessionConnectionsError);
  });

  it('a session closed by key while a restore is being counted is not restored', async (t) => {
    const { server, manager, url } = await setup(t);
    const owner = await client(t, url);
    const { key } = await login(owner);
    const late = await client(t, url);
    const restoring = late.restoreSession(key);
    await delay(30);
    assert.equal(await server.closeSession(key), 1, 'the pending connection is not counted: its client was never told');
    await assert.rejects(restoring, SessionNotFoundError);
    assert.equal(late.session, null);
    assert.deepEqual(server.sessionConnections(key), []);
    assert.equal(await manager.onSessionLookup(key), null);
  });

  it('a connection that closes while its new session is counted leaves nothing stored', async (t) => {
    const { server, manager } = await setup(t);
    const created: Session[] = [];
    const spy = manager.onSessionCreated.bind(manager);
    manager.onSessionCreated = async (session) => {
      created.push(session);
      await spy(session);
    };
    const url = `ws://127.0.0.1:${server.address()!.port}/`;
    const c = await client(t, url);
    const logging = c.request('login', utf8('ada')).catch((error: unknown) => error);
    await waitFor(() => created.length === 1, 2_000, 'the session to be stored');
    await c.close();
    await logging;
    await waitFor(() => server.connections.size === 0, 2_000, 'the connection to close');
    await delay(200);
    assert.equal(await manager.onSessionLookup(created[0]!.key), null, 'the unannounced session is deleted');
    assert.equal(server.activeSessionCount, 0);
  });
});

// -----------------------------------------------------------------------------------------------
// Processes: two Servers, each with its own Redis connections, as two processes have.

const connected = await connectRedis();
if (connected instanceof Error) {
  redisUnreachable('sessions across servers over Redis', connected);
} else {
  const redis: TestRedisClient = connected;
  const connections: TestRedisClient[] = [redis];
  after(async () => {
    for (const c of connections) await c.quit().catch(() => c.destroy());
  });
  async function connection(): Promise<TestRedisClient> {
    const c = redis.duplicate();
    c.on('error', () => {});
    await c.connect();
    connections.push(c);
    return c;
  }

  async function redisShared(t: TestContext): Promise<Shared & { prefix: string }> {
    const prefix = uniquePrefix();
    t.after(() => deletePrefix(redis, prefix));
    const reader = new RedisSessionManager({ client: redis, prefix: `${prefix}s:` });
    return {
      prefix,
      node: async () => {
        const manager = new RedisSessionManager({
          client: await connection(),
          prefix: `${prefix}s:`,
          presenceTtl: PRESENCE_TTL,
        });
        t.after(() => manager.close());
        const bus = redisTopicBus({
          publisher: await connection(),
          subscriber: await connection(),
          prefix: `${prefix}t:`,
        });
        return { manager, bus };
      },
      has: async (key) => (await reader.onSessionLookup(key)) !== null,
    };
  }

  defineSuite('RedisSessionManager and redisTopicBus, one Redis connection set per server', redisShared);

  describe('sessions across servers over Redis: processes that die', () => {
    it('the connections of a process that died stop counting after presenceTtl', async (t) => {
      const shared = await redisShared(t);
      const a = await startNode(t, shared);
      const a1 = await client(t, a.url);
      const { key } = await login(a1);
      // Another process takes the second slot, then dies: its Redis connection is gone, and it
      // never said its connection left.
      const doomedClient = await connection();
      const doomed = new RedisSessionManager({
        client: doomedClient,
        prefix: `${shared.prefix}s:`,
        presenceTtl: PRESENCE_TTL,
      });
      assert.equal(await doomed.onSessionAttach(key, LIMIT), 'attached');
      await doomed.close();
      doomedClient.destroy();

      const b = await startNode(t, shared);
      const b1 = await client(t, b.url);
      await assert.rejects(
        b1.restoreSession(key),
        MaxSessionConnectionsError,
        'the dead process still counts at first',
      );
      await delay(PRESENCE_TTL + 200);
      await b1.restoreSession(key);
      assert.equal(b1.session?.key, key, 'its slot was freed when its presence expired');
    });

    it('a process restarted in place with the same instanceId takes over its counts at once', async (t) => {
      const shared = await redisShared(t);
      const a = await startNode(t, shared);
      const a1 = await client(t, a.url);
      const { key } = await login(a1);
      // Process "web-1" holds the second slot, then is killed: its count stays behind.
      const killed = new RedisSessionManager({
        client: await connection(),
        prefix: `${shared.prefix}s:`,
        presenceTtl: 60_000,
        instanceId: 'web-1',
      });
      assert.equal(await killed.onSessionAttach(key, LIMIT), 'attached');
      await killed.close();
      // Another process cannot have the slot while the dead one's count lasts...
      const other = new RedisSessionManager({ client: await connection(), prefix: `${shared.prefix}s:` });
      t.after(() => other.close());
      assert.equal(await other.onSessionAttach(key, LIMIT), 'limit');
      // ...but "web-1" restarted replaces its own count: its client's restore gets the slot back.
      const restarted = new RedisSessionManager({
        client: await connection(),
        prefix: `${shared.prefix}s:`,
        presenceTtl: 60_000,
        instanceId: 'web-1',
      });
      t.after(() => restarted.close());
      assert.equal(await restarted.onSessionAttach(key, LIMIT), 'attached');
      assert.equal(await restarted.onSessionDetach(key), 1, "a1's connection on A remains");
    });

    it('instanceId is checked', () => {
      for (const instanceId of ['', 'a b', 'x'.repeat(129), 'é']) {
        assert.throws(
          () => new RedisSessionManager({ client: redis, instanceId }),
          InvalidArgumentError,
          JSON.stringify(instanceId),
        );
      }
    });

    it('a live process keeps counting past presenceTtl (its counts are renewed)', async (t) => {
      const { shared, b, b1, key } = await sessionOnBoth(t, await redisShared(t));
      await delay(PRESENCE_TTL * 2 + 200);
      const b2 = await client(t, b.url);
      await assert.rejects(b2.restoreSession(key), MaxSessionConnectionsError);
      // And a close by one of them still leaves the session to the other.
      await b1.closeSession();
      assert.equal(await shared.has(key), true);
    });
  });
}
