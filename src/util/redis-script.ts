/**
 * Lua scripts over a raw Redis command client, shared by the Redis stores of duplexwire (sessions,
 * the tunnel's cluster registry). No Redis package is imported: applications pass the client they
 * already have.
 */
import { createHash } from 'node:crypto';

/** Anything that can send a raw Redis command: node-redis v4+ `client` as is ({ sendCommand(args) }), or ioredis via `{ sendCommand: (args) => ioredis.call(args[0], ...args.slice(1)) }`. */
export interface RedisCommandClient {
  sendCommand(args: string[]): Promise<unknown>;
}

/** A Lua script and its SHA-1, for EVALSHA. */
export interface RedisScript {
  readonly source: string;
  readonly sha: string;
}

export function redisScript(source: string): RedisScript {
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

/**
 * Lua that sets `now` to Redis's clock in milliseconds: the same clock for every process, whatever
 * their own say. Scripts may write after reading it (Redis >= 5 replicates their effects).
 */
export const LUA_NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/**
 * Runs `script` on the one key `key` (Redis Cluster routes a script by its keys): EVALSHA, falling
 * back to EVAL (which also caches the script) when Redis does not know it yet.
 */
export async function evalScript(
  client: RedisCommandClient,
  script: RedisScript,
  key: string,
  args: readonly string[],
): Promise<unknown> {
  try {
    return await client.sendCommand(['EVALSHA', script.sha, '1', key, ...args]);
  } catch (error) {
    if (!String((error as Error | null)?.message).startsWith('NOSCRIPT')) throw error;
    return client.sendCommand(['EVAL', script.source, '1', key, ...args]);
  }
}
