/**
 * The server transport over uWebSockets.js, with the observable behaviour of the `ws` server
 * transport (`ws.ts`): same upgrade requests, refusals, close codes, backpressure and lifetime
 * rules, so the core cannot tell which one runs. Where uWS cannot match, the difference is listed
 * on {@link uwsTransport}.
 *
 * uWebSockets.js is an optional peer dependency, loaded when this module is imported (the subpath
 * `duplexwire/transports/uws`); importing `duplexwire` itself never loads it.
 *
 * @example
 * ```ts
 * import { Server } from 'duplexwire';
 * import { uwsTransport } from 'duplexwire/transports/uws';
 *
 * const server = new Server({ transport: uwsTransport({ port: 8080, path: '/ws' }), onRequest });
 * ```
 */

import { maxHeaderSize, STATUS_CODES } from 'node:http';
import { createRequire } from 'node:module';
import { SocketAddress } from 'node:net';
import type * as UWS from 'uWebSockets.js';
import {
  assertSendableCloseCode,
  MAX_CLOSE_REASON_BYTES,
  type RefusalResponse,
  refusalResponse,
  truncateUtf8,
} from './close-frame.ts';
import { chooseProtocol, type HandshakeFault, handshakeFault, isUpgradeRequest } from './handshake.ts';
import { ownerFailed } from './owner-fault.ts';
import { serverLifecycle } from './server-lifecycle.ts';
import { frameHeaderLength } from './ws-frame.ts';
import type {
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
 * Loaded with `require` in a try/catch rather than a static import, so that a missing optional
 * peer dependency (or a binary built for another Node ABI) fails with an error that says what to
 * install instead of a bare `ERR_MODULE_NOT_FOUND`.
 */
const uWS: typeof UWS = loadUws();

function loadUws(): typeof UWS {
  try {
    return createRequire(import.meta.url)('uWebSockets.js') as typeof UWS;
  } catch (cause) {
    throw new Error(
      'duplexwire/transports/uws needs the optional peer dependency uWebSockets.js: ' +
        'npm install uNetworking/uWebSockets.js#semver:^20 ' +
        '(or the alias "uWebSockets.js": "npm:@trufflesuite/uws-js-unofficial@20.30.0-unofficial.0"); ' +
        `loading it failed with: ${(cause instanceof Error ? cause.message : String(cause)).split('\n', 1)[0]}`,
      { cause },
    );
  }
}

/* ------------------------------------------------------------------------------------------- */
/* Options                                                                                     */
/* ------------------------------------------------------------------------------------------- */

/** @see UwsServerTransportOptions.host */
export const DEFAULT_HOST = '127.0.0.1';
/** @see UwsServerTransportOptions.port */
export const DEFAULT_PORT = 8080;
/** Same value as the `ws` transport and as uWS's own default `maxBackpressure`. */
export const DEFAULT_HIGH_WATER_MARK = 64 * 1024;
/** @see UwsServerTransportOptions.idleTimeout */
export const DEFAULT_IDLE_TIMEOUT = 0;
/** @see UwsServerTransportOptions.maxBackpressure */
export const DEFAULT_MAX_BACKPRESSURE = 64 * 1024 * 1024;
/** @see UwsServerTransportOptions.maxPausedBytes */
export const DEFAULT_MAX_PAUSED_BYTES = 8 * 1024 * 1024;

/** TLS material for `wss:`, as files uWS reads itself (it takes paths, not PEM contents). */
export interface UwsServerTlsOptions {
  /** Path of the PEM private key. */
  key: string;
  /** Path of the PEM certificate (chain). */
  cert: string;
  /** For an encrypted key. @default undefined */
  passphrase?: string;
}

/** Options of {@link uwsTransport}. */
export interface UwsServerTransportOptions {
  /** @default DEFAULT_HOST ('127.0.0.1'; use '0.0.0.0' or '::' to accept remote peers) */
  host?: string;
  /** @default DEFAULT_PORT (8080; 0 picks a free port, see `address()`) */
  port?: number;
  /**
   * Only upgrades to exactly this path (query ignored) are handled; others are answered 404.
   * @default undefined (every path)
   */
  path?: string;
  /** Serve `wss:` with these files. @default undefined (plain `ws:`) */
  tls?: UwsServerTlsOptions;
  /**
   * Queued outgoing bytes above which `send` answers `backpressure`.
   * @default DEFAULT_HIGH_WATER_MARK (64 KiB)
   */
  highWaterMark?: number;
  /**
   * uWS closes a connection silent for this many seconds (0, or 8 to 960: uWS aborts the process
   * on other values, so they are rejected here). The core runs its own read timeout.
   * @default DEFAULT_IDLE_TIMEOUT (0, off)
   */
  idleTimeout?: number;
  /**
   * Hard cap on a socket's queued outgoing bytes (uWS `maxBackpressure`): a send that finds more
   * queued is not written and the connection is closed with 1008. The core closes a slow consumer
   * itself (`maxBufferedBytes`) well before this in its default configuration. Must be above
   * `highWaterMark`. (uWS's own publish skips a socket over this cap without a word; here a
   * publish reaches only sockets at or below `highWaterMark`, the others get a `send`.)
   * @default DEFAULT_MAX_BACKPRESSURE (64 MiB)
   */
  maxBackpressure?: number;
  /**
   * uWebSockets.js cannot stop reading one WebSocket alone, so `pause()` is emulated: messages that
   * arrive meanwhile wait in the adapter. Once this many bytes wait (each message counted with
   * 512 bytes of overhead, about what keeping it costs), the next message closes the connection
   * with 1008. `ws` stops reading TCP instead, which a peer feels as a stalled send rather than a
   * close.
   * @default DEFAULT_MAX_PAUSED_BYTES (8 MiB, about what TCP buffers would hold)
   */
  maxPausedBytes?: number;
}

interface ResolvedOptions {
  readonly host: string;
  readonly port: number;
  readonly path: string | undefined;
  readonly tls: Readonly<UwsServerTlsOptions> | undefined;
  readonly highWaterMark: number;
  readonly idleTimeout: number;
  readonly maxBackpressure: number;
  readonly maxPausedBytes: number;
}

/** uWS stores these limits as C++ `unsigned int`. */
const MAX_UINT32 = 2 ** 32 - 1;

function resolveOptions(options: UwsServerTransportOptions): ResolvedOptions {
  const host = options.host ?? DEFAULT_HOST;
  if (typeof host !== 'string' || host === '')
    throw new RangeError(`host must be a non-empty string, got ${JSON.stringify(host)}`);
  const port = options.port ?? DEFAULT_PORT;
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    throw new RangeError(`port must be an integer in 0..65535, got ${port}`);
  }
  if (options.path !== undefined && !options.path.startsWith('/')) {
    throw new RangeError(`path must start with '/', got ${JSON.stringify(options.path)}`);
  }
  const tls = options.tls;
  if (
    tls !== undefined &&
    !(typeof tls.key === 'string' && tls.key !== '' && typeof tls.cert === 'string' && tls.cert !== '')
  ) {
    throw new TypeError('tls.key and tls.cert must be file paths (uWebSockets.js reads the PEM files itself)');
  }
  const highWaterMark = options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
  if (!(Number.isFinite(highWaterMark) && highWaterMark >= 0)) {
    throw new RangeError(`highWaterMark must be a finite number >= 0, got ${highWaterMark}`);
  }
  const idleTimeout = options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT;
  // uWS calls std::terminate() for 1-7 and above 960: the whole process dies, not the call.
  if (!(Number.isInteger(idleTimeout) && (idleTimeout === 0 || (idleTimeout >= 8 && idleTimeout <= 960)))) {
    throw new RangeError(`idleTimeout must be 0 (off) or an integer number of seconds in 8..960, got ${idleTimeout}`);
  }
  const maxBackpressure = options.maxBackpressure ?? DEFAULT_MAX_BACKPRESSURE;
  if (!(Number.isInteger(maxBackpressure) && maxBackpressure <= MAX_UINT32)) {
    throw new RangeError(`maxBackpressure must be an integer <= ${MAX_UINT32}, got ${maxBackpressure}`);
  }
  if (!(maxBackpressure > highWaterMark)) {
    throw new RangeError(
      `maxBackpressure (${maxBackpressure}) must be above highWaterMark (${highWaterMark}), or sends are dropped before backpressure shows`,
    );
  }
  const maxPausedBytes = options.maxPausedBytes ?? DEFAULT_MAX_PAUSED_BYTES;
  if (!(Number.isFinite(maxPausedBytes) && maxPausedBytes >= 0)) {
    throw new RangeError(`maxPausedBytes must be a finite number >= 0, got ${maxPausedBytes}`);
  }
  return Object.freeze({
    host,
    port,
    path: options.path,
    tls: tls === undefined ? undefined : Object.freeze({ ...tls }),
    highWaterMark,
    idleTimeout,
    maxBackpressure,
    maxPausedBytes,
  });
}

/* ------------------------------------------------------------------------------------------- */
/* Socket adapter                                                                              */
/* ------------------------------------------------------------------------------------------- */

/** What `res.upgrade` attaches to the uWS WebSocket (uWS copies it onto `getUserData()`). */
interface UserData {
  readonly socket: UwsTransportSocket;
}

type UwsWebSocket = UWS.WebSocket<UserData>;

/** `ws.send()` results (uWS `WebSocket::SendStatus`). */
const SEND_DROPPED = 2;

/** uSockets' listen option: bind without SO_REUSEPORT (`uWS.LIBUS_LISTEN_EXCLUSIVE_PORT`). */
const LIBUS_LISTEN_EXCLUSIVE_PORT = 1;
type ListenWithOptions = (
  host: string,
  port: number,
  options: number,
  cb: (listenSocket: UWS.us_listen_socket | false) => void,
) => UWS.TemplatedApp;

/**
 * uWS closes on a protocol violation without a close frame and reports 1006 with one of these
 * reasons (`WebSocketProtocol.h`). The owner gets the code `ws` would have sent, as `ws.ts` does;
 * see uNetworking/uWebSockets#1321 for why uWS itself keeps 1006.
 */
const UWS_ERROR_CLOSE_CODES: ReadonlyMap<string, number> = new Map([
  ['Received too big message', 1009],
  ['Received too big message, or other inflation error', 1009],
  ['Received invalid UTF-8', 1007],
  ['Received invalid WebSocket frame', 1002],
  ['Received invalid close payload', 1002],
]);

/**
 * What keeping one message during a pause costs beyond its bytes, so that `maxPausedBytes` bounds
 * the memory held and not only the payloads: its record, its Uint8Array and its ArrayBuffer take
 * ~235 bytes of V8 heap on Node 20, and the ArrayBuffer's backing store with its bookkeeping about
 * as much again outside it (~580 bytes of RSS per 1-byte message, measured). Counted as 64, a peer
 * sending 1-byte messages made a paused socket hold four times `maxPausedBytes` of heap.
 */
const PAUSED_MESSAGE_OVERHEAD = 512;

/**
 * uWS (`LoopData::CORK_BUFFER_SIZE`) publishes a message of at least this many bytes at once, with
 * a `send` to each subscriber (`TopicTree::publishBig`); a smaller one waits in its topic tree and
 * is written to each subscriber, corked with the others, at the subscriber's next `send` or close
 * frame, before its 33rd waiting message, or when uWS's loop next turns (its libuv prepare and
 * check handlers), whichever comes first. `test/transports/uws.test.ts` pins both paths.
 */
const UWS_PUBLISH_AT_ONCE_BYTES = 16 * 1024;

/**
 * Ages the published bytes that uWS may still hold for a socket, which `getBufferedAmount()` does
 * not count yet (see {@link UWS_PUBLISH_AT_ONCE_BYTES}). No uWS call tells when its topic tree
 * was written out, but the event loop's order does: the clock ticks on `setImmediate`, once per
 * turn while publishes happen, and a tick scheduled from inside a tick runs in the next turn's
 * check phase, after that turn's prepare phase, where uWS writes everything waiting. So bytes
 * admitted during one epoch are all written by the time the epoch after next begins: a socket
 * counts those of the current and the previous epoch. That overestimates (by what uWS already
 * wrote), which only sends more messages through `send`, and never underestimates.
 */
class PublishClock {
  epoch = 0;
  #lastAdmission = 0;
  #timer: ReturnType<typeof setImmediate> | undefined;
  #stopped = false;

  /** Called on each admission; returns the epoch the bytes belong to. */
  admitted(): number {
    this.#lastAdmission = this.epoch;
    if (this.#timer === undefined && !this.#stopped) this.#schedule();
    return this.epoch;
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) clearImmediate(this.#timer);
    this.#timer = undefined;
  }

  #schedule(): void {
    // Unref'd: a server that publishes does not keep the process alive by that alone.
    this.#timer = setImmediate(() => {
      this.#timer = undefined;
      this.epoch++;
      // Two ticks after the last admission its bytes no longer count: the clock can rest.
      if (this.epoch - this.#lastAdmission < 2 && !this.#stopped) this.#schedule();
    }).unref();
  }
}

/**
 * The uWS topic for a duplexwire topic. uWS keys topics by the UTF-8 bytes V8 writes for the
 * string, and how V8 writes a lone surrogate (WTF-8 today, U+FFFD under other flags) is not
 * something two different topics should come to share a subscriber list through. A topic with
 * surrogates, or starting with NUL, is spelled as NUL plus its UTF-16 code units in hex: those
 * spellings start with NUL and no other topic passed through unchanged does, so the map is
 * one-to-one.
 */
function topicKey(topic: string): string {
  if (!NEEDS_TOPIC_ESCAPE.test(topic)) return topic;
  let key = '\0';
  for (let i = 0; i < topic.length; i++) key += topic.charCodeAt(i).toString(16).padStart(4, '0');
  return key;
}

const NEEDS_TOPIC_ESCAPE = /^\0|[\uD800-\uDFFF]/;

/**
 * A uWS topic every subscribing socket joins first and nobody publishes to (no `topicKey` is a
 * lone NUL). uWS v20.30 frees a socket's subscriber state when it leaves its last topic, and with
 * it the published messages it had not written to that socket yet: a subscriber that unsubscribed
 * right after a publish lost the message the publish counted. Later uWS versions keep the state
 * ("Leave us as subscribers even if we subscribe to nothing"); this topic does the same here.
 */
const ANCHOR_TOPIC = '\0';

interface Received {
  readonly data: Uint8Array;
  readonly binary: boolean;
}

/**
 * {@link TransportSocket} over one uWS WebSocket.
 *
 * Lifetime: a uWS WebSocket may not be touched once its close callback ran (every method throws
 * "Invalid access of closed uWS.WebSocket"). `#ws` is cleared in that callback and every method
 * checks it, and each call into uWS is also wrapped, so no such error can reach the owner.
 */
class UwsTransportSocket implements TransportSocket {
  readonly request: UpgradeRequest;
  /** Resolves once `onClose` was delivered (or there was nobody to deliver it to). */
  readonly closed: Promise<void>;
  readonly #highWaterMark: number;
  readonly #maxPausedBytes: number;
  #ws: UwsWebSocket | undefined;
  #handlers: SocketHandlers | undefined;
  /** A send answered `backpressure`; the next drain below the high-water mark is owed. */
  #drainOwed = false;
  #paused = false;
  /** Messages read while paused (or not yet flushed after `resume`), oldest at `#queueHead`. */
  #queue: Received[] = [];
  #queueHead = 0;
  #queuedBytes = 0;
  #flushScheduled = false;
  #closeReported = false;
  #resolveClosed!: () => void;
  readonly #clock: PublishClock;
  /** Epoch of the last admitted publish, and bytes admitted in it and in the epoch before. */
  #publishedEpoch = 0;
  #publishedBytes = 0;
  #publishedBytesBefore = 0;
  /** Joined ANCHOR_TOPIC. */
  #anchored = false;

  constructor(
    request: UpgradeRequest,
    highWaterMark: number,
    maxPausedBytes: number,
    clock: PublishClock,
    protocol: string,
  ) {
    this.request = request;
    this.protocol = protocol;
    this.#highWaterMark = highWaterMark;
    this.#maxPausedBytes = maxPausedBytes;
    this.#clock = clock;
    this.closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
  }

  get remoteAddress(): string {
    return this.request.remoteAddress;
  }

  /** The subprotocol the handshake answered with ('' for none). */
  readonly protocol: string;

  /**
   * uWS's own count: the socket's buffer. A published message waiting in uWS's topic tree is
   * counted once uWS writes it to the socket (by the end of the event loop's turn, or before this
   * socket's next send), as a kernel buffer's contents are never counted: it is at most the
   * high-water mark's worth (see `admitPublish`).
   */
  get bufferedAmount(): number {
    const ws = this.#ws;
    if (ws === undefined) return 0;
    try {
      return ws.getBufferedAmount();
    } catch {
      return 0;
    }
  }

  /* ---- from uWS callbacks ---- */

  /** The `open` callback. */
  attach(ws: UwsWebSocket): void {
    this.#ws = ws;
  }

  /** Installs the owner's handlers, still inside `open`: nothing was delivered before. */
  wire(handlers: SocketHandlers): void {
    this.#handlers = handlers;
  }

  /** The `message` callback, with bytes the adapter already copied. */
  received(data: Uint8Array, binary: boolean): void {
    const handlers = this.#handlers;
    if (this.#ws === undefined || handlers === undefined) return;
    if (!this.#paused && this.#queueLength() === 0) {
      handlers.onMessage(data, binary);
      return;
    }
    if (this.#queuedBytes >= this.#maxPausedBytes) {
      // The peer kept sending while we could not read: what TCP would have pushed back on.
      this.close(1008, 'read buffer limit exceeded');
      return;
    }
    this.#queue.push({ data, binary });
    this.#queuedBytes += data.byteLength + PAUSED_MESSAGE_OVERHEAD;
    if (!this.#paused) this.#scheduleFlush();
  }

  /** The `drain` callback: uWS wrote some of its buffer. */
  drained(): void {
    const handlers = this.#handlers;
    if (!this.#drainOwed || this.#ws === undefined || handlers === undefined) return;
    if (this.bufferedAmount > this.#highWaterMark) return;
    this.#drainOwed = false;
    handlers.onDrain();
  }

  /** The `ping` and `pong` callbacks (uWS answers pings itself). */
  pinged(): void {
    if (this.#ws !== undefined) this.#handlers?.onPing();
  }

  /**
   * The `close` callback. uWS calls it synchronously from `end()` and `close()`, so the owner is
   * told on a microtask: `socket.close()` never re-enters the owner, as with `ws`.
   */
  closedByUws(code: number, reason: string): void {
    if (this.#ws === undefined) return;
    this.#ws = undefined;
    queueMicrotask(() => this.#reportClose(code, reason));
  }

  #reportClose(code: number, reason: string): void {
    if (this.#closeReported) return;
    this.#closeReported = true;
    const handlers = this.#handlers;
    try {
      // Messages read before the close are still owed to an owner that reads; a paused owner
      // loses them with the connection (it rejects everything pending on close anyway).
      if (handlers !== undefined) this.#deliverQueued(handlers);
    } finally {
      this.#queue = [];
      this.#queueHead = 0;
      this.#queuedBytes = 0;
      try {
        handlers?.onClose(code, reason);
      } finally {
        this.#resolveClosed();
      }
    }
  }

  /* ---- pause emulation ---- */

  #queueLength(): number {
    return this.#queue.length - this.#queueHead;
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    // Asynchronous like `ws` resume(): the owner calls resume() from inside its own handlers.
    setImmediate(() => {
      this.#flushScheduled = false;
      const handlers = this.#handlers;
      if (this.#ws === undefined || handlers === undefined) return;
      try {
        this.#deliverQueued(handlers);
      } finally {
        // An owner that threw leaves the rest for the next turn, not stuck behind it.
        if (!this.#paused && this.#queueLength() > 0) this.#scheduleFlush();
      }
    });
  }

  #deliverQueued(handlers: SocketHandlers): void {
    while (!this.#paused && this.#queueLength() > 0) {
      const next = this.#queue[this.#queueHead]!;
      this.#queueHead++;
      this.#queuedBytes -= next.data.byteLength + PAUSED_MESSAGE_OVERHEAD;
      if (this.#queueHead === this.#queue.length) {
        this.#queue = [];
        this.#queueHead = 0;
      } else if (this.#queueHead >= 1024 && this.#queueHead * 2 >= this.#queue.length) {
        this.#queue = this.#queue.slice(this.#queueHead);
        this.#queueHead = 0;
      }
      handlers.onMessage(next.data, next.binary);
    }
  }

  /* ---- TransportSocket ---- */

  /**
   * Sends at once, without `ws.cork()`. Measured on loopback (20k sends of 32 bytes from outside
   * any uWS callback): 19 ms uncorked, 22 ms with one cork per send, 2 ms for one cork around all
   * of them. A cork per send coalesces nothing and costs ~15%; only batching several sends in one
   * cork would pay, which the one-message-at-a-time contract cannot express. Inside uWS callbacks
   * the socket is corked by uWS already.
   *
   * `dropped` is never silent: uWS refuses a send when more than `maxBackpressure` bytes are
   * queued (result 2), and the adapter then closes with 1008, so the core sees the connection end
   * rather than a hole in the message stream.
   */
  send(data: Uint8Array): SendResult {
    return this.#send(data, true);
  }

  sendText(data: string): SendResult {
    return this.#send(data, false);
  }

  #send(data: Uint8Array | string, binary: boolean): SendResult {
    const ws = this.#ws;
    if (ws === undefined) return 'dropped';
    let status: number;
    try {
      status = ws.send(data, binary, false);
    } catch {
      return 'dropped';
    }
    // uWS wrote what its topic tree held for this socket before `data`: all of it is counted by
    // getBufferedAmount() now.
    this.#forgetPublished();
    if (status === SEND_DROPPED) {
      this.close(1008, 'send buffer limit exceeded');
      return 'dropped';
    }
    if (this.bufferedAmount > this.#highWaterMark) {
      this.#drainOwed = true;
      return 'backpressure';
    }
    return 'ok';
  }

  /* ---- native pub/sub ---- */

  subscribe(topic: string): void {
    const ws = this.#ws;
    if (ws === undefined) return;
    try {
      if (!this.#anchored) {
        ws.subscribe(ANCHOR_TOPIC);
        this.#anchored = true;
      }
      ws.subscribe(topicKey(topic));
    } catch {
      // Closed by uWS: it forgot the subscriptions with the socket.
    }
  }

  unsubscribe(topic: string): void {
    this.leave(topicKey(topic));
  }

  /**
   * Admits a publish of `byteLength` bytes when a `send` of them could not answer `backpressure`:
   * the socket's buffer, what uWS may still hold for it from earlier publishes, and this message
   * together stay at or below the high-water mark. Then the core's checks after a `send`
   * (backpressure, `maxBufferedBytes`) have nothing to act on, and uWS's own limit
   * (`maxBackpressure`, above the high-water mark), whose publishes skip a socket over it
   * silently, cannot be reached by a publish: whatever reaches it goes through `send`.
   */
  admitPublish(byteLength: number): boolean {
    const ws = this.#ws;
    if (ws === undefined) return false;
    let buffered: number;
    try {
      buffered = ws.getBufferedAmount();
    } catch {
      return false;
    }
    // What uWS puts before a server-to-client message (RFC 6455 §5.2; no mask).
    const frame = byteLength + frameHeaderLength(byteLength, false);
    if (buffered + this.#publishedPending() + frame > this.#highWaterMark) return false;
    if (byteLength >= UWS_PUBLISH_AT_ONCE_BYTES) {
      // Written by the publish itself, after what the topic tree held for this socket: all of it
      // is in getBufferedAmount() once the publish returns.
      this.#forgetPublished();
    } else {
      const epoch = this.#clock.admitted();
      const age = epoch - this.#publishedEpoch;
      if (age > 0) {
        this.#publishedBytesBefore = age === 1 ? this.#publishedBytes : 0;
        this.#publishedBytes = 0;
        this.#publishedEpoch = epoch;
      }
      this.#publishedBytes += frame;
    }
    return true;
  }

  /**
   * Published bytes uWS may still hold for this socket, not counted by getBufferedAmount() (an
   * upper bound: see PublishClock). Only admissions use it.
   */
  #publishedPending(): number {
    const age = this.#clock.epoch - this.#publishedEpoch;
    return age === 0 ? this.#publishedBytes + this.#publishedBytesBefore : age === 1 ? this.#publishedBytes : 0;
  }

  #forgetPublished(): void {
    this.#publishedBytes = 0;
    this.#publishedBytesBefore = 0;
  }

  /** Leaves a uWS topic (`topicKey`); true when the socket had joined it. */
  leave(key: string): boolean {
    const ws = this.#ws;
    if (ws === undefined) return false;
    try {
      return ws.unsubscribe(key);
    } catch {
      return false;
    }
  }

  /** Joins a uWS topic again after `leave` (see `publish`). */
  rejoin(key: string): void {
    try {
      this.#ws?.subscribe(key);
    } catch {
      // As in subscribe().
    }
  }

  /**
   * Publishes to `key` leaving this socket out (uWS `ws.publish`: "a socket publishing to a topic
   * will not receive its own message"). False, with nothing sent, when the socket has not joined
   * `key`: uWS's `ws.publish` then sends nothing at all when the socket has joined no topic, and
   * `app.publish` leaves the socket out anyway.
   */
  publishWithout(key: string, data: Uint8Array): boolean {
    const ws = this.#ws;
    if (ws === undefined) return false;
    try {
      if (!ws.isSubscribed(key)) return false;
      ws.publish(key, data, true, false);
      return true;
    } catch {
      return false;
    }
  }

  pause(): void {
    if (this.#ws !== undefined) this.#paused = true;
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    if (this.#ws !== undefined && this.#queueLength() > 0) this.#scheduleFlush();
  }

  close(code: number, reason: string): void {
    // An invalid code is the caller's bug, reported even on a closed socket (as `ws.ts` does).
    assertSendableCloseCode(code);
    const ws = this.#ws;
    if (ws === undefined) return;
    try {
      // uWS sends the close frame (after what is queued) and runs the close callback at once; it
      // does not wait for the peer's close frame.
      ws.end(code, truncateUtf8(reason, MAX_CLOSE_REASON_BYTES));
    } catch {
      // Already closed by uWS: its close callback ran or is running.
    }
  }

  terminate(): void {
    const ws = this.#ws;
    if (ws === undefined) return;
    try {
      ws.close();
    } catch {
      // As in close().
    }
  }

  ping(): void {
    const ws = this.#ws;
    if (ws === undefined) return;
    try {
      // A ping is a send: uWS wrote the topic tree's messages for this socket before it.
      if (ws.ping() !== SEND_DROPPED) this.#forgetPublished();
    } catch {
      // As in close().
    }
  }
}

/* ------------------------------------------------------------------------------------------- */
/* Upgrade requests                                                                            */
/* ------------------------------------------------------------------------------------------- */

/**
 * Node keeps the first of these when a request repeats them instead of joining the values
 * (`lib/_http_incoming.js` `matchKnownFields`); `cookie` is joined with '; ', the rest with ', '.
 */
const SINGLE_VALUE_HEADERS: ReadonlySet<string> = new Set([
  'age',
  'authorization',
  'content-length',
  'content-type',
  'etag',
  'expires',
  'from',
  'host',
  'if-modified-since',
  'if-unmodified-since',
  'last-modified',
  'location',
  'max-forwards',
  'proxy-authorization',
  'referer',
  'retry-after',
  'server',
  'user-agent',
]);

/**
 * Request headers as `ws.ts` sees them through Node: lower-case names, repeats joined like Node;
 * with the size of the request's head as Node counts it against `maxHeaderSize` (request line
 * and header lines; within a few bytes, which only matters at the limit itself).
 */
function readHeaders(
  req: UWS.HttpRequest,
  path: string,
  query: string,
): { headers: Record<string, string | undefined>; headBytes: number } {
  // Null prototype: header names are chosen by the peer (`__proto__`, `constructor`).
  const headers: Record<string, string | undefined> = Object.create(null);
  // "GET " + target + " HTTP/1.1\r\n" ... "\r\n"
  let headBytes = path.length + (query === '' ? 0 : query.length + 1) + 17;
  req.forEach((name, value) => {
    headBytes += name.length + value.length + 4;
    const previous = headers[name];
    if (previous === undefined) headers[name] = value;
    else if (!SINGLE_VALUE_HEADERS.has(name)) headers[name] = `${previous}${name === 'cookie' ? '; ' : ', '}${value}`;
  });
  return { headers, headBytes };
}

/**
 * What Node's HTTP server decides before the `ws` transport sees a request, decided here alike:
 * a head over Node's `maxHeaderSize` gets 431 (uWS's own limit is far higher), a request that is
 * not an upgrade 426 (uWS would upgrade one without `Connection: upgrade`); then, as in `ws.ts`,
 * another path 404 and another protocol (h2c) 400. Undefined when the handshake itself is next.
 */
function preflight(
  expectedPath: string | undefined,
  path: string,
  headers: Readonly<Record<string, string | undefined>>,
  headBytes: number,
): HandshakeFault | undefined {
  if (headBytes > maxHeaderSize) return { status: 431 };
  if (!isUpgradeRequest(headers)) return { status: 426 };
  if (expectedPath !== undefined && path !== expectedPath) return { status: 404 };
  if (headers.upgrade?.toLowerCase() !== 'websocket') return { status: 400 };
  return undefined;
}

/**
 * The peer's address in Node's notation. uWS writes IPv6 in full (`0000:...:0001`, IPv4-mapped as
 * `...:ffff:7f00:0001`); Node's `socket.remoteAddress` uses inet_ntop's (`::1`,
 * `::ffff:127.0.0.1`), which `SocketAddress` also produces. Applications compare these strings.
 */
function remoteAddressOf(res: UWS.HttpResponse): string {
  const text = Buffer.from(res.getRemoteAddressAsText()).toString();
  if (!text.includes(':')) return text;
  try {
    return new SocketAddress({ address: text, family: 'ipv6' }).address;
  } catch {
    return text;
  }
}

/** Writes a refusal (already checked by `refusalResponse`) and closes the connection after it. */
function respond(res: UWS.HttpResponse, refusal: RefusalResponse): void {
  // Outside the route handler (after an await) uWS needs the writes corked.
  res.cork(() => {
    res.writeStatus(`${refusal.status} ${STATUS_CODES[refusal.status] ?? 'Unknown'}`);
    res.writeHeader('Content-Type', Buffer.from(refusal.contentType, 'latin1'));
    // latin1, as Node writes header strings; uWS would encode a JS string as UTF-8.
    for (const [name, value] of refusal.headers) res.writeHeader(name, Buffer.from(value, 'latin1'));
    // `true`: uWS adds `Connection: close` and closes once the response is written. It adds
    // Content-Length itself (and its own Date and `uWebSockets: 20` headers).
    res.end(refusal.body, true);
  });
}

function statusRefusal(status: number): RefusalResponse {
  return refusalResponse(status, STATUS_CODES[status]);
}

function isPromiseLike<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

/** A malformed upgrade that uWS did not route to `upgrade` and the checks above let through. */
const BAD_UPGRADE: HandshakeFault = { status: 400 };

/* ------------------------------------------------------------------------------------------- */
/* Server                                                                                      */
/* ------------------------------------------------------------------------------------------- */

/** How long `stop()` waits for the terminated connections' `onClose` (they normally run at once). */
const STOP_TIMEOUT_MS = 2000;

/**
 * A server transport over uWebSockets.js.
 *
 * Upgrades go through `handlers.upgrade` first (async allowed: the request is read in full before
 * and the response is guarded by `onAborted`, so a client leaving meanwhile is dropped quietly);
 * refused ones get a plain-text HTTP response. Plain HTTP requests get 426, other upgrades 400,
 * upgrades to another path than `path` 404.
 *
 * It has the contract's optional native pub/sub: `Server.publish` fans a signal out through uWS's
 * `app.publish` (framed once, written in native code, batched per socket until the end of the
 * event loop's turn), with what each connection receives, and when it is closed, unchanged.
 *
 * Behaviour that differs from the `ws` transport, and why:
 * - A message over `maxMessageSize` closes with 1009 as with `ws`; but one over twice the limit
 *   is cut off by uWS itself without a close frame (uNetworking/uWebSockets#1321): the owner
 *   sees 1009, the peer 1006. Likewise invalid UTF-8 (owner 1007, peer 1006).
 * - Frame-level rules of RFC 6455 that `ws` enforces and uWS v20.30 does not (the adapter sees
 *   messages, not frames, so it cannot step in; `test/chaos/wire-fuzz.test.ts` pins each): most
 *   malformed frames (reserved bits or opcodes, a stray continuation, a fragmented or over-long
 *   ping) are cut without a close frame and reported as 1006, not 1002; an unmasked client frame
 *   is read as if masked (§5.1); a new data frame inside a fragmented message is joined to it
 *   (§5.4); a close frame with an invalid code is answered with an empty close frame and
 *   reported as 1006 (§7.4.1). None lets a peer past the adapter's limits or the protocol's
 *   validation: what reaches the core is still a whole message, checked as any other.
 * - A close frame with a code from 1012 to 1014 or 3000 to 3999, valid by RFC 6455 §7.4.2 and
 *   the IANA registry (`ws` accepts them), is refused by uWS v20.30 as an invalid close payload:
 *   the owner sees 1006 and the peer gets an empty close frame (1005 for it). The codes a server
 *   sends itself are unaffected. Peers should close with 1000, 1001 or 4000-4999.
 * - `close()` does not wait for the peer's close frame: uWS sends ours and reports the close at
 *   once, so `onClose` carries the code and reason we sent (`ws` reports the peer's echo, which a
 *   conforming peer makes identical).
 * - `pause()` is emulated: uWS v20.30 has no per-WebSocket pause, and its author notes that uWS
 *   can only pause reads and writes together (uNetworking/uWebSockets.js#661), which would
 *   withhold the drain the core waits for while it pauses on a blocked send. Messages wait in the
 *   adapter up to `maxPausedBytes`, then the connection closes with 1008.
 * - A send while more than `maxBackpressure` bytes are queued is `dropped` and closes with 1008
 *   (the peer sees 1006: uWS drops the close frame too, being over the same limit).
 * - A message is seen only once whole (uWS has no callback for the bytes of one still arriving),
 *   so `onActivity` is never called: an owner's read timeout cannot tell a peer sending a large
 *   message over a slow link from a silent one.
 * - Frames a client sends before it got the 101 are dropped by uWS (RFC 6455 §4.1 tells clients
 *   to wait; browsers and `ws` do; uNetworking/uWebSockets#213). A frame that arrives in pieces
 *   around that moment loses its start, and the rest is a protocol error that closes the
 *   connection (`test/chaos/upgrade-fuzz.ts`).
 * - uWS's HTTP parser answers nothing to requests that Node answers 400 (or 431): a header name
 *   with `_` or a request of more than 48 headers are closed at once; HTTP/1.0, a target that is
 *   not a path (absolute-form, `*`), lines ended by a bare LF, a lower-case method and bytes that
 *   are not HTTP at all are left unanswered until uWS's HTTP timeout (below) closes them. Either
 *   way no upgrade happens and `handlers.upgrade` is not called. (Node limits a request's header
 *   bytes, not their number, so `ws` upgrades a request with more than 48 headers.)
 * - A request head over 4 KiB that arrives in more than one read is closed without an answer
 *   (uWS v20.30's fixed fallback buffer; `UWS_HTTP_MAX_HEADERS_SIZE` is not read by this build);
 *   one that arrives in one read is held to Node's `maxHeaderSize` (16 KiB, 431) as with `ws`.
 * - A connection must deliver its whole request within uWS's fixed HTTP timeout (10 s, checked
 *   every 4 s, so 10-14 s), else it is closed without an answer; the `ws` transport's
 *   `handshakeTimeout` has the same default and is configurable, uWS v20's is not.
 * - Refusals and 426/404/400 answers carry `Connection: close` and uWS's own `Date` and
 *   `uWebSockets` headers; plain HTTP connections are closed after the 426 (`ws` keeps them).
 * - The upgrade URL has no trailing `?` when the query is empty (uWS does not report it).
 * - `stop()` terminates accepted connections and pending upgrades; an idle keep-alive HTTP
 *   connection (never upgraded) is closed by uWS's own HTTP timeout (10 s), uWS v20 offering no
 *   way to close it from here.
 *
 * @example
 * ```ts
 * const transport = uwsTransport({ port: 0, path: '/ws' });
 * await transport.start(handlers, { maxMessageSize: 1 << 20 });
 * console.log(transport.address()); // { host: '127.0.0.1', port: 41234 }
 * ```
 */
export function uwsTransport(options: UwsServerTransportOptions = {}): ServerTransport {
  const opts = resolveOptions(options);

  interface Run {
    listenSocket: UWS.us_listen_socket | undefined;
    port: number;
    /** Upgrades whose decision is pending. */
    readonly pending: Set<UWS.HttpResponse>;
    /** Accepted connections whose close callback has not run. */
    readonly live: Set<UwsTransportSocket>;
    stopped: boolean;
    /** Set by `refuseUpgrades`: the answer to every accept from then on. */
    refusal: UpgradeRefusal | undefined;
    readonly app: UWS.TemplatedApp;
    readonly clock: PublishClock;
  }

  function createApp(): UWS.TemplatedApp {
    if (opts.tls === undefined) return uWS.App();
    const appOptions: UWS.AppOptions = { key_file_name: opts.tls.key, cert_file_name: opts.tls.cert };
    if (opts.tls.passphrase !== undefined) appOptions.passphrase = opts.tls.passphrase;
    try {
      return uWS.SSLApp(appOptions);
    } catch (cause) {
      // uWS only says "App construction failed".
      throw new Error(
        `uWebSockets.js could not load the TLS key ${JSON.stringify(opts.tls.key)} or certificate ${JSON.stringify(opts.tls.cert)} (missing, unreadable, or a wrong passphrase)`,
        {
          cause,
        },
      );
    }
  }

  function startRun(
    handlers: ServerTransportHandlers,
    startOptions: ServerTransportStartOptions,
  ): { run: Run; ready: Promise<void> } {
    if (!(startOptions.maxMessageSize > 0))
      throw new RangeError(`maxMessageSize must be > 0, got ${startOptions.maxMessageSize}`);
    const app = createApp();
    const run: Run = {
      listenSocket: undefined,
      port: 0,
      pending: new Set(),
      live: new Set(),
      stopped: false,
      refusal: undefined,
      app,
      clock: new PublishClock(),
    };

    const accept = (
      res: UWS.HttpResponse,
      request: UpgradeRequest,
      key: string,
      protocol: string,
      extensions: string,
      context: UWS.us_socket_context_t,
    ): void => {
      const socket = new UwsTransportSocket(request, opts.highWaterMark, opts.maxPausedBytes, run.clock, protocol);
      // uWS runs `open` synchronously inside upgrade().
      res.cork(() => res.upgrade<UserData>({ socket }, key, protocol, extensions, context));
    };

    const upgrade = (res: UWS.HttpResponse, req: UWS.HttpRequest, context: UWS.us_socket_context_t): void => {
      // `req` lives on uWS's stack until this handler returns: read all of it first.
      const path = req.getUrl();
      // getQuery() is undefined (not '') without a query, despite its typings.
      const query = (req.getQuery() as string | undefined) ?? '';
      const { headers, headBytes } = readHeaders(req, path, query);
      const key = headers['sec-websocket-key'] ?? '';
      const extensions = headers['sec-websocket-extensions'] ?? '';
      const remoteAddress = remoteAddressOf(res);
      // Before any async step: a response used after its client left is a crash in uWS.
      let aborted = false;
      const abandon = new AbortController();
      res.onAborted(() => {
        aborted = true;
        run.pending.delete(res);
        abandon.abort();
      });

      // uWS routes here any GET with a 24-character key; everything else it hands to `any`.
      const refusal = preflight(opts.path, path, headers, headBytes) ?? handshakeFault('GET', '1.1', path, headers);
      if (refusal !== undefined) {
        respond(res, refusalResponse(refusal.status, STATUS_CODES[refusal.status], refusal.headers));
        return;
      }
      if (run.stopped) {
        res.close();
        return;
      }
      const request: UpgradeRequest = {
        url: query === '' ? path : `${path}?${query}`,
        path,
        query,
        headers,
        remoteAddress,
        signal: abandon.signal,
      };

      const decide = (decision: UpgradeDecision): void => {
        if (aborted) return;
        if (run.stopped) {
          res.close();
          return;
        }
        // Owners write JavaScript too: anything but an explicit accept is a refusal, and a
        // malformed one becomes a bare 500.
        const accepted = (decision as Partial<UpgradeDecision> | null)?.accept === true;
        // The owner may have begun shutting down since it decided (see `refuseUpgrades`).
        if (accepted && run.refusal !== undefined) {
          respond(res, refusalResponse(run.refusal.status, run.refusal.body, run.refusal.headers));
        } else if (accepted) {
          const chosen = (decision as { protocol?: string }).protocol;
          const protocol = chooseProtocol(chosen, headers['sec-websocket-protocol']);
          if (protocol === undefined) respond(res, statusRefusal(500));
          else accept(res, request, key, protocol, extensions, context);
        } else {
          const refusal = decision as Partial<Extract<UpgradeDecision, { accept: false }>> | null;
          respond(res, refusalResponse(refusal?.status ?? 500, refusal?.body, refusal?.headers));
        }
      };

      let result: UpgradeDecision | PromiseLike<UpgradeDecision>;
      try {
        result = handlers.upgrade(request);
      } catch {
        result = { accept: false, status: 500 };
      }
      if (!isPromiseLike(result)) {
        decide(result);
        return;
      }
      run.pending.add(res);
      Promise.resolve(result)
        .catch((): UpgradeDecision => ({ accept: false, status: 500 }))
        .then((decision) => {
          run.pending.delete(res);
          decide(decision);
        });
    };

    app
      .ws<UserData>('/*', {
        compression: uWS.DISABLED,
        // uWS drops a connection whose message is over maxPayloadLength without a close frame
        // (the peer sees 1006). Its cap is set at twice the limit, and messages between the two
        // are refused here with a real 1009 close frame, as the ws transport does; only a peer
        // sending more than twice the limit is cut off by uWS itself. (uWS compares lengths
        // against an unsigned int.)
        maxPayloadLength: Math.min(Math.floor(startOptions.maxMessageSize) * 2, MAX_UINT32),
        maxBackpressure: opts.maxBackpressure,
        idleTimeout: opts.idleTimeout,
        sendPingsAutomatically: false,
        upgrade,
        open(ws) {
          const socket = ws.getUserData().socket;
          socket.attach(ws);
          run.live.add(socket);
          let socketHandlers: SocketHandlers;
          try {
            socketHandlers = handlers.connection(socket, socket.request);
          } catch (err) {
            socketHandlers = ownerFailed(socket, err);
          }
          socket.wire(socketHandlers);
        },
        message(ws, message, isBinary) {
          const socket = ws.getUserData().socket;
          if (message.byteLength > startOptions.maxMessageSize) {
            // No reason, as the ws transport (and ws itself) closes for the same thing.
            socket.close(1009, '');
            return;
          }
          // uWS neuters `message` when this callback returns: the owner gets its own copy.
          socket.received(new Uint8Array(message.slice(0)), isBinary);
        },
        drain(ws) {
          ws.getUserData().socket.drained();
        },
        ping(ws) {
          ws.getUserData().socket.pinged();
        },
        pong(ws) {
          ws.getUserData().socket.pinged();
        },
        close(ws, code, message) {
          const socket = ws.getUserData().socket;
          run.live.delete(socket);
          const reason = Buffer.from(message).toString('utf8');
          if (code === 1006) socket.closedByUws(UWS_ERROR_CLOSE_CODES.get(reason) ?? 1006, '');
          else socket.closedByUws(code, reason);
        },
      })
      .any('/*', (res, req) => {
        // Requests that are not WebSocket upgrades, or malformed ones (uWS routes only GETs with
        // a 24-character key to `upgrade`), answered as the `ws` transport's own HTTP server does.
        const path = req.getUrl();
        const method = req.getMethod().toUpperCase();
        const { headers, headBytes } = readHeaders(req, path, (req.getQuery() as string | undefined) ?? '');
        const refusal =
          preflight(opts.path, path, headers, headBytes) ?? handshakeFault(method, '1.1', path, headers) ?? BAD_UPGRADE;
        respond(res, refusalResponse(refusal.status, STATUS_CODES[refusal.status], refusal.headers));
      });

    const ready = new Promise<void>((resolve, reject) => {
      // LIBUS_LISTEN_EXCLUSIVE_PORT: without it uSockets binds with SO_REUSEPORT, and a second
      // server on a taken port would share it (the kernel splitting connections between the two)
      // instead of failing with EADDRINUSE as any other Node server does. The typings of this
      // version lack the (host, port, options, cb) overload that the binary accepts.
      (app as unknown as { listen: ListenWithOptions }).listen(
        opts.host,
        opts.port,
        LIBUS_LISTEN_EXCLUSIVE_PORT,
        (listenSocket) => {
          if (listenSocket === false) {
            run.stopped = true;
            // uWS does not say why; a taken port is by far the usual reason.
            const err = new Error(
              `listen EADDRINUSE: address already in use, or not available: ${opts.host}:${opts.port}`,
            );
            reject(Object.assign(err, { code: 'EADDRINUSE', address: opts.host, port: opts.port }));
            return;
          }
          if (run.stopped) {
            // stop() ran while listen() was in progress: do not stay listening.
            uWS.us_listen_socket_close(listenSocket);
            resolve();
            return;
          }
          run.listenSocket = listenSocket;
          run.port = uWS.us_socket_local_port(listenSocket as unknown as UWS.us_socket);
          resolve();
        },
      );
    });
    return { run, ready };
  }

  async function stopRun(run: Run): Promise<void> {
    run.stopped = true;
    run.clock.stop();
    if (run.listenSocket !== undefined) {
      uWS.us_listen_socket_close(run.listenSocket);
      run.listenSocket = undefined;
    }
    // close() runs onAborted, which removes the response from `pending`.
    for (const res of [...run.pending]) {
      try {
        res.close();
      } catch {
        // Already gone.
      }
    }
    run.pending.clear();
    const sockets = [...run.live];
    for (const socket of sockets) socket.terminate();
    // uWS runs the close callbacks inside terminate(); the owners hear of it on a microtask.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(sockets.map((socket) => socket.closed)),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, STOP_TIMEOUT_MS);
        timer.unref();
      }),
    ]);
    clearTimeout(timer);
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
      if (run?.listenSocket === undefined) return null;
      return { host: opts.host, port: run.port };
    },

    /**
     * uWS's own fan-out: `app.publish` frames the message once and writes it to every subscriber
     * in native code, corked with whatever else it holds for that socket. One socket is left out
     * as uWS intends (`ws.publish` from it); more, by leaving the topic around the publish
     * (uWS records who gets a message when it is published, so rejoining at once is safe).
     */
    publish(topic, data, skip) {
      const run = lifecycle.current();
      if (run === undefined) return;
      const key = topicKey(topic);
      if (skip.length === 0) {
        run.app.publish(key, data, true, false);
        return;
      }
      if (skip.length === 1) {
        const only = skip[0];
        if (!(only instanceof UwsTransportSocket && only.publishWithout(key, data))) {
          run.app.publish(key, data, true, false);
        }
        return;
      }
      const left: UwsTransportSocket[] = [];
      for (const socket of skip) if (socket instanceof UwsTransportSocket && socket.leave(key)) left.push(socket);
      try {
        run.app.publish(key, data, true, false);
      } finally {
        for (const socket of left) socket.rejoin(key);
      }
    },
  };
  return transport;
}
