/**
 * Several tunnel proxies sharing their agents: the `cluster` option, the headers of a request one
 * proxy forwards to another, and how the receiving proxy recognises one.
 *
 * A cluster request is an ordinary HTTP/1.1 request to the peer's advertised address, signed with
 * the cluster secret (which never travels): an HMAC-SHA256 over the time, the peer it is meant
 * for, the method, the path and query, the client id and the deadline. The receiving proxy serves
 * it from its own agents only and never forwards it again: a request crosses at most one
 * proxy-to-proxy hop, so two proxies that each believe the other has the agent cannot bounce it
 * between them. Outside users cannot make one: the signature is compared in constant time, and
 * every `x-duplexwire-cluster-*` header of an ordinary request is dropped before anything else
 * looks at it.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { InvalidArgumentError } from '../../index.ts';
import { SeenSignatures } from '../shared/seen-signatures.ts';
import type { RedisCommandClient } from './cluster-registry.ts';
import { TunnelErrorCode } from './http-errors.ts';
import { ResponseSink, SocketSink } from './sinks.ts';
import { durationOption } from './timeout.ts';

export type { RedisCommandClient } from './cluster-registry.ts';

/**
 * The signature of a cluster request: `v1.<unix ms>.<nonce>.<HMAC-SHA256, base64url>`
 * (see {@link ResolvedCluster.sign}); never forwarded to an agent, never logged.
 */
export const CLUSTER_AUTH_HEADER = 'x-duplexwire-cluster-auth';
/** The client id the request is for (the forwarding proxy has already routed it). */
export const CLUSTER_ID_HEADER = 'x-duplexwire-cluster-id';
/** Milliseconds left until the response head is due. */
export const CLUSTER_TIMEOUT_HEADER = 'x-duplexwire-cluster-timeout';
/**
 * On the answer: the receiving proxy had no agent able to take it (no agent, all busy, shutting
 * down). The forwarding proxy may try another peer while no body byte was sent.
 */
export const CLUSTER_MISS_HEADER = 'x-duplexwire-cluster-miss';
/** Every header name of the cluster starts so; users' headers of that name are dropped. */
export const CLUSTER_HEADER_PREFIX = 'x-duplexwire-cluster-';

/** @default key prefix in Redis */
export const DEFAULT_CLUSTER_PREFIX = 'duplexwire:tunnel:';
/** @default 15 s: how long a proxy that died is still routed to, at most */
export const DEFAULT_CLUSTER_TTL = 15_000;
/** @default 3 s to connect to a peer proxy before trying another */
export const DEFAULT_PEER_CONNECT_TIMEOUT = 3_000;
/** Secrets carry at least 128 bits: 22 characters of base64url (`duplexwire tunnel token` makes one). */
export const MIN_CLUSTER_SECRET_LENGTH = 22;
/**
 * How far the time of a signed cluster request may be from the receiving proxy's clock, either
 * way (ms). The proxies' clocks must agree within it (NTP). A receiving proxy remembers the
 * signatures it accepted for this long, so none serves twice.
 */
export const CLUSTER_CLOCK_SKEW = 30_000;
/**
 * Signatures a proxy remembers at most (about 85 bytes of heap each, 17 MB in all). Past that, the oldest is forgotten
 * and every signature not newer than it is refused from then on: a replay never passes, and only
 * a proxy receiving more than about this many forwarded requests per {@link CLUSTER_CLOCK_SKEW}
 * refuses some that arrive later than newer ones. The cluster requests' body is not signed (it
 * streams), so without this memory a captured request could be sent again, with another body,
 * within the skew.
 */
export { MAX_REMEMBERED_SIGNATURES, SeenSignatures } from '../shared/seen-signatures.ts';

/** What the signature of a cluster request covers, besides its time. */
export interface ClusterRequestFacts {
  /** The origin of the proxy it is sent to (its `advertise`): a request signed for one peer is refused by the others. */
  readonly audience: string;
  readonly method: string;
  /** The request target as sent (path and query, byte for byte). */
  readonly target: string;
  readonly id: string;
  /** The deadline header's value. */
  readonly timeout: string;
}

export interface TunnelClusterOptions {
  /**
   * Sends raw Redis commands: a node-redis client as is, or ioredis wrapped as
   * `{ sendCommand: (args) => redis.call(args[0]!, ...args.slice(1)) }` (see `RedisSessionManager`;
   * every script touches one key, at `args[3]`, so cluster clients work wrapped the same way).
   */
  readonly client: RedisCommandClient;
  /**
   * This proxy's address as the other proxies reach it (an origin: `http://10.0.0.5:8080`). It
   * must serve the same listener as the users' requests (or one that calls `handleRequest` and
   * `handleUpgrade`), and should be private: the secret travels in a header.
   */
  readonly advertise: string;
  /** Shared by every proxy of the cluster, at least 22 characters: the key that signs their requests to each other (it never travels). */
  readonly secret: string;
  /** Prefix of the Redis keys. @default 'duplexwire:tunnel:' */
  readonly prefix?: string;
  /**
   * How long this proxy's entries stay valid without being renewed (they are renewed every third
   * of it): a proxy that died is routed to for at most this long. ms or '15s'. @default 15 s
   */
  readonly ttl?: number | string;
  /** Time to connect to a peer before trying the next one. ms or '3s'. @default 3 s */
  readonly connectTimeout?: number | string;
  /**
   * TLS for peers advertised at `https:` origins: `ca` to trust a private certificate authority
   * (PEM), `rejectUnauthorized: false` to skip verification (tests only). @default Node's defaults
   */
  readonly tls?: { readonly ca?: string | Buffer; readonly rejectUnauthorized?: boolean };
}

export interface ResolvedCluster {
  readonly client: RedisCommandClient;
  readonly advertise: string;
  readonly prefix: string;
  readonly ttl: number;
  readonly connectTimeout: number;
  /** TLS options for `https:` peers (only the ones given). */
  readonly tls: { readonly ca?: string | Buffer; readonly rejectUnauthorized?: boolean };
  /** The value of {@link CLUSTER_AUTH_HEADER} for a request with these facts, signed now, with a fresh nonce. */
  sign(facts: ClusterRequestFacts): string;
  /**
   * `'ok'` when `presented` signs these facts with the cluster secret (constant time), within the
   * clock skew, and was never accepted before (it is remembered from now on); `'replayed'` for a
   * good signature seen before; `'invalid'` otherwise.
   */
  verify(presented: string | undefined, facts: ClusterRequestFacts): 'ok' | 'invalid' | 'replayed';
}

/** 96 random bits per signature: two requests never share one, so a second use is a replay. */
const NONCE_BYTES = 12;
const SIGNATURE = /^v1\.(\d{1,15})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$/;

function mac(key: Buffer, time: string, nonce: string, facts: ClusterRequestFacts): Buffer {
  // Newline-separated: none of the fields can hold one (Node refuses them in paths and headers).
  return createHmac('sha256', key)
    .update(
      `v1\n${time}\n${nonce}\n${facts.audience}\n${facts.method}\n${facts.target}\n${facts.id}\n${facts.timeout}`,
      'utf8',
    )
    .digest();
}

/** Validates the `cluster` option; the result is frozen. */
export function resolveCluster(options: TunnelClusterOptions): ResolvedCluster {
  if (options === null || typeof options !== 'object')
    throw new InvalidArgumentError('option cluster must be an object');
  const { client, advertise, secret } = options;
  if (client === null || typeof client !== 'object' || typeof client.sendCommand !== 'function') {
    throw new InvalidArgumentError('option cluster.client must have a sendCommand(args) method');
  }
  let url: URL;
  try {
    url = new URL(advertise);
  } catch {
    throw new InvalidArgumentError('option cluster.advertise must be a URL such as http://10.0.0.5:8080');
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.pathname !== '/' || url.search || url.hash) {
    throw new InvalidArgumentError('option cluster.advertise must be an http(s) origin such as http://10.0.0.5:8080');
  }
  if (typeof secret !== 'string' || secret.length < MIN_CLUSTER_SECRET_LENGTH || !/^[\x21-\x7e]+$/.test(secret)) {
    throw new InvalidArgumentError(
      `option cluster.secret must have at least ${MIN_CLUSTER_SECRET_LENGTH} printable characters (128 bits)`,
    );
  }
  if (options.prefix !== undefined && typeof options.prefix !== 'string')
    throw new InvalidArgumentError('option cluster.prefix must be a string');
  const ttl = durationOption('cluster.ttl', options.ttl, DEFAULT_CLUSTER_TTL);
  if (!(ttl >= 300 && ttl <= 86_400_000)) throw new InvalidArgumentError('option cluster.ttl must be 300 ms..24 h');
  const connectTimeout = durationOption('cluster.connectTimeout', options.connectTimeout, DEFAULT_PEER_CONNECT_TIMEOUT);
  if (!(connectTimeout >= 1 && connectTimeout <= 600_000))
    throw new InvalidArgumentError('option cluster.connectTimeout must be 1 ms..10 min');
  const tls = options.tls;
  if (tls !== undefined && (tls === null || typeof tls !== 'object'))
    throw new InvalidArgumentError('option cluster.tls must be an object');
  if (tls?.ca !== undefined && typeof tls.ca !== 'string' && !Buffer.isBuffer(tls.ca))
    throw new InvalidArgumentError('option cluster.tls.ca must be a PEM string or Buffer');
  if (tls?.rejectUnauthorized !== undefined && typeof tls.rejectUnauthorized !== 'boolean')
    throw new InvalidArgumentError('option cluster.tls.rejectUnauthorized must be a boolean');
  // The key is a digest of the secret: any length of secret makes a full-size HMAC key.
  const key = createHash('sha256').update(secret, 'utf8').digest();
  const seen = new SeenSignatures(CLUSTER_CLOCK_SKEW);
  return Object.freeze({
    client,
    advertise: url.origin,
    prefix: options.prefix ?? DEFAULT_CLUSTER_PREFIX,
    ttl,
    connectTimeout,
    tls: Object.freeze({
      ...(tls?.ca === undefined ? {} : { ca: tls.ca }),
      ...(tls?.rejectUnauthorized === undefined ? {} : { rejectUnauthorized: tls.rejectUnauthorized }),
    }),
    sign(facts: ClusterRequestFacts): string {
      const time = String(Date.now());
      const nonce = randomBytes(NONCE_BYTES).toString('base64url');
      return `v1.${time}.${nonce}.${mac(key, time, nonce, facts).toString('base64url')}`;
    },
    verify(presented: string | undefined, facts: ClusterRequestFacts): 'ok' | 'invalid' | 'replayed' {
      const m = typeof presented === 'string' ? SIGNATURE.exec(presented) : null;
      const now = Date.now();
      const time = Number(m?.[1]);
      if (m === null || Math.abs(now - time) > CLUSTER_CLOCK_SKEW) return 'invalid';
      if (!timingSafeEqual(Buffer.from(m[3]!, 'base64url'), mac(key, m[1]!, m[2]!, facts))) return 'invalid';
      // Only after the MAC: strangers cannot fill the memory.
      return seen.add(m[2]!, time, now) ? 'ok' : 'replayed';
    },
  });
}

/** True for the proxy's own "nobody here can take it" answers, which another peer may not give. */
export function isMiss(code: TunnelErrorCode): boolean {
  return (
    code === TunnelErrorCode.NoAgent || code === TunnelErrorCode.AgentsBusy || code === TunnelErrorCode.ShuttingDown
  );
}

/**
 * The response of a cluster request: the proxy's misses are marked for the forwarding proxy, and
 * an agent's response cannot carry a cluster header (a target must not fake a miss).
 */
export class PeerResponseSink extends ResponseSink {
  override head(status: number, headers: readonly string[], closeConnection?: boolean): void {
    super.head(status, withoutClusterHeaders(headers), closeConnection);
  }

  protected override errorHeaders(code: TunnelErrorCode): readonly string[] {
    return missHeaders(code);
  }
}

/**
 * The raw socket of an upgrade from a peer: the proxy's misses are marked, as
 * {@link PeerResponseSink} marks them, so that the forwarding proxy tries its next peer.
 */
export class PeerSocketSink extends SocketSink {
  override head(status: number, headers: readonly string[], closeConnection?: boolean): void {
    super.head(status, withoutClusterHeaders(headers), closeConnection);
  }

  protected override errorHeaders(code: TunnelErrorCode): readonly string[] {
    return missHeaders(code);
  }
}

/** The header marking one of the proxy's misses for the forwarding proxy; none for other answers. */
function missHeaders(code: TunnelErrorCode): readonly string[] {
  return isMiss(code) ? [CLUSTER_MISS_HEADER, code] : [];
}

/** `raw` without any `x-duplexwire-cluster-*` header. */
export function withoutClusterHeaders(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length > CLUSTER_HEADER_PREFIX.length && name.toLowerCase().startsWith(CLUSTER_HEADER_PREFIX)) continue;
    out.push(name, raw[i + 1]!);
  }
  return out;
}
