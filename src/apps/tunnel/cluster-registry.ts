/**
 * Which proxies of a cluster have agents for which client id, in Redis, so that a request reaching
 * one proxy can be served through an agent connected to another.
 *
 * One hash per client id, `prefix + 'agents:' + id` (client ids are letters, digits and `_ . -`:
 * nothing in one can reach outside the prefix), with two fields per proxy process:
 * `"<random instance id> <advertised URL>"` = `"<agents> <expiry, ms on the Redis clock>"`, and
 * `"<random instance id>/healthy"` = `"<healthy agents> <expiry>"` (those of its usable agents
 * whose target passes its health checks). The presence pattern of `RedisSessionManager`
 * (src/session/redis-store.ts). A proxy writes its own fields with each agent that comes, goes,
 * drains or changes health, and renews every field it holds every third of `ttl`; a field past
 * its expiry is a proxy that died (or lost Redis): it is ignored and deleted by the next script
 * that meets it, so nothing is routed to that proxy for longer than `ttl`. TIME is Redis's clock,
 * the same for every proxy whatever their own clocks say.
 *
 * The health count is a field of its own, not a third number in the first one, so that proxies
 * of either version share a registry during a rolling upgrade: an older proxy reads the `/healthy`
 * field as one of a proxy without an address (no space in its name) and skips it, where a longer
 * value would fail its pattern and be deleted; a newer proxy takes a proxy without a `/healthy`
 * field (an older one) as having only healthy agents, which is all an older proxy knows.
 *
 * Every script touches exactly one key (Redis Cluster routes a script by its keys), and writes
 * are Lua scripts rather than MULTI/EXEC, which through a shared pipelined connection would take
 * other callers' commands into the transaction.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../../index.ts';
import {
  evalScript,
  LUA_NOW,
  type RedisCommandClient,
  type RedisScript,
  redisScript,
} from '../../util/redis-script.ts';

export type { RedisCommandClient } from '../../util/redis-script.ts';

/** The name of a proxy's health field: its instance id (no space, no `/`) and this. */
export const HEALTH_FIELD_SUFFIX = '/healthy';

/**
 * KEYS[1] the id's hash; ARGV this proxy's field, its agents for the id, ttl (ms), its healthy
 * agents, its health field. Writes (or, with 0 agents, deletes) both fields, deletes expired
 * fields of others, and returns the agents of live proxies. The key's own expiry is only ever
 * pushed later (other proxies may use a longer ttl), so Redis drops the hash of an id nobody
 * renews.
 */
const REGISTER_SCRIPT = `
${LUA_NOW}
local ttl = tonumber(ARGV[3])
local own = tonumber(ARGV[2])
if own > 0 then
  local expires = now + ttl
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %.0f', own, expires),
    ARGV[5], string.format('%d %.0f', tonumber(ARGV[4]), expires))
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
else
  redis.call('HDEL', KEYS[1], ARGV[1], ARGV[5])
end
local total = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local count, expires = string.match(redis.call('HGET', KEYS[1], f) or '', '^(%d+) (%d+)$')
  if count == nil or tonumber(expires) <= now then
    redis.call('HDEL', KEYS[1], f)
  elseif string.find(f, ' ', 1, true) then
    total = total + tonumber(count)
  end
end
return total
`;

/**
 * KEYS[1] the id's hash; ARGV this proxy's field. Returns `{field, agents, healthy agents, ...}`
 * of the other live proxies (healthy = agents for a proxy without a health field: one from before
 * health was shared); expired fields are deleted on the way.
 */
const LOOKUP_SCRIPT = `
${LUA_NOW}
local live = {}
local proxies = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local count, expires = string.match(redis.call('HGET', KEYS[1], f) or '', '^(%d+) (%d+)$')
  if count == nil or tonumber(expires) <= now then
    redis.call('HDEL', KEYS[1], f)
  else
    live[f] = count
    if f ~= ARGV[1] and string.find(f, ' ', 1, true) then proxies[#proxies + 1] = f end
  end
end
local out = {}
for _, f in ipairs(proxies) do
  local instance = string.match(f, '^(%S+) ')
  out[#out + 1] = f
  out[#out + 1] = live[f]
  out[#out + 1] = live[instance .. '${HEALTH_FIELD_SUFFIX}'] or live[f]
end
return out
`;

const REGISTER = redisScript(REGISTER_SCRIPT);
const LOOKUP = redisScript(LOOKUP_SCRIPT);

/** How long a non-empty lookup answer is used again, at most (ms). */
export const LOOKUP_CACHE_TIME = 1_000;
/**
 * How long a lookup waits for Redis (ms): a Redis that does not answer (a partition, a client
 * queueing commands while it reconnects) gets users a prompt 503 `CLUSTER_UNAVAILABLE`, not a
 * 504 at their deadline.
 */
export const LOOKUP_TIMEOUT = 2_000;
/**
 * How long `close()` waits for Redis, at most (ms): a Redis that does not answer (a partition, or
 * a client queueing commands while it reconnects) must not keep a draining proxy from stopping,
 * and the fields it could not delete expire within the ttl anyway.
 */
export const REGISTRY_CLOSE_TIMEOUT = 2_000;
/** Past this many ids, expired answers are swept before another is kept. */
const MAX_CACHED_LOOKUPS = 10_000;

interface CachedLookup {
  readonly peers: Promise<PeerProxy[]>;
  /** Until when the answer is used again; undefined while the lookup is in flight. */
  until: number | undefined;
  /** No live peer: used again only by a lookup that accepts that (see `lookup`). */
  empty: boolean;
}

/** A live proxy of the cluster that has agents for an id. */
export interface PeerProxy {
  /** Its advertised URL (origin), where the other proxies reach it. */
  readonly url: string;
  /** Its agents for the id. */
  readonly agents: number;
  /** Those of them whose target passes its health checks (all, for a proxy that does not say). */
  readonly healthy: number;
}

/** A proxy's agents for an id: those able to take requests, and the healthy ones among them. */
export interface AgentCounts {
  readonly usable: number;
  readonly healthy: number;
}

export interface ClusterRegistryOptions {
  readonly client: RedisCommandClient;
  readonly prefix: string;
  /** This proxy's advertised origin. */
  readonly advertise: string;
  /** Milliseconds a field stays valid without renewal. */
  readonly ttl: number;
  readonly logger: Logger;
  /** Called with every failed Redis command (for the metrics). */
  readonly onError?: (error: unknown) => void;
}

export class ClusterRegistry {
  /** This process's field: a random instance id, so a restarted proxy at the same address is another field. */
  readonly field: string;
  /** This process's health field (see {@link HEALTH_FIELD_SUFFIX}). */
  readonly healthField: string;
  private readonly options: ClusterRegistryOptions;
  /** Agents of this proxy per id: the truth the fields are written from. */
  private readonly counts = new Map<string, AgentCounts>();
  /** Ids whose field must be written again (a change since the last write). */
  private readonly dirty = new Set<string>();
  private flushing: Promise<void> | undefined;
  /** Lookups in flight (`until` undefined) and recent answers, by id. */
  private readonly lookups = new Map<string, CachedLookup>();
  private renewTimer: ReturnType<typeof setInterval> | undefined;
  private closed = false;
  /** The last Redis failure, cleared by the next success: what /readyz and the status page show. */
  lastError: unknown;

  constructor(options: ClusterRegistryOptions) {
    this.options = options;
    const instance = randomBytes(9).toString('base64url');
    this.field = `${instance} ${options.advertise}`;
    this.healthField = `${instance}${HEALTH_FIELD_SUFFIX}`;
  }

  key(id: string): string {
    return `${this.options.prefix}agents:${id}`;
  }

  /** Starts renewing (every third of the ttl). */
  start(): void {
    if (this.renewTimer !== undefined || this.closed) return;
    this.renewTimer = setInterval(
      () => {
        for (const id of this.counts.keys()) this.dirty.add(id);
        void this.flush();
      },
      Math.max(1, Math.floor(this.options.ttl / 3)),
    );
    this.renewTimer.unref();
  }

  /**
   * This proxy now has `usable` agents for `id` able to take requests, `healthy` of them with a
   * healthy target; written to Redis at once (in order) when that changed.
   */
  set(id: string, usable: number, healthy = usable): void {
    if (this.closed) return;
    if (usable > 0) {
      const known = this.counts.get(id);
      if (known !== undefined && known.usable === usable && known.healthy === healthy) return;
      this.counts.set(id, { usable, healthy: Math.min(healthy, usable) });
    } else if (!this.counts.delete(id)) return;
    this.dirty.add(id);
    void this.flush();
  }

  /** Resolves once every change made so far is written (or failed). */
  async settled(): Promise<void> {
    while (this.flushing !== undefined) await this.flushing;
  }

  /**
   * Writes dirty ids one flush at a time, so that a later count never lands before an earlier one
   * (EVALSHA's fallback to EVAL could reorder two writes sent together).
   */
  private flush(): Promise<void> {
    if (this.flushing !== undefined) return this.flushing;
    if (this.dirty.size === 0) return Promise.resolve();
    // Cleared from a later tick: an async function that finished synchronously would clear it
    // before it is even set, leaving a settled promise behind that no later change would pass.
    const flushing = this.writeDirty().finally(() => {
      if (this.flushing === flushing) this.flushing = undefined;
    });
    this.flushing = flushing;
    return flushing;
  }

  private async writeDirty(): Promise<void> {
    while (this.dirty.size > 0) {
      const ids = [...this.dirty];
      this.dirty.clear();
      await Promise.all(ids.map((id) => this.write(id, this.counts.get(id))));
    }
  }

  private async write(id: string, counts: AgentCounts | undefined): Promise<void> {
    try {
      await this.eval(REGISTER, this.key(id), [
        this.field,
        String(counts?.usable ?? 0),
        String(this.options.ttl),
        String(counts?.healthy ?? 0),
        this.healthField,
      ]);
    } catch (error) {
      this.failed(error);
      this.options.logger.error('cluster registry: failed to write this proxy’s agents', { id, error });
    }
  }

  /**
   * The other live proxies with agents for `id`. Rejects when Redis fails.
   *
   * One Redis call serves every lookup of an id made while it is in flight, and a non-empty answer
   * serves those of the next `LOOKUP_CACHE_TIME` ms (a third of the ttl when that is shorter):
   * without it, each request forwarded for an id costs a script in Redis, thousands a second on a
   * busy proxy. An answer that went stale is harmless: a peer that lost its agents answers that it
   * has none, and one that died cannot be reached; either way the next peer is tried. An empty
   * answer is used again only with `emptyToo` (a proxy that has an agent of its own to fall back
   * on, an unhealthy one): otherwise an agent that has just connected elsewhere is found at once.
   */
  lookup(id: string, emptyToo = false): Promise<PeerProxy[]> {
    const now = performance.now();
    const known = this.lookups.get(id);
    if (known !== undefined && (known.until === undefined || (now < known.until && (emptyToo || !known.empty))))
      return known.peers;
    if (this.lookups.size >= MAX_CACHED_LOOKUPS) {
      for (const [cachedId, entry] of this.lookups)
        if (entry.until !== undefined && now >= entry.until) this.lookups.delete(cachedId);
    }
    const entry: CachedLookup = { peers: this.ask(id), until: undefined, empty: false };
    this.lookups.set(id, entry);
    entry.peers.then(
      (peers) => {
        if (this.lookups.get(id) !== entry) return;
        entry.empty = peers.length === 0;
        entry.until = performance.now() + Math.min(LOOKUP_CACHE_TIME, this.options.ttl / 3);
      },
      () => {
        if (this.lookups.get(id) === entry) this.lookups.delete(id);
      },
    );
    return entry.peers;
  }

  private async ask(id: string): Promise<PeerProxy[]> {
    let reply: unknown;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      reply = await Promise.race([
        this.eval(LOOKUP, this.key(id), [this.field]),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`the cluster registry did not answer within ${LOOKUP_TIMEOUT} ms`)),
            LOOKUP_TIMEOUT,
          );
        }),
      ]);
    } catch (error) {
      this.failed(error);
      throw error;
    } finally {
      clearTimeout(timer);
    }
    const out: PeerProxy[] = [];
    if (!Array.isArray(reply)) return out;
    const own = this.options.advertise;
    for (let i = 0; i + 2 < reply.length; i += 3) {
      const field = text(reply[i]);
      const agents = Number(text(reply[i + 1]));
      const healthy = Number(text(reply[i + 2]));
      const space = field?.indexOf(' ') ?? -1;
      if (field === undefined || space < 0 || !(agents > 0)) continue;
      const url = field.slice(space + 1);
      // Never itself: a stale field of an earlier process at this same address included.
      if (url !== own) out.push({ url, agents, healthy: healthy >= 0 ? Math.min(healthy, agents) : agents });
    }
    return out;
  }

  /**
   * Stops renewing and deletes this proxy's fields (best effort: they expire anyway), waiting for
   * Redis {@link REGISTRY_CLOSE_TIMEOUT} at most.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    clearInterval(this.renewTimer);
    this.renewTimer = undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, REGISTRY_CLOSE_TIMEOUT);
    });
    try {
      await Promise.race([this.settled(), gaveUp]);
      this.closed = true;
      this.lookups.clear();
      const ids = [...this.counts.keys()];
      this.counts.clear();
      this.dirty.clear();
      await Promise.race([Promise.all(ids.map((id) => this.write(id, undefined))), gaveUp]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ids this proxy holds, with their agents. */
  held(): ReadonlyMap<string, AgentCounts> {
    return this.counts;
  }

  private failed(error: unknown): void {
    this.lastError = error;
    this.options.onError?.(error);
  }

  private async eval(s: RedisScript, key: string, args: string[]): Promise<unknown> {
    const reply = await evalScript(this.options.client, s, key, args);
    this.lastError = undefined;
    return reply;
  }
}

const decoder = new TextDecoder();

function text(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return String(value);
  if (value instanceof Uint8Array) return decoder.decode(value);
  return undefined;
}
