/**
 * The public side of the tunnel: users' HTTP requests come in, agents' WebSocket connections
 * come in, and each request is routed by client id to one of that id's agents.
 *
 * Built only on duplexwire's public API: a `Server` over `wsTransport({ server, path })` on the
 * same `http.Server` as the users' requests; agents answer `tunnel.http` server-to-client
 * requests (protocol v2.1) and send the response back as client requests.
 */
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  type Connection,
  InvalidArgumentError,
  InvalidStateError,
  type Logger,
  type Payload,
  payloadText,
  RequestError,
  Server,
  type UpgradeVerdict,
} from '../../index.ts';
import { wsTransport } from '../../../transports/ws.ts';
import { Pool } from 'undici';
import { type AgentEntry, Balancer } from './balancer.ts';
import {
  CLUSTER_AUTH_HEADER,
  CLUSTER_ID_HEADER,
  CLUSTER_MISS_HEADER,
  CLUSTER_TIMEOUT_HEADER,
  PeerResponseSink,
  PeerSocketSink,
  type ResolvedCluster,
  resolveCluster,
  type TunnelClusterOptions,
} from './cluster.ts';
import { type ForwardHost, ForwardExchange } from './cluster-forward.ts';
import { ClusterRegistry } from './cluster-registry.ts';
import {
  AGENT_ID_HEADER,
  AGENT_MAX_INFLIGHT_HEADER,
  DEFAULT_CHUNK_SIZE,
  DEFAULT_CONNECTION_WINDOW,
  DEFAULT_DRAIN_TIMEOUT,
  DEFAULT_STREAM_WINDOW,
  MAX_INFLIGHT_LIMIT,
} from './constants.ts';
import { CreditWindow } from './flow.ts';
import { addForwarded, filterHeaders, headerValues, singleHeader } from './headers.ts';
import { errorBody, TUNNEL_ERROR_STATUS, TunnelErrorCode } from './http-errors.ts';
import { DEFAULT_LINGER_TIMEOUT, isClosing } from './linger.ts';
import { jsonLogger } from '../shared/log.ts';
import { parseProtocolOffer } from '../shared/websocket.ts';
import { TunnelMetrics } from './metrics.ts';
import { type ExchangeHost, type ExchangeInit, ProxyExchange } from './proxy-exchange.ts';
import { createRouter, isHeaderName, originForm, type Router, type RoutingStrategy } from './routing.ts';
import { ResponseSink, type Sink, SocketSink, writeRawError } from './sinks.ts';
import { type ClusterState, renderStatusPage } from './status-page.ts';
import { chooseTimeout, durationOption } from './timeout.ts';
import {
  type AgentAuthenticator,
  bearerToken,
  isValidClientId,
  type TokenEntries,
  tokenAuthenticator,
} from './tokens.ts';
import {
  AgentErrorCode,
  BodyMode,
  chooseTunnelVersion,
  decodeResponseHead,
  MSG_CHUNK,
  MSG_HEAD,
  parseChunk,
  SIGNAL_DRAINING,
  SIGNAL_HEALTH,
  TUNNEL_PROTOCOL_VERSIONS,
  tunnelProtocol,
  tunnelVersionOf,
  WireError,
} from './wire.ts';

/** @default path of the agents' WebSocket endpoint */
export const DEFAULT_AGENTS_PATH = '/_tunnel';
/** @default per-request timeout header */
export const DEFAULT_TIMEOUT_HEADER = 'x-duplexwire-request-timeout';
/** @default 30 s until the response head */
export const DEFAULT_REQUEST_TIMEOUT = 30_000;
/** @default 5 min: the cap of the timeout header */
export const DEFAULT_MAX_REQUEST_TIMEOUT = 300_000;
/** @default 10 MiB */
export const DEFAULT_MAX_REQUEST_BODY = 10 * 1024 * 1024;
/** @default an agent silent this long (no heartbeat) is dropped: 20 s */
export const DEFAULT_AGENT_TIMEOUT = 20_000;
/** @default 1024 requests in flight per agent */
export const DEFAULT_MAX_INFLIGHT_PER_AGENT = 1024;
/** Request bodies up to this size (with a Content-Length) travel inside the head message. */
export const INLINE_BODY_LIMIT = 64 * 1024;

/**
 * Which operational endpoints the users' listener serves: `all`; `health` (`/healthz` and
 * `/readyz` only); `none`.
 */
export type PublicOps = 'all' | 'health' | 'none';
/**
 * @default only the health checks on the users' listener: the status page lists agent ids and
 * their addresses, the metrics every client id, which are nobody's business on the internet (as
 * frp's dashboard and cloudflared's metrics are off the public port by default).
 */
export const DEFAULT_PUBLIC_OPS: PublicOps = 'health';

/** Paths of the operational endpoints (served only to requests that route to no client id). */
export interface OpsPaths {
  /** Liveness: 200 while the process serves. @default '/healthz' */
  readonly healthz?: string | false;
  /** Readiness: 200 while listening and not draining, else 503. @default '/readyz' */
  readonly readyz?: string | false;
  /** Prometheus metrics. @default '/metrics' */
  readonly metrics?: string | false;
  /** HTML status page. @default '/status' */
  readonly status?: string | false;
}

export interface TunnelProxyOptions {
  /**
   * Agent credentials: `{ "<id>": "<token or sha256:digest>" | [...] }`, or an authenticator
   * (`loadTokenFile(path)`, `tokenAuthenticator(entries)`, or your own). Required unless `insecure`.
   */
  readonly tokens?: TokenEntries | AgentAuthenticator;
  /**
   * Accept agents without credentials (development only); ids listed in `tokens` still need
   * theirs. @default false
   */
  readonly insecure?: boolean;
  /** Path of the agents' WebSocket endpoint. @default '/_tunnel' */
  readonly agentsPath?: string;
  /** How requests find their client id. @default [{ by: 'header' }] (x-duplexwire-client-id) */
  readonly routing?: RoutingStrategy | readonly RoutingStrategy[];
  /** Time an agent has to send the response head, in ms or as '30s'. @default 30 s */
  readonly requestTimeout?: number | string;
  /** Cap of the per-request timeout header. @default 5 min */
  readonly maxRequestTimeout?: number | string;
  /** Header with which a request sets its own timeout (`12s`, `1500ms`). @default 'x-duplexwire-request-timeout' */
  readonly timeoutHeader?: string;
  /** Largest request body; a larger one gets 413 (Infinity for none). @default 10 MiB */
  readonly maxRequestBody?: number;
  /** X-Forwarded-For: `replace` what users send (edge proxy) or `append` to it (behind a trusted LB). @default 'replace' */
  readonly forwarded?: 'replace' | 'append';
  /**
   * Requests in flight per agent, 1..16,384; an agent that announces a lower limit of its own
   * (its `maxInflight`) gets no more than that. When every agent of an id is full: 503
   * `AGENTS_BUSY`. @default 1024
   */
  readonly maxInflightPerAgent?: number;
  /** An agent that sends nothing (not even its heartbeat) this long is dropped. @default 20 s */
  readonly agentTimeout?: number | string;
  /** Forward WebSocket upgrades to the agents' targets. @default true */
  readonly upgrades?: boolean;
  /** Paths of the operational endpoints. @default /healthz, /readyz, /metrics, /status */
  readonly ops?: OpsPaths;
  /**
   * Which of them the users' listener serves: `all`, `health` (healthz and readyz only), or
   * `none`. `serveOps` serves them all on a private listener of yours. @default 'health'
   */
  readonly publicOps?: PublicOps;
  /** How long `drain()` lets requests in flight finish. @default 30 s */
  readonly drainTimeout?: number | string;
  /**
   * After an answer that went out before the request body arrived (an early 200 or 401 of the
   * target, a 413), which closes the connection: how long the proxy still reads and drops what
   * the user sends, so that the answer is not lost to a reset, before it closes. @default 5 s
   */
  readonly lingerTimeout?: number | string;
  /** Structured logs. @default JSON lines on stderr, level info */
  readonly logger?: Logger;
  /** Also register prom-client's default process metrics. @default true */
  readonly processMetrics?: boolean;
  /** Advanced: bytes per body chunk. @default 64 KiB */
  readonly chunkSize?: number;
  /** Advanced: unacked bytes per stream. @default 2 MiB */
  readonly streamWindow?: number;
  /** Advanced: unacked bytes per agent connection. @default 4 MiB */
  readonly connectionWindow?: number;
  /**
   * Several proxies sharing their agents through Redis: a request for an id with no usable agent
   * here goes to a live proxy that has one. @default undefined (a single proxy)
   */
  readonly cluster?: TunnelClusterOptions;
}

/** At most this many peers keep a connection pool; the oldest pool goes first. */
const MAX_PEER_POOLS = 256;

interface ResolvedOps {
  readonly healthz: string | undefined;
  readonly readyz: string | undefined;
  readonly metrics: string | undefined;
  readonly status: string | undefined;
}

function opsPath(value: string | false | undefined, fallback: string): string | undefined {
  if (value === false) return undefined;
  const path = value ?? fallback;
  if (!path.startsWith('/'))
    throw new InvalidArgumentError(`ops paths must start with '/', got ${JSON.stringify(path)}`);
  return path;
}

function positiveInteger(
  name: string,
  value: number | undefined,
  fallback: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 1 || v > max)
    throw new InvalidArgumentError(`option ${name} must be an integer in 1..${max}`);
  return v;
}

type State = 'new' | 'serving' | 'draining' | 'closed';

/**
 * The answer to an agent that speaks none of this proxy's tunnel versions, the same for all: 426
 * (RFC 9110 §15.5.22, which asks for the Upgrade header) with the tunnel's JSON error body, whose
 * `supported` lists the versions this proxy speaks, for the agent to say which side to upgrade.
 */
const versionRefusal: UpgradeVerdict = agentRefusal(TunnelErrorCode.TunnelVersionUnsupported, {
  supported: TUNNEL_PROTOCOL_VERSIONS,
});
/** The answer to an agent without a valid id and token: 401 with the tunnel's JSON error body. */
const credentialsRefusal: UpgradeVerdict = agentRefusal(TunnelErrorCode.BadAgentCredentials);
/** The answer to an agent whose Sec-WebSocket-Protocol is not a list of distinct tokens: 400. */
const malformedOfferRefusal: UpgradeVerdict = agentRefusal(TunnelErrorCode.BadRequest);
/** The answer to an agent while the proxy drains: 503. */
const drainingRefusal: UpgradeVerdict = agentRefusal(TunnelErrorCode.ShuttingDown);

/** A refused agent upgrade with the tunnel's JSON error body, like every answer of the proxy. */
function agentRefusal(code: TunnelErrorCode, extra?: Readonly<Record<string, unknown>>): UpgradeVerdict {
  const headers: Record<string, string> = {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
  };
  // RFC 9110 §15.5.22 asks a 426 to say what to upgrade to.
  if (code === TunnelErrorCode.TunnelVersionUnsupported) headers.upgrade = 'websocket';
  return Object.freeze({
    accept: false,
    status: TUNNEL_ERROR_STATUS[code],
    reason: errorBody(code, extra),
    headers: Object.freeze(headers),
  });
}

/**
 * The tunnel proxy.
 *
 * @example
 * const proxy = new TunnelProxy({ tokens: await loadTokenFile('tokens.json') });
 * const { port } = await proxy.listen({ host: '127.0.0.1', port: 8080 });
 * // agents dial ws://127.0.0.1:8080/_tunnel; users:
 * //   curl -H 'x-duplexwire-client-id: 4711' http://127.0.0.1:8080/any/path
 * process.on('SIGTERM', () => proxy.drain());
 *
 * @example Mounted on an existing server
 * const server = http.createServer();
 * await proxy.attach(server);
 * server.listen(8080);
 */
export class TunnelProxy {
  /** Prometheus registry of this proxy (also served at the metrics path). */
  readonly metrics: TunnelMetrics;
  readonly agentsPath: string;
  private readonly auth: AgentAuthenticator | undefined;
  private readonly insecure: boolean;
  private readonly knownIds: ReadonlySet<string>;
  private readonly router: Router;
  private readonly logger: Logger;
  private readonly balancer = new Balancer();
  private readonly streams = new Map<string, ProxyExchange>();
  private readonly active = new Set<ProxyExchange | ForwardExchange>();
  private readonly entries = new Map<Connection, AgentEntry>();
  /** What agents said before they were registered (see `onAgentSignal`). */
  private readonly early = new WeakMap<Connection, Partial<Pick<AgentEntry, 'draining' | 'healthy'>>>();
  private readonly stripHeaders: ReadonlySet<string>;
  private readonly timeoutHeader: string;
  private readonly requestTimeout: number;
  private readonly maxRequestTimeout: number;
  private readonly maxRequestBody: number;
  private readonly forwarded: 'replace' | 'append';
  private readonly agentTimeout: number;
  private readonly upgrades: boolean;
  private readonly ops: ResolvedOps;
  private readonly publicOps: PublicOps;
  private readonly drainTimeout: number;
  private readonly lingerTimeout: number;
  private readonly connectionWindow: number;
  private readonly maxInflightPerAgent: number;
  private readonly host: ExchangeHost;
  private readonly cluster: ResolvedCluster | undefined;
  private readonly registry: ClusterRegistry | undefined;
  private readonly forwardHost: ForwardHost | undefined;
  private readonly peerPools = new Map<string, Pool>();
  private readonly startedAt = Date.now();
  private state: State = 'new';
  private server: Server | undefined;
  private http: HttpServer | HttpsServer | undefined;
  private ownsHttp = false;
  private detach: (() => void) | undefined;
  private idleWaiters: Array<() => void> = [];
  private draining: Promise<void> | undefined;
  /** The agents' transport stopped (and took its 'upgrade' listener off the server). */
  private agentsStopped = false;

  constructor(options: TunnelProxyOptions = {}) {
    if (options.tokens === undefined && options.insecure !== true) {
      throw new InvalidArgumentError(
        'the proxy needs agent credentials (option tokens), or insecure: true for development',
      );
    }
    const tokens = options.tokens;
    this.auth =
      tokens === undefined
        ? undefined
        : typeof (tokens as AgentAuthenticator).verify === 'function'
          ? (tokens as AgentAuthenticator)
          : tokenAuthenticator(tokens as TokenEntries);
    this.insecure = options.insecure === true;
    this.knownIds = new Set(this.auth?.ids() ?? []);
    const routing = options.routing ?? [{ by: 'header' }];
    this.router = createRouter(Array.isArray(routing) ? routing : [routing as RoutingStrategy]);
    this.agentsPath = options.agentsPath ?? DEFAULT_AGENTS_PATH;
    if (!this.agentsPath.startsWith('/')) throw new InvalidArgumentError('option agentsPath must start with /');
    this.timeoutHeader = (options.timeoutHeader ?? DEFAULT_TIMEOUT_HEADER).toLowerCase();
    if (!isHeaderName(this.timeoutHeader))
      throw new InvalidArgumentError(
        `option timeoutHeader must be an HTTP token, got ${JSON.stringify(this.timeoutHeader)}`,
      );
    // The cluster's headers too, always: outside users must not be able to send them on.
    this.stripHeaders = new Set([
      ...this.router.headerNames,
      this.timeoutHeader,
      AGENT_ID_HEADER,
      AGENT_MAX_INFLIGHT_HEADER,
      CLUSTER_AUTH_HEADER,
      CLUSTER_ID_HEADER,
      CLUSTER_TIMEOUT_HEADER,
      CLUSTER_MISS_HEADER,
    ]);
    this.requestTimeout = durationOption('requestTimeout', options.requestTimeout, DEFAULT_REQUEST_TIMEOUT);
    this.maxRequestTimeout = durationOption(
      'maxRequestTimeout',
      options.maxRequestTimeout,
      DEFAULT_MAX_REQUEST_TIMEOUT,
    );
    this.agentTimeout = durationOption('agentTimeout', options.agentTimeout, DEFAULT_AGENT_TIMEOUT);
    this.drainTimeout = durationOption('drainTimeout', options.drainTimeout, DEFAULT_DRAIN_TIMEOUT);
    this.lingerTimeout = durationOption('lingerTimeout', options.lingerTimeout, DEFAULT_LINGER_TIMEOUT);
    for (const [name, v] of [
      ['requestTimeout', this.requestTimeout],
      ['maxRequestTimeout', this.maxRequestTimeout],
      ['lingerTimeout', this.lingerTimeout],
    ] as const) {
      if (v < 1 || v > 2 ** 31 - 1) throw new InvalidArgumentError(`option ${name} must be between 1 ms and 24 days`);
    }
    this.maxRequestBody = options.maxRequestBody ?? DEFAULT_MAX_REQUEST_BODY;
    if (!(this.maxRequestBody >= 0)) throw new InvalidArgumentError('option maxRequestBody must be >= 0');
    this.forwarded = options.forwarded ?? 'replace';
    this.upgrades = options.upgrades ?? true;
    this.ops = {
      healthz: opsPath(options.ops?.healthz, '/healthz'),
      readyz: opsPath(options.ops?.readyz, '/readyz'),
      metrics: opsPath(options.ops?.metrics, '/metrics'),
      status: opsPath(options.ops?.status, '/status'),
    };
    this.publicOps = options.publicOps ?? DEFAULT_PUBLIC_OPS;
    if (!['all', 'health', 'none'].includes(this.publicOps))
      throw new InvalidArgumentError("option publicOps must be 'all', 'health' or 'none'");
    this.logger = options.logger ?? jsonLogger({ fields: { component: 'tunnel-proxy' } });
    this.connectionWindow = positiveInteger('connectionWindow', options.connectionWindow, DEFAULT_CONNECTION_WINDOW);
    this.cluster = options.cluster === undefined ? undefined : resolveCluster(options.cluster);
    this.metrics = new TunnelMetrics(() => this.balancer.agents(), {
      defaultMetrics: options.processMetrics ?? true,
      cluster: this.cluster !== undefined,
    });
    for (const id of this.auth?.ids() ?? []) this.metrics.know(id);
    const chunkSize = positiveInteger('chunkSize', options.chunkSize, DEFAULT_CHUNK_SIZE, 512 * 1024);
    const streamWindow = positiveInteger('streamWindow', options.streamWindow, DEFAULT_STREAM_WINDOW);
    this.maxInflightPerAgent = positiveInteger(
      'maxInflightPerAgent',
      options.maxInflightPerAgent,
      DEFAULT_MAX_INFLIGHT_PER_AGENT,
      MAX_INFLIGHT_LIMIT,
    );
    this.host = {
      balancer: this.balancer,
      metrics: this.metrics,
      logger: this.logger,
      chunkSize,
      streamWindow,
      streams: this.streams,
      ended: (exchange) => this.ended(exchange),
    };
    if (this.cluster !== undefined) {
      const cluster = this.cluster;
      this.registry = new ClusterRegistry({
        client: cluster.client,
        prefix: cluster.prefix,
        advertise: cluster.advertise,
        ttl: cluster.ttl,
        logger: this.logger,
        onError: () => this.metrics.cluster.registryErrors++,
      });
      this.forwardHost = {
        cluster,
        registry: this.registry,
        metrics: this.metrics,
        logger: this.logger,
        peerInflight: new Map(),
        pool: (url) => this.peerPool(url),
        ended: (exchange) => this.ended(exchange),
      };
    }
  }

  private ended(exchange: ProxyExchange | ForwardExchange): void {
    this.active.delete(exchange);
    if (this.active.size === 0) this.notifyIdle();
  }

  private peerPool(url: string): Pool {
    let pool = this.peerPools.get(url);
    if (pool === undefined) {
      if (this.peerPools.size >= MAX_PEER_POOLS) {
        const [oldest, old] = this.peerPools.entries().next().value as [string, Pool];
        this.peerPools.delete(oldest);
        void old.close().catch(() => {});
      }
      pool = new Pool(url, {
        connectTimeout: this.cluster!.connectTimeout,
        connect: { ...this.cluster!.tls },
        headersTimeout: 0,
        bodyTimeout: 0,
      });
      this.peerPools.set(url, pool);
    }
    return pool;
  }

  // ------------------------------------------------------------------ lifecycle

  /**
   * Creates an HTTP server, listens on `host`:`port` (0 picks a free port) and serves users and
   * agents on it. Resolves with the address.
   */
  async listen(options: { host?: string; port?: number } = {}): Promise<{ host: string; port: number }> {
    const http = createServer({ requestTimeout: 0 });
    await this.attach(http);
    this.ownsHttp = true;
    // CONNECT is not forwarded: answer rather than let Node drop the socket without a word.
    http.on('connect', (_req: IncomingMessage, socket: Duplex) => {
      socket.on('error', () => {});
      writeRawError(socket, TunnelErrorCode.BadRequest, this.lingerTimeout);
    });
    await new Promise<void>((resolve, reject) => {
      http.once('error', reject);
      http.listen(options.port ?? 8080, options.host ?? '127.0.0.1', () => {
        http.off('error', reject);
        resolve();
      });
    });
    http.on('error', (error) => this.logger.error('http server error', { error }));
    const address = this.address()!;
    this.logger.info('listening', { host: address.host, port: address.port, agentsPath: this.agentsPath });
    return address;
  }

  /**
   * Serves on an HTTP(S) server the application owns: agents at `agentsPath`, users' requests
   * (unless `requests: false`, then call `handleRequest` yourself) and upgrades (unless
   * `upgrades: false`). The server is never closed by the proxy; after `drain()` its listeners
   * stay and answer 503.
   */
  async attach(
    server: HttpServer | HttpsServer,
    options: { requests?: boolean; upgrades?: boolean } = {},
  ): Promise<void> {
    if (this.state !== 'new') throw new InvalidStateError(`the proxy is ${this.state}`);
    this.state = 'serving';
    this.http = server;
    this.server = new Server({
      // Many users' requests go to one agent connection: their sends of one I/O phase share a write.
      transport: wsTransport({ server, path: this.agentsPath, writeBatching: 'immediate' }),
      beforeUpgrade: (request) => this.admitAgent(request.headers, request.remoteAddress),
      onRequest: (conn, message) => this.onAgentRequest(conn, message.name, message.payload),
      onSignal: (conn, message) => this.onAgentSignal(conn, message.name, message.payload),
      onClientConnected: (conn) => this.agentConnected(conn),
      onClientDisconnected: (conn, info) => this.agentDisconnected(conn, info.code, info.reason),
      readTimeout: this.agentTimeout,
      // Every stream's chunks are handled at once: a slow user must never block another stream.
      concurrency: 65_536,
      maxInflightRequests: 65_536,
      logger: this.logger,
    });
    await this.server.listen();
    this.registry?.start();
    const onRequest = (req: IncomingMessage, res: ServerResponse): void => this.handleRequest(req, res);
    const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void =>
      this.handleUpgrade(req, socket, head);
    if (options.requests ?? true) server.on('request', onRequest);
    if (options.upgrades ?? true) server.on('upgrade', onUpgrade);
    this.detach = () => {
      server.off('request', onRequest);
      server.off('upgrade', onUpgrade);
    };
  }

  /** Where the proxy listens (its own server, or the attached one once that listens). */
  address(): { host: string; port: number } | null {
    const address = this.http?.address();
    if (address === null || address === undefined || typeof address === 'string') return null;
    return { host: (address as AddressInfo).address, port: (address as AddressInfo).port };
  }

  /** True while serving and not draining (what `/readyz` answers). */
  get ready(): boolean {
    return this.state === 'serving';
  }

  /** Connected agents (of `id`, or all). */
  agents(id?: string): ReadonlyArray<Readonly<AgentEntry>> {
    return this.balancer.agents(id);
  }

  /** User requests being served. */
  get inflight(): number {
    return this.active.size;
  }

  /**
   * Graceful drain: new requests and agents get 503, requests in flight finish (up to `timeout`,
   * then they are cut off), agents are closed (1001) and, in `listen` mode, the server is closed.
   */
  drain(timeout: number = this.drainTimeout): Promise<void> {
    this.draining ??= this.runDrain(timeout);
    return this.draining;
  }

  /** Closes at once: requests in flight are cut off. */
  close(): Promise<void> {
    return this.drain(0);
  }

  private async runDrain(timeout: number): Promise<void> {
    if (this.state === 'new') {
      this.state = 'closed';
      return;
    }
    this.state = 'draining';
    this.logger.info('draining', { inflight: this.active.size, timeout });
    // Peers stop routing here at once (what still comes is answered as a miss, and retried there).
    const deregistered = this.registry?.close();
    if (this.active.size > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = await Promise.race([
        new Promise<boolean>((resolve) => this.idleWaiters.push(() => resolve(false))),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), timeout);
        }),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        this.logger.warn('drain timed out; cutting off requests in flight', { inflight: this.active.size });
        for (const exchange of [...this.active]) exchange.abort();
      }
    }
    await this.server?.shutdown({ timeout: 1000 });
    this.agentsStopped = true;
    await deregistered;
    const pools = [...this.peerPools.values()];
    this.peerPools.clear();
    await Promise.all(pools.map((pool) => pool.destroy().catch(() => {})));
    const http = this.http;
    // On a server the application owns, the listeners stay and answer 503 from now on: removed,
    // they would leave the application's users without any answer.
    if (this.ownsHttp) this.detach?.();
    if (this.ownsHttp && http !== undefined) {
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeIdleConnections();
        // Keep-alive connections still open after the drain have nothing left to finish.
        setTimeout(() => http.closeAllConnections(), 100).unref();
      });
    }
    this.state = 'closed';
    this.logger.info('closed');
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  // ------------------------------------------------------------------ agents

  /**
   * An agent's upgrade: draining (503), then its credentials (401), then its tunnel version (426).
   *
   * Credentials come first. Until a peer has shown a token, the proxy tells it nothing about
   * itself, and the 426 does: which tunnel versions it speaks, so roughly which build it runs.
   * Nothing is lost by it: an agent with good credentials and an old version still gets the 426
   * that names both versions (the one case where that matters), an agent wrong in both ways is
   * told 401 and, once its token is fixed, 426, each answer true. Nor does the 426 let a
   * wrong-version client test tokens: offering the right version already tells 401 from 101.
   */
  private admitAgent(headers: Readonly<Record<string, string | undefined>>, remoteAddress: string): UpgradeVerdict {
    if (this.state !== 'serving') return drainingRefusal;
    const id = headers[AGENT_ID_HEADER];
    if (id === undefined || !isValidClientId(id)) {
      this.logger.warn('agent refused: no valid id', { remoteAddress });
      this.metrics.agentRefused('credentials');
      return credentialsRefusal;
    }
    // Insecure mode still checks the ids that have credentials: a development proxy must not
    // let anybody take over those.
    if (this.auth !== undefined && (!this.insecure || this.knownIds.has(id))) {
      const token = bearerToken(headers.authorization);
      if (token === undefined || !this.auth.verify(id, token)) {
        this.logger.warn('agent refused: bad credentials', { id, remoteAddress });
        this.metrics.agentRefused('credentials');
        return credentialsRefusal;
      }
    }
    const offered = parseProtocolOffer(headers['sec-websocket-protocol']);
    if (offered === undefined) {
      // Not a list of distinct tokens (RFC 6455 §4.1): a broken request, not a version question.
      this.logger.warn('agent refused: malformed Sec-WebSocket-Protocol', { id, remoteAddress });
      this.metrics.agentRefused('version');
      return malformedOfferRefusal;
    }
    const version = chooseTunnelVersion(offered);
    if (version === undefined) {
      const agentVersions = offered.map(tunnelVersionOf).filter((v) => v !== undefined);
      this.logger.warn(
        offered.length === 0
          ? 'agent refused: it offers no tunnel version (an agent from before versions were negotiated)'
          : 'agent refused: no tunnel version in common',
        { id, remoteAddress, agentVersions: agentVersions.slice(0, 16), proxyVersions: TUNNEL_PROTOCOL_VERSIONS },
      );
      this.metrics.agentRefused('version');
      return versionRefusal;
    }
    return {
      accept: true,
      protocol: tunnelProtocol(version),
      info: { id, version, maxInflight: this.agentMaxInflight(headers[AGENT_MAX_INFLIGHT_HEADER], id) },
    };
  }

  /**
   * The most requests in flight this proxy routes to an agent: its own `maxInflightPerAgent`, or
   * the lower limit the agent announced. An agent without the header (an older one) takes the
   * proxy's. A value that is not a positive decimal is ignored rather than refused, so that a
   * later agent may say more in it; the agent refuses past its limit anyway (AGENT_BUSY).
   */
  private agentMaxInflight(announced: string | undefined, id: string): number {
    if (announced === undefined) return this.maxInflightPerAgent;
    if (!/^[1-9][0-9]{0,15}$/.test(announced)) {
      this.logger.warn('agent announced an invalid limit of requests in flight; the proxy applies its own', { id });
      return this.maxInflightPerAgent;
    }
    return Math.min(this.maxInflightPerAgent, Number(announced));
  }

  /**
   * An agent's signal: it drains, or its target's health changed. One that comes before the
   * agent is registered (it can share a read with the ClientConf, which registration awaits) is
   * kept for the registration.
   */
  private onAgentSignal(conn: Connection, name: string, payload: Payload): void {
    let state: Partial<Pick<AgentEntry, 'draining' | 'healthy'>>;
    if (name === SIGNAL_DRAINING) state = { draining: true };
    else if (name === SIGNAL_HEALTH) {
      const text = payloadText(payload);
      if (text !== 'up' && text !== 'down') return;
      state = { healthy: text === 'up' };
    } else return;
    const entry = this.entries.get(conn);
    if (entry === undefined) {
      this.early.set(conn, { ...this.early.get(conn), ...state });
      return;
    }
    this.applyAgentState(entry, state);
  }

  private applyAgentState(entry: AgentEntry, state: Partial<Pick<AgentEntry, 'draining' | 'healthy'>>): void {
    if (state.draining === true && !entry.draining) {
      entry.draining = true;
      this.logger.info('agent draining', { id: entry.id, agent: entry.conn.id });
      this.register(entry.id);
    }
    if (state.healthy !== undefined && state.healthy !== entry.healthy) {
      entry.healthy = state.healthy;
      this.logger[state.healthy ? 'info' : 'warn'](
        state.healthy
          ? "agent's target healthy again"
          : "agent's target unhealthy: other agents of its id are preferred",
        { id: entry.id, agent: entry.conn.id },
      );
      // Peers prefer a proxy with a healthy agent of the id to one with only unhealthy ones.
      this.register(entry.id);
    }
  }

  private async agentConnected(conn: Connection): Promise<void> {
    const { id, version, maxInflight } = conn.info as { id: string; version: number; maxInflight: number };
    if (!(await conn.negotiated())) {
      this.logger.warn('agent refused: it does not speak duplexwire v2.1', { id, agent: conn.id });
      await conn.close(1008, 'agents must speak duplexwire v2.1');
      return;
    }
    if (!conn.isOpen) return;
    const entry: AgentEntry = {
      id,
      conn,
      version,
      connectedAt: Date.now(),
      window: new CreditWindow(this.connectionWindow),
      maxInflight,
      inflight: 0,
      served: 0,
      draining: false,
      healthy: true,
    };
    this.entries.set(conn, entry);
    this.balancer.add(entry);
    this.metrics.know(id);
    this.register(id);
    this.logger.info('agent connected', {
      id,
      agent: conn.id,
      remoteAddress: conn.remoteAddress,
      version,
      maxInflight,
    });
    // What it said before this point, applied (and logged) now, in the same turn: no request can
    // have been routed to it in between.
    const early = this.early.get(conn);
    if (early !== undefined) {
      this.early.delete(conn);
      this.applyAgentState(entry, early);
    }
  }

  private agentDisconnected(conn: Connection, code: number, reason: string): void {
    const entry = this.entries.get(conn);
    if (entry === undefined) return;
    this.entries.delete(conn);
    this.balancer.remove(entry);
    this.register(entry.id);
    this.logger.info('agent disconnected', { id: entry.id, agent: conn.id, code, reason, inflight: entry.inflight });
  }

  /** Writes this proxy's usable agents of `id`, and how many of them are healthy, to the cluster registry. */
  private register(id: string): void {
    if (this.registry === undefined || this.state !== 'serving') return;
    let usable = 0;
    let healthy = 0;
    for (const entry of this.balancer.agents(id)) {
      if (entry.draining || !entry.conn.isOpen) continue;
      usable++;
      if (entry.healthy) healthy++;
    }
    this.registry.set(id, usable, healthy);
  }

  private onAgentRequest(conn: Connection, name: string, payload: Payload): Promise<void> | undefined {
    try {
      const chunk = parseChunk(name, payload);
      if (chunk !== undefined) {
        if (chunk.kind !== MSG_CHUNK)
          throw new RequestError(AgentErrorCode.BadMessage, 'the proxy takes response chunks only');
        return this.exchangeFor(conn, chunk.sid).onChunk(chunk);
      }
      if (name === MSG_HEAD) {
        const head = decodeResponseHead(payload);
        return this.exchangeFor(conn, head.sid).onHead(head);
      }
    } catch (error) {
      if (error instanceof WireError) throw new RequestError(AgentErrorCode.BadMessage, error.message);
      throw error;
    }
    throw new RequestError('UNKNOWN_REQUEST', `unknown request ${JSON.stringify(name)}`);
  }

  private exchangeFor(conn: Connection, sid: string): ProxyExchange {
    const exchange = this.streams.get(sid);
    // Another agent's stream id is as unknown as one that ended.
    if (exchange === undefined || exchange.agent?.conn !== conn) {
      throw new RequestError(AgentErrorCode.UnknownStream, 'no such stream');
    }
    return exchange;
  }

  // ------------------------------------------------------------------ users

  /**
   * Request listener: routes one user request through the tunnel (or serves an ops endpoint).
   * Use it directly when the application decides which requests go to the tunnel.
   */
  handleRequest(req: IncomingMessage, res: ServerResponse): void {
    // Pipelined behind an answer that closes the connection: never served (RFC 9112 §9.6), only
    // read and dropped until the connection closes.
    if (isClosing(req.socket)) {
      req.resume();
      return;
    }
    const fromPeer = this.isClusterRequest(req);
    const sink = fromPeer ? new PeerResponseSink(res, this.lingerTimeout) : new ResponseSink(res, this.lingerTimeout);
    if (this.state !== 'serving') {
      sink.closeConnection = true;
      if (!fromPeer && this.servePublicOps(req, res)) return;
      sink.fail(TunnelErrorCode.ShuttingDown);
      return;
    }
    const prepared = this.prepare(req, false, fromPeer);
    if (prepared.kind === 'ops') {
      if (!this.servePublicOps(req, res)) sink.fail(TunnelErrorCode.MissingClientId);
      return;
    }
    if (prepared.kind === 'error') {
      this.metrics.answered(this.metrics.label(undefined), 400, 0, fromPeer);
      sink.fail(prepared.code);
      return;
    }
    const te = req.headers['transfer-encoding'];
    const cl = req.headers['content-length'];
    const length = cl === undefined ? undefined : Number(cl);
    let bodyMode: BodyMode = BodyMode.None;
    if (te !== undefined) bodyMode = BodyMode.Stream;
    else if (length !== undefined && length > 0)
      bodyMode = length <= INLINE_BODY_LIMIT ? BodyMode.Inline : BodyMode.Stream;
    if (length !== undefined && length > this.maxRequestBody) {
      // Refused before any byte of it is read or anything reaches an agent; the connection
      // closes, lingering (linger.ts) so that the body still arriving does not reset it first.
      this.metrics.answered(this.metrics.label(prepared.id), 413, 0, fromPeer);
      sink.fail(TunnelErrorCode.BodyTooLarge, true);
      return;
    }
    if (bodyMode === BodyMode.None) req.resume();
    this.start(prepared, req, sink, bodyMode, length ?? 0, false, this.maxRequestBody);
  }

  /**
   * Upgrade listener: agents' upgrades are left to the agents' transport; WebSocket upgrades of
   * users are forwarded to the agent's target; anything else gets 400.
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    // Pipelined behind an answer that closes the connection (see handleRequest): the socket is
    // read and dropped until that answer's lingering close ends it.
    if (isClosing(socket)) {
      socket.resume();
      return;
    }
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const isWebSocket = req.headers.upgrade?.toLowerCase() === 'websocket';
    // While draining, the agents' transport refuses agents itself (503). Once it stopped it is
    // gone, before the drain ends (the registry is still being left): an agent reconnecting then
    // must get the 503 from here, or its socket would wait for an answer that never comes.
    if (path === this.agentsPath && isWebSocket && !this.agentsStopped) return;
    if (this.state !== 'serving') {
      writeRawError(socket, TunnelErrorCode.ShuttingDown, this.lingerTimeout);
      return;
    }
    if (!isWebSocket || !this.upgrades || path === this.agentsPath) {
      writeRawError(socket, TunnelErrorCode.UpgradeNotSupported, this.lingerTimeout);
      return;
    }
    const fromPeer = this.isClusterRequest(req);
    const prepared = this.prepare(req, true, fromPeer);
    if (prepared.kind !== 'routed') {
      writeRawError(
        socket,
        prepared.kind === 'ops' ? TunnelErrorCode.MissingClientId : prepared.code,
        this.lingerTimeout,
      );
      return;
    }
    if (head.length > 0) socket.unshift(head);
    const sink = fromPeer ? new PeerSocketSink(socket, this.lingerTimeout) : new SocketSink(socket, this.lingerTimeout);
    this.start(prepared, socket, sink, BodyMode.Stream, 0, true, Number.POSITIVE_INFINITY);
  }

  /**
   * True for a request another proxy of the cluster forwarded, signed for this proxy with the
   * cluster secret, and never seen before. A bad, stale or replayed signature makes it an
   * ordinary request (its cluster headers are stripped like any tunnel header): outside users
   * cannot make the proxy skip routing or the X-Forwarded-* rules.
   */
  private isClusterRequest(req: IncomingMessage): boolean {
    const { headers } = req;
    const presented = headers[CLUSTER_AUTH_HEADER];
    if (presented === undefined || this.cluster === undefined) return false;
    const id = headers[CLUSTER_ID_HEADER];
    const timeout = headers[CLUSTER_TIMEOUT_HEADER];
    const verdict =
      typeof presented === 'string' && typeof id === 'string' && typeof timeout === 'string'
        ? this.cluster.verify(presented, {
            audience: this.cluster.advertise,
            method: req.method ?? '',
            target: req.url ?? '',
            id,
            timeout,
          })
        : 'invalid';
    if (verdict === 'ok') return true;
    this.metrics.cluster.refused++;
    this.logger.warn(
      verdict === 'replayed'
        ? 'cluster request refused: its signature was used before (a replay); served as an ordinary request'
        : 'cluster request refused: bad or stale signature; served as an ordinary request',
      { remoteAddress: req.socket.remoteAddress },
    );
    return false;
  }

  private prepare(
    req: IncomingMessage,
    upgrade: boolean,
    fromPeer = false,
  ):
    | { kind: 'ops' }
    | { kind: 'error'; code: TunnelErrorCode }
    | { kind: 'routed'; id: string; url: string; headers: string[]; timeout: number; fromPeer: boolean } {
    const raw = req.rawHeaders;
    const target = originForm(req.url ?? '');
    // Two Host headers: which one the target believes is anybody's guess (RFC 9112 §3.2).
    if (target === undefined || singleHeader(raw, 'host') === null)
      return { kind: 'error', code: TunnelErrorCode.BadRequest };
    if (fromPeer) return this.preparePeer(raw, target, upgrade);
    const route = this.router.route(target, raw);
    if (route.kind === 'none') return { kind: 'ops' };
    if (route.kind === 'invalid') return { kind: 'error', code: TunnelErrorCode.InvalidClientId };
    const timeoutValues = headerValues(raw, this.timeoutHeader);
    if (timeoutValues.length > 1) return { kind: 'error', code: TunnelErrorCode.InvalidTimeout };
    const timeout = chooseTimeout(timeoutValues[0], this.requestTimeout, this.maxRequestTimeout);
    if (!timeout.ok) return { kind: 'error', code: TunnelErrorCode.InvalidTimeout };
    const filtered = filterHeaders(raw, { strip: this.stripHeaders, upgrade });
    const headers = addForwarded(filtered, {
      remoteAddress: req.socket.remoteAddress ?? '',
      proto: (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http',
      host: req.headers.host,
      mode: this.forwarded,
    });
    return { kind: 'routed', id: route.id, url: route.url, headers, timeout: timeout.ms, fromPeer: false };
  }

  /**
   * A cluster request: the forwarding proxy routed it already (id in a header, target as the
   * agent sees it) and wrote X-Forwarded-* as it saw the user; its deadline comes along.
   */
  private preparePeer(
    raw: readonly string[],
    target: string,
    upgrade: boolean,
  ):
    | { kind: 'error'; code: TunnelErrorCode }
    | { kind: 'routed'; id: string; url: string; headers: string[]; timeout: number; fromPeer: true } {
    const id = singleHeader(raw, CLUSTER_ID_HEADER);
    if (typeof id !== 'string' || !isValidClientId(id)) return { kind: 'error', code: TunnelErrorCode.InvalidClientId };
    const left = Number(singleHeader(raw, CLUSTER_TIMEOUT_HEADER));
    // Capped here too: the forwarding proxy capped it with its own maximum, and this one's holds
    // for the agents it serves whatever a peer (or a holder of the secret) asks.
    const timeout = Number.isInteger(left) && left >= 1 ? Math.min(left, this.maxRequestTimeout) : this.requestTimeout;
    this.metrics.cluster.forwardedIn++;
    const headers = filterHeaders(raw, { strip: this.stripHeaders, upgrade });
    return { kind: 'routed', id, url: target, headers, timeout, fromPeer: true };
  }

  private start(
    prepared: { id: string; url: string; headers: string[]; timeout: number; fromPeer: boolean },
    source: IncomingMessage | Duplex,
    sink: Sink,
    bodyMode: BodyMode,
    inlineLength: number,
    upgrade: boolean,
    maxBody: number,
  ): void {
    const init: ExchangeInit = {
      id: prepared.id,
      method: (source as IncomingMessage).method ?? 'GET',
      url: prepared.url,
      headers: prepared.headers,
      source,
      sink,
      bodyMode,
      inlineLength,
      upgrade,
      timeout: prepared.timeout,
      maxBody,
      fromPeer: prepared.fromPeer,
    };
    // No usable agent here (none, or all full or draining), or only unhealthy ones: a peer's
    // healthy agent may take it (then this proxy's unhealthy one, then a peer's unhealthy one).
    // A request from a peer is never forwarded again, so none can go round in circles.
    const forwardHost = prepared.fromPeer ? undefined : this.forwardHost;
    const here = forwardHost === undefined ? undefined : this.balancer.pick(prepared.id);
    if (forwardHost !== undefined && (here === undefined || !here.healthy)) {
      const forward = new ForwardExchange(forwardHost, {
        ...init,
        source,
        hasBody: bodyMode !== BodyMode.None,
        unhealthyHere: here !== undefined,
        local: (timeout, replay) => this.startLocal({ ...init, timeout, replay }),
      });
      this.active.add(forward);
      void forward.run();
      return;
    }
    this.startLocal(init);
  }

  private startLocal(init: ExchangeInit): void {
    const exchange = new ProxyExchange(this.host, init);
    this.active.add(exchange);
    void exchange.run();
  }

  // ------------------------------------------------------------------ ops

  /** What /readyz and the status page say of the cluster. */
  private clusterState(): ClusterState | undefined {
    if (this.cluster === undefined || this.registry === undefined) return undefined;
    const stats = this.metrics.cluster;
    return {
      advertise: this.cluster.advertise,
      registry: this.registry.lastError === undefined ? 'ok' : 'failing',
      forwardedOut: stats.forwardedOut,
      forwardedIn: stats.forwardedIn,
      peerFailures: stats.peerFailures,
    };
  }

  private servePublicOps(req: IncomingMessage, res: ServerResponse): boolean {
    if (this.publicOps === 'none') return false;
    return this.serveOps(req, res, this.publicOps === 'all');
  }

  /**
   * Serves the operational endpoints (health, readiness, metrics, status page); returns false
   * when `req` is not for one of them. Use it to serve them on a separate (private) listener:
   * `http.createServer((req, res) => proxy.serveOps(req, res) || notFound(res))`.
   */
  serveOps(req: IncomingMessage, res: ServerResponse, all = true): boolean {
    const ops = this.ops;
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    const send = (status: number, type: string, body: string): void => {
      res.writeHead(status, {
        'Content-Type': type,
        'Cache-Control': 'no-store',
        'Content-Length': Buffer.byteLength(body),
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (path === ops.healthz) {
      send(200, 'application/json', JSON.stringify({ status: 'ok' }));
      return true;
    }
    if (path === ops.readyz) {
      const ready = this.ready;
      // Redis failing does not make the proxy unready: its own agents still serve.
      const cluster = this.clusterState();
      send(
        ready ? 200 : 503,
        'application/json',
        JSON.stringify({ status: ready ? 'ready' : this.state, ...(cluster === undefined ? {} : { cluster }) }),
      );
      return true;
    }
    if (!all) return false;
    if (path === ops.metrics) {
      this.metrics.registry.metrics().then(
        (text) => send(200, this.metrics.registry.contentType, text),
        (error: unknown) => {
          this.logger.error('metrics failed', { error });
          send(500, 'text/plain', 'metrics failed');
        },
      );
      return true;
    }
    if (path === ops.status) {
      send(
        200,
        'text/html; charset=utf-8',
        renderStatusPage({
          agents: this.balancer.agents(),
          stats: this.metrics.stats,
          draining: this.state !== 'serving',
          startedAt: this.startedAt,
          now: Date.now(),
          cluster: this.clusterState(),
        }),
      );
      return true;
    }
    return false;
  }
}
