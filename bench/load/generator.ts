/** What every load generator provides to the load process (`main.ts`). */
import type { BenchClient } from './clients/index.ts';
import type { Meter } from './meter.ts';

export interface LoadConfig {
  /** Bytes of each request, reply or signal payload. */
  readonly payloadSize: number;
  /** Round trips kept in flight (request-reply). */
  readonly inflight: number;
  /** Signals per flow-control window (signal throughput). */
  readonly window: number;
}

export interface Generator {
  /** Starts generating load (the warm-up begins). */
  start(): void;
  /** Stops and waits, bounded, for what is in flight. */
  stop(): Promise<void>;
}

export type GeneratorFactory = (clients: readonly BenchClient[], config: LoadConfig, meter: Meter) => Generator;
