/**
 * Limits a peer can push against: requests in flight and bytes queued for a slow consumer. Going
 * over either closes that connection with 1008 and leaves the others alone.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { binary, payloadText, utf8 } from '../../../protocol/payload.ts';
import { connectClient, delay, rawPeer, startServer, waitFor } from '../../helpers.ts';
import { bytes, gate, id, maskedFrames, newestConnection, takeAcceptConf, within, writeRaw } from './wire.ts';

test('maxInflightRequests 4: four pending requests are fine, a fifth closes 1008', async (t) => {
  const door = gate();
  t.after(() => door.open());
  let started = 0;
  const { url, server } = await startServer(t, {
    maxInflightRequests: 4,
    onRequest: async () => {
      started++;
      await door.wait;
      return 'done';
    },
  });
  const bystander = await connectClient(t, url);
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server, 2);
  for (let i = 1; i <= 4; i++) peer.send(bytes(0x7f, id(i), 0x01, 'n'));
  // A heartbeat behind them proves the four were read and the connection is still open.
  peer.send(bytes(0x21));
  await delay(100);
  assert.equal(started, 4);
  assert.equal(conn.isOpen, true);
  peer.send(bytes(0x7f, id(5), 0x01, 'n'));
  const closed = await within(peer.closed, 2_000, 'the close');
  assert.equal(closed.code, 1008);
  assert.equal(closed.reason, 'too many requests in flight');
  assert.equal((await within(conn.closed, 2_000, 'conn.closed')).code, 1008);
  assert.equal(started, 4, 'the fifth request never ran');
  // The bystander has its own budget.
  const replies = Array.from({ length: 4 }, () => bystander.request('n', utf8('')));
  door.open();
  assert.deepEqual((await within(Promise.all(replies), 2_000, 'replies')).map(payloadText), [
    'done',
    'done',
    'done',
    'done',
  ]);
});

test('maxInflightRequests counts requests waiting for a slot, not only running ones', async (t) => {
  // With every slot busy the server stops reading, but what it already read in one chunk is
  // queued: send the burst in one TCP write so that the queue really fills.
  const door = gate();
  t.after(() => door.open());
  let started = 0;
  const { url, server } = await startServer(t, {
    maxInflightRequests: 3,
    concurrency: 1,
    onRequest: async () => {
      started++;
      await door.wait;
      return undefined;
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server);
  writeRaw(peer, maskedFrames(...[1, 2, 3, 4].map((i) => bytes(0x7f, id(i), 0x01, 'n'))));
  // The closing handshake completes although reading was paused for the busy slot.
  const closed = await within(peer.closed, 1_000, 'the close');
  assert.equal(closed.code, 1008);
  assert.equal((await within(conn.closed, 1_000, 'conn.closed')).code, 1008);
  // Releasing the running handler must not start the waiting ones on a closed connection.
  door.open();
  await delay(20);
  assert.equal(started, 1);
});

test('with every slot busy, a pipelined burst below maxInflightRequests waits and is all answered', async (t) => {
  const door = gate();
  t.after(() => door.open());
  const { url } = await startServer(t, {
    maxInflightRequests: 8,
    concurrency: 1,
    onRequest: async () => {
      await door.wait;
      return undefined;
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  writeRaw(peer, maskedFrames(...[1, 2, 3, 4, 5, 6].map((i) => bytes(0x7f, id(i), 0x01, 'n'))));
  await delay(50);
  assert.equal(peer.ws.readyState, peer.ws.OPEN);
  door.open();
  for (let i = 1; i <= 6; i++) assert.equal((await peer.next())[0], 0xbf);
});

test('answered requests give their slot back: many sequential batches under the limit stay open', async (t) => {
  const { url } = await startServer(t, { maxInflightRequests: 4, onRequest: () => 'ok' });
  const client = await connectClient(t, url);
  for (let batch = 0; batch < 25; batch++) {
    const replies = Array.from({ length: 4 }, () => client.request('n', utf8('')));
    await within(Promise.all(replies), 2_000, `batch ${batch}`);
  }
  assert.equal(client.isConnected, true);
});

test('a slow consumer is closed with 1008 once maxBufferedBytes is exceeded; others are unaffected', async (t) => {
  const limit = 64 * 1024;
  const chunk = new Uint8Array(16 * 1024).fill(0x61);
  const { url, server } = await startServer(t, { maxBufferedBytes: limit, onRequest: () => 'ok' });
  const bystander = await connectClient(t, url);
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server, 2);
  // The peer stops reading: TCP fills up, then the server's queue grows.
  (peer.ws as unknown as { _socket: Socket })._socket.pause();

  let sent = 0;
  let maxBuffered = 0;
  const deadline = Date.now() + 2_000;
  // Bounded: 4000 x 16 KiB = 64 MiB at most, far above what loopback TCP buffers hold.
  while (sent < 4_000 && Date.now() < deadline) {
    const ok = conn.signal('s', binary(chunk));
    maxBuffered = Math.max(maxBuffered, conn.bufferedAmount);
    if (!ok) break;
    sent++;
    // Let the kernel move data now and then, as a real server would.
    if (sent % 32 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  t.diagnostic(`${sent} signals of 16 KiB sent; at most ${maxBuffered} bytes buffered`);
  assert.ok(sent < 4_000, `conn.signal never returned false (${sent} signals sent)`);
  assert.equal(conn.isOpen, false);
  // One message is 16 KiB + 2 bytes of signal header + 4 bytes of frame header; the close frame
  // queued behind it adds at most 129 bytes.
  assert.ok(
    maxBuffered <= limit + chunk.length + 6 + 129,
    `buffered ${maxBuffered} bytes, over the limit plus one message`,
  );
  const info = await within(conn.closed, 2_800, 'conn.closed');
  assert.equal(info.code, 1008, `server side closed with ${info.code} (${info.reason})`);
  assert.equal(payloadText(await bystander.request('n', utf8(''))), 'ok');
});

test('publish: a subscriber that stops reading is closed with 1008 and no longer counted; the others get every signal', async (t) => {
  const limit = 64 * 1024;
  const chunk = new Uint8Array(16 * 1024).fill(0x62);
  const { url, server } = await startServer(t, { maxBufferedBytes: limit });
  const reader = await connectClient(t, url);
  let delivered = 0;
  reader.on('signal', () => {
    delivered++;
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  for (const conn of server.connections) conn.subscribe('feed');
  const stalled = await newestConnection(server, 2);
  (peer.ws as unknown as { _socket: Socket })._socket.pause();

  let published = 0;
  let counted = 0;
  const deadline = Date.now() + 2_000;
  while (published < 4_000 && Date.now() < deadline) {
    const n = server.publish('feed', 'p', binary(chunk));
    published++;
    counted += n;
    if (n === 1) break;
    if (published % 32 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  assert.ok(published < 4_000, 'the stalled subscriber was never dropped');
  assert.equal(counted, 2 * published - 1, 'the last publish counted the reader only');
  const info = await within(stalled.closed, 2_800, 'the stalled subscriber closed');
  assert.equal(info.code, 1008, `closed with ${info.code} (${info.reason})`);
  assert.deepEqual([...server.subscribers('feed')].length, 1);
  await waitFor(() => delivered === published, 5_000, `all ${published} signals at the reader`);
});
