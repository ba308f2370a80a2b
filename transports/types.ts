/**
 * The transport contract: what duplexwire's core needs from a WebSocket implementation, and
 * nothing more. One adapter per file (`ws.ts`, `memory.ts`, later `uws.ts` and `browser.ts`),
 * each behind its own subpath export so nobody loads a WebSocket library they do not use.
 *
 * The contract carries whole WebSocket messages (binary and text), close codes with reasons,
 * upgrade requests and backpressure, and optionally a server's native pub/sub (`publish`, for
 * runtimes such as uWebSockets.js that fan a message out in native code; without it the core
 * sends to each subscriber). It is runtime-neutral: no Node types appear here, so the browser
 * adapter implements the same client side.
 *
 * Ownership rule: the `Uint8Array` handed to `SocketHandlers.onMessage` belongs to the receiver
 * and stays valid after the callback returns (adapters whose runtime reuses buffers, such as
 * uWebSockets.js, copy before delivering).
 */

/**
 * Result of a send, after uWebSockets.js `send()` (1 / 0 / 2):
 * - `ok`: written or buffered within the adapter's high-water mark;
 * - `backpressure`: accepted but the outgoing buffer is above the high-water mark; wait for
 *   `onDrain` before sending more;
 * - `dropped`: not sent (socket closing or closed, or the runtime refused it). Never silent: the
 *   caller must treat the connection as broken.
 */
export type SendResult = 'ok' | 'backpressure' | 'dropped';

/** Callbacks a transport socket delivers to its owner. Set once, when the socket is created. */
export interface SocketHandlers {
  /** One whole WebSocket message. `binary` is false for text frames. */
  onMessage(data: Uint8Array, binary: boolean): void;
  /** The outgoing buffer went back below the high-water mark after a `backpressure` result. */
  onDrain(): void;
  /** A ping or pong arrived (the adapter answers pings itself): the peer is alive. */
  onPing(): void;
  /**
   * Bytes arrived that completed no message, ping or pong: part of a message still on its way (a
   * large message over a slow link). The peer is alive, though nothing else says so until the
   * message is whole, which may take longer than any read timeout. Optional on both sides:
   * owners that keep no read timeout leave it out, and adapters whose runtime shows only whole
   * messages (uWebSockets.js, browsers) never call it.
   */
  onActivity?(): void;
  /**
   * The connection is gone. Called exactly once, whoever closed it. `code` is the WebSocket close
   * code (1006 when the connection dropped without a close frame).
   */
  onClose(code: number, reason: string): void;
}

/** One open WebSocket connection, either end. */
export interface TransportSocket {
  /**
   * Sends one binary message. Adapters may queue `data` without copying it: the caller must not
   * modify it afterwards (encoding once and sending the same bytes to many sockets is fine).
   */
  send(data: Uint8Array): SendResult;
  /**
   * Optional: sends one binary message made of `head` followed by `body`, without joining them
   * first: a large payload is written from where it is instead of being copied into a message
   * buffer. Same result and ownership rule as `send`, for both arrays. Adapters that cannot write
   * several buffers as one message leave it out, and the owner joins the two and calls `send`.
   */
  sendParts?(head: Uint8Array, body: Uint8Array): SendResult;
  /** Sends one text message (used by applications that forward raw WebSocket traffic). */
  sendText(data: string): SendResult;
  /**
   * Bytes accepted by `send` and not yet handed to the operating system. A message from
   * `ServerTransport.publish` may be counted only once the transport writes it to this socket
   * (uWS: by the end of the event loop's turn, or before this socket's next `send`).
   */
  readonly bufferedAmount: number;
  /** Stops reading from the peer (TCP backpressure); messages already read may still arrive. */
  pause(): void;
  /** Resumes reading after `pause`. */
  resume(): void;
  /**
   * Starts the closing handshake. Safe to call more than once and after the socket closed. `code`
   * must be a sendable close code (1000, 1001, 1002, 1003, 1007-1014, 3000-4999), else RangeError.
   * A paused socket reads again: the handshake ends with the peer's close frame, which a socket
   * that does not read would never see (messages that arrive before it are delivered as usual).
   */
  close(code: number, reason: string): void;
  /** Destroys the connection at once, without a closing handshake. Safe to call at any time. */
  terminate(): void;
  /** Sends a WebSocket ping (keep-alive through proxies). */
  ping(): void;
  /** The peer's address as the transport sees it (IPv4, IPv6, or a label for in-process pairs). */
  readonly remoteAddress: string;
  /**
   * The subprotocol the opening handshake settled on (`Sec-WebSocket-Protocol`), '' for none.
   * Optional: undefined where the adapter cannot tell (the in-memory pair has no handshake).
   */
  readonly protocol?: string;

  /*
   * Native pub/sub, optional: present on the sockets of a server transport that has
   * `ServerTransport.publish`, all three together, and used by the owner only with it. A socket
   * without them is reached by `send` alone.
   */

  /**
   * Joins `topic`: `ServerTransport.publish(topic, ...)` reaches this socket from now on, until
   * `unsubscribe(topic)`, or until `close()` or `terminate()` is called or the connection ends (a
   * closing socket is left out of every publish, and its subscriptions are forgotten with it: the
   * owner need not unsubscribe). Joining twice is one subscription. Does nothing once closing.
   */
  subscribe?(topic: string): void;
  /** Leaves `topic`; nothing happens when the socket had not joined it, or is closing. */
  unsubscribe?(topic: string): void;
  /**
   * Asked by the owner before a `publish`, for each subscriber it means to reach with it: true
   * when a `send` of `byteLength` bytes now would certainly answer `ok` (open, and the message
   * leaves the outgoing buffer at or below the high-water mark), in which case the socket counts
   * those bytes against its high-water mark from now on (in the admissions and sends that
   * follow), as the publish that follows will deliver them. False otherwise: the owner then leaves
   * this socket out of the publish (`skip`) and calls `send` itself. So a publish has no
   * per-socket result to report: it only ever carries messages that could not have met
   * backpressure, and cannot drop one.
   */
  admitPublish?(byteLength: number): boolean;
}

/** What a server transport knows of an upgrade request before it is accepted. */
export interface UpgradeRequest {
  /** Path and query exactly as requested, e.g. `/ws?token=abc`. */
  readonly url: string;
  /** Path without the query. */
  readonly path: string;
  /** The raw query string without the leading `?` (empty when there is none). */
  readonly query: string;
  /** Request headers with lower-case names; repeated headers are joined by the adapter as Node does. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly remoteAddress: string;
  /**
   * Aborted when the client goes away before its upgrade is answered: an owner deciding
   * asynchronously (an authentication call) can stop, and its answer will go nowhere. Optional
   * in the contract; the ws and uWebSockets.js adapters give one.
   */
  readonly signal?: AbortSignal;
}

/** The owner's answer to an upgrade request. */
export type UpgradeDecision =
  | {
      readonly accept: true;
      /**
       * The subprotocol to answer with: one of those the client offered in
       * `sec-websocket-protocol` (an adapter refuses the upgrade with 500 for any other), or ''
       * for none. @default the first one the client offered, or none
       */
      readonly protocol?: string;
    }
  | {
      readonly accept: false;
      /** HTTP status sent instead of the upgrade, e.g. 401, 403, 503. */
      readonly status: number;
      /** Short body, plain text unless `headers` name another `Content-Type`. */
      readonly body?: string;
      /**
       * Extra response headers. `Connection`, `Content-Length` and `Transfer-Encoding` are the
       * adapter's and ignored; `Content-Type` replaces the default `text/plain; charset=utf-8`.
       */
      readonly headers?: Readonly<Record<string, string>>;
    };

/** An upgrade decision that refuses. */
export type UpgradeRefusal = Extract<UpgradeDecision, { readonly accept: false }>;

/** Callbacks from a server transport to its owner (the duplexwire Server). */
export interface ServerTransportHandlers {
  /**
   * Decide on an upgrade. May be async; the adapter keeps the request valid meanwhile and
   * drops it quietly if the client goes away first.
   */
  upgrade(request: UpgradeRequest): UpgradeDecision | Promise<UpgradeDecision>;
  /**
   * A connection was accepted. Returns the socket's handlers; no message is delivered before this
   * returns. A throw is the owner's bug, reported the same way on every path (after a synchronous
   * or an asynchronous decision) and by every adapter (`owner-fault.ts`): the connection is
   * closed with 1011, its handlers are never called, and the error is thrown again from a
   * microtask, where Node reports it as an uncaught exception (never as an unhandled rejection).
   */
  connection(socket: TransportSocket, request: UpgradeRequest): SocketHandlers;
}

/** Options the server passes to its transport when it starts. */
export interface ServerTransportStartOptions {
  /** Largest message accepted (> 0); a larger one closes the connection with 1009. */
  readonly maxMessageSize: number;
}

/** The server side of a transport: listens (or attaches to an existing HTTP server) and accepts. */
export interface ServerTransport {
  /** Starts accepting upgrades. Resolves once the transport is listening. */
  start(handlers: ServerTransportHandlers, options: ServerTransportStartOptions): Promise<void>;
  /**
   * Where the transport listens, once started (`port` is the real one when 0 was asked for).
   * `null` when it is attached to a server it does not own and that is not listening.
   */
  address(): { readonly host: string; readonly port: number } | null;
  /**
   * Stops accepting and releases what the transport owns (its listening socket). Connections the
   * owner has not closed by then are terminated.
   */
  stop(): Promise<void>;
  /**
   * Native fan-out, optional (uWebSockets.js `app.publish`): sends `data` as one binary message to
   * every socket of this transport subscribed to `topic` (`TransportSocket.subscribe`), except
   * those in `skip`. A transport that has it has `subscribe`, `unsubscribe` and `admitPublish` on
   * every socket it accepts; without it the owner sends to each subscriber itself.
   *
   * The transport may write the message later (uWS: by the end of the event loop's turn) but
   * never out of order: each socket gets it after whatever `send` and `publish` gave it before,
   * and before whatever they give it after. Nothing is reported per socket, because nothing can
   * go wrong there: the owner lets `publish` reach only sockets that `admitPublish` admitted for
   * this very message, and lists in `skip` every other open subscriber (and any it leaves out,
   * such as the sender of a chat message), which it then sends to itself. As with `send`, the
   * caller must not modify `data` afterwards.
   */
  publish?(topic: string, data: Uint8Array, skip: readonly TransportSocket[]): void;
  /**
   * Optional: from now until `stop()`, the transport opens no more connections: every accept it
   * has not acted on yet (written the 101), whether the owner decided it before this call or
   * after, is answered with `refusal` instead, and `connection` is not called for it. Open
   * connections are untouched. The owner calls it as its shutdown begins: an asynchronous accept
   * reaches the transport a few microtasks after the owner decided it, and a shutdown that began
   * in between must not be handed a connection that it can only close again, after the client
   * was told it was accepted. (ws's own WebSocketServer does the same once closing: 503 at the
   * moment it would write the 101, `lib/websocket-server.js` `completeUpgrade`.) A transport
   * without it leaves that to the owner's `connection`.
   */
  refuseUpgrades?(refusal: UpgradeRefusal): void;
}

/** Options for one client connection attempt. */
export interface ClientConnectOptions {
  /** Extra HTTP headers on the upgrade request (ignored by runtimes that cannot set them). */
  readonly headers?: Readonly<Record<string, string>>;
  /** Largest message accepted from the server; a larger one closes with 1009. */
  readonly maxMessageSize: number;
  /** Gives up the attempt after this many milliseconds. */
  readonly connectTimeout: number;
  /** Subprotocols offered (`Sec-WebSocket-Protocol`), most preferred first. @default none */
  readonly protocols?: readonly string[];
  /**
   * Accept a server that chooses none of `protocols` (its 101 has no `Sec-WebSocket-Protocol`):
   * the connection opens with `TransportSocket.protocol` ''. RFC 6455 §4.1 only fails an answer
   * naming a subprotocol that was not offered, and a proxy passing its client's offer on must let
   * the client see the upstream's answer as it is (wsproxy sets it). Optional: runtimes that
   * decide this themselves ignore it (browsers; Chrome fails such a handshake), and the
   * in-memory pair has no handshake.
   * @default false: such an answer fails the attempt, as the `ws` library does
   */
  readonly acceptNoProtocol?: boolean;
  /**
   * Aborted when the caller gives the attempt up (the client is closed): the transport ends it
   * at once, its sockets (to a proxy that has not answered, say) closed, and rejects. Optional: a
   * transport that ignores it ends the attempt at `connectTimeout`.
   */
  readonly signal?: AbortSignal;
}

/**
 * Why a connection attempt failed. Transports reject `connect` with an `Error` carrying these
 * optional fields, so the core can tell "refused with 403" from "nothing listens there".
 */
export interface ConnectFailure extends Error {
  /** HTTP status of a refused upgrade. */
  status?: number;
  /** The body of a refused upgrade, cut to a short length. */
  body?: string;
}

/** The client side of a transport. */
export interface ClientTransport {
  /**
   * Opens a WebSocket to `url`. `handlers` are installed before the first message can arrive.
   * Rejects with a `ConnectFailure` when the connection cannot be made; `onClose` is then never
   * called.
   */
  connect(url: string, options: ClientConnectOptions, handlers: SocketHandlers): Promise<TransportSocket>;
}
