import type { UpgradeRequest } from '../../transports/types.ts';
import type { ServerTransport } from '../../transports/types.ts';
import { InvalidArgumentError } from '../errors.ts';
import type { TopicBus } from '../cluster/bus.ts';
import { consoleLogger, type Logger } from '../logger.ts';
import { DEFAULT_REQUEST_TIMEOUT, type IncomingMessage, type ReplyValue, type RequestContext } from '../peer/peer.ts';
import { FileSessionManager } from '../session/file-store.ts';
import { defaultKeyGenerator, type SessionKeyGenerator, type SessionManager } from '../session/session.ts';
import { checkFunction, checkInteger, MAX_TIMER_DELAY, subProtocolBytes } from '../util/validate.ts';
import type { SessionSettings } from './session-registry.ts';
import type { Connection } from './connection.ts';

/** @default 1 MiB */
export const DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024;
/** @default 60 s */
export const DEFAULT_READ_TIMEOUT = 60_000;
/** Handlers running at once per connection. @default 32 */
export const DEFAULT_CONCURRENCY = 32;
/** Requests received and not yet answered per connection. @default 4096 */
export const DEFAULT_MAX_INFLIGHT_REQUESTS = 4096;
/** Outgoing bytes queued for one connection before it is closed as too slow. @default 8 MiB */
export const DEFAULT_MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
/** @default 30 s */
export const DEFAULT_SHUTDOWN_TIMEOUT = 30_000;
/** Topics one connection may subscribe to at once. @default 1024 */
export const DEFAULT_MAX_TOPICS_PER_CONNECTION = 1024;
/** Time `beforeUpgrade` has to decide before the upgrade is refused with 503. @default 10 s */
export const DEFAULT_UPGRADE_TIMEOUT = 10_000;
/**
 * Upgrades an async `beforeUpgrade` may be deciding at once before one more is refused with 503.
 * Room for a reconnect storm (with a 50 ms authentication call, ~20,000 upgrades a second; the
 * clients refused retry with backoff), while what pending upgrades hold stays bounded: 1024
 * sockets, as many calls to the authentication backend, and on the ws transport at most 64 MiB
 * of bytes sent early. @default 1024
 */
export const DEFAULT_MAX_PENDING_UPGRADES = 1024;
/** Where `sessions: true` keeps sessions (relative to the working directory). */
export const DEFAULT_SESSION_DIR = '.duplexwire/sessions';

/** What `beforeUpgrade` decides for one connection attempt. */
export type UpgradeVerdict =
  | boolean
  | undefined
  | void
  | {
      readonly accept: true;
      /** Handlers running at once on this connection (1 = strictly in order). */
      readonly concurrency?: number;
      /** Anything the application wants to keep with the connection (`conn.info`). */
      readonly info?: unknown;
      /**
       * The WebSocket subprotocol to answer with (`Sec-WebSocket-Protocol`): one the client
       * offered, or '' for none; `conn.protocol` tells it later. One the client did not offer
       * refuses the upgrade with 500 (the client would fail the handshake).
       * @default the first one the client offered, or none
       *
       * @example Versioned application messages
       * beforeUpgrade: (req) => {
       *   const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
       *   return offered.includes('chat.2') ? { accept: true, protocol: 'chat.2' } : { accept: false, status: 426 };
       * }
       */
      readonly protocol?: string;
    }
  | {
      readonly accept: false;
      /** HTTP status of the refusal. @default 403 */
      readonly status?: number;
      /** Short body of the refusal, plain text unless `headers` say otherwise. @default the status text */
      readonly reason?: string;
      /**
       * Extra headers of the refusal, e.g. `Retry-After`, or `Content-Type: application/json` for
       * a JSON `reason`. `Connection`, `Content-Length` and `Transfer-Encoding` are the
       * transport's; an invalid name or value turns the refusal into a bare 500.
       */
      readonly headers?: Readonly<Record<string, string>>;
    };

/** Why a connection ended. */
export interface DisconnectInfo {
  /** WebSocket close code (1006 when the connection dropped without a close frame). */
  readonly code: number;
  readonly reason: string;
}

export interface ServerOptions {
  /** Where connections come from, e.g. `wsTransport({ host: '127.0.0.1', port: 8080 })`. */
  readonly transport: ServerTransport;
  /**
   * Answers a request. Return a Payload, bytes (binary), a string (UTF-8) or nothing (an empty
   * reply); throw `RequestError(code, message)` to send an error the client sees. Any other
   * error is logged and the client gets an internal-error reply without details.
   */
  readonly onRequest?: (
    conn: Connection,
    message: IncomingMessage,
    context: RequestContext,
  ) => ReplyValue | Promise<ReplyValue>;
  /** Receives a signal from a client. Errors are logged. */
  readonly onSignal?: (conn: Connection, message: IncomingMessage) => void | Promise<void>;
  /** A connection is open and its AcceptConf sent. */
  readonly onClientConnected?: (conn: Connection) => void | Promise<void>;
  /** A connection ended; its pending work is settled. */
  readonly onClientDisconnected?: (conn: Connection, info: DisconnectInfo) => void | Promise<void>;
  /**
   * Decides on an upgrade before the WebSocket exists: authentication, origin checks,
   * per-connection settings. Returning `false` (or `{ accept: false }`) refuses with 403.
   * A throw refuses with 500 and is logged. A promise that has not settled within
   * `upgradeTimeout` refuses with 503. `request.signal` is aborted when the client goes away
   * before the decision (ws and uWebSockets.js transports): pass it on to an authentication call
   * to stop it; what the hook settles with then is ignored, and nothing is logged.
   */
  readonly beforeUpgrade?: (request: UpgradeRequest) => UpgradeVerdict | Promise<UpgradeVerdict>;
  /**
   * Milliseconds an async `beforeUpgrade` has to settle. Until it does, the client's TCP socket
   * and the transport's upgrade state are held, so a hung auth backend would otherwise pile up
   * half-open upgrades. When the time is up the upgrade is refused with HTTP 503
   * `upgrade decision timed out`, a warning is logged (path and remote address, never headers or
   * query, which may carry credentials), and whatever the hook settles with later is ignored.
   * An integer in 1..2147483647 (the largest delay `setTimeout` honours, ~24.8 days).
   * @default 10000
   *
   * @example
   * new Server({ transport, upgradeTimeout: 2_000, beforeUpgrade: (req) => auth.check(req.headers) });
   */
  readonly upgradeTimeout?: number;
  /**
   * Upgrades an async `beforeUpgrade` may be deciding at once (an integer in 1..1e9). Each holds
   * the client's socket, what it sent early (up to 64 KiB on the ws transport), a timer and
   * whatever the hook started (an authentication call) until the hook settles, the client leaves
   * or `upgradeTimeout` ends: without a bound, a burst of upgrade requests while the hook is slow
   * would run it once per request and hold every socket. One more is refused at once with HTTP
   * 503 `too many pending upgrades`, before the hook runs (clients retry with backoff). With no
   * hook, or one that decides synchronously, nothing is ever pending. Pending upgrades count
   * against `maxConnections` too.
   * @default DEFAULT_MAX_PENDING_UPGRADES (1024)
   *
   * @example
   * // An authentication service that takes at most 100 calls at once.
   * new Server({ transport, maxPendingUpgrades: 100, beforeUpgrade: (req) => auth.check(req.headers) });
   */
  readonly maxPendingUpgrades?: number;
  /**
   * Most connections at once (an integer in 1..1e9), counting those open and the upgrades being
   * decided (`maxPendingUpgrades`), so the sockets the server holds for WebSocket clients stay
   * within it, as Node's `server.maxConnections` counts sockets. An upgrade beyond it is refused
   * with HTTP 503 `too many connections` before `beforeUpgrade` runs. Clients reconnect with
   * backoff.
   * @default unlimited
   */
  readonly maxConnections?: number;
  /**
   * Topics one connection may subscribe to at once (`conn.subscribe()`); one more throws
   * LimitExceededError. Topics are chosen by the application, often from what a client asks for:
   * the limit keeps a client from growing the server's topic map without end. @default 1024
   */
  readonly maxTopicsPerConnection?: number;
  /**
   * Carries `publish` to the server's other processes (`redisTopicBus({ publisher, subscriber })`),
   * which deliver it to their own subscribers. @default none (topics stay in this process)
   */
  readonly bus?: TopicBus;
  /** Largest message accepted, announced in AcceptConf. @default 1 MiB */
  readonly maxMessageSize?: number;
  /** A connection that sends nothing for this long is closed; announced in AcceptConf. @default 60000 */
  readonly readTimeout?: number;
  /**
   * Default timeout of `conn.request()` (server-to-client requests), in ms: a client that never
   * replies cannot hold them, and what they keep, for as long as it stays connected. 0 waits
   * for ever. @default 10000, as the client's
   */
  readonly requestTimeout?: number;
  /** Handlers running at once per connection; 1 handles messages strictly in order. @default 32 */
  readonly concurrency?: number;
  /** Requests received and not yet answered per connection; over it: close 1008. @default 4096 */
  readonly maxInflightRequests?: number;
  /** Outgoing bytes queued for a connection; over it: close 1008. @default 8 MiB */
  readonly maxBufferedBytes?: number;
  /** Sub-protocol announced in AcceptConf; clients must use the same. @default none */
  readonly subProtocol?: string | Uint8Array;
  /** Time `shutdown()` waits for in-flight work before aborting it. @default 30000 */
  readonly shutdownTimeout?: number;
  /**
   * Protocol minor version offered: 1 enables duplexwire v2.1 (server-to-client requests,
   * cancel); 0 behaves exactly as a WebWire v2.0 server. @default 1
   */
  readonly protocolMinor?: 0 | 1;
  /**
   * Enables sessions with this store. `MemorySessionManager`, `FileSessionManager`,
   * `RedisSessionManager` or your own. @default none (sessions disabled, unless `sessions: true`)
   */
  readonly sessionManager?: SessionManager;
  /**
   * `true` enables sessions with the embedded default store, a `FileSessionManager` in
   * `.duplexwire/sessions` under the working directory. Ignored when `sessionManager` is given.
   * @default false
   */
  readonly sessions?: boolean;
  /** Makes and checks session keys. @default 48 CSPRNG bytes, base64url (64 characters) */
  readonly sessionKeyGenerator?: SessionKeyGenerator;
  /** Connections one session may have at once; more restores get reply type 4. 0 = unlimited. @default 0 */
  readonly maxSessionConnections?: number;
  /** Turns the info a store returns into the application's shape when a session is restored. */
  readonly parseSessionInfo?: (info: Readonly<Record<string, unknown>>) => Readonly<Record<string, unknown>>;
  /** @default logs warnings and errors to the console */
  readonly logger?: Logger;
}

export interface ResolvedServerOptions {
  readonly transport: ServerTransport;
  readonly onRequest: ServerOptions['onRequest'];
  readonly onSignal: ServerOptions['onSignal'];
  readonly onClientConnected: ServerOptions['onClientConnected'];
  readonly onClientDisconnected: ServerOptions['onClientDisconnected'];
  readonly beforeUpgrade: ServerOptions['beforeUpgrade'];
  readonly upgradeTimeout: number;
  readonly maxPendingUpgrades: number;
  readonly maxConnections: number;
  readonly maxMessageSize: number;
  readonly readTimeout: number;
  readonly requestTimeout: number;
  readonly concurrency: number;
  readonly maxInflightRequests: number;
  readonly maxBufferedBytes: number;
  readonly maxTopicsPerConnection: number;
  readonly bus: TopicBus | undefined;
  readonly subProtocol: Uint8Array;
  readonly shutdownTimeout: number;
  readonly protocolMinor: 0 | 1;
  readonly logger: Logger;
  /** Null when sessions are disabled. */
  readonly sessions: SessionSettings | null;
  /** True when the server made the store and must close it. */
  readonly ownsSessionManager: boolean;
}

function resolveSessions(options: ServerOptions, logger: Logger): { sessions: SessionSettings | null; owns: boolean } {
  const keyGenerator = options.sessionKeyGenerator ?? defaultKeyGenerator;
  if (typeof keyGenerator.generate !== 'function' || typeof keyGenerator.isValid !== 'function') {
    throw new InvalidArgumentError('option sessionKeyGenerator must have generate() and isValid()');
  }
  const maxConnections = checkInteger('maxSessionConnections', options.maxSessionConnections ?? 0, 0, 1e9);
  let manager = options.sessionManager;
  let owns = false;
  if (manager === undefined) {
    if (options.sessions !== true) return { sessions: null, owns: false };
    manager = new FileSessionManager({ dir: DEFAULT_SESSION_DIR, logger });
    owns = true;
  }
  for (const hook of ['onSessionCreated', 'onSessionLookup', 'onSessionClosed'] as const) {
    if (typeof manager[hook] !== 'function') throw new InvalidArgumentError(`option sessionManager lacks ${hook}()`);
  }
  if ((typeof manager.onSessionAttach === 'function') !== (typeof manager.onSessionDetach === 'function')) {
    throw new InvalidArgumentError(
      'option sessionManager must have both onSessionAttach() and onSessionDetach(), or neither',
    );
  }
  checkFunction('parseSessionInfo', options.parseSessionInfo);
  return {
    sessions: Object.freeze({ manager, keyGenerator, maxConnections, parseInfo: options.parseSessionInfo }),
    owns,
  };
}

const MAX_UINT32 = 0xffff_ffff;

/** Merges defaults, validates and freezes. Throws InvalidArgumentError for anything wrong. */
export function resolveServerOptions(options: ServerOptions): ResolvedServerOptions {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options are required');
  const { transport } = options;
  if (typeof transport?.start !== 'function' || typeof transport.stop !== 'function') {
    throw new InvalidArgumentError('option transport must be a ServerTransport, e.g. wsTransport({ port: 8080 })');
  }
  for (const name of ['onRequest', 'onSignal', 'onClientConnected', 'onClientDisconnected', 'beforeUpgrade'] as const) {
    checkFunction(name, options[name]);
  }
  const protocolMinor = options.protocolMinor ?? 1;
  if (protocolMinor !== 0 && protocolMinor !== 1) throw new InvalidArgumentError('option protocolMinor must be 0 or 1');
  const logger = options.logger ?? consoleLogger;
  const { sessions, owns } = resolveSessions(options, logger);
  return Object.freeze({
    transport,
    onRequest: options.onRequest,
    onSignal: options.onSignal,
    onClientConnected: options.onClientConnected,
    onClientDisconnected: options.onClientDisconnected,
    beforeUpgrade: options.beforeUpgrade,
    upgradeTimeout: checkInteger(
      'upgradeTimeout',
      options.upgradeTimeout ?? DEFAULT_UPGRADE_TIMEOUT,
      1,
      MAX_TIMER_DELAY,
    ),
    maxPendingUpgrades: checkInteger(
      'maxPendingUpgrades',
      options.maxPendingUpgrades ?? DEFAULT_MAX_PENDING_UPGRADES,
      1,
      1e9,
    ),
    maxConnections:
      options.maxConnections === undefined
        ? Number.POSITIVE_INFINITY
        : checkInteger('maxConnections', options.maxConnections, 1, 1e9),
    // A message must at least hold a request header; AcceptConf carries the size as uint32.
    maxMessageSize: checkInteger('maxMessageSize', options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE, 16, MAX_UINT32),
    readTimeout: checkInteger('readTimeout', options.readTimeout ?? DEFAULT_READ_TIMEOUT, 100, MAX_UINT32),
    requestTimeout: checkInteger(
      'requestTimeout',
      options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT,
      0,
      MAX_TIMER_DELAY,
    ),
    concurrency: checkInteger('concurrency', options.concurrency ?? DEFAULT_CONCURRENCY, 1, 1_000_000),
    maxInflightRequests: checkInteger(
      'maxInflightRequests',
      options.maxInflightRequests ?? DEFAULT_MAX_INFLIGHT_REQUESTS,
      1,
      Number.MAX_SAFE_INTEGER,
    ),
    maxBufferedBytes: checkInteger(
      'maxBufferedBytes',
      options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES,
      1024,
      Number.MAX_SAFE_INTEGER,
    ),
    maxTopicsPerConnection: checkInteger(
      'maxTopicsPerConnection',
      options.maxTopicsPerConnection ?? DEFAULT_MAX_TOPICS_PER_CONNECTION,
      1,
      1e9,
    ),
    bus: checkBus(options.bus),
    subProtocol: subProtocolBytes(options.subProtocol),
    shutdownTimeout: checkInteger(
      'shutdownTimeout',
      options.shutdownTimeout ?? DEFAULT_SHUTDOWN_TIMEOUT,
      0,
      MAX_TIMER_DELAY,
    ),
    protocolMinor,
    logger,
    sessions,
    ownsSessionManager: owns,
  });
}

function checkBus(bus: TopicBus | undefined): TopicBus | undefined {
  if (bus === undefined) return undefined;
  for (const method of ['publish', 'subscribe', 'unsubscribe'] as const) {
    if (typeof bus?.[method] !== 'function') {
      throw new InvalidArgumentError(`option bus must have a ${method} method (see redisTopicBus)`);
    }
  }
  return bus;
}
