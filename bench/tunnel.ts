/**
 * The HTTP tunnel against the same target served directly, in one run: requests/s, latency
 * percentiles and throughput for small responses and for 1 MiB responses.
 *
 *   npm run bench:tunnel -- [--duration 3] [--rounds 3] [--small-concurrency 32] [--big-concurrency 8]
 *                           [--sizes small,big] [--cpu-prof DIR]
 *
 * `--cpu-prof DIR` writes V8 CPU profiles of the proxy and the agent into DIR (open them in Chrome
 * DevTools or speedscope); `--sizes small` runs the small responses only.
 *
 * Standalone (not part of the bench harness in bench/run.ts). Every server runs in its own
 * process, as in production, from the compiled `dist/` (what ships): the target (a plain Node
 * HTTP server), `duplexwire tunnel proxy` and `duplexwire tunnel agent`; the load generator is
 * this process, a closed loop of keep-alive connections (one request in flight per connection).
 * Goals (issue 6): small >= 0.5 x direct requests/s, 1 MiB >= 0.7 x direct throughput.
 *
 * Two more readings put the ratio in context on a small machine:
 * - `relay`: the same requests through two chained TCP relays (two processes that pipe bytes and
 *   parse nothing), the floor of any design where an HTTP request crosses two extra processes.
 *   On a 2-core machine every process shares the same two cores, so the relay's ratio shows how
 *   much of the gap is the machine rather than the tunnel.
 * - CPU time per request of each process (Linux: /proc/<pid>/stat; the load generator with
 *   `process.cpuUsage()`), and from it a projection for a machine with a core per process: a
 *   closed pipeline of single-threaded processes runs at the pace of its busiest one, so the
 *   projected ratio is (busiest direct process's CPU per request) / (busiest tunnel process's).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Agent, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { generateToken, tokenDigest } from '../src/apps/tunnel/tokens.ts';
import { keepHeapHeadroom } from '../src/cli/heap-headroom.ts';
import { staleBuild } from './dist-check.ts';
import { cpuMs, runRelay } from './procs.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SMALL = Buffer.from('{"hello":"world"}');
const BIG = Buffer.alloc(1024 * 1024, 0x61);

/** The target, in its own process: /small (17 bytes of JSON) and /big (1 MiB). */
async function runTarget(): Promise<void> {
  const server = createServer((req, res) => {
    const body = req.url === '/big' ? BIG : SMALL;
    res.writeHead(200, {
      'content-type': req.url === '/big' ? 'application/octet-stream' : 'application/json',
      'content-length': body.length,
    });
    res.end(body);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
}

interface Child {
  readonly proc: ChildProcess;
  /** Resolves with the first stdout/stderr line matching `pattern`. */
  waitFor(pattern: RegExp): Promise<RegExpMatchArray>;
}

const children: ChildProcess[] = [];

/** Starts `node <args>` (a compiled script, or `--import tsx` and a TypeScript one). */
function start(args: string[]): Child {
  const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let text = '';
  const waiters: Array<() => void> = [];
  const feed = (chunk: Buffer): void => {
    text += chunk.toString();
    if (text.length > 1 << 16) text = text.slice(-(1 << 15));
    for (const wake of waiters.splice(0)) wake();
  };
  proc.stdout!.on('data', feed);
  proc.stderr!.on('data', feed);
  return {
    proc,
    async waitFor(pattern) {
      const deadline = Date.now() + 20_000;
      for (;;) {
        const match = pattern.exec(text);
        if (match !== null) return match;
        if (Date.now() > deadline || proc.exitCode !== null)
          throw new Error(`no ${pattern} from ${args.join(' ')}: ${text}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
    },
  };
}

interface Result {
  readonly requests: number;
  readonly seconds: number;
  readonly bytes: number;
  readonly errors: number;
  readonly latencies: Float64Array;
  /** CPU time per request (µs) of each process on the path, the load generator included. */
  readonly cpu: Record<string, number | undefined>;
}

/** A closed loop: `concurrency` keep-alive connections, each with one request in flight, for `seconds`. */
async function load(
  port: number,
  path: string,
  headers: Record<string, string>,
  concurrency: number,
  seconds: number,
  processes: Record<string, ChildProcess>,
): Promise<Result> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const latencies: number[] = [];
  let bytes = 0;
  let errors = 0;
  const once = (): Promise<void> =>
    new Promise((resolve) => {
      const t0 = performance.now();
      const req = request({ host: '127.0.0.1', port, path, headers, agent }, (res) => {
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
        });
        res.on('end', () => {
          if (res.statusCode === 200) latencies.push(performance.now() - t0);
          else errors++;
          resolve();
        });
        res.on('error', () => {
          errors++;
          resolve();
        });
      });
      req.on('error', () => {
        errors++;
        resolve();
      });
      req.end();
    });
  // Warm-up: connections open, JIT settled.
  const warmEnd = performance.now() + 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < warmEnd) await once();
    }),
  );
  latencies.length = 0;
  bytes = 0;
  errors = 0;
  const cpuBefore = Object.fromEntries(Object.entries(processes).map(([name, p]) => [name, cpuMs(p.pid)]));
  const ownBefore = process.cpuUsage();
  const started = performance.now();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) await once();
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const own = process.cpuUsage(ownBefore);
  const n = Math.max(1, latencies.length);
  const cpu: Record<string, number | undefined> = { load: (own.user + own.system) / n };
  for (const [name, p] of Object.entries(processes)) {
    const before = cpuBefore[name];
    const after = cpuMs(p.pid);
    cpu[name] = before === undefined || after === undefined ? undefined : ((after - before) * 1000) / n;
  }
  agent.destroy();
  const sorted = Float64Array.from(latencies).sort();
  return { requests: latencies.length, seconds: elapsed, bytes, errors, latencies: sorted, cpu };
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

interface Reading {
  readonly rps: number;
  readonly mibps: number;
  readonly p50: number;
  readonly p99: number;
  readonly cpu: Record<string, number | undefined>;
}

function describe(r: Result): Reading {
  return {
    rps: r.requests / r.seconds,
    mibps: r.bytes / r.seconds / 1024 / 1024,
    p50: percentile(r.latencies, 50),
    p99: percentile(r.latencies, 99),
    cpu: r.cpu,
  };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** The median of each figure over the rounds (CPU figures too, process by process). */
function pick(runs: Reading[]): Reading {
  const cpu: Record<string, number | undefined> = {};
  for (const name of Object.keys(runs[0]!.cpu)) {
    const xs = runs.map((r) => r.cpu[name]).filter((x): x is number => x !== undefined);
    cpu[name] = xs.length === runs.length ? median(xs) : undefined;
  }
  return {
    rps: median(runs.map((r) => r.rps)),
    mibps: median(runs.map((r) => r.mibps)),
    p50: median(runs.map((r) => r.p50)),
    p99: median(runs.map((r) => r.p99)),
    cpu,
  };
}

/** CPU time per request of the busiest process, or undefined when one could not be read. */
function busiest(reading: Reading): number | undefined {
  const xs = Object.values(reading.cpu);
  return xs.every((x) => x !== undefined) ? Math.max(...(xs as number[])) : undefined;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      to: { type: 'string' },
      duration: { type: 'string', default: '3' },
      rounds: { type: 'string', default: '3' },
      'small-concurrency': { type: 'string', default: '32' },
      'big-concurrency': { type: 'string', default: '8' },
      sizes: { type: 'string', default: 'small,big' },
      'cpu-prof': { type: 'string' },
    },
  });
  // Every process of the comparison runs with the heap headroom the duplexwire command gives the
  // proxy and the agent (src/cli/heap-headroom.ts): without it, V8 can fall into back-to-back full
  // collections in any small Node process moving 1 MiB bodies, this load generator included, and
  // the direct reading swung from 1,400 to 4,500 MiB/s between runs with the load generator's CPU
  // per MiB (235 to 740 µs). Same settings on every side, so the ratios compare the paths.
  keepHeapHeadroom();
  if (values.role === 'target') return runTarget();
  if (values.role === 'relay') return runRelay(Number(values.to));
  const stale = staleBuild();
  if (stale.length > 0) {
    throw new Error(
      `dist/ is older than ${stale.slice(0, 3).join(', ')}${stale.length > 3 ? ', ...' : ''}: run npm run build`,
    );
  }
  const seconds = Number(values.duration);
  const dir = await mkdtemp(join(tmpdir(), 'bench-tunnel-'));
  try {
    const token = generateToken();
    const tokens = join(dir, 'tokens.json');
    const tokenFile = join(dir, 'token');
    await writeFile(tokens, JSON.stringify({ bench: tokenDigest(token) }));
    await writeFile(tokenFile, token);
    const cli = join(ROOT, 'dist/src/cli/main.js');
    const helper = ['--import', 'tsx', 'bench/tunnel.ts'];
    const target = start([...helper, '--role', 'target']);
    const targetPort = Number((await target.waitFor(/^(\d+)$/m))[1]);
    const relay2 = start([...helper, '--role', 'relay', '--to', String(targetPort)]);
    const relay2Port = Number((await relay2.waitFor(/^(\d+)$/m))[1]);
    const relay1 = start([...helper, '--role', 'relay', '--to', String(relay2Port)]);
    const relayPort = Number((await relay1.waitFor(/^(\d+)$/m))[1]);
    const profile = values['cpu-prof'] === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${values['cpu-prof']}`];
    const proxy = start([
      ...profile,
      cli,
      'tunnel',
      'proxy',
      '--listen',
      '127.0.0.1:0',
      '--tokens',
      tokens,
      '--log-level',
      'warn',
    ]);
    const proxyPort = Number((await proxy.waitFor(/listening on http:\/\/[^ ]+:(\d+)\//))[1]);
    const agent = start([
      ...profile,
      cli,
      'tunnel',
      'agent',
      '--proxy',
      `ws://127.0.0.1:${proxyPort}/_tunnel`,
      '--id',
      'bench',
      '--token-file',
      tokenFile,
      '--target',
      `http://127.0.0.1:${targetPort}`,
      '--log-level',
      'warn',
    ]);
    // Ready once a request goes through.
    for (let i = 0; ; i++) {
      const ok = await new Promise<boolean>((resolve) => {
        const req = request(
          { host: '127.0.0.1', port: proxyPort, path: '/small', headers: { 'x-duplexwire-client-id': 'bench' } },
          (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode === 200));
          },
        );
        req.on('error', () => resolve(false));
        req.end();
      });
      if (ok) break;
      if (i > 100 || agent.proc.exitCode !== null) throw new Error('the agent never connected');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const paths = {
      direct: { port: targetPort, headers: {}, processes: { target: target.proc } },
      relay: {
        port: relayPort,
        headers: {},
        processes: { target: target.proc, relay1: relay1.proc, relay2: relay2.proc },
      },
      tunnel: {
        port: proxyPort,
        headers: { 'x-duplexwire-client-id': 'bench' },
        processes: { target: target.proc, proxy: proxy.proc, agent: agent.proc },
      },
    };
    const rounds = Number(values.rounds);
    const rows: string[] = [];
    const summary: Record<string, Record<string, number | null>> = {};
    const sizes = new Set(values.sizes.split(','));
    for (const [label, path, concurrency] of [
      ['small (17 B)', '/small', Number(values['small-concurrency'])],
      ['1 MiB', '/big', Number(values['big-concurrency'])],
    ] as const) {
      if (!sizes.has(path.slice(1))) continue;
      // The three paths alternate, and medians are compared: on a shared machine a burst of
      // load elsewhere then hits every side rather than one.
      const runs: Record<keyof typeof paths, Reading[]> = { direct: [], relay: [], tunnel: [] };
      for (let round = 0; round < rounds; round++) {
        for (const name of ['direct', 'relay', 'tunnel'] as const) {
          const { port, headers, processes } = paths[name];
          runs[name].push(describe(await load(port, path, headers, concurrency, seconds, processes)));
        }
      }
      const big = path === '/big';
      const measure = (r: Reading): number => (big ? r.mibps : r.rps);
      const d = pick(runs.direct);
      const re = pick(runs.relay);
      const tu = pick(runs.tunnel);
      const ratio = measure(tu) / measure(d);
      const relayRatio = measure(re) / measure(d);
      const busyDirect = busiest(d);
      const busyTunnel = busiest(tu);
      const projected = busyDirect === undefined || busyTunnel === undefined ? undefined : busyDirect / busyTunnel;
      summary[label] = {
        ratio: Number(ratio.toFixed(3)),
        relayRatio: Number(relayRatio.toFixed(3)),
        projectedRatio: projected === undefined ? null : Number(projected.toFixed(3)),
      };
      const perRequest = (us: number | undefined): string => (us === undefined ? 'n/a' : us.toFixed(0));
      const fmt = (name: string, x: Reading): string =>
        `${label.padEnd(13)} ${name.padEnd(7)} ${x.rps.toFixed(0).padStart(8)} req/s  ${x.mibps.toFixed(1).padStart(8)} MiB/s  p50 ${x.p50.toFixed(2).padStart(7)} ms  p99 ${x.p99.toFixed(2).padStart(7)} ms  CPU µs/request: ${Object.entries(
          x.cpu,
        )
          .map(([p, us]) => `${p} ${perRequest(us)}`)
          .join(', ')}`;
      rows.push(
        fmt('direct', d),
        fmt('relay', re),
        fmt('tunnel', tu),
        `${label.padEnd(13)} ratio   ${ratio.toFixed(2)} x direct (goal ${big ? '0.7, throughput' : '0.5, req/s'}; per round: ${runs.tunnel
          .map((t, i) => (measure(t) / measure(runs.direct[i]!)).toFixed(2))
          .join(' ')}); two TCP relays: ${relayRatio.toFixed(2)} x direct; ` +
          `projected with a core per process: ${projected === undefined ? 'n/a' : `${projected.toFixed(2)} x direct`}`,
      );
    }
    console.log(
      `duplexwire tunnel vs direct: medians of ${rounds} alternating rounds of ${seconds} s, Node ${process.version}, ` +
        `closed loop (small: ${values['small-concurrency']} connections, 1 MiB: ${values['big-concurrency']}); ` +
        'CPU time per request of each process on the path',
    );
    for (const row of rows) console.log(row);
    console.log(JSON.stringify(summary));
    if (profile.length > 0) {
      // A profile is written when the process exits by itself: a graceful stop, not SIGKILL.
      await Promise.all(
        [proxy.proc, agent.proc].map(
          (proc) =>
            new Promise((resolve) => {
              proc.once('exit', resolve);
              proc.kill('SIGTERM');
            }),
        ),
      );
    }
  } finally {
    for (const child of children) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
