/**
 * The agent's half of a response: sends the head and body chunks to the proxy with credit (one
 * window per stream, one per connection) and waits for the proxy's acks, which come once the
 * user's socket took the bytes. A small complete response skips all of it and travels inside the
 * reply to `tunnel.http`: one message for the whole exchange.
 */
import { type AbortSignalLike, binary, type Client } from '../../index.ts';
import { acquireBoth, CreditWindow, messageCost, tryAcquireBoth } from './flow.ts';
import { errorBody, TUNNEL_ERROR_STATUS, type TunnelErrorCode } from './http-errors.ts';
import { chunkName, encodeResponseHead, type HttpReply, MSG_CHUNK, MSG_HEAD } from './wire.ts';

/**
 * The agent's own answer to a request it refuses to perform (the user's error, such as a path
 * that would leave the target's base path): the proxy's JSON error body, as one inline reply.
 */
export function errorReply(code: TunnelErrorCode): HttpReply {
  const data = new TextEncoder().encode(errorBody(code));
  const headers = [
    'Content-Type',
    'application/json; charset=utf-8',
    'Content-Length',
    String(data.length),
    'Cache-Control',
    'no-store',
  ];
  return { kind: 'inline', status: TUNNEL_ERROR_STATUS[code], headers, data };
}

/** Responses up to this size (complete within one turn of the event loop) go inline. */
export const INLINE_RESPONSE_LIMIT = 64 * 1024;

export class ResponseSender {
  private readonly client: Client;
  private readonly sid: string;
  private readonly signal: AbortSignalLike;
  private readonly stream: CreditWindow;
  private readonly connection: CreditWindow;
  private readonly chunkSize: number;
  private seq = 0;
  private unacked = 0;
  private failure: unknown;
  private waiters: Array<() => void> = [];

  constructor(
    client: Client,
    sid: string,
    signal: AbortSignalLike,
    connection: CreditWindow,
    streamWindow: number,
    chunkSize: number,
  ) {
    this.client = client;
    this.sid = sid;
    this.signal = signal;
    this.stream = new CreditWindow(streamWindow);
    this.connection = connection;
    this.chunkSize = chunkSize;
  }

  /** Takes the credit of a message carrying `bytes`; returns its cost, to give back on the ack. */
  private async credit(bytes: number): Promise<number> {
    const n = messageCost(bytes);
    if (this.failure !== undefined) throw this.failure;
    if (!tryAcquireBoth(this.stream, this.connection, n))
      await acquireBoth(this.stream, this.connection, n, this.signal);
    return n;
  }

  private send(name: string, payload: Parameters<Client['request']>[1], n: number): void {
    this.unacked++;
    this.client.request(name, payload, { signal: this.signal, timeout: 0 }).then(
      () => this.acked(n),
      (error: unknown) => {
        this.failure ??= error;
        this.acked(n);
      },
    );
  }

  private acked(n: number): void {
    this.stream.release(n);
    this.connection.release(n);
    this.unacked--;
    if (this.unacked === 0) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  async head(status: number, headers: readonly string[], data?: Uint8Array): Promise<void> {
    const bytes = data?.length ?? 0;
    const cost = await this.credit(bytes);
    this.send(
      MSG_HEAD,
      encodeResponseHead({ sid: this.sid, status, headers, ...(data !== undefined && bytes > 0 ? { data } : {}) }),
      cost,
    );
  }

  async chunk(data: Uint8Array): Promise<void> {
    for (let at = 0; at < data.length; at += this.chunkSize) {
      const piece = data.length <= this.chunkSize ? data : data.subarray(at, at + this.chunkSize);
      const cost = await this.credit(piece.length);
      this.send(chunkName(MSG_CHUNK, this.sid, this.seq++, false), binary(piece), cost);
    }
  }

  /**
   * Sends `data` at once when there is credit for all of it (no promise: the hot path of a
   * stream whose consumer keeps up), else as `chunk` does, resolving once it is sent.
   */
  chunkNow(data: Uint8Array): Promise<void> | undefined {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (data.length > this.chunkSize) return this.chunk(data);
    const cost = messageCost(data.length);
    if (!tryAcquireBoth(this.stream, this.connection, cost)) return this.chunk(data);
    this.send(chunkName(MSG_CHUNK, this.sid, this.seq++, false), binary(data), cost);
    return undefined;
  }

  async fin(): Promise<void> {
    const cost = await this.credit(0);
    this.send(chunkName(MSG_CHUNK, this.sid, this.seq++, true), binary(EMPTY), cost);
  }

  /** Resolves once every message was acked; rejects with the first failure. */
  async settled(): Promise<void> {
    if (this.unacked > 0) await new Promise<void>((resolve) => this.waiters.push(resolve));
    if (this.failure !== undefined) throw this.failure;
  }
}

const EMPTY = new Uint8Array(0);

function concat(parts: Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * A response as its bytes come (pushed by the target's client, or pulled from a handler's body
 * and pushed here): inline when it is complete and small by the end of the turn its head came in
 * (or, with a Content-Length within the limit, once complete), else as head + chunks, in order.
 */
export class ResponseRelay {
  private readonly sender: () => ResponseSender;
  private readonly status: number;
  private readonly headers: readonly string[];
  private collected: Uint8Array[] = [];
  private size = 0;
  private out: ResponseSender | undefined;
  /** The last send, in order; never rejects (a failure is kept in `failure`). */
  private tail: Promise<void> = Promise.resolve();
  /** Sends that wait for credit: what comes next queues behind them. */
  private waiting = 0;
  private failed = false;
  private failure: unknown;
  private tick: ReturnType<typeof setImmediate> | undefined;
  private ended = false;

  /** `knownLength` is the response's Content-Length, when it has one. */
  constructor(sender: () => ResponseSender, status: number, headers: readonly string[], knownLength?: number) {
    this.sender = sender;
    this.status = status;
    this.headers = headers;
    // Past this turn, the rest may take any time (server-sent events): the head goes then.
    if (knownLength === undefined || knownLength > INLINE_RESPONSE_LIMIT) {
      this.tick = setImmediate(() => {
        this.tick = undefined;
        if (!this.ended && this.out === undefined) this.stream()?.catch(() => {});
      });
    }
  }

  /**
   * Body bytes. Returns a promise when the caller should wait before giving more (the proxy has
   * no credit for them yet); it rejects when the stream failed (the proxy canceled it).
   */
  data(chunk: Uint8Array): Promise<void> | undefined {
    if (chunk.length === 0) return undefined;
    const out = this.out;
    if (out !== undefined) return this.queue(() => out.chunkNow(chunk));
    this.collected.push(chunk);
    this.size += chunk.length;
    return this.size <= INLINE_RESPONSE_LIMIT ? undefined : this.stream();
  }

  /** The whole body came: the reply to `tunnel.http` (inline, or done once everything was acked). */
  async end(): Promise<HttpReply> {
    this.abandon();
    const out = this.out;
    if (out === undefined) {
      return { kind: 'inline', status: this.status, headers: this.headers, data: concat(this.collected, this.size) };
    }
    await this.tail;
    if (this.failed) throw this.failure;
    await out.fin();
    await out.settled();
    return { kind: 'done' };
  }

  /** No more body will come (the exchange ended or failed): the turn's timer stops. */
  abandon(): void {
    this.ended = true;
    if (this.tick !== undefined) clearImmediate(this.tick);
    this.tick = undefined;
  }

  /** Switches to head + chunks: the head carries what came so far, up to the inline limit. */
  private stream(): Promise<void> | undefined {
    const out = this.sender();
    this.out = out;
    const data = concat(this.collected, this.size);
    this.collected = [];
    // One piece of a handler's body can be any size: the rest goes in chunks (a message must stay
    // far below 1 MiB).
    const head = data.length <= INLINE_RESPONSE_LIMIT ? data : data.subarray(0, INLINE_RESPONSE_LIMIT);
    this.queue(() => out.head(this.status, this.headers, head))?.catch(() => {});
    if (data.length <= INLINE_RESPONSE_LIMIT) return this.waiting > 0 ? this.tail : undefined;
    return this.queue(() => out.chunk(data.subarray(INLINE_RESPONSE_LIMIT)));
  }

  /** Runs `send` now when nothing waits before it, else after what waits; in order either way. */
  private queue(send: () => Promise<void> | undefined): Promise<void> | undefined {
    if (this.failed) return Promise.reject(this.failure);
    const sending = this.waiting === 0 ? send() : this.tail.then(() => (this.failed ? undefined : send()));
    if (sending === undefined) return undefined;
    this.waiting++;
    const done = sending.then(
      () => {
        this.waiting--;
      },
      (error: unknown) => {
        this.waiting--;
        if (!this.failed) {
          this.failed = true;
          this.failure = error;
        }
        throw error;
      },
    );
    this.tail = done.catch(() => {});
    return done;
  }
}

/** Relays a body pulled from `body` (a handler's stream) through a {@link ResponseRelay}. */
export async function relayResponse(
  sender: () => ResponseSender,
  status: number,
  headers: readonly string[],
  body: AsyncIterator<Uint8Array> | undefined,
  knownLength: number | undefined,
): Promise<HttpReply> {
  const relay = new ResponseRelay(sender, status, headers, knownLength);
  try {
    if (body !== undefined) {
      for (;;) {
        const result = await body.next();
        if (result.done) break;
        const wait = relay.data(result.value);
        if (wait !== undefined) await wait;
      }
    }
  } catch (error) {
    relay.abandon();
    throw error;
  }
  return relay.end();
}

/** Streams the rest of `body` (its next result already asked for) and the final chunk. */
export async function streamRest(
  out: ResponseSender,
  body: AsyncIterator<Uint8Array>,
  pending: Promise<IteratorResult<Uint8Array>>,
): Promise<void> {
  for (;;) {
    const result = await pending;
    if (result.done) break;
    await out.chunk(result.value);
    pending = body.next();
  }
  await out.fin();
  await out.settled();
}
