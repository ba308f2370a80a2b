/**
 * A close crossing the peer's: the client's close frame arrives first (the server echoes it),
 * then the application closes too. Its close() sends nothing (the connection is already closing),
 * so the close that happened is the client's, and that is what the server reports. Over ws, whose
 * close waits for the TCP connection to end, so the window is wide enough to hit: a raw client
 * that sends its close frame and keeps its side of the TCP connection open.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import type { Connection } from '../../src/server/connection.ts';
import type { DisconnectInfo } from '../../src/server/options.ts';
import { Server } from '../../src/server/server.ts';
import { silentLogger } from '../../src/logger.ts';
import { wsTransport } from '../../transports/ws.ts';
import { waitFor } from '../helpers.ts';
import { maskedFrame } from '../transports/helpers.ts';

test('the application closing after the client did reports the client close, the only one sent', async (t) => {
  let connected!: (conn: Connection) => void;
  const connection = new Promise<Connection>((resolve) => {
    connected = resolve;
  });
  let disconnected!: (info: DisconnectInfo) => void;
  const disconnect = new Promise<DisconnectInfo>((resolve) => {
    disconnected = resolve;
  });
  const server = new Server({
    transport: wsTransport({ host: '127.0.0.1', port: 0 }),
    logger: silentLogger,
    onClientConnected: (conn) => connected(conn),
    onClientDisconnected: (_conn, info) => disconnected(info),
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 1_000 }));
  const socket = connect({ port: server.address()!.port, host: '127.0.0.1', allowHalfOpen: true });
  t.after(() => socket.destroy());
  await new Promise((resolve) => socket.once('connect', resolve));
  let received = Buffer.alloc(0);
  socket.on('data', (data: Buffer) => {
    received = Buffer.concat([received, data]);
  });
  socket.write(
    'GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
  );
  const conn = await connection;
  // The client's close frame, 1000 "bye".
  socket.write(maskedFrame(0x8, Buffer.concat([Buffer.from([0x03, 0xe8]), Buffer.from('bye')])));
  // Once the echo is back, the server has read the client's close.
  await waitFor(() => received.includes(Buffer.from('880503e8627965', 'hex')), 2_000, 'the echo of the close');
  void conn.close(4001, 'server reason');
  socket.end();
  const info = await disconnect;
  assert.deepEqual({ code: info.code, reason: info.reason }, { code: 1000, reason: 'bye' });
  const frames = received.subarray(received.indexOf('\r\n\r\n') + 4);
  assert.equal(frames.toString('hex').match(/88/g)?.length, 1, 'one close frame went out: the echo');
});
