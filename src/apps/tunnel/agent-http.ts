/**
 * One exchange against an HTTP target (a URL, or the agent's private socket in front of an
 * in-process Node handler): the request goes out with Node's `http.request`, byte-exact path and
 * ordered raw headers; the response (or, after a 101, the raw socket) comes back through the relay.
 */
import { type Agent as HttpAgent, type ClientRequest, type IncomingMessage, request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import { RequestError } from '../../index.ts';
import { INLINE_RESPONSE_LIMIT, type ResponseSender, relayResponse, streamRest } from './agent-relay.ts';
import { filterHeaders, headerValues, setHeader } from './headers.ts';
import { AgentErrorCode, BodyMode, type HttpHead, type HttpReply } from './wire.ts';

/** Where an HTTP target is. */
export interface HttpTarget {
  readonly protocol: 'http:' | 'https:';
  /** Host and port, or a Unix socket / named pipe. */
  readonly hostname?: string;
  readonly port?: number;
  readonly socketPath?: string;
  /** Prefix of every path (the target URL's path without its trailing slash). */
  readonly basePath: string;
  /** The Host header when rewriting (`host[:port]`). */
  readonly host: string;
  readonly hostHeader: 'preserve' | 'rewrite';
  readonly agent: HttpAgent;
}

/** Errors of the target connection that mean "could not reach it". */
function unreachable(error: unknown): RequestError {
  const code = (error as { code?: unknown }).code;
  return new RequestError(AgentErrorCode.TargetUnreachable, typeof code === 'string' ? code : 'target unreachable');
}

export class HttpExchange {
  private readonly head: HttpHead;
  private readonly target: HttpTarget;
  private readonly signal: AbortSignal;
  private readonly sender: () => ResponseSender;
  private req: ClientRequest | undefined;
  private res: IncomingMessage | undefined;
  private socket: Socket | undefined;
  private expectSeq = 0;
  private drainPromise: Promise<void> | undefined;
  /** Upgrade: body pieces that arrived before the 101, and their acks. */
  private early: Array<{ data: Uint8Array; fin: boolean; ack: () => void }> = [];
  private bodyEnded = false;
  private onBodyEnded: (() => void) | undefined;

  constructor(head: HttpHead, target: HttpTarget, signal: AbortSignal, sender: () => ResponseSender) {
    this.head = head;
    this.target = target;
    this.signal = signal;
    this.sender = sender;
  }

  private requestHeaders(): string[] {
    const { head, target } = this;
    let headers = filterHeaders(head.headers, { upgrade: head.upgrade === true });
    const hasHost = headerValues(headers, 'host').length > 0;
    if (target.hostHeader === 'rewrite' || !hasHost) headers = setHeader(headers, 'Host', target.host);
    // The user's framing was hop-by-hop; the body is re-framed for this connection.
    if (head.body === BodyMode.Stream && !head.upgrade && headerValues(headers, 'content-length').length === 0) {
      headers.push('Transfer-Encoding', 'chunked');
    }
    return headers;
  }

  run(): Promise<HttpReply> {
    const { head, target, signal } = this;
    return new Promise<HttpReply>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const path = head.url === '*' ? target.basePath || '*' : target.basePath + head.url;
      const options = {
        method: head.method,
        path,
        headers: this.requestHeaders(),
        agent: target.agent,
        setHost: false,
        ...(target.socketPath === undefined
          ? { hostname: target.hostname, port: target.port }
          : { socketPath: target.socketPath }),
      };
      let req: ClientRequest;
      try {
        req = (target.protocol === 'https:' ? httpsRequest : httpRequest)(options as never);
      } catch (error) {
        // Invalid method, path or header: Node refused to build the request.
        reject(new RequestError(AgentErrorCode.BadMessage, (error as Error).message));
        return;
      }
      this.req = req;
      const onAbort = (): void => {
        req.destroy();
        this.res?.destroy();
        this.socket?.destroy();
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const done = (reply: HttpReply): void => {
        signal.removeEventListener('abort', onAbort);
        // The target answered before taking the whole body: the rest will never be wanted, and
        // acks waiting for its 'drain' are released by the close.
        if (head.body === BodyMode.Stream && !head.upgrade && !this.bodyEnded) req.destroy();
        resolve(reply);
      };
      const fail = (error: unknown): void => {
        signal.removeEventListener('abort', onAbort);
        req.destroy();
        this.res?.destroy();
        this.socket?.destroy();
        reject(signal.aborted ? signal.reason : error);
      };
      req.on('error', (error) => {
        if (this.res === undefined && this.socket === undefined) fail(unreachable(error));
      });
      req.on('response', (res: IncomingMessage) => {
        this.res = res;
        // An upgrade refused with an ordinary response: body pieces that wait are dropped.
        this.flushEarly(false);
        res.on('error', () => {});
        const cl = res.headers['content-length'];
        const known = cl === undefined ? undefined : Number(cl);
        const status = res.statusCode ?? 502;
        if (known !== undefined && known <= INLINE_RESPONSE_LIMIT) {
          // The common case, small and of known length: collected with plain events (no
          // async iterator) and sent back inside the reply, one message for the whole exchange.
          const parts: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            parts.push(chunk);
            size += chunk.length;
          });
          res.once('end', () =>
            done({
              kind: 'inline',
              status,
              headers: filterHeaders(res.rawHeaders),
              data: parts.length === 1 ? parts[0]! : Buffer.concat(parts, size),
            }),
          );
          res.once('close', () => {
            if (!res.complete)
              fail(new RequestError(AgentErrorCode.HandlerFailed, 'the target broke off the response'));
          });
          return;
        }
        relayResponse(
          this.sender,
          status,
          filterHeaders(res.rawHeaders),
          res[Symbol.asyncIterator](),
          Number.isFinite(known) ? known : undefined,
        ).then(done, (error: unknown) =>
          fail(
            error instanceof RequestError
              ? error
              : new RequestError(AgentErrorCode.HandlerFailed, 'the target broke off the response'),
          ),
        );
      });
      req.on('upgrade', (res: IncomingMessage, socket: Socket, upgradeHead: Buffer) => {
        this.res = res;
        this.socket = socket;
        socket.on('error', () => {});
        if (upgradeHead.length > 0) socket.unshift(upgradeHead);
        this.relayUpgrade(res, socket).then(done, fail);
      });
      if (head.body === BodyMode.Inline) req.end(head.data);
      else if (head.body === BodyMode.None || head.upgrade) req.end();
    });
  }

  private async relayUpgrade(res: IncomingMessage, socket: Socket): Promise<HttpReply> {
    const out = this.sender();
    await out.head(101, filterHeaders(res.rawHeaders, { upgrade: true }));
    this.flushEarly(true);
    const bodyEnded = new Promise<void>((resolve) => {
      if (this.bodyEnded) resolve();
      else this.onBodyEnded = resolve;
    });
    const body = socket[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
    try {
      await streamRest(out, body, body.next());
    } catch (error) {
      if (this.signal.aborted) throw error;
      // The target dropped the connection: what the user got so far is all there is.
    }
    // The user's direction ends on its own (its last chunk) or with the socket.
    await Promise.race([
      bodyEnded,
      new Promise<void>((resolve) => (socket.destroyed ? resolve() : socket.once('close', resolve))),
    ]);
    socket.destroy();
    return { kind: 'done' };
  }

  private flushEarly(write: boolean): void {
    const early = this.early;
    this.early = [];
    for (const piece of early) {
      if (write) {
        const pending = this.write(piece.data, piece.fin);
        if (pending === undefined) piece.ack();
        else pending.then(piece.ack);
      } else {
        piece.ack();
      }
    }
  }

  /** A piece of request body from the proxy; resolves (the ack) once the target took it. */
  body(seq: number, data: Uint8Array, fin: boolean): Promise<void> | undefined {
    if (seq !== this.expectSeq++) throw new RequestError(AgentErrorCode.BadMessage, 'body chunk out of order');
    if (this.head.upgrade && this.socket === undefined) {
      if (this.res !== undefined) return undefined;
      return new Promise<void>((ack) => this.early.push({ data, fin, ack }));
    }
    return this.write(data, fin);
  }

  private write(data: Uint8Array, fin: boolean): Promise<void> | undefined {
    const stream = this.socket ?? this.req;
    if (fin) {
      this.bodyEnded = true;
      this.onBodyEnded?.();
    }
    if (stream === undefined || stream.destroyed || stream.writableEnded) return undefined;
    const room = data.length === 0 ? true : stream.write(data);
    if (fin) stream.end();
    if (room) return undefined;
    this.drainPromise ??= new Promise<void>((resolve) => {
      const done = (): void => {
        stream.off('drain', done);
        stream.off('close', done);
        this.drainPromise = undefined;
        resolve();
      };
      stream.on('drain', done);
      stream.on('close', done);
    });
    return this.drainPromise;
  }
}
