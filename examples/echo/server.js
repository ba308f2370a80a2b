/**
 * An echo server: the `echo` request is answered with its own payload (same bytes, same encoding),
 * and a signal is sent back to the client that sent it.
 *
 *   node examples/echo/server.js                 # ws://127.0.0.1:8080/
 *   HOST=0.0.0.0 PORT=9000 node examples/echo/server.js
 */
import { payloadText, RequestError, Server } from 'duplexwire';
import { wsTransport } from 'duplexwire/transports/ws';

const host = process.env.HOST ?? '127.0.0.1';
const port = Number(process.env.PORT ?? 8080); // 0 picks a free port

const server = new Server({
  transport: wsTransport({ host, port }),
  onRequest: (_conn, msg) => {
    if (msg.name === 'echo') return msg.payload;
    // The client sees this code and message; any other error becomes a detail-free internal error.
    throw new RequestError('UNKNOWN_REQUEST', `no request named ${JSON.stringify(msg.name)}`);
  },
  onSignal: (conn, msg) => {
    console.log(`signal ${msg.name} from ${conn.id}: ${payloadText(msg.payload)}`);
    conn.signal(msg.name, msg.payload);
  },
});

await server.listen();
console.log(`listening on ws://${host}:${server.address().port}/`);

// Ctrl-C: refuse new connections, let requests in flight finish, close everyone with 1001.
for (const name of ['SIGINT', 'SIGTERM']) {
  process.once(name, () => server.shutdown({ timeout: 5_000 }).then(() => process.exit(0)));
}
