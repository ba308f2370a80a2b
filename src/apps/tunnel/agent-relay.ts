/**
 * The agent's half of a response: sends the head and body chunks to the proxy with credit (one
 * window per stream, one per connection) and waits for the proxy's acks, which come once the
 * user's socket took the bytes. A small complete response skips all of it and travels inside the
 * reply to `tunnel.http`: one message for the whole exchange.
 */
import { binary, type Client } from '../../index.ts';
import { acquireBoth, CreditWindow, messageCost, tryAcquireBoth } from './flow.ts';
import { chunkName, encodeResponseHead, type HttpReply, MSG_CHUNK, MSG_HEAD } from './wire.ts';

/** Responses up to this size (complete within one turn of the event loop) go inline. */
export const INLINE_RESPONSE_LIMIT = 64 * 1024;

export class ResponseSender {
  private readonly client: Client;
  private readonly sid: string;
  private readonly signal: AbortSignal;
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
    signal: AbortSignal,
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
const TICK = Symbol('tick');

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
 * Relays a response: inline when it is complete and small by the end of the current turn of the
 * event loop (or, with a Content-Length within the limit, once complete), else as head + chunks.
 * `knownLength` is the response's Content-Length, when it has one.
 */
export async function relayResponse(
  sender: () => ResponseSender,
  status: number,
  headers: readonly string[],
  body: AsyncIterator<Uint8Array> | undefined,
  knownLength: number | undefined,
): Promise<HttpReply> {
  const collected: Uint8Array[] = [];
  let size = 0;
  let pending: Promise<IteratorResult<Uint8Array>> | undefined = body?.next();
  if (pending !== undefined && body !== undefined) {
    const waitAll = knownLength !== undefined && knownLength <= INLINE_RESPONSE_LIMIT;
    // Past this turn, the rest may take any time (server-sent events): send the head now.
    const tick = waitAll ? undefined : new Promise<typeof TICK>((resolve) => setImmediate(resolve, TICK));
    for (;;) {
      const result = tick === undefined ? await pending : await Promise.race([pending, tick]);
      if (result === TICK) break;
      if (result.done) {
        pending = undefined;
        break;
      }
      collected.push(result.value);
      size += result.value.length;
      pending = body.next();
      if (size > INLINE_RESPONSE_LIMIT) break;
    }
  }
  const data = concat(collected, size);
  if (pending === undefined) return { kind: 'inline', status, headers, data };
  const out = sender();
  // The head carries what is there, up to the inline limit; one piece of a fetch handler's body
  // can be any size, and the rest goes in chunks (a message must stay far below 1 MiB).
  await out.head(
    status,
    headers,
    data.length <= INLINE_RESPONSE_LIMIT ? data : data.subarray(0, INLINE_RESPONSE_LIMIT),
  );
  if (data.length > INLINE_RESPONSE_LIMIT) await out.chunk(data.subarray(INLINE_RESPONSE_LIMIT));
  await streamRest(out, body!, pending);
  return { kind: 'done' };
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
