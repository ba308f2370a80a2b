/**
 * The bridge's requests to the backend: one POST per event, signed, with a deadline, never
 * following a redirect (a 3xx is an answer like any other, and not a success), and reading at most
 * `maxBody` bytes of the answer.
 */
import { sign } from './signature.ts';

export type BridgeEvent = 'connect' | 'message' | 'close';

/** Headers of every event request. */
export const EVENT_HEADER = 'x-bridge-event';
export const CONNECTION_HEADER = 'x-bridge-connection';
export const CALLBACK_HEADER = 'x-bridge-callback';

export interface EventRequest {
  readonly event: BridgeEvent;
  readonly connection: string;
  /** The connection's callback URL (absent on connect: no connection exists yet). */
  readonly callback?: string | undefined;
  readonly body: Uint8Array;
  readonly contentType: string;
}

export interface BackendAnswer {
  readonly status: number;
  readonly contentType: string;
  /** `x-bridge-protocol` of an answer to `connect`: the subprotocol the client gets ('' for none). */
  readonly protocol: string;
  readonly body: Uint8Array;
}

/** Header of the answer to `connect` naming the subprotocol to accept the client with. */
export const PROTOCOL_HEADER = 'x-bridge-protocol';

/** Why an event did not get an answer. */
export class BackendError extends Error {
  override readonly name = 'BackendError';
  /**
   * `timeout`, `unreachable` (connection refused, DNS, reset), `too-large` (the answer), `aborted`
   * (the bridge stopped) or `left` (the client left before its `connect` was answered).
   */
  readonly reason: 'timeout' | 'unreachable' | 'too-large' | 'aborted' | 'left';

  constructor(reason: BackendError['reason'], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.reason = reason;
  }
}

export interface BackendOptions {
  readonly url: string;
  readonly secret: string;
  readonly timeout: number;
  readonly maxBody: number;
}

/**
 * Posts one event and reads the answer (any status). Rejects with BackendError. `stop` (the
 * bridge stops) and `left` (the client the event is for left) abort it.
 */
export async function postEvent(
  backend: BackendOptions,
  request: EventRequest,
  stop?: AbortSignal,
  left?: AbortSignal,
): Promise<BackendAnswer> {
  const headers: Record<string, string> = {
    'content-type': request.contentType,
    [EVENT_HEADER]: request.event,
    [CONNECTION_HEADER]: request.connection,
    'x-bridge-signature': sign(
      backend.secret,
      {
        domain: 'event',
        action: request.event,
        subject: request.connection,
        contentType: request.contentType,
        callback: request.callback,
      },
      request.body,
    ),
  };
  if (request.callback !== undefined) headers[CALLBACK_HEADER] = request.callback;
  // One controller per request, aborted by its own deadline or by `stop`, whose listener is removed
  // when the request ends. (Not AbortSignal.any([timeout, stop]): on Node 20 the long-lived `stop`
  // would keep a reference to every request's combined signal, ~50 bytes an event, for ever.)
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, backend.timeout);
  timer.unref();
  const onStop = (): void => controller.abort();
  stop?.addEventListener('abort', onStop, { once: true });
  left?.addEventListener('abort', onStop, { once: true });
  if (stop?.aborted || left?.aborted) controller.abort();
  const failure = (error: unknown, otherwise: BackendError): BackendError => {
    if (stop?.aborted) return new BackendError('aborted', 'the bridge stopped', { cause: error });
    if (left?.aborted) return new BackendError('left', 'the client left', { cause: error });
    if (timedOut) return new BackendError('timeout', `no answer within ${backend.timeout} ms`, { cause: error });
    return otherwise;
  };
  try {
    let response: Response;
    try {
      response = await fetch(backend.url, {
        method: 'POST',
        headers,
        body: request.body as Uint8Array<ArrayBuffer>,
        redirect: 'manual',
        signal: controller.signal,
      });
    } catch (error) {
      throw failure(error, new BackendError('unreachable', 'the backend cannot be reached', { cause: error }));
    }
    try {
      const body = await readCapped(response, backend.maxBody);
      return {
        status: response.status,
        contentType: response.headers.get('content-type') ?? '',
        protocol: response.headers.get(PROTOCOL_HEADER)?.trim() ?? '',
        body,
      };
    } catch (error) {
      if (error instanceof BackendError) throw error;
      throw failure(error, new BackendError('unreachable', 'the answer broke off', { cause: error }));
    }
  } finally {
    clearTimeout(timer);
    stop?.removeEventListener('abort', onStop);
    left?.removeEventListener('abort', onStop);
  }
}

/** The body of `response`, refused past `max` bytes (the rest is not read). */
async function readCapped(response: Response, max: number): Promise<Uint8Array> {
  const declared = Number(response.headers.get('content-length') ?? Number.NaN);
  if (declared > max) {
    await response.body?.cancel();
    throw new BackendError('too-large', `the answer is over ${max} bytes`);
  }
  if (response.body === null) return new Uint8Array(0);
  const parts: Uint8Array[] = [];
  let size = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel();
      throw new BackendError('too-large', `the answer is over ${max} bytes`);
    }
    parts.push(value);
  }
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}
