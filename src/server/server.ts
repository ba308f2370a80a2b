import { STATUS_CODES } from 'node:http';
import { nanoid } from 'nanoid';
import { decode } from '../../protocol/decode.ts';
import { encodeAcceptConf, encodeSessionCreated, encodeSignal } from '../../protocol/encode.ts';
import { CloseCode, PROTOCOL_MAJOR, type Payload } from '../../protocol/types.ts';
import { IGNORED_SOCKET } from '../../transports/owner-fault.ts';
import type {
  SocketHandlers,
  TransportSocket,
  UpgradeDecision,
  UpgradeRefusal,
  UpgradeRequest,
} from '../../transports/types.ts';
import { InvalidArgumentError, InvalidStateError, SessionNotFoundError, SessionsDisabledError } from '../errors.ts';
import {
  BusSubscriptions,
  decodeBusMessage,
  decodeSessionClosedBody,
  decodeSessionUpdatedBody,
  encodeBusMessage,
  encodeSessionClosedBody,
  encodeSessionUpdatedBody,
  SESSIONS_CHANNEL,
  sessionFromUpdatedJson,
  sessionUpdatedJson,
} from '../cluster/bus.ts';
import { KeyedQueue } from '../session/keyed-queue.ts';
import { checkSessionInfo, type Session, sessionToJson } from '../session/session.ts';
import { checkInteger, MAX_TIMER_DELAY } from '../util/validate.ts';
import {
  ADMIT_PUBLISH,
  Connection,
  SEND_SIGNAL,
  type SessionInfo,
  type SessionUpdate,
  sessionUpdateHook,
  TRANSPORT_SOCKET,
} from './connection.ts';
import { SessionRegistry, type SessionSettings } from './session-registry.ts';
import { checkTopic, TopicRegistry } from './topics.ts';
import {
  type DisconnectInfo,
  type ResolvedServerOptions,
  resolveServerOptions,
  type ServerOptions,
  type UpgradeVerdict,
} from './options.ts';

type ServerState = 'new' | 'starting' | 'listening' | 'shutting-down' | 'stopped';

/** Options of `publish()`. */
export interface PublishOptions {
  /** A connection left out, though subscribed (usually the one whose message is published). */
  readonly except?: Connection | undefined;
}

/** Options of `shutdown()`. */
export interface ShutdownOptions {
  /** Overrides the server's `shutdownTimeout` for this call. */
  readonly timeout?: number;
}

/**
 * A duplexwire server on any transport.
 *
 * @example
 * const server = new Server({
 *   transport: wsTransport({ host: '127.0.0.1', port: 8080 }),
 *   onRequest: async (conn, msg) => msg.payload, // echo
 * });
 * await server.listen();
 * // ...
 * await server.shutdown();
 */
export class Server {
  private readonly options: ResolvedServerOptions;
  private readonly acceptConf: Uint8Array;
  private readonly live = new Set<Connection>();
  private readonly registry: SessionRegistry<Connection>;
  /** Updates of one session run one at a time, in call order, store write and fan-out together. */
  private readonly sessionUpdates = new KeyedQueue();
  private readonly topicRegistry: TopicRegistry<Connection>;
  /** This process on the bus: its own messages come back to it and are ignored. */
  private readonly busOrigin = nanoid();
  /** Subscriptions on the bus, when there is one. */
  private readonly busSubscriptions: BusSubscriptions | undefined;
  private state: ServerState = 'new';
  /**
   * Upgrades waiting for an async `beforeUpgrade`, each as the function that answers it (once) and
   * clears its timer. `shutdown()` answers them all with 503 at once: their verdict would be
   * refused anyway, and no timer may outlive the server.
   */
  private readonly pendingUpgrades = new Set<(decide: () => UpgradeDecision) => void>();
  private stopping: Promise<void> | undefined;

  constructor(options: ServerOptions) {
    this.options = resolveServerOptions(options);
    this.registry = new SessionRegistry(this.options.sessions, this.options.logger);
    const { bus } = this.options;
    if (bus === undefined) {
      this.topicRegistry = new TopicRegistry<Connection>();
    } else {
      const subscriptions = new BusSubscriptions(
        bus,
        (topic, message) =>
          topic === SESSIONS_CHANNEL ? this.sessionChangedOnBus(message) : this.fromBus(topic, message),
        (doing, topic, error) => this.options.logger.error(`${doing} on the bus failed`, { topic, error }),
      );
      this.busSubscriptions = subscriptions;
      this.topicRegistry = new TopicRegistry<Connection>({
        first: (topic) => subscriptions.want(topic, true),
        last: (topic) => subscriptions.want(topic, false),
      });
    }

    const { protocolMinor, readTimeout, maxMessageSize, subProtocol } = this.options;
    // The same bytes open every connection: encode them once.
    this.acceptConf = encodeAcceptConf({
      major: PROTOCOL_MAJOR,
      minor: protocolMinor,
      readTimeout,
      maxMessageSize,
      subProtocol,
    });
  }

  /** Starts the transport. Resolves once it accepts connections. */
  async listen(): Promise<void> {
    if (this.state !== 'new') throw new InvalidStateError(`listen() called on a server that is ${this.state}`);
    this.state = 'starting';
    try {
      await this.options.transport.start(
        {
          upgrade: (request) => this.decideUpgrade(request),
          connection: (socket, request) => this.accept(socket, request),
        },
        { maxMessageSize: this.options.maxMessageSize },
      );
    } catch (error) {
      if (this.state === 'starting') this.state = 'stopped';
      throw error;
    }
    // shutdown() while the transport started: it stops the transport, and the server stays
    // shutting down (then stopped), not listening again for a while.
    if (this.state !== 'starting') return;
    this.state = 'listening';
    // Sessions closed or updated by key on other servers reach their connections here.
    if (this.options.sessions !== null) this.busSubscriptions?.want(SESSIONS_CHANNEL, true);
  }

  /** Where the transport listens (`port` is the real one when 0 was asked for). */
  address(): { readonly host: string; readonly port: number } | null {
    return this.options.transport.address();
  }

  /** The open connections. */
  get connections(): ReadonlySet<Connection> {
    return this.live;
  }

  /** True when sessions are enabled. */
  get sessionsEnabled(): boolean {
    return this.options.sessions !== null;
  }

  /**
   * Sends one signal to every open connection, or to those `filter` accepts, encoding it once
   * (`conn.signal()` in a loop encodes it per connection). Returns how many connections it went
   * to. Each send is the connection's own, with its limits: one that stopped reading and is over
   * `maxBufferedBytes` is closed (1008) and not counted, as with `conn.signal()`. Throws
   * ProtocolError for a name or payload that may not be sent, and whatever `filter` throws, before
   * sending anything.
   *
   * @example
   * server.broadcast('news', utf8('maintenance at 22:00'));
   * server.broadcast('chat', utf8(text), (conn) => rooms.get(conn) === 'lobby');
   */
  broadcast(name: string, payload: Payload, filter?: (conn: Connection) => boolean): number {
    const bytes = encodeSignal(name, payload);
    // With a filter, every connection is judged before anything is sent: a filter that throws
    // leaves no connection with the signal and the others without.
    const targets = filter === undefined ? this.live : [...this.live].filter(filter);
    let sent = 0;
    // A connection closed by its send leaves the Set during the loop: a Set allows that.
    for (const conn of targets) if (conn[SEND_SIGNAL](bytes)) sent++;
    return sent;
  }

  /**
   * Sends one signal to every connection subscribed to `topic` (`conn.subscribe()`), encoding it
   * once, and returns how many it went to. `except` leaves one connection out (the sender of a
   * chat message, say). As with `broadcast`, each send is the connection's own, with its limits:
   * one that stopped reading and is over `maxBufferedBytes` is closed (1008) and not counted.
   * Throws InvalidArgumentError for an invalid topic and ProtocolError for a name or payload that
   * may not be sent, before sending anything.
   *
   * On uWebSockets.js the signal goes out through uWS's own pub/sub (`app.publish`): framed once
   * and written in native code, batched with whatever else the connection is sent in the same
   * turn of the event loop. Connections that are behind (whose send could meet backpressure) are
   * sent to one by one as on the other transports, so what each connection receives, in what
   * order, and when it is closed, is the same everywhere.
   *
   * Subscriptions are per server process; with the `bus` option (`redisTopicBus`), a publish also
   * reaches the subscribers of the other processes, and the count stays this process's.
   *
   * @example
   * server.publish('room:lobby', 'chat', utf8(JSON.stringify({ from, text })), { except: conn });
   */
  publish(topic: string, name: string, payload: Payload, options: PublishOptions = {}): number {
    checkTopic(topic);
    const bytes = encodeSignal(name, payload);
    const { bus } = this.options;
    if (bus !== undefined) {
      // The other processes deliver to their own subscribers; a bus failure costs them this
      // signal, not this process's subscribers.
      const message = encodeBusMessage(this.busOrigin, bytes);
      this.onBus('publishing', topic, () => bus.publish(topic, message));
    }
    return this.deliver(topic, bytes, options.except);
  }

  /**
   * Calls the bus. Whatever it does, failing included (a rejection, or a throw from a bus that is
   * not async), is logged and never reaches the caller: local delivery and subscriptions go on.
   */
  private onBus(doing: string, topic: string, call: () => Promise<unknown>): void {
    let result: Promise<unknown>;
    try {
      result = Promise.resolve(call());
    } catch (error) {
      result = Promise.reject(error);
    }
    result.catch((error: unknown) => this.options.logger.error(`${doing} on the bus failed`, { topic, error }));
  }

  /** A publish of another process, from the bus: delivered here as if published here. */
  private fromBus(topic: string, message: Uint8Array): void {
    const decoded = decodeBusMessage(message);
    if (decoded === undefined) {
      this.options.logger.warn('a bus message that is not a duplexwire publish was ignored', { topic });
      return;
    }
    if (decoded.origin === this.busOrigin) return;
    // Only whole, valid signals reach clients, whoever else writes to the channel.
    let kind: string | undefined;
    try {
      kind = decode(decoded.signal).kind;
    } catch {}
    if (kind !== 'signal') {
      this.options.logger.warn('a bus message that is not a duplexwire publish was ignored', { topic });
      return;
    }
    this.deliver(topic, decoded.signal, undefined);
  }

  /** Sends an encoded signal to this process's subscribers of `topic`; returns how many it reached. */
  private deliver(topic: string, bytes: Uint8Array, except: Connection | undefined): number {
    const subscribers = this.topicRegistry.subscribers(topic);
    const { transport } = this.options;
    let sent = 0;
    if (transport.publish === undefined) {
      // A send may close its connection, which then leaves the Set during the loop: a Set allows that.
      for (const conn of subscribers) if (conn !== except && conn[SEND_SIGNAL](bytes)) sent++;
      return sent;
    }
    // Native fan-out. Every subscriber is judged first, without sending: those the transport
    // admits get the signal from its publish and are counted now (nothing can drop it on the
    // way); the others are left out of the publish and sent to one by one afterwards, through
    // their peer engine as above, so that backpressure, `maxBufferedBytes` and closing work as
    // on any transport. A connection that is not open (closing) is neither: the transport has
    // already left it out of every publish.
    let behind: Connection[] | undefined;
    for (const conn of subscribers) {
      if (conn === except) continue;
      const admission = conn[ADMIT_PUBLISH](bytes.length);
      if (admission === 'native') sent++;
      else if (admission === 'send') {
        behind ??= [];
        behind.push(conn);
      }
    }
    if (sent > 0) {
      const skip: TransportSocket[] = behind === undefined ? [] : behind.map((conn) => conn[TRANSPORT_SOCKET]);
      if (except !== undefined && subscribers.has(except)) skip.push(except[TRANSPORT_SOCKET]);
      transport.publish(topic, bytes, skip);
    }
    if (behind !== undefined) for (const conn of behind) if (conn[SEND_SIGNAL](bytes)) sent++;
    return sent;
  }

  /** The connections subscribed to `topic` on this server (a live view: copy it to keep it). */
  subscribers(topic: string): ReadonlySet<Connection> {
    return this.topicRegistry.subscribers(topic);
  }

  /** Number of sessions with at least one connection to this server. */
  get activeSessionCount(): number {
    return this.registry.size;
  }

  /** The connections holding the session `key` on this server. */
  sessionConnections(key: string): Connection[] {
    return this.registry.connections(key);
  }

  /**
   * Closes the session `key`: each of its connections is told (type 22) and the store deletes it.
   * With the `bus` option, the other servers on the bus close it on their connections too.
   * Resolves with the number of this server's connections that held it.
   */
  async closeSession(key: string): Promise<number> {
    const settings = this.options.sessions;
    if (settings === null) throw new SessionsDisabledError('sessions are disabled on this server');
    const count = this.dropSession(key);
    try {
      await settings.manager.onSessionClosed(key);
    } finally {
      // Deleted first, then announced: a restore another server starts once it has heard finds
      // nothing, where it would have taken the session the store was about to delete.
      const { bus } = this.options;
      if (bus !== undefined) {
        const message = encodeBusMessage(this.busOrigin, encodeSessionClosedBody(key));
        this.onBus('closing a session', SESSIONS_CHANNEL, () => bus.publish(SESSIONS_CHANNEL, message));
      }
    }
    return count;
  }

  /** Tells this server's connections of the session `key` that it is closed; returns how many held it. */
  private dropSession(key: string): number {
    let count = 0;
    // The audience, not only the holders: a connection whose restore is still looking the
    // session up may have read it before the store deleted it, and must not attach it then.
    for (const conn of this.registry.audience(key)) if (conn.dropSession(key)) count++;
    return count;
  }

  /**
   * Replaces the info of the session `key` with `info` (replaced, not merged; undefined removes
   * it): the store first (its `onSessionUpdate`), then every connection holding the session is
   * sent it again (type 21 with the same key; the `Client` emits `sessionUpdated`) and its
   * `conn.session` changes. Connections still restoring the session get the new info too. With
   * the `bus` option, the other servers update their connections as well. Resolves with the
   * number of this server's connections that were told, as `closeSession(key)` counts.
   *
   * Updates of one session made through this server are applied in call order. Across servers,
   * with a store that keeps versions (every built-in store), the store's order wins: a connection
   * never takes an update older than the session it holds, so two servers updating one session
   * at once leave every connection with the one the store wrote last, and this call then tells
   * no connection when it lost that race. Rejects with
   * SessionsDisabledError, InvalidArgumentError (info JSON would not keep exactly),
   * SessionStoreUnsupportedError (the store has no `onSessionUpdate`), SessionNotFoundError (no
   * such session: nothing is sent) or the store's error.
   *
   * @example
   * // An administrator renames a user: every tab of theirs sees it at once.
   * await server.updateSession(key, { user: 'ada', name: 'Ada Lovelace' });
   */
  async updateSession(key: string, info?: Readonly<Record<string, unknown>>): Promise<number> {
    return (await this.updateSessionByKey(key, info)).told;
  }

  /** `updateSession`, and `conn.updateSession` through each connection's context. */
  private readonly updateSessionByKey = async (key: string, info: SessionInfo): Promise<SessionUpdate> => {
    const settings = this.options.sessions;
    if (settings === null) throw new SessionsDisabledError('sessions are disabled on this server');
    checkSessionInfo(info);
    const update = sessionUpdateHook(settings.manager);
    // As for a restore: a key the generator could not have made is unknown, and no store is asked.
    if (!settings.keyGenerator.isValid(key)) throw new SessionNotFoundError('no session has this key');
    return this.sessionUpdates.run(key, async () => {
      const session = await update(key, info);
      if (session === null) throw new SessionNotFoundError('the session store has no session with this key');
      const json = sessionToJson(session);
      const told = this.sessionUpdated(session, json);
      const { bus } = this.options;
      if (bus !== undefined) {
        const message = encodeBusMessage(this.busOrigin, encodeSessionUpdatedBody(sessionUpdatedJson(session)));
        this.onBus('updating a session', SESSIONS_CHANNEL, () => bus.publish(SESSIONS_CHANNEL, message));
      }
      return { session, told };
    });
  };

  /**
   * Gives this server's connections of `session` its new state (encoded once), unless they hold
   * a newer one (see `Session.version`); returns how many were told.
   */
  private sessionUpdated(session: Session, json: string): number {
    const notification = encodeSessionCreated(json);
    let told = 0;
    for (const conn of this.registry.audience(session.key))
      if (conn.sessionUpdated(session, json, notification)) told++;
    return told;
  }

  /** A session closed or updated by key on another server, from the bus. */
  private sessionChangedOnBus(message: Uint8Array): void {
    const decoded = decodeBusMessage(message);
    if (decoded?.origin === this.busOrigin) return;
    const settings = this.options.sessions;
    if (decoded !== undefined && settings !== null) {
      const key = decodeSessionClosedBody(decoded.signal);
      if (key !== undefined && settings.keyGenerator.isValid(key)) {
        this.dropSession(key);
        return;
      }
      const json = decodeSessionUpdatedBody(decoded.signal);
      if (json !== undefined && this.sessionUpdatedOnBus(json, settings)) return;
    }
    this.options.logger.warn('a bus message that is not a duplexwire session change was ignored');
  }

  /**
   * A session updated on another server (already stored): given to this server's connections as
   * a restore gives it, through `parseSessionInfo`, unless they hold a newer version (the bus may
   * deliver two servers' updates in the other order than the store wrote them). False when `text`
   * is not a session.
   */
  private sessionUpdatedOnBus(text: string, settings: SessionSettings): boolean {
    let session: Session;
    try {
      session = sessionFromUpdatedJson(text);
    } catch {
      return false;
    }
    if (!settings.keyGenerator.isValid(session.key)) return false;
    let json: string;
    try {
      const parse = settings.parseInfo;
      if (parse !== undefined && session.info !== undefined) session = { ...session, info: parse(session.info) };
      json = sessionToJson(session);
    } catch (error) {
      // As a restore would fail: this server's connections keep what they had.
      this.options.logger.error('a session updated on another server could not be given to its connections here', {
        error,
      });
      return true;
    }
    this.sessionUpdated(session, json);
    return true;
  }

  /** True from `shutdown()` on. */
  get isShuttingDown(): boolean {
    return this.state === 'shutting-down' || this.state === 'stopped';
  }

  /**
   * Shuts down gracefully: new connections get HTTP 503, new requests the shutdown reply, signals
   * are dropped; requests in flight (a client's session restore or close included) finish and
   * their replies are delivered; then every connection closes with 1001 and the transport stops.
   * After `timeout` ms, handlers still running are aborted (their AbortSignal fires) and
   * connections close anyway.
   *
   * From inside a handler (`onRequest`, `onSignal`), call it without awaiting it and return: the
   * shutdown waits for every running handler, the calling one included, so a handler that awaits
   * it waits for itself until `timeout` aborts it, and its reply is lost. (Which handler calls
   * cannot be told apart from one that is merely running, and its reply must go out before its
   * connection closes: the shutdown cannot skip it.)
   *
   * @example
   * onRequest: (conn, msg) => {
   *   if (msg.name !== 'admin.stop') return msg.payload;
   *   void server.shutdown(); // not awaited: this reply goes out, then the server stops
   *   return 'stopping';
   * },
   */
  shutdown(options: ShutdownOptions = {}): Promise<void> {
    const timeout = checkInteger('timeout', options.timeout ?? this.options.shutdownTimeout, 0, MAX_TIMER_DELAY);
    this.stopping ??= this.runShutdown(timeout);
    return this.stopping;
  }

  private async runShutdown(timeout: number): Promise<void> {
    const wasListening = this.state === 'listening' || this.state === 'starting';
    this.state = 'shutting-down';
    // An upgrade accepted a moment ago may still be on its way to the transport (an async
    // decision reaches it a few microtasks later): the transport refuses it as any other now.
    if (wasListening) this.options.transport.refuseUpgrades?.(shuttingDown());
    for (const finish of [...this.pendingUpgrades]) finish(shuttingDown);
    const connections = [...this.live];
    for (const conn of connections) conn.drain();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = await Promise.race([
      Promise.all(connections.map((conn) => conn.whenIdle())).then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), timeout);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.options.logger.warn('shutdown timed out; aborting handlers still running', { timeout });
      for (const conn of connections) conn.abortHandlers();
    }
    for (const conn of this.live) conn.closeNow(CloseCode.GoingAway, SHUTTING_DOWN);
    await Promise.all([...this.live].map((conn) => conn.closed));
    if (wasListening) await this.options.transport.stop();
    // The closed connections' sessions are let go of in the store (see SessionRegistry.idle).
    await this.registry.idle();
    this.busSubscriptions?.want(SESSIONS_CHANNEL, false);
    // Failed bus calls are retried on a timer: not after the server stopped.
    this.busSubscriptions?.stop();
    if (this.options.ownsSessionManager) await this.options.sessions?.manager.close?.();
    this.state = 'stopped';
  }

  private async decideUpgrade(request: UpgradeRequest): Promise<UpgradeDecision> {
    if (this.state !== 'listening') return shuttingDown();
    // Both bounds are checked before the hook runs: a refused upgrade costs no hook call. An
    // upgrade being decided holds a socket as an open connection does, so it takes a place too.
    const pending = this.pendingUpgrades.size;
    if (this.live.size + pending >= this.options.maxConnections) return refuse(503, 'too many connections');
    if (pending >= this.options.maxPendingUpgrades) return refuse(503, 'too many pending upgrades');
    const { beforeUpgrade } = this.options;
    if (beforeUpgrade === undefined) return { accept: true };
    let verdict: ReturnType<typeof beforeUpgrade>;
    try {
      verdict = beforeUpgrade(request);
    } catch (error) {
      return this.hookFailed(error);
    }
    // A synchronous verdict needs no timer.
    return isPromiseLike(verdict) ? this.awaitVerdict(request, verdict) : this.judge(request, verdict);
  }

  /**
   * Waits for an async verdict at most `upgradeTimeout` ms: until the transport is answered it
   * holds the client's socket, so a hook that never settles must not hold it forever. One timer
   * per pending upgrade, cleared by whichever comes first: the verdict, the deadline, or
   * `shutdown()` (see `pendingUpgrades`). Whatever the hook does after that is ignored.
   */
  private awaitVerdict(request: UpgradeRequest, verdict: PromiseLike<UpgradeVerdict>): Promise<UpgradeDecision> {
    const timeout = this.options.upgradeTimeout;
    return new Promise<UpgradeDecision>((resolve, reject) => {
      let settled = false;
      // The client left: its answer goes nowhere, and the hook is not late (no warning).
      const left = (): void => finish(() => refuse(503, 'the client went away'));
      const finish = (decide: () => UpgradeDecision): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        request.signal?.removeEventListener('abort', left);
        this.pendingUpgrades.delete(finish);
        try {
          resolve(decide());
        } catch (error) {
          // A throwing logger: the transport answers a rejected decision with 500, as before.
          reject(error);
        }
      };
      const timer = setTimeout(() => {
        finish(() => {
          // Path and address only: headers and query may carry credentials.
          this.options.logger.warn('beforeUpgrade did not settle in time; refusing the connection with 503', {
            timeout,
            path: request.path,
            remoteAddress: request.remoteAddress,
          });
          return refuse(503, 'upgrade decision timed out');
        });
      }, timeout);
      this.pendingUpgrades.add(finish);
      if (request.signal?.aborted === true) left();
      else request.signal?.addEventListener('abort', left, { once: true });
      // Both callbacks are given, so a late rejection is handled (ignored), never unhandled;
      // `finish` makes a late accept a no-op, so it cannot reach `pendingVerdicts`.
      Promise.resolve(verdict).then(
        (value) => finish(() => this.judge(request, value)),
        (error: unknown) => finish(() => this.hookFailed(error)),
      );
    });
  }

  private hookFailed(error: unknown): UpgradeDecision {
    this.options.logger.error('beforeUpgrade failed; refusing the connection', { error });
    return refuse(500);
  }

  /** Turns the hook's verdict into the transport's decision. */
  private judge(request: UpgradeRequest, verdict: UpgradeVerdict): UpgradeDecision {
    // The server may have begun shutting down while the hook ran.
    if (this.state !== 'listening') return shuttingDown();
    if (verdict === undefined || verdict === true) return { accept: true };
    if (verdict === false) return refuse(403);
    if (verdict.accept) {
      const { protocol } = verdict;
      if (protocol !== undefined && typeof protocol !== 'string') {
        this.options.logger.error('beforeUpgrade accepted with a protocol that is not a string; refusing with 500');
        return refuse(500);
      }
      pendingVerdicts.set(request, verdict);
      return protocol === undefined ? { accept: true } : { accept: true, protocol };
    }
    const status = verdict.status ?? 403;
    if (!Number.isInteger(status) || status < 400 || status > 599) {
      this.options.logger.error('beforeUpgrade refused with an invalid status; using 500', { status });
      return refuse(500);
    }
    return refuse(status, verdict.reason, verdict.headers);
  }

  private accept(socket: TransportSocket, request: UpgradeRequest): SocketHandlers {
    const verdict = pendingVerdicts.get(request);
    pendingVerdicts.delete(request);
    if (this.state !== 'listening') {
      // Accepted before shutdown() began, opened after, on a transport without `refuseUpgrades`
      // (ws, uWS and memory have it and answer 503): no AcceptConf, no onClientConnected.
      socket.close(CloseCode.GoingAway, SHUTTING_DOWN);
      return IGNORED_SOCKET;
    }
    if (this.live.size >= this.options.maxConnections) {
      // Accepted while others were being decided, and the limit was reached meanwhile: only on a
      // transport that opens a connection later than its decision, letting others be decided
      // between the two (the in-memory pair). ws and uWS open it in the microtasks that follow.
      socket.close(CloseCode.TryAgainLater, 'too many connections');
      return IGNORED_SOCKET;
    }
    let concurrency = this.options.concurrency;
    if (verdict?.concurrency !== undefined) {
      try {
        concurrency = checkInteger('concurrency', verdict.concurrency, 1, 1_000_000);
      } catch (error) {
        this.options.logger.error('beforeUpgrade returned an invalid concurrency; using the default', { error });
      }
    }
    const conn = new Connection(socket, request, {
      id: connectionId(),
      options: this.options,
      concurrency,
      info: verdict?.info,
      acceptConf: this.acceptConf,
      closed: this.forgetConnection,
      sessions: this.options.sessions,
      registry: this.registry,
      topics: this.topicRegistry,
      updateSession: this.updateSessionByKey,
    });
    this.live.add(conn);
    const handlers = conn.start();
    const { onClientConnected } = this.options;
    if (onClientConnected !== undefined) {
      // Runs after the transport installed the handlers, so the hook may already send.
      queueMicrotask(() => this.runHook('onClientConnected', () => onClientConnected(conn)));
    }
    return handlers;
  }

  /** One function for every connection's `closed` callback, not a closure per connection. */
  private readonly forgetConnection = (conn: Connection, info: DisconnectInfo): void => this.forget(conn, info);

  private forget(conn: Connection, info: DisconnectInfo): void {
    if (!this.live.delete(conn)) return;
    const { onClientDisconnected } = this.options;
    if (onClientDisconnected !== undefined) {
      this.runHook('onClientDisconnected', () => onClientDisconnected(conn, info));
    }
  }

  private runHook(name: string, hook: () => void | Promise<void>): void {
    try {
      const result = hook();
      if (result instanceof Promise) {
        result.catch((error: unknown) => this.options.logger.error(`${name} failed`, { error }));
      }
    } catch (error) {
      this.options.logger.error(`${name} failed`, { error });
    }
  }
}

/**
 * A nanoid, flattened. nanoid builds its string one character at a time, and V8 keeps that as a
 * chain of ~20 rope nodes (~330 bytes) until something reads the characters; reading one makes it
 * a flat string of ~50 bytes. Ids live as long as their connection (bench/RESULTS.md, memory).
 */
function connectionId(): string {
  const id = nanoid();
  id.charCodeAt(0);
  return id;
}

/**
 * Verdicts of `beforeUpgrade` between the decision and the connection, keyed by the request
 * object the transport hands to both calls.
 */
const pendingVerdicts = new WeakMap<UpgradeRequest, { readonly concurrency?: number; readonly info?: unknown }>();

function isPromiseLike<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

const SHUTTING_DOWN = 'server shutting down';

/** The answer to any upgrade once `shutdown()` began. */
function shuttingDown(): UpgradeRefusal {
  return { accept: false, status: 503, body: SHUTTING_DOWN };
}

function refuse(status: number, reason?: string, headers?: Readonly<Record<string, string>>): UpgradeDecision {
  if (!Number.isInteger(status)) throw new InvalidArgumentError('status must be an integer');
  const body = reason ?? STATUS_CODES[status] ?? 'refused';
  return headers === undefined ? { accept: false, status, body } : { accept: false, status, body, headers };
}
