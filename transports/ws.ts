/**
 * The Node adapter over the `ws` package: a server transport that listens on its own HTTP(S)
 * server or attaches to one the application owns, and a client transport.
 *
 * @example
 * ```ts
 * import { wsTransport, wsClientTransport } from 'duplexwire/transports/ws';
 *
 * const server = wsTransport({ port: 0, path: '/ws' });
 * await server.start(handlers, { maxMessageSize: 1 << 20 });
 * const { port } = server.address()!;
 * const socket = await wsClientTransport().connect(
 *   `ws://127.0.0.1:${port}/ws`,
 *   { maxMessageSize: 1 << 20, connectTimeout: 5000 },
 *   socketHandlers,
 * );
 * ```
 */

import {
  createServer as createHttpServer,
  type IncomingMessage,
  STATUS_CODES,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type ClientOptions, type RawData, WebSocket, WebSocketServer } from 'ws';
import {
  assertSendableCloseCode,
  MAX_CLOSE_REASON_BYTES,
  MAX_REFUSAL_BODY_BYTES,
  refusalResponse,
  truncateUtf8,
} from './close-frame.ts';
import { chooseProtocol, handshakeFault } from './handshake.ts';
import { ownerFailed } from './owner-fault.ts';
import { clientFrame, releaseFrameBuffer, serverFrameStart } from './ws-frame.ts';
import { serverLifecycle } from './server-lifecycle.ts';
import type {
  ClientConnectOptions,
  ClientTransport,
  ConnectFailure,
  SendResult,
  ServerTransport,
  ServerTransportHandlers,
  ServerTransportStartOptions,
  SocketHandlers,
  TransportSocket,
  UpgradeDecision,
  UpgradeRefusal,
  UpgradeRequest,
} from './types.ts';

/**
 * Bytes a socket may have queued before `send` answers `backpressure`. Matches the 64 KiB
 * uWebSockets.js uses by default, so the core sees the same pacing whichever adapter runs.
 */
export const DEFAULT_HIGH_WATER_MARK = 64 * 1024;
/** @see WsListenOptions.host */
export const DEFAULT_HOST = '127.0.0.1';
/** @see WsListenOptions.port */
export const DEFAULT_PORT = 8080;
/** Bytes a client may send before its upgrade is answered (it should send none). */
const MAX_EARLY_BYTES = 64 * 1024;
/** @see WsListenOptions.handshakeTimeout */
export const DEFAULT_HANDSHAKE_TIMEOUT = 10_000;
/** The longest delay a timer takes (2^31 - 1 ms); Node fires a longer one after 1 ms. */
const MAX_TIMER_DELAY = 2 ** 31 - 1;

/** Options both server modes share. */
export interface WsCommonServerOptions {
  /**
   * Only upgrades to exactly this path (query ignored) are handled. When the transport owns its
   * HTTP server other paths are answered 404; when attached, they are left to other listeners.
   * @default undefined (every path)
   */
  path?: string;
  /**
   * Queued outgoing bytes above which `send` answers `backpressure`. Node only announces `drain`
   * once its own socket buffer went over the socket's high-water mark (16 KiB for `net.Socket`),
   * so a smaller value behaves as that one.
   * @default DEFAULT_HIGH_WATER_MARK (64 KiB)
   */
  highWaterMark?: number;
  /** @default 'microtask'; see {@link WriteBatching} */
  writeBatching?: WriteBatching;
}

/**
 * When the sends made in one turn of the event loop are written to the socket, together:
 * - `'microtask'`: once the code sending them has run (its microtasks included). The latency
 *   of a message grows by nothing measurable.
 * - `'immediate'`: at the end of the event loop's I/O phase (`setImmediate`), so that the sends
 *   made by the callbacks of every socket read in that phase share one write per connection: a
 *   relay that answers many peers over one connection (the tunnel's proxy and agent) spends ~10%
 *   less CPU per message under load (`npm run bench:tunnel`). A message then waits until the
 *   phase's other callbacks have run: microseconds when idle, more when busy.
 */
export type WriteBatching = 'microtask' | 'immediate';

/** TLS material for a transport that owns an HTTPS server. */
export interface WsServerTlsOptions {
  key: string | Buffer;
  cert: string | Buffer;
}

/** Listen on an HTTP (or HTTPS) server the transport creates, owns and closes. */
export interface WsListenOptions extends WsCommonServerOptions {
  /** @default DEFAULT_HOST ('127.0.0.1'; use '0.0.0.0' or '::' to accept remote peers) */
  host?: string;
  /** @default DEFAULT_PORT (8080; 0 picks a free port, see `address()`) */
  port?: number;
  /** Serve `wss:` with these. @default undefined (plain `ws:`) */
  tls?: WsServerTlsOptions;
  /**
   * Milliseconds a TCP connection has, from the moment it is accepted, to deliver a complete
   * upgrade request; then it is closed without an answer. Bounds what a peer holds by connecting
   * and sending nothing, part of a request, or a request one byte at a time (slowloris), which
   * Node's own `headersTimeout` leaves open for 60 to 90 s. Plain HTTP connections (answered 426)
   * are closed by then too. Once the request is complete, `upgradeTimeout` of the Server bounds the
   * decision. With `tls`, the TLS handshake has the same time again (tls `handshakeTimeout`).
   * Same default as the fixed HTTP timeout of uWebSockets.js. An attached server keeps the
   * application's own settings (`headersTimeout`, `requestTimeout`).
   * @default DEFAULT_HANDSHAKE_TIMEOUT (10000)
   */
  handshakeTimeout?: number;
  server?: never;
}

/**
 * Attach to an HTTP(S) server the application owns and listens with. The transport only adds and
 * removes its own `'upgrade'` listener; it never listens on or closes that server.
 */
export interface WsAttachOptions extends WsCommonServerOptions {
  server: HttpServer | HttpsServer;
  /**
   * The transport answers every upgrade on the server: those to another path than `path` with
   * 404, other protocols (h2c) with 400, as when it owns its server. For a server whose only
   * upgrades are this transport's. @default false (other upgrades are left to other listeners)
   */
  exclusive?: boolean;
}

/** Options of {@link wsTransport}: either listen, or attach to an existing server. */
export type WsServerTransportOptions = WsListenOptions | WsAttachOptions;

/** Options of {@link wsClientTransport}. */
export interface WsClientTransportOptions {
  /** @default DEFAULT_HIGH_WATER_MARK (64 KiB), see {@link WsCommonServerOptions.highWaterMark} */
  highWaterMark?: number;
  /** For `wss:` URLs. @default undefined (the system's trusted CAs, certificates verified) */
  tls?: WsClientTlsOptions;
  /** @default 'microtask'; see {@link WriteBatching} */
  writeBatching?: WriteBatching;
  /**
   * An HTTP proxy to reach the server through, with `CONNECT` (what corporate egress proxies
   * allow): `http://proxy.internal:3128`, with `user:password@` for Basic authentication, or an
   * `https:` URL for a TLS connection to the proxy itself. The proxy sees only the server's host
   * and port: a `wss:` connection is encrypted end to end and its certificate checked as without
   * a proxy (`tls`). A proxy that refuses (407 without valid credentials, 403 for a host its
   * policy denies, 502 when it cannot reach the server) fails the attempt with that `status`.
   * Uses the `https-proxy-agent` package, loaded on the first connection.
   * @default undefined: a direct connection
   */
  proxy?: string | URL;
}

/** TLS settings for `wss:` connections. */
export interface WsClientTlsOptions {
  /** Trusted CA certificates, e.g. a test CA. @default undefined (Node's bundled CAs) */
  ca?: string | Buffer | Array<string | Buffer>;
  /** @default true */
  rejectUnauthorized?: boolean;
}

/* ------------------------------------------------------------------------------------------- */
/* Socket adapter                                                                              */
/* ------------------------------------------------------------------------------------------- */

/** ws reports a protocol violation it detected itself (`lib/receiver.js` `createError`) with these codes. */
const RECEIVER_ERROR_CLOSE_CODES: ReadonlyMap<string, number> = new Map([
  ['WS_ERR_UNSUPPORTED_MESSAGE_LENGTH', 1009],
  ['WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH', 1009],
  ['WS_ERR_INVALID_UTF8', 1007],
  ['WS_ERR_TOO_MANY_BUFFERED_PARTS', 1008],
]);

function receiverErrorCloseCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !code.startsWith('WS_ERR_')) return undefined;
  return RECEIVER_ERROR_CLOSE_CODES.get(code) ?? 1002;
}

/**
 * Hands out a plain `Uint8Array` view over what ws delivered.
 *
 * No copy is needed: with the default `binaryType` ('nodebuffer') ws delivers either a view of
 * the chunk the socket read (Node allocates a fresh chunk per read and never writes to it
 * again; the server unmasks in place *before* emitting) or a buffer `concat` allocated for a
 * fragmented message. Nothing writes into those bytes after the event, so they stay valid for
 * the receiver (the ownership rule of `types.ts`). A `Buffer` is not passed through as is because
 * its `slice()` returns a view where `Uint8Array#slice()` copies: the core must see the same
 * semantics from every adapter.
 */
function toUint8Array(data: RawData): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (Array.isArray(data)) {
    const out = new Uint8Array(data.reduce((n, b) => n + b.byteLength, 0));
    let offset = 0;
    for (const part of data) {
      out.set(part, offset);
      offset += part.byteLength;
    }
    return out;
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function joinBuffers(head: Uint8Array, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(head.length + body.length);
  out.set(head, 0);
  out.set(body, head.length);
  return out;
}

/**
 * Set on the ws WebSocket and on the TCP socket under it, pointing to their adapter: their
 * listeners are then functions shared by every connection rather than closures made for each,
 * which an idle connection would otherwise carry (bench/RESULTS.md, memory).
 */
const ADAPTER = Symbol('duplexwire ws adapter');

interface Tagged {
  [ADAPTER]?: WsTransportSocket;
}

/**
 * Adapters corked in the current turn (see `#cork`), by their `writeBatching`: one microtask, or
 * one `setImmediate`, uncorks each list.
 */
const corked: Record<WriteBatching, WsTransportSocket[]> = { microtask: [], immediate: [] };

function uncorkAll(batching: WriteBatching): void {
  const batch = corked[batching];
  corked[batching] = [];
  for (const socket of batch) socket.uncork();
}

const uncorkMicrotask = (): void => uncorkAll('microtask');
const uncorkImmediate = (): void => uncorkAll('immediate');

function checkWriteBatching(value: WriteBatching | undefined): WriteBatching {
  if (value === undefined) return 'microtask';
  if (value === 'microtask' || value === 'immediate') return value;
  throw new RangeError(`writeBatching must be 'microtask' or 'immediate', got ${JSON.stringify(value)}`);
}

function adapterOf(emitter: object): WsTransportSocket {
  return (emitter as Tagged)[ADAPTER]!;
}

function onWsMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
  adapterOf(this).received(data, isBinary);
}

function onWsPing(this: WebSocket): void {
  adapterOf(this).pinged();
}

function onWsError(this: WebSocket, err: Error): void {
  adapterOf(this).failed(err);
}

function onWsClose(this: WebSocket, code: number, reason: Buffer): void {
  adapterOf(this).closed(code, reason);
}

function onNetDrain(this: Duplex): void {
  (this as Tagged)[ADAPTER]?.netDrained();
}

function onNetData(this: Duplex): void {
  (this as Tagged)[ADAPTER]?.netRead();
}

/** {@link TransportSocket} over a `ws` WebSocket; the same class serves both ends. */
class WsTransportSocket implements TransportSocket {
  readonly #ws: WebSocket;
  readonly #highWaterMark: number;
  #effectiveHighWaterMark: number;
  #remoteAddress = '';
  #handlers: SocketHandlers | undefined;
  /** A send answered `backpressure`; the next `drain` is owed to the owner. */
  #drainOwed = false;
  /** Set once the connection is established: a client must not see `onClose` before that. */
  #open: boolean;
  #closeReported = false;
  /** The close code ws sent itself after a protocol violation by the peer. */
  #violationCode: number | undefined;
  /** `close()` sent our close frame: later receive errors do not change why the connection ends. */
  #ownerClosed = false;
  /** The TCP/TLS socket, once known: corked while a batch of sends builds up. */
  #net: Duplex | undefined;
  /** `#net` is corked by us and an uncork is queued. */
  #corked = false;
  /** Server side: the accepted WebSockets of the transport's run, left on close. */
  readonly #live: Set<WebSocket> | undefined;
  /** Client side: frames this end writes itself are masked (RFC 6455 §5.3). */
  readonly #masked: boolean;
  /** Client side: the server chose no subprotocol, which ws was told otherwise (`acceptNoProtocol`). */
  #noProtocol = false;
  /** Messages, pings and pongs delivered, and how many were when the last chunk was read. */
  #delivered = 0;
  #deliveredAtLastRead = 0;

  /** Until when a batch of sends stays corked (see {@link WriteBatching}). */
  readonly #batching: WriteBatching;

  constructor(ws: WebSocket, highWaterMark: number, open: boolean, batching: WriteBatching, live?: Set<WebSocket>) {
    this.#ws = ws;
    this.#batching = batching;
    // Server sockets are created open, client sockets before their handshake; only clients mask.
    this.#masked = !open;
    this.#highWaterMark = highWaterMark;
    this.#effectiveHighWaterMark = highWaterMark;
    this.#open = open;
    this.#live = live;
    live?.add(ws);
    (ws as Tagged)[ADAPTER] = this;
  }

  get remoteAddress(): string {
    return this.#remoteAddress;
  }

  get protocol(): string {
    return this.#noProtocol ? '' : this.#ws.protocol;
  }

  get bufferedAmount(): number {
    return this.#ws.bufferedAmount;
  }

  /** The TCP/TLS socket under the WebSocket, whose `'drain'` ws does not forward. */
  setNetSocket(net: Duplex): void {
    this.#remoteAddress = (net as Partial<Socket>).remoteAddress ?? '';
    this.#net = net;
    // Node emits 'drain' only after a write() returned false, i.e. after its own buffer passed
    // the socket's writableHighWaterMark; above that value a 'backpressure' answer guarantees a
    // later 'drain'.
    this.#effectiveHighWaterMark = Math.max(this.#highWaterMark, net.writableHighWaterMark);
    (net as Tagged)[ADAPTER] = this;
    net.on('drain', onNetDrain);
  }

  /**
   * Listens to the chunks the TCP socket reads, after ws (whose listener is added first, when it
   * takes the socket): a chunk that made ws deliver nothing is part of a message still arriving.
   */
  watchReads(): void {
    this.#net?.on('data', onNetData);
  }

  /** A chunk was read (and ws has parsed it). */
  netRead(): void {
    if (this.#delivered === this.#deliveredAtLastRead) {
      if (this.#open && !this.#closeReported) this.#handlers?.onActivity?.();
      return;
    }
    this.#deliveredAtLastRead = this.#delivered;
  }

  /** The TCP socket's 'drain'. */
  netDrained(): void {
    if (!this.#drainOwed || this.#closeReported) return;
    this.#drainOwed = false;
    this.#handlers?.onDrain();
  }

  markOpen(): void {
    this.#open = true;
  }

  /** The server answered none of the subprotocols offered (see `acceptNoProtocol` in `connect`). */
  markNoProtocol(): void {
    this.#noProtocol = true;
  }

  /** Installs the owner's handlers and starts forwarding ws events to them. */
  wire(handlers: SocketHandlers): void {
    this.#handlers = handlers;
    const ws = this.#ws;
    ws.on('message', onWsMessage);
    // ws answers pings itself; both directions prove the peer is alive.
    ws.on('ping', onWsPing);
    ws.on('pong', onWsPing);
    // Without a listener an 'error' event would throw. ws follows every error with 'close'.
    ws.on('error', onWsError);
    ws.on('close', onWsClose);
  }

  /** ws 'message'. */
  received(data: RawData, isBinary: boolean): void {
    this.#delivered++;
    this.#handlers!.onMessage(toUint8Array(data), isBinary);
  }

  /** ws 'ping' and 'pong'. */
  pinged(): void {
    this.#delivered++;
    this.#handlers!.onPing();
  }

  /** ws 'error'. */
  failed(err: Error): void {
    // After the owner's close() ws still reads until the peer's close frame, and may fail a frame
    // that came meanwhile: the connection was already ending for the owner's reason, not this one.
    if (this.#ownerClosed) return;
    this.#violationCode ??= receiverErrorCloseCode(err);
  }

  /** ws 'close'. */
  closed(code: number, reason: Buffer): void {
    this.#live?.delete(this.#ws);
    if (this.#closeReported) return;
    this.#closeReported = true;
    if (!this.#open) return;
    const handlers = this.#handlers!;
    if (this.#violationCode !== undefined) {
      // After a violation ws sends its close frame and stops reading, so the code it reports
      // locally is 1006; the owner should see the code the peer was told.
      handlers.onClose(this.#violationCode, '');
    } else {
      handlers.onClose(code, reason.toString('utf8'));
    }
  }

  send(data: Uint8Array): SendResult {
    if (this.#ws.readyState !== WebSocket.OPEN) return 'dropped';
    this.#cork();
    // No callback: this is the hot path and failures surface as 'error' + 'close' anyway.
    this.#ws.send(data, { binary: true });
    return this.#afterSend();
  }

  /**
   * One binary message from two buffers, framed here rather than by ws (see ws-frame.ts): the
   * payload is written where it is (server) or masked straight into a pooled frame buffer
   * (client), never copied into a message buffer first. The frame goes through the same socket,
   * corked with ws's own frames, so the order of messages is kept: ws writes every frame at once
   * (nothing of ours is queued inside ws: no compression, no Blobs).
   */
  sendParts(head: Uint8Array, body: Uint8Array): SendResult {
    if (this.#ws.readyState !== WebSocket.OPEN) return 'dropped';
    const net = this.#net;
    if (net === undefined) return this.send(joinBuffers(head, body));
    this.#cork();
    if (this.#masked) {
      const { frame, buffer, pooled } = clientFrame(head, body);
      if (pooled) net.write(frame, (error) => (error == null ? releaseFrameBuffer(buffer) : undefined));
      else net.write(frame);
    } else {
      net.write(serverFrameStart(head, body.length));
      if (body.length > 0) net.write(body);
    }
    return this.#afterSend();
  }

  sendText(data: string): SendResult {
    if (this.#ws.readyState !== WebSocket.OPEN) return 'dropped';
    this.#cork();
    this.#ws.send(data, { binary: false });
    return this.#afterSend();
  }

  /**
   * Sends made in the same turn go out in one write: the first one corks the TCP socket and
   * queues the uncork as a microtask, which runs once the code that is sending (a batch of
   * replies, each resolved in its own microtask) has run. ws writes each frame with a write of
   * its own, and on loopback that system call costs more than all the JavaScript around it: with
   * many messages in flight this more than halves the CPU time per message (bench/RESULTS.md).
   * Order is kept (ws corks and uncorks around each frame; corks nest), and latency gains at most
   * the rest of the current turn (`writeBatching: 'immediate'`: of the event loop's I/O phase). A batch that reaches the high-water mark is written at once
   * (`#afterSend`), so corking never shows up as backpressure.
   */
  #cork(): void {
    const net = this.#net;
    if (this.#corked || net === undefined) return;
    this.#corked = true;
    net.cork();
    if (corked[this.#batching].push(this) > 1) return;
    if (this.#batching === 'immediate') setImmediate(uncorkImmediate);
    else queueMicrotask(uncorkMicrotask);
  }

  /** Writes what the sends of this turn corked (once; later calls do nothing). */
  uncork(): void {
    if (!this.#corked) return;
    this.#corked = false;
    this.#net?.uncork();
  }

  #afterSend(): SendResult {
    let buffered = this.#ws.bufferedAmount;
    if (buffered > this.#effectiveHighWaterMark && this.#corked) {
      this.uncork();
      buffered = this.#ws.bufferedAmount;
    }
    if (buffered > this.#effectiveHighWaterMark) {
      this.#drainOwed = true;
      return 'backpressure';
    }
    return 'ok';
  }

  pause(): void {
    this.#ws.pause();
  }

  resume(): void {
    this.#ws.resume();
  }

  close(code: number, reason: string): void {
    // An invalid code is the caller's bug; ws would throw too, but later and less clearly.
    assertSendableCloseCode(code);
    const state = this.#ws.readyState;
    if (state === WebSocket.CLOSING || state === WebSocket.CLOSED) return;
    this.#ownerClosed = true;
    this.#ws.close(code, truncateUtf8(reason, MAX_CLOSE_REASON_BYTES));
    // Paused, ws would not read the peer's close frame, and the close would end by its 30 s timer.
    this.#ws.resume();
  }

  terminate(): void {
    // What was sent before goes to the OS first, as it would have without corking.
    this.uncork();
    this.#ws.terminate();
  }

  ping(): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.ping();
  }
}

/* ------------------------------------------------------------------------------------------- */
/* Options                                                                                     */
/* ------------------------------------------------------------------------------------------- */

function checkHighWaterMark(value: number | undefined): number {
  if (value === undefined) return DEFAULT_HIGH_WATER_MARK;
  if (!(Number.isFinite(value) && value >= 0)) {
    throw new RangeError(`highWaterMark must be a finite number >= 0, got ${value}`);
  }
  return value;
}

/** The proxy URL, checked: http(s), no path. */
function checkProxy(value: string | URL): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new RangeError('proxy must be a URL such as http://proxy.internal:3128');
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || (url.pathname !== '/' && url.pathname !== '')) {
    throw new RangeError(
      `proxy must be an http: or https: origin such as http://proxy.internal:3128, got ${redact(url)}`,
    );
  }
  return url;
}

/** A URL as it may be logged: its credentials left out. */
function redact(url: URL): string {
  // Not `origin`: that is 'null' for a scheme other than http(s), as in the refusal of socks5:.
  return `${url.protocol}//${url.username === '' && url.password === '' ? '' : '***@'}${url.host}`;
}

function checkMaxMessageSize(value: number): void {
  // ws reads maxPayload 0 as "unlimited", the opposite of what a limit of 0 means.
  if (!(value > 0)) throw new RangeError(`maxMessageSize must be > 0, got ${value}`);
}

interface ResolvedServerOptions {
  readonly path: string | undefined;
  readonly highWaterMark: number;
  readonly writeBatching: WriteBatching;
  readonly attach: HttpServer | HttpsServer | undefined;
  readonly host: string;
  readonly port: number;
  readonly tls: WsServerTlsOptions | undefined;
  readonly exclusive: boolean;
  readonly handshakeTimeout: number;
}

function resolveServerOptions(options: WsServerTransportOptions): Readonly<ResolvedServerOptions> {
  const listen = options.server === undefined ? options : undefined;
  const port = listen?.port ?? DEFAULT_PORT;
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    throw new RangeError(`port must be an integer in 0..65535, got ${port}`);
  }
  if (options.path !== undefined && !options.path.startsWith('/')) {
    throw new RangeError(`path must start with '/', got ${JSON.stringify(options.path)}`);
  }
  const handshakeTimeout = listen?.handshakeTimeout ?? DEFAULT_HANDSHAKE_TIMEOUT;
  if (!(Number.isInteger(handshakeTimeout) && handshakeTimeout >= 1 && handshakeTimeout <= MAX_TIMER_DELAY)) {
    throw new RangeError(`handshakeTimeout must be an integer in 1..${MAX_TIMER_DELAY} (ms), got ${handshakeTimeout}`);
  }
  return Object.freeze({
    handshakeTimeout,
    path: options.path,
    highWaterMark: checkHighWaterMark(options.highWaterMark),
    writeBatching: checkWriteBatching(options.writeBatching),
    attach: options.server,
    exclusive: options.server !== undefined && options.exclusive === true,
    host: listen?.host ?? DEFAULT_HOST,
    port,
    tls: listen?.tls,
  });
}

/* ------------------------------------------------------------------------------------------- */
/* Server                                                                                      */
/* ------------------------------------------------------------------------------------------- */

const PROTO = '__proto__';

function buildUpgradeRequest(req: IncomingMessage, url: string, path: string, signal: AbortSignal): UpgradeRequest {
  const queryStart = url.indexOf('?');
  // Null prototype: header names are chosen by the peer (`__proto__`, `constructor`).
  const headers: Record<string, string | undefined> = Object.create(null);
  for (const [name, value] of Object.entries(req.headers)) {
    headers[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  // Node's `req.headers` is a plain object, where a header named `__proto__` sets nothing and is
  // lost: taken from the raw headers (repeats joined as Node joins unknown headers).
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]!.toLowerCase() !== PROTO) continue;
    const previous = headers[PROTO];
    headers[PROTO] = previous === undefined ? req.rawHeaders[i + 1]! : `${previous}, ${req.rawHeaders[i + 1]!}`;
  }
  return {
    url,
    path,
    query: queryStart === -1 ? '' : url.slice(queryStart + 1),
    headers,
    remoteAddress: req.socket.remoteAddress ?? '',
    signal,
  };
}

/**
 * Writes a complete HTTP/1.1 response instead of the upgrade and closes the socket once it is
 * flushed. The decision is checked by `refusalResponse` (invalid input becomes a bare 500).
 */
function refuse(
  socket: Duplex,
  decidedStatus: number,
  decidedBody?: string,
  decidedHeaders?: Readonly<Record<string, string>>,
): void {
  const { status, body, contentType, headers } = refusalResponse(decidedStatus, decidedBody, decidedHeaders);
  let extra = '';
  for (const [name, value] of headers) extra += `${name}: ${value}\r\n`;
  const bodyBytes = Buffer.from(body, 'utf8');
  const head =
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n` +
    'Connection: close\r\n' +
    `Content-Type: ${contentType}\r\n` +
    `Content-Length: ${bodyBytes.length}\r\n` +
    `${extra}\r\n`;
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  // Same sequence as ws `abortHandshake`: end() flushes, 'finish' then tears the socket down.
  socket.once('finish', () => socket.destroy());
  socket.end(Buffer.concat([Buffer.from(head, 'latin1'), bodyBytes]));
}

function isPromiseLike<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

/** Listener on an owned server's plain HTTP requests: this server only speaks WebSocket. */
function answerUpgradeRequired(_req: IncomingMessage, res: ServerResponse): void {
  const body = STATUS_CODES[426] ?? '';
  res.writeHead(426, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

/**
 * A server transport over `ws`.
 *
 * Either listens on its own HTTP server (`{ host, port, tls }`) or attaches to one the application
 * runs (`{ server }`), optionally limited to one `path`. Upgrades go through
 * `handlers.upgrade` first (async allowed); refused ones get a plain-text HTTP response.
 *
 * @example
 * ```ts
 * const transport = wsTransport({ server: app, path: '/ws' });
 * await transport.start(handlers, { maxMessageSize: 1 << 20 });
 * ```
 */
export function wsTransport(options: WsServerTransportOptions = {}): ServerTransport {
  const opts = resolveServerOptions(options);

  interface Run {
    readonly http: HttpServer | HttpsServer;
    readonly owned: boolean;
    readonly onUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
    /** Sockets whose upgrade decision is pending. */
    readonly pending: Set<Duplex>;
    /** Accepted WebSockets not closed yet. */
    readonly live: Set<WebSocket>;
    /** Connections of an owned server still within their `handshakeTimeout`. */
    readonly handshaking: Map<Duplex, ReturnType<typeof setTimeout>>;
    readonly onConnection: (socket: Duplex) => void;
    /**
     * An owned HTTPS server's TCP connections, for `stop()`: one whose TLS handshake has not
     * completed is no HTTP connection yet, so `closeAllConnections()` leaves it, and `close()`
     * would wait for it until the TLS handshake timeout.
     */
    readonly tcp: Set<Duplex> | undefined;
    readonly onTcpConnection: ((socket: Duplex) => void) | undefined;
    stopped: boolean;
    /** Set by `refuseUpgrades`: the answer to every accept from then on. */
    refusal: UpgradeRefusal | undefined;
  }

  function startRun(
    handlers: ServerTransportHandlers,
    startOptions: ServerTransportStartOptions,
  ): { run: Run; ready: Promise<void> } {
    checkMaxMessageSize(startOptions.maxMessageSize);
    /** The subprotocol each accepted upgrade answers with ('' for none), read by handleProtocols. */
    const chosenProtocols = new WeakMap<IncomingMessage, string>();
    const wss = new WebSocketServer({
      noServer: true,
      maxPayload: startOptions.maxMessageSize,
      perMessageDeflate: false,
      clientTracking: false,
      handleProtocols: (_offered, req) => chosenProtocols.get(req) || false,
    });
    const owned = opts.attach === undefined;
    const http =
      opts.attach ??
      (opts.tls === undefined
        ? createHttpServer()
        : createHttpsServer({ key: opts.tls.key, cert: opts.tls.cert, handshakeTimeout: opts.handshakeTimeout }));
    const pending = new Set<Duplex>();
    const live = new Set<WebSocket>();

    const accept = (req: IncomingMessage, socket: Duplex, head: Buffer, request: UpgradeRequest): void => {
      wss.handleUpgrade(req, socket, head, (ws) => {
        if (run.stopped) {
          ws.terminate();
          return;
        }
        // The adapter adds `ws` to `live` and takes it out on 'close' (wired below).
        const adapter = new WsTransportSocket(ws, opts.highWaterMark, true, opts.writeBatching, live);
        adapter.setNetSocket(socket);
        let socketHandlers: SocketHandlers;
        try {
          socketHandlers = handlers.connection(adapter, request);
        } catch (err) {
          socketHandlers = ownerFailed(adapter, err);
        }
        // ws reads the socket from the next tick on, so nothing is missed by wiring now.
        adapter.wire(socketHandlers);
        adapter.watchReads();
      });
    };

    const decide = (
      decision: UpgradeDecision,
      req: IncomingMessage,
      socket: Duplex,
      head: Buffer,
      request: UpgradeRequest,
    ): void => {
      if (run.stopped || socket.destroyed) {
        socket.destroy();
        return;
      }
      // The owner may have begun shutting down since it decided (see `refuseUpgrades`).
      const final = decision.accept ? (run.refusal ?? decision) : decision;
      if (final.accept) {
        const protocol = chooseProtocol(final.protocol, request.headers['sec-websocket-protocol']);
        if (protocol === undefined) {
          refuse(socket, 500, STATUS_CODES[500]);
          return;
        }
        chosenProtocols.set(req, protocol);
        accept(req, socket, head, request);
      } else refuse(socket, final.status, final.body, final.headers);
    };

    const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
      // The request is complete: from here on `upgradeTimeout` bounds the wait, not this timer.
      if (owned) forgetHandshake(socket);
      const url = req.url ?? '/';
      const queryStart = url.indexOf('?');
      const path = queryStart === -1 ? url : url.slice(0, queryStart);
      if (opts.path !== undefined && path !== opts.path) {
        // On a foreign server another 'upgrade' listener may own this path.
        if (owned || opts.exclusive) {
          socket.on('error', noop);
          refuse(socket, 404, STATUS_CODES[404]);
        }
        return;
      }
      // Other protocols (h2c) are not ours to decide on.
      if (req.headers.upgrade?.toLowerCase() !== 'websocket') {
        if (owned || opts.exclusive) {
          socket.on('error', noop);
          refuse(socket, 400, STATUS_CODES[400]);
        }
        return;
      }
      // Node removed its own 'error' listener when it handed the socket over: an error while we
      // wait for the decision would otherwise crash the process.
      socket.on('error', noop);
      if (run.stopped) {
        socket.destroy();
        return;
      }
      const abandon = new AbortController();
      const request = buildUpgradeRequest(req, url, path, abandon.signal);
      // Checked before the owner is asked, as uWS does: ws would check after an accept, so a hook
      // (an authentication call, say) would run for requests that can never be upgraded.
      const fault = handshakeFault(req.method ?? '', req.httpVersion, url, request.headers);
      if (fault !== undefined) {
        refuse(socket, fault.status, STATUS_CODES[fault.status], fault.headers);
        return;
      }
      let result: UpgradeDecision | PromiseLike<UpgradeDecision>;
      try {
        result = handlers.upgrade(request);
      } catch {
        result = { accept: false, status: 500 };
      }
      if (!isPromiseLike(result)) {
        decide(result, req, socket, head, request);
        return;
      }
      // While the owner decides, the socket is read, or a client that leaves would go unnoticed
      // (Node hands it over paused): its FIN ends the wait. What it sends early (it should wait
      // for the 101, RFC 6455 §4.1) is kept for the WebSocket, up to a bound.
      pending.add(socket);
      const early: Buffer[] = [];
      let earlyBytes = 0;
      const onData = (chunk: Buffer): void => {
        earlyBytes += chunk.length;
        if (earlyBytes > MAX_EARLY_BYTES) socket.destroy();
        else early.push(chunk);
      };
      const onEnd = (): void => {
        socket.destroy();
      };
      const left = (): void => {
        pending.delete(socket);
        abandon.abort();
      };
      socket.on('data', onData);
      socket.once('end', onEnd);
      socket.once('close', left);
      Promise.resolve(result)
        .catch((): UpgradeDecision => ({ accept: false, status: 500 }))
        .then((decision) => {
          pending.delete(socket);
          socket.off('data', onData);
          socket.off('end', onEnd);
          socket.off('close', left);
          // Not paused: ws adds its own 'data' listener within decide(), in this same turn, and
          // an explicit pause would keep it from flowing.
          decide(decision, req, socket, early.length === 0 ? head : Buffer.concat([head, ...early]), request);
          // Destroyed with its 'close' still to come (the decision came in the tick of the FIN),
          // or by ws for a client that had sent one: the client left all the same, and an owner
          // holding something for it (wsproxy's upstream) must hear it now.
          if (socket.destroyed) abandon.abort();
        });
    };

    /**
     * Connections of an owned server that have not delivered an upgrade request yet, each with the
     * timer that closes it at `handshakeTimeout` (a real deadline: data does not reset it, or a
     * peer sending a byte at a time would hold the socket forever). Plain HTTP connections keep
     * theirs: they get 426 and have nothing more to do here, as uWS closes them.
     */
    const handshaking = new Map<Duplex, ReturnType<typeof setTimeout>>();
    const forgetHandshake = (socket: Duplex): void => {
      const timer = handshaking.get(socket);
      if (timer === undefined) return;
      clearTimeout(timer);
      handshaking.delete(socket);
    };
    const onConnection = (socket: Duplex): void => {
      handshaking.set(
        socket,
        setTimeout(() => {
          handshaking.delete(socket);
          socket.destroy();
        }, opts.handshakeTimeout),
      );
      socket.once('close', () => forgetHandshake(socket));
    };

    const tcp = owned && opts.tls !== undefined ? new Set<Duplex>() : undefined;
    const onTcpConnection =
      tcp === undefined
        ? undefined
        : (socket: Duplex): void => {
            tcp.add(socket);
            socket.once('close', () => tcp.delete(socket));
          };
    const run: Run = {
      http,
      owned,
      onUpgrade,
      pending,
      live,
      handshaking,
      onConnection,
      tcp,
      onTcpConnection,
      stopped: false,
      refusal: undefined,
    };
    http.on('upgrade', onUpgrade);
    if (!owned) return { run, ready: Promise.resolve() };

    http.on('request', answerUpgradeRequired);
    // For HTTPS, the socket Node parses HTTP on (and hands to 'upgrade') is the TLS one.
    http.on(opts.tls === undefined ? 'connection' : 'secureConnection', onConnection);
    if (onTcpConnection !== undefined) http.on('connection', onTcpConnection);
    const ready = new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        http.off('listening', onListening);
        http.off('upgrade', onUpgrade);
        run.stopped = true;
        reject(err);
      };
      const onListening = (): void => {
        http.off('error', onError);
        // Once listening, the errors a net.Server still emits (accept failing with EMFILE) are
        // transient: Node keeps accepting, and an unhandled 'error' would crash the process.
        http.on('error', noop);
        resolve();
      };
      http.once('error', onError);
      http.once('listening', onListening);
      http.listen(opts.port, opts.host);
    });
    return { run, ready };
  }

  async function stopRun(run: Run, ready: Promise<void>): Promise<void> {
    run.stopped = true;
    run.http.off('upgrade', run.onUpgrade);
    for (const socket of run.pending) socket.destroy();
    run.pending.clear();
    for (const timer of run.handshaking.values()) clearTimeout(timer);
    run.handshaking.clear();
    // Wait for the terminated sockets' 'close' so that every onClose ran when stop() resolves.
    const closed = [...run.live].map((ws) => new Promise<void>((resolve) => ws.once('close', () => resolve())));
    for (const ws of run.live) ws.terminate();
    await Promise.all(closed);
    if (!run.owned) return;
    // A stop() during start() must not leave the server listening once listen() completes.
    const listened = await ready.then(
      () => true,
      () => false,
    );
    if (listened) {
      await new Promise<void>((resolve) => {
        run.http.close(() => resolve());
        run.http.closeAllConnections();
        // What is left is still in its TLS handshake.
        for (const socket of run.tcp ?? []) socket.destroy();
      });
    }
    run.http.off('request', answerUpgradeRequired);
    run.http.off(opts.tls === undefined ? 'connection' : 'secureConnection', run.onConnection);
    if (run.onTcpConnection !== undefined) run.http.off('connection', run.onTcpConnection);
    run.http.off('error', noop);
  }

  const lifecycle = serverLifecycle(startRun, stopRun);
  const transport: ServerTransport = {
    start: lifecycle.start,
    stop: lifecycle.stop,

    refuseUpgrades(refusal) {
      const run = lifecycle.current();
      if (run !== undefined) run.refusal = refusal;
    },

    address() {
      const run = lifecycle.current();
      if (run === undefined) return null;
      const address = run.http.address();
      if (address === null) return null;
      if (typeof address === 'string') return { host: address, port: 0 };
      return { host: (address satisfies AddressInfo).address, port: address.port };
    },
  };
  return transport;
}

function noop(): void {}

/* ------------------------------------------------------------------------------------------- */
/* Client                                                                                      */
/* ------------------------------------------------------------------------------------------- */

function connectError(message: string, code: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}

/**
 * A client transport over `ws`.
 *
 * `connect` resolves once the WebSocket is open. It rejects with the socket error (its `code`,
 * e.g. `ECONNREFUSED`, preserved), with `ETIMEDOUT` after `connectTimeout` ms, or with a
 * {@link ConnectFailure} carrying `status` and the first 512 bytes of `body` when the server
 * answered the upgrade with an HTTP response. A failed attempt never calls `onClose`. With
 * `acceptNoProtocol`, a server that chooses none of the offered subprotocols is accepted
 * (`protocol` ''), where ws alone fails the attempt with "Server sent no subprotocol".
 *
 * @example
 * ```ts
 * const socket = await wsClientTransport().connect(
 *   'ws://127.0.0.1:8080/ws',
 *   { headers: { authorization: 'Bearer t' }, maxMessageSize: 1 << 20, connectTimeout: 5000 },
 *   handlers,
 * );
 * ```
 */
export function wsClientTransport(options: WsClientTransportOptions = {}): ClientTransport {
  const highWaterMark = checkHighWaterMark(options.highWaterMark);
  const writeBatching = checkWriteBatching(options.writeBatching);
  const tls = options.tls;
  const proxy = options.proxy === undefined ? undefined : checkProxy(options.proxy);
  /** https-proxy-agent, loaded on the first connection through `proxy`. */
  let proxyModule: Promise<typeof import('https-proxy-agent')> | undefined;

  const connect = (
    url: string,
    connectOptions: ClientConnectOptions,
    handlers: SocketHandlers,
    proxyAgent: typeof import('https-proxy-agent').HttpsProxyAgent | undefined,
  ): Promise<TransportSocket> =>
    new Promise<TransportSocket>((resolve, reject) => {
      checkMaxMessageSize(connectOptions.maxMessageSize);
      const wsOptions: ClientOptions = {
        maxPayload: connectOptions.maxMessageSize,
        perMessageDeflate: false,
        followRedirects: false,
        // No handshakeTimeout: in ws it is an idle timeout on the HTTP request; the timer below
        // is a deadline for the whole attempt, refusal body included.
      };
      if (connectOptions.headers !== undefined) wsOptions.headers = { ...connectOptions.headers };
      if (tls?.ca !== undefined) wsOptions.ca = tls.ca;
      if (tls?.rejectUnauthorized !== undefined) wsOptions.rejectUnauthorized = tls.rejectUnauthorized;
      // An agent per attempt, so that an abandoned attempt can close its connection to the proxy
      // even while the proxy has not answered the CONNECT (https-proxy-agent does not watch the
      // request it serves): the socket is made with this signal.
      const abandon = proxyAgent === undefined ? undefined : new AbortController();
      /** The proxy answered the CONNECT with this status, not 200. */
      let proxyRefusal: number | undefined;
      if (proxyAgent !== undefined && proxy !== undefined && abandon !== undefined) {
        const agent = new proxyAgent(proxy, { signal: abandon.signal });
        agent.once('proxyConnect', (answer: { statusCode: number }) => {
          if (answer.statusCode !== 200) proxyRefusal = answer.statusCode;
        });
        wsOptions.agent = agent;
      }

      const protocols = [...(connectOptions.protocols ?? [])];
      // Throws synchronously on a malformed URL or an invalid or duplicated subprotocol: turned
      // into a rejection by the executor.
      const ws = new WebSocket(url, protocols, wsOptions);
      const adapter = new WsTransportSocket(ws, highWaterMark, false, writeBatching);
      // Wired before 'open': the first server message can share a TCP packet with the 101.
      adapter.wire(handlers);

      let settled = false;
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        connectOptions.signal?.removeEventListener('abort', onAbort);
        // Aborts the request; the 'error' and 'close' ws emits for it are ignored (settled,
        // and the adapter reports no close before open).
        ws.terminate();
        abandon?.abort();
        reject(err);
      };
      const timer = setTimeout(() => {
        fail(connectError(`connect timed out after ${connectOptions.connectTimeout} ms`, 'ETIMEDOUT'));
      }, connectOptions.connectTimeout);
      const { signal } = connectOptions;
      const onAbort = (): void => fail(connectError('connect aborted', 'ABORT_ERR'));
      if (signal?.aborted === true) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });

      ws.once('upgrade', (res: IncomingMessage) => {
        adapter.setNetSocket(res.socket);
        // ws fails a 101 without Sec-WebSocket-Protocol when it offered some ("Server sent no
        // subprotocol", lib/websocket.js), and has no option against it; RFC 6455 §4.1 only
        // fails an answer that names one not offered. ws emits 'upgrade' before that check
        // (after which it only reads the header): naming the first offered for the server
        // passes it, and the adapter reports the server's real answer, none. Everything else
        // ws checks (accept key, an answer not offered) is unchanged. test/transports/ws.test.ts
        // pins this against ws upgrades.
        if (
          connectOptions.acceptNoProtocol === true &&
          protocols.length > 0 &&
          res.headers['sec-websocket-protocol'] === undefined
        ) {
          res.headers['sec-websocket-protocol'] = protocols[0];
          adapter.markNoProtocol();
        }
      });
      ws.once('open', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        connectOptions.signal?.removeEventListener('abort', onAbort);
        adapter.markOpen();
        // ws emits 'open' once it has taken the socket, its 'data' listener first.
        adapter.watchReads();
        resolve(adapter);
      });
      // After open, errors are followed by 'close', which the adapter reports.
      ws.on('error', fail);
      ws.once('unexpected-response', (_req, res: IncomingMessage) => {
        const status = res.statusCode ?? 0;
        // The proxy's answer to CONNECT, which https-proxy-agent hands on as the response.
        const refusedBy = proxyRefusal === undefined ? '' : `proxy ${redact(proxy!)} refused CONNECT`;
        const chunks: Buffer[] = [];
        let size = 0;
        const finish = (): void => {
          const body = Buffer.concat(chunks).subarray(0, MAX_REFUSAL_BODY_BYTES).toString('utf8');
          const err: ConnectFailure = Object.assign(
            new Error(`${refusedBy || 'upgrade refused'} with HTTP ${status}`),
            {
              status,
              body,
            },
          );
          fail(err);
        };
        res.on('data', (chunk: Buffer) => {
          chunks.push(chunk);
          size += chunk.length;
          // Enough for a diagnostic; the rest of a large body is not worth waiting for.
          if (size >= MAX_REFUSAL_BODY_BYTES) finish();
        });
        res.once('end', finish);
        res.once('error', finish);
        res.once('close', finish);
      });
    });

  return {
    connect(url: string, connectOptions: ClientConnectOptions, handlers: SocketHandlers): Promise<TransportSocket> {
      if (proxy === undefined) return connect(url, connectOptions, handlers, undefined);
      proxyModule ??= import('https-proxy-agent');
      return proxyModule.then(({ HttpsProxyAgent }) => connect(url, connectOptions, handlers, HttpsProxyAgent));
    },
  };
}
