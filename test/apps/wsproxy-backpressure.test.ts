/**
 * WebSocket proxy, backpressure: a side that stops reading makes the proxy stop reading the other
 * side (whose own send buffer then fills) instead of buffering without bound in the proxy; once
 * the slow side reads again everything arrives, in order; a side that holds more than
 * `maxBufferedBytes` unsent closes the link with 1008. Both directions.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import type { WebSocket } from 'ws';
import {
  openClient,
  type Peer,
  type StartedProxy,
  startUpstream,
  startWsProxy,
  type Upstream,
  type UpstreamConnection,
  within,
} from '../fixtures/wsproxy-helpers.ts';
import { waitFor } from '../helpers.ts';

const CHUNK = 64 * 1024;
/** The proxy may hold this much toward one side; more closes the link (1008). */
const MAX_BUFFERED = 1024 * 1024;
/** The flooding side's own unsent bytes that prove the proxy stopped reading it. */
const STALLED = 4 * MAX_BUFFERED;
/** Upper bound on what a flood sends (kernel buffers on loopback can hold tens of MB). */
const FLOOD_LIMIT = 256 * 1024 * 1024;

function chunk(seq: number, size = CHUNK): Buffer {
  const data = Buffer.alloc(size, seq % 251);
  data.writeUInt32BE(seq, 0);
  return data;
}

/**
 * Sends numbered binary messages on `ws` until its own send buffer holds `stalled` bytes: its
 * peer (the proxy) stopped reading it. Returns how many were sent.
 */
async function flood(ws: WebSocket, stalled: number, size = CHUNK, deadline = Date.now() + 8000): Promise<number> {
  let sent = 0;
  while (ws.bufferedAmount < stalled) {
    if (Date.now() > deadline || sent * size > FLOOD_LIMIT || ws.readyState !== ws.OPEN) {
      throw new Error(
        `not stalled after ${sent} messages (${ws.bufferedAmount} bytes buffered, state ${ws.readyState})`,
      );
    }
    for (let i = 0; i < 16; i++) ws.send(chunk(sent++, size));
    // Let the sockets move what they can.
    await new Promise((resolve) => setImmediate(resolve));
  }
  return sent;
}

async function link(t: TestContext, proxy: StartedProxy, upstream: Upstream) {
  const client = await openClient(t, proxy.url);
  return { client, upstream: await upstream.connection(upstream.connections.length) };
}

function assertInOrder(received: Peer['messages'], count: number): void {
  assert.equal(received.length, count);
  received.forEach((message, i) => {
    assert.equal(message.binary, true);
    assert.equal(message.data.readUInt32BE(0), i, `message ${i} in order`);
    assert.equal(message.data.length, CHUNK);
  });
}

test('a client that stops reading pauses the upstream; when it reads again everything arrives in order', async (t) => {
  const upstream = await startUpstream(t, { onConnection: () => {} });
  const proxy = await startWsProxy(t, { upstream: upstream.url, maxBufferedBytes: MAX_BUFFERED });
  const { client, upstream: connection } = await link(t, proxy, upstream);
  client.ws.pause();
  const sent = await flood(connection.ws, STALLED);
  // The proxy holds at most MAX_BUFFERED for the client (else it would have closed the link):
  // what it does not take stays in the upstream's own buffer.
  assert.ok(connection.ws.bufferedAmount >= STALLED);
  assert.equal(client.ended, undefined);
  assert.equal(connection.ended, undefined);
  assert.equal(proxy.proxy.linkCount, 1);
  client.ws.resume();
  await client.waitMessages(sent, 15_000);
  assertInOrder(client.messages, sent);
  await waitFor(() => connection.ws.bufferedAmount === 0, 3000, 'the upstream to drain');
  // The link still works both ways.
  client.ws.send('still here');
  assert.equal((await connection.waitMessages(1))[0]!.text, 'still here');
});

test('an upstream that stops reading pauses the client; when it reads again everything arrives in order', async (t) => {
  const upstream = await startUpstream(t, { onConnection: () => {} });
  const proxy = await startWsProxy(t, { upstream: upstream.url, maxBufferedBytes: MAX_BUFFERED });
  const { client, upstream: connection } = await link(t, proxy, upstream);
  connection.ws.pause();
  const sent = await flood(client.ws, STALLED);
  assert.ok(client.ws.bufferedAmount >= STALLED);
  assert.equal(client.ended, undefined);
  assert.equal(connection.ended, undefined);
  connection.ws.resume();
  await connection.waitMessages(sent, 15_000);
  assertInOrder(connection.messages, sent);
  await waitFor(() => client.ws.bufferedAmount === 0, 3000, 'the client to drain');
  connection.ws.send('still here');
  assert.equal((await client.waitMessages(1))[0]!.text, 'still here');
});

for (const slow of ['client', 'upstream'] as const) {
  test(`past maxBufferedBytes toward ${slow === 'client' ? 'a client' : 'an upstream'} that does not read, the link closes 1008`, async (t) => {
    const upstream = await startUpstream(t, { onConnection: () => {} });
    const proxy = await startWsProxy(t, { upstream: upstream.url, maxBufferedBytes: 100_000 });
    const linked = await link(t, proxy, upstream);
    const [reader, writer]: [Peer, UpstreamConnection | Peer] =
      slow === 'client' ? [linked.client, linked.upstream] : [linked.upstream, linked.client];
    reader.ws.pause();
    // Messages larger than maxBufferedBytes: once the kernel's buffers toward the reader are
    // full, the next one leaves more than that queued in the proxy.
    await within(
      (async () => {
        let seq = 0;
        while (writer.ended === undefined && writer.ws.readyState === writer.ws.OPEN) {
          if (seq * 256 * 1024 > FLOOD_LIMIT) throw new Error('never closed');
          writer.ws.send(chunk(seq++, 256 * 1024));
          await new Promise((resolve) => setImmediate(resolve));
        }
      })(),
      8000,
      'the writer to be closed',
    );
    assert.equal((await writer.closed).code, 1008);
    // The reader gets the close once it reads what came before it.
    reader.ws.resume();
    assert.equal((await within(reader.closed, 5000, 'the reader to be closed')).code, 1008);
    await waitFor(() => proxy.proxy.linkCount === 0, 2000, 'linkCount 0');
  });
}

for (const slow of ['client', 'upstream'] as const) {
  test(`a flooding ${slow === 'client' ? 'upstream' : 'client'} the proxy stopped reading still closes at once when the ${slow} drops`, async (t) => {
    const upstream = await startUpstream(t, { onConnection: () => {} });
    const proxy = await startWsProxy(t, { upstream: upstream.url, maxBufferedBytes: MAX_BUFFERED });
    const linked = await link(t, proxy, upstream);
    const [reader, writer]: [Peer, Peer] =
      slow === 'client' ? [linked.client, linked.upstream] : [linked.upstream, linked.client];
    reader.ws.pause();
    await flood(writer.ws, STALLED);
    reader.ws.terminate();
    // The proxy must read the writer again to see its answer to the close (not wait for ws's 30 s
    // close timer), discarding what the writer sent meanwhile.
    const closed = await within(writer.closed, 3000, `the ${slow === 'client' ? 'upstream' : 'client'} to be closed`);
    assert.equal(closed.code, slow === 'client' ? 1001 : 1014);
    await waitFor(() => proxy.proxy.linkCount === 0, 2000, 'linkCount 0');
  });
}
