/**
 * The duplexwire client, as an application uses it: `await client.request()` in a loop per
 * request in flight, `client.signal()`, the 'signal' event. Default options (10 s request timeout
 * included), reconnect off.
 */
import { binary, Client, silentLogger } from 'duplexwire/client';
import { wsClientTransport } from 'duplexwire/transports/ws';
import { ECHO, SIGNAL } from '../../stacks.ts';
import { type BenchClient, settled } from './types.ts';

const SYNC = binary(new Uint8Array(8));

export async function connectDuplexwire(url: string): Promise<BenchClient> {
  const client = new Client(url, { transport: wsClientTransport(), reconnect: false, logger: silentLogger });
  await client.connect();
  return {
    startRoundTrips(payload, inflight, onRoundTrip) {
      const body = binary(payload);
      let running = true;
      let loops = inflight;
      const loop = async (): Promise<void> => {
        try {
          while (running) {
            const start = performance.now();
            await client.request(ECHO, body);
            onRoundTrip(performance.now() - start);
          }
        } finally {
          loops--;
        }
      };
      for (let i = 0; i < inflight; i++) loop().catch(() => {});
      return async () => {
        running = false;
        await settled(() => loops === 0);
      };
    },
    async signalWindow(payload, count) {
      const body = binary(payload);
      for (let i = 0; i < count; i++) client.signal(SIGNAL, body);
      await client.request(ECHO, SYNC);
    },
    onSignal(listener) {
      client.on('signal', listener);
    },
    close: () => client.close(),
  };
}
