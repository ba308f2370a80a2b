/**
 * The browser adapter: a client transport over the standard `WebSocket` (WHATWG HTML, "Web
 * sockets"), for browsers, and for Node 22+ or tests through an injected constructor. It imports
 * nothing of Node: it is what `duplexwire/client` uses by default under the `browser` export
 * condition.
 *
 * What a browser cannot do, and what the adapter does instead:
 * - Set headers on the upgrade request: `headers` is ignored (authenticate with a query parameter,
 *   a cookie, or a first request).
 * - See the HTTP status of a refused upgrade: a refusal and "nothing listens there" both reject
 *   `connect` with a plain {@link ConnectFailure} without `status`, so a client keeps retrying a
 *   403 that a Node client would give up on.
 * - Stop reading: `pause()` is emulated by queueing what arrives (up to `maxPausedBytes`, then the
 *   connection closes with 1008), as the uWebSockets.js adapter does.
 * - Send close codes other than 1000 and 3000-4999 (`WebSocket.close()` throws on them): those are
 *   sent as 1000 with the intended code leading the reason (`'1002: bad frame'`). Once the adapter
 *   closed (the owner's `close()`, or a limit), `onClose` reports the code and reason it closed
 *   with, whatever the browser reports (as the uWebSockets.js adapter does).
 * - Limit what it reads: a browser reads any message whole, so one over `maxMessageSize` is refused
 *   after the fact (the connection closes with 1009).
 * - Abort: `terminate()` starts the closing handshake and reports `onClose(1006, '')` at once (on a
 *   microtask); what the connection does afterwards is ignored.
 * - Send pings, or see them (the browser answers pings itself): `ping()` does nothing and
 *   `onPing` never fires. duplexwire's own heartbeat keeps the connection alive instead.
 * - See a message before it is whole: `onActivity` never fires (a `serverTimeout` counts a large
 *   message over a slow link as silence until it has arrived).
 * - Be told when its send buffer drains: `bufferedAmount` is polled after a `backpressure` answer.
 *
 * @example
 * ```ts
 * import { Client } from 'duplexwire/client';
 * import { browserTransport } from 'duplexwire/transports/browser';
 *
 * const client = new Client('wss://example.com/ws', { transport: browserTransport() });
 * ```
 */

import { assertSendableCloseCode, MAX_CLOSE_REASON_BYTES, truncateUtf8 } from './close-frame.ts';
import type {
  ClientConnectOptions,
  ClientTransport,
  ConnectFailure,
  SendResult,
  SocketHandlers,
  TransportSocket,
} from './types.ts';

/** Bytes the browser may have queued before `send` answers `backpressure` (as the other adapters). */
export const DEFAULT_HIGH_WATER_MARK = 64 * 1024;
/** @see BrowserTransportOptions.maxPausedBytes (as the uWebSockets.js adapter) */
export const DEFAULT_MAX_PAUSED_BYTES = 8 * 1024 * 1024;
/** How often `bufferedAmount` is checked while a drain is owed: about one animation frame, in ms. */
export const DRAIN_POLL_INTERVAL = 16;

/**
 * What keeping one message during a pause costs beyond its bytes, so that `maxPausedBytes` bounds
 * the memory held and not only the payloads. A queued 1-byte message holds ~149 bytes of V8 heap
 * (its entry, its Uint8Array and ArrayBuffer), 64 bytes of Blink's heap for the ArrayBuffer's DOM
 * wrapper (~120 for a text message, encoded here), and its backing store with its bookkeeping
 * outside both: the renderer's RSS grew ~650 bytes per queued 1-byte message (Chromium 156,
 * 200,000 of them, measured after a GC). Counted as 64, a server sending tiny messages to a paused
 * client made the page hold some ten times `maxPausedBytes`; at 512, as the uWebSockets.js adapter
 * counts for about the same cost in Node, about 1.3 times.
 */
const PAUSED_MESSAGE_OVERHEAD = 512;

/** Options of {@link browserTransport}. */
export interface BrowserTransportOptions {
  /**
   * Queued outgoing bytes (`WebSocket.bufferedAmount`) above which `send` answers `backpressure`.
   * @default DEFAULT_HIGH_WATER_MARK (64 KiB)
   */
  highWaterMark?: number;
  /**
   * A browser cannot stop reading a WebSocket, so `pause()` keeps what arrives meanwhile in the
   * adapter. Once this many bytes wait (each message counted with 512 bytes of overhead, about
   * what keeping it costs in Chromium, as the uWebSockets.js adapter counts), the next message
   * closes the connection with 1008.
   * @default DEFAULT_MAX_PAUSED_BYTES (8 MiB, as the uWebSockets.js adapter)
   */
  maxPausedBytes?: number;
  /**
   * The `WebSocket` constructor to use: the standard one, or one with the same interface (Node
   * 22+'s global, `ws`'s in tests).
   * @default globalThis.WebSocket
   */
  WebSocket?: typeof WebSocket;
}

function checkNonNegative(name: string, value: number): number {
  if (!(Number.isFinite(value) && value >= 0))
    throw new RangeError(`${name} must be a finite number >= 0, got ${value}`);
  return value;
}

/** The `readyState` value of an open WebSocket (the constants are not on every implementation's instances). */
const OPEN = 1;

const encoder = new TextEncoder();

function connectFailure(message: string, code?: string): ConnectFailure {
  return Object.assign(new Error(message), code === undefined ? {} : { code });
}

/**
 * A client transport over the standard `WebSocket` (see the module comment for what browsers
 * cannot do and how the adapter makes up for it).
 *
 * `connect` resolves once the WebSocket is open. It rejects with a {@link ConnectFailure} without
 * `status` when the socket fails or closes first, with one whose `code` is `ETIMEDOUT` after
 * `connectTimeout` ms, with one whose `code` is `ABORT_ERR` when `connectOptions.signal` is
 * aborted first (`client.close()` during a connect), and with the constructor's `SyntaxError` for a
 * malformed URL. A failed attempt never calls `onClose`; after open, `onClose` is called exactly
 * once.
 *
 * @example
 * ```ts
 * const socket = await browserTransport().connect(
 *   'ws://127.0.0.1:8080/',
 *   { maxMessageSize: 1 << 20, connectTimeout: 5000 },
 *   handlers,
 * );
 * ```
 */
export function browserTransport(options: BrowserTransportOptions = {}): ClientTransport {
  const highWaterMark = checkNonNegative('highWaterMark', options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK);
  const maxPausedBytes = checkNonNegative('maxPausedBytes', options.maxPausedBytes ?? DEFAULT_MAX_PAUSED_BYTES);
  const WebSocketClass = options.WebSocket;

  return {
    connect(url: string, connectOptions: ClientConnectOptions, handlers: SocketHandlers): Promise<TransportSocket> {
      return new Promise<TransportSocket>((resolve, reject) => {
        const { maxMessageSize, connectTimeout } = connectOptions;
        if (!(maxMessageSize > 0)) throw new RangeError(`maxMessageSize must be > 0, got ${maxMessageSize}`);
        const Ctor = WebSocketClass ?? globalThis.WebSocket;
        if (typeof Ctor !== 'function') throw new TypeError('no WebSocket here: pass options.WebSocket');
        // Throws a SyntaxError on a malformed URL: a rejection, through the executor.
        const ws = new Ctor(url, connectOptions.protocols === undefined ? [] : [...connectOptions.protocols]);
        ws.binaryType = 'arraybuffer';

        let open = false;
        let settled = false;
        let closeReported = false;
        /** The code and reason reported by `onClose` once we closed: what we meant, not what the browser could send. */
        let closing: [code: number, reason: string] | undefined;
        let drainOwed = false;
        let drainTimer: ReturnType<typeof setTimeout> | undefined;
        let paused = false;
        let flushScheduled = false;
        // What arrived during a pause, oldest first, read from `queueHead` on: `shift()` would copy
        // the rest of the array each time once it is large (V8 does), and a paused socket can queue
        // ~16k tiny messages (~130k when each counted 64 bytes, which then took seconds to deliver).
        let queue: Array<[data: Uint8Array, binary: boolean]> = [];
        let queueHead = 0;
        let queuedBytes = 0;

        const { signal } = connectOptions;
        const fail = (message: string, code?: string): void => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          // Aborts the attempt; the events the browser fires for it are ignored (not open).
          ws.close();
          reject(connectFailure(message, code));
        };
        const timer = setTimeout(
          () => fail(`connect timed out after ${connectTimeout} ms`, 'ETIMEDOUT'),
          connectTimeout,
        );
        const onAbort = (): void => fail('connect aborted', 'ABORT_ERR');
        if (signal?.aborted) onAbort();
        else signal?.addEventListener('abort', onAbort, { once: true });

        const dropQueue = (): void => {
          queue = [];
          queueHead = 0;
          queuedBytes = 0;
        };

        const report = (code: number, reason: string): void => {
          if (closeReported) return;
          closeReported = true;
          clearTimeout(drainTimer);
          try {
            // Messages read before the close are still owed to an owner that reads; a paused owner
            // loses them with the connection (it rejects everything pending on close anyway).
            deliverQueued();
          } finally {
            dropQueue();
            handlers.onClose(code, reason);
          }
        };

        const deliverQueued = (): void => {
          while (!paused && queueHead < queue.length) {
            const [data, binary] = queue[queueHead++]!;
            queuedBytes -= data.byteLength + PAUSED_MESSAGE_OVERHEAD;
            if (queueHead === queue.length) {
              queue = [];
              queueHead = 0;
            } else if (queueHead >= 1024 && queueHead * 2 >= queue.length) {
              // A queue that never empties (resumed, paused again) must not keep its delivered head.
              queue = queue.slice(queueHead);
              queueHead = 0;
            }
            handlers.onMessage(data, binary);
          }
        };

        const scheduleFlush = (): void => {
          if (flushScheduled) return;
          flushScheduled = true;
          // Asynchronous like `ws` resume(): the owner calls resume() from inside its own handlers.
          // A microtask runs before the next message event, so the order is kept.
          queueMicrotask(() => {
            flushScheduled = false;
            if (closeReported) return;
            try {
              deliverQueued();
            } finally {
              // An owner that threw leaves the rest for the next turn, not stuck behind it.
              if (!paused && queueHead < queue.length) scheduleFlush();
            }
          });
        };

        /** Closes with any sendable code; the browser only sends 1000 and 3000-4999. */
        const closeWith = (code: number, reason: string): void => {
          if (closing !== undefined || closeReported || ws.readyState !== OPEN) return;
          closing = [code, reason];
          const sendable = code === 1000 || (code >= 3000 && code <= 4999);
          ws.close(
            sendable ? code : 1000,
            truncateUtf8(sendable ? reason : `${code}: ${reason}`, MAX_CLOSE_REASON_BYTES),
          );
        };

        const pollDrain = (): void => {
          drainTimer = setTimeout(() => {
            if (!drainOwed || closeReported) return;
            if (ws.bufferedAmount > highWaterMark) {
              pollDrain();
              return;
            }
            drainOwed = false;
            handlers.onDrain();
          }, DRAIN_POLL_INTERVAL);
        };

        /** `send` and `sendText`: the WebSocket tells binary from text by the argument's type. */
        const send = (data: Uint8Array | string): SendResult => {
          if (ws.readyState !== OPEN || closing !== undefined) return 'dropped';
          ws.send(data);
          if (ws.bufferedAmount <= highWaterMark) return 'ok';
          if (!drainOwed) {
            drainOwed = true;
            pollDrain();
          }
          return 'backpressure';
        };

        const socket: TransportSocket = {
          get bufferedAmount() {
            return ws.bufferedAmount;
          },
          // Browsers do not tell the peer's address.
          remoteAddress: '',
          get protocol() {
            return ws.protocol;
          },
          send,
          sendText: send,
          pause() {
            if (!closeReported) paused = true;
          },
          resume() {
            if (!paused) return;
            paused = false;
            if (queueHead < queue.length) scheduleFlush();
          },
          close(code, reason) {
            // An invalid code is the caller's bug, reported even on a closed socket (as the others).
            assertSendableCloseCode(code);
            closeWith(code, reason);
          },
          terminate() {
            // No abort in browsers: start the closing handshake (a no-op when one runs already) and
            // forget the connection now. Reported on a microtask, as the other adapters report
            // asynchronously: `terminate()` never re-enters the owner.
            if (closeReported || closing?.[0] === 1006) return;
            closing = [1006, ''];
            dropQueue();
            ws.close();
            queueMicrotask(() => report(1006, ''));
          },
          ping() {},
        };

        // Installed before open: an injected implementation may deliver the first message with it.
        ws.onmessage = (event: MessageEvent<ArrayBuffer | string>) => {
          if (!open || closing !== undefined || closeReported) return;
          const text = typeof event.data === 'string';
          const data = text ? encoder.encode(event.data as string) : new Uint8Array(event.data as ArrayBuffer);
          if (data.byteLength > maxMessageSize) {
            // The browser read it already (it has no limit of its own): close as `ws` would.
            closeWith(1009, 'message too big');
            return;
          }
          if (!paused && queueHead === queue.length) {
            handlers.onMessage(data, !text);
            return;
          }
          if (queuedBytes >= maxPausedBytes) {
            // The peer kept sending while we could not read: what TCP would have pushed back on.
            closeWith(1008, 'read buffer limit exceeded');
            return;
          }
          queue.push([data, !text]);
          queuedBytes += data.byteLength + PAUSED_MESSAGE_OVERHEAD;
          if (!paused) scheduleFlush();
        };
        ws.onopen = () => {
          if (settled) return;
          settled = true;
          open = true;
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          resolve(socket);
        };
        // Browsers hide why (no status, no errno): the close event after it carries the code.
        ws.onerror = () => {};
        ws.onclose = (event: CloseEvent) => {
          if (!open) {
            fail(`the WebSocket closed before it opened (code ${event.code})`);
            return;
          }
          report(closing?.[0] ?? event.code, closing?.[1] ?? event.reason);
        };
      });
    },
  };
}
