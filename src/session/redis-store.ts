/**
 * Sessions in Redis, shared by any number of server processes. No Redis package is imported: the
 * store sends raw commands through whatever client the application already has.
 *
 * Each session is a hash at `prefix + sha256(key)` (the key itself is never part of a Redis key:
 * a listing of keys reveals no session key, and no key can reach outside the prefix) with fields
 * `k` (key), `c` (creation), `l` (last lookup), both RFC 3339 as in the JSON form, `i`: the
 * info as its own JSON text, absent when there is none, and `v`: the session's version
 * (`Session.version`), absent until the first update (0), incremented by the update script. Info never goes through Lua's cjson,
 * which would rewrite it (`{}` and `[]` both become `{}`, big integers lose digits).
 *
 * Writes are Lua scripts, each a single atomic command. Not MULTI/EXEC: through a shared,
 * pipelined connection, other callers' commands sent between MULTI and EXEC would become part of
 * the transaction.
 *
 * Connections holding a session are counted in the same hash, one field per process (per
 * manager): `p:<instance>` = `"<connections> <expiry, ms on the Redis clock>"` (`instanceId`,
 * random by default). A process writes
 * its own count with each attach and detach and renews it every third of `presenceTtl`; a field
 * past its expiry is a process that died (or lost Redis) and counts for nothing, so neither the
 * limit nor "delete when the last connection closes the session" is held up by it for longer.
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from '../errors.ts';
import { consoleLogger, type Logger } from '../logger.ts';
import { evalScript, LUA_NOW, type RedisCommandClient, type RedisScript, redisScript } from '../util/redis-script.ts';
import { checkInteger } from '../util/validate.ts';
import { KeyedQueue } from './keyed-queue.ts';
import { sessionKeyHash } from './key-hash.ts';
import {
  checkSessionInfo,
  formatSessionTime,
  type Session,
  type SessionAttachResult,
  type SessionManager,
  sessionFromJsonValue,
  sessionToJsonValue,
} from './session.ts';

export type { RedisCommandClient } from '../util/redis-script.ts';

/** Prefix of the Redis keys of sessions. @default 'duplexwire:session:' */
export const DEFAULT_REDIS_PREFIX = 'duplexwire:session:';

export interface RedisSessionManagerOptions {
  /**
   * Sends commands. node-redis: the client itself. ioredis:
   * `{ sendCommand: (args) => redis.call(args[0]!, ...args.slice(1)) }`. Cluster clients work
   * when wrapped the same way, since every command touches exactly one key: `args[1]` for `DEL`,
   * `args[3]` for `EVALSHA`/`EVAL` (node-redis:
   * `{ sendCommand: (args) => cluster.sendCommand(args[0] === 'DEL' ? args[1] : args[3], false, args) }`).
   */
  readonly client: RedisCommandClient;
  /** Prepended to the SHA-256 hex of each key. @default DEFAULT_REDIS_PREFIX ('duplexwire:session:') */
  readonly prefix?: string;
  /**
   * Milliseconds a session lives after its creation or its last lookup (sliding: every lookup
   * restarts it); Redis deletes it when it runs out.
   * @default undefined (sessions live until closed)
   */
  readonly ttl?: number;
  /** Where corrupt session hashes, and failures to renew this process's counts, are reported. @default consoleLogger */
  readonly logger?: Logger;
  /**
   * Milliseconds this process's count of a session's connections stays valid in Redis without
   * being renewed (it is renewed every third of this): how long the connections of a process that
   * died still count towards `maxSessionConnections` and keep a closed session from being deleted.
   * @default 30000
   */
  readonly presenceTtl?: number;
  /**
   * This process's name in the session hashes (`p:<instanceId>`): a name that outlives the
   * process, such as a pod name or `host:port`, lets a process restarted in place take over the
   * counts it left behind as soon as its clients restore their sessions, instead of waiting for
   * them to expire (`presenceTtl`). Must be unique among the live processes sharing the store: two
   * with one name would overwrite each other's counts. 1..128 of A-Z a-z 0-9 . _ : -
   * @default a random name per manager
   */
  readonly instanceId?: string;
}

const INSTANCE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** @see RedisSessionManagerOptions.presenceTtl */
export const DEFAULT_PRESENCE_TTL = 30_000;

/**
 * KEYS[1] session hash; ARGV k, c, l, ttl ('' for none), [i]. DEL first: a stale `i` must not
 * survive a (theoretical) re-creation under the same key.
 */
const CREATE_SCRIPT = `
redis.call('DEL', KEYS[1])
if ARGV[5] then
  redis.call('HSET', KEYS[1], 'k', ARGV[1], 'c', ARGV[2], 'l', ARGV[3], 'i', ARGV[5])
else
  redis.call('HSET', KEYS[1], 'k', ARGV[1], 'c', ARGV[2], 'l', ARGV[3])
end
if ARGV[4] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
`;

/**
 * KEYS[1] session hash; ARGV now (RFC 3339, 24 characters), ttl ('' for none). Returns nil, or
 * {k, c, l, i, v} after moving l to now unless it is later already: with several processes and their
 * clocks, lastLookup never goes backwards. A malformed l is left alone (the session is reported
 * as corrupt and treated as absent, as the file store does). Times are compared as numbers (YYYYMMDD, HHMMSSmmm:
 * both below 2^53), because Lua compares strings with strcoll, in the Redis server's locale.
 */
const LOOKUP_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local function parts(t)
  if type(t) ~= 'string' or #t ~= 24 then return nil, nil end
  return tonumber(t:sub(1, 4) .. t:sub(6, 7) .. t:sub(9, 10)),
    tonumber(t:sub(12, 13) .. t:sub(15, 16) .. t:sub(18, 19) .. t:sub(21, 23))
end
local v = redis.call('HMGET', KEYS[1], 'k', 'c', 'l', 'i', 'v')
local nd, nt = parts(ARGV[1])
local od, ot = parts(v[3])
if od ~= nil and ot ~= nil and (nd > od or (nd == od and nt > ot)) then
  redis.call('HSET', KEYS[1], 'l', ARGV[1])
  v[3] = ARGV[1]
end
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
`;

/**
 * KEYS[1] session hash; ARGV this process's field, its connections after the change, the limit
 * (0: none), presence TTL (ms), and '1' when a connection closing the session is counted off.
 * Returns -1 when the session does not exist, -2 when the limit would be passed (nothing
 * written), else the connections holding it across live processes once this process's count is
 * written; when that is 0 and the session was being closed, the session is deleted too. Other processes' expired fields are deleted on the way. Only
 * field names are read (HKEYS then HGET), not the session's info. TIME is Redis's clock, the same
 * for every process (scripts may write after it: Redis >= 5 replicates their effects).
 */
const PRESENCE_SCRIPT = `
if redis.call('HEXISTS', KEYS[1], 'k') == 0 then return -1 end
${LUA_NOW}
local others = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= ARGV[1] and string.sub(f, 1, 2) == 'p:' then
    local count, expires = string.match(redis.call('HGET', KEYS[1], f), '^(%d+) (%d+)$')
    if count == nil or tonumber(expires) <= now then
      redis.call('HDEL', KEYS[1], f)
    else
      others = others + tonumber(count)
    end
  end
end
local own = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
if limit > 0 and others + own > limit then return -2 end
if own > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %.0f', own, now + tonumber(ARGV[4])))
elseif others == 0 and ARGV[5] == '1' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return others + own
`;

/**
 * KEYS[1] session hash; ARGV [i]. Returns nil when there is no session (no `k`: a hash holding
 * only presence fields is none), else sets `i` (or deletes it without ARGV[1]), adds 1 to `v`
 * (the version: one script, so the order of versions is the order in which Redis ran the
 * updates) and returns {k, c, l, i, v}. Nothing else changes: `l`, the presence fields and the
 * expiry (HSET, HDEL and HINCRBY keep a key's TTL) stay as they are.
 */
const UPDATE_SCRIPT = `
if redis.call('HEXISTS', KEYS[1], 'k') == 0 then return false end
if ARGV[1] then
  redis.call('HSET', KEYS[1], 'i', ARGV[1])
else
  redis.call('HDEL', KEYS[1], 'i')
end
redis.call('HINCRBY', KEYS[1], 'v', 1)
return redis.call('HMGET', KEYS[1], 'k', 'c', 'l', 'i', 'v')
`;

const CREATE = redisScript(CREATE_SCRIPT);
const UPDATE = redisScript(UPDATE_SCRIPT);
const LOOKUP = redisScript(LOOKUP_SCRIPT);
const PRESENCE = redisScript(PRESENCE_SCRIPT);

const decoder = new TextDecoder('utf-8', { fatal: true });

/** A bulk-string reply as text: clients return strings, or Buffers when told to. */
function replyText(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return decoder.decode(value);
  return null;
}

/**
 * A `SessionManager` over Redis: atomic lookups (existence check, last-lookup update, TTL
 * refresh and read in one script), so any number of server processes can share the sessions.
 *
 * @example
 * import { createClient } from 'redis';
 * const client = await createClient({ url: 'redis://127.0.0.1:6379' }).connect();
 * const sessions = new RedisSessionManager({ client, ttl: 7 * 86_400_000 });
 */
export class RedisSessionManager implements SessionManager {
  readonly #client: RedisCommandClient;
  readonly #prefix: string;
  readonly #ttl: string;
  readonly #logger: Logger;
  readonly #presenceTtl: number;
  /** This process's field in each session hash it holds. */
  readonly #presenceField: string;
  /** This process's connections per session key: the truth its Redis fields are renewed from. */
  readonly #held = new Map<string, number>();
  #renewTimer: ReturnType<typeof setInterval> | undefined;
  #renewing = false;
  /** Presence writes, one at a time per session (see `#presence`). */
  readonly #presenceQueue = new KeyedQueue();

  constructor(options: RedisSessionManagerOptions) {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('options must be an object');
    const { client, prefix, ttl, logger, presenceTtl, instanceId } = options;
    if (client === null || typeof client !== 'object' || typeof client.sendCommand !== 'function') {
      throw new InvalidArgumentError('option client must have a sendCommand(args) method');
    }
    if (prefix !== undefined && typeof prefix !== 'string')
      throw new InvalidArgumentError('option prefix must be a string');
    this.#client = client;
    this.#prefix = prefix ?? DEFAULT_REDIS_PREFIX;
    this.#ttl = ttl === undefined ? '' : String(checkInteger('ttl', ttl, 1, Number.MAX_SAFE_INTEGER));
    this.#logger = logger ?? consoleLogger;
    this.#presenceTtl = checkInteger('presenceTtl', presenceTtl ?? DEFAULT_PRESENCE_TTL, 300, 86_400_000);
    if (instanceId !== undefined && (typeof instanceId !== 'string' || !INSTANCE_ID.test(instanceId))) {
      throw new InvalidArgumentError('option instanceId must be 1..128 of A-Z a-z 0-9 . _ : -');
    }
    this.#presenceField = `p:${instanceId ?? randomBytes(12).toString('base64url')}`;
  }

  /** The Redis key of a session key's hash: prefix + SHA-256 hex. Undefined for a key no session can have. */
  redisKey(key: string): string | undefined {
    const hash = sessionKeyHash(key);
    return hash === undefined ? undefined : this.#prefix + hash;
  }

  async onSessionCreated(session: Session): Promise<void> {
    const json = sessionToJsonValue(session); // validates the session, key included
    const args = [json.k, json.c, json.l, this.#ttl];
    if (json.i !== undefined) args.push(JSON.stringify(json.i));
    await this.#eval(CREATE, this.redisKey(session.key)!, args);
  }

  async onSessionLookup(key: string): Promise<Session | null> {
    const redisKey = this.redisKey(key);
    if (redisKey === undefined) return null;
    const now = formatSessionTime(new Date());
    return this.#session(key, redisKey, await this.#eval(LOOKUP, redisKey, [now, this.#ttl]));
  }

  /**
   * Replaces the session's info in one script (see UPDATE_SCRIPT): lastLookup, the expiry and
   * the connection counts are left alone.
   */
  async onSessionUpdate(key: string, info: Readonly<Record<string, unknown>> | undefined): Promise<Session | null> {
    checkSessionInfo(info);
    const redisKey = this.redisKey(key);
    if (redisKey === undefined) return null;
    // As on create: the info as its own JSON text, never through Lua's cjson.
    const args = info === undefined ? [] : [JSON.stringify(info)];
    return this.#session(key, redisKey, await this.#eval(UPDATE, redisKey, args));
  }

  /** The session in a script's {k, c, l, i, v} reply, or null (none, or corrupt: logged). */
  #session(key: string, redisKey: string, reply: unknown): Session | null {
    if (reply === null || reply === undefined) return null;
    try {
      if (!Array.isArray(reply) || reply.length !== 5)
        throw new InvalidArgumentError('unexpected reply to a session script');
      const [k, c, l, i, v] = reply.map(replyText);
      const session = sessionFromJsonValue({ k, c, l, i: i === null || i === undefined ? undefined : JSON.parse(i) });
      if (session.key !== key) throw new InvalidArgumentError('session key does not match the Redis key');
      // No `v`: never updated (or stored by a release without versions).
      const version = v === null || v === undefined ? 0 : /^\d{1,15}$/.test(v) ? Number(v) : undefined;
      if (version === undefined) throw new InvalidArgumentError('session version in Redis is not a count');
      return { ...session, version };
    } catch (error) {
      // Logged by Redis key only: the session key is a credential.
      this.#logger.error('ignoring a corrupt session in Redis', { key: redisKey, error });
      return null;
    }
  }

  async onSessionClosed(key: string): Promise<void> {
    const redisKey = this.redisKey(key);
    if (redisKey === undefined) return;
    await this.#client.sendCommand(['DEL', redisKey]);
  }

  /**
   * Counts a connection of this process on the session, atomically with the limit check across
   * every process (see `presenceTtl`).
   */
  async onSessionAttach(key: string, limit: number): Promise<SessionAttachResult> {
    const redisKey = this.redisKey(key);
    if (redisKey === undefined) return 'not-found';
    const count = this.#hold(key, 1);
    let reply: unknown;
    try {
      reply = await this.#presence(redisKey, count, limit);
    } catch (error) {
      this.#correct(key);
      throw error;
    }
    if (reply === -1 || reply === -2) {
      this.#correct(key);
      return reply === -1 ? 'not-found' : 'limit';
    }
    return 'attached';
  }

  /** Counts a connection of this process off the session; resolves with those left in all processes. */
  async onSessionDetach(key: string, closing = false): Promise<number> {
    const redisKey = this.redisKey(key);
    if (redisKey === undefined) return 0;
    const reply = await this.#presence(redisKey, this.#hold(key, -1), 0, closing);
    return typeof reply === 'number' && reply > 0 ? reply : 0;
  }

  /** Stops renewing this process's counts (they expire after `presenceTtl`). */
  async close(): Promise<void> {
    clearInterval(this.#renewTimer);
    this.#renewTimer = undefined;
  }

  /** Changes this process's count for `key` by `delta`; returns the new count. */
  #hold(key: string, delta: 1 | -1): number {
    const count = Math.max(0, (this.#held.get(key) ?? 0) + delta);
    if (count > 0) this.#held.set(key, count);
    else this.#held.delete(key);
    if (this.#held.size > 0 && this.#renewTimer === undefined) {
      this.#renewTimer = setInterval(() => void this.#renew(), Math.floor(this.#presenceTtl / 3));
      this.#renewTimer.unref();
    } else if (this.#held.size === 0 && this.#renewTimer !== undefined) {
      clearInterval(this.#renewTimer);
      this.#renewTimer = undefined;
    }
    return count;
  }

  /**
   * An attach that did not count (refused, or failed): takes it back locally and writes the
   * count again, since a later attach sent meanwhile may have written one that included it.
   */
  #correct(key: string): void {
    const count = this.#hold(key, -1);
    const redisKey = this.redisKey(key)!;
    this.#presence(redisKey, count, 0).catch((error: unknown) => {
      this.#logger.error('failed to correct a session connection count in Redis', { key: redisKey, error });
    });
  }

  /** Writes this process's count of every session it holds again, with a fresh expiry. */
  async #renew(): Promise<void> {
    if (this.#renewing) return;
    this.#renewing = true;
    let failure: unknown;
    try {
      await Promise.all(
        [...this.#held].map(([key, count]) =>
          this.#presence(this.redisKey(key)!, count, 0).catch((error: unknown) => {
            failure ??= error;
          }),
        ),
      );
    } finally {
      this.#renewing = false;
    }
    if (failure !== undefined) {
      this.#logger.error('failed to renew session connection counts in Redis', { error: failure });
    }
  }

  /**
   * Runs the presence script for one session after the ones before it for that session have
   * answered. Sent together, two writes could land out of order (an EVALSHA refused with NOSCRIPT
   * and resent as EVAL after a later one went through, once another process has loaded the
   * script meanwhile), and an older count would overwrite a newer one.
   */
  #presence(redisKey: string, count: number, limit: number, closing = false): Promise<unknown> {
    return this.#presenceQueue.run(redisKey, () => this.#presenceNow(redisKey, count, limit, closing));
  }

  #presenceNow(redisKey: string, count: number, limit: number, closing: boolean): Promise<unknown> {
    return this.#eval(PRESENCE, redisKey, [
      this.#presenceField,
      String(count),
      String(limit),
      String(this.#presenceTtl),
      closing ? '1' : '',
    ]);
  }

  #eval(s: RedisScript, key: string, args: string[]): Promise<unknown> {
    return evalScript(this.#client, s, key, args);
  }
}
