import {
  encodeReply,
  encodeReplyError,
  encodeSessionClosed,
  encodeSessionCreated,
  encodeSpecialReply,
} from '../../protocol/encode.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { EMPTY_PAYLOAD, utf8 } from '../../protocol/payload.ts';
import { CloseCode, type Message, type Payload, type RequestId } from '../../protocol/types.ts';
import { assertSendableCloseCode } from '../../transports/close-frame.ts';
import type { SocketHandlers, TransportSocket, UpgradeRequest } from '../../transports/types.ts';
import {
  DisconnectedError,
  InvalidArgumentError,
  InvalidStateError,
  LimitExceededError,
  PeerUnsupportedError,
  SessionsDisabledError,
  SessionStoreUnsupportedError,
  ShutdownError,
} from '../errors.ts';
import type { IncomingMessage, PeerHooks, ReplyValue, RequestContext, RequestOptions } from '../peer/peer.ts';
import { ServerPeer } from '../peer/server-peer.ts';
import {
  checkSessionInfo,
  isStaleSession,
  type Session,
  type SessionAttachResult,
  type SessionManager,
  sessionToJson,
} from '../session/session.ts';
import type { DisconnectInfo, ResolvedServerOptions } from './options.ts';
import { checkInteger, MAX_TIMER_DELAY } from '../util/validate.ts';
import type { SessionRegistry, SessionSettings } from './session-registry.ts';
import { checkTopic, type TopicRegistry } from './topics.ts';

/** What the Server gives each connection. */
export interface ConnectionContext {
  readonly id: string;
  readonly options: ResolvedServerOptions;
  readonly concurrency: number;
  readonly info: unknown;
  readonly acceptConf: Uint8Array;
  readonly closed: (conn: Connection, info: DisconnectInfo) => void;
  /** Null when sessions are disabled. */
  readonly sessions: SessionSettings | null;
  readonly registry: SessionRegistry<Connection>;
  readonly topics: TopicRegistry<Connection>;
  /** `Server`'s update of the session `key` (store, this server's connections, the bus). */
  readonly updateSession: (key: string, info: SessionInfo) => Promise<SessionUpdate>;
}

/** Options of `conn.close()`. */
export interface CloseOptions {
  /**
   * How long the close waits for running handlers before aborting them and closing anyway.
   * @default the server's `shutdownTimeout` (30000)
   */
  readonly timeout?: number;
}

/** A session's info, as `createSession` and `updateSession` take it. */
export type SessionInfo = Readonly<Record<string, unknown>> | undefined;

/** What an update of a session did: the session as stored now, and how many connections here were told. */
export interface SessionUpdate {
  readonly session: Session;
  readonly told: number;
}

/**
 * The store's `onSessionUpdate`, bound, or SessionStoreUnsupportedError: without it an update
 * could only change this process's copies, which the next restore would undo.
 */
export function sessionUpdateHook(manager: SessionManager): NonNullable<SessionManager['onSessionUpdate']> {
  if (typeof manager.onSessionUpdate !== 'function') {
    throw new SessionStoreUnsupportedError(
      'the session store has no onSessionUpdate(key, info) hook, which updateSession needs (see "Your own store" in the README)',
      { hook: 'onSessionUpdate' },
    );
  }
  return manager.onSessionUpdate.bind(manager);
}

/** The key of `Connection`'s method sending encoded signal bytes: internal, not exported by the package. */
export const SEND_SIGNAL = Symbol('duplexwire.sendSignal');
/** The key of `Connection`'s method admitting a native publish (`Server.publish`): internal. */
export const ADMIT_PUBLISH = Symbol('duplexwire.admitPublish');
/** The key of `Connection`'s transport socket, for `ServerTransport.publish`'s `skip`: internal. */
export const TRANSPORT_SOCKET = Symbol('duplexwire.transportSocket');

/**
 * How a native publish reaches one subscriber (`Connection[ADMIT_PUBLISH]`): `native` through the
 * transport's fan-out, `send` by a send of its own (the transport did not admit it, so it may meet
 * backpressure), `closed` not at all.
 */
export type PublishAdmission = 'native' | 'send' | 'closed';

/**
 * One client connection on the server: the shared peer engine plus the accept side's concerns
 * (AcceptConf, ClientConf negotiation, read timeout, shutdown accounting).
 */
export class Connection {
  /** Unique id of this connection (nanoid). */
  readonly id: string;
  /** What `beforeUpgrade` attached with `info`. */
  readonly info: unknown;
  /** The upgrade request this connection came from (path, query, headers, remote address). */
  readonly handshake: UpgradeRequest;
  /** Resolves once the connection has ended, with its close code and reason. */
  readonly closed: Promise<DisconnectInfo>;

  private readonly peer: ServerPeer;
  private readonly context: ConnectionContext;
  private clientConfReceived = false;
  private readTimer: ReturnType<typeof setTimeout> | undefined;
  private closing: Promise<void> | undefined;
  private resolveClosed!: (info: DisconnectInfo) => void;
  private currentSession: Session | null = null;
  /** Whether the client speaks v2.1, once its first message (or its leaving) told. */
  private version: boolean | undefined;
  private versionKnown: ((v21: boolean) => void) | undefined;
  private versionPromise: Promise<boolean> | undefined;
  /** A session operation (create, restore, close) is under way: they never overlap on one connection. */
  private sessionBusy = false;
  /**
   * The key of a session this connection is about to take while the store answers: created,
   * restored, or taken back after its client's close failed (see `whilePending`).
   */
  private pendingSession: string | null = null;
  /** The pending session was closed by key meanwhile. */
  private pendingDropped = false;
  /**
   * The latest update of the pending session that arrived while it was pending (a restore's
   * lookup may have read the info before it): what the connection takes once attached.
   */
  private pendingUpdate: { readonly session: Session; readonly json: string } | null = null;
  /** The topics this connection subscribes to; created on the first subscribe (most have none). */
  private subscribed: Set<string> | undefined;
  /**
   * The client's session requests (restore 32, close 31) being answered, which are requests as
   * much as those handlers answer: a graceful close waits for them too. Made on the first one.
   */
  private sessionRequests: Set<Promise<void>> | undefined;

  /** @internal Created by the Server. */
  constructor(socket: TransportSocket, request: UpgradeRequest, context: ConnectionContext) {
    this.id = context.id;
    this.info = context.info;
    this.handshake = request;
    this.context = context;
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    const { options } = context;
    this.peer = new ServerPeer(
      socket,
      {
        concurrency: context.concurrency,
        maxInflightRequests: options.maxInflightRequests,
        maxBufferedBytes: options.maxBufferedBytes,
        maxMessageSize: options.maxMessageSize,
        logger: options.logger,
      },
      new Connection.PeerHooks(this),
    );
  }

  /**
   * The hooks this connection gives its peer engine: methods on a prototype, not four closures
   * made for each connection and kept for its whole life (bench/RESULTS.md, memory). Declared
   * inside Connection so that it may call Connection's private methods.
   */
  private static readonly PeerHooks = class ConnectionPeerHooks implements PeerHooks {
    readonly conn: Connection;

    constructor(conn: Connection) {
      this.conn = conn;
    }

    handleRequest(message: IncomingMessage, ctx: RequestContext): ReplyValue | Promise<ReplyValue> {
      this.conn.settleVersion(false);
      return this.conn.handleRequest(message, ctx);
    }

    handleSignal(message: IncomingMessage): void | Promise<void> {
      this.conn.settleVersion(false);
      return this.conn.context.options.onSignal?.(this.conn, message);
    }

    handleControl(message: Message): void {
      if (message.kind !== 'client-conf') this.conn.settleVersion(false);
      this.conn.handleControl(message);
    }

    closed(code: number, reason: string): void {
      this.conn.handleClosed(code, reason);
    }
  };

  /** @internal Sends AcceptConf and starts the read timeout. */
  start(): SocketHandlers {
    this.peer.sendRaw(this.context.acceptConf);
    this.armReadTimer(this.context.options.readTimeout);
    return this.peer;
  }

  /** The peer's address as the transport sees it. */
  get remoteAddress(): string {
    return this.handshake.remoteAddress;
  }

  /**
   * The WebSocket subprotocol the opening handshake settled on (`Sec-WebSocket-Protocol`, chosen
   * by `beforeUpgrade`'s `protocol`), '' for none or on a transport without a handshake.
   */
  get protocol(): string {
    return this.peer.socket.protocol ?? '';
  }

  /** True while the connection is open (also while it drains). */
  get isOpen(): boolean {
    return this.peer.isOpen;
  }

  /**
   * True once the client has announced protocol v2.1 (ClientConf): only then may the server send
   * it requests.
   */
  get supportsRequests(): boolean {
    return this.peer.v21;
  }

  /**
   * Resolves once the client's protocol version is known: true when it announced v2.1 (its first
   * message is ClientConf), false when its first message was anything else or it left. A v2.1
   * client sends ClientConf right after the handshake, so in `onClientConnected` use
   * `if (await conn.negotiated()) await conn.request(...)`.
   */
  negotiated(): Promise<boolean> {
    if (this.version !== undefined) return Promise.resolve(this.version);
    if (!this.peer.isOpen) return Promise.resolve(false);
    this.versionPromise ??= new Promise((resolve) => {
      this.versionKnown = resolve;
    });
    return this.versionPromise;
  }

  private settleVersion(v21: boolean): void {
    if (this.version !== undefined) return;
    this.version = v21;
    const resolve = this.versionKnown;
    if (resolve === undefined) return;
    this.versionKnown = undefined;
    resolve(v21);
  }

  /** Outgoing bytes queued for this client. */
  get bufferedAmount(): number {
    return this.peer.socket.bufferedAmount;
  }

  /**
   * Sends a signal to the client. Returns false when the connection is no longer open.
   * Throws ProtocolError for a name or payload that may not be sent.
   */
  signal(name: string, payload: Payload): boolean {
    return this.peer.signal(name, payload);
  }

  /** Sends a signal already encoded (`Server.broadcast`); not part of the public API. */
  [SEND_SIGNAL](bytes: Uint8Array): boolean {
    return this.peer.sendSignal(bytes);
  }

  /**
   * Whether the transport's native publish may carry `byteLength` bytes of signal to this
   * connection (see `TransportSocket.admitPublish`): only when a send would certainly have been
   * `ok`, i.e. when the peer engine would have done nothing after it. Not part of the public API.
   */
  [ADMIT_PUBLISH](byteLength: number): PublishAdmission {
    if (!this.peer.isOpen) return 'closed';
    return this.peer.socket.admitPublish?.(byteLength) === true ? 'native' : 'send';
  }

  /** The transport socket, to leave it out of a native publish. Not part of the public API. */
  get [TRANSPORT_SOCKET](): TransportSocket {
    return this.peer.socket;
  }

  /**
   * Subscribes this connection to `topic`: `server.publish(topic, ...)` then sends it the
   * signal. Returns false when the connection is no longer open (nothing changes: a closed
   * connection never holds a topic). Subscribing twice is one subscription. The connection leaves
   * every topic when it closes.
   *
   * Throws InvalidArgumentError for a topic that is not a string of 1..1024 characters, and
   * LimitExceededError when the connection holds `maxTopicsPerConnection` topics already.
   *
   * @example
   * onRequest: async (conn, msg) => {
   *   if (msg.name === 'join') conn.subscribe(`room:${payloadText(msg.payload)}`);
   *   return EMPTY_PAYLOAD;
   * }
   */
  subscribe(topic: string): boolean {
    checkTopic(topic);
    if (!this.peer.isOpen) return false;
    this.subscribed ??= new Set();
    if (this.subscribed.has(topic)) return true;
    const limit = this.context.options.maxTopicsPerConnection;
    if (this.subscribed.size >= limit) {
      throw new LimitExceededError(`this connection already subscribes to ${limit} topics (maxTopicsPerConnection)`);
    }
    // A transport with native pub/sub (uWS) keeps its own subscriber lists for `Server.publish`:
    // joined first, so that the connection is never in the server's list without being in it.
    this.peer.socket.subscribe?.(topic);
    this.subscribed.add(topic);
    this.context.topics.add(topic, this);
    return true;
  }

  /** Unsubscribes this connection from `topic`. Returns true when it was subscribed. */
  unsubscribe(topic: string): boolean {
    if (this.subscribed?.delete(topic) !== true) return false;
    this.context.topics.remove(topic, this);
    this.peer.socket.unsubscribe?.(topic);
    return true;
  }

  /** The topics this connection subscribes to (a live view: copy it to keep it). */
  get topics(): ReadonlySet<string> {
    return this.subscribed ?? NO_TOPICS;
  }

  /**
   * Sends a request to the client (protocol v2.1) and resolves with its reply. Rejects at once
   * with PeerUnsupportedError on a v2.0 client, and with TimeoutError (after `options.timeout`,
   * else the server's `requestTimeout`), CanceledError, RequestError, InternalError or
   * DisconnectedError as the case may be.
   */
  request(name: string, payload: Payload, options: RequestOptions = {}): Promise<Payload> {
    if (!this.peer.v21 && this.peer.isOpen) {
      return Promise.reject(new PeerUnsupportedError('the client speaks protocol v2.0 and cannot receive requests'));
    }
    const withTimeout =
      options.timeout === undefined ? { ...options, timeout: this.context.options.requestTimeout } : options;
    return this.peer.request(name, (id) => this.peer.encodeRequest(id, name, payload), withTimeout);
  }

  /**
   * Closes gracefully: new requests get the shutdown reply, running handlers (and the client's
   * session restore or close) finish and their replies are delivered, then the connection closes
   * with `code` (default 1000). After `options.timeout` ms (default: the server's
   * `shutdownTimeout`), handlers still running are aborted (their AbortSignal fires with a
   * ShutdownError) and the connection closes anyway, as `server.shutdown()` does. Rejects with
   * RangeError for a code that may not be sent (1000-1003, 1007-1014, 3000-4999 may), and with
   * InvalidArgumentError for a timeout out of range, the connection left as it was. A second call
   * while closing joins the first (its arguments are ignored).
   *
   * From inside one of this connection's handlers, call it without awaiting it and return: the
   * close waits for every running handler, the calling one included, so a handler that awaits it
   * waits for itself until the timeout aborts it, and its reply is lost. (The calling handler
   * cannot be told apart from one that is merely running, and its reply must go out before the
   * connection closes, as with `server.shutdown()`.)
   *
   * @example
   * onRequest: (conn, msg) => {
   *   if (msg.name !== 'logout') return msg.payload;
   *   void conn.close(4000, 'logged out'); // not awaited: this reply goes out, then 4000
   *   return 'bye';
   * },
   */
  close(code: number = CloseCode.Normal, reason = 'closed by the server', options: CloseOptions = {}): Promise<void> {
    let timeout = 0;
    if (this.closing === undefined) {
      // Checked before draining: a valid close must still work after this one.
      try {
        assertSendableCloseCode(code);
        timeout = checkInteger('timeout', options.timeout ?? this.context.options.shutdownTimeout, 0, MAX_TIMER_DELAY);
      } catch (error) {
        return Promise.reject(error);
      }
    }
    this.closing ??= (async () => {
      this.peer.drain();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = await Promise.race([
        this.whenIdle().then(() => false),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), timeout);
        }),
      ]);
      clearTimeout(timer);
      if (timedOut && this.peer.isOpen) {
        this.context.options.logger.warn('connection close timed out; aborting handlers still running', {
          id: this.id,
          timeout,
        });
        this.peer.abortHandlers(new ShutdownError('the connection is closing'));
      }
      this.closeNow(code, reason);
      await this.closed;
    })();
    return this.closing;
  }

  /** Drops the connection at once, without a closing handshake. */
  terminate(): void {
    this.peer.terminate();
  }

  /** The session this connection holds, or null. */
  get session(): Session | null {
    return this.currentSession;
  }

  /**
   * Creates a session for this connection, usually inside a request handler: the store keeps it,
   * then the client is told (type 21, before the reply of the request that created it). `info`
   * is JSON-serialisable application data the client sees too.
   *
   * Rejects with SessionsDisabledError, DisconnectedError, InvalidStateError (the connection
   * already has a session: its key is kept; or is restoring or closing one) or the store's error.
   */
  async createSession(info?: Readonly<Record<string, unknown>>): Promise<Session> {
    const settings = this.requireSessions();
    if (!this.peer.isOpen) throw new DisconnectedError('the connection is closed');
    if (this.currentSession !== null || this.sessionBusy) {
      throw new InvalidStateError('this connection already has a session');
    }
    const key = settings.keyGenerator.generate();
    if (typeof key !== 'string' || key.length === 0) {
      throw new InvalidArgumentError('the session key generator returned an empty key');
    }
    const now = new Date();
    const session: Session = { key, creation: now, lastLookup: now, info };
    const notification = encodeSessionCreated(sessionToJson(session));
    this.sessionBusy = true;
    let taken: Session | null;
    try {
      taken = await this.whilePending(key, async () => {
        // Stored first: a client is never told of a session the store does not have.
        await settings.manager.onSessionCreated(session);
        let attached: SessionAttachResult;
        try {
          attached = this.attached(key, await this.context.registry.attach(key, this));
        } catch (error) {
          await this.deleteUnannounced(key);
          throw error;
        }
        if (attached !== 'attached') return null;
        // Updated by key while it was being attached: the client hears of the session as it is now.
        const update = this.takePendingUpdate();
        const current = update?.session ?? session;
        this.currentSession = current;
        this.peer.sendRaw(update === null ? notification : encodeSessionCreated(update.json));
        return current;
      });
    } finally {
      this.sessionBusy = false;
    }
    if (taken === null) {
      await this.deleteUnannounced(key);
      if (!this.peer.isOpen) throw new DisconnectedError('the connection closed while the session was created');
      throw new InvalidStateError('the session was closed while it was created');
    }
    return taken;
  }

  /**
   * Replaces the info of this connection's session with `info` (replaced, not merged: pass the
   * whole info; undefined removes it), in the store first, then everywhere the session is held:
   * every connection holding it is sent the session again (type 21, same key: a v2.0 client
   * simply takes the new one; the `Client` emits `sessionUpdated`) and its `conn.session`
   * changes, on this server and, with the `bus` option, on the others. Resolves with the session
   * as stored. Same as `server.updateSession(conn.session.key, info)`.
   *
   * Rejects with SessionsDisabledError, InvalidArgumentError (info JSON would not keep exactly,
   * as for `createSession`), SessionStoreUnsupportedError (the store has no `onSessionUpdate`),
   * DisconnectedError, InvalidStateError (the connection has no session), SessionNotFoundError
   * (the store no longer has it, e.g. expired) or the store's error.
   *
   * @example
   * if (msg.name === 'rename') {
   *   await conn.updateSession({ ...conn.session?.info, name: payloadText(msg.payload) });
   * }
   */
  async updateSession(info?: Readonly<Record<string, unknown>>): Promise<Session> {
    const settings = this.requireSessions();
    checkSessionInfo(info);
    sessionUpdateHook(settings.manager);
    if (!this.peer.isOpen) throw new DisconnectedError('the connection is closed');
    const session = this.currentSession;
    if (session === null) throw new InvalidStateError('this connection has no session');
    return (await this.context.updateSession(session.key, info)).session;
  }

  /** The update kept while the session was pending (see `sessionUpdated`), once. */
  private takePendingUpdate(): { readonly session: Session; readonly json: string } | null {
    const update = this.pendingUpdate;
    this.pendingUpdate = null;
    return update;
  }

  /**
   * @internal Used by `Server` once the store has `session` (an update of its info): a connection
   * holding it takes it and its client is told (`notification`, type 21 with `json`); one still
   * attaching it keeps it for when it is attached. An update older than the one held or kept (by
   * version: see `Session.version`) is ignored. Returns true when the client was told.
   */
  sessionUpdated(session: Session, json: string, notification: Uint8Array): boolean {
    if (this.currentSession?.key === session.key) {
      if (isStaleSession(session, this.currentSession)) return false;
      this.currentSession = session;
      if (!this.peer.isOpen) return false;
      this.peer.sendRaw(notification);
      return true;
    }
    if (
      this.pendingSession === session.key &&
      (this.pendingUpdate === null || !isStaleSession(session, this.pendingUpdate.session))
    ) {
      this.pendingUpdate = { session, json };
    }
    return false;
  }

  /**
   * Runs `task` with the session `key` pending on this connection: it is in the session's audience
   * meanwhile (see `SessionRegistry.expect`), so that an update (`sessionUpdated`) or a close by
   * key (`dropSession`) landing before it holds the session is kept for when it takes it.
   */
  private async whilePending<T>(key: string, task: () => Promise<T>): Promise<T> {
    this.pendingSession = key;
    this.pendingDropped = false;
    this.pendingUpdate = null;
    this.context.registry.expect(key, this);
    try {
      return await task();
    } finally {
      this.context.registry.unexpect(key, this);
      this.pendingSession = null;
      this.pendingUpdate = null;
    }
  }

  /**
   * Deletes a session whose client was never told of it: nobody could restore or close it, so it
   * would otherwise stay in the store (in a MemorySessionManager, for the life of the process).
   */
  private async deleteUnannounced(key: string): Promise<void> {
    await this.context.sessions!.manager.onSessionClosed(key).catch((error: unknown) => {
      this.context.options.logger.error('session store failed to delete an unannounced session', { error });
    });
  }

  /**
   * Closes this connection's session: the client is told (type 22) and, when this was the
   * session's last connection (on every server, with a store that counts across processes), the
   * store deletes it. Nothing happens without a session. When the store fails, the connection
   * has let go of the session all the same (its client is told) and the store's error is thrown.
   */
  async closeSession(): Promise<void> {
    this.requireSessions();
    const session = this.currentSession;
    if (session === null) return;
    // Busy while the store answers, as for the client's close: a createSession in another
    // handler meanwhile would send its NotifySessionCreated before this close's
    // NotifySessionClosed, and the client would drop the new session the connection holds.
    this.sessionBusy = true;
    try {
      await this.detachSession(session);
    } finally {
      this.sessionBusy = false;
      // Told even when the store failed: the connection no longer holds the session either way.
      if (this.peer.isOpen) this.peer.sendRaw(encodeSessionClosed());
    }
  }

  /**
   * @internal Used by `Server.closeSession(key)`, which deletes the session: tell the client, no
   * store call but the count. A session still being attached is left unannounced. Returns true
   * when the client was told.
   */
  dropSession(key: string): boolean {
    if (this.pendingSession === key) this.pendingDropped = true;
    if (this.currentSession?.key !== key) return false;
    this.currentSession = null;
    this.context.registry.release(key, this);
    if (this.peer.isOpen) this.peer.sendRaw(encodeSessionClosed());
    return true;
  }

  private requireSessions(): SessionSettings {
    const settings = this.context.sessions;
    if (settings === null) throw new SessionsDisabledError('sessions are disabled on this server');
    return settings;
  }

  /** Detaches this connection from `session`; deletes it from the store when no connection holds it any more. */
  private async detachSession(session: Session): Promise<void> {
    this.currentSession = null;
    // Closing: a store that counts across processes deletes it with the count (see onSessionDetach).
    const left = await this.context.registry.detach(session.key, this, true);
    if (left !== 0) return;
    // Restores of it here that are still looking it up would attach a session being deleted. Not
    // this connection, pending while its client's close runs: it takes the session back only if
    // the store fails to delete it.
    for (const conn of this.context.registry.audience(session.key)) {
      if (conn !== this) conn.dropSession(session.key);
    }
    await this.context.sessions!.manager.onSessionClosed(session.key);
  }

  /**
   * The answer of `registry.attach(key, this)`, made inside `whilePending(key)`, as this connection
   * may take it: `'not-found'`, with the connection detached again, when the session was closed by
   * key meanwhile (`dropSession`) or the connection closed, since its client was never told of the
   * session. To be called as the caller resumes from that attach, the session taken (or not) in
   * the same synchronous step: a close by key landing later than this check, before the connection
   * holds the session, would be neither honoured nor heard (found by sweeping where it lands, in
   * test/session/attach-races.test.ts and close-failure.test.ts).
   */
  private attached(key: string, result: SessionAttachResult): SessionAttachResult {
    if (result === 'attached' && (this.pendingDropped || !this.peer.isOpen)) {
      this.context.registry.release(key, this);
      return 'not-found';
    }
    return result;
  }

  /** Client asked to close its session (type 31): empty reply, no type 22. */
  private async clientCloseSession(id: RequestId): Promise<void> {
    const session = this.currentSession;
    if (session === null || this.sessionBusy) {
      this.peer.sendRaw(encodeReply(id, EMPTY_PAYLOAD));
      return;
    }
    this.sessionBusy = true;
    try {
      // Pending from the start: should the store fail, the connection takes the session back, and
      // an update or a close by key made meanwhile (while it holds nothing) must reach it then.
      await this.whilePending(session.key, async () => {
        try {
          await this.detachSession(session);
        } catch (error) {
          this.context.options.logger.error('session store failed to close a session', { error });
          await this.clientCloseFailed(id, session);
          return;
        }
        this.peer.sendRaw(encodeReply(id, EMPTY_PAYLOAD));
      });
    } finally {
      this.sessionBusy = false;
    }
  }

  /**
   * The store failed while closing the session the client asked to close. The client is told the
   * close failed (internal-error: `InternalError`) and must end up holding the session exactly
   * when this connection does, so the connection takes the session back, as a restore would
   * (looks it up, then attaches it again):
   * - taken back: the store still has it; the client keeps it and can close it again;
   * - 'not-found': the store deleted it after all (the failure came after the delete, or only its
   *   answer was lost), or it was closed by key meanwhile (heard while pending: see
   *   `clientCloseSession`): the close succeeded, and is answered so;
   * - refused ('limit': another connection took the slot) or failed again (the store is down):
   *   the connection holds nothing, so the client is told it lost the session (type 22) before
   *   the failure. The store may still have it until it expires.
   */
  private async clientCloseFailed(id: RequestId, session: Session): Promise<void> {
    let attached: SessionAttachResult | undefined;
    if (this.peer.isOpen) {
      try {
        // Looked up first: a store without `onSessionAttach` (each server counting its own
        // connections) would not say it no longer has the session, and the connection would
        // hold one the store deleted.
        const stored = await this.context.sessions!.manager.onSessionLookup(session.key);
        attached =
          stored === null
            ? 'not-found'
            : this.attached(session.key, await this.context.registry.attach(session.key, this));
      } catch (error) {
        this.context.options.logger.error('session store failed to give a connection its session back', { error });
      }
    }
    if (attached === 'attached') {
      // An update heard since the close began is newer than what the client holds.
      const update = this.takePendingUpdate();
      if (update !== null && !isStaleSession(update.session, session)) {
        this.currentSession = update.session;
        this.peer.sendRaw(encodeSessionCreated(update.json));
      } else {
        this.currentSession = session;
      }
      this.peer.sendRaw(encodeSpecialReply(id, 'internal-error'));
      return;
    }
    if (attached === 'not-found') {
      this.peer.sendRaw(encodeReply(id, EMPTY_PAYLOAD));
      return;
    }
    this.peer.sendRaw(encodeSessionClosed());
    this.peer.sendRaw(encodeSpecialReply(id, 'internal-error'));
  }

  /** Client asked to restore a session (type 32). */
  private async clientRestoreSession(id: RequestId, keyBytes: Uint8Array): Promise<void> {
    const settings = this.context.sessions!;
    const key = keyBytes.length <= MAX_SESSION_KEY_BYTES ? latin1(keyBytes) : '';
    if (this.currentSession !== null || this.sessionBusy) {
      this.peer.sendRaw(encodeReplyError(id, 'SESSION_ACTIVE', 'this connection already has a session'));
      return;
    }
    // A key the generator could not have made is simply unknown: no store call at all.
    if (!settings.keyGenerator.isValid(key)) {
      this.peer.sendRaw(encodeSpecialReply(id, 'session-not-found'));
      return;
    }
    this.sessionBusy = true;
    try {
      // Pending from before the lookup: an update of the session landing between the lookup and
      // the attach reaches this connection (see `sessionUpdated`) instead of being lost, and so
      // does a close by key (see `dropSession`): the lookup may have read the session before the
      // store deleted it.
      await this.whilePending(key, () => this.restore(id, key, settings));
    } finally {
      this.sessionBusy = false;
    }
  }

  /** Looks the session up and attaches this connection to it; answers the restore request. */
  private async restore(id: RequestId, key: string, settings: SessionSettings): Promise<void> {
    let session: Session | null;
    let json = '';
    try {
      session = await settings.manager.onSessionLookup(key);
      const parse = settings.parseInfo;
      if (session !== null && parse !== undefined && session.info !== undefined) {
        session = { ...session, info: parse(session.info) };
      }
      // Serialised before any state changes: parsed info JSON cannot hold (a Date, a class
      // instance) must fail the restore here, not after the session was attached to this connection.
      if (session !== null) json = sessionToJson(session);
    } catch (error) {
      this.context.options.logger.error('session store failed to look up a session', { error });
      this.peer.sendRaw(encodeSpecialReply(id, 'internal-error'));
      return;
    }
    if (session === null || !this.peer.isOpen) {
      this.peer.sendRaw(encodeSpecialReply(id, 'session-not-found'));
      return;
    }
    // The limit is checked and the connection registered in one synchronous step after the lookup
    // (the reference checked, awaited, then registered): racing restores cannot pass the limit,
    // and a key that does not exist is "not found" for every one of them. A store that counts
    // across processes then checks the limit across them, atomically on its side.
    let attached: SessionAttachResult;
    try {
      attached = this.attached(key, await this.context.registry.attach(key, this));
    } catch (error) {
      this.context.options.logger.error('session store failed to attach a connection to a session', { error });
      this.peer.sendRaw(encodeSpecialReply(id, 'internal-error'));
      return;
    }
    if (attached !== 'attached') {
      this.peer.sendRaw(encodeSpecialReply(id, attached === 'limit' ? 'max-session-connections' : 'session-not-found'));
      return;
    }
    // An update that came after the lookup read the session is newer than what it read; one that
    // came before is what the lookup read, or older than an update still to arrive (which then
    // reaches this connection as it holds the session). With versions, the newer of the two is
    // known: an update written before the lookup but heard after it is older than what it read.
    let update = this.takePendingUpdate();
    if (update !== null && isStaleSession(update.session, session)) update = null;
    this.currentSession = update?.session ?? session;
    this.peer.sendRaw(encodeReply(id, utf8(update?.json ?? json)));
  }

  /** Counts a session request as in flight until it is answered (see `whenIdle`). */
  private sessionRequest(answered: Promise<void>): void {
    this.sessionRequests ??= new Set();
    const requests = this.sessionRequests;
    requests.add(answered);
    const done = (): void => {
      requests.delete(answered);
    };
    answered.then(done, done);
  }

  /** Last resort for a session request that failed unexpectedly: logged, internal-error reply. */
  private sessionFailure(id: RequestId, error: unknown): void {
    this.context.options.logger.error('session request failed', { error });
    this.peer.sendRaw(encodeSpecialReply(id, 'internal-error'));
  }

  /** @internal Shutdown, step 1: refuse new work. */
  drain(): void {
    this.peer.drain();
  }

  /**
   * @internal Shutdown, step 2: resolves when no handler runs or waits and every session request
   * is answered (or the connection closed). Once draining, no new one starts.
   */
  whenIdle(): Promise<void> {
    const handlers = this.peer.whenIdle();
    const sessions = this.sessionRequests;
    if (sessions === undefined || sessions.size === 0) return handlers;
    return Promise.all([handlers, Promise.race([Promise.all(sessions), this.closed])]).then(() => {});
  }

  /** @internal Shutdown timed out: abort what still runs. */
  abortHandlers(): void {
    this.peer.abortHandlers(new ShutdownError('the server is shutting down'));
  }

  /** @internal Closes with a close frame at once, without draining. */
  closeNow(code: number, reason: string): void {
    this.peer.close(code, reason);
  }

  private handleRequest(message: IncomingMessage, context: RequestContext): ReplyValue | Promise<ReplyValue> {
    const { onRequest } = this.context.options;
    if (onRequest === undefined) {
      throw new Error(`no onRequest handler for request ${JSON.stringify(message.name)}`);
    }
    return onRequest(this, message, context);
  }

  private handleControl(message: Message): void {
    switch (message.kind) {
      case 'client-conf':
        if (this.context.options.protocolMinor < 1) {
          // A v2.0 server does not know type 34.
          this.peer.violation(new ProtocolError('ERR_PROTOCOL_UNKNOWN_TYPE', 'unknown message type 34'));
        } else if (this.clientConfReceived) {
          this.peer.violation(new ProtocolError('ERR_PROTOCOL_UNEXPECTED_MESSAGE', 'ClientConf sent twice'));
        } else {
          this.clientConfReceived = true;
          this.peer.v21 = message.minor >= 1;
          this.settleVersion(this.peer.v21);
        }
        return;
      case 'close-session':
      case 'restore-session':
        if (this.peer.isDraining) {
          this.peer.sendRaw(encodeSpecialReply(message.id, 'shutdown'));
        } else if (this.context.sessions === null) {
          // Disabled: answered at once, and no store hook is called.
          this.peer.sendRaw(encodeSpecialReply(message.id, 'sessions-disabled'));
        } else {
          const { id } = message;
          const answer =
            message.kind === 'close-session' ? this.clientCloseSession(id) : this.clientRestoreSession(id, message.key);
          this.sessionRequest(answer.catch((error: unknown) => this.sessionFailure(id, error)));
        }
        return;
      default:
        // Heartbeats only reset the read timeout, which every message does. Types meant for
        // clients (AcceptConf, session notifications) are ignored, as in the reference.
        return;
    }
  }

  /**
   * One timer per connection, re-armed lazily from the time of the last message received. A
   * `readTimeout` longer than a timer can wait (it may be up to 2^32 - 1 ms, as AcceptConf carries
   * it) is waited for in steps: Node would fire a longer timer after 1 ms.
   */
  private armReadTimer(delay: number): void {
    this.readTimer = setTimeout(
      () => {
        const { readTimeout } = this.context.options;
        const silent = this.peer.silence(performance.now());
        if (silent >= readTimeout) {
          this.context.options.logger.debug('read timeout, closing', { id: this.id });
          this.closeNow(CloseCode.GoingAway, 'read timeout');
        } else {
          this.armReadTimer(readTimeout - silent);
        }
      },
      Math.min(MAX_TIMER_DELAY, Math.max(1, Math.ceil(delay))),
    );
  }

  private handleClosed(code: number, reason: string): void {
    clearTimeout(this.readTimer);
    if (this.subscribed !== undefined) {
      // The transport forgot its own subscriptions with the socket (and a closed uWS socket must
      // not be touched): only the server's map is left to clean.
      for (const topic of this.subscribed) this.context.topics.remove(topic, this);
      this.subscribed.clear();
    }
    // A disconnect keeps the session in the store, to be restored later.
    if (this.currentSession !== null) {
      this.context.registry.release(this.currentSession.key, this);
      this.currentSession = null;
    }
    const info: DisconnectInfo = { code, reason };
    this.settleVersion(false);
    this.resolveClosed(info);
    this.context.closed(this, info);
  }
}

const NO_TOPICS: ReadonlySet<string> = new Set();

/** Longer keys are not read at all: no generator makes them. */
const MAX_SESSION_KEY_BYTES = 1024;

/** Keys are sent as raw bytes; the default alphabet is ASCII, and any other byte makes them invalid. */
function latin1(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < bytes.length; i++) out += String.fromCharCode(bytes[i]!);
  return out;
}
