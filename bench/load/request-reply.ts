/**
 * Request-reply: one client keeps `inflight` round trips of `payloadSize` bytes going; the meter
 * counts each one and keeps its latency.
 */
import type { GeneratorFactory } from './generator.ts';

export const requestReply: GeneratorFactory = ([client], config, meter) => {
  let stop: (() => Promise<void>) | undefined;
  const payload = new Uint8Array(config.payloadSize).fill(7);
  return {
    start() {
      stop = client!.startRoundTrips(payload, config.inflight, (latencyMs) => meter.record(latencyMs));
    },
    stop: async () => stop?.(),
  };
};
