/**
 * The tunnel's messages, carried as duplexwire requests on the agent's connection.
 *
 * Proxy -> agent (server-to-client requests, protocol v2.1):
 * - `tunnel.http` (msgpack {@link HttpHead}): one HTTP exchange. Its reply comes once the agent has
 *   finished the exchange: either the whole response inline ({@link HttpReply} with `inline`),
 *   or an empty `done` after the response went out as `tunnel.head` + `tunnel.chunk`s. Aborting
 *   the request (its AbortSignal) sends CancelRequest: the agent aborts its request to the target.
 * - `tunnel.body/<sid>/<seq>[/fin]` (the bytes as a binary payload, see {@link chunkName}):
 *   request-body bytes of a streamed body, acked by the agent once the target took them
 *   (written, or `'drain'`).
 *
 * Agent -> proxy (client requests):
 * - `tunnel.head` (msgpack {@link ResponseHead}): the response status and headers.
 * - `tunnel.chunk` (binary {@link Chunk}): response-body bytes, acked by the proxy once the user's
 *   socket took them (`res.write()` returned true or `'drain'` fired): end-to-end backpressure.
 *
 * Structured heads are msgpack (small, binary-safe header values); body chunks are a tiny binary
 * frame so the bytes are never re-encoded: `[flags u8][seq u32 BE][sid length u8][sid][data]`.
 *
 * All of the above is version 1 of the tunnel's format. Proxy and agent settle the version before
 * any message, as the WebSocket subprotocol of the agent's connection (`duplexwire-tunnel.<n>`,
 * RFC 6455 §1.9): the agent offers the versions it speaks, the proxy answers with the highest it
 * speaks too, or refuses the upgrade with 426 `TUNNEL_VERSION_UNSUPPORTED`. A change to anything
 * above that an older peer would misread is a new version.
 *
 * Besides, the agent's upgrade request announces its limit of requests in flight
 * (`x-duplexwire-agent-max-inflight`, constants.ts): a header peers of any version may leave out
 * or ignore, so no version of its own.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import { binary, type Payload } from '../../index.ts';

/** The version of the tunnel's messages this build writes (see the top of this file). */
export const TUNNEL_PROTOCOL_VERSION = 1;
/**
 * Every version this build speaks, newest first: what an agent offers and a proxy accepts. Both
 * ends speak each of them until one is dropped on purpose (a breaking release).
 */
export const TUNNEL_PROTOCOL_VERSIONS: readonly number[] = Object.freeze([TUNNEL_PROTOCOL_VERSION]);

const PROTOCOL_PREFIX = 'duplexwire-tunnel.';
/** `duplexwire-tunnel.<n>`: a positive decimal without leading zeros, so each version has one name. */
const PROTOCOL_NAME = /^duplexwire-tunnel\.([1-9][0-9]{0,5})$/;

/** The WebSocket subprotocol of a tunnel version: `duplexwire-tunnel.1`. */
export function tunnelProtocol(version: number): string {
  return `${PROTOCOL_PREFIX}${version}`;
}

/** The tunnel version a subprotocol names, or undefined for any other subprotocol. */
export function tunnelVersionOf(protocol: string): number | undefined {
  const match = PROTOCOL_NAME.exec(protocol);
  return match === null ? undefined : Number(match[1]);
}

/**
 * The version a proxy answers an offer with: the highest both speak, whatever the offer's order
 * (an agent cannot talk a proxy down to an older version than both know), or undefined.
 */
export function chooseTunnelVersion(
  offered: readonly string[],
  supported: readonly number[] = TUNNEL_PROTOCOL_VERSIONS,
): number | undefined {
  let best: number | undefined;
  for (const protocol of offered) {
    const version = tunnelVersionOf(protocol);
    if (version !== undefined && supported.includes(version) && (best === undefined || version > best)) best = version;
  }
  return best;
}

/**
 * The proxy speaks none of the tunnel versions this agent offered (HTTP 426 at the upgrade).
 * Retrying cannot help: one of the two must be upgraded. Says which from the versions of both.
 */
export class TunnelVersionError extends Error {
  override readonly name = 'TunnelVersionError';
  readonly code = 'TUNNEL_VERSION_UNSUPPORTED';
  readonly status = 426;
  /** What this agent offered. */
  readonly agentVersions: readonly number[];
  /** What the proxy speaks, from its answer; undefined when it did not say. */
  readonly proxyVersions: readonly number[] | undefined;

  constructor(agentVersions: readonly number[], proxyVersions: readonly number[] | undefined, options?: ErrorOptions) {
    const agent = agentVersions.join(', ');
    const proxy = proxyVersions === undefined ? undefined : proxyVersions.join(', ');
    let advice = '';
    if (proxyVersions !== undefined && proxyVersions.length > 0 && agentVersions.length > 0) {
      advice =
        Math.max(...proxyVersions) > Math.max(...agentVersions)
          ? ': upgrade the agent'
          : ': upgrade the proxy, or use an agent that speaks its version';
    }
    super(
      proxy === undefined
        ? `the proxy refused this agent's tunnel version ${agent} (426) without saying which it speaks`
        : `the proxy speaks tunnel version ${proxy}, this agent ${agent}${advice}`,
      options,
    );
    this.agentVersions = agentVersions;
    this.proxyVersions = proxyVersions;
  }
}

export const MSG_HTTP = 'tunnel.http';
export const MSG_BODY = 'tunnel.body';
export const MSG_HEAD = 'tunnel.head';
export const MSG_CHUNK = 'tunnel.chunk';
/** Signal from an agent: it is draining, route nothing new to it. */
export const SIGNAL_DRAINING = 'tunnel.draining';
/**
 * Signal from an agent whose target is health-checked: `down` when the checks fail, `up` when they
 * pass again (UTF-8). Agents start healthy; one that is unhealthy says so after each connect.
 */
export const SIGNAL_HEALTH = 'tunnel.health';

/** Error codes an agent answers `tunnel.http` with (RequestError codes). */
export const AgentErrorCode = {
  /** The target could not be reached (connection refused, DNS, reset before the response): 502. */
  TargetUnreachable: 'TARGET_UNREACHABLE',
  /** The in-process handler threw or the target broke the exchange: 500. */
  HandlerFailed: 'HANDLER_FAILED',
  /** The agent is draining and did not start the exchange: the proxy may retry elsewhere. */
  Draining: 'AGENT_DRAINING',
  /**
   * The agent is at its `maxInflight` and did not start the exchange: the proxy may retry
   * elsewhere (or answer 503 AGENTS_BUSY), and keeps routing to the agent as it frees up. A proxy
   * that learned the limit (AGENT_MAX_INFLIGHT_HEADER) meets it only in a race (a request it
   * canceled that the agent is still ending). Proxies older than this code answer it as any code
   * they do not know: 502 BAD_AGENT_RESPONSE, the request still unperformed. Error codes are an
   * open set, so this is no new version: nothing an older peer parses changed, and an agent must
   * refuse past its limit whatever the proxy's version.
   */
  Busy: 'AGENT_BUSY',
  /** A malformed message. */
  BadMessage: 'BAD_MESSAGE',
  /** A chunk for a stream this end does not know (ended, canceled). */
  UnknownStream: 'UNKNOWN_STREAM',
  /** Upgrade requested from a target that cannot upgrade (fetch handler). */
  UpgradeUnsupported: 'UPGRADE_UNSUPPORTED',
} as const;

/** How a request body travels. */
export const BodyMode = { None: 0, Inline: 1, Stream: 2 } as const;
export type BodyMode = (typeof BodyMode)[keyof typeof BodyMode];

/** Proxy -> agent: one HTTP exchange. */
export interface HttpHead {
  /** Stream id, unique on the proxy. */
  readonly sid: string;
  readonly method: string;
  /** The request target, origin-form, byte-exact (`%2F` stays). */
  readonly url: string;
  /** Header names and values in order, flat: `[name, value, name, value, ...]` (as `rawHeaders`). */
  readonly headers: readonly string[];
  readonly body: BodyMode;
  /** The whole body when `body` is Inline. */
  readonly data?: Uint8Array;
  /** A connection upgrade (WebSocket): after a 101 the chunks carry the raw socket bytes. */
  readonly upgrade?: boolean;
}

/** Agent -> proxy: the response head of a streamed response. */
export interface ResponseHead {
  readonly sid: string;
  readonly status: number;
  readonly headers: readonly string[];
  /** First body bytes, when they were already there. */
  readonly data?: Uint8Array;
}

/** Agent -> proxy: reply to `tunnel.http`. */
export type HttpReply =
  | { readonly kind: 'inline'; readonly status: number; readonly headers: readonly string[]; readonly data: Uint8Array }
  | { readonly kind: 'done' };

/** A malformed tunnel message; answered with BAD_MESSAGE. */
export class WireError extends Error {
  override readonly name = 'WireError';
}

const MAX_SID_LENGTH = 64;
const SID = /^[A-Za-z0-9_-]{1,64}$/;

function bytesOf(payload: Payload): Uint8Array {
  if (payload.encoding !== 'binary') throw new WireError('tunnel messages are binary');
  return payload.data;
}

// One of each, reused: `encode()`/`decode()` would build a new one (and its buffers) per call.
// Both run synchronously to the end, so sharing them is safe.
const encoder = new Encoder({ ignoreUndefined: true });
const decoder = new Decoder();

function decodeMap(payload: Payload): Record<string, unknown> {
  let value: unknown;
  try {
    value = decoder.decode(bytesOf(payload));
  } catch (error) {
    if (error instanceof WireError) throw error;
    throw new WireError('undecodable msgpack');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new WireError('expected a map');
  return value as Record<string, unknown>;
}

function str(map: Record<string, unknown>, key: string, max = 65_536): string {
  const v = map[key];
  if (typeof v !== 'string' || v.length > max) throw new WireError(`bad ${key}`);
  return v;
}

function sid(map: Record<string, unknown>): string {
  const v = str(map, 'sid', MAX_SID_LENGTH);
  if (!SID.test(v)) throw new WireError('bad sid');
  return v;
}

function headerList(map: Record<string, unknown>): string[] {
  const v = map.headers;
  if (!Array.isArray(v) || v.length % 2 !== 0 || v.length > 2 * 1024) throw new WireError('bad headers');
  for (const item of v) if (typeof item !== 'string') throw new WireError('bad headers');
  return v as string[];
}

function optionalBytes(map: Record<string, unknown>, key: string): Uint8Array | undefined {
  const v = map[key];
  if (v === undefined || v === null) return undefined;
  if (!(v instanceof Uint8Array)) throw new WireError(`bad ${key}`);
  return v;
}

function status(map: Record<string, unknown>): number {
  const v = map.status;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 100 || v > 999) throw new WireError('bad status');
  return v;
}

function pack(value: object): Payload {
  return binary(encoder.encode(value));
}

export function encodeHttpHead(head: HttpHead): Payload {
  return pack(head);
}

export function decodeHttpHead(payload: Payload): HttpHead {
  const map = decodeMap(payload);
  const body = map.body;
  if (body !== BodyMode.None && body !== BodyMode.Inline && body !== BodyMode.Stream) throw new WireError('bad body');
  const data = optionalBytes(map, 'data');
  if (body === BodyMode.Inline && data === undefined) throw new WireError('inline body without data');
  const head: HttpHead = {
    sid: sid(map),
    method: str(map, 'method', 64),
    url: str(map, 'url'),
    headers: headerList(map),
    body,
    ...(data === undefined ? {} : { data }),
    ...(map.upgrade === true ? { upgrade: true } : {}),
  };
  return head;
}

export function encodeResponseHead(head: ResponseHead): Payload {
  return pack(head);
}

export function decodeResponseHead(payload: Payload): ResponseHead {
  const map = decodeMap(payload);
  const data = optionalBytes(map, 'data');
  return { sid: sid(map), status: status(map), headers: headerList(map), ...(data === undefined ? {} : { data }) };
}

export function encodeHttpReply(reply: HttpReply): Payload {
  return pack(reply);
}

export function decodeHttpReply(payload: Payload): HttpReply {
  const map = decodeMap(payload);
  if (map.kind === 'done') return { kind: 'done' };
  if (map.kind !== 'inline') throw new WireError('bad reply kind');
  return {
    kind: 'inline',
    status: status(map),
    headers: headerList(map),
    data: optionalBytes(map, 'data') ?? new Uint8Array(0),
  };
}

/** One piece of a body stream. */
export interface Chunk {
  readonly sid: string;
  /** 0, 1, 2, ... per stream and direction: checked, so a reordering bug cannot corrupt a body. */
  readonly seq: number;
  /** The last chunk of its direction. */
  readonly fin: boolean;
  readonly data: Uint8Array;
}

/**
 * The request name of a chunk: `tunnel.body/<sid>/<seq>` (`/fin` added on the last one). The
 * stream's coordinates travel in the name so that the payload is the body bytes themselves:
 * nothing is copied to frame them (at 1 GiB, one copy less is a quarter of the agent's
 * allocations, and the garbage collector's work with them).
 */
export function chunkName(kind: typeof MSG_BODY | typeof MSG_CHUNK, sid: string, seq: number, fin: boolean): string {
  return fin ? `${kind}/${sid}/${seq}/fin` : `${kind}/${sid}/${seq}`;
}

const CHUNK_NAME = /^(tunnel\.body|tunnel\.chunk)\/([A-Za-z0-9_-]{1,64})\/(\d{1,10})(\/fin)?$/;

/** The chunk a request is, or `undefined` when its name is not a chunk's. Throws for a malformed one. */
export function parseChunk(
  name: string,
  payload: Payload,
): (Chunk & { readonly kind: typeof MSG_BODY | typeof MSG_CHUNK }) | undefined {
  if (!name.startsWith(MSG_BODY) && !name.startsWith(MSG_CHUNK)) return undefined;
  const match = CHUNK_NAME.exec(name);
  if (match === null) throw new WireError('bad chunk name');
  const seq = Number(match[3]);
  if (seq > 0xffff_ffff) throw new WireError('bad chunk sequence');
  return {
    kind: match[1] as typeof MSG_BODY | typeof MSG_CHUNK,
    sid: match[2]!,
    seq,
    fin: match[4] !== undefined,
    data: bytesOf(payload),
  };
}
