/**
 * The duplexwire server the benchmark runs on either transport, imported as an application does
 * (the package name resolves to the compiled `dist/`, see README): requests named "echo" answered
 * with their payload, signals counted, fan-out through the public API as the raw uWS server does
 * it: every connection subscribes to one topic, and `server.publish` sends to it (uWS's own
 * `app.publish` on the uWS transport, a send per connection on `ws`). Default options otherwise,
 * as an application would start it.
 */
import { binary, Server, type ServerOptions, silentLogger } from 'duplexwire';
import { SIGNAL } from '../stacks.ts';
import type { BenchServer } from './control.ts';

const TOPIC = 'fanout';

export async function startDuplexwire(transport: ServerOptions['transport']): Promise<BenchServer> {
  let signals = 0;
  const server = new Server({
    transport,
    logger: silentLogger,
    onRequest: (_conn, message) => message.payload,
    onSignal: () => {
      signals++;
    },
    onClientConnected: (conn) => {
      conn.subscribe(TOPIC);
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
      server.publish(TOPIC, SIGNAL, binary(payload));
    },
    close: () => server.shutdown({ timeout: 1_000 }),
  };
}
