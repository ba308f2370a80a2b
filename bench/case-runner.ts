/**
 * Runs one load case (request-reply, fan-out, signal throughput): a server kind and a load
 * generator in two processes on 127.0.0.1, a fixed warm-up, a fixed measured window, then both
 * stopped whatever happened. CPU time comes from each process's own `process.cpuUsage()`, read
 * at the two ends of the window.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { startBusyLoops } from './busy-loop.ts';
import type { Case, Timing } from './cases.ts';
import { Child } from './child.ts';
import type { MeterReading } from './load/meter.ts';
import type { Metrics, RunOptions } from './result.ts';
import type { Stack } from './stacks.ts';
import type { Syscalls } from './syscalls.ts';

export interface ServerStats {
  readonly cpu: NodeJS.CpuUsage;
  readonly syscalls: Syscalls | null;
  readonly now: number;
  readonly signals: number;
  readonly connections: number;
}

const SERVERS = new URL('./servers/', import.meta.url);
const LOAD = new URL('./load/main.ts', import.meta.url);

export function startServer(stack: Stack, options: RunOptions): Child {
  return new Child(new URL(`${stack}.ts`, SERVERS), [], { label: `server ${stack}`, nodeFlags: options.nodeFlags });
}

export function startLoad(stack: Stack, options: RunOptions): Child {
  return new Child(LOAD, [], { label: `load ${stack}`, nodeFlags: options.nodeFlags });
}

/** Stops the load first (its clients close cleanly), then the server. */
export async function stopBoth(load: Child, server: Child): Promise<void> {
  await load.stop();
  await server.stop();
}

function cpuUs(later: NodeJS.CpuUsage, earlier: NodeJS.CpuUsage): number {
  return later.user - earlier.user + (later.system - earlier.system);
}

const GENERATOR = { 'request-reply': 'request-reply', fanout: 'fanout', signals: 'signal-throughput' } as const;

export async function runLoadCase(item: Case, timing: Timing, options: RunOptions): Promise<Metrics> {
  const kind = item.group.kind;
  if (kind !== 'request-reply' && kind !== 'fanout' && kind !== 'signals') throw new Error(`not a load case: ${kind}`);
  const stack = item.stack as Stack;
  const params = item.group.params;
  const server = startServer(stack, options);
  const load = startLoad(stack, options);
  let stopBusy: (() => Promise<void>) | undefined;
  try {
    const [{ port }] = await Promise.all([server.ready, load.ready]);
    await load.call(
      'connect',
      {
        stack,
        url: `ws://127.0.0.1:${String(port)}/`,
        generator: GENERATOR[kind],
        clients: params.clients ?? 1,
        payloadSize: params.payloadSize ?? 64,
        inflight: params.inflight ?? 1,
        window: params.window ?? 0,
      },
      120_000,
    );
    if (params.awake) stopBusy = await startBusyLoops();
    if (kind === 'fanout') await server.call('fanout', { size: params.payloadSize ?? 64 });
    await load.call('run');
    await sleep(timing.warmupMs);
    const [before] = await Promise.all([server.call<ServerStats>('stats'), load.call('mark')]);
    await sleep(timing.measureMs);
    const [after, reading] = await Promise.all([server.call<ServerStats>('stats'), load.call<MeterReading>('read')]);
    if (kind === 'fanout') await server.call('fanout-stop');
    await load.call('stop', {}, 20_000);

    const serverCpu = cpuUs(after.cpu, before.cpu);
    const serverSyscalls =
      after.syscalls === null || before.syscalls === null
        ? null
        : {
            reads: after.syscalls.reads - before.syscalls.reads,
            writes: after.syscalls.writes - before.syscalls.writes,
          };
    if (kind === 'signals') {
      const received = after.signals - before.signals;
      const seconds = (after.now - before.now) / 1_000;
      return {
        rate: received / seconds,
        cpuUsPerOp: received === 0 ? null : (serverCpu + reading.cpuUs) / received,
        serverCpuUsPerOp: received === 0 ? null : serverCpu / received,
        serverReadsPerOp: serverSyscalls === null || received === 0 ? null : serverSyscalls.reads / received,
        sent: reading.count,
        received,
      };
    }
    const count = reading.count;
    const seconds = reading.elapsedMs / 1_000;
    const perOp = (us: number): number | null => (count === 0 ? null : us / count);
    const metrics: Record<string, number | null> = {
      rate: count / seconds,
      cpuUsPerOp: perOp(serverCpu + reading.cpuUs),
      serverCpuUsPerOp: perOp(serverCpu),
      clientCpuUsPerOp: perOp(reading.cpuUs),
      serverCpuPct: (serverCpu / (reading.elapsedMs * 1_000)) * 100,
      clientCpuPct: (reading.cpuUs / (reading.elapsedMs * 1_000)) * 100,
      serverWritesPerOp: serverSyscalls === null ? null : perOp(serverSyscalls.writes),
      serverReadsPerOp: serverSyscalls === null ? null : perOp(serverSyscalls.reads),
      clientWritesPerOp: reading.syscalls === null ? null : perOp(reading.syscalls.writes),
      clientReadsPerOp: reading.syscalls === null ? null : perOp(reading.syscalls.reads),
      count,
    };
    if (kind === 'request-reply') {
      metrics.p50Us = reading.p50Ms === null ? null : reading.p50Ms * 1_000;
      metrics.p99Us = reading.p99Ms === null ? null : reading.p99Ms * 1_000;
      metrics.maxUs = reading.maxMs === null ? null : reading.maxMs * 1_000;
    }
    return metrics;
  } finally {
    await stopBusy?.();
    await stopBoth(load, server);
  }
}
