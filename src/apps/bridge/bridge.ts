/**
 * The WebSocket-to-HTTP bridge: it holds WebSocket connections for a backend that speaks only
 * HTTP. Each connection's life reaches the backend as signed POSTs (`connect`, then one `message`
 * per WebSocket message, in order, then `close` with the close code), and the backend talks back
 * through the connection's callback URL: POST a message, DELETE to close. Built on the transport
 * contract (the clients are plain WebSocket clients, not duplexwire peers).
 */
import { setMaxListeners } from 'node:events';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import { nanoid } from 'nanoid';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { InvalidArgumentError, type Logger } from '../../index.ts';
import type { SocketHandlers, TransportSocket, UpgradeDecision, UpgradeRequest } from '../../../transports/types.ts';
import {
  Endpoint,
  json,
  type OpsPaths,
  positiveInteger,
  type ResolvedOps,
  refuse,
  resolveOps,
  settleWithin,
} from '../shared/endpoint.ts';
import { DEFAULT_HEARTBEAT_INTERVAL, Heartbeat, type HeartbeatTracking, UNTRACKED } from '../shared/heartbeat.ts';
import { jsonLogger } from '../shared/log.ts';
import { parseProtocolOffer } from '../shared/websocket.ts';
import { type BackendAnswer, BackendError, type EventRequest, postEvent } from './backend.ts';
import { SeenSignatures } from '../shared/seen-signatures.ts';
import { checkSignature, DEFAULT_SIGNATURE_TOLERANCE, MIN_SECRET_BYTES, SIGNATURE_HEADER } from './signature.ts';

/** @default 10 s */
export const DEFAULT_BACKEND_TIMEOUT = 10_000;
/** Largest WebSocket message, backend answer and callback body. @default 1 MiB */
export const DEFAULT_BRIDGE_MAX_MESSAGE_SIZE = 1024 * 1024;
/** @default 10,000 */
export const DEFAULT_BRIDGE_MAX_CONNECTIONS = 10_000;
/** Messages of one connection waiting for the backend before reading from it pauses. @default 32 */
export const DEFAULT_MAX_QUEUED_MESSAGES = 32;
/** Bytes of one connection's messages waiting for the backend before reading it pauses. @default 1 MiB */
export const DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024;
/** POSTs to the backend at once. @default 256 */
export const DEFAULT_MAX_BACKEND_REQUESTS = 256;
/** Bytes queued toward one client; a callback finding more closes it (1008). @default 8 MiB */
export const DEFAULT_BRIDGE_MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
/** How long `close()` waits for the close events of the connections it closes. @default 10 s */
export const DEFAULT_BRIDGE_DRAIN_TIMEOUT = 10_000;
/** The callback path, under the bridge's root: `/connections/<token>`. */
export const CALLBACK_PREFIX = '/connections/';

const TOKEN_LENGTH = 32; // nanoid: 6 bits per character, 192 bits
const TOKEN_PATH = /^\/connections\/([A-Za-z0-9_-]{32})$/;
const TEXT_TYPE = 'text/plain; charset=utf-8';
const BINARY_TYPE = 'application/octet-stream';
/**
 * What a queued message counts for against `maxQueuedBytes` besides its bytes: about what holding
 * one costs (its entry, its buffer's object), so that empty messages fill the byte limit too.
 */
export const QUEUED_MESSAGE_OVERHEAD = 128;
/** How long an accepted upgrade may take to become a connection before it counts as gone. */
const ACCEPT_GRACE = 5_000;
/** Upgrade headers the backend has no use for (the handshake's own, and hop-by-hop ones). */
const DROPPED_HEADERS = new Set([
  'connection',
  'upgrade',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'sec-websocket-key',
  'sec-websocket-version',
  'sec-websocket-extensions',
]);

/** The bridge's operational endpoints. */
export type BridgeOpsPaths = OpsPaths;

export interface WsHttpBridgeOptions {
  /** Where the events go (http or https URL): every event is a POST to it, named by `x-bridge-event`. */
  readonly backend: string;
  /** HMAC-SHA256 key shared with the backend, at least 32 bytes. Signs every event (`x-bridge-signature`). */
  readonly secret: string;
  /**
   * The bridge's address as the backend reaches it, ending in `/`, e.g. `http://bridge.internal:8081/`.
   * Each connection's callback URL is this plus `connections/<token>`. @default `http://<the
   * address the bridge listens on>/` (with 127.0.0.1 or ::1 for an unspecified address): right
   * when the backend runs on the same machine; set it when the backend reaches the bridge another way
   */
  readonly callbackUrl?: string;
  /** Path of the WebSocket endpoint (query ignored). @default '/' */
  readonly path?: string;
  /** Deadline of each POST to the backend, in ms. @default 10000 */
  readonly backendTimeout?: number;
  /** Largest WebSocket message (larger: close 1009), backend answer and callback body (larger: 413). @default 1 MiB */
  readonly maxMessageSize?: number;
  /** Connections open at once, those being decided included; one more is refused with 503. @default 10000 */
  readonly maxConnections?: number;
  /** Messages of one connection waiting for the backend before the bridge stops reading it. @default 32 */
  readonly maxQueuedMessages?: number;
  /** Bytes of one connection's messages waiting for the backend before the bridge stops reading it. @default 1 MiB */
  readonly maxQueuedBytes?: number;
  /** Bytes queued toward one client; a callback finding more closes the client (1008). @default 8 MiB */
  readonly maxBufferedBytes?: number;
  /**
   * POSTs to the backend at once, over all connections (each connection has at most one); more
   * wait their turn, for up to `backendTimeout`. Without a bound, 10,000 busy connections would
   * be 10,000 concurrent requests (and as many TCP connections) to the backend. @default 256
   */
  readonly maxBackendRequests?: number;
  /**
   * Every client is pinged this often (ms), and dropped when nothing (a message, a pong) came from
   * it for twice as long: a client that vanished without closing (lost network, dead host) would
   * otherwise hold its connection, and its slot under `maxConnections`, until TCP gives up. Its
   * close event then carries 1006. 0 turns it off. @default 30000
   */
  readonly heartbeatInterval?: number;
  /** Callbacks must be signed with the secret too, not only name a connection's token. @default false */
  readonly requireSignedCallbacks?: boolean;
  /** How long `close()` waits for the connections' close events. @default 10000 */
  readonly drainTimeout?: number;
  /** Operational endpoints on the bridge's listener. */
  readonly ops?: BridgeOpsPaths;
  /** Structured logs. @default JSON lines on stderr, level info */
  readonly logger?: Logger;
}

interface Resolved {
  readonly backend: {
    readonly url: string;
    readonly secret: string;
    readonly timeout: number;
    readonly maxBody: number;
  };
  readonly callbackUrl: string | undefined;
  readonly path: string;
  readonly maxMessageSize: number;
  readonly maxConnections: number;
  readonly maxQueuedMessages: number;
  readonly maxQueuedBytes: number;
  readonly maxBufferedBytes: number;
  readonly maxBackendRequests: number;
  readonly requireSignedCallbacks: boolean;
  readonly drainTimeout: number;
  readonly heartbeatInterval: number;
  readonly ops: ResolvedOps;
}

function httpUrl(name: string, value: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`${name} must be an absolute http(s) URL, got ${JSON.stringify(value)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InvalidArgumentError(`${name} must be an http or https URL, got ${url.protocol}`);
  }
  return url;
}

function resolve(options: WsHttpBridgeOptions): Resolved {
  httpUrl('backend', options.backend);
  let callbackUrl: string | undefined;
  if (options.callbackUrl !== undefined) {
    const callback = httpUrl('callbackUrl', options.callbackUrl);
    if (!callback.pathname.endsWith('/') || callback.search !== '' || callback.hash !== '') {
      throw new InvalidArgumentError(
        `callbackUrl must end with / and carry no query, got ${JSON.stringify(options.callbackUrl)}`,
      );
    }
    callbackUrl = callback.href;
  }
  if (typeof options.secret !== 'string' || Buffer.byteLength(options.secret) < MIN_SECRET_BYTES) {
    throw new InvalidArgumentError(`secret must be a string of at least ${MIN_SECRET_BYTES} bytes`);
  }
  const path = options.path ?? '/';
  if (!path.startsWith('/') || path.startsWith(CALLBACK_PREFIX)) {
    throw new InvalidArgumentError(
      `path must start with / and not with ${CALLBACK_PREFIX}, got ${JSON.stringify(path)}`,
    );
  }
  const maxMessageSize = positiveInteger('maxMessageSize', options.maxMessageSize, DEFAULT_BRIDGE_MAX_MESSAGE_SIZE);
  return {
    backend: {
      url: options.backend,
      secret: options.secret,
      timeout: positiveInteger('backendTimeout', options.backendTimeout, DEFAULT_BACKEND_TIMEOUT),
      maxBody: maxMessageSize,
    },
    callbackUrl,
    path,
    maxMessageSize,
    maxConnections: positiveInteger('maxConnections', options.maxConnections, DEFAULT_BRIDGE_MAX_CONNECTIONS),
    maxQueuedMessages: positiveInteger('maxQueuedMessages', options.maxQueuedMessages, DEFAULT_MAX_QUEUED_MESSAGES),
    maxQueuedBytes: positiveInteger('maxQueuedBytes', options.maxQueuedBytes, DEFAULT_MAX_QUEUED_BYTES),
    maxBufferedBytes: positiveInteger('maxBufferedBytes', options.maxBufferedBytes, DEFAULT_BRIDGE_MAX_BUFFERED_BYTES),
    maxBackendRequests: positiveInteger('maxBackendRequests', options.maxBackendRequests, DEFAULT_MAX_BACKEND_REQUESTS),
    requireSignedCallbacks: options.requireSignedCallbacks ?? false,
    drainTimeout: positiveInteger('drainTimeout', options.drainTimeout, DEFAULT_BRIDGE_DRAIN_TIMEOUT),
    heartbeatInterval:
      options.heartbeatInterval === 0
        ? 0
        : positiveInteger('heartbeatInterval', options.heartbeatInterval, DEFAULT_HEARTBEAT_INTERVAL),
    ops: resolveOps(options.ops),
  };
}

/** One client connection and its ordered stream of events to the backend. */
interface BridgeConnection {
  readonly id: string;
  readonly token: string;
  readonly socket: TransportSocket;
  readonly queue: Array<{ readonly data: Uint8Array; readonly binary: boolean }>;
  /** A POST of this connection is under way. */
  /** Bytes of the messages in `queue`, each counted with QUEUED_MESSAGE_OVERHEAD. */
  queuedBytes: number;
  /** Its place in the heartbeat. */
  beat: HeartbeatTracking;
  busy: boolean;
  paused: boolean;
  /**
   * The bridge closed the client (a DELETE, `close()`, a failure, too slow): it is read on until
   * its close frame, never paused again, and what it sends past the queue limits is dropped.
   */
  closing: boolean;
  /** The backend failed an event: nothing more is sent for this connection but its close. */
  failed: boolean;
  /** Messages received after the failure, never queued: the close event counts them as dropped. */
  dropped: number;
  /** How the client connection ended, once it has. */
  ended: { readonly code: number; readonly reason: string } | undefined;
  /** Resolves once the close event was posted (or given up on). */
  readonly done: Promise<void>;
  finish: () => void;
}

/** What an accepted upgrade carries to its connection. */
interface Accepted {
  readonly id: string;
  readonly timer: ReturnType<typeof setTimeout>;
  /** Posts its close event when the client leaves before the connection opens (`request.signal`). */
  readonly gone: () => void;
  /** The backend's answer to `connect`, when it had a body: the client's first message. */
  readonly welcome: { readonly body: Uint8Array; readonly contentType: string } | undefined;
}

class BridgeMetrics {
  readonly registry = new Registry();
  readonly connections: Gauge;
  readonly events: Counter<'event' | 'result'>;
  readonly duration: Histogram<'event'>;
  readonly callbacks: Counter<'method' | 'status'>;
  readonly heartbeatTimeouts: Counter;

  constructor() {
    const registers = [this.registry];
    this.connections = new Gauge({ name: 'duplexwire_bridge_connections', help: 'Open client connections', registers });
    this.events = new Counter({
      name: 'duplexwire_bridge_events_total',
      help: 'Events posted to the backend, by event and result (ok, refused, failed, abandoned: the client left first)',
      labelNames: ['event', 'result'],
      registers,
    });
    this.duration = new Histogram({
      name: 'duplexwire_bridge_event_duration_seconds',
      help: 'Time the backend took to answer an event',
      labelNames: ['event'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.callbacks = new Counter({
      name: 'duplexwire_bridge_callbacks_total',
      help: 'Callback requests from the backend, by method and status',
      labelNames: ['method', 'status'],
      registers,
    });
    this.heartbeatTimeouts = new Counter({
      name: 'duplexwire_bridge_heartbeat_timeouts_total',
      help: 'Clients dropped because nothing came from them for two heartbeat intervals',
      registers,
    });
  }
}

/**
 * Holds WebSocket connections for an HTTP backend.
 *
 * @example
 * const bridge = new WsHttpBridge({
 *   backend: 'http://127.0.0.1:3000/ws-events',
 *   secret: process.env.BRIDGE_SECRET,
 *   callbackUrl: 'http://127.0.0.1:8081/',
 * });
 * await bridge.listen({ host: '127.0.0.1', port: 8081 });
 */
export class WsHttpBridge {
  readonly metrics = new BridgeMetrics();
  private readonly options: Resolved;
  private readonly logger: Logger;
  private readonly connections = new Map<string, BridgeConnection>();
  private readonly accepted = new Map<UpgradeRequest, Accepted>();
  /** Upgrades waiting for the backend's answer to `connect`. */
  private deciding = 0;
  /** POSTs to the backend under way. */
  private readonly inflight = new Set<Promise<BackendAnswer>>();
  /** POSTs being sent now (at most `maxBackendRequests`), and those waiting for their turn. */
  private sending = 0;
  private readonly turns: Array<() => void> = [];
  /** Aborts what is still being posted when `close()` gives up waiting. */
  private readonly stopping = new AbortController();
  private readonly endpoint: Endpoint;
  private readonly heartbeat: Heartbeat;
  /**
   * Nonces of the signed callbacks accepted within the tolerance: each is used once, so one
   * captured on its way (a log, a proxy) cannot be sent again. Bounded (the oldest is forgotten,
   * and nothing older passes after it).
   */
  private readonly seenCallbacks = new SeenSignatures(DEFAULT_SIGNATURE_TOLERANCE);
  private closing: Promise<void> | undefined;

  constructor(options: WsHttpBridgeOptions) {
    this.options = resolve(options);
    // Every POST under way and every one waiting for its turn listens to this signal until it ends:
    // as many as there are connections (one each at most) and accepted upgrades, each removed when
    // its POST ends. Past Node's default of 10 it would warn of an EventTarget memory leak.
    setMaxListeners(0, this.stopping.signal);
    this.logger = options.logger ?? jsonLogger({ fields: { component: 'bridge' } });
    this.heartbeat = new Heartbeat(this.options.heartbeatInterval);
    this.endpoint = new Endpoint({
      name: 'bridge',
      path: this.options.path,
      maxMessageSize: this.options.maxMessageSize,
      handlers: {
        upgrade: (request) => this.decide(request),
        connection: (socket, request) => this.open(socket, request),
      },
      ops: this.options.ops,
      registry: this.metrics.registry,
      ready: () => this.closing === undefined,
      requests: (req, res, path) => this.callbacks(req, res, path),
    });
  }

  /** Client connections open, or closed with their close event not posted yet. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Creates an HTTP server, serves WebSockets, callbacks and ops on it, and listens. */
  async listen(options: { host?: string; port?: number } = {}): Promise<{ host: string; port: number }> {
    const address = await this.endpoint.listen(options.host ?? '127.0.0.1', options.port ?? 8081);
    const host = address.host.includes(':') ? `[${address.host}]` : address.host;
    const scheme = this.endpoint.tls ? 'https' : 'http';
    this.logger.info('bridge listening', { url: `${scheme}://${host}:${address.port}${this.options.path}` });
    return address;
  }

  /**
   * Serves the WebSocket endpoint on a server you own (it listens and closes it). Call
   * `handleRequest(req, res)` from its request listener for the callbacks and ops endpoints.
   */
  attach(server: HttpServer | HttpsServer): Promise<void> {
    return this.endpoint.attach(server);
  }

  /** Where the bridge's own server listens (after `listen`). */
  address(): { host: string; port: number } | null {
    return this.endpoint.address();
  }

  /**
   * Answers a request if it is a callback (`/connections/<token>`) or an ops endpoint; returns
   * false, without touching it, for any other.
   */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    return this.endpoint.handleRequest(req, res);
  }

  /** The callbacks, for the endpoint. */
  private callbacks(req: IncomingMessage, res: ServerResponse, path: string): boolean {
    if (!path.startsWith(CALLBACK_PREFIX)) return false;
    this.callback(req, res, path).catch((error: unknown) => {
      this.logger.error('callback failed', { error });
      if (!res.headersSent) json(res, 500, { code: 'INTERNAL', message: 'the callback failed' });
    });
    return true;
  }

  /**
   * Stops: new upgrades get 503, `/readyz` 503; every client is closed with 1001 and each
   * connection's remaining messages and close event go to the backend, as do the close events of
   * upgrades accepted that never opened, for up to `drainTimeout`. What is still being posted then
   * is aborted; then the transport stops (and the server, when the bridge made it).
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const conn of this.connections.values()) {
        if (conn.ended === undefined) this.closeClient(conn, 1001, 'bridge shutting down');
      }
      for (const [request, { id, timer, gone }] of this.accepted) {
        clearTimeout(timer);
        request.signal?.removeEventListener('abort', gone);
        this.sendOrphanClose(id, 'the bridge is shutting down');
      }
      this.accepted.clear();
      await settleWithin(this.quiet(), this.options.drainTimeout);
      if (this.connections.size > 0 || this.inflight.size > 0) {
        this.logger.warn('events still pending at the drain timeout are given up', {
          connections: this.connections.size,
          posts: this.inflight.size,
        });
      }
      this.stopping.abort();
      this.heartbeat.stop();
      await this.endpoint.stop();
    })();
    return this.closing;
  }

  /** Resolves once every connection's close event was posted and no POST is under way. */
  private async quiet(): Promise<void> {
    // A POST that ends may lead to another (a connect accepted while closing gets its close event).
    while (this.connections.size > 0 || this.inflight.size > 0) {
      await Promise.allSettled([...[...this.connections.values()].map((conn) => conn.done), ...this.inflight]);
    }
  }

  /**
   * Posts an event to the backend, tracked (for `close()`) and aborted when the bridge stops, or
   * when `left` aborts (the client of a `connect` left: the backend's answer would go nowhere).
   */
  private post(request: EventRequest, left?: AbortSignal): Promise<BackendAnswer> {
    const posting = this.turn(left).then(() =>
      postEvent(this.options.backend, request, this.stopping.signal, left).finally(() => this.nextTurn()),
    );
    this.inflight.add(posting);
    posting.then(
      () => this.inflight.delete(posting),
      () => this.inflight.delete(posting),
    );
    return posting;
  }

  /**
   * Resolves when this POST may be sent (`maxBackendRequests`); rejects with BackendError
   * `timeout` after `backendTimeout` of waiting, `aborted` when the bridge stops, or `left` when
   * `left` aborts (it then never takes a turn).
   */
  private turn(left?: AbortSignal): Promise<void> {
    if (left?.aborted) return Promise.reject(new BackendError('left', 'the client left'));
    if (this.sending < this.options.maxBackendRequests && this.turns.length === 0) {
      this.sending++;
      return Promise.resolve();
    }
    const stop = this.stopping.signal;
    return new Promise<void>((resolve, reject) => {
      const leave = (error: BackendError): void => {
        const index = this.turns.indexOf(go);
        if (index >= 0) this.turns.splice(index, 1);
        clearTimeout(timer);
        stop.removeEventListener('abort', onStop);
        left?.removeEventListener('abort', onLeft);
        reject(error);
      };
      const onLeft = (): void => leave(new BackendError('left', 'the client left'));
      const timer = setTimeout(
        () =>
          leave(new BackendError('timeout', `no turn to reach the backend within ${this.options.backend.timeout} ms`)),
        this.options.backend.timeout,
      );
      timer.unref();
      const onStop = (): void => leave(new BackendError('aborted', 'the bridge stopped'));
      const go = (): void => {
        clearTimeout(timer);
        stop.removeEventListener('abort', onStop);
        left?.removeEventListener('abort', onLeft);
        this.sending++;
        resolve();
      };
      if (stop.aborted) {
        onStop();
        return;
      }
      stop.addEventListener('abort', onStop, { once: true });
      left?.addEventListener('abort', onLeft, { once: true });
      this.turns.push(go);
    });
  }

  /** A POST ended: the next one waiting goes. */
  private nextTurn(): void {
    this.sending--;
    this.turns.shift()?.();
  }

  // ------------------------------------------------------------------ connect

  private async decide(request: UpgradeRequest): Promise<UpgradeDecision> {
    if (this.closing !== undefined) return refuse(503, 'the bridge is shutting down');
    if (this.connections.size + this.deciding + this.accepted.size >= this.options.maxConnections) {
      return refuse(503, 'too many connections');
    }
    // A malformed subprotocol offer is the client's error: refused before the backend is asked.
    const offered = parseProtocolOffer(request.headers['sec-websocket-protocol']);
    if (offered === undefined) return refuse(400, 'malformed Sec-WebSocket-Protocol');
    const id = nanoid();
    // Null prototype: the client names the headers, and one named `__proto__` would otherwise set
    // the prototype (dropped from the JSON) instead of being passed on.
    const headers: Record<string, string> = Object.create(null);
    for (const [name, value] of Object.entries(request.headers)) {
      if (value !== undefined && !DROPPED_HEADERS.has(name) && !name.startsWith('proxy-')) headers[name] = value;
    }
    const body = Buffer.from(
      JSON.stringify({
        id,
        path: request.path,
        query: request.query,
        headers,
        remoteAddress: request.remoteAddress,
      }),
    );
    this.deciding++;
    let answer: BackendAnswer | BackendError;
    const started = performance.now();
    try {
      // A client that leaves meanwhile (`request.signal`) ends the wait for a turn, or the POST:
      // its answer would go nowhere, and the backend may be spared the work.
      answer = await this.post(
        {
          event: 'connect',
          connection: id,
          body,
          contentType: 'application/json',
        },
        request.signal,
      );
    } catch (error) {
      answer = error instanceof BackendError ? error : new BackendError('unreachable', String(error));
    } finally {
      this.deciding--;
    }
    this.metrics.duration.observe({ event: 'connect' }, (performance.now() - started) / 1000);
    const accepted = !(answer instanceof BackendError) && answer.status >= 200 && answer.status <= 299;
    if (this.closing !== undefined) {
      // Decided while the bridge closes: the client gets 503 whatever the answer, and a connection
      // the backend accepted, which will never open, gets its close event.
      this.metrics.events.inc({ event: 'connect', result: accepted ? 'ok' : 'failed' });
      if (accepted) this.sendOrphanClose(id, 'the bridge is shutting down');
      return refuse(503, 'the bridge is shutting down');
    }
    if (answer instanceof BackendError && answer.reason === 'left') {
      // Never accepted: the backend gets no close event for it.
      this.metrics.events.inc({ event: 'connect', result: 'abandoned' });
      this.logger.debug('the client left before its connect was answered', { id });
      return refuse(503, 'the client left');
    }
    if (answer instanceof BackendError) {
      this.metrics.events.inc({ event: 'connect', result: 'failed' });
      this.logger.warn('connect event failed', { id, reason: answer.reason });
      return answer.reason === 'timeout'
        ? refuse(504, 'the backend did not answer in time')
        : refuse(502, 'the backend failed');
    }
    if (!accepted) {
      const refused = answer.status >= 400 && answer.status <= 499;
      this.metrics.events.inc({ event: 'connect', result: refused ? 'refused' : 'failed' });
      this.logger.info('connect refused', { id, status: answer.status });
      return refused ? refuse(answer.status, 'refused by the backend') : refuse(502, 'the backend failed');
    }
    if (answer.protocol !== '' && !offered.includes(answer.protocol)) {
      this.metrics.events.inc({ event: 'connect', result: 'failed' });
      this.logger.warn('the backend chose a subprotocol the client did not offer', { id });
      this.sendOrphanClose(id, 'the backend chose a subprotocol the client did not offer');
      return refuse(502, 'the backend failed');
    }
    this.metrics.events.inc({ event: 'connect', result: 'ok' });
    // Accepted by the backend, so it must hear when the connection ends, even one that never
    // opens: the client left after the answer (now, or before the transport opens the
    // connection: `request.signal`), or the transport dropped the upgrade quietly (after a while).
    if (request.signal?.aborted) {
      this.sendOrphanClose(id, 'the client left during the upgrade');
      return refuse(503, 'the client left');
    }
    const gone = (): void => {
      const entry = this.accepted.get(request);
      if (entry?.id !== id) return;
      this.accepted.delete(request);
      clearTimeout(entry.timer);
      request.signal?.removeEventListener('abort', gone);
      this.sendOrphanClose(id, 'the client left during the upgrade');
    };
    const timer = setTimeout(gone, ACCEPT_GRACE);
    timer.unref();
    request.signal?.addEventListener('abort', gone, { once: true });
    const welcome = answer.body.length > 0 ? { body: answer.body, contentType: answer.contentType } : undefined;
    this.accepted.set(request, { id, timer, gone, welcome });
    // The subprotocol is the backend's to choose, among those the client offered; none unless it says.
    return { accept: true, protocol: answer.protocol };
  }

  private sendOrphanClose(id: string, reason: string): void {
    void this.postClose(id, undefined, { code: 1006, reason });
  }

  private open(socket: TransportSocket, request: UpgradeRequest): SocketHandlers {
    const accepted = this.accepted.get(request);
    this.accepted.delete(request);
    if (accepted === undefined) {
      // Not decided by us (cannot happen with our transport), or past the grace period.
      socket.close(1011, 'unexpected connection');
      return { onMessage() {}, onDrain() {}, onPing() {}, onClose() {} };
    }
    clearTimeout(accepted.timer);
    request.signal?.removeEventListener('abort', accepted.gone);
    let finish!: () => void;
    const done = new Promise<void>((resolveDone) => {
      finish = resolveDone;
    });
    const conn: BridgeConnection = {
      id: accepted.id,
      token: nanoid(TOKEN_LENGTH),
      socket,
      queue: [],
      queuedBytes: 0,
      beat: UNTRACKED,
      busy: false,
      paused: false,
      closing: false,
      failed: false,
      dropped: 0,
      ended: undefined,
      done,
      finish,
    };
    this.connections.set(conn.token, conn);
    this.metrics.connections.inc();
    conn.beat = this.heartbeat.track(socket, () => {
      this.metrics.heartbeatTimeouts.inc();
      this.logger.info('nothing came from a client for two heartbeat intervals; dropped it', { id: conn.id });
    });
    this.logger.debug('connection open', { id: conn.id });
    if (this.closing !== undefined) this.closeClient(conn, 1001, 'bridge shutting down');
    else if (accepted.welcome !== undefined) {
      // Sent once the transport installed the handlers this returns.
      const { body, contentType } = accepted.welcome;
      queueMicrotask(() => {
        if (this.deliver(conn, body, contentType) === 'bad-text') {
          this.logger.warn('the backend answered connect with text that is not UTF-8; not sent', { id: conn.id });
        }
      });
    }
    return {
      onMessage: (data, binary) => {
        conn.beat.seen();
        this.received(conn, data, binary);
      },
      onDrain: () => conn.beat.seen(),
      onPing: () => conn.beat.seen(),
      // Part of a large message over a slow link: alive, though its pong waits behind it.
      onActivity: () => conn.beat.seen(),
      onClose: (code, reason) => {
        conn.beat.untrack();
        conn.ended = { code, reason };
        this.metrics.connections.dec();
        // The callback token stops working at once; the events still queued go out, then close.
        if (!conn.busy) void this.pump(conn);
      },
    };
  }

  // ------------------------------------------------------------------ messages

  private received(conn: BridgeConnection, data: Uint8Array, binary: boolean): void {
    if (conn.ended !== undefined) return;
    const { maxQueuedMessages, maxQueuedBytes, maxMessageSize } = this.options;
    if (
      conn.failed ||
      // A client being closed is read on (its close frame must be read), so reading cannot pause:
      // one that goes on sending, not reading the close (RFC 6455 §5.5.1 lets the bridge
      // discard what follows its close frame), would otherwise fill the queue without bound.
      (conn.closing && (conn.queue.length >= maxQueuedMessages || conn.queuedBytes >= maxQueuedBytes))
    ) {
      conn.dropped++;
      return;
    }
    const cost = data.byteLength + QUEUED_MESSAGE_OVERHEAD;
    // Pausing stops reading, but what the last read brought is still delivered (the ws transport
    // hands on every message of a chunk: one 64 KiB read holds ~10,000 empty frames, uWS reads
    // more at once). A client within its rights overshoots the pause by at most one message and
    // one read's worth; one that sends far more than that in a single write is closed.
    if (conn.queuedBytes + cost > 2 * maxQueuedBytes + maxMessageSize + QUEUED_MESSAGE_OVERHEAD) {
      conn.dropped++;
      this.logger.warn('a client overran its queue past the pause; closed', { id: conn.id });
      this.closeClient(conn, 1008, 'too many messages');
      return;
    }
    conn.queue.push({ data, binary });
    conn.queuedBytes += cost;
    // Bounded by count and by bytes: a client may send faster than the backend answers, but only
    // this much waits in the bridge (what is on its way stays in TCP, at the client).
    if (
      (conn.queue.length >= maxQueuedMessages || conn.queuedBytes >= maxQueuedBytes) &&
      !conn.paused &&
      !conn.closing
    ) {
      conn.paused = true;
      conn.socket.pause();
      // Unread, its pongs would look like silence: the heartbeat waits while the bridge does.
      conn.beat.pause();
    }
    if (!conn.busy) void this.pump(conn);
  }

  /** Posts the connection's events one at a time, in order; the close event last. */
  private async pump(conn: BridgeConnection): Promise<void> {
    conn.busy = true;
    try {
      for (;;) {
        const next = conn.failed ? undefined : conn.queue.shift();
        if (next === undefined) break;
        conn.queuedBytes -= next.data.byteLength + QUEUED_MESSAGE_OVERHEAD;
        const { maxQueuedMessages, maxQueuedBytes } = this.options;
        if (
          conn.paused &&
          conn.queue.length <= maxQueuedMessages / 2 &&
          conn.queuedBytes <= maxQueuedBytes / 2 &&
          conn.ended === undefined
        ) {
          conn.paused = false;
          conn.socket.resume();
          conn.beat.resume();
        }
        await this.postMessage(conn, next.data, next.binary);
      }
      if (conn.ended !== undefined) {
        const dropped = conn.queue.length + conn.dropped;
        conn.queue.length = 0;
        conn.queuedBytes = 0;
        await this.postClose(conn.id, conn, conn.ended, dropped);
        this.connections.delete(conn.token);
        conn.finish();
      }
    } finally {
      conn.busy = false;
    }
  }

  private async postMessage(conn: BridgeConnection, data: Uint8Array, binary: boolean): Promise<void> {
    const started = performance.now();
    let failure: string | undefined;
    try {
      const answer = await this.post({
        event: 'message',
        connection: conn.id,
        callback: this.callbackFor(conn),
        body: data,
        contentType: binary ? BINARY_TYPE : TEXT_TYPE,
      });
      if (answer.status >= 200 && answer.status <= 299) {
        if (answer.body.length > 0 && this.deliver(conn, answer.body, answer.contentType) === 'bad-text') {
          this.logger.warn('the backend answered a message with text that is not UTF-8; not sent', { id: conn.id });
        }
      } else {
        failure = `status ${answer.status}`;
      }
    } catch (error) {
      failure = error instanceof BackendError ? error.reason : 'unreachable';
    }
    this.metrics.duration.observe({ event: 'message' }, (performance.now() - started) / 1000);
    this.metrics.events.inc({ event: 'message', result: failure === undefined ? 'ok' : 'failed' });
    if (failure !== undefined) {
      conn.failed = true;
      this.logger.warn('message event failed; closing the client', { id: conn.id, failure });
      // What the client sends meanwhile is counted as dropped (`received`).
      if (conn.ended === undefined) this.closeClient(conn, 1011, 'backend error');
    }
  }

  private async postClose(
    id: string,
    conn: BridgeConnection | undefined,
    ended: { readonly code: number; readonly reason: string },
    dropped = 0,
  ): Promise<void> {
    const body = Buffer.from(JSON.stringify({ code: ended.code, reason: ended.reason, dropped }));
    const started = performance.now();
    let result: 'ok' | 'failed' = 'ok';
    try {
      const answer = await this.post({
        event: 'close',
        connection: id,
        callback: conn === undefined ? undefined : this.callbackFor(conn),
        body,
        contentType: 'application/json',
      });
      if (answer.status < 200 || answer.status > 299) result = 'failed';
    } catch {
      result = 'failed';
    }
    this.metrics.duration.observe({ event: 'close' }, (performance.now() - started) / 1000);
    this.metrics.events.inc({ event: 'close', result });
    if (result === 'failed') this.logger.warn('close event failed', { id });
    this.logger.debug('connection closed', { id, code: ended.code, dropped });
  }

  /**
   * Closes a client. The transport reads a paused socket again to finish the closing handshake,
   * and the heartbeat watches it again; `received` keeps what it sends within the queue limits.
   */
  private closeClient(conn: BridgeConnection, code: number, reason: string): void {
    conn.closing = true;
    if (conn.paused) {
      conn.paused = false;
      conn.beat.resume();
    }
    conn.socket.close(code, reason);
  }

  private callbackFor(conn: BridgeConnection): string {
    return `${this.callbackBase()}connections/${conn.token}`;
  }

  /** `callbackUrl`, or the listening address (known once listening, so computed when needed). */
  private callbackBase(): string {
    if (this.options.callbackUrl !== undefined) return this.options.callbackUrl;
    const address = this.address();
    if (address === null) return 'http://127.0.0.1/';
    const host = address.host === '0.0.0.0' ? '127.0.0.1' : address.host === '::' ? '::1' : address.host;
    const scheme = this.endpoint.tls ? 'https' : 'http';
    return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${address.port}/`;
  }

  /** Sends bytes to a client as text (a `text/*` type) or binary; closes a client too slow to take them. */
  private deliver(conn: BridgeConnection, body: Uint8Array, contentType: string): 'sent' | 'gone' | 'bad-text' {
    if (conn.ended !== undefined) return 'gone';
    if (conn.socket.bufferedAmount > this.options.maxBufferedBytes) {
      this.closeClient(conn, 1008, 'too slow');
      return 'gone';
    }
    let result: ReturnType<TransportSocket['send']>;
    if (/^text\//i.test(contentType)) {
      let text: string;
      try {
        text = FATAL_UTF8.decode(body);
      } catch {
        return 'bad-text';
      }
      result = conn.socket.sendText(text);
    } else {
      result = conn.socket.send(body);
    }
    return result === 'dropped' ? 'gone' : 'sent';
  }

  // ------------------------------------------------------------------ callbacks

  private async callback(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const method = req.method ?? 'GET';
    const answer = (status: number, body?: object): void => {
      this.metrics.callbacks.inc({ method: method === 'POST' || method === 'DELETE' ? method : 'other', status });
      if (body === undefined) res.writeHead(status).end();
      else json(res, status, body);
    };
    const match = TOKEN_PATH.exec(path);
    if (match === null) {
      req.resume();
      return answer(404, { code: 'NOT_FOUND', message: 'no such callback' });
    }
    if (method !== 'POST' && method !== 'DELETE') {
      req.resume();
      res.setHeader('allow', 'POST, DELETE');
      return answer(405, { code: 'METHOD_NOT_ALLOWED', message: 'POST a message or DELETE to close' });
    }
    const token = match[1]!;
    const body = await readBody(req, this.options.maxMessageSize);
    if (body === 'too-large') {
      res.setHeader('connection', 'close');
      return answer(413, {
        code: 'MESSAGE_TOO_LARGE',
        message: `the body is over ${this.options.maxMessageSize} bytes`,
      });
    }
    if (body === 'aborted') return;
    if (this.options.requireSignedCallbacks) {
      const verdict = checkSignature(
        this.options.backend.secret,
        headerValue(req.headers[SIGNATURE_HEADER]),
        { domain: 'callback', action: method, subject: token, contentType: headerValue(req.headers['content-type']) },
        body,
        { seen: this.seenCallbacks },
      );
      if (verdict === 'invalid') {
        return answer(401, { code: 'BAD_SIGNATURE', message: 'the callback is not signed with the secret' });
      }
      if (verdict === 'replayed') {
        return answer(401, { code: 'REPLAYED', message: 'this signature was used before; sign each callback anew' });
      }
    }
    const conn = this.connections.get(token);
    if (conn === undefined || conn.ended !== undefined) {
      return answer(410, { code: 'GONE', message: 'the connection is closed' });
    }
    if (method === 'DELETE') {
      const close = parseClose(body);
      if (close === undefined) {
        return answer(400, {
          code: 'BAD_CLOSE',
          message: 'the body is empty or {"code": 1000 or 3000-4999, "reason": "..."}',
        });
      }
      this.closeClient(conn, close.code, close.reason);
      return answer(204);
    }
    const result = this.deliver(conn, body, headerValue(req.headers['content-type']) ?? '');
    if (result === 'bad-text') {
      return answer(400, { code: 'BAD_TEXT', message: 'a text/* body must be valid UTF-8' });
    }
    if (result === 'gone') return answer(410, { code: 'GONE', message: 'the connection is closed' });
    return answer(204);
  }
}

const FATAL_UTF8 = new TextDecoder('utf-8', { fatal: true });

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The request body, or why there is none: over `max` bytes, or the request broke off. */
function readBody(req: IncomingMessage, max: number): Promise<Uint8Array | 'too-large' | 'aborted'> {
  const declared = Number(req.headers['content-length'] ?? Number.NaN);
  if (declared > max) {
    req.resume();
    return Promise.resolve('too-large');
  }
  return new Promise((resolveBody) => {
    const parts: Buffer[] = [];
    let size = 0;
    req.on('data', (part: Buffer) => {
      size += part.length;
      if (size > max) {
        req.removeAllListeners('data');
        req.resume();
        resolveBody('too-large');
        return;
      }
      parts.push(part);
    });
    req.on('end', () => resolveBody(Buffer.concat(parts, size)));
    req.on('error', () => resolveBody('aborted'));
    req.on('aborted', () => resolveBody('aborted'));
  });
}

/** A DELETE body: empty (1000), or `{ code, reason }` with a code an application may send. */
function parseClose(body: Uint8Array): { code: number; reason: string } | undefined {
  if (body.length === 0) return { code: 1000, reason: '' };
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const { code = 1000, reason = '' } = value as { code?: unknown; reason?: unknown };
  if (typeof code !== 'number' || !(code === 1000 || (Number.isInteger(code) && code >= 3000 && code <= 4999))) {
    return undefined;
  }
  if (typeof reason !== 'string' || Buffer.byteLength(reason) > 123) return undefined;
  return { code, reason };
}
