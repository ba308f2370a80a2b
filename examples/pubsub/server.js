/**
 * Prices by topic. Clients ask for the symbols they want; every 100 ms the server publishes a new
 * price for each symbol somebody watches, to the watchers only, encoded once per symbol.
 *   subscribe    (a symbol)  -> its current price, as JSON; from then on `price` signals for it
 *   unsubscribe  (a symbol)  -> an empty reply; no more signals for it
 * Subscriptions belong to a connection: a client that reconnects subscribes again.
 *
 *   node examples/pubsub/server.js               # ws://127.0.0.1:8080/
 */
import { payloadText, RequestError, Server, utf8 } from 'duplexwire';
import { wsTransport } from 'duplexwire/transports/ws';

const host = process.env.HOST ?? '127.0.0.1';
const port = Number(process.env.PORT ?? 8080); // 0 picks a free port

// The topics exist up front, and only these: a client cannot make the server keep topics of its choosing.
const prices = new Map([
  ['ACME', 100],
  ['GLOBEX', 42],
  ['INITECH', 7.5],
  ['UMBRELLA', 250],
]);
const ticks = new Map([...prices.keys()].map((symbol) => [symbol, 0]));
const topic = (symbol) => `price:${symbol}`;

function symbolOf(msg) {
  const symbol = payloadText(msg.payload);
  if (!prices.has(symbol)) {
    throw new RequestError(
      'UNKNOWN_SYMBOL',
      `no symbol ${JSON.stringify(symbol)}; try ${[...prices.keys()].join(', ')}`,
    );
  }
  return symbol;
}

const quote = (symbol) => ({ symbol, price: prices.get(symbol), tick: ticks.get(symbol) });

const server = new Server({
  transport: wsTransport({ host, port }),
  maxMessageSize: 4 * 1024, // requests here are a few bytes
  maxTopicsPerConnection: prices.size, // the default (1024) would do too: a client can only pick listed symbols
  onRequest: (conn, msg) => {
    switch (msg.name) {
      case 'subscribe': {
        const symbol = symbolOf(msg);
        conn.subscribe(topic(symbol));
        return utf8(JSON.stringify(quote(symbol)));
      }
      case 'unsubscribe':
        conn.unsubscribe(topic(symbolOf(msg)));
        return;
      default:
        throw new RequestError('UNKNOWN_REQUEST', `no request named ${JSON.stringify(msg.name)}`);
    }
  },
});

const ticker = setInterval(() => {
  for (const [symbol, price] of prices) {
    if (server.subscribers(topic(symbol)).size === 0) continue; // nobody watches: no work
    const next = Math.max(0.01, Math.round(price * (1 + (Math.random() - 0.5) / 50) * 100) / 100);
    prices.set(symbol, next);
    ticks.set(symbol, ticks.get(symbol) + 1);
    server.publish(topic(symbol), 'price', utf8(JSON.stringify(quote(symbol))));
  }
}, 100);

await server.listen();
console.log(`listening on ws://${host}:${server.address().port}/`);

for (const name of ['SIGINT', 'SIGTERM']) {
  process.once(name, async () => {
    clearInterval(ticker);
    await server.shutdown({ timeout: 5_000 });
    process.exit(0);
  });
}
