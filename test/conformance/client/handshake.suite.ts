/**
 * What the client checks in the handshake, against a raw `ws` server sending crafted bytes:
 * AcceptConf major version, sub-protocol, the first message, and the v2.1 negotiation
 * (ClientConf `22 01` only toward a server announcing minor >= 1). Plus the heartbeat the client
 * derives from the announced read timeout.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode } from '../../../protocol/decode.ts';
import { encodeReply, encodeSignal } from '../../../protocol/encode.ts';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { ConnectError, IncompatibleServerError } from '../../../src/errors.ts';
import { connectClient, delay, hex, waitFor } from '../../helpers.ts';
import { acceptConf, outcome, type RawConnection, rawServer } from './helpers.ts';

const lazy = { autoConnect: false, reconnect: { initialDelay: 20, maxDelay: 50 } } as const;

/** Answers every request with its own payload, after `onOpen` ran. */
async function echoLoop(conn: RawConnection): Promise<void> {
  for (;;) {
    const message = decode(await conn.next(5_000));
    if (message.kind === 'request') conn.send(encodeReply(message.id, message.payload));
  }
}

for (const [what, first, detail] of [
  ['major version 3', acceptConf({ major: 3 }), /protocol 3/],
  ['major version 1', acceptConf({ major: 1, minor: 9 }), /protocol 1/],
  ['a different sub-protocol', acceptConf({ subProtocol: 'other' }), /sub-protocol/],
  ['a sub-protocol the client did not ask for', acceptConf({ subProtocol: 'extra' }), /sub-protocol/],
  ['a signal instead of AcceptConf', encodeSignal('hello', utf8('x')), /AcceptConf/],
  ['a truncated AcceptConf', acceptConf().subarray(0, 7), /AcceptConf/],
  ['a text frame', 'hello', /AcceptConf/],
] as const) {
  test(`${what}: IncompatibleServerError, closed with 1002, no reconnect`, async (t) => {
    const server = await rawServer(t, (conn) => conn.send(first));
    const client = await connectClient(t, server.url, {
      ...lazy,
      ...(what === 'a different sub-protocol' ? { subProtocol: 'mine' } : {}),
    });
    const reconnecting: number[] = [];
    client.on('reconnecting', ({ attempt }) => reconnecting.push(attempt));
    const result = await outcome(client.connect());
    assert.ok(result.error instanceof IncompatibleServerError, String(result.error));
    assert.match(result.error.message, detail);
    const closed = await server.connections[0]!.closed;
    assert.equal(closed.code, 1002);
    await delay(100);
    assert.equal(server.attempts, 1, 'a permanent failure: no second attempt');
    assert.deepEqual(reconnecting, []);
    assert.equal(client.state, 'disconnected');
  });
}

test('the same sub-protocol on both sides connects', async (t) => {
  const server = await rawServer(t, (conn) => {
    conn.send(acceptConf({ subProtocol: 'chat.v1' }));
    return echoLoop(conn);
  });
  const client = await connectClient(t, server.url, { subProtocol: 'chat.v1' });
  assert.equal(payloadText(await client.request('echo', utf8('ok'))), 'ok');
});

test('AcceptConf minor 0: the client sends no ClientConf, its first message is the request', async (t) => {
  const server = await rawServer(t, (conn) => {
    conn.send(acceptConf({ minor: 0 }));
    return echoLoop(conn);
  });
  const client = await connectClient(t, server.url);
  assert.deepEqual(client.serverInfo, { major: 2, minor: 0, readTimeout: 60_000, maxMessageSize: 1024 * 1024 });
  assert.equal(client.supportsV21, false);
  assert.equal(payloadText(await client.request('echo', utf8('hi'))), 'hi');
  const received = server.connections[0]!.received.map(hex);
  assert.equal(received.length, 1);
  assert.equal(received[0], `800100000000000000046563686f${hex(utf8('hi').data)}`);
});

for (const minor of [1, 7]) {
  test(`AcceptConf minor ${minor}: the client sends exactly 22 01 first`, async (t) => {
    const server = await rawServer(t, (conn) => {
      conn.send(acceptConf({ minor }));
      return echoLoop(conn);
    });
    const client = await connectClient(t, server.url);
    assert.equal(client.supportsV21, true);
    assert.equal(client.serverInfo?.minor, minor);
    assert.equal(payloadText(await client.request('echo', utf8('hi'))), 'hi');
    const received = server.connections[0]!.received.map(hex);
    assert.equal(received[0], '2201');
    assert.equal(received.length, 2);
    assert.match(received[1]!, /^800100000000000000/);
  });
}

test('a Client with protocolMinor: 0 sends no ClientConf to a v2.1 server', async (t) => {
  const server = await rawServer(t, (conn) => {
    conn.send(acceptConf({ minor: 1 }));
    return echoLoop(conn);
  });
  const client = await connectClient(t, server.url, { protocolMinor: 0 });
  assert.equal(client.supportsV21, false);
  await client.request('echo', utf8('hi'));
  assert.match(hex(server.connections[0]!.received[0]!), /^80/);
});

test('AcceptConf and a signal in the same burst: the signal is delivered after connect', async (t) => {
  const server = await rawServer(t, (conn) => {
    conn.send(acceptConf({ minor: 0 }));
    conn.send(encodeSignal('welcome', utf8('hi')));
  });
  const client = await connectClient(t, server.url, { autoConnect: false });
  const signals: string[] = [];
  client.on('signal', (msg) => signals.push(`${msg.name}:${payloadText(msg.payload)}`));
  await client.connect();
  await waitFor(() => signals.length === 1, 1_000, 'the welcome signal');
  assert.deepEqual(signals, ['welcome:hi']);
});

test('no AcceptConf within connectTimeout: ConnectError, and the client retries', async (t) => {
  const server = await rawServer(t, () => {});
  const client = await connectClient(t, server.url, { autoConnect: false, connectTimeout: 150, reconnect: false });
  const result = await outcome(client.connect());
  assert.ok(result.error instanceof ConnectError, String(result.error));
  assert.match(result.error.message, /AcceptConf/);
  assert.ok(result.ms >= 140 && result.ms < 1_000, `gave up after ${Math.round(result.ms)} ms`);
  assert.equal((await server.connections[0]!.closed).code, 1002);

  const retrying = await connectClient(t, server.url, {
    autoConnect: false,
    connectTimeout: 100,
    reconnect: { delay: () => 10, maxAttempts: 2 },
  });
  await assert.rejects(retrying.connect(), ConnectError);
  assert.equal(server.attempts, 3, 'a timeout is not permanent: one retry');
});

test('heartbeat: the client sends 21 after 0.75 x the announced read timeout of idleness', async (t) => {
  const heartbeats: number[] = [];
  let openedAt = 0;
  const server = await rawServer(t, async (conn) => {
    openedAt = performance.now();
    conn.send(acceptConf({ minor: 0, readTimeout: 200 }));
    for (;;) {
      const bytes = await conn.next(5_000);
      if (hex(bytes) === '21') heartbeats.push(performance.now() - openedAt);
      else {
        const message = decode(bytes);
        if (message.kind === 'request') conn.send(encodeReply(message.id, message.payload));
      }
    }
  });
  const client = await connectClient(t, server.url);
  await waitFor(() => heartbeats.length >= 3, 1_500, 'three heartbeats');
  // Every ~150 ms (0.75 x 200), never before.
  assert.ok(heartbeats[0]! >= 140, `first heartbeat at ${Math.round(heartbeats[0]!)} ms`);
  for (let i = 1; i < heartbeats.length; i++) {
    const gap = heartbeats[i]! - heartbeats[i - 1]!;
    assert.ok(gap >= 130 && gap < 400, `heartbeat gap ${Math.round(gap)} ms`);
  }

  // Traffic postpones the heartbeat: requests every 50 ms leave no idle window of 150 ms.
  const before = heartbeats.length;
  for (let i = 0; i < 8; i++) {
    await client.request('echo', utf8(String(i)));
    await delay(50);
  }
  assert.ok(heartbeats.length - before <= 1, `heartbeats during traffic: ${heartbeats.length - before}`);
});

test('serverTimeout: a server that goes silent (no pongs, nothing sent) is dropped and the client reconnects', async (t) => {
  let connections = 0;
  const server = await rawServer(t, (conn) => {
    connections++;
    conn.send(acceptConf({ minor: 0 }));
    // The first server freezes: it stops reading, so pings get no pong.
    if (connections === 1) (conn.ws as unknown as { _socket: { pause(): void } })._socket.pause();
  });
  const client = await connectClient(t, server.url, {
    serverTimeout: 300,
    reconnect: { initialDelay: 20, maxDelay: 20, jitter: 0 },
  });
  const started = performance.now();
  const lost = await new Promise<number>((resolve) => client.once('disconnect', ({ code }) => resolve(code)));
  const elapsed = performance.now() - started;
  assert.equal(lost, 1006);
  assert.ok(elapsed >= 250 && elapsed < 2_000, `dropped after ${elapsed.toFixed(0)} ms`);
  await waitFor(() => client.isConnected && connections === 2, 2_000, 'the reconnect');
});

test('serverTimeout: a quiet server that answers pings keeps the connection', async (t) => {
  // Counted by the pings the server answers, not by a fixed wait: the client pings every third of
  // serverTimeout, so four answered pings span more than a whole serverTimeout of a server that
  // sends nothing else. Not 300 ms: on a loaded machine a pong can take that long (seen in CI).
  let pings = 0;
  const server = await rawServer(t, (conn) => {
    conn.ws.on('ping', () => pings++);
    conn.send(acceptConf({ minor: 0 }));
  });
  const client = await connectClient(t, server.url, { serverTimeout: 3_000 });
  const drops: number[] = [];
  client.on('disconnect', ({ code }) => drops.push(code));
  await waitFor(() => pings >= 4, 30_000, 'four pings answered');
  assert.deepEqual(drops, []);
  assert.equal(client.isConnected, true);
});
