/**
 * What every server kind shares: the orchestrator's requests (CPU time, memory after GC,
 * fan-out), answered over IPC. A kind only says how to listen, count and broadcast.
 */
import { writeHeapSnapshot } from 'node:v8';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { answer, fail, ready } from '../ipc.ts';
import { syscalls } from '../syscalls.ts';

/** One running server of some kind. */
export interface BenchServer {
  readonly port: number;
  /** Open connections. */
  connections(): number;
  /** Client-to-server signals received so far. */
  signals(): number;
  /** Bytes queued toward clients and not yet written (fan-out pacing). */
  buffered(): number;
  /** Sends one signal carrying `payload` to every client, the way this stack broadcasts. */
  broadcast(payload: Uint8Array): void;
  /** Stops listening and drops every connection. */
  close(): Promise<void> | void;
}

/**
 * Fan-out keeps sending rounds while less than this many bytes wait in user space for all the
 * clients together: the clients set the pace, and memory stays bounded.
 */
const FANOUT_BUFFERED_LIMIT = 1024 * 1024;
/** Rounds sent per turn of the event loop at most, so I/O and IPC keep being served. */
const FANOUT_ROUNDS_PER_TURN = 4;

export interface MemoryReport {
  readonly rss: number;
  readonly heapTotal: number;
  readonly heapUsed: number;
  readonly external: number;
  readonly arrayBuffers: number;
  readonly connections: number;
}

async function collectGarbage(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  // Several passes with turns between them: weak callbacks and finalizers free more on each.
  for (let i = 0; i < 4; i++) {
    gc();
    await nextTurn();
  }
}

/** Starts a server with `start`, reports its port, then answers the orchestrator until told to exit. */
export async function serve(start: () => Promise<BenchServer>): Promise<void> {
  let server: BenchServer;
  try {
    server = await start();
  } catch (error) {
    fail(error);
  }
  let fanoutPayload: Uint8Array | undefined;
  let rounds = 0;

  const pump = (): void => {
    const payload = fanoutPayload;
    if (payload === undefined) return;
    for (let i = 0; i < FANOUT_ROUNDS_PER_TURN && server.buffered() < FANOUT_BUFFERED_LIMIT; i++) {
      server.broadcast(payload);
      rounds++;
    }
    setImmediate(pump);
  };

  answer(
    {
      stats: () => ({
        cpu: process.cpuUsage(),
        syscalls: syscalls(),
        now: performance.now(),
        signals: server.signals(),
        connections: server.connections(),
        rounds,
      }),
      memory: async (): Promise<MemoryReport> => {
        await collectGarbage();
        const usage = process.memoryUsage();
        return {
          rss: usage.rss,
          heapTotal: usage.heapTotal,
          heapUsed: usage.heapUsed,
          external: usage.external,
          arrayBuffers: usage.arrayBuffers,
          connections: server.connections(),
        };
      },
      'heap-snapshot': async (args) => {
        await collectGarbage();
        return writeHeapSnapshot(String(args.path));
      },
      fanout: (args) => {
        const size = Number(args.size);
        fanoutPayload = new Uint8Array(size).fill(9);
        pump();
      },
      'fanout-stop': () => {
        fanoutPayload = undefined;
      },
    },
    async () => {
      fanoutPayload = undefined;
      await server.close();
    },
  );
  ready({ port: server.port });
}
