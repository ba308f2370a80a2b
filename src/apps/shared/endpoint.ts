/**
 * The HTTP side the WebSocket applications (bridge, wsproxy) share: a WebSocket endpoint on an
 * HTTP server of their own (`listen`) or on yours (`attach`), the operational endpoints
 * (`/healthz`, `/readyz`, `/metrics`), and the small helpers for answers and options.
 */
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { ServerTransport, ServerTransportHandlers, UpgradeDecision } from '../../../transports/types.ts';
import { wsTransport } from '../../../transports/ws.ts';

/** Where the operational endpoints are; `false` turns one off. */
export interface OpsPaths {
  /** 200 while the process serves. @default '/healthz' */
  readonly healthz?: string | false;
  /** 200 while serving, 503 once closing. @default '/readyz' */
  readonly readyz?: string | false;
  /** Prometheus metrics. @default '/metrics' */
  readonly metrics?: string | false;
}

export interface ResolvedOps {
  readonly healthz: string | false;
  readonly readyz: string | false;
  readonly metrics: string | false;
}

export function resolveOps(ops: OpsPaths = {}): ResolvedOps {
  return { healthz: ops.healthz ?? '/healthz', readyz: ops.readyz ?? '/readyz', metrics: ops.metrics ?? '/metrics' };
}

/** `value` (or `fallback`) when it is an integer in 1..2^31-1 (a timer's range), else RangeError. */
export function positiveInteger(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 1 || v > 2 ** 31 - 1) {
    throw new RangeError(`${name} must be an integer in 1..${2 ** 31 - 1}, got ${String(v)}`);
  }
  return v;
}

export function json(res: ServerResponse, status: number, body: object): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

export function refuse(status: number, body: string): UpgradeDecision {
  return { accept: false, status, body };
}

/** Resolves when `promise` settles or `ms` passed, whichever is first; the timer does not outlive it. */
export async function settleWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  try {
    await Promise.race([promise.then(noop, noop), late]);
  } finally {
    clearTimeout(timer);
  }
}

function noop(): void {}

export interface EndpointConfig {
  /** The application's name, for errors. */
  readonly name: string;
  /** Path of the WebSocket endpoint; undefined: every path. */
  readonly path: string | undefined;
  readonly maxMessageSize: number;
  /** What the application does with upgrades and connections. */
  readonly handlers: ServerTransportHandlers;
  readonly ops: ResolvedOps;
  readonly registry: Registry;
  /** False once the application is closing (`/readyz` answers 503). */
  readonly ready: () => boolean;
  /** The application's own HTTP requests (before the ops endpoints); true when it answered. */
  readonly requests?: (req: IncomingMessage, res: ServerResponse, path: string) => boolean;
}

/** A WebSocket endpoint on an HTTP server, with the operational endpoints. */
export class Endpoint {
  readonly #config: EndpointConfig;
  #http: HttpServer | HttpsServer | undefined;
  #owns = false;
  #transport: ServerTransport | undefined;

  constructor(config: EndpointConfig) {
    this.#config = config;
  }

  /** Creates an HTTP server, serves the endpoint and its requests on it, and listens. */
  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = createServer((req, res) => {
      if (!this.handleRequest(req, res)) json(res, 404, { code: 'NOT_FOUND', message: 'no such endpoint' });
    });
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    this.#owns = true;
    await this.attach(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return this.address()!;
  }

  /** Serves the WebSocket endpoint on `server` (on one of its own, every upgrade: 404/400 for others). */
  async attach(server: HttpServer | HttpsServer): Promise<void> {
    if (this.#transport !== undefined) throw new Error(`the ${this.#config.name} is already serving`);
    this.#http = server;
    const { path } = this.#config;
    const transport = wsTransport({ server, exclusive: this.#owns, ...(path === undefined ? {} : { path }) });
    this.#transport = transport;
    await transport.start(this.#config.handlers, { maxMessageSize: this.#config.maxMessageSize });
  }

  /** Where the server listens. */
  address(): { host: string; port: number } | null {
    const address = this.#http?.address() as AddressInfo | string | null | undefined;
    if (address === null || address === undefined || typeof address === 'string') return null;
    return { host: address.address, port: address.port };
  }

  /** True when serving on an HTTPS server. */
  get tls(): boolean {
    return typeof (this.#http as { setSecureContext?: unknown } | undefined)?.setSecureContext === 'function';
  }

  /** Answers the application's requests and the ops endpoints; false, untouched, for any other. */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (this.#config.requests?.(req, res, path) === true) return true;
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    const { ops, registry } = this.#config;
    if (path === ops.healthz) {
      json(res, 200, { status: 'ok' });
      return true;
    }
    if (path === ops.readyz) {
      if (this.#config.ready()) json(res, 200, { status: 'ready' });
      else json(res, 503, { status: 'closing' });
      return true;
    }
    if (path === ops.metrics) {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        () => json(res, 500, { code: 'METRICS_FAILED', message: 'metrics could not be collected' }),
      );
      return true;
    }
    return false;
  }

  /** Stops the transport (terminating what is left), then the server when it is ours. */
  async stop(): Promise<void> {
    await this.#transport?.stop();
    const server = this.#http;
    if (!this.#owns || server === undefined) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }
}
