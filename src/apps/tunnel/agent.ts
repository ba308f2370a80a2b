/**
 * The private side of the tunnel: dials out to the proxy (a duplexwire Client: reconnect with
 * exponential backoff and jitter, heartbeat), authenticates with its id and token, and performs
 * each request the proxy sends against its target: a URL, an in-process Node `(req, res)`
 * handler, or a fetch-style `(Request) => Response` handler.
 */
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import {
  Client,
  ConnectError,
  type IncomingMessage as DuplexwireMessage,
  InvalidArgumentError,
  InvalidStateError,
  type Logger,
  type Payload,
  type ReconnectOptions,
  type RequestContext,
  RequestError,
  utf8,
} from '../../index.ts';
import type { ClientTransport } from '../../../transports/types.ts';
import { type WsClientTlsOptions, wsClientTransport } from '../../../transports/ws.ts';
import { FetchExchange, type FetchHandler } from './agent-fetch.ts';
import { type HttpTarget, HttpExchange } from './agent-http.ts';
import { ResponseSender } from './agent-relay.ts';
import { CreditWindow } from './flow.ts';
import { type HealthCheckOptions, resolveHealthCheck, TargetHealth } from './health.ts';
import { errorBody, TunnelErrorCode } from './http-errors.ts';
import { jsonLogger } from '../shared/log.ts';
import {
  AGENT_ID_HEADER,
  AGENT_MAX_INFLIGHT_HEADER,
  DEFAULT_AGENT_MAX_INFLIGHT,
  DEFAULT_CHUNK_SIZE,
  DEFAULT_CONNECTION_WINDOW,
  DEFAULT_DRAIN_TIMEOUT,
  DEFAULT_STREAM_WINDOW,
  MAX_INFLIGHT_LIMIT,
} from './constants.ts';
import { checkInteger } from '../../util/validate.ts';
import { durationOption } from './timeout.ts';
import { isValidClientId } from './tokens.ts';
import {
  AgentErrorCode,
  decodeHttpHead,
  encodeHttpReply,
  MSG_BODY,
  MSG_HTTP,
  parseChunk,
  SIGNAL_DRAINING,
  SIGNAL_HEALTH,
  TUNNEL_PROTOCOL_VERSIONS,
  TunnelVersionError,
  tunnelProtocol,
  tunnelVersionOf,
  WireError,
} from './wire.ts';

/** A Node request listener, as given to `http.createServer`. */
export type NodeHandler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export interface TunnelAgentOptions {
  /** The proxy's agents endpoint, e.g. `wss://tunnel.example.com/_tunnel`. */
  readonly proxyUrl: string;
  /** The client id this agent serves. */
  readonly id: string;
  /** This id's token (see `duplexwire tunnel token`). */
  readonly token: string;
  /** Where requests go: `http://127.0.0.1:3000` (a path is prefixed to every request path). */
  readonly target?: string | URL;
  /**
   * An in-process handler instead of a target URL: a Node `(req, res)` listener or a fetch-style
   * `(request) => response`. Told apart by arity (2 = Node) unless `handlerType` says.
   */
  readonly handler?: NodeHandler | FetchHandler;
  readonly handlerType?: 'node' | 'fetch';
  /** The Host header the target sees: the user's (`preserve`) or the target's (`rewrite`). @default 'preserve' */
  readonly hostHeader?: 'preserve' | 'rewrite';
  /** Reconnect policy of the connection to the proxy. @default exponential backoff with jitter, forever */
  readonly reconnect?: boolean | ReconnectOptions;
  /** TLS settings for a `wss:` proxy URL. */
  readonly tls?: WsClientTlsOptions;
  /**
   * An HTTP proxy the agent reaches the tunnel proxy through, with CONNECT, for networks whose
   * only way out is such a proxy: `http://egress.internal:3128`, `user:password@` in it for
   * Basic authentication (see `proxy` of `wsClientTransport`). The target is reached directly.
   * @default a direct connection
   */
  readonly egressProxy?: string | URL;
  /** TLS settings for an `https:` target (e.g. `{ rejectUnauthorized: false }` for a self-signed one). */
  readonly targetTls?: { readonly ca?: string | Buffer; readonly rejectUnauthorized?: boolean };
  /**
   * Health checks of `target`: a GET of `path` every `interval` (10 s); after `failures` (3) in a
   * row without a 2xx within `timeout` (2 s) the agent tells the proxy its target is unhealthy,
   * and the proxy sends the id's requests to its other agents while any is healthy. The first
   * passing check makes it healthy again. Only with `target`. @default no checks
   */
  readonly healthCheck?: HealthCheckOptions;
  /**
   * Requests performed against the target at once, 1..16,384: the agent's own bound on the load
   * it puts on its target, whatever the proxy sends. One more is refused unperformed (the proxy
   * tries another agent of the id, or answers 503 `AGENTS_BUSY`), and the limit is announced to
   * the proxy at connect, which then sends no more than it (nor more than its own
   * `maxInflightPerAgent`). A WebSocket passed through counts as one for as long as it is open:
   * it holds a connection to the target. Body chunks of a request are not counted again.
   * @default 1024 (the proxy's default `maxInflightPerAgent`)
   */
  readonly maxInflight?: number;
  /** How long `close()` lets requests in flight finish. @default 30 s */
  readonly drainTimeout?: number | string;
  /** @default JSON lines on stderr, level info */
  readonly logger?: Logger;
  /** Advanced: bytes per body chunk. @default 64 KiB */
  readonly chunkSize?: number;
  /** Advanced: unacked response bytes per stream. @default 2 MiB */
  readonly streamWindow?: number;
  /** Advanced: unacked response bytes per connection. @default 4 MiB */
  readonly connectionWindow?: number;
}

type Exchange = HttpExchange | FetchExchange;

type Target =
  | { readonly kind: 'http'; readonly http: HttpTarget }
  | { readonly kind: 'fetch'; readonly handler: FetchHandler }
  | { readonly kind: 'node'; readonly handler: NodeHandler };

/**
 * The agent's connections to its target: kept alive between requests, and without undici's own
 * header and body timeouts (the proxy's deadline and the user decide how long a response takes).
 */
function targetPool(origin: string, options: Pool.Options = {}): Pool {
  return new Pool(origin, { headersTimeout: 0, bodyTimeout: 0, ...options });
}

function targetUrl(target: string | URL): URL {
  try {
    return new URL(String(target));
  } catch {
    throw new InvalidArgumentError(
      `target must be an absolute http: or https: URL, got ${JSON.stringify(String(target))}`,
    );
  }
}

function httpTarget(url: URL, hostHeader: 'preserve' | 'rewrite', dispatcher: Pool): HttpTarget {
  return { basePath: url.pathname.replace(/\/+$/, ''), host: url.host, hostHeader, dispatcher };
}

/**
 * The proxy URL as it may be logged: without the credentials of a `user:password@` (sent as Basic
 * authentication to whatever stands in front of the proxy) nor its query (`?token=...`).
 * Undefined when it has neither: then it is logged as it is.
 */
function loggableProxyUrl(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined; // the client refuses it (InvalidArgumentError) before anything is logged
  }
  if (parsed.username === '' && parsed.password === '' && parsed.search === '') return undefined;
  return `${parsed.protocol}//${parsed.username === '' && parsed.password === '' ? '' : '***@'}${parsed.host}${parsed.pathname}${parsed.search === '' ? '' : '?…'}`;
}

/** `text` with every `secret` in it replaced. */
function withoutSecret(text: string, secret: string, replacement: string): string {
  return text.includes(secret) ? text.split(secret).join(replacement) : text;
}

/**
 * An error whose message names `secret` (the client's connect errors name the URL) as a copy
 * without it: same class and fields (code, status, ...), its stack cleaned too, no cause (which
 * may repeat it).
 */
function errorWithoutSecret(error: Error, secret: string, replacement: string): Error {
  if (!error.message.includes(secret)) return error;
  const copy = Object.assign(Object.create(Object.getPrototypeOf(error) as object) as Error, error);
  Object.defineProperty(copy, 'message', {
    value: withoutSecret(error.message, secret, replacement),
    writable: true,
    configurable: true,
  });
  Object.defineProperty(copy, 'stack', {
    value: withoutSecret(error.stack ?? '', secret, replacement),
    writable: true,
    configurable: true,
  });
  return copy;
}

/**
 * `logger` with the proxy URL replaced by its loggable form in every line, the client's own ones
 * too (`url` of a failed attempt, the message of a ConnectError).
 */
function redactingLogger(logger: Logger, secret: string, replacement: string): Logger {
  const clean = (value: unknown): unknown => {
    if (typeof value === 'string') return withoutSecret(value, secret, replacement);
    if (value instanceof Error) return errorWithoutSecret(value, secret, replacement);
    return value;
  };
  const at =
    (write: Logger['info']): Logger['info'] =>
    (message, context) => {
      if (context === undefined) return write(message);
      const out: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(context)) out[key] = clean(value);
      write(message, out);
    };
  return {
    error: at(logger.error.bind(logger)),
    warn: at(logger.warn.bind(logger)),
    info: at(logger.info.bind(logger)),
    debug: at(logger.debug.bind(logger)),
  };
}

/**
 * The TunnelVersionError a refused upgrade means, or undefined: a 426, with the versions the
 * proxy speaks when its body is the tunnel's `TUNNEL_VERSION_UNSUPPORTED` answer.
 */
function versionRefusal(error: unknown): TunnelVersionError | undefined {
  if (!(error instanceof ConnectError) || error.status !== 426) return undefined;
  let proxyVersions: number[] | undefined;
  try {
    const body = JSON.parse(error.body ?? '') as { code?: unknown; supported?: unknown };
    const supported = body.supported;
    if (
      body.code === 'TUNNEL_VERSION_UNSUPPORTED' &&
      Array.isArray(supported) &&
      supported.every((v) => Number.isSafeInteger(v) && v > 0)
    ) {
      proxyVersions = supported as number[];
    }
  } catch {
    // Not the proxy's JSON (something in front of it, or a cut body): the versions stay unknown.
  }
  return new TunnelVersionError(TUNNEL_PROTOCOL_VERSIONS, proxyVersions, { cause: error });
}

/**
 * A tunnel agent.
 *
 * @example
 * const agent = new TunnelAgent({
 *   proxyUrl: 'ws://127.0.0.1:8080/_tunnel', id: '4711', token, target: 'http://127.0.0.1:3000',
 * });
 * await agent.start();
 * // ... later
 * await agent.close();
 *
 * @example In-process
 * new TunnelAgent({ proxyUrl, id, token, handler: (req: Request) => new Response('hi') });
 */
export class TunnelAgent {
  readonly id: string;
  /** The duplexwire client under the agent, for its events (`connect`, `disconnect`, ...). */
  readonly client: Client;
  private readonly target: Target;
  private readonly logger: Logger;
  private readonly exchanges = new Map<string, Exchange>();
  private readonly chunkSize: number;
  private readonly streamWindow: number;
  private readonly connectionWindow: number;
  private readonly drainTimeout: number;
  /** Requests performed at once (`maxInflight`). */
  readonly maxInflight: number;
  private readonly hostHeader: 'preserve' | 'rewrite';
  /** Connections to the target URL, or to the private socket of the Node handler. */
  private targetPool: Pool | undefined;
  private window: CreditWindow;
  private draining = false;
  private closing: Promise<void> | undefined;
  private nodeServer: { server: HttpServer; dir: string | undefined; target: HttpTarget } | undefined;
  private nodeServerStarting: Promise<HttpTarget> | undefined;
  private idleWaiters: Array<() => void> = [];
  /** The target's health checks (`healthCheck`). */
  private readonly health: TargetHealth | undefined;
  /** The proxy URL and what logs and errors say instead, when it holds credentials or a query. */
  private readonly secretUrl: { readonly url: string; readonly replacement: string } | undefined;

  constructor(options: TunnelAgentOptions) {
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options are required');
    if (typeof options.id !== 'string' || !isValidClientId(options.id)) {
      throw new InvalidArgumentError('option id must be a client id: letters, digits, _ . - (up to 63)');
    }
    if (typeof options.token !== 'string' || options.token.length === 0)
      throw new InvalidArgumentError('option token is required');
    if ((options.target === undefined) === (options.handler === undefined)) {
      throw new InvalidArgumentError('give exactly one of target (a URL) and handler');
    }
    this.id = options.id;
    const logger = options.logger ?? jsonLogger({ fields: { component: 'tunnel-agent', id: options.id } });
    const replacement = typeof options.proxyUrl === 'string' ? loggableProxyUrl(options.proxyUrl) : undefined;
    this.secretUrl = replacement === undefined ? undefined : { url: options.proxyUrl, replacement };
    this.logger = replacement === undefined ? logger : redactingLogger(logger, options.proxyUrl, replacement);
    this.hostHeader = options.hostHeader ?? 'preserve';
    if (this.hostHeader !== 'preserve' && this.hostHeader !== 'rewrite') {
      throw new InvalidArgumentError("option hostHeader must be 'preserve' or 'rewrite'");
    }
    this.chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    this.streamWindow = options.streamWindow ?? DEFAULT_STREAM_WINDOW;
    this.connectionWindow = options.connectionWindow ?? DEFAULT_CONNECTION_WINDOW;
    if (!(this.chunkSize >= 1 && this.chunkSize <= 512 * 1024))
      throw new InvalidArgumentError('option chunkSize must be 1..512 KiB');
    this.drainTimeout = durationOption('drainTimeout', options.drainTimeout, DEFAULT_DRAIN_TIMEOUT);
    this.maxInflight = checkInteger(
      'maxInflight',
      options.maxInflight ?? DEFAULT_AGENT_MAX_INFLIGHT,
      1,
      MAX_INFLIGHT_LIMIT,
    );
    this.window = new CreditWindow(this.connectionWindow);
    const url = options.target === undefined ? undefined : targetUrl(options.target);
    if (url !== undefined) {
      if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        throw new InvalidArgumentError(`target must be an http: or https: URL, got ${url.protocol}`);
      }
      const tls = options.targetTls;
      this.targetPool = targetPool(url.origin, {
        ...(tls === undefined
          ? {}
          : {
              connect: {
                ...(tls.ca === undefined ? {} : { ca: tls.ca }),
                ...(tls.rejectUnauthorized === undefined ? {} : { rejectUnauthorized: tls.rejectUnauthorized }),
              },
            }),
      });
      this.target = { kind: 'http', http: httpTarget(url, this.hostHeader, this.targetPool) };
      if (options.healthCheck !== undefined) {
        this.health = new TargetHealth(
          resolveHealthCheck(options.healthCheck),
          this.target.http,
          () => this.sendHealth(),
          this.logger,
        );
      }
    } else {
      if (options.healthCheck !== undefined)
        throw new InvalidArgumentError('option healthCheck needs a target URL (a handler runs in this process)');
      const handler = options.handler!;
      if (typeof handler !== 'function') throw new InvalidArgumentError('option handler must be a function');
      const kind = options.handlerType ?? (handler.length >= 2 ? 'node' : 'fetch');
      this.target =
        kind === 'node'
          ? { kind: 'node', handler: handler as NodeHandler }
          : { kind: 'fetch', handler: handler as FetchHandler };
    }
    let transport: ClientTransport;
    try {
      transport = wsClientTransport({
        // The answers to many requests go over this one connection: those of one I/O phase share
        // a write (~10% less CPU per request under load).
        writeBatching: 'immediate',
        ...(options.tls === undefined ? {} : { tls: options.tls }),
        ...(options.egressProxy === undefined ? {} : { proxy: options.egressProxy }),
      });
    } catch (error) {
      throw new InvalidArgumentError(`option egressProxy: ${(error as Error).message}`, { cause: error });
    }
    this.client = new Client(options.proxyUrl, {
      transport,
      headers: {
        [AGENT_ID_HEADER]: options.id,
        authorization: `Bearer ${options.token}`,
        // The proxy sends no more than this at once; an older one ignores it, and onHttp refuses
        // what goes past it.
        [AGENT_MAX_INFLIGHT_HEADER]: String(this.maxInflight),
      },
      // Every tunnel version this agent speaks: the proxy answers with the highest it speaks too,
      // or refuses the upgrade with 426 (wire.ts).
      protocols: TUNNEL_PROTOCOL_VERSIONS.map(tunnelProtocol),
      // Like a 401, a 426 is not retried (the client gives up on 4xx other than 408 and 429):
      // only upgrading one side can change the answer.
      reconnect: options.reconnect ?? true,
      // A proxy that vanished without closing (partition, frozen host) is noticed in 30 s, not
      // when TCP gives up: the client pings it and reconnects after 30 s of silence.
      serverTimeout: 30_000,
      autoConnect: false,
      // Every exchange and every body chunk runs at once: a slow target must never hold another.
      // How many exchanges run is `maxInflight`'s business (onHttp), not these: body chunks are
      // requests too, and must never be refused for the exchanges they belong to.
      concurrency: 65_536,
      maxInflightRequests: 65_536,
      logger: this.logger,
      onRequest: (message, context) => this.onRequest(message, context),
    });
    this.client.on('connect', () => {
      // Credit belongs to one connection: the acks of the previous one will never come.
      this.window = new CreditWindow(this.connectionWindow);
      this.logger.info('connected to the proxy', { url: this.client.url, version: this.version });
      // The proxy takes a new connection's agent as healthy.
      if (this.health?.healthy === false) this.sendHealth();
    });
    this.client.on('disconnect', ({ code, reason }) =>
      this.logger.warn('disconnected from the proxy', { code, reason }),
    );
    this.client.on('reconnecting', ({ attempt, delay }) => this.logger.info('reconnecting', { attempt, delay }));
    this.client.on('error', (error) => {
      const refusal = versionRefusal(error);
      if (refusal === undefined) {
        this.logger.warn('connection to the proxy failed', { error });
        return;
      }
      // Once, at error level: the client gives up on it, so nothing else would say why.
      this.logger.error('the proxy speaks none of the tunnel versions of this agent; not retrying', {
        agentVersions: refusal.agentVersions,
        proxyVersions: refusal.proxyVersions,
        message: refusal.message,
      });
    });
  }

  /**
   * Connects. Resolves once connected (the agent then reconnects by itself whenever the
   * connection drops); rejects when the proxy refuses the credentials (ConnectError, 401), speaks
   * none of the agent's tunnel versions (TunnelVersionError, 426), or the agent is closed.
   */
  async start(): Promise<void> {
    if (this.closing !== undefined) throw new InvalidStateError('the agent is closed');
    if (this.target.kind === 'node') await this.nodeTarget();
    this.health?.start();
    try {
      await this.client.connect();
    } catch (error) {
      // The client gave up for good (refused, or closed): checking the target for a proxy that
      // will never hear of it would go on forever. A later start() checks again.
      this.health?.stop();
      const refusal = versionRefusal(error) ?? error;
      const secret = this.secretUrl;
      // Its message is printed (the command line does): without the URL's credentials.
      throw secret !== undefined && refusal instanceof Error
        ? errorWithoutSecret(refusal, secret.url, secret.replacement)
        : refusal;
    }
  }

  /** True while connected to the proxy. */
  get connected(): boolean {
    return this.client.isConnected;
  }

  /** The tunnel version settled with the proxy on the current connection; undefined while not connected. */
  get version(): number | undefined {
    const protocol = this.client.protocol;
    return protocol === undefined ? undefined : tunnelVersionOf(protocol);
  }

  /** Requests being performed. */
  get inflight(): number {
    return this.exchanges.size;
  }

  /** False while the target fails its health checks (always true without `healthCheck`). */
  get healthy(): boolean {
    return this.health?.healthy ?? true;
  }

  /** Tells the proxy the target's health, when connected (else after the next connect). */
  private sendHealth(): void {
    if (!this.client.isConnected || this.health === undefined) return;
    this.client.signal(SIGNAL_HEALTH, utf8(this.health.healthy ? 'up' : 'down'));
  }

  /**
   * Drains and closes: the proxy is told to route nothing new here, new requests are refused
   * (the proxy retries them on another agent), requests in flight finish (up to `timeout`),
   * then the connection closes.
   */
  close(timeout: number = this.drainTimeout): Promise<void> {
    this.closing ??= this.runClose(timeout);
    return this.closing;
  }

  private async runClose(timeout: number): Promise<void> {
    this.health?.stop();
    this.draining = true;
    this.client.signal(SIGNAL_DRAINING, { encoding: 'binary', data: new Uint8Array(0) });
    if (this.exchanges.size > 0 && timeout > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.idleWaiters.push(resolve)),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, timeout);
        }),
      ]);
      clearTimeout(timer);
    }
    await this.client.close(1001, 'agent closing');
    await this.targetPool?.destroy();
    const node = this.nodeServer;
    if (node !== undefined) {
      await new Promise<void>((resolve) => {
        node.server.close(() => resolve());
        node.server.closeAllConnections();
      });
      if (node.dir !== undefined) await rm(node.dir, { recursive: true, force: true });
    }
  }

  /** The private socket in front of a Node handler, started once. */
  private nodeTarget(): Promise<HttpTarget> {
    if (this.nodeServer !== undefined) return Promise.resolve(this.nodeServer.target);
    this.nodeServerStarting ??= (async () => {
      const target = this.target as { kind: 'node'; handler: NodeHandler };
      const logger = this.logger;
      const server = createServer({ requestTimeout: 0 }, (req, res) => {
        // A throwing handler must not take the agent down: the user gets a 500.
        const failed = (error: unknown): void => {
          logger.error('handler failed', { error });
          if (res.headersSent) {
            res.destroy();
            return;
          }
          const body = errorBody(TunnelErrorCode.AgentHandlerFailed);
          res.writeHead(500, {
            'content-type': 'application/json; charset=utf-8',
            'content-length': Buffer.byteLength(body),
          });
          res.end(body);
        };
        try {
          const result = target.handler(req, res);
          if (result instanceof Promise) result.catch(failed);
        } catch (error) {
          failed(error);
        }
      });
      // A private socket: a directory only this user can enter (named pipes on Windows).
      let dir: string | undefined;
      let socketPath: string;
      if (process.platform === 'win32') {
        socketPath = `\\\\?\\pipe\\duplexwire-tunnel-${randomBytes(12).toString('hex')}`;
      } else {
        dir = await mkdtemp(join(tmpdir(), 'duplexwire-tunnel-'));
        socketPath = join(dir, 'handler.sock');
      }
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
      this.targetPool = targetPool('http://localhost', { socketPath });
      const http = httpTarget(new URL('http://localhost'), this.hostHeader, this.targetPool);
      this.nodeServer = { server, dir, target: http };
      return http;
    })();
    return this.nodeServerStarting;
  }

  // ------------------------------------------------------------------ requests from the proxy

  private onRequest(message: DuplexwireMessage, context: RequestContext): Promise<Payload> | Promise<void> | undefined {
    try {
      const chunk = parseChunk(message.name, message.payload);
      if (chunk !== undefined) {
        if (chunk.kind !== MSG_BODY) throw new RequestError(AgentErrorCode.BadMessage, 'agents take body chunks only');
        const exchange = this.exchanges.get(chunk.sid);
        if (exchange === undefined) throw new RequestError(AgentErrorCode.UnknownStream, 'no such stream');
        return exchange.body(chunk.seq, chunk.data, chunk.fin);
      }
      if (message.name === MSG_HTTP) return this.onHttp(message.payload, context);
    } catch (error) {
      if (error instanceof WireError) throw new RequestError(AgentErrorCode.BadMessage, error.message);
      throw error;
    }
    throw new RequestError('UNKNOWN_REQUEST', `unknown request ${JSON.stringify(message.name)}`);
  }

  private onHttp(payload: Payload, context: RequestContext): Promise<Payload> {
    if (this.draining) throw new RequestError(AgentErrorCode.Draining, 'the agent is draining');
    // Refused before anything of it is read or done: the proxy retries it elsewhere (or answers
    // 503). A proxy that learned the limit gets here only in a race: it counts a request it
    // canceled as over at once, while the exchange here may still be ending.
    if (this.exchanges.size >= this.maxInflight) {
      this.logger.debug('request refused: at maxInflight', { maxInflight: this.maxInflight });
      throw new RequestError(
        AgentErrorCode.Busy,
        `the agent is at its limit of ${this.maxInflight} requests in flight`,
      );
    }
    const head = decodeHttpHead(payload);
    if (this.exchanges.has(head.sid)) throw new RequestError(AgentErrorCode.BadMessage, 'stream id in use');
    const window = this.window;
    // The cancellation rather than the signal: no EventTarget per request (a tenth of the agent's
    // work on small requests), and every unacked response chunk listens to it. A fetch handler
    // gets the AbortSignal its Request needs.
    const cancellation = context.cancellation;
    const sender = (): ResponseSender =>
      new ResponseSender(this.client, head.sid, cancellation, window, this.streamWindow, this.chunkSize);
    const target = this.target;
    let exchange: Exchange;
    if (target.kind === 'fetch') {
      exchange = new FetchExchange(head, target.handler, context.signal, sender, this.logger);
    } else {
      // The Node handler's socket exists from start() on.
      const http = target.kind === 'http' ? target.http : this.nodeServer?.target;
      if (http === undefined) throw new RequestError(AgentErrorCode.HandlerFailed, 'the agent is not started');
      exchange = new HttpExchange(head, http, cancellation, sender);
    }
    // Registered before anything is awaited: the body chunks that follow must find it.
    this.exchanges.set(head.sid, exchange);
    return exchange.run().then(
      (reply) => {
        this.forget(head.sid);
        return encodeHttpReply(reply);
      },
      (error: unknown) => {
        this.forget(head.sid);
        throw error;
      },
    );
  }

  private forget(sid: string): void {
    this.exchanges.delete(sid);
    if (this.exchanges.size === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }
}
