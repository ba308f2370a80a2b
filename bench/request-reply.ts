/**
 * First request-reply benchmark: duplexwire over the ws transport against a raw `ws` echo, each
 * server in its own process, the load generator in this one, on 127.0.0.1.
 *
 *   node --import tsx bench/request-reply.ts [--seconds 3] [--inflight 128] [--size 64]
 *
 * Prints round trips per second and the ratio duplexwire / raw ws from the same run. No timing is
 * asserted anywhere: this machine is shared and noisy. (The full suite against peers is issue 5.)
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { parseArgs } from 'node:util';
import { WebSocket, WebSocketServer } from 'ws';
import { binary } from '../protocol/payload.ts';
import { Client } from '../src/client/client.ts';
import { silentLogger } from '../src/logger.ts';
import { Server } from '../src/server/server.ts';
import { wsClientTransport, wsTransport } from '../transports/ws.ts';

type Kind = 'duplexwire' | 'ws-echo';

async function serve(kind: Kind): Promise<void> {
  if (kind === 'ws-echo') {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    await once(wss, 'listening');
    wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
    process.stdout.write(`${(wss.address() as { port: number }).port}\n`);
  } else {
    const server = new Server({
      transport: wsTransport({ host: '127.0.0.1', port: 0 }),
      logger: silentLogger,
      concurrency: 256,
      onRequest: (_conn, msg) => msg.payload,
    });
    await server.listen();
    process.stdout.write(`${server.address()!.port}\n`);
  }
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

async function startServer(kind: Kind): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [...process.execArgv, new URL(import.meta.url).pathname, 'serve', kind], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const [chunk] = (await once(child.stdout!, 'data')) as [Buffer];
  return { child, port: Number(chunk.toString().trim()) };
}

interface Result {
  readonly kind: Kind;
  readonly perSecond: number;
}

async function measure(kind: Kind, seconds: number, inflight: number, size: number): Promise<Result> {
  const { child, port } = await startServer(kind);
  const payload = new Uint8Array(size).fill(7);
  let count = 0;
  let running = true;
  let stop: () => Promise<void>;
  if (kind === 'ws-echo') {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
    await once(ws, 'open');
    ws.on('message', () => {
      count++;
      if (running) ws.send(payload);
    });
    for (let i = 0; i < inflight; i++) ws.send(payload);
    stop = async () => {
      ws.terminate();
    };
  } else {
    const client = new Client(`ws://127.0.0.1:${port}/`, {
      transport: wsClientTransport(),
      reconnect: false,
      logger: silentLogger,
    });
    await client.connect();
    const body = binary(payload);
    const loop = async (): Promise<void> => {
      while (running) {
        await client.request('echo', body);
        count++;
      }
    };
    const loops = Array.from({ length: inflight }, loop);
    stop = async () => {
      await Promise.allSettled(loops);
      await client.close();
    };
  }
  await new Promise((resolve) => setTimeout(resolve, 1_000)); // warm-up
  const start = count;
  const t0 = performance.now();
  await new Promise((resolve) => setTimeout(resolve, seconds * 1_000));
  const done = count - start;
  const elapsed = (performance.now() - t0) / 1_000;
  running = false;
  await stop();
  child.stdin!.end();
  await once(child, 'exit');
  return { kind, perSecond: done / elapsed };
}

async function main(): Promise<void> {
  const [mode, kind] = process.argv.slice(2);
  if (mode === 'serve') return serve(kind as Kind);
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '3' },
      inflight: { type: 'string', default: '128' },
      size: { type: 'string', default: '64' },
    },
  });
  const seconds = Number(values.seconds);
  const inflight = Number(values.inflight);
  const size = Number(values.size);
  const raw = await measure('ws-echo', seconds, inflight, size);
  const dw = await measure('duplexwire', seconds, inflight, size);
  console.log(`request-reply, ${size} B payload, ${inflight} in flight, ${seconds} s measured`);
  console.log(`  raw ws echo          ${Math.round(raw.perSecond).toLocaleString('en')} round trips/s`);
  console.log(`  duplexwire over ws   ${Math.round(dw.perSecond).toLocaleString('en')} round trips/s`);
  console.log(`  ratio duplexwire / raw ws: ${(dw.perSecond / raw.perSecond).toFixed(2)}`);
}

await main();
