/**
 * One connected client of some stack, driven the way that stack is meant to be used: the load
 * generators only speak this interface, each stack implements it with its own client library.
 */
export interface BenchClient {
  /**
   * Keeps `inflight` round trips of `payload` going until the returned function is called, and
   * reports each one's latency in milliseconds (measured with `performance.now()`). The returned
   * function resolves once the last round trip settled (or its deadline passed).
   */
  startRoundTrips(payload: Uint8Array, inflight: number, onRoundTrip: (latencyMs: number) => void): () => Promise<void>;
  /**
   * Sends `count` client-to-server signals carrying `payload`, then one round trip that returns
   * once the server has read them all (flow control at the application level, the same for every
   * stack).
   */
  signalWindow(payload: Uint8Array, count: number): Promise<void>;
  /** Calls `listener` for each server-to-client signal. */
  onSignal(listener: () => void): void;
  close(): Promise<void>;
}

/** Opens one client of a stack to `url` (e.g. `ws://127.0.0.1:1234/`). */
export type ConnectClient = (url: string) => Promise<BenchClient>;

/** How long stopping waits for round trips still in flight before giving up on them. */
export const STOP_DEADLINE_MS = 5_000;

/** Resolves when `done()` is true, polling each turn, or after `deadline` ms. */
export async function settled(done: () => boolean, deadline = STOP_DEADLINE_MS): Promise<void> {
  const end = performance.now() + deadline;
  while (!done() && performance.now() < end) await new Promise((resolve) => setTimeout(resolve, 5));
}
