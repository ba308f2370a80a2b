/**
 * The WebSocket proxy: each client connection is linked to a connection of its own to an upstream
 * WebSocket server. Messages pass both ways unchanged (text stays text, binary stays binary), in
 * order, with backpressure across the link (a side that does not read pauses the other), and each
 * side's close reaches the other with its code. The upstream is dialed before the client's upgrade
 * is answered, so a client sees the upstream's refusal as its own HTTP status. Both sides are
 * pinged (`heartbeatInterval`), so a peer that vanished without a FIN ends its link instead of
 * holding it forever. Built on the transport contract (server side for clients, client side for
 * upstreams).
 */
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import { nanoid } from 'nanoid';
import { Counter, Gauge, Registry } from 'prom-client';
import { InvalidArgumentError, type Logger } from '../../index.ts';
import type {
  ClientTransport,
  ConnectFailure,
  SocketHandlers,
  TransportSocket,
  UpgradeDecision,
  UpgradeRequest,
} from '../../../transports/types.ts';
import { wsClientTransport } from '../../../transports/ws.ts';
import {
  Endpoint,
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
import { hasDotSegment } from '../shared/paths.ts';

/** @default 10 s */
export const DEFAULT_UPSTREAM_CONNECT_TIMEOUT = 10_000;
/** @default 1 MiB */
export const DEFAULT_WSPROXY_MAX_MESSAGE_SIZE = 1024 * 1024;
/** @default 10,000 */
export const DEFAULT_WSPROXY_MAX_CONNECTIONS = 10_000;
/** Bytes queued toward one side beyond which that side is closed (1008) with its link. @default 8 MiB */
export const DEFAULT_WSPROXY_MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
/** How long `close()` lets links close gracefully before terminating them. @default 5 s */
export const DEFAULT_WSPROXY_DRAIN_TIMEOUT = 5_000;
/** Time an async `upstream` function has to answer, as the core Server's `upgradeTimeout`. @default 10 s */
export const DEFAULT_WSPROXY_UPGRADE_TIMEOUT = 10_000;
/** Ping interval toward both sides of every link; a side silent for twice this is dropped. @default 30 s */
export const DEFAULT_WSPROXY_HEARTBEAT_INTERVAL = DEFAULT_HEARTBEAT_INTERVAL;

/** Close codes a proxy uses for what it decides itself. */
export const WsProxyCloseCode = {
  /**
   * The other side went away (closed without a code, dropped, or silent past the heartbeat), or
   * the proxy is shutting down.
   */
  GoingAway: 1001,
  /** The other side broke the protocol or vanished; also the upstream's own 1011. */
  InternalError: 1011,
  /** The upstream dropped the link without a close frame, or was silent past the heartbeat. */
  BadGateway: 1014,
  /** A side holds more than `maxBufferedBytes` unsent. */
  PolicyViolation: 1008,
} as const;

/** Upgrade headers that belong to one hop: never forwarded to the upstream. */
const HOP_HEADERS = new Set([
  'connection',
  'upgrade',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'host',
  'content-length',
  'sec-websocket-key',
  'sec-websocket-version',
  'sec-websocket-extensions',
  'sec-websocket-accept',
  // Offered again by the proxy's own handshake (`protocols`), then answered with the upstream's choice.
  'sec-websocket-protocol',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  // RFC 7239: the same claims (`proto=`, `host=`) as the X-Forwarded-* the proxy sets itself.
  'forwarded',
]);

/** What `upstream` may answer for one upgrade request. */
export type UpstreamChoice = string | { readonly accept: false; readonly status: number; readonly body?: string };

export interface WsProxyOptions {
  /**
   * Where a client's connection goes: a ws(s) URL for every client, or a function of the upgrade
   * request (authentication, routing by path, ...) returning a URL, or a refusal
   * `{ accept: false, status }`. A function that throws refuses with 500; one that has not
   * answered within `upgradeTimeout` refuses with 503.
   *
   * A function may append `request.url` to a base URL: the proxy only lets through paths (origin
   * form, `/...`, no fragment) without `.` or `..` segments, written or percent-encoded (400
   * otherwise), so `new URL` cannot resolve them out of the base path.
   */
  readonly upstream: string | ((request: UpgradeRequest) => UpstreamChoice | Promise<UpstreamChoice>);
  /** Path of the proxy's WebSocket endpoint (query ignored). @default every path */
  readonly path?: string;
  /**
   * Time an async `upstream` function has to answer, in ms; past it the client gets 503
   * `upgrade decision timed out` (as from the core Server: the proxy could not decide, the
   * upstream was not asked), the slot under `maxConnections` is free again and a late answer is
   * ignored (nothing is dialed for it). The dial that follows an answer has `connectTimeout`.
   * @default 10000
   */
  readonly upgradeTimeout?: number;
  /** Time to open the upstream connection, in ms; past it the client gets 504. @default 10000 */
  readonly connectTimeout?: number;
  /** Largest message either way; larger closes that side with 1009 (and its link). @default 1 MiB */
  readonly maxMessageSize?: number;
  /** Links open at once, those being set up included; one more gets 503. @default 10000 */
  readonly maxConnections?: number;
  /** Bytes queued toward one side beyond which the link closes with 1008. @default 8 MiB */
  readonly maxBufferedBytes?: number;
  /** How long `close()` lets links close gracefully. @default 5000 */
  readonly drainTimeout?: number;
  /**
   * Liveness check of both sides of every link, in ms: each is pinged this often, and one from
   * which nothing (message, ping or pong) came for twice this is dropped; its link then closes
   * as when that side vanishes (a client: 1001 for the upstream; an upstream: 1014 for the
   * client). Without it a client that vanished without a FIN keeps its link and upstream
   * connection forever (the proxy's own `ws` client answers the upstream's pings). 0 turns it
   * off. @default 30000
   */
  readonly heartbeatInterval?: number;
  /** How upstreams are dialed. @default `wsClientTransport()` */
  readonly upstreamTransport?: ClientTransport;
  /** Operational endpoints on the proxy's own listener (`/healthz`, `/readyz`, `/metrics`; `false` turns one off). */
  readonly ops?: OpsPaths;
  /** Structured logs. @default JSON lines on stderr, level info */
  readonly logger?: Logger;
}

interface Resolved {
  readonly upstream: WsProxyOptions['upstream'];
  readonly path: string | undefined;
  readonly upgradeTimeout: number;
  readonly connectTimeout: number;
  readonly maxMessageSize: number;
  readonly maxConnections: number;
  readonly maxBufferedBytes: number;
  readonly drainTimeout: number;
  readonly heartbeatInterval: number;
  readonly ops: ResolvedOps;
}

function checkUpstreamUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`an upstream must be an absolute ws(s) URL, got ${JSON.stringify(value)}`);
  }
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
    throw new InvalidArgumentError(`an upstream must be a ws or wss URL, got ${url.protocol}`);
  }
  // ws refuses a URL with a fragment by throwing, which would pass for an unreachable upstream.
  if (url.hash !== '') throw new InvalidArgumentError('an upstream URL cannot have a fragment (#...)');
  return url.href;
}

/** One client linked to its upstream. */
interface Link {
  readonly id: string;
  readonly upstream: TransportSocket;
  client: TransportSocket | undefined;
  /** Upstream messages that arrived before the client's connection opened. */
  readonly early: Array<{ readonly data: Uint8Array; readonly binary: boolean }>;
  /** Set once either side closed: the other is being closed with `code`. */
  closing: boolean;
  clientClosed: boolean;
  upstreamClosed: boolean;
  /** How the upstream closed, when it did before the client's connection opened. */
  upstreamEnd: [number, string] | undefined;
  /** Each side's place in the heartbeat, once the link is open. */
  clientBeat: HeartbeatTracking;
  upstreamBeat: HeartbeatTracking;
  readonly done: Promise<void>;
  finish: () => void;
}

class WsProxyMetrics {
  readonly registry = new Registry();
  readonly links: Gauge;
  readonly messages: Counter<'direction'>;
  readonly bytes: Counter<'direction'>;
  readonly upstreamFailures: Counter<'reason'>;
  readonly heartbeatTimeouts: Counter<'side'>;

  constructor() {
    const registers = [this.registry];
    this.links = new Gauge({ name: 'duplexwire_wsproxy_links', help: 'Clients linked to an upstream', registers });
    this.messages = new Counter({
      name: 'duplexwire_wsproxy_messages_total',
      help: 'Messages forwarded, by direction (upstream: client to upstream; client: upstream to client)',
      labelNames: ['direction'],
      registers,
    });
    this.bytes = new Counter({
      name: 'duplexwire_wsproxy_bytes_total',
      help: 'Message bytes forwarded, by direction',
      labelNames: ['direction'],
      registers,
    });
    this.upstreamFailures = new Counter({
      name: 'duplexwire_wsproxy_upstream_failures_total',
      help: 'Upstream connections that could not be opened, by reason (refused, unreachable, timeout)',
      labelNames: ['reason'],
      registers,
    });
    this.heartbeatTimeouts = new Counter({
      name: 'duplexwire_wsproxy_heartbeat_timeouts_total',
      help: 'Sides of a link dropped because nothing came from them for two heartbeat intervals, by side',
      labelNames: ['side'],
      registers,
    });
  }
}

const IGNORE: SocketHandlers = { onMessage() {}, onDrain() {}, onPing() {}, onClose() {} };

/**
 * A WebSocket reverse proxy: each client gets its own upstream connection.
 *
 * @example
 * const proxy = new WsProxy({ upstream: 'ws://127.0.0.1:9000/' });
 * await proxy.listen({ host: '0.0.0.0', port: 8082 });
 */
export class WsProxy {
  readonly metrics = new WsProxyMetrics();
  private readonly options: Resolved;
  private readonly logger: Logger;
  private readonly upstreamTransport: ClientTransport;
  private readonly links = new Set<Link>();
  /** Upstreams opened for an upgrade whose client connection has not opened yet. */
  private readonly waiting = new Map<
    UpgradeRequest,
    { link: Link; timer: ReturnType<typeof setTimeout>; abandon: () => void }
  >();
  private deciding = 0;
  /** Ends each `upstream` answer being waited for (`awaitChoice`) at once; used by `close()`. */
  private readonly pendingChoices = new Set<() => void>();
  private readonly heartbeat: Heartbeat;
  private readonly endpoint: Endpoint;
  private closing: Promise<void> | undefined;

  constructor(options: WsProxyOptions) {
    if (typeof options.upstream === 'string') checkUpstreamUrl(options.upstream);
    else if (typeof options.upstream !== 'function') {
      throw new InvalidArgumentError('upstream must be a ws(s) URL or a function returning one');
    }
    this.options = {
      upstream: options.upstream,
      path: options.path,
      upgradeTimeout: positiveInteger('upgradeTimeout', options.upgradeTimeout, DEFAULT_WSPROXY_UPGRADE_TIMEOUT),
      connectTimeout: positiveInteger('connectTimeout', options.connectTimeout, DEFAULT_UPSTREAM_CONNECT_TIMEOUT),
      maxMessageSize: positiveInteger('maxMessageSize', options.maxMessageSize, DEFAULT_WSPROXY_MAX_MESSAGE_SIZE),
      maxConnections: positiveInteger('maxConnections', options.maxConnections, DEFAULT_WSPROXY_MAX_CONNECTIONS),
      maxBufferedBytes: positiveInteger(
        'maxBufferedBytes',
        options.maxBufferedBytes,
        DEFAULT_WSPROXY_MAX_BUFFERED_BYTES,
      ),
      drainTimeout: positiveInteger('drainTimeout', options.drainTimeout, DEFAULT_WSPROXY_DRAIN_TIMEOUT),
      heartbeatInterval:
        options.heartbeatInterval === 0
          ? 0
          : positiveInteger('heartbeatInterval', options.heartbeatInterval, DEFAULT_WSPROXY_HEARTBEAT_INTERVAL),
      ops: resolveOps(options.ops),
    };
    this.heartbeat = new Heartbeat(this.options.heartbeatInterval);
    this.logger = options.logger ?? jsonLogger({ fields: { component: 'wsproxy' } });
    this.upstreamTransport = options.upstreamTransport ?? wsClientTransport();
    this.endpoint = new Endpoint({
      name: 'proxy',
      path: this.options.path,
      maxMessageSize: this.options.maxMessageSize,
      handlers: {
        upgrade: (request) => this.decide(request),
        connection: (socket, request) => this.open(socket, request),
      },
      ops: this.options.ops,
      registry: this.metrics.registry,
      ready: () => this.closing === undefined,
    });
  }

  /** Clients linked to an upstream. */
  get linkCount(): number {
    return this.links.size;
  }

  /** Creates an HTTP server for the proxy (WebSocket endpoint and ops) and listens. */
  async listen(options: { host?: string; port?: number } = {}): Promise<{ host: string; port: number }> {
    const address = await this.endpoint.listen(options.host ?? '127.0.0.1', options.port ?? 8082);
    const host = address.host.includes(':') ? `[${address.host}]` : address.host;
    this.logger.info('wsproxy listening', { url: `ws://${host}:${address.port}${this.options.path ?? '/'}` });
    return address;
  }

  /** Serves the WebSocket endpoint on a server you own. Use `handleRequest` for the ops endpoints. */
  attach(server: HttpServer | HttpsServer): Promise<void> {
    return this.endpoint.attach(server);
  }

  /** Where the proxy's own server listens (after `listen`). */
  address(): { host: string; port: number } | null {
    return this.endpoint.address();
  }

  /** Answers the ops endpoints; false, without touching the request, for anything else. */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    return this.endpoint.handleRequest(req, res);
  }

  /**
   * Stops: new upgrades get 503, and so do those whose `upstream` function has not answered yet;
   * every link is closed with 1001 on both sides and given `drainTimeout` to finish its closing
   * handshakes, then terminated. Then the transport stops (and the server, when the proxy made
   * it), and the heartbeat with it.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const end of [...this.pendingChoices]) end();
      for (const link of this.links) this.closeLink(link, WsProxyCloseCode.GoingAway, 'proxy shutting down');
      await settleWithin(Promise.all([...this.links].map((link) => link.done)), this.options.drainTimeout);
      for (const link of this.links) {
        link.client?.terminate();
        link.upstream.terminate();
      }
      for (const { link, timer: grace } of this.waiting.values()) {
        clearTimeout(grace);
        link.upstream.terminate();
      }
      this.waiting.clear();
      await this.endpoint.stop();
      this.heartbeat.stop();
    })();
    return this.closing;
  }

  // ------------------------------------------------------------------ upgrade: dial first, then answer

  private async decide(request: UpgradeRequest): Promise<UpgradeDecision> {
    if (this.closing !== undefined) return refuse(503, 'the proxy is shutting down');
    // Links waiting for their client's connection are in `links` already.
    if (this.links.size + this.deciding >= this.options.maxConnections) return refuse(503, 'too many connections');
    // Only origin-form targets: an absolute-form one (`GET ws://elsewhere/`, which Node accepts)
    // would turn an `upstream` function that appends `req.url` to a base into a way to another host.
    // A fragment is no part of a request target (RFC 9112 §3.2), and ws refuses a URL with one.
    if (!request.url.startsWith('/') || request.url.includes('#')) {
      return refuse(400, 'the request target must be a path');
    }
    // The same function's `${base}${req.url}` would be resolved by `new URL` out of the base path.
    if (hasDotSegment(request.path)) return refuse(400, 'the path must not have . or .. segments');
    // Offered again to the upstream: ws's client throws on a malformed offer, which must not pass
    // for an unreachable upstream (a client could then raise upstream alerts at will).
    const protocols = parseProtocolOffer(request.headers['sec-websocket-protocol']);
    if (protocols === undefined) return refuse(400, 'invalid Sec-WebSocket-Protocol');
    this.deciding++;
    try {
      let choice: UpstreamChoice | undefined;
      try {
        const { upstream } = this.options;
        if (typeof upstream === 'string') choice = upstream;
        else {
          const answer = upstream(request);
          choice = isPromiseLike(answer) ? await this.awaitChoice(answer) : answer;
        }
      } catch (error) {
        this.logger.error('the upstream function failed', { error });
        return refuse(500, 'internal error');
      }
      if (this.closing !== undefined) return refuse(503, 'the proxy is shutting down');
      if (choice === undefined) {
        // Path and address only: headers and query may carry credentials.
        this.logger.warn('the upstream function did not answer in time; refusing with 503', {
          timeout: this.options.upgradeTimeout,
          path: request.path,
          remoteAddress: request.remoteAddress,
        });
        return refuse(503, 'upgrade decision timed out');
      }
      if (typeof choice !== 'string') {
        const status =
          Number.isInteger(choice.status) && choice.status >= 400 && choice.status <= 599 ? choice.status : 403;
        return refuse(status, choice.body ?? 'refused');
      }
      let url: string;
      try {
        url = checkUpstreamUrl(choice);
      } catch (error) {
        this.logger.error('the upstream function returned an invalid URL', { error });
        return refuse(500, 'internal error');
      }
      return await this.dial(request, url, protocols);
    } finally {
      this.deciding--;
    }
  }

  /**
   * Waits for an async `upstream` answer at most `upgradeTimeout` ms, resolving undefined when
   * the time is up or the proxy closes: until the client is answered it holds a slot under
   * `maxConnections` and the client's socket, so a function that never settles (a hung auth
   * service) must not hold them forever. One timer per pending answer, cleared by whichever comes
   * first. A late answer is ignored (nothing is dialed for it), a late rejection too.
   */
  private awaitChoice(answer: PromiseLike<UpstreamChoice>): Promise<UpstreamChoice | undefined> {
    return new Promise<UpstreamChoice | undefined>((resolve, reject) => {
      let settled = false;
      const finish = (settle: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.pendingChoices.delete(end);
        settle();
      };
      const end = (): void => finish(() => resolve(undefined));
      const timer = setTimeout(end, this.options.upgradeTimeout);
      this.pendingChoices.add(end);
      Promise.resolve(answer).then(
        (choice) => finish(() => resolve(choice)),
        (error: unknown) => finish(() => reject(error)),
      );
    });
  }

  private async dial(request: UpgradeRequest, url: string, protocols: string[]): Promise<UpgradeDecision> {
    let finish!: () => void;
    const done = new Promise<void>((resolveDone) => {
      finish = resolveDone;
    });
    // The upstream's handlers exist before it opens: its first message can arrive with the 101.
    const link: Link = {
      id: nanoid(),
      upstream: undefined as unknown as TransportSocket,
      client: undefined,
      early: [],
      closing: false,
      clientClosed: false,
      upstreamClosed: false,
      upstreamEnd: undefined,
      clientBeat: UNTRACKED,
      upstreamBeat: UNTRACKED,
      done,
      finish,
    };
    let upstream: TransportSocket;
    try {
      upstream = await this.upstreamTransport.connect(
        url,
        {
          headers: forwardedHeaders(request, this.endpoint.tls),
          maxMessageSize: this.options.maxMessageSize,
          connectTimeout: this.options.connectTimeout,
          protocols,
          // An upstream may choose none of the client's subprotocols (RFC 6455 §4.2.2): the client
          // then gets none, as it would directly.
          acceptNoProtocol: true,
          // A client that leaves ends the dial made for it.
          ...(request.signal === undefined ? {} : { signal: request.signal }),
        },
        this.upstreamHandlers(link),
      );
    } catch (error) {
      // The client left: nothing went wrong upstream, and nobody hears the answer.
      if (request.signal?.aborted === true) return refuse(503, 'the client left');
      const failure = error as ConnectFailure;
      if (typeof failure.status === 'number' && failure.status >= 400 && failure.status <= 599) {
        this.metrics.upstreamFailures.inc({ reason: 'refused' });
        this.logger.info('the upstream refused the upgrade', { link: link.id, status: failure.status });
        // The upstream's own answer (401, 403, 404, ...) is the client's; its body is not passed on.
        return refuse(failure.status >= 500 ? 502 : failure.status, 'refused by the upstream');
      }
      const timedOut = (failure as { code?: unknown }).code === 'ETIMEDOUT';
      this.metrics.upstreamFailures.inc({ reason: timedOut ? 'timeout' : 'unreachable' });
      this.logger.warn('the upstream cannot be reached', { link: link.id, error });
      return timedOut
        ? refuse(504, 'the upstream did not answer in time')
        : refuse(502, 'the upstream cannot be reached');
    }
    (link as { upstream: TransportSocket }).upstream = upstream;
    // Nothing is read from the upstream until its client can take it (a few messages may already
    // be on their way: they wait in `early`).
    upstream.pause();
    const clientLeft = request.signal?.aborted === true;
    if (link.upstreamClosed || this.closing !== undefined || clientLeft) {
      link.closing = true;
      closeSide(
        upstream,
        UNTRACKED,
        WsProxyCloseCode.GoingAway,
        // A proxy closing drops its pending upgrades too: that is why their clients "left".
        clientLeft && this.closing === undefined ? 'the client left' : 'proxy shutting down',
      );
      return refuse(
        link.upstreamClosed ? 502 : 503,
        link.upstreamClosed ? 'the upstream closed' : 'the proxy is shutting down',
      );
    }
    // The transport opens the client's connection right after this answer, or drops the upgrade
    // when the client left meanwhile: then the upstream must be closed too, at once when the
    // transport says the client left (`request.signal`), else after a while.
    const abandon = (): void => {
      const entry = this.waiting.get(request);
      if (entry?.link !== link) return;
      clearTimeout(entry.timer);
      request.signal?.removeEventListener('abort', abandon);
      this.waiting.delete(request);
      link.closing = true;
      closeSide(upstream, UNTRACKED, WsProxyCloseCode.GoingAway, 'the client left');
    };
    const timer = setTimeout(abandon, 5_000);
    timer.unref();
    request.signal?.addEventListener('abort', abandon, { once: true });
    this.waiting.set(request, { link, timer, abandon });
    this.links.add(link);
    this.metrics.links.inc();
    // The client gets the subprotocol the upstream chose (one the client offered: the upstream's
    // handshake would have failed otherwise), or none when it chose none.
    return { accept: true, protocol: upstream.protocol ?? '' };
  }

  private open(client: TransportSocket, request: UpgradeRequest): SocketHandlers {
    const entry = this.waiting.get(request);
    this.waiting.delete(request);
    if (entry === undefined) {
      client.close(WsProxyCloseCode.InternalError, 'unexpected connection');
      return IGNORE;
    }
    clearTimeout(entry.timer);
    request.signal?.removeEventListener('abort', entry.abandon);
    const { link } = entry;
    link.client = client;
    link.clientBeat = this.heartbeat.track(client, () => this.timedOut(link, 'client'));
    if (!link.upstreamClosed) {
      // Paused since the dial: resumed below once the client can take what it sends.
      link.upstreamBeat = this.heartbeat.track(link.upstream, () => this.timedOut(link, 'upstream'));
      link.upstreamBeat.pause();
    }
    this.logger.debug('link open', { link: link.id });
    // Upstream messages that came while the client's upgrade was answered go first, in order.
    queueMicrotask(() => {
      for (const { data, binary } of link.early.splice(0)) this.forward(link, 'client', data, binary);
      if (link.upstreamEnd !== undefined) {
        if (!link.clientClosed) client.close(...passOn(...link.upstreamEnd, 'upstream'));
      } else if (this.closing !== undefined) {
        this.closeLink(link, WsProxyCloseCode.GoingAway, 'proxy shutting down');
      } else if (client.bufferedAmount <= this.options.maxBufferedBytes) {
        resumeSide(link.upstream, link.upstreamBeat);
      }
    });
    return {
      onMessage: (data, binary) => {
        link.clientBeat.seen();
        this.forward(link, 'upstream', data, binary);
      },
      onDrain: () => {
        // The client took what was queued for it: alive, and ready for more of the upstream.
        link.clientBeat.drained();
        resumeSide(link.upstream, link.upstreamBeat);
      },
      onPing: () => link.clientBeat.seen(),
      // Part of a large message over a slow link: alive, though its pong waits behind it.
      onActivity: () => link.clientBeat.seen(),
      onClose: (code, reason) => {
        link.clientClosed = true;
        link.clientBeat.untrack();
        if (!link.upstreamClosed) {
          const [forwardCode, forwardReason] = passOn(code, reason, 'client');
          link.closing = true;
          closeSide(link.upstream, link.upstreamBeat, forwardCode, forwardReason);
        }
        this.ended(link);
      },
    };
  }

  /**
   * The heartbeat terminated one side of `link`; its `onClose` (1006) closes the other as usual.
   * The other side is no longer judged: when the two waited for each other, both would time out
   * in the same tick, and the other one is to be closed with a code, not terminated.
   */
  private timedOut(link: Link, side: 'client' | 'upstream'): void {
    (side === 'client' ? link.upstreamBeat : link.clientBeat).untrack();
    this.metrics.heartbeatTimeouts.inc({ side });
    this.logger.info('nothing came from one side for two heartbeat intervals; dropped it', { link: link.id, side });
  }

  private upstreamHandlers(link: Link): SocketHandlers {
    return {
      onMessage: (data, binary) => {
        link.upstreamBeat.seen();
        if (link.closing) return;
        if (link.client === undefined) link.early.push({ data, binary });
        else this.forward(link, 'client', data, binary);
      },
      onDrain: () => {
        link.upstreamBeat.drained();
        if (link.client !== undefined) resumeSide(link.client, link.clientBeat);
      },
      onPing: () => link.upstreamBeat.seen(),
      onActivity: () => link.upstreamBeat.seen(),
      onClose: (code, reason) => {
        link.upstreamClosed = true;
        link.upstreamBeat.untrack();
        if (link.client === undefined) link.upstreamEnd = [code, reason];
        else if (!link.clientClosed) {
          const [forwardCode, forwardReason] = passOn(code, reason, 'upstream');
          link.closing = true;
          closeSide(link.client, link.clientBeat, forwardCode, forwardReason);
        }
        this.ended(link);
      },
    };
  }

  /** Sends a message on to the other side; pauses the sender while the receiver does not keep up. */
  private forward(link: Link, to: 'client' | 'upstream', data: Uint8Array, binary: boolean): void {
    const target = to === 'client' ? link.client : link.upstream;
    const source = to === 'client' ? link.upstream : link.client;
    const [targetBeat, sourceBeat] =
      to === 'client' ? [link.clientBeat, link.upstreamBeat] : [link.upstreamBeat, link.clientBeat];
    if (target === undefined || link.closing) return;
    this.metrics.messages.inc({ direction: to });
    this.metrics.bytes.inc({ direction: to }, data.byteLength);
    const result = binary ? target.send(data) : target.sendText(TEXT.decode(data));
    if (result === 'backpressure') {
      if (target.bufferedAmount > this.options.maxBufferedBytes) {
        this.closeLink(link, WsProxyCloseCode.PolicyViolation, 'too slow');
        return;
      }
      // Reading the sender resumes on the receiver's drain, which the heartbeat waits for even
      // while the proxy does not read the receiver either (each side waiting for the other).
      targetBeat.owing();
      if (source !== undefined) pauseSide(source, sourceBeat);
    }
  }

  /** Closes both sides with `code` (each side's close then reaches `ended`). */
  private closeLink(link: Link, code: number, reason: string): void {
    link.closing = true;
    if (!link.clientClosed && link.client !== undefined) closeSide(link.client, link.clientBeat, code, reason);
    if (!link.upstreamClosed) closeSide(link.upstream, link.upstreamBeat, code, reason);
  }

  private ended(link: Link): void {
    const clientDone = link.clientClosed || link.client === undefined;
    if (!clientDone || !link.upstreamClosed) return;
    if (this.links.delete(link)) {
      this.metrics.links.dec();
      this.logger.debug('link closed', { link: link.id });
    }
    link.finish();
  }
}

const TEXT = new TextDecoder();

function isPromiseLike<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

/**
 * Stops reading one side (the other does not keep up). Its heartbeat waits too: what it sends,
 * its pongs included, stays unread, and that is the proxy's doing, not a sign it vanished.
 */
function pauseSide(socket: TransportSocket, beat: HeartbeatTracking): void {
  socket.pause();
  beat.pause();
}

function resumeSide(socket: TransportSocket, beat: HeartbeatTracking): void {
  socket.resume();
  beat.resume();
}

/**
 * Closes one side of a link. The proxy may have paused it (backpressure, or not linked yet): the
 * transport reads it again to finish the closing handshake, and the heartbeat watches it again,
 * so that a side that vanished is dropped rather than waited for. What the side still sends is
 * dropped (`link.closing`).
 */
function closeSide(socket: TransportSocket, beat: HeartbeatTracking, code: number, reason: string): void {
  beat.resume();
  socket.close(code, reason);
}

/**
 * The close code and reason one side's close becomes on the other: the same when it may be sent
 * (1000, 1001, 1003, 1007, 1008, 1010-1014, 3000-4999), else what it means for a proxy: a side that vanished
 * (1006) or sent no code (1005) is "going away", a protocol failure (1002) or a too-large message
 * (1009) on one side is an internal error of the link for the other, and an upstream that vanished
 * is a bad gateway.
 */
function passOn(code: number, reason: string, from: 'client' | 'upstream'): [number, string] {
  if (code === 1000 || code === 1001 || code === 1003 || (code >= 1007 && code <= 1014 && code !== 1009)) {
    return [code, reason];
  }
  if (code >= 3000 && code <= 4999) return [code, reason];
  if (code === 1006 && from === 'upstream') return [WsProxyCloseCode.BadGateway, 'upstream connection lost'];
  if (code === 1005 || code === 1006) return [WsProxyCloseCode.GoingAway, `${from} went away`];
  return [WsProxyCloseCode.InternalError, `${from} closed with ${code}`];
}

/**
 * The client's upgrade headers an upstream may see, with X-Forwarded-For (the client's address
 * appended to what came), -Proto and -Host (set by the proxy, never taken from the client, nor
 * is a `Forwarded` header, which would claim them too).
 */
function forwardedHeaders(request: UpgradeRequest, tls: boolean): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (value !== undefined && !HOP_HEADERS.has(name) && !name.startsWith('proxy-')) out[name] = value;
  }
  const connectionTokens = (request.headers.connection ?? '').split(',').map((t) => t.trim().toLowerCase());
  for (const token of connectionTokens) delete out[token];
  const previous = request.headers['x-forwarded-for'];
  out['x-forwarded-for'] = previous === undefined ? request.remoteAddress : `${previous}, ${request.remoteAddress}`;
  out['x-forwarded-proto'] = tls ? 'https' : 'http';
  if (request.headers.host !== undefined) out['x-forwarded-host'] = request.headers.host;
  return out;
}
