/**
 * Server and Client over the in-process memory transport: the same engine, no sockets.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { binary, payloadText, utf8, utf16 } from '../../protocol/payload.ts';
import { Client, type ClientOptions } from '../../src/client/client.ts';
import { ConnectError, DisconnectedError, RequestError, ShutdownError } from '../../src/errors.ts';
import type { IncomingMessage } from '../../src/peer/peer.ts';
import type { Connection } from '../../src/server/connection.ts';
import type { ServerOptions } from '../../src/server/options.ts';
import { Server } from '../../src/server/server.ts';
import { memoryTransport } from '../../transports/memory.ts';
import { hex, recordingLogger, waitFor } from '../helpers.ts';
import { deferred, outcome } from '../conformance/client/helpers.ts';

async function memoryPair(
  t: TestContext,
  serverOptions: Omit<ServerOptions, 'transport'> = {},
  clientOptions: ClientOptions = {},
) {
  const transport = memoryTransport();
  const connections: Connection[] = [];
  const server = new Server({
    transport: transport.server,
    logger: recordingLogger(),
    ...serverOptions,
    onClientConnected: (conn) => {
      connections.push(conn);
    },
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  const client = new Client('ws://memory/room?x=1', {
    transport: transport.client,
    logger: recordingLogger(),
    reconnect: false,
    ...clientOptions,
  });
  t.after(() => client.close());
  await client.connect();
  await waitFor(() => connections.length === 1, 1_000, 'onClientConnected');
  return { server, client, connections, transport };
}

test('memory: echo requests in three encodings and request errors', async (t) => {
  const { client, connections } = await memoryPair(t, {
    onRequest: (_c, msg) => {
      if (msg.name === 'fail') throw new RequestError('NOPE', 'no');
      return msg.payload;
    },
  });
  assert.equal(connections[0]!.handshake.path, '/room');
  assert.equal(connections[0]!.handshake.query, 'x=1');
  for (const payload of [utf8('héllo'), utf16('wörld 😀'), binary(new Uint8Array([0, 255]))]) {
    const reply = await client.request('echo', payload);
    assert.equal(reply.encoding, payload.encoding);
    assert.equal(hex(reply.data), hex(payload.data));
  }
  await assert.rejects(client.request('fail', utf8('x')), (error: unknown) => {
    return error instanceof RequestError && error.code === 'NOPE';
  });
  const many = await Promise.all(Array.from({ length: 100 }, (_, i) => client.request('echo', utf8(String(i)))));
  assert.deepEqual(
    many.map(payloadText),
    Array.from({ length: 100 }, (_, i) => String(i)),
  );
});

test('memory: signals both ways', async (t) => {
  const atServer: string[] = [];
  const { client, connections } = await memoryPair(t, {
    onSignal: (_c, msg) => {
      atServer.push(`${msg.name}:${payloadText(msg.payload)}`);
    },
  });
  const atClient: IncomingMessage[] = [];
  client.on('signal', (msg) => atClient.push(msg));

  assert.equal(client.signal('up', utf8('one')), true);
  assert.equal(client.signal('up', utf16('two')), true);
  assert.equal(connections[0]!.signal('down', utf8('three')), true);
  assert.equal(connections[0]!.signal('', binary(new Uint8Array([4]))), true);
  await waitFor(() => atServer.length === 2 && atClient.length === 2, 1_000, 'the signals');
  assert.deepEqual(atServer, ['up:one', 'up:two']);
  assert.deepEqual(
    atClient.map((m) => [m.name, m.payload.encoding, hex(m.payload.data)]),
    [
      ['down', 'utf8', hex(utf8('three').data)],
      ['', 'binary', '04'],
    ],
  );
});

test('memory: server-to-client requests', async (t) => {
  const { connections } = await memoryPair(
    t,
    {},
    {
      onRequest: (msg) => {
        if (msg.name === 'fail') throw new RequestError('AGENT', 'refused');
        return utf16(`agent: ${payloadText(msg.payload)}`);
      },
    },
  );
  const conn = connections[0]!;
  await waitFor(() => conn.supportsRequests, 1_000, 'ClientConf');
  const reply = await conn.request('ask', utf8('status?'));
  assert.equal(reply.encoding, 'utf16');
  assert.equal(payloadText(reply), 'agent: status?');
  await assert.rejects(conn.request('fail', utf8('x')), RequestError);
});

test('memory: shutdown drains the in-flight request, refuses new ones and closes with 1001', async (t) => {
  const gate = deferred();
  let started = false;
  const { server, client, transport } = await memoryPair(t, {
    onRequest: async (_c, msg) => {
      if (msg.name !== 'slow') return msg.payload;
      started = true;
      await gate.promise;
      return 'done';
    },
  });
  const codes: number[] = [];
  client.on('disconnect', ({ code }) => codes.push(code));
  const inFlight = outcome(client.request('slow', utf8('x')));
  await waitFor(() => started, 1_000, 'the slow handler');
  const shutdown = server.shutdown({ timeout: 2_000 });
  await assert.rejects(client.request('late', utf8('x')), ShutdownError);

  const other = new Client('ws://memory/', {
    transport: transport.client,
    logger: recordingLogger(),
    reconnect: false,
    autoConnect: false,
  });
  t.after(() => other.close());
  const refused = await outcome(other.connect());
  assert.ok(refused.error instanceof ConnectError);
  assert.equal(refused.error.status, 503);

  gate.resolve();
  assert.equal(payloadText((await inFlight).value!), 'done');
  await shutdown;
  await waitFor(() => codes.length === 1, 1_000, 'the disconnect');
  assert.deepEqual(codes, [1001]);
  await assert.rejects(client.request('after', utf8('x')), DisconnectedError);
});
