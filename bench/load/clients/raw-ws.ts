/**
 * The client of the raw echo stacks (`ws-echo`, `uws-echo`): a `ws` WebSocket. Echoes come back in
 * order on one connection, so round trips are matched with a FIFO of send times, which costs
 * nothing per message beyond a typed-array write.
 */
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { RAW_SIGNAL_TAG, RAW_SYNC_TAG } from '../../stacks.ts';
import { type BenchClient, settled } from './types.ts';

export async function connectRawWs(url: string): Promise<BenchClient> {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  await Promise.race([
    once(ws, 'open'),
    once(ws, 'error').then(([error]) => {
      throw error;
    }),
  ]);
  ws.on('error', () => {});
  let onMessage: () => void = () => {};
  ws.on('message', () => onMessage());
  const sync = Buffer.from([RAW_SYNC_TAG, 0, 0, 0, 0, 0, 0, 0]);
  const syncWaiters: Array<() => void> = [];

  return {
    startRoundTrips(payload, inflight, onRoundTrip) {
      const message = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
      const sentAt = new Float64Array(inflight);
      let head = 0;
      let tail = 0;
      let outstanding = 0;
      let running = true;
      const send = (): void => {
        sentAt[tail] = performance.now();
        tail = tail + 1 === inflight ? 0 : tail + 1;
        outstanding++;
        ws.send(message);
      };
      onMessage = () => {
        onRoundTrip(performance.now() - sentAt[head]!);
        head = head + 1 === inflight ? 0 : head + 1;
        outstanding--;
        if (running) send();
      };
      for (let i = 0; i < inflight; i++) send();
      return async () => {
        running = false;
        await settled(() => outstanding === 0 || ws.readyState !== WebSocket.OPEN);
      };
    },
    async signalWindow(payload, count) {
      const message = Buffer.from(payload);
      message[0] = RAW_SIGNAL_TAG;
      for (let i = 0; i < count; i++) ws.send(message);
      // Several windows may be in flight: their syncs come back in order.
      onMessage = () => syncWaiters.shift()?.();
      await new Promise<void>((resolve) => {
        syncWaiters.push(resolve);
        ws.send(sync);
      });
    },
    onSignal(listener) {
      onMessage = listener;
    },
    async close() {
      if (ws.readyState === WebSocket.CLOSED) return;
      const closed = once(ws, 'close');
      ws.close();
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 2_000))]);
      ws.terminate();
    },
  };
}
