/**
 * An in-process transport pair for deterministic tests: no sockets, no ports, nothing to leak.
 *
 * It keeps the observable behaviour of a real WebSocket where the core depends on it: messages
 * arrive asynchronously and in order, as copies; a paused side stops receiving; the sender sees
 * its bytes as buffered until the peer consumed them, with `backpressure` and `onDrain`; an
 * oversized message closes both ends with 1009; a close reaches the peer after the messages sent
 * before it and completes once the peer echoed it (RFC 6455 §5.5.1); pings are answered by pongs.
 *
 * @example
 * ```ts
 * import { memoryTransport } from 'duplexwire/transports/memory';
 *
 * const { server, client } = memoryTransport();
 * await server.start(handlers, { maxMessageSize: 1 << 20 });
 * const socket = await client.connect('memory://test/ws?room=1', { maxMessageSize: 1 << 20, connectTimeout: 1000 }, socketHandlers);
 * ```
 */

import {
  assertSendableCloseCode,
  MAX_CLOSE_REASON_BYTES,
  MAX_REFUSAL_BODY_BYTES,
  truncateUtf8,
} from './close-frame.ts';
import { ownerFailed } from './owner-fault.ts';
import type {
  ClientConnectOptions,
  ClientTransport,
  ConnectFailure,
  SendResult,
  ServerTransport,
  ServerTransportHandlers,
  SocketHandlers,
  TransportSocket,
  UpgradeDecision,
  UpgradeRefusal,
  UpgradeRequest,
} from './types.ts';

/** Undelivered bytes above which `send` answers `backpressure` (same as the `ws` adapter). */
export const DEFAULT_HIGH_WATER_MARK = 64 * 1024;

/** The label both ends report as `remoteAddress`, and the host of `address()`. */
export const MEMORY_ADDRESS = 'memory';

/** Options of {@link memoryTransport}. */
export interface MemoryTransportOptions {
  /** @default DEFAULT_HIGH_WATER_MARK (64 KiB) */
  highWaterMark?: number;
}

/** A linked server and client: `client.connect` reaches exactly this `server`. */
export interface MemoryTransport {
  readonly server: ServerTransport;
  readonly client: ClientTransport;
}

type Item =
  | { readonly kind: 'message'; readonly data: Uint8Array; readonly binary: boolean }
  | { readonly kind: 'ping' }
  | { readonly kind: 'pong' }
  | { readonly kind: 'close'; readonly code: number; readonly reason: string };

// Node's setImmediate lets I/O and timers interleave like real sockets; elsewhere a macrotask.
const defer: (fn: () => void) => void =
  typeof globalThis.setImmediate === 'function'
    ? (fn) => globalThis.setImmediate(fn)
    : (fn) => globalThis.setTimeout(fn, 0);

const encoder = new TextEncoder();

/** One end of an in-process connection. */
class MemorySocket implements TransportSocket {
  readonly remoteAddress = MEMORY_ADDRESS;
  peer!: MemorySocket;
  handlers: SocketHandlers | undefined;
  readonly #maxMessageSize: number;
  readonly #highWaterMark: number;
  readonly #onReported: () => void;
  /** Items travelling to this end, in order. */
  #inbox: Item[] = [];
  #head = 0;
  #scheduled = false;
  #paused = false;
  /** This end sent (or echoed) a close frame, or was terminated: no more sends. */
  #closing = false;
  /** Nothing more is delivered to this end. */
  #dead = false;
  #reported = false;
  /** Bytes this end sent that the peer has not consumed yet. */
  #outstanding = 0;
  #drainOwed = false;

  constructor(maxMessageSize: number, highWaterMark: number, onReported: () => void) {
    this.#maxMessageSize = maxMessageSize;
    this.#highWaterMark = highWaterMark;
    this.#onReported = onReported;
  }

  get bufferedAmount(): number {
    return this.#outstanding;
  }

  get reported(): boolean {
    return this.#reported;
  }

  send(data: Uint8Array): SendResult {
    // Copied so the sender may reuse its buffer at once, and the receiver owns what it gets.
    // Not data.slice(): on a Buffer that is a view.
    return this.#send({ kind: 'message', data: new Uint8Array(data), binary: true });
  }

  sendText(data: string): SendResult {
    return this.#send({ kind: 'message', data: encoder.encode(data), binary: false });
  }

  #send(item: Item & { kind: 'message' }): SendResult {
    if (this.#closing) return 'dropped';
    this.#outstanding += item.data.byteLength;
    this.peer.#enqueue(item);
    if (this.#outstanding > this.#highWaterMark) {
      this.#drainOwed = true;
      return 'backpressure';
    }
    return 'ok';
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.#schedule();
  }

  close(code: number, reason: string): void {
    assertSendableCloseCode(code);
    if (this.#closing) return;
    this.#closing = true;
    this.peer.#enqueue({ kind: 'close', code, reason: truncateUtf8(reason, MAX_CLOSE_REASON_BYTES) });
    // The peer's answer to the close must be read for the handshake to end (as on a network).
    this.resume();
  }

  terminate(): void {
    if (this.#reported && this.peer.#reported) return;
    for (const end of [this, this.peer]) {
      end.#closing = true;
      end.#dead = true;
      end.#inbox = [];
      end.#head = 0;
    }
    // Like a destroyed TCP socket, the close is observed asynchronously, on both ends.
    defer(() => {
      this.#report(1006, '');
      this.peer.#report(1006, '');
    });
  }

  ping(): void {
    if (!this.#closing) this.peer.#enqueue({ kind: 'ping' });
  }

  #enqueue(item: Item): void {
    if (this.#dead) return;
    this.#inbox.push(item);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled || this.#paused || this.#dead || this.#head >= this.#inbox.length) return;
    this.#scheduled = true;
    defer(() => this.#pump());
  }

  #pump(): void {
    this.#scheduled = false;
    // Only what is queued now: items the handlers cause to be queued wait for the next turn, so
    // a chatty pair cannot starve the event loop.
    const end = this.#inbox.length;
    while (this.#head < end && !this.#paused && !this.#dead) {
      const item = this.#inbox[this.#head]!;
      this.#head++;
      this.#deliver(item);
    }
    if (this.#head === this.#inbox.length) {
      this.#inbox = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#inbox.length) {
      this.#inbox = this.#inbox.slice(this.#head);
      this.#head = 0;
    }
    this.#schedule();
  }

  #deliver(item: Item): void {
    const handlers = this.handlers!;
    switch (item.kind) {
      case 'message': {
        const sender = this.peer;
        sender.#outstanding -= item.data.byteLength;
        if (item.data.byteLength > this.#maxMessageSize) {
          // What a real receiver does: close frame 1009 to the peer, then stop reading.
          this.#closing = true;
          this.#dead = true;
          sender.#enqueue({ kind: 'close', code: 1009, reason: '' });
          this.#report(1009, '');
          return;
        }
        handlers.onMessage(item.data, item.binary);
        sender.#maybeDrain();
        return;
      }
      case 'ping':
        handlers.onPing();
        if (!this.#closing) this.peer.#enqueue({ kind: 'pong' });
        return;
      case 'pong':
        handlers.onPing();
        return;
      case 'close':
        if (!this.#closing) {
          // Echo the peer's close (RFC 6455 §5.5.1); its onClose waits for this echo.
          this.#closing = true;
          this.peer.#enqueue(item);
        }
        this.#dead = true;
        this.#report(item.code, item.reason);
        return;
    }
  }

  #maybeDrain(): void {
    if (!this.#drainOwed || this.#reported || this.#outstanding > this.#highWaterMark) return;
    this.#drainOwed = false;
    this.handlers?.onDrain();
  }

  #report(code: number, reason: string): void {
    if (this.#reported) return;
    this.#reported = true;
    this.#dead = true;
    this.#closing = true;
    this.#inbox = [];
    this.#head = 0;
    this.#onReported();
    this.handlers?.onClose(code, reason);
  }
}

function connectError(message: string, code: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}

function checkMaxMessageSize(value: number): void {
  if (!(value > 0)) throw new RangeError(`maxMessageSize must be > 0, got ${value}`);
}

function buildUpgradeRequest(url: string, extraHeaders: Readonly<Record<string, string>> | undefined): UpgradeRequest {
  const parsed = new URL(url, 'memory://memory/');
  // Non-special schemes such as memory: leave an empty path as ''; HTTP would send '/'.
  const path = parsed.pathname === '' ? '/' : parsed.pathname;
  // Null prototype: header names are chosen by the connecting side.
  const headers: Record<string, string | undefined> = Object.create(null);
  if (parsed.host !== '') headers.host = parsed.host;
  if (extraHeaders !== undefined) {
    for (const [name, value] of Object.entries(extraHeaders)) headers[name.toLowerCase()] = value;
  }
  return {
    url: path + parsed.search,
    path,
    query: parsed.search.slice(1),
    headers,
    remoteAddress: MEMORY_ADDRESS,
  };
}

interface Run {
  readonly handlers: ServerTransportHandlers;
  readonly maxMessageSize: number;
  /** Connections until both ends reported their close. */
  readonly connections: Set<MemorySocket>;
  stopped: boolean;
  /** Set by `refuseUpgrades`: the answer to every accept from then on. */
  refusal: UpgradeRefusal | undefined;
}

/**
 * Creates a linked in-memory server and client transport.
 *
 * `client.connect(url, …)` accepts any URL (`memory://test/ws?x=1`, `ws://host/ws`, or just
 * `/ws`); the server sees its path, query, `host` and the given headers (lower-cased). Refusals
 * reject like the `ws` adapter: a {@link ConnectFailure} with `status` and `body`. Connecting to
 * a server that is not started rejects with code `ECONNREFUSED`.
 */
export function memoryTransport(options: MemoryTransportOptions = {}): MemoryTransport {
  const highWaterMark = options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
  if (!(Number.isFinite(highWaterMark) && highWaterMark >= 0)) {
    throw new RangeError(`highWaterMark must be a finite number >= 0, got ${highWaterMark}`);
  }
  let run: Run | undefined;

  const server: ServerTransport = {
    async start(handlers, startOptions) {
      if (run !== undefined) return;
      checkMaxMessageSize(startOptions.maxMessageSize);
      run = {
        handlers,
        maxMessageSize: startOptions.maxMessageSize,
        connections: new Set(),
        stopped: false,
        refusal: undefined,
      };
    },

    refuseUpgrades(refusal) {
      if (run !== undefined) run.refusal = refusal;
    },

    address() {
      return run === undefined ? null : { host: MEMORY_ADDRESS, port: 0 };
    },

    async stop() {
      const current = run;
      if (current === undefined) return;
      run = undefined;
      current.stopped = true;
      for (const end of current.connections) end.terminate();
      // terminate() reports on the next turn; resolve after it, as the ws adapter does.
      if (current.connections.size > 0) await new Promise<void>((resolve) => defer(resolve));
    },
  };

  async function decide(current: Run, request: UpgradeRequest, timeout: number): Promise<UpgradeDecision> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const decision = Promise.resolve()
      .then(() => current.handlers.upgrade(request))
      .catch((): UpgradeDecision => ({ accept: false, status: 500 }));
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(connectError(`connect timed out after ${timeout} ms`, 'ETIMEDOUT')), timeout);
    });
    try {
      return await Promise.race([decision, deadline]);
    } finally {
      clearTimeout(timer);
    }
  }

  const client: ClientTransport = {
    async connect(
      url: string,
      connectOptions: ClientConnectOptions,
      handlers: SocketHandlers,
    ): Promise<TransportSocket> {
      checkMaxMessageSize(connectOptions.maxMessageSize);
      const request = buildUpgradeRequest(url, connectOptions.headers);
      const current = run;
      if (current === undefined) throw connectError(`connect ECONNREFUSED ${url}`, 'ECONNREFUSED');

      let decision = await decide(current, request, connectOptions.connectTimeout);
      if (current.stopped) throw connectError('socket hang up', 'ECONNRESET');
      // The owner may have begun shutting down since it decided (see `refuseUpgrades`).
      if (decision.accept && current.refusal !== undefined) decision = current.refusal;
      if (!decision.accept) {
        const valid = Number.isInteger(decision.status) && decision.status >= 200 && decision.status <= 599;
        const status = valid ? decision.status : 500;
        const body = valid ? truncateUtf8(decision.body ?? '', MAX_REFUSAL_BODY_BYTES) : '';
        const failure: ConnectFailure = Object.assign(new Error(`upgrade refused with HTTP ${status}`), {
          status,
          body,
        });
        throw failure;
      }

      const serverEnd: MemorySocket = new MemorySocket(current.maxMessageSize, highWaterMark, () => {
        if (serverEnd.reported && clientEnd.reported) current.connections.delete(serverEnd);
      });
      const clientEnd: MemorySocket = new MemorySocket(connectOptions.maxMessageSize, highWaterMark, () => {
        if (serverEnd.reported && clientEnd.reported) current.connections.delete(serverEnd);
      });
      serverEnd.peer = clientEnd;
      clientEnd.peer = serverEnd;
      clientEnd.handlers = handlers;
      current.connections.add(serverEnd);
      try {
        serverEnd.handlers = current.handlers.connection(serverEnd, request);
      } catch (err) {
        // As over a real socket, the handshake already succeeded: the client sees its connection
        // close, and the owner's bug surfaces as an uncaught exception, not as the client's error.
        serverEnd.handlers = ownerFailed(serverEnd, err);
      }
      return clientEnd;
    },
  };

  return { server, client };
}
