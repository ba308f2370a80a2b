/**
 * Server memory per idle connection: RSS, V8 heap and external memory of the server process,
 * each after forced GC, before and after N idle clients connected, divided by N. A few clients
 * connect before the first reading, so code compiled and pools allocated on the first connection
 * are not charged to the N.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Case, Timing } from './cases.ts';
import { type ServerStats, startLoad, startServer, stopBoth } from './case-runner.ts';
import type { Metrics, RunOptions } from './result.ts';
import type { MemoryReport } from './servers/control.ts';
import type { Stack } from './stacks.ts';

const WARM_CONNECTIONS = 20;
const MEMORY_FLAGS = ['--max-semi-space-size=1', '--min-semi-space-size=1'];
const CONNECTED_DEADLINE_MS = 60_000;

export async function runMemoryCase(item: Case, timing: Timing, options: RunOptions): Promise<Metrics> {
  const stack = item.stack as Stack;
  const count = item.group.params.clients ?? timing.memoryConnections;
  // New space fixed at 1 MiB: otherwise V8 grows it (to 32 MiB) under the allocations of the
  // connection burst and keeps it, which adds ~16 KiB of RSS per connection that no connection
  // holds and hides what they do hold.
  const server = startServer(stack, { ...options, nodeFlags: [...options.nodeFlags, ...MEMORY_FLAGS] });
  const load = startLoad(stack, options);
  try {
    const [{ port }] = await Promise.all([server.ready, load.ready]);
    const connect = (clients: number) =>
      load.call(
        'connect',
        {
          stack,
          url: `ws://127.0.0.1:${String(port)}/`,
          generator: 'idle',
          clients,
          payloadSize: 0,
          inflight: 0,
          window: 0,
        },
        180_000,
      );
    const waitFor = async (connections: number): Promise<void> => {
      const deadline = performance.now() + CONNECTED_DEADLINE_MS;
      for (;;) {
        const stats = await server.call<ServerStats>('stats');
        if (stats.connections >= connections) return;
        if (performance.now() > deadline)
          throw new Error(`server sees ${stats.connections} of ${connections} connections`);
        await sleep(50);
      }
    };
    // Let the handshakes that follow the upgrade (AcceptConf, ClientConf, Socket.IO CONNECT) end.
    const settleMs = timing.mode === 'full' ? 1_000 : 200;

    await connect(WARM_CONNECTIONS);
    await waitFor(WARM_CONNECTIONS);
    await sleep(settleMs);
    const before = await server.call<MemoryReport>('memory');
    await connect(count);
    await waitFor(WARM_CONNECTIONS + count);
    await sleep(settleMs);
    const after = await server.call<MemoryReport>('memory', {}, 60_000);
    if (options.heapSnapshotDir !== undefined) {
      await server.call('heap-snapshot', { path: join(options.heapSnapshotDir, `${stack}.heapsnapshot`) }, 120_000);
    }
    const perConnKiB = (bytes: number): number => bytes / count / 1024;
    const heap = after.heapUsed - before.heapUsed;
    const native = after.rss - after.heapTotal - (before.rss - before.heapTotal);
    return {
      // What the connections hold: live V8 heap after GC (exact) plus memory outside the heap
      // (RSS less V8's committed pages; clipped at 0, as page-level noise can make it negative).
      // RSS alone moves by whole pages as V8 commits and releases them, which at ~2 KiB per
      // connection can hide or double the signal (bench/README.md).
      livePerConnKiB: perConnKiB(heap + Math.max(0, native)),
      rssPerConnKiB: perConnKiB(after.rss - before.rss),
      heapPerConnKiB: perConnKiB(heap),
      // RSS less the V8 heap's committed pages: what native code holds (sockets, uWS, buffers).
      nativePerConnKiB: perConnKiB(native),
      heapTotalPerConnKiB: perConnKiB(after.heapTotal - before.heapTotal),
      externalPerConnKiB: perConnKiB(after.external - before.external),
      baselineRssMiB: before.rss / 1024 / 1024,
      connections: after.connections - WARM_CONNECTIONS,
    };
  } finally {
    await load.call('stop', {}, 60_000).catch(() => {});
    await stopBoth(load, server);
  }
}
