/**
 * The HTTP tunnel against the same target served directly, in one run: requests/s, latency
 * percentiles and throughput for small responses and for 1 MiB responses.
 *
 *   node --import tsx bench/tunnel.ts [--duration 3] [--rounds 3] [--small-concurrency 32] [--big-concurrency 8]
 *
 * Standalone (not part of the bench harness in bench/run.ts). Every server runs in its own
 * process, as in production: the target (a plain Node HTTP server), `duplexwire tunnel proxy` and
 * `duplexwire tunnel agent`; the load generator is this process, a closed loop of keep-alive
 * connections (one request in flight per connection). Goals (issue 6): small >= 0.5 x direct
 * requests/s, 1 MiB >= 0.7 x direct throughput.
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

function start(args: string[]): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
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
}

/** A closed loop: `concurrency` keep-alive connections, each with one request in flight, for `seconds`. */
async function load(
  port: number,
  path: string,
  headers: Record<string, string>,
  concurrency: number,
  seconds: number,
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
  const started = performance.now();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) await once();
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  agent.destroy();
  const sorted = Float64Array.from(latencies).sort();
  return { requests: latencies.length, seconds: elapsed, bytes, errors, latencies: sorted };
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function describe(r: Result): { rps: number; mibps: number; p50: number; p99: number } {
  return {
    rps: r.requests / r.seconds,
    mibps: r.bytes / r.seconds / 1024 / 1024,
    p50: percentile(r.latencies, 50),
    p99: percentile(r.latencies, 99),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      duration: { type: 'string', default: '3' },
      rounds: { type: 'string', default: '3' },
      'small-concurrency': { type: 'string', default: '32' },
      'big-concurrency': { type: 'string', default: '8' },
    },
  });
  if (values.role === 'target') return runTarget();
  const seconds = Number(values.duration);
  const dir = await mkdtemp(join(tmpdir(), 'bench-tunnel-'));
  try {
    const token = generateToken();
    const tokens = join(dir, 'tokens.json');
    const tokenFile = join(dir, 'token');
    await writeFile(tokens, JSON.stringify({ bench: tokenDigest(token) }));
    await writeFile(tokenFile, token);
    const target = start(['bench/tunnel.ts', '--role', 'target']);
    const targetPort = Number((await target.waitFor(/^(\d+)$/m))[1]);
    const proxy = start([
      'src/cli/main.ts',
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
      'src/cli/main.ts',
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
    const tunnelHeaders = { 'x-duplexwire-client-id': 'bench' };
    const rounds = Number(values.rounds);
    const rows: string[] = [];
    const ratios: Record<string, number> = {};
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    for (const [label, path, concurrency] of [
      ['small (17 B)', '/small', Number(values['small-concurrency'])],
      ['1 MiB', '/big', Number(values['big-concurrency'])],
    ] as const) {
      // Direct and tunnel alternate, and medians are compared: on a shared machine a burst of
      // load elsewhere then hits both sides rather than one.
      const direct: Array<ReturnType<typeof describe>> = [];
      const tunnel: Array<ReturnType<typeof describe>> = [];
      for (let round = 0; round < rounds; round++) {
        direct.push(describe(await load(targetPort, path, {}, concurrency, seconds)));
        tunnel.push(describe(await load(proxyPort, path, tunnelHeaders, concurrency, seconds)));
      }
      const pick = (runs: Array<ReturnType<typeof describe>>) => ({
        rps: median(runs.map((r) => r.rps)),
        mibps: median(runs.map((r) => r.mibps)),
        p50: median(runs.map((r) => r.p50)),
        p99: median(runs.map((r) => r.p99)),
      });
      const d = pick(direct);
      const tu = pick(tunnel);
      const ratio = path === '/big' ? tu.mibps / d.mibps : tu.rps / d.rps;
      ratios[label] = Number(ratio.toFixed(3));
      const fmt = (name: string, x: ReturnType<typeof describe>): string =>
        `${label.padEnd(13)} ${name.padEnd(7)} ${x.rps.toFixed(0).padStart(8)} req/s  ${x.mibps.toFixed(1).padStart(8)} MiB/s  p50 ${x.p50.toFixed(2).padStart(7)} ms  p99 ${x.p99.toFixed(2).padStart(7)} ms`;
      rows.push(
        fmt('direct', d),
        fmt('tunnel', tu),
        `${label.padEnd(13)} ratio   ${ratio.toFixed(2)} x direct (goal ${path === '/big' ? '0.7, throughput' : '0.5, req/s'}; per round: ${tunnel
          .map((t, i) => (path === '/big' ? t.mibps / direct[i]!.mibps : t.rps / direct[i]!.rps).toFixed(2))
          .join(' ')})`,
      );
    }
    console.log(
      `duplexwire tunnel vs direct: medians of ${rounds} alternating rounds of ${seconds} s, Node ${process.version}, ` +
        `closed loop (small: ${values['small-concurrency']} connections, 1 MiB: ${values['big-concurrency']})`,
    );
    for (const row of rows) console.log(row);
    console.log(JSON.stringify({ ratios }));
  } finally {
    for (const child of children) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
