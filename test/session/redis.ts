/**
 * Redis for the session tests: a real server at REDIS_URL (default redis://127.0.0.1:6379).
 *
 * When it cannot be reached, the Redis tests are skipped with the reason, except in CI
 * (CI=true), where they fail: there they must run.
 */
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { createClient } from 'redis';

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const IN_CI = process.env.CI === 'true';
/** Connection attempts give up after this long (refused connections fail at once). */
const CONNECT_TIMEOUT = 2_000;

function newClient() {
  return createClient({ url: REDIS_URL, socket: { connectTimeout: CONNECT_TIMEOUT, reconnectStrategy: false } });
}

export type TestRedisClient = ReturnType<typeof newClient>;

/** A connected client, or the reason there is none. */
export async function connectRedis(): Promise<TestRedisClient | Error> {
  const client = newClient();
  // Without a listener, a socket error would be an uncaught 'error' event.
  let lastError: Error | undefined;
  client.on('error', (error: Error) => {
    lastError = error;
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.connect(),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no connection within ${CONNECT_TIMEOUT + 500} ms`)),
          CONNECT_TIMEOUT + 500,
        );
      }),
    ]);
    return client;
  } catch (error) {
    client.destroy();
    const reason = error instanceof Error ? error : (lastError ?? new Error(String(error)));
    return reason.message
      ? reason
      : new Error(`${reason.name} (${(reason as NodeJS.ErrnoException).code ?? 'no code'})`);
  } finally {
    clearTimeout(timer);
  }
}

/** Declares what happens to the Redis tests of `name` when Redis is unreachable. */
export function redisUnreachable(name: string, error: Error): void {
  const reason = `Redis unreachable at ${REDIS_URL}: ${error.message}`;
  if (IN_CI) {
    test(name, () => {
      throw new Error(`${reason} (CI=true: the Redis tests must run)`, { cause: error });
    });
  } else {
    test(name, { skip: reason }, () => {});
  }
}

/** A fresh prefix per store, so runs (and parallel test files) never see each other's keys. */
export function uniquePrefix(): string {
  return `duplexwire:test:${randomBytes(8).toString('hex')}:`;
}

/** Every key under `prefix` (SCAN, bounded). The prefix is hex and colons: no glob characters. */
export async function keysWithPrefix(client: TestRedisClient, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  for (let i = 0; i < 10_000; i++) {
    const [next, batch] = (await client.sendCommand(['SCAN', cursor, 'MATCH', `${prefix}*`, 'COUNT', '1000'])) as [
      string,
      string[],
    ];
    keys.push(...batch);
    cursor = next;
    if (cursor === '0') return keys;
  }
  throw new Error('SCAN did not finish');
}

/** Deletes every key under `prefix`. */
export async function deletePrefix(client: TestRedisClient, prefix: string): Promise<void> {
  const keys = await keysWithPrefix(client, prefix);
  for (let i = 0; i < keys.length; i += 500) await client.sendCommand(['DEL', ...keys.slice(i, i + 500)]);
}
