/**
 * Server-to-client fan-out: many clients, each counting the signals it receives. The server sends
 * (orchestrator's `fanout` op); the meter counts deliveries across all clients.
 */
import type { GeneratorFactory } from './generator.ts';

export const fanout: GeneratorFactory = (clients, _config, meter) => {
  const delivered = (): void => {
    meter.count++;
  };
  for (const client of clients) client.onSignal(delivered);
  return { start() {}, stop: async () => {} };
};
