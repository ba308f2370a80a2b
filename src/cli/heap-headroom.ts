/**
 * Heap headroom for the command's servers (tunnel proxy and agent, bridge, WebSocket proxy): V8
 * is told to let the old generation grow to at least `HEADROOM` above what is live before its
 * next full garbage collection.
 *
 * Why: V8 plans the next full collection for when the old generation reaches its size after the
 * last one times a growing factor. These processes keep about 8 MB alive while moving data
 * through fresh buffers (every socket read is one), and with so small a limit V8 started marking
 * again as soon as a collection ended: 30 full collections a second while relaying 1 MiB
 * responses, a quarter of the tunnel proxy's and agent's CPU time (`npm run bench:tunnel`).
 * Starting node with `--initial-old-space-size=64` removes them, but no launcher can pass a V8
 * flag portably (NODE_OPTIONS refuses that one). The growing factor (`--heap-growing-percent`)
 * is read at every collection instead, so it is set after each one from what is live then: high
 * while the heap is small, and left to V8 (0) once a factor above V8's own largest (4) would no
 * longer be needed, so a large heap is never let grow more than V8 would.
 *
 * Only the command does this: it owns its process. A library must not change the garbage
 * collection of the application that loads it (README, "Performance").
 */
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';

/** Room for garbage between full collections. */
export const HEADROOM = 64 * 1024 * 1024;
/** V8's own growing factor is at most 4 (a percent of 300). */
const V8_MAX_PERCENT = 300;
/** A factor of 11 at most: below ~6 MB live, the limit is simply 11 x what is live. */
const MAX_PERCENT = 1000;

/**
 * The `--heap-growing-percent` that puts the next full collection `headroom` bytes above `live`
 * bytes, or 0 (V8 decides) when V8's own factor may already give that much.
 */
export function growingPercent(live: number, headroom = HEADROOM): number {
  const percent = Math.ceil((headroom / Math.max(live, 1)) * 100);
  return percent > V8_MAX_PERCENT ? Math.min(percent, MAX_PERCENT) : 0;
}

let observer: PerformanceObserver | undefined;

/** Keeps `HEADROOM` between the live heap and the next full collection, from now on. Idempotent. */
export function keepHeapHeadroom(): void {
  if (observer !== undefined) return;
  let current = -1;
  const update = (): void => {
    const percent = growingPercent(getHeapStatistics().used_heap_size);
    if (percent === current) return;
    current = percent;
    setFlagsFromString(`--heap-growing-percent=${percent}`);
  };
  update();
  observer = new PerformanceObserver((list) => {
    const entries = list.getEntries() as Array<{ readonly detail?: { readonly kind?: number } }>;
    if (entries.some((entry) => entry.detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR)) update();
  });
  observer.observe({ entryTypes: ['gc'] });
}
