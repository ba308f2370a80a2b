/**
 * The Socket.IO client (websocket transport only), as an application uses it: `emit` with an
 * acknowledgement callback per request in flight, plain `emit` for signals, `on` for events.
 */
import { io, type ManagerOptions, type Socket } from 'socket.io-client';
import { ECHO, SIGNAL } from '../../stacks.ts';
import { type BenchClient, settled } from './types.ts';

const SYNC = Buffer.alloc(8);

export function socketIoClient(parser?: ManagerOptions['parser']): (url: string) => Promise<BenchClient> {
  return async (url) => {
    const socket: Socket = io(url, {
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      ...(parser === undefined ? {} : { parser }),
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('connect_error', (error) => reject(error));
    });
    return {
      startRoundTrips(payload, inflight, onRoundTrip) {
        const message = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
        let running = true;
        let outstanding = 0;
        const send = (): void => {
          const start = performance.now();
          outstanding++;
          socket.emit(ECHO, message, () => {
            outstanding--;
            onRoundTrip(performance.now() - start);
            if (running) send();
          });
        };
        for (let i = 0; i < inflight; i++) send();
        return async () => {
          running = false;
          await settled(() => outstanding === 0 || !socket.connected);
        };
      },
      async signalWindow(payload, count) {
        const message = Buffer.from(payload);
        for (let i = 0; i < count; i++) socket.emit(SIGNAL, message);
        await new Promise<void>((resolve) => socket.emit(ECHO, SYNC, () => resolve()));
      },
      onSignal(listener) {
        socket.on(SIGNAL, listener);
      },
      async close() {
        socket.disconnect();
      },
    };
  };
}
