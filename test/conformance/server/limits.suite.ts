/**
 * Limits a peer can push against: requests in flight and bytes queued for a slow consumer. Going
 * over either closes that connection with 1008 and leaves the others alone.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { decode } from '../../../protocol/decode.ts';
import { binary, type Payload, payloadText, utf8 } from '../../../protocol/payload.ts';
import { connectClient, delay, gate, type RawPeer, rawPeer, startServer, waitFor } from '../../helpers.ts';
import type { Connection } from '../../../src/server/connection.ts';
import { bytes, id, maskedFrames, newestConnection, takeAcceptConf, within, writeRaw } from './wire.ts';

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

test('a peer that floods pings and never reads: the pongs queued for it stay within maxBufferedBytes and it is closed', async (t) => {
  // Every transport answers pings itself, into the buffer the core's sends go to. uWS queues those
  // pongs up to its own maxBackpressure (64 MiB by default); ws gives up after 60 unsent pongs.
  const limit = 64 * 1024;
  const { url, server } = await startServer(t, { maxBufferedBytes: limit });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server);
  pauseReading(peer);
  const socket = (peer.ws as unknown as { _socket: Socket })._socket;
  // 100 masked pings with the largest payload a control frame may carry (125 bytes).
  const ping = Buffer.concat([Buffer.from([0x89, 0x80 | 125, 0, 0, 0, 0]), Buffer.alloc(125, 0x70)]);
  const batch = Buffer.concat(Array.from({ length: 100 }, () => ping));
  let maxBuffered = 0;
  let batches = 0;
  const deadline = Date.now() + 10_000;
  // Bounded: 4,000 batches are 52 MB of pings, far more than loopback TCP buffers hold; the loop
  // also stops once the server holds clearly more than the limit.
  while (conn.isOpen && batches < 4_000 && Date.now() < deadline && maxBuffered <= 2 * limit) {
    // The peer's own unsent bytes stay small: only what the server has read matters here.
    if (socket.writableLength < 1024 * 1024) {
      writeRaw(peer, batch);
      batches++;
    }
    await delay(1);
    maxBuffered = Math.max(maxBuffered, conn.bufferedAmount);
  }
  t.diagnostic(`${batches} batches of 100 pings sent; at most ${maxBuffered} bytes buffered`);
  // One pong is 127 bytes; the close frame queued behind it adds at most 129.
  assert.ok(maxBuffered <= limit + 127 + 129, `buffered ${maxBuffered} bytes, over the limit plus one pong`);
  const info = await within(conn.closed, 2_800, 'conn.closed');
  // ws cuts the connection itself (1006) at 60 unsent pongs, before the limit; otherwise the core
  // closes it for the limit, as for any send.
  if (info.code !== 1006) {
    assert.deepEqual(info, { code: 1008, reason: 'send buffer limit exceeded' });
  }
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

/** A 1000-byte payload numbered `seq` (its first four bytes). */
function numbered(seq: number): Payload {
  const data = new Uint8Array(1000);
  new DataView(data.buffer).setUint32(0, seq);
  return binary(data);
}

/** `name:seq` of a signal carrying a `numbered` payload. */
function label(name: string, payload: Payload): string {
  return `${name}:${new DataView(payload.data.buffer, payload.data.byteOffset).getUint32(0)}`;
}

/** The signals a raw peer got so far, as `label`s. */
function signalsOf(peer: RawPeer): string[] {
  const out: string[] = [];
  for (const bytes of peer.messages) {
    const message = decode(bytes);
    if (message.kind === 'signal') out.push(label(message.name, message.payload));
  }
  return out;
}

function pauseReading(peer: RawPeer): void {
  (peer.ws as unknown as { _socket: Socket })._socket.pause();
}

function resumeReading(peer: RawPeer): void {
  (peer.ws as unknown as { _socket: Socket })._socket.resume();
}

test('publish of small signals, many per turn: a subscriber that stops reading is closed with 1008 within maxBufferedBytes plus one message; the reader gets every signal', async (t) => {
  // The 16 KiB test above goes out at once on uWS; signals this small are batched by its pub/sub
  // until the end of the turn, and many of them are published in each turn here.
  const limit = 64 * 1024;
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
  pauseReading(peer);

  let published = 0;
  let counted = 0;
  let maxBuffered = 0;
  const deadline = Date.now() + 3_000;
  // Bounded: 40,000 x 1000 bytes, ten times what loopback TCP buffers hold.
  while (published < 40_000 && Date.now() < deadline) {
    const n = server.publish('feed', 'p', numbered(published));
    published++;
    counted += n;
    maxBuffered = Math.max(maxBuffered, stalled.bufferedAmount);
    if (n === 1) break;
    if (published % 64 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  t.diagnostic(`${published} signals of 1000 bytes published; at most ${maxBuffered} bytes buffered`);
  assert.ok(published < 40_000 && Date.now() < deadline, 'the stalled subscriber was never dropped');
  assert.equal(counted, 2 * published - 1, 'the last publish counted the reader only');
  // One message is 1000 bytes + 3 of signal header + 4 of frame header; the close frame adds at most 129.
  assert.ok(maxBuffered <= limit + 1000 + 7 + 129, `buffered ${maxBuffered} bytes, over the limit plus one message`);
  const info = await within(stalled.closed, 2_800, 'the stalled subscriber closed');
  assert.equal(info.code, 1008, `closed with ${info.code} (${info.reason})`);
  assert.equal(server.subscribers('feed').size, 1);
  await waitFor(() => delivered === published, 5_000, `all ${published} signals at the reader`);
});

test('publish: subscribers that fall behind and catch up get every signal once and in order, with direct signals and except in between', async (t) => {
  const { url, server } = await startServer(t);
  const reader = await connectClient(t, url);
  const readerLog: string[] = [];
  reader.on('signal', (message) => readerLog.push(label(message.name, message.payload)));
  const readerConn = await newestConnection(server, 1);
  const lagging: RawPeer[] = [];
  const laggingConns: Connection[] = [];
  for (let i = 0; i < 2; i++) {
    const peer = await rawPeer(t, url);
    await takeAcceptConf(peer);
    lagging.push(peer);
    laggingConns.push(await newestConnection(server, 2 + i));
  }
  for (const conn of server.connections) conn.subscribe('feed');
  const expected: string[][] = [[], [], []];
  const miscounted: string[] = [];
  let seq = 0;
  // One step: a direct signal to the first lagging subscriber now and then, and a publish that
  // leaves the reader out now and then.
  const step = (): void => {
    if (seq % 10 === 3) {
      laggingConns[0]!.signal('d', numbered(seq));
      expected[1]!.push(`d:${seq}`);
    }
    const exceptReader = seq % 7 === 0;
    const n = server.publish('feed', 'p', numbered(seq), exceptReader ? { except: readerConn } : {});
    if (n !== (exceptReader ? 2 : 3)) miscounted.push(`publish ${seq} counted ${n}`);
    if (!exceptReader) expected[0]!.push(`p:${seq}`);
    expected[1]!.push(`p:${seq}`);
    expected[2]!.push(`p:${seq}`);
    seq++;
  };

  // Behind: the two stop reading until each has well over a high-water mark (64 KiB) queued in
  // user space, far below maxBufferedBytes (8 MiB).
  for (const peer of lagging) pauseReading(peer);
  const behind = (): boolean => laggingConns.every((conn) => conn.bufferedAmount > 512 * 1024);
  const deadline = Date.now() + 5_000;
  while (!behind() && seq < 40_000 && Date.now() < deadline) {
    step();
    if (seq % 100 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  assert.ok(behind(), `the lagging subscribers never fell behind (${seq} published)`);
  // Catching up, while publishes go on.
  for (const peer of lagging) resumeReading(peer);
  for (let i = 0; i < 2_000; i++) {
    step();
    if (seq % 100 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  t.diagnostic(`${seq} signals published`);
  assert.deepEqual(miscounted, []);
  await waitFor(
    () =>
      readerLog.length >= expected[0]!.length &&
      lagging.every((peer, i) => peer.messages.length - 1 >= expected[i + 1]!.length),
    10_000,
    'every signal everywhere',
  );
  await delay(50);
  assert.deepEqual(readerLog, expected[0]);
  assert.deepEqual(signalsOf(lagging[0]!), expected[1]);
  assert.deepEqual(signalsOf(lagging[1]!), expected[2]);
  assert.ok(
    laggingConns.every((conn) => conn.isOpen),
    'the lagging subscribers are still open',
  );
});
