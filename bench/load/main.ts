/**
 * The load generator process: opens the clients of one stack, runs one generator, and answers
 * the orchestrator's `connect`, `run`, `mark`, `read` and `stop`. It runs apart from the server
 * so that each side has its own event loop and its own CPU account.
 */
import { answer, ready } from '../ipc.ts';
import { STACKS, type Stack } from '../stacks.ts';
import { type BenchClient, CLIENTS } from './clients/index.ts';
import { fanout } from './fanout.ts';
import type { Generator, GeneratorFactory } from './generator.ts';
import { idle } from './idle.ts';
import { Meter } from './meter.ts';
import { requestReply } from './request-reply.ts';
import { signalThroughput } from './signal-throughput.ts';

const GENERATORS: Readonly<Record<string, GeneratorFactory>> = {
  'request-reply': requestReply,
  fanout,
  'signal-throughput': signalThroughput,
  idle,
};
export type GeneratorName = keyof typeof GENERATORS;

/** Latencies kept per window: 4 Mi samples (32 MiB), above any stack's rate for the window. */
const LATENCY_CAPACITY = 4 * 1024 * 1024;
/** Connection attempts in flight at once: stays below the servers' listen backlog. */
const CONNECT_CONCURRENCY = 50;

const clients: BenchClient[] = [];
let generator: Generator | undefined;
let meter = new Meter(0);

async function connectAll(stack: Stack, url: string, count: number): Promise<void> {
  const connect = await CLIENTS[stack]();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      next++;
      clients.push(await connect(url));
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, count) }, worker));
}

async function closeAll(): Promise<void> {
  const closing = clients.splice(0);
  for (let i = 0; i < closing.length; i += CONNECT_CONCURRENCY) {
    await Promise.all(closing.slice(i, i + CONNECT_CONCURRENCY).map((client) => client.close().catch(() => {})));
  }
}

async function stop(): Promise<void> {
  const running = generator;
  generator = undefined;
  await running?.stop();
  await closeAll();
}

answer(
  {
    connect: async (args) => {
      const stack = args.stack as Stack;
      if (!STACKS.includes(stack)) throw new Error(`unknown stack ${String(stack)}`);
      const factory = GENERATORS[String(args.generator)];
      if (factory === undefined) throw new Error(`unknown generator ${String(args.generator)}`);
      meter = new Meter(args.generator === 'request-reply' ? LATENCY_CAPACITY : 0);
      await connectAll(stack, String(args.url), Number(args.clients));
      generator = factory(
        clients,
        { payloadSize: Number(args.payloadSize), inflight: Number(args.inflight), window: Number(args.window) },
        meter,
      );
      return { connected: clients.length };
    },
    run: () => {
      generator?.start();
    },
    mark: () => {
      meter.mark();
    },
    read: () => meter.read(),
    stop,
  },
  stop,
);
ready();
