/**
 * The engine both ends share: one per WebSocket connection. It decodes what arrives, runs request
 * and signal handlers under a concurrency limit, answers requests, matches replies to the requests
 * it sent, forwards cancels, enforces the limits a peer controls, and settles everything when the
 * connection ends. The server's Connection and the Client add their side's concerns on top
 * through `PeerHooks`; neither re-implements this.
 */
import { decode, idToNumber } from '../../protocol/decode.ts';
import { encodeCancel, encodeReplyError, encodeSpecialReply } from '../../protocol/encode.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { toPayload } from '../../protocol/payload.ts';
import { CLOSE_ABNORMAL, CLOSE_POLICY_VIOLATION } from '../../protocol/codes.ts';
import type { Message, Payload, ReplyErrorMessage, RequestId, SpecialReplyMessage } from '../../protocol/types.ts';
import type { RequestIdInput } from '../../protocol/encode.ts';
import type { SendResult, SocketHandlers, TransportSocket } from '../../transports/types.ts';
import {
  CanceledError,
  DisconnectedError,
  InternalError,
  MaxSessionConnectionsError,
  RequestError,
  SessionNotFoundError,
  SessionsDisabledError,
  ShutdownError,
  TimeoutError,
} from '../errors.ts';
import type { Logger } from '../logger.ts';
import { checkInteger, MAX_TIMER_DELAY } from '../util/validate.ts';
import { AbortGroups } from './abort-groups.ts';
import { type AbortSignalLike, Cancellation } from './cancellation.ts';
import { Deadlines } from './deadlines.ts';
import { type OutgoingMessage, outgoingReply, outgoingRequest, outgoingSignal, sendOutgoing } from './outgoing.ts';

export type { OutgoingMessage } from './outgoing.ts';

/** Default timeout of requests, on both ends (`requestTimeout` of the client and of the server). @default 10 s */
export const DEFAULT_REQUEST_TIMEOUT = 10_000;

/** A request or signal as handlers see it. `payload.data` is owned by the handler. */
export interface IncomingMessage {
  /** The name (namespace); empty when the sender gave none. */
  readonly name: string;
  readonly payload: Payload;
}

/** What a request handler may return: a Payload, bytes (binary), a string (UTF-8), or nothing. */
export type ReplyValue = Payload | Uint8Array | string | null | undefined | void;

/** Per-request context given to request handlers. */
export interface RequestContext {
  /** Aborted when the requester cancels (v2.1), the connection closes or shutdown times out. */
  readonly signal: AbortSignal;
  /**
   * Aborted at the same moments as `signal`, without making an AbortSignal (an EventTarget per
   * request): for a handler on a hot path that only listens for the cancel, or passes it on as
   * the `signal` of its own duplexwire requests.
   */
  readonly cancellation: AbortSignalLike;
}

/** Options of one outgoing request. */
export interface RequestOptions {
  /** Milliseconds to wait for the reply, an integer in 0..2147483647 (a timer's range); 0 waits forever. */
  readonly timeout?: number;
  /**
   * Aborting it rejects the request with `CanceledError` and tells the peer to cancel. An
   * `AbortSignal`, or any {@link AbortSignalLike} (a {@link Cancellation}). Requests may share
   * one: a connection adds one 'abort' listener to it however many of its requests use it.
   */
  readonly signal?: AbortSignalLike | undefined;
}

/** Limits and settings of one peer engine, already validated by its owner. */
export interface PeerSettings {
  /** Handlers (requests and signals) running at once; with all busy, reading stops. */
  readonly concurrency: number;
  /** Requests received and not yet answered (running or waiting); over it the connection closes 1008. */
  readonly maxInflightRequests: number;
  /** Outgoing bytes buffered for a slow peer; over it the connection closes 1008. */
  readonly maxBufferedBytes: number;
  /** Largest message accepted; over it the connection closes 1009. */
  readonly maxMessageSize: number;
  readonly logger: Logger;
}

/** What the owner of a peer engine (server Connection, Client) plugs in. */
export interface PeerHooks {
  handleRequest(message: IncomingMessage, context: RequestContext): ReplyValue | Promise<ReplyValue>;
  handleSignal(message: IncomingMessage): void | Promise<void>;
  /** Messages the engine does not handle itself (handshake, heartbeat, sessions). */
  handleControl(message: Message): void;
  /** The connection is gone; every pending request was already rejected. */
  closed(code: number, reason: string): void;
}

interface PendingRequest {
  readonly resolve: (payload: Payload) => void;
  /** Called with the reply as it is read, before `resolve` (see `request`'s `onReply`). */
  readonly onReply: ((payload: Payload) => void) | undefined;
  readonly reject: (error: Error) => void;
  /** The request's name, quoted into error messages only when one is made. */
  readonly name: string;
  /** Milliseconds allowed for the reply; 0 waits forever. */
  readonly timeout: number;
  readonly signal: AbortSignalLike | undefined;
}

/**
 * A request whose handler runs; also its handler's context. The AbortController and the
 * Cancellation are made only when the handler reads `signal` or `cancellation`: most handlers
 * read neither, and this is the hot path.
 */
class RunningRequest implements RequestContext {
  #controller: AbortController | undefined;
  #cancellation: Cancellation | undefined;
  #abortReason: Error | undefined;
  /** Set when the requester cancelled: the reply is then not sent. */
  canceled = false;
  /**
   * A request with the same id that was already running when this one came (ids are the peer's
   * to choose, and nothing stops it from reusing one): the map of running requests holds the
   * newest, each the one it shadows, so that a cancel, a close or a shutdown reaches them all.
   */
  shadowed: RunningRequest | undefined;

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#abortReason !== undefined) this.#controller.abort(this.#abortReason);
    }
    return this.#controller.signal;
  }

  get cancellation(): AbortSignalLike {
    if (this.#cancellation === undefined) {
      this.#cancellation = new Cancellation();
      if (this.#abortReason !== undefined) this.#cancellation.abort(this.#abortReason);
    }
    return this.#cancellation;
  }

  abort(reason: Error): void {
    if (this.#abortReason !== undefined) return;
    this.#abortReason = reason;
    this.#controller?.abort(reason);
    this.#cancellation?.abort(reason);
  }
}

type State = 'open' | 'closing' | 'closed';

/** How long a closing handshake may take before the socket is dropped. */
const CLOSE_GRACE = 2_000;
/** Messages waiting for a handler slot before reading stops. */
const QUEUE_HIGH_WATER_COUNT = 256;
/** Payload bytes waiting for a handler slot before reading stops. */
const QUEUE_HIGH_WATER_BYTES = 1024 * 1024;

/** Key of a peer-chosen request id in the map of running requests. */
function inboundKey(id: RequestId): number | string {
  const n = idToNumber(id);
  return n >= 0 ? n : Array.prototype.join.call(id, ',');
}

export class Peer implements SocketHandlers {
  readonly socket: TransportSocket;
  readonly settings: PeerSettings;
  readonly #hooks: PeerHooks;

  #state: State = 'open';
  /** Set by the owner once both ends speak v2.1: requests toward a client and cancels may be sent. */
  v21 = false;
  /**
   * While draining, new requests get ReplyShutdown and signals are dropped. Set by the server's
   * face (`ServerPeer.drain()`, shutdown); a client never drains.
   */
  protected draining = false;

  #nextId = 1;
  // Both maps are made on first use: an idle connection (most of a server's) needs neither, and
  // an empty Map with its table is ~100 bytes each (bench/RESULTS.md, memory).
  #pending: Map<number, PendingRequest> | undefined;
  /** Made with the first request that has a timeout: most server connections never send one. */
  #deadlines: Deadlines | undefined;
  /** The pending requests' ids by their `signal`: made with the first request that has one. */
  #aborts: AbortGroups<number> | undefined;
  #running: Map<number | string, RunningRequest> | undefined;
  #active = 0;
  #inflightRequests = 0;
  readonly #queue: Message[] = [];
  /** Bytes of the messages in `queue` (their payloads). */
  #queuedBytes = 0;
  #readingPaused = false;
  #sendBlocked = false;
  #closeCode = 0;
  #closeReason = '';
  #graceTimer: ReturnType<typeof setTimeout> | undefined;

  /** `performance.now()` of the last message, ping, pong or part of a message received (read timeout). */
  lastReceivedAt: number = performance.now();
  /** `performance.now()` of the last message sent (heartbeat). */
  lastSentAt: number = performance.now();

  constructor(socket: TransportSocket, settings: PeerSettings, hooks: PeerHooks) {
    this.socket = socket;
    this.settings = settings;
    this.#hooks = hooks;
  }

  /**
   * The id the next request gets. A client sets it on each new connection's engine from where the
   * last one stopped, and reads it back when that one ends: ids are not reset by a reconnect
   * (PROTOCOL.md §2, as the WebWire Go client does), so a request id names one request in a
   * client's whole life, in its logs and in the server's.
   */
  get nextRequestId(): number {
    return this.#nextId;
  }

  set nextRequestId(id: number) {
    this.#nextId = id;
  }

  // ---------------------------------------------------------------- SocketHandlers
  // The engine is its socket's handlers: no object or closures per connection besides the
  // engine itself (bench/RESULTS.md, memory). Called by the transport only.

  onMessage(data: Uint8Array, binary: boolean): void {
    this.#receive(data, binary);
  }

  onDrain(): void {
    this.#sendBlocked = false;
    this.#updateReading();
  }

  onPing(): void {
    this.lastReceivedAt = performance.now();
    // The transport answers a ping with a pong itself (RFC 6455 §5.5.2), into the buffer our
    // sends go to, without a send of ours seeing it: a peer that pings and never reads would grow
    // that buffer past maxBufferedBytes (uWS keeps pongs up to its own maxBackpressure, 64 MiB).
    if (this.#state === 'open' && this.socket.bufferedAmount > this.settings.maxBufferedBytes) {
      this.close(CLOSE_POLICY_VIOLATION, 'send buffer limit exceeded');
    }
  }

  /** Part of a message arrived: a large one over a slow link is no silence (read timeouts). */
  onActivity(): void {
    this.lastReceivedAt = performance.now();
  }

  onClose(code: number, reason: string): void {
    this.#finish(code, reason);
  }

  get isOpen(): boolean {
    return this.#state === 'open';
  }

  get isClosed(): boolean {
    return this.#state === 'closed';
  }

  /** Handlers running or waiting for a slot. */
  get busy(): boolean {
    return this.#active > 0 || this.#queue.length > 0;
  }

  // ---------------------------------------------------------------- receiving

  #receive(data: Uint8Array, binary: boolean): void {
    if (this.#state !== 'open') return;
    this.lastReceivedAt = performance.now();
    if (!binary) {
      this.violation(new ProtocolError('ERR_PROTOCOL_TEXT_MESSAGE', 'text message (the protocol is binary)'));
      return;
    }
    if (data.length > this.settings.maxMessageSize) {
      this.violation(
        new ProtocolError('ERR_PROTOCOL_MESSAGE_TOO_BIG', `message of ${data.length} bytes, over the limit`),
      );
      return;
    }
    let message: Message;
    try {
      message = decode(data);
    } catch (error) {
      if (error instanceof ProtocolError) {
        this.violation(error);
        return;
      }
      throw error;
    }
    switch (message.kind) {
      case 'request':
        if (this.draining) {
          this.sendRaw(encodeSpecialReply(message.id, 'shutdown'));
          return;
        }
        if (++this.#inflightRequests > this.settings.maxInflightRequests) {
          this.close(CLOSE_POLICY_VIOLATION, 'too many requests in flight');
          return;
        }
        this.#dispatch(message);
        return;
      case 'signal':
        // Signals during shutdown are dropped: they must neither run nor disturb accounting.
        if (this.draining) return;
        this.#dispatch(message);
        return;
      case 'reply':
        {
          const entry = this.#answered(message.id);
          entry?.onReply?.(message.payload);
          entry?.resolve(message.payload);
        }
        return;
      case 'reply-error':
        this.#answered(message.id)?.reject(replyErrorToError(message));
        return;
      case 'special-reply':
        {
          const entry = this.#answered(message.id);
          entry?.reject(specialReplyToError(message, entry.name));
        }
        return;
      case 'cancel':
        this.#cancelInbound(message.id);
        return;
      default:
        this.#hooks.handleControl(message);
    }
  }

  /** Closes the connection for a malformed or forbidden message. */
  violation(error: ProtocolError): void {
    this.settings.logger.debug('protocol violation, closing', { code: error.code, reason: error.message });
    this.close(error.closeCode, error.message);
  }

  #dispatch(message: Message): void {
    if (this.#active < this.settings.concurrency && this.#queue.length === 0) {
      this.#run(message);
    } else {
      this.#queue.push(message);
      this.#queuedBytes += (message as { payload: Payload }).payload.data.length;
      this.#updateReading();
    }
  }

  #run(message: Message): void {
    this.#active++;
    if (message.kind === 'request') {
      const key = inboundKey(message.id);
      const entry = new RunningRequest();
      this.#running ??= new Map();
      entry.shadowed = this.#running.get(key);
      this.#running.set(key, entry);
      // The reply needs the id and the name only. The id is a view into the received message,
      // so it is kept as its number (or copied when it has none); and the callbacks that wait
      // for the handler are made in `#whenAnswered`, away from this scope, whose closures share
      // one context holding `message`. Otherwise the whole message, payload included, would stay
      // alive until the handler settles, however early the handler let go of its payload.
      const id: RequestIdInput = typeof key === 'number' ? key : message.id.slice();
      const incoming: IncomingMessage = { name: message.name, payload: message.payload };
      this.#whenAnswered(
        callAsync(() => this.#hooks.handleRequest(incoming, entry)),
        key,
        entry,
        id,
        message.name,
      );
    } else if (message.kind === 'signal') {
      const incoming: IncomingMessage = { name: message.name, payload: message.payload };
      this.#whenHandled(
        callAsync(() => this.#hooks.handleSignal(incoming)),
        message.name,
      );
    }
  }

  /** Replies once a request's handler settles. The reply goes out before the next waiting message starts: in-order mode stays in order. */
  #whenAnswered(
    answer: Promise<ReplyValue>,
    key: number | string,
    entry: RunningRequest,
    id: RequestIdInput,
    name: string,
  ): void {
    answer.then(
      (value) => {
        if (!entry.canceled) this.#reply(id, value);
        this.#release(key, entry);
      },
      (error: unknown) => {
        if (!entry.canceled) this.#replyError(id, name, error);
        this.#release(key, entry);
      },
    );
  }

  /** Frees a signal handler's slot once it settles. */
  #whenHandled(done: Promise<void>, name: string): void {
    done.then(
      () => this.#releaseSlot(),
      (error: unknown) => {
        this.settings.logger.error('signal handler failed', { name, error });
        this.#releaseSlot();
      },
    );
  }

  #release(key: number | string, entry: RunningRequest): void {
    // Out of the running requests, wherever it is among those with its id (see `shadowed`).
    const running = this.#running!;
    let later = running.get(key);
    if (later === entry) {
      if (entry.shadowed === undefined) running.delete(key);
      else running.set(key, entry.shadowed);
    } else {
      while (later !== undefined && later.shadowed !== entry) later = later.shadowed;
      if (later !== undefined) later.shadowed = entry.shadowed;
    }
    this.#inflightRequests--;
    this.#releaseSlot();
  }

  #releaseSlot(): void {
    this.#active--;
    if (this.#state === 'closed') return;
    // A closing connection starts no new handler: its reply could not be sent. `finish` drops
    // what still waits.
    while (this.#state === 'open' && this.#active < this.settings.concurrency && this.#queue.length > 0) {
      const next = this.#queue.shift()!;
      this.#queuedBytes -= (next as { payload: Payload }).payload.data.length;
      this.#run(next);
    }
    this.#updateReading();
    if (!this.busy) this.becameIdle();
  }

  #reply(id: RequestIdInput, value: ReplyValue): void {
    if (this.#state === 'closed') return;
    let bytes: OutgoingMessage;
    try {
      bytes = outgoingReply(this.socket, id, toPayload(value));
    } catch (error) {
      // An illegal reply (odd UTF-16, ...) must not become an empty frame, as in the reference.
      this.settings.logger.error('request handler returned an invalid reply', { error });
      bytes = encodeSpecialReply(id, 'internal-error');
    }
    this.sendRaw(bytes);
  }

  #replyError(id: RequestIdInput, name: string, error: unknown): void {
    if (this.#state === 'closed') return;
    let bytes: Uint8Array | undefined;
    if (error instanceof RequestError) {
      try {
        bytes = encodeReplyError(id, error.code, error.message);
      } catch (invalid) {
        this.settings.logger.error('request handler threw an invalid RequestError code', {
          name,
          error: invalid,
        });
      }
    } else {
      // Anything but a RequestError stays on this side: logged, answered with type 2.
      this.settings.logger.error('request handler failed', { name, error });
    }
    this.sendRaw(bytes ?? encodeSpecialReply(id, 'internal-error'));
  }

  #cancelInbound(id: RequestId): void {
    const key = inboundKey(id);
    let entry = this.#running?.get(key);
    if (entry === undefined) {
      this.#dropQueuedRequest(key);
      return;
    }
    // Every running request with this id: the requester cannot tell them apart either.
    for (; entry !== undefined; entry = entry.shadowed) {
      if (entry.canceled) continue;
      entry.canceled = true;
      entry.abort(new CanceledError('canceled by the requester'));
    }
  }

  /** A request canceled before its handler started never runs. */
  #dropQueuedRequest(key: number | string): void {
    const index = this.#queue.findIndex((m) => m.kind === 'request' && inboundKey(m.id) === key);
    if (index < 0) return;
    const [dropped] = this.#queue.splice(index, 1) as [Message & { payload: Payload }];
    this.#queuedBytes -= dropped.payload.data.length;
    this.#inflightRequests--;
    this.#updateReading();
    if (!this.busy) this.becameIdle();
  }

  /**
   * Milliseconds without a sign of life from the peer, as the read timeouts judge it (the server's
   * `readTimeout`, the client's `serverTimeout`). While reading is stopped for this end's own
   * backlog (handlers busy), whatever the peer sends waits unread, heartbeats and pongs included:
   * the silence is not the peer's, and the clock starts over once reading does. While it is
   * stopped because the peer does not take what is sent to it, the clock runs: a drain is then
   * the sign of life, and a peer that vanished must still be found.
   */
  silence(now: number): number {
    if (this.#readingPaused && !this.#sendBlocked) return 0;
    return now - this.lastReceivedAt;
  }

  #updateReading(): void {
    if (this.#state === 'closed') return;
    // Once closing, keep reading: the peer's close frame must get through for the closing
    // handshake to complete (what else arrives is ignored by `receive`).
    // Reading stops once a backlog has built up behind busy handlers, not at the first waiting
    // message: replies and cancels must still get through, or a handler awaiting a request to the
    // same peer (or a cancel for itself) would deadlock behind the message that waits for its slot.
    const backlog = this.#queue.length >= QUEUE_HIGH_WATER_COUNT || this.#queuedBytes >= QUEUE_HIGH_WATER_BYTES;
    const pause = this.#state === 'open' && (backlog || this.#sendBlocked);
    if (pause !== this.#readingPaused) {
      this.#readingPaused = pause;
      if (pause) {
        this.socket.pause();
      } else {
        // Reading again, after our backlog cleared or the peer took what we sent (a drain): the
        // peer's silence counts from now (see `silence`).
        this.lastReceivedAt = performance.now();
        this.socket.resume();
      }
    }
  }

  // ---------------------------------------------------------------- sending

  /**
   * Sends one encoded message. A send that leaves more than `maxBufferedBytes` queued for a slow
   * peer closes the connection (1008): memory stays bounded whatever the peer does.
   */
  sendRaw(message: OutgoingMessage): SendResult {
    if (this.#state === 'closed') return 'dropped';
    const result = sendOutgoing(this.socket, message);
    this.lastSentAt = performance.now();
    if (result === 'backpressure') {
      if (this.socket.bufferedAmount > this.settings.maxBufferedBytes) {
        this.close(CLOSE_POLICY_VIOLATION, 'send buffer limit exceeded');
        return 'dropped';
      }
      if (!this.#sendBlocked) {
        // Stop reading new work from a peer that does not read what we send it.
        this.#sendBlocked = true;
        this.#updateReading();
      }
    }
    return result;
  }

  /** A request encoded for this socket: its payload not copied when large (outgoing.ts). */
  encodeRequest(id: number, name: string, payload: Payload): OutgoingMessage {
    return outgoingRequest(this.socket, id, name, payload);
  }

  /** Sends a signal. Returns false when the connection is not open (nothing was sent). */
  signal(name: string, payload: Payload): boolean {
    return this.sendSignal(outgoingSignal(this.socket, name, payload));
  }

  /** Sends an encoded signal (one encoding may serve many connections: `Server.broadcast`). */
  sendSignal(bytes: OutgoingMessage): boolean {
    if (this.#state !== 'open') return false;
    return this.sendRaw(bytes) !== 'dropped';
  }

  /**
   * Sends a request built by `build(id)` and waits for its reply. Used for application requests
   * and for the session requests of the client. Settles exactly once.
   *
   * `onReply` (internal, for the client's session requests) is called with a successful reply
   * as it is read, before the messages read after it: whoever awaits the promise runs only after
   * those (ws delivers all the messages of one read at once), too late for state that the next
   * message may change, such as the session a restore reply carries. It must not throw.
   */
  request(
    name: string,
    build: (id: number) => OutgoingMessage,
    options: RequestOptions = {},
    onReply?: (payload: Payload) => void,
  ): Promise<Payload> {
    if (this.#state !== 'open') {
      return Promise.reject(new DisconnectedError('the connection is closed', { closeCode: this.#closeCode }));
    }
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(new CanceledError(`request ${quote(name)} was aborted`));
    const timeout = options.timeout ?? 0;
    try {
      checkInteger('timeout', timeout, 0, MAX_TIMER_DELAY);
    } catch (error) {
      return Promise.reject(error);
    }
    const id = this.#nextId++;
    let bytes: OutgoingMessage;
    try {
      bytes = build(id);
    } catch (error) {
      return Promise.reject(error);
    }
    // `bytes` is sent from here, not from inside a closure: a variable any closure uses lives in
    // the function's context, which the pending request keeps (its promise executor) until it
    // settles, and with it the whole message, payload included, long after it was written.
    let entry!: PendingRequest;
    const reply = new Promise<Payload>((resolve, reject) => {
      entry = { resolve, onReply, reject, name, timeout, signal };
    });
    this.#pending ??= new Map();
    this.#pending.set(id, entry);
    if (timeout > 0) {
      this.#deadlines ??= new Deadlines((expired) => this.#timedOut(expired));
      this.#deadlines.add(id, timeout, performance.now());
    }
    if (signal !== undefined) {
      this.#aborts ??= new AbortGroups((aborted, by) => this.#aborted(aborted, by));
      this.#aborts.add(signal, id);
    }
    if (this.sendRaw(bytes) === 'dropped' && this.#takePending(id) !== undefined) {
      entry.reject(new DisconnectedError(`request ${quote(name)} not sent: the connection is closed`));
    }
    return reply;
  }

  #timedOut(id: number): void {
    const entry = this.#takePending(id);
    if (entry === undefined) return;
    this.#sendCancel(id);
    entry.reject(new TimeoutError(`request ${quote(entry.name)} got no reply within ${entry.timeout} ms`));
  }

  #aborted(id: number, signal: AbortSignalLike): void {
    const entry = this.#takePending(id);
    if (entry === undefined) return;
    this.#sendCancel(id);
    entry.reject(new CanceledError(`request ${quote(entry.name)} was aborted`, { cause: signal.reason }));
  }

  #sendCancel(id: number): void {
    if (this.v21 && this.#state === 'open') this.sendRaw(encodeCancel(id));
  }

  /** Removes a pending request and releases its deadline and its place under its signal. */
  #takePending(id: number): PendingRequest | undefined {
    const entry = this.#pending?.get(id);
    if (entry === undefined) return undefined;
    this.#pending!.delete(id);
    if (entry.timeout > 0) this.#deadlines?.delete(id, entry.timeout);
    if (entry.signal !== undefined) this.#aborts?.delete(entry.signal, id);
    return entry;
  }

  /**
   * The pending request a reply answers, taken out of the map; undefined for a reply to nothing
   * we wait for (late after a timeout or cancel), which is ignored. No closure per reply: hot path.
   */
  #answered(id: RequestId): PendingRequest | undefined {
    const n = idToNumber(id);
    return n < 0 ? undefined : this.#takePending(n);
  }

  // ---------------------------------------------------------------- lifecycle

  /**
   * Called when no handler runs or waits any more, and once the connection closed. Nothing to do
   * here: the server's face (`ServerPeer`) waits on it for a graceful shutdown.
   */
  protected becameIdle(): void {}

  /** Aborts the signals of every running handler (the connection closed, or shutdown timed out). */
  abortHandlers(reason: Error): void {
    for (const newest of this.#running?.values() ?? []) {
      for (let entry: RunningRequest | undefined = newest; entry !== undefined; entry = entry.shadowed)
        entry.abort(reason);
    }
  }

  /**
   * Starts the closing handshake. Pending requests are rejected once the socket reports the close;
   * a peer that does not complete the handshake within `CLOSE_GRACE` ms is dropped. `code` must
   * be one a close frame may carry: the owners check a code given by their caller first
   * (`conn.close()`, `client.close()`), as the transport throws for another one only after the
   * engine is marked closing, which would then never close.
   */
  close(code: number, reason: string): void {
    if (this.#state !== 'open') return;
    this.#state = 'closing';
    this.#closeCode = code;
    this.#closeReason = reason;
    this.socket.close(code, reason);
    this.#updateReading();
    this.#graceTimer = setTimeout(() => this.socket.terminate(), CLOSE_GRACE);
    (this.#graceTimer as { unref?: () => void }).unref?.();
  }

  /** Drops the connection at once. */
  terminate(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closing';
    this.socket.terminate();
  }

  /** The transport reported the close: settle everything. Runs once. */
  #finish(code: number, reason: string): void {
    if (this.#state === 'closed') return;
    if (code === CLOSE_ABNORMAL && this.#state === 'closing' && this.#closeCode !== 0) {
      // We closed and the peer never completed the handshake (a slow consumer, CLOSE_GRACE ran
      // out): the connection still ended for the reason we gave, not for an unknown one. Any
      // other code is what the transport saw on the wire: when the peer's close crossed ours, our
      // close() sent nothing, and the peer's code is the one that counts.
      code = this.#closeCode;
      reason = this.#closeReason;
    }
    this.#state = 'closed';
    this.#closeCode = code;
    clearTimeout(this.#graceTimer);
    const error = new DisconnectedError(
      reason ? `the connection closed (${code}: ${reason})` : `the connection closed (${code})`,
      { closeCode: code },
    );
    const pending = [...(this.#pending?.keys() ?? [])];
    for (const id of pending) this.#takePending(id)?.reject(error);
    this.#deadlines?.clear();
    this.abortHandlers(error);
    this.#running?.clear();
    // Waiting messages have nobody left to answer to.
    this.#inflightRequests -= this.#queue.filter((m) => m.kind === 'request').length;
    this.#queue.length = 0;
    this.#queuedBytes = 0;
    this.becameIdle();
    this.#hooks.closed(code, reason);
  }
}

/** Runs `fn` and always returns a promise, turning a synchronous throw into a rejection. */
function callAsync<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (error) {
    return Promise.reject(error);
  }
}

function replyErrorToError(message: ReplyErrorMessage): Error {
  return new RequestError(message.code, message.message);
}

function quote(name: string): string {
  return JSON.stringify(name);
}

function specialReplyToError(message: SpecialReplyMessage, name: string): Error {
  switch (message.reason) {
    case 'shutdown':
      return new ShutdownError(`request ${quote(name)} refused: the peer shuts down`);
    case 'internal-error':
      return new InternalError(`request ${quote(name)} failed on the peer`);
    case 'session-not-found':
      return new SessionNotFoundError('no session with that key');
    case 'max-session-connections':
      return new MaxSessionConnectionsError('the session has its maximum of connections');
    case 'sessions-disabled':
      return new SessionsDisabledError('sessions disabled on the server');
  }
}
