/**
 * The client: the shared peer engine plus the dial side's concerns (AcceptConf checks, ClientConf,
 * reconnect loop, heartbeat, requests waiting for a connection). Isomorphic: no Node imports.
 */
import { decode } from '../../protocol/decode.ts';
import {
  encodeClientConf,
  encodeCloseSession,
  encodeHeartbeat,
  encodeRequestParts,
  encodeRestoreSession,
} from '../../protocol/encode.ts';
import { encodeUtf8, payloadText } from '../../protocol/payload.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR } from '../../protocol/codes.ts';
import { type AcceptConfMessage, type Message, PROTOCOL_MAJOR, type Payload } from '../../protocol/types.ts';
import { assertSendableCloseCode } from '../../transports/close-frame.ts';
import type { ClientTransport, ConnectFailure, SocketHandlers, TransportSocket } from '../../transports/types.ts';
import {
  CanceledError,
  ConnectError,
  DisconnectedError,
  IncompatibleServerError,
  InvalidArgumentError,
  QueueFullError,
  SessionNotFoundError,
  SessionsDisabledError,
  TimeoutError,
} from '../errors.ts';
import { type Session, sessionFromJson } from '../session/session.ts';
import { consoleLogger, type Logger } from '../logger.ts';
import { AbortGroups } from '../peer/abort-groups.ts';
import type { AbortSignalLike } from '../peer/cancellation.ts';
import {
  DEFAULT_REQUEST_TIMEOUT,
  type IncomingMessage,
  Peer,
  type ReplyValue,
  type RequestContext,
  type RequestOptions,
} from '../peer/peer.ts';
import { Emitter } from '../util/emitter.ts';
import { checkFunction, checkInteger, MAX_TIMER_DELAY, subProtocolBytes } from '../util/validate.ts';
import { type ReconnectOptions, type ReconnectPolicy, reconnectPolicy } from './backoff.ts';
import { defaultClientTransport, defaultSessionKeyStore } from './default-transport.ts';
import type { SessionKeyStore } from './session-key-store.ts';

export { DEFAULT_REQUEST_TIMEOUT };
/** @default 10 s */
export const DEFAULT_CONNECT_TIMEOUT = 10_000;
/** Requests that may wait for a connection while the client (re)connects. @default 1024 */
export const DEFAULT_MAX_QUEUED_REQUESTS = 1024;
/** Largest message accepted from the server. @default 1 MiB */
export const DEFAULT_CLIENT_MAX_MESSAGE_SIZE = 1024 * 1024;

export interface ClientOptions {
  /** How to reach the server. @default the `ws` transport in Node */
  readonly transport?: ClientTransport;
  /** Extra HTTP headers of the upgrade request (Node only; browsers cannot set them). */
  readonly headers?: Readonly<Record<string, string>>;
  /** Default timeout of `request()`, in ms; 0 waits forever. @default 10000 */
  readonly requestTimeout?: number;
  /** Time allowed for one connection attempt including the AcceptConf, in ms. @default 10000 */
  readonly connectTimeout?: number;
  /** Reconnect after a lost connection; `false` disables, an object tunes the backoff. @default true */
  readonly reconnect?: boolean | ReconnectOptions;
  /** Requests that may wait for a connection; one more fails with QueueFullError. @default 1024 */
  readonly maxQueuedRequests?: number;
  /** Connect from the constructor. @default true */
  readonly autoConnect?: boolean;
  /** Sub-protocol the server must announce. @default none */
  readonly subProtocol?: string | Uint8Array;
  /**
   * WebSocket subprotocols offered in the upgrade (`Sec-WebSocket-Protocol`), most preferred
   * first: the server picks one (`client.protocol` tells which), or refuses the upgrade. Tokens
   * of RFC 9110 §5.6.2, no duplicates. Unlike `subProtocol` (WebWire's AcceptConf field), this
   * is settled before the connection exists, so a server can refuse an application version it
   * does not speak with an HTTP status. @default none
   *
   * @example
   * new Client(url, { protocols: ['chat.2', 'chat.1'] }).on('connect', () => ...client.protocol);
   */
  readonly protocols?: readonly string[];
  /** Largest message accepted from the server. @default 1 MiB */
  readonly maxMessageSize?: number;
  /** Handlers (server requests and signals) running at once. @default 32 */
  readonly concurrency?: number;
  /** Requests from the server not yet answered; over it the client closes 1008. @default 4096 */
  readonly maxInflightRequests?: number;
  /** Outgoing bytes queued; over it the client closes 1008. @default 8 MiB */
  readonly maxBufferedBytes?: number;
  /**
   * Protocol minor version spoken: 1 announces duplexwire v2.1 to servers that offer it (the
   * server may then send requests and cancels); 0 behaves as a WebWire v2.0 client. @default 1
   */
  readonly protocolMinor?: 0 | 1;
  /**
   * Keeps the session key between connections and runs: the session is restored after every
   * reconnect, and on the first connection when the store holds a key.
   * @default memoryKeyStore() in Node (fileKeyStore(path) survives a restart), localStorageKeyStore()
   * in browsers
   */
  readonly sessionKeyStore?: SessionKeyStore;
  /** Turns the session info received from the server into the application's shape. */
  readonly parseSessionInfo?: (info: Readonly<Record<string, unknown>>) => Readonly<Record<string, unknown>>;
  /**
   * Drops the connection (and reconnects) when nothing came from the server for this long: a
   * server that vanished without closing (a network partition, a frozen process) is otherwise
   * noticed only when TCP gives up. The client pings the server every third of it, and any
   * message or pong counts. Browsers cannot send pings: there, use it only with a server that
   * sends something regularly. 0 = off. @default 0
   */
  readonly serverTimeout?: number;
  /** Answers requests the server sends (v2.1). Without it they get an internal-error reply. */
  readonly onRequest?: (message: IncomingMessage, context: RequestContext) => ReplyValue | Promise<ReplyValue>;
  /** @default logs warnings and errors to the console */
  readonly logger?: Logger;
}

/** Where the client is. */
export type ClientState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected' | 'closed';

/** What the server announced in its AcceptConf. */
export interface ServerInfo {
  readonly major: number;
  readonly minor: number;
  readonly readTimeout: number;
  readonly maxMessageSize: number;
}

export interface ClientEvents {
  /** Connected and the handshake done. */
  connect: (info: ServerInfo) => void;
  /** The connection was lost (or closed). */
  disconnect: (info: { code: number; reason: string }) => void;
  /** A reconnect attempt is scheduled. */
  reconnecting: (info: { attempt: number; delay: number }) => void;
  /** A signal from the server. */
  signal: (message: IncomingMessage) => void;
  /** A connection attempt failed, or the client gave up. */
  error: (error: Error) => void;
  /** The client reached a state. */
  state: (state: ClientState) => void;
  /** The server created a session for this client (type 21). */
  sessionCreated: (session: Session) => void;
  /**
   * The server changed the info of the session this client holds (type 21 with its key): the
   * session is `client.session` now.
   */
  sessionUpdated: (session: Session) => void;
  /** The session was restored (after a reconnect or by `restoreSession`). */
  sessionRestored: (session: Session) => void;
  /** The session ended (closed by either side, or not found on restore). */
  sessionClosed: () => void;
}

/**
 * Someone waiting for a connection: a `connect()` call, or a request made while the client
 * (re)connects. Settled in order once the connection is up, or when the client gives up or closes.
 */
interface Waiter {
  readonly resolve: (peer: Peer) => void;
  readonly reject: (error: Error) => void;
  /** A request, counted against `maxQueuedRequests` and failed with DisconnectedError. */
  readonly request: boolean;
}

/** The integer options: default, minimum, maximum. */
const INTEGER_OPTIONS = {
  requestTimeout: [DEFAULT_REQUEST_TIMEOUT, 0, MAX_TIMER_DELAY],
  connectTimeout: [DEFAULT_CONNECT_TIMEOUT, 1, MAX_TIMER_DELAY],
  maxQueuedRequests: [DEFAULT_MAX_QUEUED_REQUESTS, 0, 1e9],
  maxMessageSize: [DEFAULT_CLIENT_MAX_MESSAGE_SIZE, 16, 0xffff_ffff],
  concurrency: [32, 1, 1_000_000],
  maxInflightRequests: [4096, 1, Number.MAX_SAFE_INTEGER],
  maxBufferedBytes: [8 * 1024 * 1024, 1024, Number.MAX_SAFE_INTEGER],
  serverTimeout: [0, 0, MAX_TIMER_DELAY],
} as const;

type IntegerOption = keyof typeof INTEGER_OPTIONS;

/** Also the settings of each connection's peer engine (a `PeerSettings`). */
interface ResolvedClientOptions extends Readonly<Record<IntegerOption, number>> {
  readonly headers: Readonly<Record<string, string>>;
  readonly reconnect: ReconnectPolicy | null;
  readonly subProtocol: Uint8Array;
  readonly protocols: readonly string[];
  readonly protocolMinor: 0 | 1;
  readonly onRequest: ClientOptions['onRequest'];
  readonly sessionKeyStore: SessionKeyStore;
  readonly parseSessionInfo: ClientOptions['parseSessionInfo'];
  readonly logger: Logger;
}

function resolveClientOptions(options: ClientOptions): ResolvedClientOptions {
  checkFunction('onRequest', options.onRequest);
  checkFunction('parseSessionInfo', options.parseSessionInfo);
  const protocolMinor = options.protocolMinor ?? 1;
  if (protocolMinor !== 0 && protocolMinor !== 1) throw new InvalidArgumentError('option protocolMinor must be 0 or 1');
  const reconnect = options.reconnect ?? true;
  const integers = {} as Record<IntegerOption, number>;
  for (const [name, [fallback, min, max]] of Object.entries(INTEGER_OPTIONS) as Array<
    [IntegerOption, readonly [number, number, number]]
  >) {
    integers[name] = checkInteger(name, options[name] ?? fallback, min, max);
  }
  return Object.freeze({
    ...integers,
    headers: { ...options.headers },
    reconnect: reconnect === false ? null : reconnectPolicy(reconnect === true ? {} : reconnect),
    subProtocol: subProtocolBytes(options.subProtocol),
    protocols: checkProtocols(options.protocols),
    protocolMinor,
    onRequest: options.onRequest,
    sessionKeyStore: options.sessionKeyStore ?? defaultSessionKeyStore(),
    parseSessionInfo: options.parseSessionInfo,
    logger: options.logger ?? consoleLogger,
  });
}

/** RFC 9110 §5.6.2 `token`: what a subprotocol name may be (RFC 6455 §4.1). */
const PROTOCOL_TOKEN = /^[!#$%&'*+\-.0-9A-Z^_`|a-z~]+$/;

/**
 * Checked here rather than left to the transport, which would fail every connection attempt the
 * same way, and the client would retry it forever.
 */
function checkProtocols(protocols: readonly string[] | undefined): readonly string[] {
  const list: unknown[] = protocols === undefined ? [] : [...protocols];
  if (new Set(list).size < list.length || !list.every((p) => typeof p === 'string' && PROTOCOL_TOKEN.test(p))) {
    throw new InvalidArgumentError('option protocols must be distinct tokens (RFC 9110 §5.6.2)');
  }
  return list as string[];
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A 4xx refusal other than timeouts and rate limits will not change by retrying. */
function isPermanent(error: unknown): boolean {
  // A configuration mistake (no transport, an option the transport refuses) never heals.
  if (error instanceof IncompatibleServerError || error instanceof InvalidArgumentError) return true;
  const status = error instanceof ConnectError ? error.status : undefined;
  return status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429;
}

/**
 * A duplexwire client (Node and browsers). Requests settle exactly once: with the reply or a
 * typed error.
 *
 * @example
 * const client = new Client('ws://127.0.0.1:8080/');
 * const reply = await client.request('echo', utf8('hi'));
 * client.on('signal', (msg) => console.log(msg.name));
 * await client.close();
 */
export class Client extends Emitter<ClientEvents> {
  readonly url: string;
  readonly #options: ResolvedClientOptions;
  #transport: ClientTransport | undefined;
  #currentState: ClientState = 'idle';
  #peer: Peer | undefined;
  #server: ServerInfo | undefined;
  /** `connect()` calls and requests waiting for a connection, in order. */
  readonly #waiters = new Set<Waiter>();
  /** The requests among `waiters`. */
  #queued = 0;
  /** The waiting requests' abort callbacks by their `signal`: one listener per signal, not per request. */
  readonly #aborts = new AbortGroups<() => void>((abort) => abort());
  #loopRunning = false;
  #wakeLoop: (() => void) | undefined;
  #heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  #watchTimer: ReturnType<typeof setInterval> | undefined;
  /** Request ids go on across connections (PROTOCOL.md §2): where the next connection starts. */
  #nextRequestId = 1;
  #currentSession: Session | null = null;
  /** The key-store operations in flight, run one after the other (`#keyStore`). */
  #keyStoreQueue: Promise<void> = Promise.resolve();
  /**
   * The connection of the attempt in progress (handshake, session restore), from the moment its
   * socket is open until it is handed to the loop or ends. The loop emits no 'disconnect' for it,
   * so close() ends it and waits for `lost` itself.
   */
  #attempt: { readonly peer: Peer; readonly lost: Promise<unknown> } | undefined;
  /** Ends the transport's connect in progress (before its socket is open); used by close(). */
  #connecting: AbortController | undefined;

  constructor(url: string, options: ClientOptions = {}) {
    super();
    if (typeof url !== 'string' || !/^wss?:\/\//i.test(url)) {
      throw new InvalidArgumentError(`url must start with ws:// or wss://, got ${String(url)}`);
    }
    this.url = url;
    this.#options = resolveClientOptions(options);
    this.#transport = options.transport;
    if (options.autoConnect ?? true) {
      // Errors reach 'error' listeners and waiting requests; nobody awaits this promise.
      this.connect().catch(() => {});
    }
  }

  /** Where the client is. */
  get state(): ClientState {
    return this.#currentState;
  }

  /** True when connected and the handshake is done. */
  get isConnected(): boolean {
    return this.#currentState === 'connected';
  }

  /** What the server announced, while connected. */
  get serverInfo(): ServerInfo | undefined {
    return this.#server;
  }

  /**
   * The WebSocket subprotocol the server chose of `protocols` for the current connection ('' for
   * none), undefined while not connected.
   */
  get protocol(): string | undefined {
    const peer = this.#connected();
    return peer === undefined ? undefined : (peer.socket.protocol ?? '');
  }

  /** True when both ends speak v2.1 on the current connection. */
  get supportsV21(): boolean {
    return this.#peer?.v21 ?? false;
  }

  /** The connection's engine while connected (the handshake and session restore done). */
  #connected(): Peer | undefined {
    return this.#currentState === 'connected' ? this.#peer : undefined;
  }

  /**
   * Connects (or waits for the running connection attempt). Resolves once connected; rejects when
   * the client gives up (reconnect off or exhausted, incompatible server, refused upgrade) or is
   * closed.
   */
  connect(): Promise<void> {
    if (this.#currentState === 'closed') return Promise.reject(new DisconnectedError('the client is closed'));
    if (this.#currentState === 'connected') return Promise.resolve();
    const promise = new Promise<void>((resolve, reject) =>
      this.#waiters.add({ resolve: () => resolve(), reject, request: false }),
    );
    if (!this.#loopRunning) void this.#runLoop();
    return promise;
  }

  /**
   * Sends a request and resolves with the reply's payload. While the client (re)connects the
   * request waits, up to its timeout; with reconnect off and no connection it fails at once.
   */
  request(name: string, payload: Payload, options: RequestOptions = {}): Promise<Payload> {
    const timeout = options.timeout ?? this.#options.requestTimeout;
    const peer = this.#connected();
    if (peer !== undefined) {
      return peer.request(name, (id) => peer.encodeRequest(id, name, payload), { ...options, timeout });
    }
    return this.#requestLater(name, payload, timeout, options.signal);
  }

  /** Sends a signal. Returns false when not connected (the signal is not sent). */
  signal(name: string, payload: Payload): boolean {
    return this.#connected()?.signal(name, payload) ?? false;
  }

  /** The session this client holds, or null. Kept in sync with the server. */
  get session(): Session | null {
    return this.#currentSession;
  }

  /**
   * Restores the session `key` on this connection. Rejects with SessionNotFoundError,
   * MaxSessionConnectionsError, SessionsDisabledError, InternalError (store failure) or
   * DisconnectedError.
   */
  async restoreSession(key: string): Promise<Session> {
    const peer = this.#connected();
    if (peer === undefined) throw new DisconnectedError('not connected');
    return this.#restoreOn(peer, key);
  }

  /**
   * Closes the session: the server deletes it when this was its last connection. Does nothing
   * without a session. Rejects with InternalError when the server's session store failed; the
   * client then holds the session exactly when its connection on the server still does: usually
   * it does (`client.session` unchanged, or updated with `sessionUpdated` when the session was
   * updated meanwhile: call again to retry), and when the server could not take it back either
   * (its store is down) `sessionClosed` is emitted before the rejection. Also rejects with
   * DisconnectedError, TimeoutError, ShutdownError or SessionsDisabledError.
   */
  async closeSession(): Promise<void> {
    if (this.#currentSession === null) return;
    const peer = this.#connected();
    if (peer === undefined) throw new DisconnectedError('not connected');
    let forgotten: Promise<void> | undefined;
    // Forgotten as the reply is read, not once awaited: a session the server creates right after
    // (a login racing this logout) can come in the same read, and is handled before an await
    // resumes; forgetting after it would drop the new session the server holds.
    await peer.request(
      'closeSession',
      (id) => encodeCloseSession(id),
      { timeout: this.#options.requestTimeout },
      () => {
        forgotten = this.#forgetSession();
        forgotten.catch(() => {}); // awaited below
      },
    );
    await forgotten;
  }

  async #restoreOn(peer: Peer, key: string): Promise<Session> {
    let session: Session | undefined;
    let failure: unknown;
    // Taken as the reply is read, not once awaited: the server may close or update the session
    // right after attaching it, and that NotifySessionClosed or NotifySessionCreated can come in
    // the same read as the reply, handled before an await resumes. Applying the reply after it
    // would leave the client holding a closed session, or its info from before the update.
    await peer.request(
      'restoreSession',
      (id) => encodeRestoreSession(id, encodeUtf8(key)),
      { timeout: this.#options.requestTimeout },
      (reply) => {
        try {
          session = this.#parseSession(payloadText(reply));
        } catch (error) {
          failure = error;
          return;
        }
        const restored = session;
        this.#currentSession = restored;
        // The server has attached the session whatever the key store does: a store that fails is
        // reported, as for a created session, and does not make the client believe it has none.
        this.#persist((store) => store.save(restored.key));
        try {
          this.emit('sessionRestored', restored);
        } catch (error) {
          failure = error; // a throwing listener rejects the restore, as it did before
        }
      },
    );
    if (session === undefined || failure !== undefined) throw failure;
    return session;
  }

  #parseSession(json: string): Session {
    const session = sessionFromJson(json);
    const parse = this.#options.parseSessionInfo;
    return parse === undefined || session.info === undefined ? session : { ...session, info: parse(session.info) };
  }

  /**
   * The server told us of a session (type 21): a new one, or, with the key we hold, the one we
   * hold updated (a v2.0 client simply replaces its session either way).
   */
  #sessionCreated(json: string): void {
    let session: Session;
    try {
      session = this.#parseSession(json);
    } catch (error) {
      this.#options.logger.error('unreadable session from the server', { error });
      return;
    }
    const updated = this.#currentSession?.key === session.key;
    this.#currentSession = session;
    // Same key, already stored: nothing to save.
    if (!updated) this.#persist((store) => store.save(session.key));
    this.emit(updated ? 'sessionUpdated' : 'sessionCreated', session);
  }

  /** Drops the session and its stored key; 'sessionClosed' when there was a session. */
  async #forgetSession(): Promise<void> {
    const had = this.#currentSession !== null;
    this.#currentSession = null;
    await this.#keyStore((store) => store.clear());
    if (had) this.emit('sessionClosed');
  }

  /**
   * Runs a key-store operation after those before it. The session changes in message order, and
   * so must what the store ends up with: a save still writing when a clear starts (a login or a
   * restore, then a logout) would otherwise put the key back after the clear.
   */
  #keyStore<T>(op: (store: SessionKeyStore) => T | Promise<T>): Promise<T> {
    const store = this.#options.sessionKeyStore;
    const result = this.#keyStoreQueue.then(() => op(store));
    this.#keyStoreQueue = result.then(
      () => {},
      () => {},
    );
    return result;
  }

  /** Runs a key-store write in turn; a failure is reported, never thrown into the message path. */
  #persist(write: (store: SessionKeyStore) => void | Promise<void>): void {
    this.#keyStore(write).catch((error: unknown) => this.emit('error', toError(error)));
  }

  /** After every (re)connection: restore the session we hold, or the one the key store remembers. */
  async #restoreAfterConnect(peer: Peer): Promise<void> {
    let key: string | null = this.#currentSession?.key ?? null;
    try {
      key ??= await this.#keyStore((store) => store.load());
    } catch (error) {
      this.emit('error', toError(error));
    }
    if (key === null) return;
    // While the key store answered, the server may have created a session on this connection
    // (onClientConnected): it holds that one now, and would refuse the restore (SESSION_ACTIVE).
    if (this.#currentSession !== null && this.#currentSession.key !== key) return;
    try {
      await this.#restoreOn(peer, key);
    } catch (error) {
      // The server created a session on this connection while the restore was on its way: it
      // refused the restore (SESSION_ACTIVE) because of that one, which stays, with its key. A
      // lost connection is seen by the caller.
      if (this.#currentSession !== null && this.#currentSession.key !== key) return;
      if (error instanceof SessionNotFoundError || error instanceof SessionsDisabledError) {
        // Gone for good: forget it.
        await this.#forgetSession().catch((e: unknown) => this.emit('error', toError(e)));
      } else if (error instanceof TimeoutError || error instanceof DisconnectedError) {
        // No answer (a partition, a slow store), or the connection went first: nothing was
        // learnt of the session. On a connection still open the server may attach it yet, or
        // not, and going on would run what waits outside a session the server may hold for it.
        // So the attempt fails (reported once, by the loop), the session and its key stay, and
        // the loop connects again; closing first means a late restore finds the connection gone
        // and attaches nothing.
        peer.close(
          CLOSE_NORMAL,
          error instanceof TimeoutError ? 'session restore timed out' : 'session restore failed',
        );
        throw error;
      } else {
        // Not attached on this connection (connection limit, store failure): no session now, but
        // the stored key stays for the next reconnect to try again.
        this.#currentSession = null;
        this.emit('error', toError(error));
      }
    }
  }

  /**
   * Closes the client for good: no more reconnects; pending and waiting requests are rejected with
   * DisconnectedError. Resolves when the connection is closed. Rejects with RangeError, the
   * client left as it was, for a code that may not be sent (1000-1003, 1007-1014, 3000-4999 may).
   */
  async close(code: number = CLOSE_NORMAL, reason = 'client closed'): Promise<void> {
    // Before the client is marked closed: its connection would stay open, and a valid close()
    // would then do nothing.
    assertSendableCloseCode(code);
    if (this.#currentState === 'closed') return;
    this.#setState('closed');
    this.#settleWaiters(new DisconnectedError('the client was closed'));
    this.#wakeLoop?.();
    // An attempt whose socket is not open yet (a TCP connect, a proxy's CONNECT) would otherwise
    // go on until connectTimeout.
    this.#connecting?.abort();
    const attempt = this.#attempt;
    const peer = this.#peer;
    if (attempt !== undefined) {
      // Still in its handshake or session restore: left alone, it would stay open until the
      // connect timeout or the restore's reply, and 'disconnect' would never come.
      attempt.peer.close(code, reason);
      await attempt.lost;
    } else if (peer !== undefined && !peer.isClosed) {
      const closed = new Promise<void>((resolve) => this.once('disconnect', () => resolve()));
      peer.close(code, reason);
      await closed;
    }
  }

  // ---------------------------------------------------------------- connection loop

  /** A method rather than a comparison: the state changes across awaits, which narrowing ignores. */
  #closedForGood(): boolean {
    return this.#currentState === 'closed';
  }

  #setState(state: ClientState): void {
    if (this.#currentState === state) return;
    this.#currentState = state;
    this.emit('state', state);
  }

  async #runLoop(): Promise<void> {
    this.#loopRunning = true;
    let attempt = 0;
    // Failed attempts in a row. Not `attempt`: after a lost connection that starts at 1 (the
    // first retry), which cost one attempt of maxAttempts.
    let failures = 0;
    try {
      while (!this.#closedForGood()) {
        this.#setState(attempt === 0 ? 'connecting' : 'reconnecting');
        const policy = this.#options.reconnect;
        let lost: Promise<{ code: number; reason: string }>;
        try {
          ({ lost } = await this.#connectOnce());
        } catch (error) {
          const err = toError(error);
          if (this.#closedForGood()) break;
          this.#options.logger.debug('connection attempt failed', { url: this.url, error: err });
          this.emit('error', err);
          attempt++;
          failures++;
          if (policy === null || isPermanent(err) || failures >= policy.maxAttempts) {
            this.#giveUp(err);
            break;
          }
          await this.#pause(policy.delay(attempt), attempt);
          continue;
        }
        failures = 0;
        const openedAt = performance.now();
        const info = await lost;
        this.emit('disconnect', info);
        if (this.#closedForGood()) break;
        if (policy === null) {
          this.#giveUp(new DisconnectedError(`the connection closed (${info.code})`, { closeCode: info.code }));
          break;
        }
        // A connection that lasted starts the backoff over; one that did not (a server that
        // accepts and drops at once) counts as one more attempt.
        attempt = performance.now() - openedAt < policy.minUptime ? attempt + 1 : 1;
        this.#setState('reconnecting');
        await this.#pause(policy.delay(attempt), attempt);
      }
    } finally {
      this.#loopRunning = false;
    }
  }

  #giveUp(error: Error): void {
    this.#setState('disconnected');
    this.#settleWaiters(
      error,
      error instanceof DisconnectedError ? error : new DisconnectedError(error.message, { cause: error }),
    );
  }

  #pause(delay: number, attempt: number): Promise<void> {
    if (this.#currentState === 'closed') return Promise.resolve();
    this.emit('reconnecting', { attempt, delay });
    return new Promise((resolve) => {
      const timer = setTimeout(done, delay);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#wakeLoop = done;
    });
  }

  /**
   * One attempt: open the socket, wait for AcceptConf, check it, send ClientConf when both speak
   * v2.1, restore the session. Resolves with a promise of the connection's end.
   */
  async #connectOnce(): Promise<{ lost: Promise<{ code: number; reason: string }> }> {
    this.#transport ??= await defaultClientTransport();
    const options = this.#options;
    let peer: Peer | undefined;
    // What happens before `connect` resolves (messages in the same TCP packet as the handshake,
    // even the close) is replayed once the engine exists.
    const early: Array<() => void> = [];
    let accepted = false;
    /** The server created a session on this connection (type 21) before the restore began. */
    let sessionCreatedHere = false;
    let resolveLost!: (info: { code: number; reason: string }) => void;
    const lost = new Promise<{ code: number; reason: string }>((resolve) => {
      resolveLost = resolve;
    });
    let handshake!: { resolve: (info: ServerInfo) => void; reject: (error: Error) => void };
    const handshakeDone = new Promise<ServerInfo>((resolve, reject) => {
      handshake = { resolve, reject };
    });

    const fail = (error: Error): void => {
      handshake.reject(error);
      peer?.close(CLOSE_PROTOCOL_ERROR, error.message.slice(0, 100));
    };

    const onFirstMessage = (engine: Peer, data: Uint8Array, binary: boolean): void => {
      // The first message must be AcceptConf; anything else means this is not a duplexwire server.
      let message: Message | undefined;
      try {
        if (binary) message = decode(data);
      } catch {}
      if (message?.kind !== 'accept-conf') {
        fail(new IncompatibleServerError('the server did not open with AcceptConf'));
      } else if (message.major !== PROTOCOL_MAJOR) {
        fail(new IncompatibleServerError(`the server speaks protocol ${message.major}.${message.minor}, not 2.x`));
      } else if (!sameBytes(message.subProtocol, options.subProtocol)) {
        fail(new IncompatibleServerError('the server announced a different sub-protocol'));
      } else {
        accepted = true;
        // What the server announced, without the message's kind and the sub-protocol checked above.
        const { kind, subProtocol, ...info }: AcceptConfMessage = message;
        if (message.minor >= 1 && options.protocolMinor >= 1) {
          engine.sendRaw(encodeClientConf(1));
          engine.v21 = true;
        }
        handshake.resolve(info);
      }
    };

    const handlers: SocketHandlers = {
      onMessage: (data, binary) => {
        if (peer === undefined) early.push(() => handlers.onMessage(data, binary));
        else if (accepted) peer.onMessage(data, binary);
        else if (peer.isOpen) onFirstMessage(peer, data, binary);
      },
      onDrain: () => peer?.onDrain(),
      onPing: () => peer?.onPing(),
      onActivity: () => peer?.onActivity(),
      onClose: (code, reason) => {
        if (peer === undefined) early.push(() => handlers.onClose(code, reason));
        else peer.onClose(code, reason);
      },
    };

    let socket: TransportSocket;
    const connecting = new AbortController();
    this.#connecting = connecting;
    try {
      socket = await this.#transport.connect(
        this.url,
        {
          headers: options.headers,
          maxMessageSize: options.maxMessageSize,
          connectTimeout: options.connectTimeout,
          protocols: options.protocols,
          signal: connecting.signal,
        },
        handlers,
      );
    } catch (error) {
      const failure = error as ConnectFailure | undefined;
      throw new ConnectError(`cannot connect to ${this.url}: ${failure?.message ?? String(error)}`, {
        cause: error,
        status: failure?.status,
        body: failure?.body,
      });
    } finally {
      if (this.#connecting === connecting) this.#connecting = undefined;
    }
    if (this.#closedForGood()) {
      socket.close(CLOSE_NORMAL, 'client closed');
      throw new DisconnectedError('the client was closed');
    }

    const engine = new Peer(socket, options, {
      handleRequest: (message, context) => {
        if (options.onRequest === undefined) {
          throw new Error(`no onRequest handler for request ${JSON.stringify(message.name)}`);
        }
        return options.onRequest(message, context);
      },
      handleSignal: (message) => this.emit('signal', message),
      handleControl: (message) => {
        if (message.kind === 'session-created') {
          sessionCreatedHere = true;
          this.#sessionCreated(message.session);
        } else if (message.kind === 'session-closed') {
          this.#forgetSession().catch((error: unknown) => this.emit('error', toError(error)));
        }
      },
      closed: (code, reason) => {
        this.#nextRequestId = Math.max(this.#nextRequestId, engine.nextRequestId);
        if (this.#peer === engine) {
          this.#peer = undefined;
          this.#server = undefined;
          clearTimeout(this.#heartbeatTimer);
          clearInterval(this.#watchTimer);
        }
        if (this.#attempt?.peer === engine) this.#attempt = undefined;
        handshake.reject(new ConnectError(`the connection closed during the handshake (${code})`));
        resolveLost({ code, reason });
      },
    });
    engine.nextRequestId = this.#nextRequestId;
    peer = engine;
    this.#attempt = { peer: engine, lost };

    const timer = setTimeout(
      () => fail(new ConnectError(`no AcceptConf within ${options.connectTimeout} ms`)),
      options.connectTimeout,
    );
    for (const replay of early) replay();

    let info: ServerInfo;
    try {
      info = await handshakeDone;
    } finally {
      clearTimeout(timer);
    }
    if (this.#closedForGood()) {
      engine.close(CLOSE_NORMAL, 'client closed');
      throw new DisconnectedError('the client was closed');
    }
    this.#peer = engine;
    this.#server = info;
    // The session comes back before anything else is sent, so waiting requests run inside it.
    // Unless the server gave this connection one as it opened (a session created in
    // onClientConnected arrives with the AcceptConf): that one is attached already, and asking to
    // restore it would only be refused (SESSION_ACTIVE).
    if (!sessionCreatedHere) await this.#restoreAfterConnect(engine);
    if (this.#closedForGood() || !engine.isOpen) {
      throw new DisconnectedError('the connection closed while restoring the session');
    }
    this.#setState('connected');
    this.#armHeartbeat(engine, info.readTimeout * 0.75);
    this.#watchServer(engine, options.serverTimeout);
    this.emit('connect', info);
    this.#settleWaiters(engine);
    // From here on the loop waits for `lost` and emits 'disconnect'.
    if (this.#attempt?.peer === engine) this.#attempt = undefined;
    return { lost };
  }

  /** A heartbeat whenever nothing was sent for 0.75 x the server's read timeout. */
  #armHeartbeat(peer: Peer, interval: number): void {
    if (!(interval >= 1)) return;
    const due = peer.lastSentAt + interval - performance.now();
    this.#heartbeatTimer = setTimeout(
      () => {
        if (this.#peer !== peer || !peer.isOpen) return;
        if (performance.now() - peer.lastSentAt >= interval) peer.sendRaw(encodeHeartbeat());
        this.#armHeartbeat(peer, interval);
      },
      // The announced read timeout is a u32 from the server: 0.75 x it may exceed a timer's range,
      // which Node runs after 1 ms (with a warning each time), a timer loop until the connection
      // ends. Capped, the timer wakes early and re-arms for what is left.
      Math.min(MAX_TIMER_DELAY, Math.max(1, due)),
    );
    (this.#heartbeatTimer as { unref?: () => void }).unref?.();
  }

  /** With `serverTimeout`: ping every third of it, drop the connection after it in silence. */
  #watchServer(peer: Peer, timeout: number): void {
    if (timeout === 0) return;
    const timer = setInterval(
      () => {
        if (!peer.isOpen) {
          clearInterval(timer);
          return;
        }
        if (peer.silence(performance.now()) >= timeout) {
          this.#options.logger.warn('server silent for serverTimeout; reconnecting', { timeout });
          clearInterval(timer);
          peer.terminate();
          return;
        }
        peer.socket.ping();
      },
      Math.max(1, Math.floor(timeout / 3)),
    );
    (timer as { unref?: () => void }).unref?.();
    // Cleared when the connection ends, as the heartbeat: not up to a third of the timeout later.
    this.#watchTimer = timer;
  }

  // ---------------------------------------------------------------- waiting for a connection

  /** A request made while not connected: waits for the connection, up to its timeout. */
  async #requestLater(
    name: string,
    payload: Payload,
    timeout: number,
    signal: AbortSignalLike | undefined,
  ): Promise<Payload> {
    checkInteger('timeout', timeout, 0, MAX_TIMER_DELAY);
    const state = this.#currentState;
    if (state !== 'connecting' && state !== 'reconnecting' && state !== 'idle') {
      throw new DisconnectedError(state === 'closed' ? 'the client is closed' : 'not connected');
    }
    if (signal?.aborted) throw new CanceledError(`request ${JSON.stringify(name)} was aborted`);
    if (this.#queued >= this.#options.maxQueuedRequests) {
      throw new QueueFullError(`${this.#queued} requests already wait for a connection`);
    }
    // Refuse what can never be sent now, not after the wait (the parts: the payload is not copied).
    encodeRequestParts(0, name, payload);
    const deadline = performance.now() + timeout;
    const peer = await new Promise<Peer>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = (): void =>
        waiter.reject(new CanceledError(`request ${JSON.stringify(name)} was aborted`, { cause: signal?.reason }));
      const leave = (): void => {
        this.#waiters.delete(waiter);
        this.#queued--;
        clearTimeout(timer);
        if (signal !== undefined) this.#aborts.delete(signal, onAbort);
      };
      const waiter: Waiter = {
        resolve: (connected) => {
          leave();
          resolve(connected);
        },
        reject: (error) => {
          leave();
          reject(error);
        },
        request: true,
      };
      if (timeout > 0) {
        timer = setTimeout(
          () =>
            waiter.reject(new TimeoutError(`request ${JSON.stringify(name)} got no connection within ${timeout} ms`)),
          timeout,
        );
      }
      if (signal !== undefined) this.#aborts.add(signal, onAbort);
      this.#waiters.add(waiter);
      this.#queued++;
      if (state === 'idle' && !this.#loopRunning) this.connect().catch(() => {});
    });
    // What is left of the timeout (at least 1 ms: 0 would mean no timeout at all).
    const left = timeout > 0 ? Math.ceil(Math.max(1, deadline - performance.now())) : 0;
    return peer.request(name, (id) => peer.encodeRequest(id, name, payload), { timeout: left, signal });
  }

  /**
   * Settles everyone waiting for a connection, in order: with the connection, or with an error
   * (`requestError` for the requests: DisconnectedError).
   */
  #settleWaiters(outcome: Peer | Error, requestError = outcome): void {
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const waiter of waiters) {
      if (outcome instanceof Peer) waiter.resolve(outcome);
      else waiter.reject((waiter.request ? requestError : outcome) as Error);
    }
  }

  protected override onListenerError(event: keyof ClientEvents, error: unknown): void {
    this.#options.logger.error(`a '${String(event)}' listener threw`, { error });
  }
}

function toError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

export { ProtocolError };
