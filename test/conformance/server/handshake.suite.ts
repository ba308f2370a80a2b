/**
 * The opening of a connection: the AcceptConf bytes a peer receives first, and the v2.1
 * negotiation (ClientConf, type 34).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { connectClient, hex, rawPeer, startServer } from '../../helpers.ts';
import { bytes, id, newestConnection, takeAcceptConf, within } from './wire.ts';

test('AcceptConf with the defaults: v2.1, 60000 ms, 1 MiB, no sub-protocol', async (t) => {
  const { url } = await startServer(t);
  const peer = await rawPeer(t, url);
  const conf = await takeAcceptConf(peer);
  // 17 02 01 | 60000 = 0x0000ea60 LE | 1048576 = 0x00100000 LE
  assert.equal(hex(conf), '170201' + '60ea0000' + '00001000');
});

test('AcceptConf carries a custom read timeout, message size and sub-protocol', async (t) => {
  const { url } = await startServer(t, { readTimeout: 1234, maxMessageSize: 4096, subProtocol: 'chat.v1' });
  const peer = await rawPeer(t, url);
  const conf = await takeAcceptConf(peer);
  // 1234 = 0x04d2, 4096 = 0x1000
  assert.equal(hex(conf), `170201d204000000100000${Buffer.from('chat.v1').toString('hex')}`);
});

test('AcceptConf carries a sub-protocol given as raw bytes unchanged', async (t) => {
  const { url } = await startServer(t, { subProtocol: Uint8Array.of(0x00, 0xff, 0x7f) });
  const peer = await rawPeer(t, url);
  const conf = await takeAcceptConf(peer);
  assert.equal(hex(conf.subarray(11)), '00ff7f');
});

test('AcceptConf is the first message, before anything onClientConnected sends', async (t) => {
  const { url } = await startServer(t, {
    onClientConnected: (conn) => {
      conn.signal('hello', utf8('hi'));
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  assert.equal(hex(await peer.next()), `4005${Buffer.from('hellohi').toString('hex')}`);
});

test('a server with protocolMinor 0 announces minor 0', async (t) => {
  const { url } = await startServer(t, { protocolMinor: 0 });
  const peer = await rawPeer(t, url);
  const conf = await takeAcceptConf(peer);
  assert.equal(hex(conf), '170200' + '60ea0000' + '00001000');
});

test('a server with protocolMinor 0 closes 1002 when it receives ClientConf', async (t) => {
  const { url } = await startServer(t, { protocolMinor: 0 });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x22, 0x01));
  const { code } = await within(peer.closed, 2_000, 'close');
  assert.equal(code, 1002);
});

test('ClientConf once is accepted; the connection then works and speaks v2.1', async (t) => {
  const { url, server } = await startServer(t, { onRequest: (_c, msg) => msg.payload });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const conn = await newestConnection(server);
  assert.equal(conn.supportsRequests, false, 'v2.0 until ClientConf arrives');
  peer.send(bytes(0x22, 0x01));
  peer.send(bytes(0x7f, id(7), 0x04, 'echo', 'hi'));
  assert.equal(hex(await peer.next()), hex(bytes(0xbf, id(7), 'hi')));
  assert.equal(conn.supportsRequests, true);
});

test('ClientConf sent twice closes 1002', async (t) => {
  const { url } = await startServer(t);
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x22, 0x01));
  peer.send(bytes(0x22, 0x01));
  const { code } = await within(peer.closed, 2_000, 'close');
  assert.equal(code, 1002);
});

test('ClientConf of the wrong length closes 1002', async (t) => {
  const { url } = await startServer(t);
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x22, 0x01, 0x00));
  const { code } = await within(peer.closed, 2_000, 'close');
  assert.equal(code, 1002);
});

test('a Client negotiates v2.1 with a default server', async (t) => {
  const { url, server } = await startServer(t, { onRequest: (_c, msg) => msg.payload });
  const client = await connectClient(t, url);
  assert.equal(client.supportsV21, true);
  assert.equal(client.serverInfo?.minor, 1);
  assert.equal(client.serverInfo?.readTimeout, 60_000);
  assert.equal(client.serverInfo?.maxMessageSize, 1024 * 1024);
  // The server learns it from the ClientConf, which arrives before the first request.
  assert.equal(payloadText(await client.request('echo', utf8('x'))), 'x');
  assert.equal((await newestConnection(server)).supportsRequests, true);
});

test('a Client stays on v2.0 against a protocolMinor 0 server and works', async (t) => {
  const { url, server, logger } = await startServer(t, { protocolMinor: 0, onRequest: (_c, msg) => msg.payload });
  const client = await connectClient(t, url);
  assert.equal(client.supportsV21, false);
  assert.equal(client.serverInfo?.minor, 0);
  // Had it sent ClientConf, the server would have closed the connection.
  assert.equal(payloadText(await client.request('echo', utf8('v20'))), 'v20');
  const conn = await newestConnection(server);
  assert.equal(conn.supportsRequests, false);
  assert.equal(conn.isOpen, true);
  assert.deepEqual(
    logger.entries.filter((e) => e.level === 'error' || e.level === 'warn'),
    [],
  );
});

test('a Client with the same sub-protocol connects', async (t) => {
  const { url } = await startServer(t, { subProtocol: 'chat.v1', onRequest: () => 'ok' });
  const client = await connectClient(t, url, { subProtocol: 'chat.v1' });
  assert.equal(payloadText(await client.request('x', utf8(''))), 'ok');
});

test('conn.negotiated(): true for a v2.1 client, even when asked in onClientConnected', async (t) => {
  const verdicts: boolean[] = [];
  const { url } = await startServer(t, {
    onClientConnected: async (conn) => {
      verdicts.push(await conn.negotiated());
      if (conn.supportsRequests) conn.signal('ready', utf8('yes'));
    },
  });
  const client = await connectClient(t, url, { autoConnect: false });
  const ready = new Promise<string>((resolve) => client.once('signal', (msg) => resolve(payloadText(msg.payload))));
  await client.connect();
  assert.equal(await within(ready, 2_000, 'the ready signal'), 'yes');
  assert.deepEqual(verdicts, [true]);
});

test('conn.negotiated(): false when the first message is not ClientConf, and when the peer leaves', async (t) => {
  const { url, server } = await startServer(t, { onRequest: (_c, msg) => msg.payload });
  const v20 = await rawPeer(t, url);
  await takeAcceptConf(v20);
  const first = await newestConnection(server);
  const verdict = first.negotiated();
  v20.send(bytes(0x7f, id(1), 1, 'e', 'x'));
  assert.equal(await within(verdict, 2_000, 'the verdict'), false);
  assert.equal(await first.negotiated(), false, 'asked again after the fact');

  const silent = await rawPeer(t, url);
  await takeAcceptConf(silent);
  const second = await newestConnection(server, 2);
  const pending = second.negotiated();
  silent.ws.terminate();
  assert.equal(await within(pending, 2_000, 'the verdict after leaving'), false);
});
