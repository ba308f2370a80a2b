/**
 * Signals in both directions: every encoding, named and unnamed, and the byte layout a v2.0 peer
 * receives.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { binary, encodeUtf16le, payloadText, utf16, utf8 } from '../../../protocol/payload.ts';
import type { Payload } from '../../../protocol/types.ts';
import type { IncomingMessage } from '../../../src/peer/peer.ts';
import { connectClient, hex, rawPeer, startServer, waitFor } from '../../helpers.ts';
import { bytes, newestConnection, takeAcceptConf, within } from './wire.ts';

const SIGNALS: ReadonlyArray<readonly [string, Payload]> = [
  ['bin', binary(Uint8Array.of(0, 1, 2, 255))],
  ['', binary(Uint8Array.of(9))],
  ['text', utf8('héllo')],
  ['', utf8('unnamed utf8')],
  ['utf16_sig', utf16('😀 odd name')],
  ['', utf16('unnamed 𝄞')],
];

function summary(message: IncomingMessage): [string, string, string] {
  return [message.name, message.payload.encoding, hex(message.payload.data)];
}

test('a Client receives the six kinds of server signal (binary/utf8/utf16 x named/unnamed)', async (t) => {
  const { url, server } = await startServer(t);
  const client = await connectClient(t, url);
  const received: IncomingMessage[] = [];
  client.on('signal', (message) => received.push(message));
  const conn = await newestConnection(server);
  for (const [name, payload] of SIGNALS) assert.equal(conn.signal(name, payload), true);
  await waitFor(() => received.length === SIGNALS.length, 2_000, 'six signals');
  assert.deepEqual(
    received.map(summary),
    SIGNALS.map(([name, payload]) => [name, payload.encoding, hex(payload.data)]),
  );
  assert.equal(payloadText(received[4]!.payload), '😀 odd name');
});

test('named binary and UTF-8 server signals may have an empty payload', async (t) => {
  const { url, server } = await startServer(t);
  const client = await connectClient(t, url);
  const received: IncomingMessage[] = [];
  client.on('signal', (message) => received.push(message));
  const conn = await newestConnection(server);
  conn.signal('empty-bin', binary(new Uint8Array(0)));
  conn.signal('empty-utf8', utf8(''));
  await waitFor(() => received.length === 2, 2_000, 'two signals');
  assert.deepEqual(received.map(summary), [
    ['empty-bin', 'binary', ''],
    ['empty-utf8', 'utf8', ''],
  ]);
});

test('onSignal receives client signals in the three encodings, named and unnamed', async (t) => {
  const received: IncomingMessage[] = [];
  const conns: unknown[] = [];
  const { url, server } = await startServer(t, {
    onSignal: (conn, message) => {
      conns.push(conn);
      received.push(message);
    },
  });
  const client = await connectClient(t, url);
  for (const [name, payload] of SIGNALS) assert.equal(client.signal(name, payload), true);
  await waitFor(() => received.length === SIGNALS.length, 2_000, 'six signals');
  assert.deepEqual(
    received.map(summary),
    SIGNALS.map(([name, payload]) => [name, payload.encoding, hex(payload.data)]),
  );
  const conn = await newestConnection(server);
  assert.ok(conns.every((c) => c === conn));
});

test('a failing onSignal is logged and the connection goes on', async (t) => {
  const { url, logger } = await startServer(t, {
    onSignal: (_conn, message) => {
      if (message.name === 'sync') throw new Error('sync failure');
      return Promise.reject(new Error('async failure'));
    },
    onRequest: () => 'alive',
  });
  const client = await connectClient(t, url);
  client.signal('sync', utf8('x'));
  client.signal('async', utf8('x'));
  await waitFor(() => logger.entries.filter((e) => e.level === 'error').length === 2, 2_000, 'two logged errors');
  assert.equal(payloadText(await client.request('ping', utf8(''))), 'alive');
});

test('a raw peer sees the byte layout of a UTF-16 signal with an odd name (pad byte)', async (t) => {
  const { url, server } = await startServer(t);
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server);
  conn.signal('utf16_sig', utf16('hi'));
  assert.equal(hex(await peer.next()), hex(bytes(0x41, 0x09, 'utf16_sig', 0x00, 0x68, 0x00, 0x69, 0x00)));
  // Even name: no pad.
  conn.signal('ab', utf16('😀'));
  assert.equal(hex(await peer.next()), hex(bytes(0x41, 0x02, 'ab', encodeUtf16le('😀'))));
  // Unnamed: no pad either.
  conn.signal('', utf16('z'));
  assert.equal(hex(await peer.next()), '41007a00');
  // Golden: unnamed binary signal "binary".
  conn.signal('', binary(new TextEncoder().encode('binary')));
  assert.equal(hex(await peer.next()), hex(bytes(0x3f, 0x00, 'binary')));
});

test('signals a raw v2.0 peer sends reach onSignal, including the golden UTF-16 one', async (t) => {
  const received: IncomingMessage[] = [];
  const { url } = await startServer(t, { onSignal: (_c, m) => void received.push(m) });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x41, 0x09, 'utf16_sig', 0x00, encodeUtf16le('hi')));
  peer.send(bytes(0x3f, 0x00, 'binary'));
  peer.send(bytes(0x40, 0x04, 'name'));
  await waitFor(() => received.length === 3, 2_000, 'three signals');
  assert.deepEqual(received.map(summary), [
    ['utf16_sig', 'utf16', hex(encodeUtf16le('hi'))],
    ['', 'binary', hex(new TextEncoder().encode('binary'))],
    ['name', 'utf8', ''],
  ]);
});

test('conn.signal returns false once the connection is closed', async (t) => {
  const { url, server } = await startServer(t);
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  assert.equal(conn.signal('x', utf8('y')), true);
  await within(conn.close(), 2_000, 'conn.close()');
  assert.equal(conn.isOpen, false);
  assert.equal(conn.signal('x', utf8('y')), false);
  await waitFor(() => !client.isConnected, 2_000, 'client disconnected');
});

test('conn.signal returns false after the client went away', async (t) => {
  const { url, server } = await startServer(t);
  const client = await connectClient(t, url);
  const conn = await newestConnection(server);
  await client.close();
  const info = await within(conn.closed, 2_000, 'conn.closed');
  assert.equal(info.code, 1000);
  assert.equal(conn.signal('x', utf8('y')), false);
});

test('conn.signal throws for a signal that may not be sent (no name, no payload; bad name)', async (t) => {
  const { url, server } = await startServer(t);
  await connectClient(t, url);
  const conn = await newestConnection(server);
  assert.throws(() => conn.signal('', utf8('')), { name: 'ProtocolError' });
  assert.throws(() => conn.signal('é', utf8('x')), { name: 'ProtocolError' });
  assert.throws(() => conn.signal('x'.repeat(256), utf8('x')), { name: 'ProtocolError' });
  assert.throws(() => conn.signal('odd', { encoding: 'utf16', data: Uint8Array.of(1) }), { name: 'ProtocolError' });
  assert.equal(conn.isOpen, true);
});

test('server.broadcast sends one signal to every connection, in every encoding, and counts them', async (t) => {
  const { url, server } = await startServer(t);
  const clients = await Promise.all([1, 2, 3].map(() => connectClient(t, url)));
  const received = clients.map(() => [] as IncomingMessage[]);
  for (const [i, client] of clients.entries()) client.on('signal', (message) => received[i]!.push(message));
  await waitFor(() => server.connections.size === 3, 2_000, 'three connections');
  for (const [name, payload] of SIGNALS) assert.equal(server.broadcast(name, payload), 3);
  await waitFor(() => received.every((r) => r.length === SIGNALS.length), 2_000, 'every signal at every client');
  const expected = SIGNALS.map(([name, payload]) => [name, payload.encoding, hex(payload.data)]);
  for (const messages of received) assert.deepEqual(messages.map(summary), expected);
});

test('server.broadcast with a filter reaches only the connections it accepts', async (t) => {
  const { url, server } = await startServer(t);
  const clients = await Promise.all([1, 2, 3, 4].map(() => connectClient(t, url)));
  const counts = clients.map(() => 0);
  for (const [i, client] of clients.entries()) {
    client.on('signal', () => {
      counts[i]!++;
    });
  }
  await waitFor(() => server.connections.size === 4, 2_000, 'four connections');
  const chosen = new Set([...server.connections].slice(0, 2));
  assert.equal(
    server.broadcast('some', utf8('x'), (conn) => chosen.has(conn)),
    2,
  );
  // A signal to everyone after it: once every client has that one, the filtered one has arrived
  // wherever it was going to (signals on one connection keep their order).
  assert.equal(server.broadcast('all', utf8('y')), 4);
  await waitFor(() => counts.reduce((a, b) => a + b, 0) === 6, 2_000, 'six deliveries');
  assert.deepEqual(counts.toSorted(), [1, 1, 2, 2]);
});

test('server.broadcast refuses an invalid signal before sending anything, and skips closed connections', async (t) => {
  const { url, server } = await startServer(t);
  const stays = await connectClient(t, url);
  const leaves = await connectClient(t, url);
  const received: IncomingMessage[] = [];
  stays.on('signal', (message) => received.push(message));
  await waitFor(() => server.connections.size === 2, 2_000, 'two connections');
  assert.throws(() => server.broadcast('x'.repeat(256), utf8('too long a name')), { name: 'ProtocolError' });
  assert.throws(() => server.broadcast('', utf16('')), { name: 'ProtocolError' });
  await leaves.close();
  await waitFor(() => server.connections.size === 1, 2_000, 'the closed connection gone');
  assert.equal(server.broadcast('after', utf8('z')), 1);
  await waitFor(() => received.length === 1, 2_000, 'the signal');
  assert.deepEqual(received.map(summary), [['after', 'utf8', hex(new TextEncoder().encode('z'))]]);
});

test('server.broadcast with a filter that throws sends to no connection', async (t) => {
  const { url, server } = await startServer(t);
  const clients = await Promise.all([1, 2, 3].map(() => connectClient(t, url)));
  let count = 0;
  for (const client of clients) {
    client.on('signal', () => {
      count++;
    });
  }
  await waitFor(() => server.connections.size === 3, 2_000, 'three connections');
  const last = [...server.connections].at(-1);
  assert.throws(
    () =>
      server.broadcast('x', utf8('y'), (conn) => {
        if (conn === last) throw new Error('filter failed');
        return true;
      }),
    /filter failed/,
  );
  // A signal after it to everyone: once each client has it, nothing else was on its way.
  assert.equal(server.broadcast('after', utf8('z')), 3);
  await waitFor(() => count >= 3, 2_000, 'the later signal');
  assert.equal(count, 3);
});
