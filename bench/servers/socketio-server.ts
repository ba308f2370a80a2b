/**
 * The Socket.IO server the benchmark runs with either parser: websocket transport only (no
 * long-polling, no upgrade), "echo" events acknowledged with their payload, "sig" events counted,
 * fan-out with `io.emit` (which encodes and frames once for all clients).
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import { Server, type ServerOptions } from 'socket.io';
import { ECHO, SIGNAL } from '../stacks.ts';
import type { BenchServer } from './control.ts';

export async function startSocketIo(parser?: ServerOptions['parser']): Promise<BenchServer> {
  const http = createServer();
  const io = new Server(http, {
    transports: ['websocket'],
    serveClient: false,
    ...(parser === undefined ? {} : { parser }),
  });
  let signals = 0;
  io.on('connection', (socket) => {
    socket.on(ECHO, (data: unknown, ack: (data: unknown) => void) => ack(data));
    socket.on(SIGNAL, () => {
      signals++;
    });
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  return {
    port: (http.address() as { port: number }).port,
    connections: () => io.engine.clientsCount,
    signals: () => signals,
    buffered: () => {
      let total = 0;
      for (const socket of io.sockets.sockets.values()) {
        const conn = socket.conn as unknown as {
          writeBuffer: unknown[];
          transport: { socket?: { bufferedAmount?: number } };
        };
        // Packets engine.io holds back while the transport is not writable, plus what ws queued.
        total += conn.writeBuffer.length * 128 + (conn.transport.socket?.bufferedAmount ?? 0);
      }
      return total;
    },
    broadcast: (payload) => {
      io.emit(SIGNAL, payload);
    },
    close: async () => {
      io.disconnectSockets(true);
      await new Promise<void>((resolve) => io.close(() => resolve()));
    },
  };
}
