/**
 * Server kind `uws-echo`: a raw uWebSockets.js server that echoes every binary message from
 * inside its message callback, except signals (byte 0 = RAW_SIGNAL_TAG), which it only counts.
 * Fan-out uses uWS's own broadcast, `app.publish` to a topic every socket joined.
 */
import { createRequire } from 'node:module';
import type * as UWS from 'uWebSockets.js';
import { RAW_SIGNAL_TAG } from '../stacks.ts';
import { serve } from './control.ts';

const uWS = createRequire(import.meta.url)('uWebSockets.js') as typeof UWS;
const TOPIC = 'fanout';

await serve(async () => {
  const sockets = new Set<UWS.WebSocket<unknown>>();
  let signals = 0;
  const app = uWS.App().ws('/*', {
    compression: uWS.DISABLED,
    maxPayloadLength: 1024 * 1024,
    maxBackpressure: 64 * 1024 * 1024,
    idleTimeout: 0,
    sendPingsAutomatically: false,
    open: (ws) => {
      sockets.add(ws);
      ws.subscribe(TOPIC);
    },
    message: (ws, message, isBinary) => {
      if (message.byteLength > 0 && new Uint8Array(message, 0, 1)[0] === RAW_SIGNAL_TAG) signals++;
      else ws.send(message, isBinary);
    },
    close: (ws) => {
      sockets.delete(ws);
    },
  });
  const listenSocket = await new Promise<UWS.us_listen_socket>((resolve, reject) => {
    app.listen('127.0.0.1', 0, (socket) =>
      socket === false ? reject(new Error('uWS could not listen')) : resolve(socket),
    );
  });
  return {
    port: uWS.us_socket_local_port(listenSocket as unknown as UWS.us_socket),
    connections: () => sockets.size,
    signals: () => signals,
    buffered: () => {
      let total = 0;
      for (const ws of sockets) total += ws.getBufferedAmount();
      return total;
    },
    broadcast: (payload) => {
      app.publish(TOPIC, payload, true);
    },
    close: () => {
      uWS.us_listen_socket_close(listenSocket);
      for (const ws of [...sockets]) ws.close();
    },
  };
});
