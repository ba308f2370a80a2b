/**
 * RedisSessionManager beyond the shared contract, over a real Redis: storage layout, TTL, two
 * processes (two clients) sharing sessions, atomic last-lookup updates, corrupt data, failures.
 * Skipped with the reason when Redis is unreachable, failing instead in CI (see redis.ts).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, describe, it, type TestContext } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.ts';
import type { Logger } from '../../src/logger.ts';
import {
  DEFAULT_REDIS_PREFIX,
  type RedisCommandClient,
  RedisSessionManager,
  type RedisSessionManagerOptions,
} from '../../src/session/redis-store.ts';
import { defaultKeyGenerator, formatSessionTime, type Session } from '../../src/session/session.ts';
import { newSession } from './contract.ts';
import {
  connectRedis,
  deletePrefix,
  keysWithPrefix,
  redisUnreachable,
  type TestRedisClient,
  uniquePrefix,
} from './redis.ts';

const sha256 = (key: string): string => createHash('sha256').update(key, 'utf8').digest('hex');

interface LogEntry {
  readonly level: string;
  readonly message: string;
  readonly context: Record<string, unknown> | undefined;
}

function recordingLogger(): Logger & { entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const at = (level: string) => (message: string, context?: Record<string, unknown>) => {
    entries.push({ level, message, context });
  };
  return { entries, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

const first = await connectRedis();
const second = first instanceof Error ? first : await connectRedis();

if (first instanceof Error || second instanceof Error) {
  if (!(first instanceof Error)) await first.close();
  redisUnreachable('RedisSessionManager', first instanceof Error ? first : (second as Error));
} else {
  after(async () => {
    await first.close();
    await second.close();
  });
  defineTests(first, second);
}

function defineTests(redis: TestRedisClient, otherRedis: TestRedisClient): void {
  /** A manager over `client` with a fresh prefix whose keys are deleted after the test. */
  function setup(
    t: TestContext,
    options: Partial<RedisSessionManagerOptions> = {},
    client: RedisCommandClient = redis,
  ): { manager: RedisSessionManager; prefix: string; logger: ReturnType<typeof recordingLogger> } {
    const prefix = options.prefix ?? uniquePrefix();
    const logger = recordingLogger();
    t.after(() => deletePrefix(redis, prefix));
    return { manager: new RedisSessionManager({ client, prefix, logger, ...options }), prefix, logger };
  }

  const pttl = async (key: string): Promise<number> => Number(await redis.sendCommand(['PTTL', key]));
  /** HGETALL as an object (node-redis hands the reply over as an object or as a flat array). */
  const hgetall = async (key: string): Promise<Record<string, string>> => {
    const reply = (await redis.sendCommand(['HGETALL', key])) as string[] | Record<string, string>;
    if (!Array.isArray(reply)) return { ...reply };
    const fields: Record<string, string> = {};
    for (let i = 0; i + 1 < reply.length; i += 2) fields[reply[i]!] = reply[i + 1]!;
    return fields;
  };

  describe('RedisSessionManager: storage layout', () => {
    it('stores a hash at prefix + sha256(key) with k, c, l and i as JSON text', async (t) => {
      const { manager, prefix } = setup(t, { prefix: `myapp:${uniquePrefix()}` });
      const info = { user: 'ada', empty: {}, list: [], big: 2 ** 70, text: 'ключ 🔑' };
      const session = newSession(info);
      await manager.onSessionCreated(session);
      const keys = await keysWithPrefix(redis, prefix);
      assert.deepEqual(keys, [`${prefix}${sha256(session.key)}`]);
      assert.equal(manager.redisKey(session.key), keys[0]);
      assert.ok(!keys[0]!.includes(session.key), 'the session key is not part of the Redis key');
      assert.deepEqual(await hgetall(keys[0]!), {
        k: session.key,
        c: formatSessionTime(session.creation),
        l: formatSessionTime(session.lastLookup),
        i: JSON.stringify(info),
      });
    });

    it('has no i field without info', async (t) => {
      const { manager } = setup(t);
      const session = newSession();
      await manager.onSessionCreated(session);
      assert.deepEqual(Object.keys(await hgetall(manager.redisKey(session.key)!)).sort(), ['c', 'k', 'l']);
    });

    it('counts connections in a p:<process> field of the session hash, "<count> <expiry>"', async (t) => {
      const { manager } = setup(t, { presenceTtl: 60_000 });
      t.after(() => manager.close());
      const session = newSession({ user: 'ada' });
      await manager.onSessionCreated(session);
      const redisKey = manager.redisKey(session.key)!;
      const [seconds] = (await redis.sendCommand(['TIME'])) as [string, string];
      assert.equal(await manager.onSessionAttach(session.key, 0), 'attached');
      assert.equal(await manager.onSessionAttach(session.key, 0), 'attached');
      const fields = await hgetall(redisKey);
      const presence = Object.keys(fields).filter((name) => name.startsWith('p:'));
      assert.equal(presence.length, 1, 'one field per process, whatever its connections');
      const [count, expiry] = fields[presence[0]!]!.split(' ').map(Number) as [number, number];
      assert.equal(count, 2);
      const expected = Number(seconds) * 1000 + 60_000;
      assert.ok(
        Math.abs(expiry - expected) < 5_000,
        `expiry ${expiry} is about Redis's clock + presenceTtl (${expected})`,
      );
      assert.equal(fields.i, JSON.stringify({ user: 'ada' }), 'the session itself is untouched');

      // An expired or corrupt field of another process counts for nothing and is cleaned away.
      await redis.sendCommand(['HSET', redisKey, 'p:dead', '5 1000', 'p:garbage', 'x']);
      assert.equal(await manager.onSessionAttach(session.key, 3), 'attached', '2 + 1 here; the dead 5 do not count');
      assert.deepEqual(
        Object.keys(await hgetall(redisKey)).filter((name) => name.startsWith('p:')),
        presence,
        'the dead fields are gone',
      );
      for (let i = 0; i < 3; i++) await manager.onSessionDetach(session.key);
      assert.deepEqual(
        Object.keys(await hgetall(redisKey)).sort(),
        ['c', 'i', 'k', 'l'],
        'no field once no connection',
      );
    });

    it('an update rewrites only i and v (the version): k, c, l, the presence fields and the expiry stay', async (t) => {
      const { manager } = setup(t, { presenceTtl: 60_000, ttl: 60_000 });
      t.after(() => manager.close());
      const session = newSession({ user: 'ada' });
      await manager.onSessionCreated(session);
      const redisKey = manager.redisKey(session.key)!;
      assert.equal(await manager.onSessionAttach(session.key, 0), 'attached');
      await redis.sendCommand(['PEXPIRE', redisKey, '50000']);
      const before = await hgetall(redisKey);

      const info = { user: 'grace', empty: {}, list: [], big: 2 ** 70 };
      await manager.onSessionUpdate(session.key, info);
      assert.equal(before.v, undefined, 'no v before the first update: version 0');
      assert.deepEqual(await hgetall(redisKey), { ...before, i: JSON.stringify(info), v: '1' });
      const left = await pttl(redisKey);
      assert.ok(left > 40_000 && left <= 50_000, `the expiry is not restarted: PTTL ${left}`);

      await manager.onSessionUpdate(session.key, undefined);
      const { i: _, ...withoutInfo } = before;
      assert.deepEqual(await hgetall(redisKey), { ...withoutInfo, v: '2' }, 'no i field without info');

      // A corrupt version makes a corrupt session (logged, treated as absent), as a corrupt time does.
      await redis.sendCommand(['HSET', redisKey, 'v', 'x']);
      assert.equal(await manager.onSessionLookup(session.key), null);

      // A hash left with only presence fields is no session: nothing is written into it.
      await redis.sendCommand(['DEL', redisKey]);
      await redis.sendCommand(['HSET', redisKey, 'p:other', '1 1']);
      assert.equal(await manager.onSessionUpdate(session.key, { user: 'eve' }), null);
      assert.deepEqual(await hgetall(redisKey), { 'p:other': '1 1' });
    });

    it('uses DEFAULT_REDIS_PREFIX when no prefix is given', async (t) => {
      const manager = new RedisSessionManager({ client: redis });
      const session = newSession();
      const redisKey = `${DEFAULT_REDIS_PREFIX}${sha256(session.key)}`;
      t.after(() => redis.sendCommand(['DEL', redisKey]));
      assert.equal(DEFAULT_REDIS_PREFIX, 'duplexwire:session:');
      await manager.onSessionCreated(session);
      assert.equal(Number(await redis.sendCommand(['EXISTS', redisKey])), 1);
      await manager.onSessionClosed(session.key);
      assert.equal(Number(await redis.sendCommand(['EXISTS', redisKey])), 0);
    });

    it('stores nothing under another prefix', async (t) => {
      const a = setup(t);
      const b = setup(t);
      const session = newSession();
      await a.manager.onSessionCreated(session);
      assert.equal(await b.manager.onSessionLookup(session.key), null);
      await b.manager.onSessionClosed(session.key);
      assert.ok(await a.manager.onSessionLookup(session.key));
      assert.deepEqual(await keysWithPrefix(redis, b.prefix), []);
    });
  });

  describe('RedisSessionManager: ttl', () => {
    it('sets no expiry without ttl', async (t) => {
      const { manager } = setup(t);
      const session = newSession();
      await manager.onSessionCreated(session);
      await manager.onSessionLookup(session.key);
      assert.equal(await pttl(manager.redisKey(session.key)!), -1);
    });

    it('sets the ttl on creation and restarts it on every lookup', async (t) => {
      const ttl = 60_000;
      const { manager } = setup(t, { ttl });
      const session = newSession();
      await manager.onSessionCreated(session);
      const redisKey = manager.redisKey(session.key)!;
      const initial = await pttl(redisKey);
      assert.ok(initial > ttl - 5_000 && initial <= ttl, `PTTL after creation: ${initial}`);
      await redis.sendCommand(['PEXPIRE', redisKey, '5000']);
      assert.ok(await manager.onSessionLookup(session.key));
      const refreshed = await pttl(redisKey);
      assert.ok(refreshed > ttl - 5_000 && refreshed <= ttl, `PTTL after lookup: ${refreshed}`);
    });

    it('lets Redis expire the session', async (t) => {
      const { manager } = setup(t, { ttl: 50 });
      const session = newSession();
      await manager.onSessionCreated(session);
      const deadline = Date.now() + 2_000;
      while (
        Date.now() < deadline &&
        Number(await redis.sendCommand(['EXISTS', manager.redisKey(session.key)!])) === 1
      ) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      assert.equal(await manager.onSessionLookup(session.key), null);
    });
  });

  describe('RedisSessionManager: several processes', () => {
    it('two instances over two clients see each other’s sessions, lookups and closes', async (t) => {
      const prefix = uniquePrefix();
      const a = setup(t, { prefix }).manager;
      const b = setup(t, { prefix }, otherRedis).manager;
      const session: Session = { ...newSession({ from: 'a' }), lastLookup: new Date(Date.now() - 60_000) };
      await a.onSessionCreated(session);

      const seenByB = await b.onSessionLookup(session.key);
      assert.deepEqual(seenByB?.info, { from: 'a' });
      assert.ok(seenByB.lastLookup > session.lastLookup);
      const seenByA = await a.onSessionLookup(session.key);
      assert.ok(seenByA && seenByA.lastLookup >= seenByB.lastLookup, 'A sees B’s lookup time or later');

      await b.onSessionClosed(session.key);
      assert.equal(await a.onSessionLookup(session.key), null);
    });

    it('updates l atomically: 50 concurrent lookups through both clients all succeed, l ends at the max', async (t) => {
      const prefix = uniquePrefix();
      const managers = [
        setup(t, { prefix, ttl: 60_000 }).manager,
        setup(t, { prefix, ttl: 60_000 }, otherRedis).manager,
      ];
      const session = newSession({ n: 1 });
      await managers[0]!.onSessionCreated(session);
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => managers[i % 2]!.onSessionLookup(session.key)),
      );
      assert.ok(
        results.every((r) => r?.key === session.key && r.info?.n === 1),
        'all 50 lookups found it',
      );
      const max = Math.max(...results.map((r) => r!.lastLookup.getTime()));
      const stored = await hgetall(managers[0]!.redisKey(session.key)!);
      assert.equal(stored.l, new Date(max).toISOString());
      assert.deepEqual(Object.keys(stored).sort(), ['c', 'i', 'k', 'l'], 'no field lost');
    });

    it('never moves l backwards when a process’s clock is behind', async (t) => {
      const { manager } = setup(t);
      const session = newSession();
      await manager.onSessionCreated(session);
      const ahead = formatSessionTime(new Date(Date.now() + 3_600_000));
      await redis.sendCommand(['HSET', manager.redisKey(session.key)!, 'l', ahead]);
      assert.equal((await manager.onSessionLookup(session.key))?.lastLookup.toISOString(), ahead);
      assert.equal((await hgetall(manager.redisKey(session.key)!)).l, ahead);
    });
  });

  describe('RedisSessionManager: clients and failures', () => {
    it('works with a client that returns Buffers', async (t) => {
      const toBuffers = (value: unknown): unknown =>
        typeof value === 'string' ? Buffer.from(value) : Array.isArray(value) ? value.map(toBuffers) : value;
      const client: RedisCommandClient = { sendCommand: async (args) => toBuffers(await redis.sendCommand(args)) };
      const { manager } = setup(t, {}, client);
      const session = newSession({ text: 'ключ 🔑' });
      await manager.onSessionCreated(session);
      assert.deepEqual((await manager.onSessionLookup(session.key))?.info, { text: 'ключ 🔑' });
    });

    it('falls back to EVAL when Redis does not have the script, then uses EVALSHA', async (t) => {
      const commands: string[] = [];
      const client: RedisCommandClient = {
        sendCommand: (args) => {
          commands.push(args[0]!);
          return redis.sendCommand(args);
        },
      };
      const { manager } = setup(t, {}, client);
      const session = newSession();
      await manager.onSessionCreated(session);
      await redis.sendCommand(['SCRIPT', 'FLUSH']);
      commands.length = 0;
      assert.ok(await manager.onSessionLookup(session.key));
      assert.ok(await manager.onSessionLookup(session.key));
      assert.deepEqual(commands, ['EVALSHA', 'EVAL', 'EVALSHA']);
    });

    it('treats a corrupt hash as no session and logs it by Redis key only', async (t) => {
      const { manager, logger } = setup(t);
      const now = formatSessionTime(new Date());
      const cases: [string, string[]][] = [
        ['bad time', ['c', 'yesterday', 'l', now]],
        ['bad info', ['c', now, 'l', now, 'i', '{not json']],
        ['info not an object', ['c', now, 'l', now, 'i', '[1]']],
        ['no l', ['c', now]],
        ['another key', ['c', now, 'l', now, 'k', defaultKeyGenerator.generate()]],
      ];
      for (const [label, fields] of cases) {
        const key = defaultKeyGenerator.generate();
        const redisKey = manager.redisKey(key)!;
        await redis.sendCommand(['HSET', redisKey, 'k', key, ...fields]);
        const before = logger.entries.length;
        assert.equal(await manager.onSessionLookup(key), null, label);
        assert.equal(logger.entries[before]?.level, 'error', label);
        assert.equal(logger.entries[before]?.context?.key, redisKey, label);
        assert.ok(
          !JSON.stringify(logger.entries[before], (_, v) => (v instanceof Error ? v.message : v)).includes(key),
        );
      }
    });

    it('rejects on store failures (not "not found")', async (t) => {
      const { manager } = setup(t);
      const key = defaultKeyGenerator.generate();
      await redis.sendCommand(['SET', manager.redisKey(key)!, 'a string, not a hash']);
      await assert.rejects(manager.onSessionLookup(key), /WRONGTYPE/);
      const failing: RedisCommandClient = { sendCommand: () => Promise.reject(new Error('connection lost')) };
      const broken = new RedisSessionManager({ client: failing });
      await assert.rejects(broken.onSessionCreated(newSession()), /connection lost/);
      await assert.rejects(broken.onSessionLookup(defaultKeyGenerator.generate()), /connection lost/);
      await assert.rejects(broken.onSessionClosed(defaultKeyGenerator.generate()), /connection lost/);
    });

    it('never sends a key no session can have', async () => {
      const sent: string[][] = [];
      const manager = new RedisSessionManager({
        client: {
          sendCommand: async (args) => {
            sent.push(args);
            return null;
          },
        },
      });
      assert.equal(await manager.onSessionLookup('\ud800'), null);
      await manager.onSessionClosed('\ud800');
      await assert.rejects(manager.onSessionCreated(newSession(undefined, '')), InvalidArgumentError);
      assert.deepEqual(sent, []);
    });

    it('validates its options', () => {
      const client: RedisCommandClient = { sendCommand: async () => null };
      const bad: unknown[] = [
        undefined,
        {},
        { client: {} },
        { client: { sendCommand: 1 } },
        { client, prefix: 1 },
        { client, ttl: 0 },
        { client, ttl: 1.5 },
        { client, ttl: '1000' },
        { client, presenceTtl: 0 },
        { client, presenceTtl: 299 },
        { client, presenceTtl: 1.5 },
      ];
      for (const options of bad) {
        assert.throws(() => new RedisSessionManager(options as RedisSessionManagerOptions), InvalidArgumentError);
      }
    });
  });
}
