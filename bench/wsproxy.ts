/**
 * The WebSocket proxy against a peer, in one run: echo round trips through `duplexwire wsproxy`
 * and through node-http-proxy (`http-proxy` with `ws: true`, what many Node deployments use to
 * proxy WebSockets), with the same upstream served directly and through a TCP relay (the floor of
 * any proxy: a process that pipes bytes and parses nothing).
 *
 *   npm run bench:wsproxy -- [--duration 3] [--rounds 3] [--clients 32] [--sizes 64,16384]
 *
 * Every server runs in its own process, from the compiled `dist/` for duplexwire (what ships):
 * the upstream (a `ws` echo server), the proxies and the relay; the load generator is this
 * process, a closed loop per client (one message in flight per connection). Each path reports
 * round trips/s, p50/p99, and the CPU time per round trip of its proxy process (Linux
 * /proc/<pid>/stat). No goal is asserted: the output is the ratio to http-proxy and to direct.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import httpProxy from 'http-proxy';
import { WebSocket, WebSocketServer } from 'ws';
import { staleBuild } from './dist-check.ts';
import { cpuMs, runRelay } from './procs.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The upstream, in its own process: echoes every message with its type. */
async function runUpstream(): Promise<void> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  wss.on('connection', (ws) => ws.on('message', (data, binary) => ws.send(data, { binary })));
  await new Promise((resolve) => wss.once('listening', resolve));
  process.stdout.write(`${(wss.address() as AddressInfo).port}\n`);
}

/** node-http-proxy in front of `port`, WebSockets included. */
async function runHttpProxy(port: number): Promise<void> {
  const proxy = httpProxy.createProxyServer({ target: `http://127.0.0.1:${port}`, ws: true });
  proxy.on('error', () => {});
  const server = createServer((req, res) => proxy.web(req, res));
  server.on('upgrade', (req, socket, head) => proxy.ws(req, socket, head));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
}

const children: ChildProcess[] = [];

/** Starts `node <args>` and resolves with the first output line matching `pattern`. */
async function start(args: string[], pattern: RegExp): Promise<{ proc: ChildProcess; match: RegExpMatchArray }> {
  const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let text = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${pattern} from ${args.join(' ')}: ${text}`)), 20_000);
    const feed = (chunk: Buffer): void => {
      text += chunk.toString();
      const match = pattern.exec(text);
      if (match !== null) {
        clearTimeout(timer);
        resolve({ proc, match });
      }
    };
    proc.stdout!.on('data', feed);
    proc.stderr!.on('data', feed);
    proc.once('exit', (code) => reject(new Error(`${args.join(' ')} exited with ${code}: ${text}`)));
  });
}

interface Reading {
  readonly rate: number;
  readonly p50: number;
  readonly p99: number;
  /** CPU µs per round trip of the process in the middle (proxy or relay). */
  readonly cpu: number | undefined;
}

/** `clients` connections, each a closed loop of `size`-byte binary echoes, for `seconds`. */
async function load(
  url: string,
  clients: number,
  size: number,
  seconds: number,
  middle: ChildProcess | undefined,
): Promise<Reading> {
  const payload = Buffer.alloc(size, 0x61);
  const sockets = await Promise.all(
    Array.from(
      { length: clients },
      () =>
        new Promise<WebSocket>((resolve, reject) => {
          const ws = new WebSocket(url, { perMessageDeflate: false });
          ws.once('open', () => resolve(ws));
          ws.once('error', reject);
        }),
    ),
  );
  const latencies: number[] = [];
  let measuring = false;
  let stopAt = 0;
  const loop = (ws: WebSocket): Promise<void> =>
    new Promise((resolve) => {
      let sentAt = 0;
      const send = (): void => {
        if (performance.now() >= stopAt) {
          ws.off('message', onMessage);
          resolve();
          return;
        }
        sentAt = performance.now();
        ws.send(payload, { binary: true });
      };
      const onMessage = (): void => {
        if (measuring) latencies.push(performance.now() - sentAt);
        send();
      };
      ws.on('message', onMessage);
      send();
    });
  // Warm-up, then the measured window.
  stopAt = performance.now() + 1000;
  await Promise.all(sockets.map(loop));
  measuring = true;
  const before = cpuMs(middle?.pid);
  const started = performance.now();
  stopAt = started + seconds * 1000;
  await Promise.all(sockets.map(loop));
  const elapsed = (performance.now() - started) / 1000;
  const after = cpuMs(middle?.pid);
  for (const ws of sockets) ws.terminate();
  const sorted = Float64Array.from(latencies).sort();
  const at = (p: number): number => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? Number.NaN;
  const n = Math.max(1, latencies.length);
  return {
    rate: latencies.length / elapsed,
    p50: at(0.5),
    p99: at(0.99),
    cpu: before === undefined || after === undefined ? undefined : ((after - before) * 1000) / n,
  };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      to: { type: 'string' },
      duration: { type: 'string', default: '3' },
      rounds: { type: 'string', default: '3' },
      clients: { type: 'string', default: '32' },
      sizes: { type: 'string', default: '64,16384' },
    },
  });
  if (values.role === 'upstream') return runUpstream();
  if (values.role === 'http-proxy') return runHttpProxy(Number(values.to));
  if (values.role === 'relay') return runRelay(Number(values.to));
  const stale = staleBuild();
  if (stale.length > 0) throw new Error(`dist/ is older than ${stale.slice(0, 3).join(', ')}: run npm run build`);
  try {
    const self = ['--import', 'tsx', 'bench/wsproxy.ts'];
    const upstream = await start([...self, '--role', 'upstream'], /^(\d+)$/m);
    const upstreamPort = Number(upstream.match[1]);
    const relay = await start([...self, '--role', 'relay', '--to', String(upstreamPort)], /^(\d+)$/m);
    const peer = await start([...self, '--role', 'http-proxy', '--to', String(upstreamPort)], /^(\d+)$/m);
    const ours = await start(
      [
        'dist/src/cli/main.js',
        'wsproxy',
        '--upstream',
        `ws://127.0.0.1:${upstreamPort}/`,
        '--listen',
        '127.0.0.1:0',
        '--max-connections',
        '100000',
      ],
      /"url":"ws:\/\/127\.0\.0\.1:(\d+)\//,
    );
    const paths = {
      direct: { port: upstreamPort, middle: undefined },
      relay: { port: Number(relay.match[1]), middle: relay.proc },
      'http-proxy': { port: Number(peer.match[1]), middle: peer.proc },
      duplexwire: { port: Number(ours.match[1]), middle: ours.proc },
    } as const;
    const clients = Number(values.clients);
    const seconds = Number(values.duration);
    const rounds = Number(values.rounds);
    console.log(
      `WebSocket proxies: echo round trips, ${clients} connections (one message in flight each), ` +
        `medians of ${rounds} alternating rounds of ${seconds} s, Node ${process.version}`,
    );
    const summary: Record<string, Record<string, number>> = {};
    for (const size of values.sizes.split(',').map(Number)) {
      const runs: Record<string, Reading[]> = Object.fromEntries(Object.keys(paths).map((name) => [name, []]));
      for (let round = 0; round < rounds; round++) {
        for (const [name, { port, middle }] of Object.entries(paths)) {
          runs[name]!.push(await load(`ws://127.0.0.1:${port}/`, clients, size, seconds, middle));
        }
      }
      const pick = (name: string): Reading => {
        const xs = runs[name]!;
        const cpus = xs.map((x) => x.cpu).filter((x): x is number => x !== undefined);
        return {
          rate: median(xs.map((x) => x.rate)),
          p50: median(xs.map((x) => x.p50)),
          p99: median(xs.map((x) => x.p99)),
          cpu: cpus.length === xs.length ? median(cpus) : undefined,
        };
      };
      const readings = Object.fromEntries(Object.keys(paths).map((name) => [name, pick(name)]));
      for (const [name, r] of Object.entries(readings)) {
        console.log(
          `${`${size} B`.padEnd(8)} ${name.padEnd(10)} ${r.rate.toFixed(0).padStart(8)} rt/s  p50 ${r.p50
            .toFixed(2)
            .padStart(6)} ms  p99 ${r.p99.toFixed(2).padStart(6)} ms  proxy CPU ${
            r.cpu === undefined ? '   -' : r.cpu.toFixed(1).padStart(5)
          } µs/rt`,
        );
      }
      const ours = readings.duplexwire!;
      const theirs = readings['http-proxy']!;
      const vsPeer = ours.rate / theirs.rate;
      const vsDirect = ours.rate / readings.direct!.rate;
      console.log(
        `${`${size} B`.padEnd(8)} duplexwire: ${vsPeer.toFixed(2)} x http-proxy's rate, ${vsDirect.toFixed(2)} x direct; ` +
          `p99 ${(ours.p99 / theirs.p99).toFixed(2)} x http-proxy's; CPU ${
            ours.cpu !== undefined && theirs.cpu !== undefined ? (ours.cpu / theirs.cpu).toFixed(2) : 'n/a'
          } x http-proxy's`,
      );
      summary[`${size}B`] = {
        rateVsHttpProxy: Number(vsPeer.toFixed(3)),
        rateVsDirect: Number(vsDirect.toFixed(3)),
        relayVsDirect: Number((readings.relay!.rate / readings.direct!.rate).toFixed(3)),
      };
    }
    console.log(JSON.stringify(summary));
  } finally {
    for (const child of children) child.kill('SIGKILL');
  }
}

await main();
