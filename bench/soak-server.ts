/**
 * The server process of the soak run (bench/soak.ts): a duplexwire Server on 127.0.0.1 port 0
 * (`ws` or `uws`, first argument) with memory sessions, topics and an application that exercises
 * every path: requests both ways, signals, publishes, sessions, cancels. It also pushes work of
 * its own (publishes, broadcasts, requests to clients) on a timer. The orchestrator asks it for
 * samples of its memory and handles (after a full GC) over IPC, and for its counters at the end.
 */
import { payloadText, utf8 } from '../protocol/payload.ts';
import { RequestError } from '../src/errors.ts';
import type { Logger } from '../src/logger.ts';
import type { ReplyValue, RequestContext } from '../src/peer/peer.ts';
import type { Connection } from '../src/server/connection.ts';
import { Server } from '../src/server/server.ts';
import { MemorySessionManager } from '../src/session/memory-store.ts';
import type { ServerTransport } from '../transports/types.ts';
import { wsTransport } from '../transports/ws.ts';
import { answer, fail, ready } from './ipc.ts';

const transportName = process.argv[2] ?? 'ws';
/** Topics the clients join and leave; the server publishes to them (the same in soak.ts). */
const SOAK_TOPICS = ['alpha', 'beta', 'gamma', 'delta'] as const;

/** What the server counts: work done, and what its logger was told (by level and message). */
const counters = {
  requests: 0,
  signals: 0,
  published: 0,
  serverRequests: { ok: 0, failed: new Map<string, number>() },
  connected: 0,
  disconnected: new Map<number, number>(),
  logged: new Map<string, number>(),
};

function bump(map: Map<string | number, number>, key: string | number): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

const logger: Logger = {
  error: (message) => bump(counters.logged, `error: ${message}`),
  warn: (message) => bump(counters.logged, `warn: ${message}`),
  info: () => {},
  debug: () => {},
};

async function makeTransport(): Promise<ServerTransport> {
  if (transportName === 'ws') return wsTransport({ host: '127.0.0.1', port: 0 });
  if (transportName === 'uws') {
    const { uwsTransport } = await import('../transports/uws.ts');
    return uwsTransport({ host: '127.0.0.1', port: 0 });
  }
  throw new Error(`unknown transport ${transportName}`);
}

/** Waits `ms`, or until the request is aborted (then rejects with the reason, as handlers do). */
function pause(ms: number, { signal }: RequestContext): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Sessions live 20 s after their last restore: a client that was away longer starts a new one.
 * Without a bound the store would grow with every client that ever logged in, which is the
 * store's documented behaviour (maxSessions), not a leak; with it, its size levels off.
 */
const sessions = new MemorySessionManager({ maxAge: 20_000 });

const server: Server = new Server({
  transport: await makeTransport().catch(fail),
  logger,
  sessionManager: sessions,
  readTimeout: 2_000,
  maxBufferedBytes: 1024 * 1024,
  shutdownTimeout: 1_000,
  onClientConnected: () => {
    counters.connected++;
  },
  onClientDisconnected: (_conn, { code }) => bump(counters.disconnected, code),
  onSignal: () => {
    counters.signals++;
  },
  onRequest: async (conn, message, context): Promise<ReplyValue> => {
    counters.requests++;
    const text = () => payloadText(message.payload);
    switch (message.name) {
      case 'echo':
        return message.payload;
      case 'hold':
        // Until the requester cancels or times out, or a while.
        await pause(Number(text()) || 5_000, context);
        return 'held';
      case 'login':
        if (conn.session === null) await conn.createSession({ user: text() });
        return conn.session?.key ?? '';
      case 'whoami':
        return conn.session?.key ?? '';
      case 'logout':
        await conn.closeSession();
        return 'bye';
      case 'join':
        conn.subscribe(text());
        return 'joined';
      case 'leave':
        conn.unsubscribe(text());
        return 'left';
      case 'publish': {
        const [topic = 'alpha', body = ''] = text().split('|');
        counters.published++;
        return String(server.publish(topic, 'news', utf8(body)));
      }
      case 'ask':
        // A request back to the requester, answered before this one is. Its failure (the
        // connection went, the client timed out) is the application's answer, not a crash.
        try {
          return await askClient(conn, text(), 2_000);
        } catch (error) {
          throw new RequestError('ASK_FAILED', error instanceof Error ? error.name : 'failed');
        }
      case 'big':
        return new Uint8Array(Math.min(Number(text()) || 0, 256 * 1024)).fill(0x61);
      case 'fail':
        throw new RequestError('EXPECTED', 'as asked');
      default:
        throw new RequestError('UNKNOWN', `no request ${message.name}`);
    }
  },
});

async function askClient(conn: Connection, text: string, timeout: number): Promise<string> {
  try {
    const reply = await conn.request('echo', utf8(text), { timeout });
    counters.serverRequests.ok++;
    return payloadText(reply);
  } catch (error) {
    bump(counters.serverRequests.failed, error instanceof Error ? error.name : 'non-Error');
    throw error;
  }
}

// Work of the server's own: publishes and broadcasts, and requests to a few clients.
let tick = 0;
const pusher = setInterval(() => {
  tick++;
  for (const topic of SOAK_TOPICS) server.publish(topic, 'tick', utf8(`${topic} ${tick}`));
  if (tick % 5 === 0) server.broadcast('all', utf8(`broadcast ${tick}`));
  let asked = 0;
  for (const conn of server.connections) {
    if (asked >= 3) break;
    if (!conn.supportsRequests || (tick + conn.id.charCodeAt(0)) % 7 !== 0) continue;
    asked++;
    askClient(conn, `server ${tick}`, 1_000).catch(() => {});
  }
}, 100);

await server.listen().catch(fail);

/** Live topic subscriptions over all connections. */
function subscriptions(): number {
  let n = 0;
  for (const topic of SOAK_TOPICS) n += server.subscribers(topic).size;
  return n;
}

answer(
  {
    sample: () => {
      (globalThis as { gc?: () => void }).gc?.();
      const memory = process.memoryUsage();
      return {
        at: Date.now(),
        rss: memory.rss,
        heapUsed: memory.heapUsed,
        heapTotal: memory.heapTotal,
        external: memory.external,
        arrayBuffers: memory.arrayBuffers,
        handles: process.getActiveResourcesInfo().length,
        connections: server.connections.size,
        activeSessions: server.activeSessionCount,
        storedSessions: sessions.size,
        subscriptions: subscriptions(),
      };
    },
    counters: () => ({
      requests: counters.requests,
      signals: counters.signals,
      published: counters.published,
      serverRequestsOk: counters.serverRequests.ok,
      serverRequestsFailed: Object.fromEntries(counters.serverRequests.failed),
      connected: counters.connected,
      disconnected: Object.fromEntries(counters.disconnected),
      logged: Object.fromEntries(counters.logged),
    }),
    /** Stops the server's own traffic (the end of the run). */
    quiet: () => {
      clearInterval(pusher);
    },
    shutdown: async () => {
      clearInterval(pusher);
      const started = performance.now();
      await server.shutdown();
      return { ms: Math.round(performance.now() - started) };
    },
  },
  async () => {
    clearInterval(pusher);
    await server.shutdown({ timeout: 500 });
  },
);
ready({ port: server.address()!.port });
