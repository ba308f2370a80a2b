/**
 * The read timeout: a silent peer is closed with 1001; any message, a heartbeat (33) or a
 * WebSocket ping keeps it open; the Client's automatic heartbeat does so by itself.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { connectClient, delay, rawPeer, startServer, waitFor } from '../../helpers.ts';
import { bytes, newestConnection, takeAcceptConf, within } from './wire.ts';

/** Runs `tick` every `period` ms, `count` times at most; returns a stop function. */
function every(period: number, count: number, tick: () => void): () => void {
  let n = 0;
  const timer = setInterval(() => {
    if (++n > count) clearInterval(timer);
    else tick();
  }, period);
  return () => clearInterval(timer);
}

test('readTimeout 300: a silent raw peer is closed with 1001 "read timeout" within ~1 s', async (t) => {
  const disconnects: Array<{ code: number; reason: string }> = [];
  const { url } = await startServer(t, {
    readTimeout: 300,
    onClientDisconnected: (_conn, info) => {
      disconnects.push(info);
    },
  });
  const started = performance.now();
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const closed = await within(peer.closed, 1_000, 'the read-timeout close');
  const elapsed = performance.now() - started;
  assert.deepEqual(closed, { code: 1001, reason: 'read timeout' });
  assert.ok(elapsed >= 250, `closed too early, after ${elapsed.toFixed(0)} ms`);
  await waitFor(() => disconnects.length > 0, 500, 'onClientDisconnected');
  assert.deepEqual(disconnects, [{ code: 1001, reason: 'read timeout' }]);
});

test('readTimeout above the largest timer delay (2^31 - 1 ms; AcceptConf carries up to 2^32 - 1): announced as is, the timer is not cut to 1 ms', async (t) => {
  // Node runs a longer timer after 1 ms and warns: the read timer would fire, find the peer not
  // silent long enough, and re-arm, every millisecond for as long as the connection lasts.
  const overflows: string[] = [];
  const onWarning = (warning: Error): void => {
    if (warning.name === 'TimeoutOverflowWarning') overflows.push(warning.message);
  };
  process.on('warning', onWarning);
  t.after(() => process.off('warning', onWarning));
  const readTimeout = 2 ** 32 - 1;
  const { url } = await startServer(t, { readTimeout });
  const peer = await rawPeer(t, url);
  const conf = await takeAcceptConf(peer);
  assert.equal(new DataView(conf.buffer, conf.byteOffset).getUint32(3, true), readTimeout);
  await delay(100);
  assert.deepEqual(overflows, []);
  peer.send(bytes(0x21));
  await delay(20);
  assert.equal(peer.ws.readyState, peer.ws.OPEN);
});

test('a raw peer sending a heartbeat every 100 ms stays open for 1 s, then times out once it stops', async (t) => {
  const { url, server } = await startServer(t, { readTimeout: 300 });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server);
  const stop = every(100, 10, () => peer.send(bytes(0x21)));
  t.after(stop);
  await delay(1_000);
  assert.equal(conn.isOpen, true);
  assert.equal(peer.ws.readyState, peer.ws.OPEN);
  stop();
  const stoppedAt = performance.now();
  const closed = await within(peer.closed, 800, 'the read-timeout close');
  assert.equal(closed.code, 1001);
  assert.ok(performance.now() - stoppedAt < 700);
});

test('any message resets the read timeout, not only heartbeats', async (t) => {
  const { url, server } = await startServer(t, { readTimeout: 300, onSignal: () => {} });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server);
  const stop = every(100, 8, () => peer.send(bytes(0x40, 0x01, 's')));
  t.after(stop);
  await delay(800);
  stop();
  assert.equal(conn.isOpen, true);
});

test('a raw peer sending WebSocket pings every 100 ms stays open for 1 s', async (t) => {
  const { url, server } = await startServer(t, { readTimeout: 300 });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server);
  const stop = every(100, 10, () => peer.ws.ping());
  t.after(stop);
  await delay(1_000);
  stop();
  assert.equal(conn.isOpen, true);
  assert.equal(peer.ws.readyState, peer.ws.OPEN);
});

test('a Client idle against readTimeout 400 stays connected for 1.5 s thanks to its heartbeat', async (t) => {
  const disconnects: unknown[] = [];
  const { url, server } = await startServer(t, {
    readTimeout: 400,
    onRequest: () => 'awake',
    onClientDisconnected: (_conn, info) => {
      disconnects.push(info);
    },
  });
  const client = await connectClient(t, url);
  const lost: unknown[] = [];
  client.on('disconnect', (info) => lost.push(info));
  const conn = await newestConnection(server);
  await delay(1_500);
  assert.equal(client.isConnected, true);
  assert.deepEqual(lost, []);
  assert.deepEqual(disconnects, []);
  assert.equal(conn.isOpen, true);
  assert.equal(server.connections.size, 1);
  assert.equal(payloadText(await client.request('still', utf8(''))), 'awake');
});

test('a raw ping gets a pong with the same data', async (t) => {
  const { url } = await startServer(t);
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const pong = new Promise<Buffer>((resolve) => peer.ws.once('pong', resolve));
  peer.ws.ping(Buffer.from('are you there'));
  const data = await within(pong, 1_000, 'the pong');
  assert.equal(data.toString(), 'are you there');
});

test('a request is answered, and the peer that then stays silent is closed', async (t) => {
  // The read timeout counts from the last message received; sending a reply does not reset it.
  const { url } = await startServer(t, {
    readTimeout: 300,
    onRequest: async () => {
      await delay(200);
      return 'slow';
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, 1, 0, 0, 0, 0, 0, 0, 0, 0x01, 'n'));
  const reply = await peer.next(1_000);
  assert.equal(Buffer.from(reply.subarray(9)).toString(), 'slow');
  const closed = await within(peer.closed, 1_000, 'the read-timeout close');
  assert.equal(closed.code, 1001);
});

// Found while writing the fault suite (test/chaos/faults.ts): past 256 waiting messages the peer engine stops reading, and the
// read timeout then took its own unread backlog for the peer's silence. Each end closed a live
// peer (1001 "read timeout" on the server, a dropped connection on the client) with hundreds of
// requests in flight, all failing with DisconnectedError.
const BACKLOG = 300;
const TIMEOUT = 200;
/** How long the first handler holds the only slot: the others wait, and reading stops. */
const HOLD = 5 * TIMEOUT;

test(`${BACKLOG} requests behind a handler busy for 5x readTimeout: the server stops reading meanwhile and keeps the connection`, async (t) => {
  const disconnects: unknown[] = [];
  const { url } = await startServer(t, {
    readTimeout: TIMEOUT,
    concurrency: 1,
    onRequest: async (_conn, msg) => {
      if (payloadText(msg.payload) === '0') await delay(HOLD);
      return msg.payload;
    },
    onClientDisconnected: (_conn, info) => {
      disconnects.push(info);
    },
  });
  const client = await connectClient(t, url, { requestTimeout: 30_000 });
  const replies = await Promise.all(Array.from({ length: BACKLOG }, (_, i) => client.request('n', utf8(`${i}`))));
  assert.deepEqual(
    replies.map(payloadText),
    Array.from({ length: BACKLOG }, (_, i) => `${i}`),
  );
  assert.deepEqual(disconnects, []);
  assert.equal(client.isConnected, true);
});

test(`${BACKLOG} server requests behind a client handler busy for 5x serverTimeout: the client stops reading meanwhile and keeps the connection`, async (t) => {
  const { server, url } = await startServer(t);
  const client = await connectClient(t, url, {
    serverTimeout: TIMEOUT,
    concurrency: 1,
    onRequest: async (msg) => {
      if (payloadText(msg.payload) === '0') await delay(HOLD);
      return msg.payload;
    },
  });
  const lost: unknown[] = [];
  client.on('disconnect', (info) => lost.push(info));
  const conn = await newestConnection(server);
  assert.equal(await conn.negotiated(), true);
  const replies = await Promise.all(
    Array.from({ length: BACKLOG }, (_, i) => conn.request('n', utf8(`${i}`), { timeout: 30_000 })),
  );
  assert.deepEqual(
    replies.map(payloadText),
    Array.from({ length: BACKLOG }, (_, i) => `${i}`),
  );
  assert.deepEqual(lost, []);
  assert.equal(conn.isOpen, true);
});
