/**
 * Transport-level cases of the conformance suite: many connections misbehaving at once, a slow
 * consumer next to a healthy connection, and payloads that must outlive the transport callback.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { encodeRequest, encodeSignal } from '../../../protocol/encode.ts';
import { binary, payloadText, utf8 } from '../../../protocol/payload.ts';
import type { Client } from '../../../src/client/client.ts';
import type { Connection } from '../../../src/server/connection.ts';
import { connectClient, delay, startServer, waitFor } from '../../helpers.ts';

/** A tiny deterministic PRNG, so a failing run can be replayed from its seed. */
function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

test('1,000 connections sending, closing and terminating at random from both sides: nothing escapes', async (t) => {
  const seed = Number(process.env.STRESS_SEED ?? Date.now() % 1_000_000);
  const random = xorshift(seed);
  const connections = new Set<Connection>();
  let handled = 0;
  const { url, server, logger } = await startServer(t, {
    onClientConnected: (conn) => {
      connections.add(conn);
    },
    onClientDisconnected: (conn) => {
      connections.delete(conn);
    },
    onRequest: async (_conn, msg) => {
      handled++;
      if (random() < 0.3) await delay(random() * 20);
      return msg.payload;
    },
    onSignal: () => {},
  });
  const N = 1_000;
  const sockets: WebSocket[] = [];
  t.after(() => {
    for (const ws of sockets) ws.terminate();
  });
  const opened = Promise.all(
    Array.from({ length: N }, () => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      ws.on('error', () => {});
      sockets.push(ws);
      return new Promise<void>((resolve) => {
        ws.once('open', () => resolve());
        ws.once('close', () => resolve());
      });
    }),
  );
  await opened;
  const deadline = Date.now() + 2_000;
  let id = 1;
  let actions = 0;
  while (Date.now() < deadline) {
    for (let i = 0; i < 200; i++) {
      const ws = sockets[Math.floor(random() * sockets.length)]!;
      const roll = random();
      actions++;
      if (ws.readyState === WebSocket.OPEN) {
        if (roll < 0.6) ws.send(encodeRequest(id++, 'echo', binary(new Uint8Array(Math.floor(random() * 256)))));
        else if (roll < 0.8) ws.send(encodeSignal('s', utf8('x')));
        else if (roll < 0.9) ws.close(1000, 'bye');
        else ws.terminate();
      }
      // The server side misbehaves too: signals into, closes and terminations of random connections.
      const conns = [...connections];
      const conn = conns[Math.floor(random() * conns.length)];
      if (conn !== undefined) {
        const serverRoll = random();
        if (serverRoll < 0.7) conn.signal('push', binary(new Uint8Array(64)));
        else if (serverRoll < 0.8) void conn.close();
        else if (serverRoll < 0.85) conn.terminate();
        else void conn.request('ask', utf8('?'), { timeout: 50 }).catch(() => {});
      }
    }
    await delay(5);
  }
  for (const ws of sockets) ws.terminate();
  await waitFor(() => connections.size === 0, 5_000, 'every connection to end');
  assert.equal(server.connections.size, 0);
  assert.ok(handled > 0, 'requests were handled');
  assert.deepEqual(
    logger.entries.filter((e) => e.level === 'error'),
    [],
    `no error logged (seed ${seed}, ${actions} actions)`,
  );
});

test('an async handler that awaits before reading still sees its whole payload', async (t) => {
  const { url } = await startServer(t, {
    onRequest: async (_conn, msg) => {
      // Transports whose runtime reuses receive buffers (uWS) must have copied the bytes already.
      await delay(20);
      await new Promise((resolve) => setImmediate(resolve));
      let sum = 0;
      for (const byte of msg.payload.data) sum = (sum + byte) % 65_536;
      return utf8(`${msg.payload.data.length}:${sum}`);
    },
  });
  const client = await connectClient(t, url);
  const sizes = [1, 100, 4_096, 65_536, 200_000];
  const replies = await Promise.all(
    sizes.map((size, i) => {
      const data = new Uint8Array(size).map((_, j) => (j * 31 + i) & 0xff);
      let sum = 0;
      for (const byte of data) sum = (sum + byte) % 65_536;
      return client.request('sum', binary(data)).then((reply) => [payloadText(reply), `${size}:${sum}`]);
    }),
  );
  for (const [got, expected] of replies) assert.equal(got, expected);
});

test('a slow consumer is closed at the buffer limit while a second connection keeps its latency', async (t) => {
  const limit = 256 * 1024;
  let slowConn: Connection | undefined;
  const { url, server } = await startServer(t, {
    maxBufferedBytes: limit,
    onRequest: (_conn, msg) => msg.payload,
    onClientConnected: (conn) => {
      if (conn.handshake.query === 'slow') slowConn = conn;
    },
  });
  const healthy: Client = await connectClient(t, url);
  // The slow peer reads its AcceptConf, then stops reading from the TCP socket.
  const slow = new WebSocket(`${url}?slow`, { perMessageDeflate: false });
  slow.on('error', () => {});
  t.after(() => slow.terminate());
  await new Promise<void>((resolve) => slow.once('message', () => resolve()));
  (slow as unknown as { _socket: { pause(): void } })._socket.pause();
  await waitFor(() => slowConn !== undefined, 1_000, 'the slow connection');
  const conn = slowConn!;

  const chunk = binary(new Uint8Array(16 * 1024));
  let peak = 0;
  const latencies: number[] = [];
  const deadline = Date.now() + 3_000;
  while (conn.isOpen && Date.now() < deadline) {
    for (let i = 0; i < 8 && conn.signal('flood', chunk); i++) peak = Math.max(peak, conn.bufferedAmount);
    const t0 = performance.now();
    await healthy.request('ping', utf8('x'));
    latencies.push(performance.now() - t0);
  }
  const closed = await conn.closed;
  assert.equal(closed.code, 1008);
  // Bounded: the limit plus the message that crossed it.
  assert.ok(peak <= limit + chunk.data.length + 64, `peak buffered ${peak} bytes`);
  latencies.sort((a, b) => a - b);
  const median = latencies[Math.floor(latencies.length / 2)]!;
  assert.ok(median < 100, `the healthy connection's median latency was ${median.toFixed(1)} ms`);
  assert.equal(payloadText(await healthy.request('after', utf8('still here'))), 'still here');
  assert.equal(server.connections.size, 1);
});
