/**
 * Where the proxy writes a response: a Node `ServerResponse` for ordinary requests, or the raw
 * socket of an upgrade request (WebSocket passthrough), behind one small interface so the
 * exchange logic is the same for both. `write` tells when the user's socket is full, which is
 * when the proxy holds the agent's ack back: backpressure from the user to the target.
 */
import { type ServerResponse, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { errorBody, TUNNEL_ERROR_STATUS, type TunnelErrorCode } from './http-errors.ts';
import { headersAreSafe } from './headers.ts';
import { bodyArrived, DEFAULT_LINGER_TIMEOUT, lingerAfter, lingerRaw } from './linger.ts';

export interface Sink {
  readonly headSent: boolean;
  /** The response was ended or destroyed. */
  readonly done: boolean;
  /**
   * Writes the status and headers; `closeConnection` ends the connection after this response (a
   * peer's 413 to a body still arriving). Throws when they are invalid (nothing is written then).
   */
  head(status: number, headers: readonly string[], closeConnection?: boolean): void;
  /** Writes body bytes; returns a promise when the user's socket is full (settles on drain or close). */
  write(data: Uint8Array): Promise<void> | undefined;
  /** Ends the response, after `data` when given (one write for a whole small body). */
  end(data?: Uint8Array): void;
  destroy(): void;
  /** An error answer when no head went out yet; otherwise the response is cut off. */
  fail(code: TunnelErrorCode, closeConnection?: boolean): void;
  /** `listener` runs once if the user goes away before the response ended. */
  onGone(listener: () => void): void;
}

/**
 * Answers `code` when no head went out yet and returns its status; otherwise cuts the response
 * off (the user sees a broken response, never a second head) and returns undefined.
 */
export function answerOrCut(sink: Sink, code: TunnelErrorCode): number | undefined {
  if (sink.headSent) {
    sink.destroy();
    return undefined;
  }
  sink.fail(code);
  return TUNNEL_ERROR_STATUS[code];
}

export function jsonHeaders(body: string, close: boolean): string[] {
  const headers = [
    'Content-Type',
    'application/json; charset=utf-8',
    'Content-Length',
    String(Buffer.byteLength(body)),
    'Cache-Control',
    'no-store',
  ];
  if (close) headers.push('Connection', 'close');
  return headers;
}

/**
 * A ServerResponse as a sink. A head that goes out before the request body arrived says
 * `Connection: close`, and the connection lingers after it (see linger.ts): kept alive, it would
 * have Node read the rest of the body for as long as the user sends it.
 */
export class ResponseSink implements Sink {
  private readonly res: ServerResponse;
  private readonly lingerTimeout: number;
  private drainPromise: Promise<void> | undefined;
  private ended = false;
  /** Adds `Connection: close` to the head (draining proxy). */
  closeConnection = false;

  constructor(res: ServerResponse, lingerTimeout = DEFAULT_LINGER_TIMEOUT) {
    this.res = res;
    this.lingerTimeout = lingerTimeout;
  }

  get headSent(): boolean {
    return this.res.headersSent;
  }

  get done(): boolean {
    return this.ended || this.res.destroyed;
  }

  head(status: number, headers: readonly string[], closeConnection = false): void {
    if (status < 200 || status > 999 || !headersAreSafe(headers)) throw new RangeError('invalid response head');
    const close = this.closes(closeConnection);
    this.res.writeHead(status, close ? [...headers, 'Connection', 'close'] : (headers as string[]));
    if (close) lingerAfter(this.res, this.lingerTimeout);
  }

  /** Whether the head about to go out closes the connection. */
  private closes(asked: boolean): boolean {
    return asked || this.closeConnection || !bodyArrived(this.res.req);
  }

  write(data: Uint8Array): Promise<void> | undefined {
    if (this.done || data.length === 0) return undefined;
    if (this.res.write(data)) return undefined;
    this.drainPromise ??= new Promise<void>((resolve) => {
      const done = (): void => {
        this.res.off('drain', done);
        this.res.off('close', done);
        this.drainPromise = undefined;
        resolve();
      };
      this.res.on('drain', done);
      this.res.on('close', done);
    });
    return this.drainPromise;
  }

  end(data?: Uint8Array): void {
    if (this.done) return;
    this.ended = true;
    if (data === undefined || data.length === 0) this.res.end();
    else this.res.end(data);
  }

  destroy(): void {
    this.ended = true;
    this.res.destroy();
  }

  fail(code: TunnelErrorCode, closeConnection = false): void {
    if (this.done) return;
    if (this.res.headersSent) {
      this.destroy();
      return;
    }
    const body = errorBody(code);
    const close = this.closes(closeConnection);
    this.ended = true;
    this.res.writeHead(TUNNEL_ERROR_STATUS[code], [...jsonHeaders(body, close), ...this.errorHeaders(code)]);
    if (close) lingerAfter(this.res, this.lingerTimeout);
    this.res.end(body);
  }

  /** Extra headers of an error answer (none here; a peer's sink marks its misses). */
  protected errorHeaders(_code: TunnelErrorCode): readonly string[] {
    return [];
  }

  onGone(listener: () => void): void {
    this.res.once('close', () => {
      if (!this.res.writableFinished) listener();
    });
  }
}

/**
 * Writes a whole HTTP/1.1 error response on a raw socket and closes it: at the user's FIN, or
 * `lingerTimeout` ms after the answer left (`lingerRaw`).
 */
export function writeRawError(
  socket: Duplex,
  code: TunnelErrorCode,
  lingerTimeout: number,
  extraHeaders: readonly string[] = [],
): void {
  const body = errorBody(code);
  const status = TUNNEL_ERROR_STATUS[code];
  writeRawHead(socket, status, [...jsonHeaders(body, true), ...extraHeaders]);
  lingerRaw(socket, lingerTimeout, body);
}

function writeRawHead(socket: Duplex, status: number, headers: readonly string[]): void {
  let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`;
  for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  socket.write(Buffer.from(`${head}\r\n`, 'latin1'));
}

/** The raw socket of an upgrade request as a sink: after a 101 the body is the other protocol's bytes. */
export class SocketSink implements Sink {
  private readonly socket: Duplex;
  private readonly lingerTimeout: number;
  private sent = false;
  /** The head was a 101: the socket goes on in the other direction after this side ends. */
  private switched = false;
  private ended = false;
  private drainPromise: Promise<void> | undefined;

  /** `lingerTimeout`: how long a socket answered without a switch is read after the answer (`lingerRaw`). */
  constructor(socket: Duplex, lingerTimeout: number) {
    this.socket = socket;
    this.lingerTimeout = lingerTimeout;
  }

  get headSent(): boolean {
    return this.sent;
  }

  get done(): boolean {
    return this.ended || this.socket.destroyed;
  }

  /** Anything but a switch closes the connection after it, asked or not. */
  head(status: number, headers: readonly string[], _closeConnection?: boolean): void {
    if (status < 101 || status > 999 || (status > 101 && status < 200) || !headersAreSafe(headers)) {
      throw new RangeError('invalid response head');
    }
    this.sent = true;
    this.switched = status === 101;
    // Anything but a switch ends the connection after the body: it is delimited by the close.
    writeRawHead(this.socket, status, status === 101 ? headers : [...headers, 'Connection', 'close']);
  }

  write(data: Uint8Array): Promise<void> | undefined {
    if (this.done || data.length === 0) return undefined;
    if (this.socket.write(data)) return undefined;
    this.drainPromise ??= new Promise<void>((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        this.drainPromise = undefined;
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
    return this.drainPromise;
  }

  end(data?: Uint8Array): void {
    if (this.done) return;
    this.ended = true;
    const last = data === undefined || data.length === 0 ? undefined : data;
    // After a switch the user's side goes on (the exchange reads it until the user ends it).
    if (!this.switched) lingerRaw(this.socket, this.lingerTimeout, last);
    else if (last === undefined) this.socket.end();
    else this.socket.end(last);
  }

  destroy(): void {
    this.ended = true;
    this.socket.destroy();
  }

  fail(code: TunnelErrorCode): void {
    if (this.done) return;
    if (this.sent) {
      this.destroy();
      return;
    }
    this.sent = true;
    this.ended = true;
    writeRawError(this.socket, code, this.lingerTimeout, this.errorHeaders(code));
  }

  /** Extra headers of an error answer (none here; a peer's sink marks its misses). */
  protected errorHeaders(_code: TunnelErrorCode): readonly string[] {
    return [];
  }

  onGone(listener: () => void): void {
    this.socket.once('close', () => {
      if (!this.ended) listener();
    });
  }
}
