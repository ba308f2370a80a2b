/**
 * WebSocket proxy, messages: each client gets an upstream connection of its own (no shared,
 * lockstep connection as in Tremor's linked-transport proxy: an upstream that never answers one
 * client stalls nobody else); messages pass both ways unchanged and in order (text stays text,
 * binary stays binary, exact bytes, empty messages, bursts); what the upstream sends right at
 * open reaches the client first.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { echo, openClient, startUpstream, startWsProxy } from '../fixtures/wsproxy-helpers.ts';

test('two clients get two upstream connections, and each gets its own replies', async (t) => {
  const upstream = await startUpstream(t, {
    onConnection: (c) => c.ws.on('message', (data: Buffer) => c.ws.send(`${c.url} got ${data}`)),
  });
  const { proxy, url } = await startWsProxy(t, { upstream: (request) => `${upstream.url}${request.url}` });
  const a = await openClient(t, `${url}/a`);
  const b = await openClient(t, `${url}/b`);
  assert.equal(upstream.connections.length, 2);
  assert.equal(proxy.linkCount, 2);
  for (let i = 0; i < 3; i++) {
    a.ws.send(`a${i}`);
    b.ws.send(`b${i}`);
  }
  await a.waitMessages(3);
  await b.waitMessages(3);
  assert.deepEqual(
    a.messages.map((m) => m.text),
    ['/a got a0', '/a got a1', '/a got a2'],
  );
  assert.deepEqual(
    b.messages.map((m) => m.text),
    ['/b got b0', '/b got b1', '/b got b2'],
  );
});

test('an upstream connection that never answers one client does not stall another (Tremor’s lockstep)', async (t) => {
  const upstream = await startUpstream(t, {
    onConnection: (c) => {
      if (c.url !== '/silent') echo(c);
    },
  });
  const { url } = await startWsProxy(t, { upstream: (request) => `${upstream.url}${request.url}` });
  const silent = await openClient(t, `${url}/silent`);
  const talkative = await openClient(t, `${url}/echo`);
  silent.ws.send('hello?');
  const silentConnection = await upstream.connection(1);
  await silentConnection.waitMessages(1);
  for (let i = 0; i < 5; i++) talkative.ws.send(`m${i}`);
  const replies = await talkative.waitMessages(5);
  assert.deepEqual(
    replies.map((m) => m.text),
    ['m0', 'm1', 'm2', 'm3', 'm4'],
  );
  assert.equal(silent.messages.length, 0);
  assert.equal(silentConnection.messages.length, 1, 'the silent upstream got its message too');
});

test('text stays text and binary stays binary, byte for byte, empty messages included, both ways', async (t) => {
  const upstream = await startUpstream(t);
  const { url } = await startWsProxy(t, { upstream: upstream.url });
  const client = await openClient(t, url);
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const big = Buffer.alloc(300_000, 0);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31) % 251;
  const sent: Array<{ data: string | Buffer; binary: boolean }> = [
    { data: 'héllo ✓ 🚀', binary: false },
    { data: all, binary: true },
    { data: '', binary: false },
    { data: Buffer.alloc(0), binary: true },
    // Valid UTF-8 in a binary message stays binary; bytes that are not UTF-8 stay untouched.
    { data: Buffer.from('text-like bytes'), binary: true },
    { data: Buffer.from([0xff, 0xfe, 0x00, 0xc3]), binary: true },
    { data: big, binary: true },
    { data: 'x'.repeat(200_000), binary: false },
  ];
  for (const { data, binary } of sent) client.ws.send(data, { binary });
  const connection = await upstream.connection();
  // What the upstream got, and (echoed) what the client got back, is exactly what was sent.
  for (const received of [await connection.waitMessages(sent.length), await client.waitMessages(sent.length)]) {
    assert.equal(received.length, sent.length);
    received.forEach((message, i) => {
      assert.equal(message.binary, sent[i]!.binary, `message ${i} type`);
      assert.deepEqual(message.data, Buffer.from(sent[i]!.data), `message ${i} bytes`);
    });
  }
});

test('bursts of many messages both ways arrive complete and in order', async (t) => {
  const COUNT = 2000;
  const upstream = await startUpstream(t, {
    onConnection: (c) => {
      c.ws.on('message', (data: Buffer) => {
        if (data.toString() !== 'go') return;
        // The whole burst in one turn of the event loop.
        for (let i = 0; i < COUNT; i++) c.ws.send(i % 2 === 0 ? `down ${i}` : Buffer.from(`down ${i}`));
      });
    },
  });
  const { url } = await startWsProxy(t, { upstream: upstream.url });
  const client = await openClient(t, url);
  for (let i = 0; i < COUNT; i++) client.ws.send(i % 3 === 0 ? Buffer.from(`up ${i}`) : `up ${i}`);
  client.ws.send('go');
  const connection = await upstream.connection();
  const up = await connection.waitMessages(COUNT + 1, 10_000);
  assert.deepEqual(
    up.slice(0, COUNT).map((m) => `${m.binary} ${m.text}`),
    Array.from({ length: COUNT }, (_, i) => `${i % 3 === 0} up ${i}`),
  );
  const down = await client.waitMessages(COUNT, 10_000);
  assert.deepEqual(
    down.map((m) => `${m.binary} ${m.text}`),
    Array.from({ length: COUNT }, (_, i) => `${i % 2 !== 0} down ${i}`),
  );
});

test('messages the upstream sends right at open reach the client first, in order, before any reply', async (t) => {
  const upstream = await startUpstream(t, {
    onConnection: (c) => {
      // Sent in the same turn as the 101: they may share a TCP packet with it, and certainly come
      // before the proxy answers the client's upgrade.
      c.ws.send('welcome 1');
      c.ws.send(Buffer.from([1, 2, 3]));
      c.ws.send('welcome 3');
      echo(c);
    },
  });
  const { url } = await startWsProxy(t, { upstream: upstream.url });
  for (let round = 0; round < 5; round++) {
    const client = await openClient(t, url);
    client.ws.send('after open');
    const got = await client.waitMessages(4);
    assert.deepEqual(
      got.map((m) => `${m.binary} ${m.binary ? [...m.data].join(',') : m.text}`),
      ['false welcome 1', 'true 1,2,3', 'false welcome 3', 'false after open'],
    );
    client.ws.close(1000);
    await client.closed;
  }
});
