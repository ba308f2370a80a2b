/**
 * A Client against raw `ws` servers that misbehave: minimal cases of what the client fuzz
 * (test/chaos/client-fuzz.test.ts) found.
 */
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { test } from 'node:test';
import { decode, idToNumber } from '../../protocol/decode.ts';
import { encodeReply, encodeSessionCreated } from '../../protocol/encode.ts';
import { utf8 } from '../../protocol/payload.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { DisconnectedError } from '../../src/errors.ts';
import { connectClient, delay, waitFor } from '../helpers.ts';
import { acceptConf, outcome, type RawConnection, rawServer } from '../conformance/client/helpers.ts';

const SESSION = '{"k":"abc","c":"2026-11-22T11:41:29.065Z","l":"2026-11-22T11:41:29.065Z"}';

function bounded<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]);
}

/**
 * Timers created between `start()` and `freeze()` and not yet cleared or run, unref'd ones
 * included (async_hooks; destroy hooks come a little later, hence a bounded wait on `live()`).
 */
function timerWatch(): { start(): void; freeze(): void; live(): number; stop(): void } {
  const live = new Set<number>();
  let on = false;
  const hook = createHook({
    init: (asyncId, type) => {
      if (on && type === 'Timeout') live.add(asyncId);
    },
    destroy: (asyncId) => {
      live.delete(asyncId);
    },
  });
  hook.enable();
  return {
    start: () => {
      on = true;
    },
    freeze: () => {
      on = false;
    },
    live: () => live.size,
    stop: () => {
      on = false;
      hook.disable();
    },
  };
}

// Found by the fuzz (readTimeout 0xaaaaaaab): 0.75 x a u32 read timeout went past a timer's range,
// which Node runs after 1 ms with a TimeoutOverflowWarning, over and over while connected.
test('an announced read timeout past a timer range arms no 1 ms heartbeat loop', async (t) => {
  const warnings: Error[] = [];
  const onWarning = (warning: Error): void => {
    warnings.push(warning);
  };
  process.on('warning', onWarning);
  t.after(() => process.off('warning', onWarning));
  const heartbeats: number[] = [];
  const server = await rawServer(t, async (conn) => {
    conn.send(acceptConf({ minor: 0, readTimeout: 0xffff_ffff }));
    for (;;) {
      const bytes = await conn.next(5_000);
      if (bytes[0] === 33) heartbeats.push(performance.now());
    }
  });
  const client = await connectClient(t, server.url);
  assert.equal(client.serverInfo?.readTimeout, 0xffff_ffff);
  await delay(100);
  assert.deepEqual(
    warnings.map((w) => w.name),
    [],
  );
  assert.deepEqual(heartbeats, []);
});

// Found by the fuzz: close() while the session restore of a reconnection waited for its reply
// never resolved (it waited for a 'disconnect' the loop only emits for a finished connection).
test('close() during the session restore after a reconnect resolves at once and closes with 1000', async (t) => {
  const server = await rawServer(t, (conn: RawConnection) => {
    conn.send(acceptConf({ minor: 1 }));
    if (server.connections.length === 1) {
      // The first server gives the client a session, then goes away; the second never answers
      // the restore.
      conn.send(encodeSessionCreated(SESSION));
      conn.ws.close(1001, 'restart');
    }
  });
  const client = await connectClient(t, server.url, {
    autoConnect: false,
    reconnect: { initialDelay: 10, maxDelay: 10, jitter: 0 },
    requestTimeout: 10_000,
  });
  await client.connect();
  await waitFor(
    () => server.connections[1]?.received.some((bytes) => bytes[0] === 32) === true,
    2_000,
    'the restore request on the second connection',
  );
  assert.equal(client.state, 'reconnecting');
  await bounded(client.close(), 1_000, 'client.close()');
  assert.equal(client.state, 'closed');
  assert.equal((await bounded(server.connections[1]!.closed, 1_000, 'the close')).code, 1000);
});

// Found by the fuzz: close() during the handshake left that connection open, with its connect
// timer, until connectTimeout; the server then saw 1002 "no AcceptConf" instead of 1000.
test('close() during the handshake closes that connection at once with 1000 and leaves no timer', async (t) => {
  const server = await rawServer(t, () => {});
  const client = await connectClient(t, server.url, { autoConnect: false, connectTimeout: 5_000 });
  const timers = timerWatch();
  t.after(() => timers.stop());
  timers.start();
  const connecting = outcome(client.connect());
  await waitFor(() => server.connections.length === 1, 2_000, 'the connection');
  await bounded(client.close(), 1_000, 'client.close()');
  const closed = await bounded(server.connections[0]!.closed, 1_000, 'the close');
  assert.deepEqual(closed, { code: 1000, reason: 'client closed' });
  const result = await connecting;
  assert.ok(result.error instanceof DisconnectedError, String(result.error));
  timers.freeze();
  await waitFor(() => timers.live() === 0, 500, 'the connect timer to go');
});

// Found by the fuzz: the serverTimeout ping timer outlived close() by up to a third of the timeout.
test('close() stops the serverTimeout ping timer', async (t) => {
  const server = await rawServer(t, (conn) => conn.send(acceptConf({ minor: 1 })));
  const client = await connectClient(t, server.url, { autoConnect: false, serverTimeout: 60_000 });
  const timers = timerWatch();
  t.after(() => timers.stop());
  timers.start();
  await client.connect();
  await bounded(client.close(), 1_000, 'client.close()');
  timers.freeze();
  await waitFor(() => timers.live() === 0, 500, 'the client timers to go');
});

// PROTOCOL.md §2: request ids are a counter that a reconnect does not reset.
test('request ids go on across reconnects: a request id names one request in the client life', async (t) => {
  const ids: number[] = [];
  const server = await rawServer(t, async (conn) => {
    conn.send(acceptConf({ minor: 0 }));
    for (;;) {
      const message = decode(await conn.next(5_000));
      if (message.kind !== 'request') continue;
      ids.push(idToNumber(message.id));
      conn.send(encodeReply(message.id, message.payload));
      // The first connection ends after two requests: the client reconnects.
      if (server.connections.length === 1 && ids.length === 2) conn.ws.close(1001, 'restart');
    }
  });
  const client = await connectClient(t, server.url, {
    transport: wsClientTransport(),
    reconnect: { initialDelay: 10, maxDelay: 20 },
    protocolMinor: 0,
  });
  await client.request('a', utf8('1'));
  await client.request('b', utf8('2'));
  await waitFor(() => server.connections.length === 2 && client.isConnected, 3_000, 'the reconnection');
  await client.request('c', utf8('3'));
  assert.deepEqual(ids, [1, 2, 3]);
});
