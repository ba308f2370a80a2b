/**
 * Sends `echo` requests in the three payload encodings, one request the server refuses, and a
 * signal (which the echo server sends back), printing what comes back.
 *
 *   node examples/echo/client.js ws://127.0.0.1:8080/
 */
import { binary, Client, payloadText, utf8, utf16 } from 'duplexwire/client';

const url = process.argv[2] ?? 'ws://127.0.0.1:8080/';
// reconnect: false: a one-shot program should fail at once, not wait for a server to come back.
const client = new Client(url, { reconnect: false, requestTimeout: 5_000 });

const show = (payload) =>
  payload.encoding === 'binary' ? Buffer.from(payload.data).toString('hex') : payloadText(payload);

try {
  for (const payload of [utf8('hello'), utf16('héllo wörld 😀'), binary(Uint8Array.of(0xde, 0xad, 0xbe, 0xef))]) {
    const reply = await client.request('echo', payload);
    console.log(`echo ${reply.encoding}: ${show(reply)}`);
  }

  try {
    await client.request('shout', utf8('hello'));
  } catch (error) {
    console.log(`shout failed: ${error.code}: ${error.message}`); // a RequestError from the server
  }

  const echoed = new Promise((resolve) => client.once('signal', resolve));
  client.signal('note', utf8('a signal has no reply'));
  const signal = await echoed;
  console.log(`signal ${signal.name}: ${payloadText(signal.payload)}`);
} finally {
  await client.close();
}
