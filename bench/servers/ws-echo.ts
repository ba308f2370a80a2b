/**
 * Server kind `ws-echo`: a raw `ws` server that echoes every binary message, except signals
 * (byte 0 = RAW_SIGNAL_TAG), which it only counts. Fan-out sends the same bytes to every client,
 * as the ws README's broadcast example does.
 */
import { once } from 'node:events';
import { type WebSocket, WebSocketServer } from 'ws';
import { RAW_SIGNAL_TAG } from '../stacks.ts';
import { serve } from './control.ts';

await serve(async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await once(wss, 'listening');
  let signals = 0;
  wss.on('connection', (ws: WebSocket) => {
    ws.on('message', (data: Buffer, isBinary) => {
      if (data[0] === RAW_SIGNAL_TAG) signals++;
      else ws.send(data, { binary: isBinary });
    });
  });
  return {
    port: (wss.address() as { port: number }).port,
    connections: () => wss.clients.size,
    signals: () => signals,
    buffered: () => {
      let total = 0;
      for (const ws of wss.clients) total += ws.bufferedAmount;
      return total;
    },
    broadcast: (payload) => {
      for (const ws of wss.clients) ws.send(payload, { binary: true });
    },
    close: () => {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    },
  };
});
