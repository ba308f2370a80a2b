import { type Syscalls, syscalls } from '../syscalls.ts';

/**
 * Counts operations and keeps their latencies for one measured window. Latencies go into a
 * typed array allocated once, up front, so recording costs a store and never allocates or
 * triggers GC inside the window; percentiles are computed once the window is over.
 */

export interface MeterReading {
  /** Operations completed in the window. */
  readonly count: number;
  readonly elapsedMs: number;
  /** CPU time (user + system) this process used in the window, in microseconds. */
  readonly cpuUs: number;
  /** Read and write system calls this process made in the window (null off Linux). */
  readonly syscalls: Syscalls | null;
  /** Latencies recorded (at most the capacity; the count keeps going past it). */
  readonly samples: number;
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  readonly maxMs: number | null;
}

export class Meter {
  count = 0;
  readonly #latencies: Float64Array;
  #recorded = 0;
  #startedAt = performance.now();
  #cpuAtStart = process.cpuUsage();
  #syscallsAtStart = syscalls();

  /** `capacity` latencies are kept per window (0 when only counting). */
  constructor(capacity: number) {
    this.#latencies = new Float64Array(capacity);
  }

  /** One operation that took `latencyMs`. */
  record(latencyMs: number): void {
    if (this.#recorded < this.#latencies.length) this.#latencies[this.#recorded] = latencyMs;
    this.#recorded++;
    this.count++;
  }

  /** Starts the measured window: what happened before (warm-up) is forgotten. */
  mark(): void {
    this.count = 0;
    this.#recorded = 0;
    this.#startedAt = performance.now();
    this.#cpuAtStart = process.cpuUsage();
    this.#syscallsAtStart = syscalls();
  }

  /** Ends the window. */
  read(): MeterReading {
    const elapsedMs = performance.now() - this.#startedAt;
    const cpu = process.cpuUsage(this.#cpuAtStart);
    const now = syscalls();
    const before = this.#syscallsAtStart;
    const kept = Math.min(this.#recorded, this.#latencies.length);
    const sorted = this.#latencies.slice(0, kept).sort();
    return {
      count: this.count,
      elapsedMs,
      cpuUs: cpu.user + cpu.system,
      syscalls:
        now === null || before === null
          ? null
          : { reads: now.reads - before.reads, writes: now.writes - before.writes },
      samples: kept,
      p50Ms: percentile(sorted, 0.5),
      p99Ms: percentile(sorted, 0.99),
      maxMs: kept === 0 ? null : sorted[kept - 1]!,
    };
  }
}

/** Nearest-rank percentile of sorted samples. */
function percentile(sorted: Float64Array, q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}
