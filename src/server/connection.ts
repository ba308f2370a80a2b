import { encodeRequest, encodeSpecialReply } from '../../protocol/encode.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { CloseCode, type Message, type Payload } from '../../protocol/types.ts';
import type { SocketHandlers, TransportSocket, UpgradeRequest } from '../../transports/types.ts';
import { PeerUnsupportedError, ShutdownError } from '../errors.ts';
import { type IncomingMessage, Peer, type ReplyValue, type RequestContext, type RequestOptions } from '../peer/peer.ts';
import type { DisconnectInfo, ResolvedServerOptions } from './options.ts';

/** What the Server gives each connection. */
export interface ConnectionContext {
  readonly id: string;
  readonly options: ResolvedServerOptions;
  readonly concurrency: number;
  readonly info: unknown;
  readonly acceptConf: Uint8Array;
  readonly closed: (conn: Connection, info: DisconnectInfo) => void;
}

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

  private readonly peer: Peer;
  private readonly context: ConnectionContext;
  private clientConfReceived = false;
  private readTimer: ReturnType<typeof setTimeout> | undefined;
  private closing: Promise<void> | undefined;
  private resolveClosed!: (info: DisconnectInfo) => void;

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
    this.peer = new Peer(
      socket,
      {
        concurrency: context.concurrency,
        maxInflightRequests: options.maxInflightRequests,
        maxBufferedBytes: options.maxBufferedBytes,
        maxMessageSize: options.maxMessageSize,
        logger: options.logger,
      },
      {
        handleRequest: (message, ctx) => this.handleRequest(message, ctx),
        handleSignal: (message) => options.onSignal?.(this, message),
        handleControl: (message) => this.handleControl(message),
        closed: (code, reason) => this.handleClosed(code, reason),
      },
    );
  }

  /** @internal Sends AcceptConf and starts the read timeout. */
  start(): SocketHandlers {
    const handlers = this.peer.socketHandlers();
    this.peer.sendRaw(this.context.acceptConf);
    this.armReadTimer(this.context.options.readTimeout);
    return handlers;
  }

  /** The peer's address as the transport sees it. */
  get remoteAddress(): string {
    return this.handshake.remoteAddress;
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

  /**
   * Sends a request to the client (protocol v2.1) and resolves with its reply. Rejects at once
   * with PeerUnsupportedError on a v2.0 client, and with TimeoutError, CanceledError,
   * RequestError, InternalError or DisconnectedError as the case may be.
   */
  request(name: string, payload: Payload, options: RequestOptions = {}): Promise<Payload> {
    if (!this.peer.v21 && this.peer.isOpen) {
      return Promise.reject(
        new PeerUnsupportedError('the client speaks protocol v2.0 and cannot receive requests'),
      );
    }
    return this.peer.request(name, (id) => encodeRequest(id, name, payload), options);
  }

  /**
   * Closes gracefully: new requests get the shutdown reply, running handlers finish and their
   * replies are delivered, then the connection closes with `code` (default 1000).
   */
  close(code: number = CloseCode.Normal, reason = 'closed by the server'): Promise<void> {
    this.closing ??= (async () => {
      this.peer.drain();
      await this.peer.whenIdle();
      this.closeNow(code, reason);
      await this.closed;
    })();
    return this.closing;
  }

  /** Drops the connection at once, without a closing handshake. */
  terminate(): void {
    this.peer.terminate();
  }

  /** @internal Shutdown, step 1: refuse new work. */
  drain(): void {
    this.peer.drain();
  }

  /** @internal Shutdown, step 2: resolves when no handler runs or waits. */
  whenIdle(): Promise<void> {
    return this.peer.whenIdle();
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
        }
        return;
      case 'close-session':
      case 'restore-session':
        // Sessions are not enabled on this server (they come with a SessionManager).
        this.peer.sendRaw(encodeSpecialReply(message.id, this.peer.isDraining ? 'shutdown' : 'sessions-disabled'));
        return;
      default:
        // Heartbeats only reset the read timeout, which every message does. Types meant for
        // clients (AcceptConf, session notifications) are ignored, as in the reference.
        return;
    }
  }

  /** One timer per connection, re-armed lazily from the time of the last message received. */
  private armReadTimer(delay: number): void {
    this.readTimer = setTimeout(() => {
      const { readTimeout } = this.context.options;
      const silent = performance.now() - this.peer.lastReceivedAt;
      if (silent >= readTimeout) {
        this.context.options.logger.debug('read timeout, closing', { id: this.id });
        this.closeNow(CloseCode.GoingAway, 'read timeout');
      } else {
        this.armReadTimer(readTimeout - silent);
      }
    }, Math.max(1, Math.ceil(delay)));
  }

  private handleClosed(code: number, reason: string): void {
    clearTimeout(this.readTimer);
    const info: DisconnectInfo = { code, reason };
    this.resolveClosed(info);
    this.context.closed(this, info);
  }
}
