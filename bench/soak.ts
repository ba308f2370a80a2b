/**
 * The soak run: one duplexwire server process (bench/soak-server.ts) and many clients in this
 * process, all through a FaultProxy (test/fixtures/fault-proxy.ts) that keeps breaking their
 * connections, for a bounded time. The clients do mixed work: requests both ways, signals, topic
 * joins and publishes, session login, restore and logout, cancels, timeouts, large replies, and
 * now and then a client replaced by a new one (same key store: its session comes back). The
 * faults: resets, blackholes (found by the timeouts, or healed before), half-closes, connections
 * cut after a number of bytes, latency with tiny segments, throttling.
 *
 * Every second the server is sampled after a full GC: RSS, heap, active handles, connections,
 * sessions, subscriptions. After the warm-up, the run passes when:
 * - the heap and the handles do not grow: the median of the last third of the samples is within
 *   a margin of the first third's (the least-squares slope is printed too);
 * - every operation settled with its reply or one of the errors the faults explain
 *   (DisconnectedError, TimeoutError, CanceledError, the application's RequestErrors), every reply
 *   was the right one, and the client and the server always agreed on the session;
 * - the server logged no error;
 * - once the clients are closed, the server is back to no connection, no session attached, no
 *   subscription, no more handles than before the clients came, and a heap no larger than under
 *   load; and its shutdown completes.
 *
 *   npm run soak -- --seconds 120 [--clients 32] [--transport ws|uws] [--json out.json] [--seed n]
 *
 * Exits 0 when the run passes, 1 when it does not (the reasons are printed), 2 on bad arguments.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { binary, payloadText, utf8 } from '../protocol/payload.ts';
import type { Payload } from '../protocol/types.ts';
import { Client } from '../src/client/client.ts';
import { memoryKeyStore, type SessionKeyStore } from '../src/client/session-key-store.ts';
import { RequestError } from '../src/errors.ts';
import { silentLogger } from '../src/logger.ts';
import { wsClientTransport } from '../transports/ws.ts';
import { FaultProxy, type FaultLink } from '../test/fixtures/fault-proxy.ts';
import { Child } from './child.ts';

const TOPICS = ['alpha', 'beta', 'gamma', 'delta'] as const;
const MiB = 1024 * 1024;

/* ------------------------------------------------------------------------------------------- */
/* Options                                                                                     */
/* ------------------------------------------------------------------------------------------- */

export interface SoakOptions {
  readonly seconds: number;
  readonly clients: number;
  readonly transport: 'ws' | 'uws';
  readonly seed: number;
  /** Milliseconds between two faults. */
  readonly faultInterval: number;
}

function parseOptions(argv: readonly string[]): SoakOptions & { json: string | undefined } {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      seconds: { type: 'string', default: '120' },
      clients: { type: 'string', default: '32' },
      transport: { type: 'string', default: 'ws' },
      seed: { type: 'string' },
      'fault-interval': { type: 'string', default: '250' },
      json: { type: 'string' },
    },
    strict: true,
  });
  const integer = (name: string, text: string, min: number, max: number): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new Error(`--${name} must be an integer in ${min}..${max}, got ${text}`);
    }
    return value;
  };
  const transport = values.transport;
  if (transport !== 'ws' && transport !== 'uws') throw new Error(`--transport must be ws or uws, got ${transport}`);
  return {
    seconds: integer('seconds', values.seconds, 5, 86_400),
    clients: integer('clients', values.clients, 1, 2_000),
    transport,
    seed: values.seed === undefined ? Date.now() & 0x7fffffff : integer('seed', values.seed, 0, 0x7fffffff),
    faultInterval: integer('fault-interval', values['fault-interval'], 10, 60_000),
    json: values.json,
  };
}

/** mulberry32: a small seeded PRNG, so a run's choices can be replayed (its timing cannot). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/* ------------------------------------------------------------------------------------------- */
/* Outcomes                                                                                    */
/* ------------------------------------------------------------------------------------------- */

/** Errors a fault explains: a connection lost, a reply that could not come in time, a cancel. */
const EXPECTED_ERRORS = new Set(['DisconnectedError', 'TimeoutError', 'CanceledError']);
/** The application's own answers (soak-server.ts). */
const EXPECTED_CODES = new Set(['EXPECTED', 'ASK_FAILED']);

class Tally {
  /** op -> outcome ('ok', an error name, 'RequestError:<code>') -> count. */
  readonly ops = new Map<string, Map<string, number>>();
  /** What should never happen, with a few examples each. */
  readonly unexpected = new Map<string, { count: number; examples: string[] }>();
  /** Client 'error' events by name. */
  readonly clientErrors = new Map<string, number>();
  signals = 0;
  serverRequests = 0;

  record(op: string, outcome: string): void {
    let map = this.ops.get(op);
    if (map === undefined) {
      map = new Map();
      this.ops.set(op, map);
    }
    map.set(outcome, (map.get(outcome) ?? 0) + 1);
  }

  wrong(what: string, detail: string): void {
    const entry = this.unexpected.get(what) ?? { count: 0, examples: [] };
    entry.count++;
    if (entry.examples.length < 3) entry.examples.push(detail.slice(0, 300));
    this.unexpected.set(what, entry);
  }

  /** Classifies a failure: expected ones are counted, others also listed as unexpected. */
  failed(op: string, error: unknown): void {
    if (error instanceof RequestError && EXPECTED_CODES.has(error.code)) {
      this.record(op, `RequestError:${error.code}`);
      return;
    }
    const name = error instanceof Error ? error.name : typeof error;
    this.record(op, name);
    if (!EXPECTED_ERRORS.has(name)) {
      this.wrong(`${op} failed with ${name}`, error instanceof Error ? (error.stack ?? error.message) : String(error));
    }
  }

  count(outcome: (name: string) => boolean): number {
    let n = 0;
    for (const map of this.ops.values()) for (const [name, c] of map) if (outcome(name)) n += c;
    return n;
  }
}

/* ------------------------------------------------------------------------------------------- */
/* Clients                                                                                     */
/* ------------------------------------------------------------------------------------------- */

const CLIENT_OPTIONS = {
  requestTimeout: 3_000,
  connectTimeout: 3_000,
  serverTimeout: 1_500,
  reconnect: { initialDelay: 50, maxDelay: 1_000 },
  logger: silentLogger,
} as const;

type Op = (worker: Worker) => Promise<void>;

/** One simulated user: a Client (replaced now and then, keeping its key store) doing mixed work. */
class Worker {
  readonly id: number;
  client: Client;
  readonly keyStore: SessionKeyStore = memoryKeyStore();
  readonly #url: string;
  readonly #tally: Tally;
  readonly random: () => number;
  replaced = 0;

  constructor(id: number, url: string, tally: Tally, random: () => number) {
    this.id = id;
    this.#url = url;
    this.#tally = tally;
    this.random = random;
    this.client = this.#newClient();
  }

  #newClient(): Client {
    const client = new Client(this.#url, {
      ...CLIENT_OPTIONS,
      transport: wsClientTransport(),
      sessionKeyStore: this.keyStore,
      onRequest: (message) => {
        this.#tally.serverRequests++;
        return message.payload;
      },
    });
    client.on('signal', () => {
      this.#tally.signals++;
    });
    client.on('error', (error) => {
      const name = error.name;
      this.#tally.clientErrors.set(name, (this.#tally.clientErrors.get(name) ?? 0) + 1);
      // Failed attempts, a restore that timed out or was cut: what the faults do.
      if (name !== 'ConnectError' && name !== 'TimeoutError' && name !== 'DisconnectedError') {
        this.#tally.wrong(`client error event ${name}`, error.stack ?? error.message);
      }
    });
    return client;
  }

  /** Closes this client and starts another with the same key store: its session must come back. */
  async replace(): Promise<void> {
    const old = this.client;
    this.client = this.#newClient();
    this.replaced++;
    await old.close();
  }

  /** Runs `request` as operation `op`, checking its reply with `check`. */
  async run(op: string, request: () => Promise<Payload>, check?: (reply: string) => string | undefined): Promise<void> {
    try {
      const reply = await request();
      const problem = check?.(payloadText(reply));
      if (problem === undefined) this.#tally.record(op, 'ok');
      else {
        this.#tally.record(op, 'wrong reply');
        this.#tally.wrong(`${op}: wrong reply`, problem);
      }
    } catch (error) {
      this.#tally.failed(op, error);
    }
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.random() * items.length)]!;
  }

  async loop(ops: ReadonlyArray<readonly [number, Op]>, until: () => boolean): Promise<void> {
    const total = ops.reduce((sum, [weight]) => sum + weight, 0);
    // Bounded: the deadline ends it; the count only guards against a loop that never yields.
    for (let i = 0; i < 10_000_000 && !until(); i++) {
      let roll = this.random() * total;
      let op = ops[0]![1];
      for (const [weight, candidate] of ops) {
        roll -= weight;
        if (roll < 0) {
          op = candidate;
          break;
        }
      }
      await op(this);
      await sleep(Math.floor(this.random() * 20));
    }
  }
}

/** The mix of work: [weight, operation]. */
function operations(tally: Tally): ReadonlyArray<readonly [number, Op]> {
  return [
    [
      30,
      async (w) => {
        const size = Math.floor(w.random() * 2048);
        const bytes = new Uint8Array(size).map((_, i) => (i * 13 + w.id) & 0xff);
        try {
          const reply = await w.client.request('echo', binary(bytes));
          if (reply.encoding === 'binary' && Buffer.from(reply.data).equals(bytes)) tally.record('echo', 'ok');
          else {
            tally.record('echo', 'wrong reply');
            tally.wrong('echo: wrong reply', `${reply.encoding}, ${reply.data.length} bytes for ${size}`);
          }
        } catch (error) {
          tally.failed('echo', error);
        }
      },
    ],
    [
      8,
      async (w) => {
        const abort = new AbortController();
        const timer = setTimeout(() => abort.abort(), Math.floor(w.random() * 30));
        await w.run(
          'cancel',
          () => w.client.request('hold', utf8('5000'), { signal: abort.signal }),
          () => 'a reply to a request held for 5 s',
        );
        clearTimeout(timer);
      },
    ],
    [
      6,
      async (w) => {
        const timeout = 20 + Math.floor(w.random() * 40);
        await w.run(
          'timeout',
          () => w.client.request('hold', utf8('5000'), { timeout }),
          () => 'a reply to a request held for 5 s',
        );
      },
    ],
    [
      6,
      async (w) => {
        const session = w.client.session;
        if (session === null) {
          await w.run(
            'login',
            () => w.client.request('login', utf8(`user ${w.id}`)),
            (reply) => {
              const now = w.client.session?.key;
              return now === undefined || reply === now ? undefined : `login replied ${reply}, the client holds ${now}`;
            },
          );
          return;
        }
        const before = session.key;
        await w.run(
          'whoami',
          () => w.client.request('whoami', utf8('')),
          (reply) => {
            const now = w.client.session?.key ?? '';
            // The client's session may have changed while the request was out (a reconnect whose
            // restore found the session expired): compare with both.
            return reply === now || reply === before
              ? undefined
              : `server says ${JSON.stringify(reply)}, client ${JSON.stringify(now)}`;
          },
        );
      },
    ],
    [
      1,
      async (w) => {
        if (w.client.session === null) return;
        try {
          await w.client.closeSession();
          tally.record('logout', 'ok');
        } catch (error) {
          tally.failed('logout', error);
        }
      },
    ],
    [
      6,
      async (w) => {
        const topic = w.pick(TOPICS);
        const join = w.random() < 0.6;
        await w.run(join ? 'join' : 'leave', () => w.client.request(join ? 'join' : 'leave', utf8(topic)));
      },
    ],
    [
      6,
      async (w) => {
        await w.run(
          'publish',
          () => w.client.request('publish', utf8(`${w.pick(TOPICS)}|from ${w.id}`)),
          (reply) => (Number.isInteger(Number(reply)) ? undefined : `publish replied ${reply}`),
        );
      },
    ],
    [
      8,
      async (w) => {
        if (w.client.signal('note', utf8(`note from ${w.id}`))) tally.record('signal', 'ok');
        else tally.record('signal', 'not connected');
      },
    ],
    [
      6,
      async (w) => {
        const text = `ask ${w.id} ${Math.floor(w.random() * 1e6)}`;
        await w.run(
          'ask',
          () => w.client.request('ask', utf8(text)),
          (reply) => (reply === text ? undefined : `ask replied ${reply}`),
        );
      },
    ],
    [
      3,
      async (w) => {
        const size = 16 * 1024 + Math.floor(w.random() * 112 * 1024);
        try {
          const reply = await w.client.request('big', utf8(String(size)));
          if (reply.data.length === size) tally.record('big', 'ok');
          else {
            tally.record('big', 'wrong reply');
            tally.wrong('big: wrong size', `${reply.data.length} bytes for ${size}`);
          }
        } catch (error) {
          tally.failed('big', error);
        }
      },
    ],
    [
      2,
      async (w) =>
        w.run(
          'fail',
          () => w.client.request('fail', utf8('')),
          () => 'a reply to a request that fails',
        ),
    ],
    [
      0.5,
      async (w) => {
        await w.replace();
        tally.record('replace', 'ok');
      },
    ],
  ];
}

/* ------------------------------------------------------------------------------------------- */
/* Faults                                                                                      */
/* ------------------------------------------------------------------------------------------- */

type Fault = readonly [
  name: string,
  weight: number,
  apply: (link: FaultLink, random: () => number, later: (ms: number, fn: () => void) => void) => void,
];

const FAULTS: readonly Fault[] = [
  ['reset', 25, (link) => link.reset()],
  [
    'blackhole',
    15,
    // Healed before or after the timeouts find it (client 1.5 s, server 2 s).
    (link, random, later) => {
      link.blackhole();
      later(500 + random() * 2_500, () => link.heal());
    },
  ],
  ['half-close up', 8, (link) => link.up.end()],
  ['half-close down', 8, (link) => link.down.end()],
  [
    'cut after bytes',
    15,
    (link, random) => {
      const pipe = random() < 0.5 ? link.up : link.down;
      pipe.dropAfter(pipe.forwarded + Math.floor(random() * 30_000), random() < 0.5 ? 'reset' : 'close');
    },
  ],
  [
    'latency + tiny segments',
    12,
    (link, random, later) => {
      const ms = 10 + random() * 70;
      link.up.latency(ms).split(64);
      link.down.latency(ms).split(64);
      later(1_000 + random() * 2_000, () => link.heal());
    },
  ],
  [
    'throttle',
    10,
    (link, random, later) => {
      const rate = (8 + Math.floor(random() * 56)) * 1024;
      link.up.throttle(rate);
      link.down.throttle(rate);
      later(1_000 + random() * 2_000, () => link.heal());
    },
  ],
  [
    'one direction blackholed',
    7,
    (link, random, later) => {
      (random() < 0.5 ? link.up : link.down).pause();
      later(500 + random() * 2_000, () => link.heal());
    },
  ],
];

/** Injects a fault into a random link every `interval` ms; returns a function that stops it. */
function chaos(proxy: FaultProxy, interval: number, random: () => number, counts: Map<string, number>): () => void {
  const timers = new Set<ReturnType<typeof setTimeout>>();
  const later = (ms: number, fn: () => void): void => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timers.add(timer);
  };
  const total = FAULTS.reduce((sum, [, weight]) => sum + weight, 0);
  // One new connection in eight dies in its handshake or its session restore (the first 600
  // bytes either way), or starts blackholed: what a reconnect meets on a bad network.
  proxy.onLink = (link) => {
    const roll = random();
    if (roll < 0.1) {
      (random() < 0.5 ? link.up : link.down).dropAfter(Math.floor(random() * 600), random() < 0.5 ? 'reset' : 'close');
      counts.set('cut in the handshake', (counts.get('cut in the handshake') ?? 0) + 1);
    } else if (roll < 0.125) {
      link.blackhole();
      later(500 + random() * 4_000, () => link.heal());
      counts.set('blackholed from the start', (counts.get('blackholed from the start') ?? 0) + 1);
    }
  };
  const tick = setInterval(() => {
    const links = [...proxy.links];
    if (links.length === 0) return;
    const link = links[Math.floor(random() * links.length)]!;
    let roll = random() * total;
    for (const [name, weight, apply] of FAULTS) {
      roll -= weight;
      if (roll >= 0) continue;
      apply(link, random, later);
      counts.set(name, (counts.get(name) ?? 0) + 1);
      break;
    }
  }, interval);
  return () => {
    proxy.onLink = undefined;
    clearInterval(tick);
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
    for (const link of proxy.links) link.heal();
  };
}

/* ------------------------------------------------------------------------------------------- */
/* Samples and their analysis                                                                  */
/* ------------------------------------------------------------------------------------------- */

export interface Sample {
  readonly t: number;
  readonly rss: number;
  readonly heapUsed: number;
  readonly heapTotal: number;
  readonly external: number;
  readonly arrayBuffers: number;
  readonly handles: number;
  readonly connections: number;
  readonly activeSessions: number;
  readonly storedSessions: number;
  readonly subscriptions: number;
}

type Metric = 'rss' | 'heapUsed' | 'handles';

export interface Trend {
  /** Least-squares slope, per minute. */
  readonly slopePerMinute: number;
  readonly firstMedian: number;
  readonly lastMedian: number;
  readonly growth: number;
  readonly allowed: number;
  readonly ok: boolean;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function slope(points: ReadonlyArray<readonly [number, number]>): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/** Growth allowed between the first and the last third, by metric: a floor, and a share of the first. */
const ALLOWED: Record<Metric, { floor: number; share: number }> = {
  heapUsed: { floor: 4 * MiB, share: 0.15 },
  handles: { floor: 6, share: 0.2 },
  // RSS includes what the allocator keeps after a peak: loose, for gross leaks (native buffers).
  rss: { floor: 48 * MiB, share: 0.5 },
};

export function trend(samples: readonly Sample[], metric: Metric): Trend {
  const third = Math.max(1, Math.floor(samples.length / 3));
  const first = median(samples.slice(0, third).map((s) => s[metric]));
  const last = median(samples.slice(-third).map((s) => s[metric]));
  const { floor, share } = ALLOWED[metric];
  const allowed = Math.max(floor, first * share);
  return {
    slopePerMinute: slope(samples.map((s) => [s.t / 60_000, s[metric]] as const)),
    firstMedian: first,
    lastMedian: last,
    growth: last - first,
    allowed,
    ok: last - first <= allowed,
  };
}

/* ------------------------------------------------------------------------------------------- */
/* The run                                                                                     */
/* ------------------------------------------------------------------------------------------- */

export interface SoakReport {
  readonly options: SoakOptions;
  readonly samples: Sample[];
  readonly warmupSamples: number;
  readonly trends: Record<Metric, Trend>;
  readonly baseline: Sample;
  readonly final: Sample;
  readonly ops: Record<string, Record<string, number>>;
  readonly clientErrors: Record<string, number>;
  readonly unexpected: Record<string, { count: number; examples: string[] }>;
  readonly faults: Record<string, number>;
  readonly links: number;
  readonly replacedClients: number;
  readonly signalsReceived: number;
  readonly serverRequestsAnswered: number;
  readonly server: Record<string, unknown>;
  readonly shutdownMs: number;
  readonly failures: string[];
  readonly pass: boolean;
}

function mb(bytes: number): string {
  return (bytes / MiB).toFixed(1);
}

export async function soak(options: SoakOptions, log: (line: string) => void = console.log): Promise<SoakReport> {
  const random = prng(options.seed);
  const server = new Child(new URL('./soak-server.ts', import.meta.url), [options.transport], {
    label: `soak server (${options.transport})`,
  });
  const failures: string[] = [];
  let proxy: FaultProxy | undefined;
  const workers: Worker[] = [];
  try {
    const { port } = (await server.ready) as { port: number };
    proxy = await FaultProxy.start({ targetPort: port, maxHeldBytes: 256 * 1024 });
    const sample = async (t: number): Promise<Sample> => ({ ...(await server.call<Omit<Sample, 't'>>('sample')), t });
    const started = performance.now();
    const baseline = await sample(0);
    log(
      `soak: ${options.seconds} s, ${options.clients} clients, server on ${options.transport}, a fault every ${options.faultInterval} ms, seed ${options.seed}`,
    );

    const tally = new Tally();
    const url = proxy.url();
    for (let i = 0; i < options.clients; i++) workers.push(new Worker(i, url, tally, prng(options.seed + i + 1)));
    const deadline = started + options.seconds * 1_000;
    const over = (): boolean => performance.now() >= deadline;
    const ops = operations(tally);
    const running = workers.map((worker) => worker.loop(ops, over));
    const faultCounts = new Map<string, number>();
    const stopChaos = chaos(proxy, options.faultInterval, random, faultCounts);

    const samples: Sample[] = [];
    const every = Math.max(1, Math.round(options.seconds / 20));
    log('   t(s)  rss(MB)  heap(MB)  handles  conns  sessions(active/stored)  subscriptions');
    for (let second = 1; performance.now() < deadline; second++) {
      await sleep(Math.max(0, started + second * 1_000 - performance.now()));
      const s = await sample(performance.now() - started);
      samples.push(s);
      if (second % every === 0) {
        log(
          `${(s.t / 1000).toFixed(0).padStart(7)}  ${mb(s.rss).padStart(7)}  ${mb(s.heapUsed).padStart(8)}  ${String(s.handles).padStart(7)}  ${String(s.connections).padStart(5)}  ${`${s.activeSessions}/${s.storedSessions}`.padStart(23)}  ${String(s.subscriptions).padStart(13)}`,
        );
      }
    }
    stopChaos();
    // Bounded: each operation has a timeout (requestTimeout 3 s); the race only guards the bound.
    let guard: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(running),
      new Promise<void>((resolve) => {
        guard = setTimeout(resolve, 15_000);
      }),
    ]);
    clearTimeout(guard);
    await server.call('quiet');
    await Promise.all(workers.map((worker) => worker.client.close()));

    // The server lets go of everything the clients held.
    let final = await sample(performance.now() - started);
    for (let i = 0; i < 100 && (final.connections > 0 || final.activeSessions > 0 || final.subscriptions > 0); i++) {
      await sleep(100);
      final = await sample(performance.now() - started);
    }
    const counters = await server.call<Record<string, unknown>>('counters');
    const { ms: shutdownMs } = await server.call<{ ms: number }>('shutdown', {}, 10_000);

    // Warm-up: the first quarter (at least 5 s) is left out of the trends.
    const warmupSamples = Math.min(samples.length - 3, Math.max(5, Math.floor(samples.length / 4)));
    const steady = samples.slice(Math.max(0, warmupSamples));
    const trends = {
      heapUsed: trend(steady, 'heapUsed'),
      handles: trend(steady, 'handles'),
      rss: trend(steady, 'rss'),
    };
    for (const [metric, result] of Object.entries(trends)) {
      if (!result.ok) {
        failures.push(
          `${metric} grew by ${metric === 'handles' ? result.growth : `${mb(result.growth)} MB`} between the first and the last third (allowed ${metric === 'handles' ? result.allowed : `${mb(result.allowed)} MB`})`,
        );
      }
    }
    if (final.connections !== 0) failures.push(`${final.connections} connections left after the clients closed`);
    if (final.activeSessions !== 0) failures.push(`${final.activeSessions} sessions still attached`);
    if (final.subscriptions !== 0) failures.push(`${final.subscriptions} subscriptions left`);
    if (final.handles > baseline.handles) {
      failures.push(`${final.handles} active handles after the run, ${baseline.handles} before the clients came`);
    }
    const loadedHeap = trends.heapUsed.firstMedian;
    if (final.heapUsed > loadedHeap + ALLOWED.heapUsed.floor) {
      failures.push(`heap ${mb(final.heapUsed)} MB after the run, ${mb(loadedHeap)} MB under load`);
    }
    for (const [what, { count, examples }] of tally.unexpected) {
      failures.push(`${count} x ${what}: ${examples.join(' | ')}`);
    }
    const logged = (counters.logged ?? {}) as Record<string, number>;
    for (const [message, count] of Object.entries(logged)) {
      if (message.startsWith('error:')) failures.push(`the server logged ${count} x "${message}"`);
    }
    const okOps = tally.count((name) => name === 'ok');
    for (const op of ['echo', 'whoami', 'publish', 'ask', 'big']) {
      if ((tally.ops.get(op)?.get('ok') ?? 0) === 0) failures.push(`no ${op} ever succeeded`);
    }
    for (const op of ['cancel', 'timeout']) {
      const expected = op === 'cancel' ? 'CanceledError' : 'TimeoutError';
      if ((tally.ops.get(op)?.get(expected) ?? 0) === 0) failures.push(`no ${op} ever ended with ${expected}`);
    }
    const faultTotal = [...faultCounts.values()].reduce((a, b) => a + b, 0);
    if (faultTotal === 0) failures.push('no fault was injected');

    const report: SoakReport = {
      options,
      samples,
      warmupSamples,
      trends,
      baseline,
      final,
      ops: Object.fromEntries([...tally.ops].map(([op, map]) => [op, Object.fromEntries(map)])),
      clientErrors: Object.fromEntries(tally.clientErrors),
      unexpected: Object.fromEntries(tally.unexpected),
      faults: Object.fromEntries(faultCounts),
      links: proxy.accepted,
      replacedClients: workers.reduce((n, w) => n + w.replaced, 0),
      signalsReceived: tally.signals,
      serverRequestsAnswered: tally.serverRequests,
      server: counters,
      shutdownMs,
      failures,
      pass: failures.length === 0,
    };

    log('');
    log(`after warm-up (${warmupSamples} samples left out), first third vs last third (median), least-squares slope:`);
    for (const [metric, t] of Object.entries(trends)) {
      const unit = metric === 'handles' ? (v: number) => v.toFixed(1) : (v: number) => `${mb(v)} MB`;
      log(
        `  ${metric.padEnd(9)} ${unit(t.firstMedian)} -> ${unit(t.lastMedian)} (growth ${unit(t.growth)}, allowed ${unit(t.allowed)}; slope ${unit(t.slopePerMinute)}/min) ${t.ok ? 'ok' : 'GROWS'}`,
      );
    }
    log(
      `  before the clients: heap ${mb(baseline.heapUsed)} MB, ${baseline.handles} handles; after them: heap ${mb(final.heapUsed)} MB, ${final.handles} handles, ${final.connections} connections, ${final.activeSessions} sessions attached (${final.storedSessions} stored), ${final.subscriptions} subscriptions`,
    );
    log(
      `operations: ${okOps} ok of ${tally.count(() => true)}; ${proxy.accepted} connections, ${report.replacedClients} clients replaced, ${tally.signals} signals and ${tally.serverRequests} server requests received`,
    );
    for (const [op, map] of tally.ops) {
      log(`  ${op.padEnd(8)} ${[...map].map(([name, count]) => `${name} ${count}`).join(', ')}`);
    }
    log(`faults: ${[...faultCounts].map(([name, count]) => `${name} ${count}`).join(', ')}`);
    log(
      `client error events: ${[...tally.clientErrors].map(([name, count]) => `${name} ${count}`).join(', ') || 'none'}`,
    );
    log(`server: ${JSON.stringify(counters)}; shutdown in ${shutdownMs} ms`);
    log(report.pass ? 'PASS' : `FAIL\n  ${failures.join('\n  ')}`);
    return report;
  } finally {
    await Promise.all(workers.map((worker) => worker.client.close().catch(() => {})));
    await proxy?.close();
    await server.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  let options: ReturnType<typeof parseOptions>;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    process.exit(2);
  }
  const report = await soak(options);
  if (options.json !== undefined) writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
  process.exitCode = report.pass ? 0 : 1;
}
