/**
 * The SessionManager contract (contract.ts) against every store: memory, files in a temporary
 * directory, and a real Redis (skipped with the reason when unreachable, failing in CI).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { silentLogger } from '../../src/logger.ts';
import { FileSessionManager } from '../../src/session/file-store.ts';
import { MemorySessionManager } from '../../src/session/memory-store.ts';
import { RedisSessionManager } from '../../src/session/redis-store.ts';
import { sessionManagerContract } from './contract.ts';
import { connectRedis, deletePrefix, redisUnreachable, uniquePrefix } from './redis.ts';

sessionManagerContract('MemorySessionManager', async () => ({
  manager: new MemorySessionManager(),
  versions: true,
  cleanup: async () => {},
}));

sessionManagerContract('MemorySessionManager with maxAge and maxSessions', async () => ({
  manager: new MemorySessionManager({ maxAge: 3_600_000, maxSessions: 10_000 }),
  versions: true,
  cleanup: async () => {},
}));

sessionManagerContract('FileSessionManager', async () => {
  const parent = await mkdtemp(join(tmpdir(), 'duplexwire-contract-'));
  const manager = new FileSessionManager({ dir: join(parent, 'sessions'), logger: silentLogger });
  return {
    manager,
    versions: true,
    cleanup: async () => {
      await manager.close();
      await rm(parent, { recursive: true, force: true });
    },
  };
});

sessionManagerContract('FileSessionManager with maxAge', async () => {
  const parent = await mkdtemp(join(tmpdir(), 'duplexwire-contract-'));
  const manager = new FileSessionManager({ dir: join(parent, 'sessions'), maxAge: 3_600_000, logger: silentLogger });
  return {
    manager,
    versions: true,
    cleanup: async () => {
      await manager.close();
      await rm(parent, { recursive: true, force: true });
    },
  };
});

const redis = await connectRedis();
if (redis instanceof Error) {
  redisUnreachable('RedisSessionManager: SessionManager contract', redis);
} else {
  after(() => redis.close());
  for (const ttl of [undefined, 3_600_000]) {
    sessionManagerContract(`RedisSessionManager${ttl === undefined ? '' : ' with ttl'}`, async () => {
      const prefix = uniquePrefix();
      const manager = new RedisSessionManager({
        client: redis,
        prefix,
        logger: silentLogger,
        ...(ttl === undefined ? {} : { ttl }),
      });
      return {
        manager,
        versions: true,
        cleanup: async () => {
          await manager.close();
          await deletePrefix(redis, prefix);
        },
      };
    });
  }
}
