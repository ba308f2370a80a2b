/**
 * What the fault scenarios share (not a test file): a real Server behind a FaultProxy on one
 * transport, clients dialing through the proxy, the application both ends run, and bookkeeping of
 * what each end saw (disconnects, handler aborts, library timers left behind).
 */
import { createHook } from 'node:async_hooks';
import type { TestContext } from 'node:test';
import { payloadText } from '../../protocol/payload.ts';
import type { Payload } from '../../protocol/types.ts';
import { Client, type ClientOptions } from '../../src/client/client.ts';
import { RequestError } from '../../src/errors.ts';
import type { IncomingMessage, ReplyValue, RequestContext } from '../../src/peer/peer.ts';
import type { Connection } from '../../src/server/connection.ts';
import type { DisconnectInfo, ServerOptions } from '../../src/server/options.ts';
import { Server } from '../../src/server/server.ts';
import { MemorySessionManager } from '../../src/session/memory-store.ts';
import { FaultProxy, type FaultProxyOptions } from '../fixtures/fault-proxy.ts';
import { recordingLogger } from '../helpers.ts';
import type { TransportUnderTest } from '../transport-under-test.ts';

/** Reconnects fast: the scenarios measure the faults, not the backoff. */
export const FAST_RECONNECT = { initialDelay: 20, maxDelay: 100 } as const;

/** Resolves when `signal` aborts; the handler then settles with the abort reason. */
function untilAborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    else signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
}

/** Handlers that run, and how each ended: the server side of the scenarios. */
export class HandlerLog {
  /** Handlers started, by request name. */
  readonly started = new Map<string, number>();
  /** Reasons handlers were aborted with (their AbortSignal fired). */
  readonly aborts: unknown[] = [];
  /** Signals received, in order, as `name:text`. */
  readonly signals: string[] = [];

  start(name: string): void {
    this.started.set(name, (this.started.get(name) ?? 0) + 1);
  }

  count(name: string): number {
    return this.started.get(name) ?? 0;
  }

  /** Waits (abort-aware) until the request is aborted; records the reason. */
  async hold({ signal }: RequestContext): Promise<never> {
    try {
      return await untilAborted(signal);
    } catch (reason) {
      this.aborts.push(reason);
      throw reason;
    }
  }
}

/**
 * The server's application:
 * - `echo`: the payload back; `login`: creates a session; `whoami`: the session key or '';
 * - `hold`: runs until aborted (the requester cancels, the connection closes, shutdown);
 * - `join`: subscribes to the topic named by the payload;
 * - `big`: a reply of the payload's number of bytes; `sink`: swallows the payload, replies its length.
 */
export function serverApp(log: HandlerLog) {
  return async (conn: Connection, message: IncomingMessage, context: RequestContext): Promise<ReplyValue> => {
    log.start(message.name);
    switch (message.name) {
      case 'echo':
        return message.payload;
      case 'login':
        await conn.createSession({ user: payloadText(message.payload) });
        return 'ok';
      case 'whoami':
        return conn.session?.key ?? '';
      case 'hold':
        return log.hold(context);
      case 'join':
        conn.subscribe(payloadText(message.payload));
        return 'joined';
      case 'big':
        return new Uint8Array(Number(payloadText(message.payload))).fill(0x5a);
      case 'sink':
        return String(message.payload.data.length);
      default:
        throw new RequestError('UNKNOWN', `no request ${message.name}`);
    }
  };
}

/** The client's application for server requests: `echo` answers, `hold` runs until aborted. */
export function clientApp(log: HandlerLog) {
  return async (message: IncomingMessage, context: RequestContext): Promise<ReplyValue> => {
    log.start(message.name);
    if (message.name === 'hold') return log.hold(context);
    return message.payload;
  };
}

export interface Rig {
  readonly server: Server;
  readonly proxy: FaultProxy;
  readonly logger: ReturnType<typeof recordingLogger>;
  /** Handlers of the server. */
  readonly serverLog: HandlerLog;
  /** Every disconnect the server reported, by connection id, in order. */
  readonly disconnects: Array<{ readonly id: string; readonly info: DisconnectInfo }>;
  /** A client through the proxy (closed after the test), its handlers logged in `log`. */
  client(options?: ClientOptions & { log?: HandlerLog }): Client;
  /** The newest open server connection. */
  newestConnection(): Connection | undefined;
}

/** A Server (memory sessions) on `transport` behind a FaultProxy; everything stopped after the test. */
export async function startRig(
  t: TestContext,
  transport: TransportUnderTest,
  options: Omit<ServerOptions, 'transport'> & { proxy?: Omit<FaultProxyOptions, 'targetPort'> } = {},
): Promise<Rig> {
  const { proxy: proxyOptions, ...serverOptions } = options;
  const logger = recordingLogger();
  const serverLog = new HandlerLog();
  const disconnects: Array<{ id: string; info: DisconnectInfo }> = [];
  const server = new Server({
    transport: transport.server(),
    logger,
    sessionManager: new MemorySessionManager(),
    onRequest: serverApp(serverLog),
    onSignal: (_conn, message) => {
      serverLog.signals.push(`${message.name}:${payloadText(message.payload)}`);
    },
    onClientDisconnected: (conn, info) => {
      disconnects.push({ id: conn.id, info });
    },
    ...serverOptions,
  });
  await server.listen();
  const proxy = await FaultProxy.start({ targetPort: server.address()!.port, ...proxyOptions });
  // After the clients (registered later, so run first): the proxy, then the server.
  t.after(async () => {
    await proxy.close();
    await server.shutdown({ timeout: 200 });
  });
  return {
    server,
    proxy,
    logger,
    serverLog,
    disconnects,
    client: ({ log, ...clientOptions } = {}) => {
      const client = new Client(proxy.url(), {
        transport: transport.client(),
        logger: recordingLogger(),
        reconnect: FAST_RECONNECT,
        ...(log === undefined ? {} : { onRequest: clientApp(log) }),
        ...clientOptions,
      });
      t.after(() => client.close());
      return client;
    },
    newestConnection: () => {
      let newest: Connection | undefined;
      for (const conn of server.connections) newest = conn;
      return newest;
    },
  };
}

/** How a request settled, and when (ms after `since`). */
export interface Settled {
  readonly value: Payload | undefined;
  readonly error: unknown;
  readonly ms: number;
}

/** Records how `promise` settles; never rejects (nothing is left unhandled while a test waits). */
export function settle(promise: Promise<Payload>, since: () => number = () => 0): Promise<Settled> {
  return promise.then(
    (value) => ({ value, error: undefined, ms: performance.now() - since() }),
    (error: unknown) => ({ value: undefined, error, ms: performance.now() - since() }),
  );
}

/** Rejects after `ms` unless `promise` settles first; the timer never outlives it. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]);
}

/**
 * Timers and TCP sockets that duplexwire's own code (src/, transports/) creates while it is on,
 * and that are not destroyed yet: async_hooks sees unref'd timers too, which
 * `process.getActiveResourcesInfo()` does not.
 */
export function libraryResources(): { live(): string[]; stop(): void } {
  const live = new Map<number, string>();
  const hook = createHook({
    init: (asyncId, type) => {
      if (type !== 'Timeout' && type !== 'TCPWRAP') return;
      const stack = new Error('created').stack ?? '';
      const ours = stack
        .split('\n')
        .filter((line) => /[/\\](src|transports)[/\\]/.test(line) && !line.includes('node_modules'));
      if (ours.length > 0) live.set(asyncId, `${type} ${ours.slice(0, 3).join(' <-').replace(/\s+/g, ' ')}`);
    },
    destroy: (asyncId) => {
      live.delete(asyncId);
    },
  });
  hook.enable();
  return {
    live: () => [...live.values()],
    stop: () => {
      hook.disable();
      live.clear();
    },
  };
}
