/**
 * Client-to-server signals: one client sends windows of `window` signals, each followed by one
 * round trip that returns once the server has read them, with two windows in flight so the pipe
 * never runs dry. The server counts what it received; the meter counts what was sent.
 */
import type { GeneratorFactory } from './generator.ts';

const WINDOWS_IN_FLIGHT = 2;

export const signalThroughput: GeneratorFactory = ([client], config, meter) => {
  const payload = new Uint8Array(config.payloadSize).fill(5);
  let running = false;
  let loops: Promise<void>[] = [];
  const loop = async (): Promise<void> => {
    while (running) {
      await client!.signalWindow(payload, config.window);
      meter.count += config.window;
    }
  };
  return {
    start() {
      running = true;
      loops = Array.from({ length: WINDOWS_IN_FLIGHT }, () => loop().catch(() => {}));
    },
    async stop() {
      running = false;
      await Promise.race([Promise.all(loops), new Promise((resolve) => setTimeout(resolve, 5_000))]);
    },
  };
};
