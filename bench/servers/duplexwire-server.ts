/**
 * The duplexwire server the benchmark runs on either transport, imported as an application does
 * (the package name resolves to the compiled `dist/`, see README): requests named "echo" answered
 * with their payload, signals counted, fan-out through the public API (`conn.signal` for every
 * connection). Default options otherwise, as an application would start it.
 */
import { binary, Server, type ServerOptions, silentLogger } from 'duplexwire';
import { SIGNAL } from '../stacks.ts';
import type { BenchServer } from './control.ts';

export async function startDuplexwire(transport: ServerOptions['transport']): Promise<BenchServer> {
  let signals = 0;
  const server = new Server({
    transport,
    logger: silentLogger,
    onRequest: (_conn, message) => message.payload,
    onSignal: () => {
      signals++;
    },
  });
  await server.listen();
  return {
    port: server.address()!.port,
    connections: () => server.connections.size,
    signals: () => signals,
    buffered: () => {
      let total = 0;
      for (const conn of server.connections) total += conn.bufferedAmount;
      return total;
    },
    broadcast: (payload) => {
      const body = binary(payload);
      server.broadcast(SIGNAL, body);
    },
    close: () => server.shutdown({ timeout: 1_000 }),
  };
}
