/**
 * A server shutting down with sessions counted in a shared store: once `shutdown()` resolves, the
 * store holds none of its connections (the application may close its Redis connection next), and
 * a restore caught by the shutdown is answered or its connection closed, never left counted.
 * Over a real Redis (skipped with the reason when unreachable, failing in CI: test/session/redis.ts).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { utf8 } from '../../protocol/payload.ts';
import { Client } from '../../src/client/client.ts';
import { Server } from '../../src/server/server.ts';
import { RedisSessionManager } from '../../src/session/redis-store.ts';
import { wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { sessionApp } from '../fixtures/session-helpers.ts';
import { recordingLogger } from '../helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, type TestRedisClient, uniquePrefix } from '../session/redis.ts';

const connected = await connectRedis();
if (connected instanceof Error) {
  redisUnreachable('sessions and shutdown over Redis', connected);
} else {
  const redis: TestRedisClient = connected;
  after(() => redis.quit());

  /** The p:<process> fields of a session's hash. */
  async function presence(redisKey: string): Promise<string[]> {
    const reply = (await redis.sendCommand(['HKEYS', redisKey])) as string[];
    return reply.filter((field) => field.startsWith('p:'));
  }

  describe('sessions and shutdown over Redis', () => {
    it('once shutdown() resolves, none of its connections is counted in Redis any more', async (t) => {
      const prefix = uniquePrefix();
      t.after(() => deletePrefix(redis, prefix));
      // The server's own Redis connection, closed by the application right after the shutdown.
      const own = redis.duplicate();
      own.on('error', () => {});
      await own.connect();
      const manager = new RedisSessionManager({ client: own, prefix, presenceTtl: 60_000 });
      const logger = recordingLogger();
      const server = new Server({
        transport: wsTransport({ host: '127.0.0.1', port: 0 }),
        logger,
        sessionManager: manager,
        onRequest: sessionApp,
      });
      await server.listen();
      t.after(() => server.shutdown({ timeout: 200 }));
      t.after(() => own.quit().catch(() => {}));
      const url = `ws://127.0.0.1:${server.address()!.port}/`;
      const clients: Client[] = [];
      t.after(() => Promise.all(clients.map((c) => c.close())));
      for (let i = 0; i < 4; i++) {
        const c = new Client(url, { transport: wsClientTransport(), reconnect: false, logger: recordingLogger() });
        clients.push(c);
        await c.connect();
      }
      const session = await clients[0]!.request('login', utf8('ada')).then(() => clients[0]!.session!);
      for (const c of clients.slice(1)) await c.restoreSession(session.key);
      const redisKey = manager.redisKey(session.key)!;
      assert.equal((await presence(redisKey)).length, 1, 'counted');

      await server.shutdown({ timeout: 200 });
      await own.quit();
      assert.deepEqual(await presence(redisKey), [], 'nothing counted once the server is down');
      assert.deepEqual(
        logger.entries.filter((e) => e.level === 'error').map((e) => e.message),
        [],
      );
    });
  });
}
