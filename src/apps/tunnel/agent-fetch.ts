/**
 * One exchange against an in-process fetch-style handler, `(request: Request) => Response`:
 * no socket at all. The request body is a ReadableStream whose chunks are acked as the handler
 * reads them; the response body streams back through the relay.
 *
 * What the Fetch API cannot express is lost here: the URL is the WHATWG-parsed one (dot segments
 * resolved), header names are lower case, and upgrades are refused (501).
 */
import { type Logger, RequestError } from '../../index.ts';
import { errorReply, type ResponseSender, relayResponse } from './agent-relay.ts';
import { filterHeaders, headerValues } from './headers.ts';
import { TunnelErrorCode } from './http-errors.ts';
import { AgentErrorCode, BodyMode, type HttpHead, type HttpReply } from './wire.ts';

/**
 * A Host the request's URL can be built from (RFC 9110 §7.2: uri-host [":" port]): an IP literal
 * or a reg-name, which holds none of `/ ? # @ \`. Any of those would move the end of the URL's
 * authority: `Host: a/admin?` with `GET /public` would be `http://a/admin?/public`, and the handler
 * would serve /admin.
 */
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?$/;

/** A fetch-style handler (Deno, Bun, Hono, itty-router, ...). */
export type FetchHandler = (request: Request) => Response | Promise<Response>;

export class FetchExchange {
  private readonly head: HttpHead;
  private readonly handler: FetchHandler;
  private readonly signal: AbortSignal;
  private readonly sender: () => ResponseSender;
  private readonly logger: Logger;
  private expectSeq = 0;
  private controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  private pullWaiters: Array<() => void> = [];
  private bodyClosed = false;

  constructor(
    head: HttpHead,
    handler: FetchHandler,
    signal: AbortSignal,
    sender: () => ResponseSender,
    logger: Logger,
  ) {
    this.head = head;
    this.handler = handler;
    this.signal = signal;
    this.sender = sender;
    this.logger = logger;
  }

  private wakePull(): void {
    const waiters = this.pullWaiters;
    this.pullWaiters = [];
    for (const resolve of waiters) resolve();
  }

  async run(): Promise<HttpReply> {
    const { head, signal } = this;
    if (head.upgrade) throw new RequestError(AgentErrorCode.UpgradeUnsupported, 'a fetch handler cannot upgrade');
    signal.addEventListener('abort', () => this.wakePull(), { once: true });
    const headers = new Headers();
    const raw = filterHeaders(head.headers);
    for (let i = 0; i < raw.length; i += 2) {
      try {
        headers.append(raw[i]!, raw[i + 1]!);
      } catch {
        // A name or value the Fetch API refuses: not representable, left out.
      }
    }
    if (head.url !== '*' && !head.url.startsWith('/'))
      throw new RequestError(AgentErrorCode.BadMessage, 'the request target is not a path');
    // No Host, or an empty one (RFC 9112 §3.2: the authority is empty): `http:///x` would make
    // the path's first segment the host.
    const host = headerValues(raw, 'host')[0] || 'localhost';
    let url: URL;
    try {
      if (!HOST.test(host)) throw new TypeError('not a host');
      // `*` (OPTIONS) has no path the Fetch API could hold: the root.
      url = new URL(`http://${host}${head.url === '*' ? '/' : head.url}`);
    } catch {
      // RFC 9112 §3.2: a server answers an invalid Host with 400.
      return errorReply(TunnelErrorCode.BadRequest);
    }
    const hasBody = head.method !== 'GET' && head.method !== 'HEAD';
    let body: Uint8Array | ReadableStream<Uint8Array> | undefined;
    if (hasBody && head.body === BodyMode.Inline) body = head.data;
    if (hasBody && head.body === BodyMode.Stream) {
      body = new ReadableStream<Uint8Array>(
        {
          start: (controller) => {
            this.controller = controller;
          },
          pull: () => this.wakePull(),
          cancel: () => {
            this.bodyClosed = true;
            this.wakePull();
          },
        },
        { highWaterMark: 0 },
      );
    }
    let request: Request;
    try {
      request = new Request(url, {
        method: head.method,
        headers,
        signal,
        ...(body === undefined ? {} : { body, duplex: 'half' }),
      } as RequestInit);
    } catch (error) {
      throw new RequestError(AgentErrorCode.BadMessage, `not a valid Request: ${(error as Error).message}`);
    }
    let response: Response;
    try {
      response = await this.handler(request);
      if (!(response instanceof Response)) throw new TypeError('the handler did not return a Response');
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      this.logger.error('fetch handler failed', { error });
      throw new RequestError(AgentErrorCode.HandlerFailed, 'the handler failed');
    }
    const out: string[] = [];
    response.headers.forEach((value, name) => {
      if (name !== 'set-cookie') out.push(name, value);
    });
    for (const cookie of response.headers.getSetCookie()) out.push('set-cookie', cookie);
    const cl = response.headers.get('content-length');
    const known = cl === null ? undefined : Number(cl);
    const stream = response.body;
    const iterator =
      stream === null ? undefined : (stream as unknown as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
    const onAbort = (): void => {
      void iterator?.return?.();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      return await relayResponse(
        this.sender,
        response.status,
        filterHeaders(out),
        iterator,
        Number.isFinite(known) ? known : undefined,
      );
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      if (error instanceof RequestError) throw error;
      this.logger.error('fetch handler response body failed', { error });
      throw new RequestError(AgentErrorCode.HandlerFailed, 'the response body failed');
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** A piece of request body; resolves (the ack) once the handler asked for more. */
  body(seq: number, data: Uint8Array, fin: boolean): Promise<void> | undefined {
    if (seq !== this.expectSeq++) throw new RequestError(AgentErrorCode.BadMessage, 'body chunk out of order');
    const controller = this.controller;
    if (controller === undefined || this.bodyClosed) return undefined;
    try {
      if (data.length > 0) controller.enqueue(data);
      if (fin) {
        this.bodyClosed = true;
        controller.close();
        return undefined;
      }
    } catch {
      this.bodyClosed = true;
      return undefined;
    }
    if ((controller.desiredSize ?? 0) > 0) return undefined;
    if (this.signal.aborted) return undefined;
    return new Promise<void>((resolve) => this.pullWaiters.push(resolve));
  }
}
