/**
 * Watches two symbols until three prices of each arrived, stops watching one, and checks that its
 * prices stop while the other's go on. Subscribes again after every reconnection: subscriptions
 * belong to a connection.
 *
 *   node examples/pubsub/client.js ws://127.0.0.1:8080/ [SYMBOL SYMBOL]
 */
import { Client, payloadText, utf8 } from 'duplexwire/client';

const url = process.argv[2] ?? 'ws://127.0.0.1:8080/';
const [first, second] = process.argv.length >= 5 ? process.argv.slice(3, 5) : ['ACME', 'GLOBEX'];
const client = new Client(url, { requestTimeout: 5_000, reconnect: { maxAttempts: 5 } });

const watching = new Set([first, second]);
const received = new Map([...watching].map((symbol) => [symbol, 0]));
let changed = () => {};
client.on('signal', (msg) => {
  if (msg.name !== 'price') return;
  const { symbol } = JSON.parse(payloadText(msg.payload));
  received.set(symbol, (received.get(symbol) ?? 0) + 1);
  changed();
});
const until = (check) =>
  new Promise((resolve) => {
    changed = () => check() && resolve();
    changed();
  });

async function subscribeAll() {
  for (const symbol of watching) {
    const { price } = JSON.parse(payloadText(await client.request('subscribe', utf8(symbol))));
    console.log(`watching ${symbol} (now ${price})`);
  }
}
// On every connection, the first and each after a reconnection: the server keeps no topics for a
// client that left.
let subscribed;
client.on('connect', () => {
  subscribed = subscribeAll();
  subscribed.catch((error) => console.error(`subscribe failed: ${error.message}`));
});

try {
  await client.connect(); // 'connect' has fired: `subscribed` is set
  await subscribed;
  await until(() => received.get(first) >= 3 && received.get(second) >= 3);
  console.log(`3 prices of ${first} and of ${second}`);

  await client.request('unsubscribe', utf8(second));
  watching.delete(second);
  const before = received.get(second);
  const othersBefore = received.get(first);
  await until(() => received.get(first) >= othersBefore + 3);
  // Signals and replies keep their order on a connection: a price sent before the server handled
  // the unsubscribe arrived before its reply, and none comes after it.
  console.log(`after unsubscribing ${second}: ${received.get(second) - before} more ${second}, ${first} went on`);

  try {
    await client.request('subscribe', utf8('NOPE'));
  } catch (error) {
    console.log(`subscribe NOPE failed: ${error.code}`);
  }
} finally {
  await client.close();
}
