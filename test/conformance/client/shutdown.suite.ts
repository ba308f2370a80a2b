/**
 * Graceful shutdown as a client sees it, over real sockets: server.shutdown() and conn.close().
 * Timeline checked: in-flight requests get their replies, later requests get ShutdownError, new
 * connections get HTTP 503, signals are dropped without ending the drain early, and connections
 * close with 1001 (shutdown) or 1000 (conn.close()).
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { Client } from '../../../src/client/client.ts';
import { ConnectError, DisconnectedError, InvalidArgumentError, ShutdownError } from '../../../src/errors.ts';
import type { Connection } from '../../../src/server/connection.ts';
import { Server } from '../../../src/server/server.ts';
import type { ServerTransport } from '../../../transports/types.ts';
import { transportUnderTest } from '../../transport-under-test.ts';
import { afterMicrotasks, connectClient, delay, recordingLogger, startServer, waitFor } from '../../helpers.ts';
import { within } from '../server/wire.ts';
import { aborted, deferred, outcome } from './helpers.ts';

test('shutdown timeline: in-flight reply delivered, new requests refused, 503, signals dropped, 1001', async (t) => {
  const gate = deferred();
  const started: string[] = [];
  const signals: string[] = [];
  let handlerFinishedAt = 0;
  const { server, url } = await startServer(t, {
    onRequest: async (_conn, msg) => {
      started.push(msg.name);
      if (msg.name !== 'slow') return msg.payload;
      await gate.promise;
      handlerFinishedAt = performance.now();
      return utf8('slow done');
    },
    onSignal: (_conn, msg) => {
      signals.push(msg.name);
    },
  });
  const a = await connectClient(t, url);
  const b = await connectClient(t, url);
  const codes: Record<string, number[]> = { a: [], b: [] };
  a.on('disconnect', ({ code }) => codes.a!.push(code));
  b.on('disconnect', ({ code }) => codes.b!.push(code));

  // Signals before the shutdown are handled: the check below is not vacuous.
  assert.equal(a.signal('before', utf8('x')), true);
  await waitFor(() => signals.length === 1, 1_000, 'the signal before shutdown');

  const inFlight = outcome(a.request('slow', utf8('x')));
  await waitFor(() => started.includes('slow'), 1_000, 'the slow handler to start');

  let shutdownDoneAt = 0;
  const shutdown = server.shutdown({ timeout: 5_000 }).then(() => {
    shutdownDoneAt = performance.now();
  });

  // A request after shutdown began, on either connection: refused with the shutdown reply.
  await assert.rejects(a.request('late', utf8('x')), ShutdownError);
  await assert.rejects(b.request('late', utf8('x')), ShutdownError);
  assert.deepEqual(started, ['slow'], 'no handler ran for the refused requests');

  // A new connection: refused over HTTP with 503.
  const fresh = new Client(url, {
    transport: transportUnderTest().client(),
    logger: recordingLogger(),
    reconnect: false,
    autoConnect: false,
  });
  t.after(() => fresh.close());
  const refused = await outcome(fresh.connect());
  assert.ok(refused.error instanceof ConnectError, String(refused.error));
  assert.equal(refused.error.status, 503);

  // A signal during shutdown: dropped. The request behind it on the same socket is answered
  // (refused) only after the server read the signal, so the signal was seen by then.
  assert.equal(b.signal('during', utf8('x')), true);
  await assert.rejects(b.request('after-signal', utf8('x')), ShutdownError);
  assert.deepEqual(signals, ['before'], 'onSignal must not run during shutdown');

  // The signal did not end the drain early: the slow handler still holds the shutdown.
  await delay(100);
  assert.equal(shutdownDoneAt, 0, 'shutdown must wait for the in-flight request');
  assert.equal(a.isConnected && b.isConnected, true, 'connections stay open while draining');

  gate.resolve();
  const reply = await inFlight;
  assert.equal(reply.ok, true, String(reply.error));
  assert.equal(payloadText(reply.value!), 'slow done');
  await shutdown;
  assert.ok(handlerFinishedAt > 0 && shutdownDoneAt >= handlerFinishedAt, 'shutdown resolved after the handler');

  await waitFor(() => codes.a!.length === 1 && codes.b!.length === 1, 1_000, 'both clients to see the close');
  assert.deepEqual(codes, { a: [1001], b: [1001] });
  assert.equal(server.connections.size, 0);
});

test('shutdown({timeout}) aborts a handler that never finishes and still resolves', async (t) => {
  let handlerSignal: AbortSignal | undefined;
  const { server, url } = await startServer(t, {
    onRequest: (_conn, _msg, ctx) => {
      handlerSignal = ctx.signal;
      // Ignores its signal on purpose: shutdown must not hang on it.
      return new Promise<never>(() => {});
    },
  });
  const client = await connectClient(t, url);
  const codes: number[] = [];
  client.on('disconnect', ({ code }) => codes.push(code));
  const pending = outcome(client.request('forever', utf8('x'), { timeout: 5_000 }));
  await waitFor(() => handlerSignal !== undefined, 1_000, 'the handler to start');

  const started = performance.now();
  await server.shutdown({ timeout: 150 });
  const took = performance.now() - started;
  assert.ok(took >= 140 && took < 1_500, `shutdown took ${Math.round(took)} ms`);
  assert.equal(handlerSignal!.aborted, true, 'the handler signal fired');

  const result = await pending;
  assert.ok(result.error instanceof DisconnectedError, String(result.error));
  assert.equal(result.error.closeCode, 1001);
  await waitFor(() => codes.length === 1, 1_000, 'the disconnect event');
  assert.deepEqual(codes, [1001]);
});

test('shutdown timeout aborts with a ShutdownError reason; the request settles once', async (t) => {
  let reason: unknown;
  const { server, url } = await startServer(t, {
    onRequest: async (_conn, _msg, ctx) => {
      reason = await aborted(ctx.signal);
      return 'aborted';
    },
  });
  const client = await connectClient(t, url);
  const pending = outcome(client.request('wait', utf8('x'), { timeout: 5_000 }));
  await delay(50);
  await server.shutdown({ timeout: 100 });
  assert.ok(reason instanceof ShutdownError, `abort reason: ${String(reason)}`);
  // The reply written right after the abort races the 1001 close; either is a settled outcome.
  const result = await pending;
  if (result.ok) assert.equal(payloadText(result.value!), 'aborted');
  else assert.ok(result.error instanceof DisconnectedError, String(result.error));
});

test('conn.close(): in-flight request finishes, new request gets ShutdownError, then 1000', async (t) => {
  const gate = deferred();
  const signals: string[] = [];
  let conn: Connection | undefined;
  const { server, url } = await startServer(t, {
    onClientConnected: (c) => {
      conn = c;
    },
    onRequest: async (_c, msg) => {
      if (msg.name !== 'slow') return msg.payload;
      await gate.promise;
      return 'slow done';
    },
    onSignal: (_c, msg) => {
      signals.push(msg.name);
    },
  });
  const client = await connectClient(t, url);
  const codes: number[] = [];
  client.on('disconnect', ({ code }) => codes.push(code));
  await waitFor(() => conn !== undefined, 1_000, 'onClientConnected');

  const inFlight = outcome(client.request('slow', utf8('x')));
  await delay(30);
  let closedAt = 0;
  const closing = conn!.close().then(() => {
    closedAt = performance.now();
  });
  await assert.rejects(client.request('late', utf8('x')), ShutdownError);
  client.signal('dropped', utf8('x'));
  await assert.rejects(client.request('later', utf8('x')), ShutdownError);
  assert.deepEqual(signals, []);
  await delay(50);
  assert.equal(closedAt, 0, 'close() waits for the in-flight handler');
  assert.equal(client.isConnected, true);

  const releasedAt = performance.now();
  gate.resolve();
  const reply = await inFlight;
  assert.equal(reply.ok, true, String(reply.error));
  assert.equal(payloadText(reply.value!), 'slow done');
  await closing;
  assert.ok(closedAt >= releasedAt);
  await waitFor(() => codes.length === 1, 1_000, 'the disconnect event');
  assert.deepEqual(codes, [1000]);

  // Only that connection closed: the server still serves others.
  assert.equal(server.isShuttingDown, false);
  const other = await connectClient(t, url);
  assert.equal(payloadText(await other.request('echo', utf8('still up'))), 'still up');
});

test('conn.close() with a code that may not be sent rejects with RangeError and changes nothing: the connection serves on, closes with a valid code, and shutdown completes', async (t) => {
  let conn: Connection | undefined;
  // Registered first, so it runs first: clients gone, a wedged connection cannot hang the
  // server's shutdown in startServer's own hook.
  const clients: Client[] = [];
  t.after(() => Promise.all(clients.map((c) => c.close())));
  const { server, url } = await startServer(t, {
    onClientConnected: (c) => {
      conn = c;
    },
    onRequest: (_c, msg) => msg.payload,
  });
  const client = await connectClient(t, url);
  clients.push(client);
  const codes: number[] = [];
  client.on('disconnect', ({ code }) => codes.push(code));
  await waitFor(() => conn !== undefined, 1_000, 'onClientConnected');
  for (const code of [1006, 1005, 999, 5000]) await assert.rejects(conn!.close(code), RangeError);
  assert.equal(conn!.isOpen, true);
  assert.equal(payloadText(await client.request('echo', utf8('still served'))), 'still served');
  await conn!.close(4000, 'bye');
  await waitFor(() => codes.length === 1, 1_000, 'the disconnect event');
  assert.deepEqual(codes, [4000]);
  // A second client, closed with an invalid code before the shutdown: the shutdown still ends.
  const other = await connectClient(t, url);
  clients.push(other);
  await waitFor(() => server.connections.size === 1, 1_000, 'the second connection');
  await assert.rejects([...server.connections][0]!.close(1006), RangeError);
  await within(server.shutdown({ timeout: 200 }), 5_000, 'the shutdown');
  await waitFor(() => !other.isConnected, 2_000, 'the second client disconnected');
});

test('client.close() with a code that may not be sent rejects with RangeError and leaves the client connected; a valid close() then works', async (t) => {
  let closedWith: number | undefined;
  let conn: Connection | undefined;
  // Registered first, so it runs first (see above): a client stuck open cannot hang the shutdown.
  t.after(() => conn?.terminate());
  const { url } = await startServer(t, {
    onClientConnected: (c) => {
      conn = c;
    },
    onRequest: (_c, msg) => msg.payload,
    onClientDisconnected: (_c, info) => {
      closedWith = info.code;
    },
  });
  const client = await connectClient(t, url);
  await assert.rejects(client.close(1006), RangeError);
  assert.equal(client.isConnected, true);
  assert.equal(payloadText(await client.request('echo', utf8('still up'))), 'still up');
  await client.close(4001, 'done');
  await waitFor(() => closedWith !== undefined, 1_000, 'the server to see the close');
  assert.equal(closedWith, 4001);
});

test('listen() and shutdown() called together: once listen() resolves the server is shutting down, and it ends stopped', async () => {
  const server = new Server({ transport: transportUnderTest().server(), logger: recordingLogger() });
  const listening = server.listen();
  const stopping = server.shutdown({ timeout: 200 });
  await listening;
  assert.equal(server.isShuttingDown, true, 'listen() must not undo the shutdown begun meanwhile');
  await stopping;
  assert.equal(server.isShuttingDown, true);
  assert.equal(server.address(), null);
});

/**
 * One round of the race below: shutdown() called `hops` microtasks after beforeUpgrade's verdict,
 * on `transport` or on it without `refuseUpgrades`. Resolves with the late client's HTTP status
 * when refused (undefined when closed without one), and whether shutdown() landed after the
 * server had answered the upgrade with an accept, before the connection opened.
 */
async function shutdownAfterVerdict(
  t: TestContext,
  hops: number,
  refuseUpgrades: boolean,
): Promise<{ readonly raced: boolean; readonly status?: number }> {
  const held = deferred();
  const slow = deferred();
  let deciding = false;
  let answered = false;
  let handlerStarted = false;
  const connected: string[] = [];
  const { refuseUpgrades: refuse, ...inner } = transportUnderTest().server();
  // Sees the server's answer to the transport as it comes, before the transport acts on it.
  const transport: ServerTransport = {
    ...inner,
    ...(refuseUpgrades && refuse !== undefined ? { refuseUpgrades: refuse } : {}),
    start: (handlers, options) =>
      inner.start(
        {
          upgrade: (request) => {
            const decision = handlers.upgrade(request);
            void Promise.resolve(decision).then((d) => {
              if (request.query === 'late' && d.accept) answered = true;
            });
            return decision;
          },
          connection: (socket, request) => handlers.connection(socket, request),
        },
        options,
      ),
  };
  const server = new Server({
    transport,
    logger: recordingLogger(),
    upgradeTimeout: 60_000,
    beforeUpgrade: async (request) => {
      if (request.query !== 'late') return true;
      deciding = true;
      await held.promise;
      return true;
    },
    onClientConnected: (conn) => {
      connected.push(conn.handshake.query);
    },
    onRequest: async () => {
      handlerStarted = true;
      await slow.promise;
      return 'done';
    },
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  const url = `ws://127.0.0.1:${server.address()?.port ?? 0}/`;
  // A request in flight keeps the shutdown (and so the transport) going while the upgrade is answered.
  const busy = await connectClient(t, url);
  const inFlight = outcome(busy.request('slow', utf8('')));
  await waitFor(() => handlerStarted, 2_000, 'the slow handler');

  const late = await connectClient(t, `${url}?late`, { autoConnect: false });
  const attempt = outcome(late.connect());
  await waitFor(() => deciding, 2_000, 'beforeUpgrade to run');
  let openBeforeShutdown = false;
  let raced = false;
  let shutdown: Promise<void> | undefined;
  held.resolve();
  afterMicrotasks(hops, () => {
    openBeforeShutdown = server.connections.size === 2;
    raced = answered && !openBeforeShutdown;
    shutdown = server.shutdown({ timeout: 5_000 });
  });
  const result = await within(attempt, 5_000, 'the late upgrade');
  let status: number | undefined;
  if (openBeforeShutdown) {
    // Accepted before the shutdown: an ordinary connection, closed with 1001 once drained.
    assert.equal(result.ok, true, `hops ${hops}: ${String(result.error)}`);
  } else {
    assert.ok(result.error instanceof ConnectError, `hops ${hops}: ${String(result.error ?? 'connected')}`);
    assert.deepEqual(connected, [''], `hops ${hops}: onClientConnected ran for the refused upgrade`);
    status = result.error.status;
  }
  slow.resolve();
  assert.equal((await inFlight).ok, true);
  await within(shutdown!, 5_000, 'shutdown');
  return status === undefined ? { raced } : { raced, status };
}

/** Hops swept: every step between the verdict and the connection opening, and past it. */
const HOPS = 16;

test('an upgrade accepted by beforeUpgrade just before shutdown() began is refused with 503: no AcceptConf, no onClientConnected', async (t) => {
  // Each round a fresh server, shutdown() landing one microtask later than the round before.
  let raced = 0;
  for (let hops = 0; hops <= HOPS; hops++) {
    const round = await shutdownAfterVerdict(t, hops, true);
    if (round.raced) raced++;
    if (round.status !== undefined || round.raced) assert.equal(round.status, 503, `hops ${hops}`);
  }
  assert.ok(raced > 0, 'no round landed between the answer and the connection');
});

test('on a transport without refuseUpgrades, such an upgrade is closed as it opens: no AcceptConf, no onClientConnected', async (t) => {
  let raced = 0;
  for (let hops = 0; hops <= HOPS; hops++) {
    const round = await shutdownAfterVerdict(t, hops, false);
    if (!round.raced) continue;
    raced++;
    assert.equal(round.status, undefined, `hops ${hops}: closed after its 101, not refused`);
  }
  assert.ok(raced > 0, 'no round landed between the answer and the connection');
});

test('server.shutdown() from inside a handler, not awaited: the reply is delivered, and the shutdown completes once the handler returns', async (t) => {
  let stopping: Promise<void> | undefined;
  const { server, url, logger } = await startServer(t, {
    // Far beyond the test's bound: a shutdown that waited for its timeout would fail it.
    shutdownTimeout: 60_000,
    onRequest: (_conn, msg) => {
      if (msg.name !== 'stop') return msg.payload;
      stopping = server.shutdown();
      return 'bye';
    },
  });
  const client = await connectClient(t, url);
  const codes: number[] = [];
  client.on('disconnect', ({ code }) => codes.push(code));
  assert.equal(payloadText(await client.request('stop', utf8(''))), 'bye');
  await within(stopping!, 10_000, 'the shutdown');
  assert.equal(server.isShuttingDown, true);
  assert.ok(
    !logger.entries.some((e) => /shutdown timed out/.test(e.message)),
    'the shutdown did not wait for its timeout',
  );
  await waitFor(() => codes.length === 1, 2_000, 'the disconnect');
  assert.deepEqual(codes, [1001]);
});

test('await server.shutdown() inside a handler waits for that very handler: it ends only at shutdownTimeout, the handler aborted', async (t) => {
  let handlerSignal: AbortSignal | undefined;
  let shutdownSeen = false;
  const { server, url, logger } = await startServer(t, {
    shutdownTimeout: 200,
    onRequest: async (_conn, _msg, ctx) => {
      handlerSignal = ctx.signal;
      await server.shutdown();
      shutdownSeen = true;
      return 'too late';
    },
  });
  const client = await connectClient(t, url);
  const result = await outcome(client.request('stop', utf8(''), { timeout: 10_000 }));
  assert.ok(result.error instanceof DisconnectedError, String(result.error ?? 'a reply'));
  await waitFor(() => shutdownSeen, 5_000, 'the shutdown the handler awaited');
  assert.equal(handlerSignal?.aborted, true, 'the handler was aborted at the timeout');
  assert.ok(logger.entries.some((e) => e.level === 'warn' && /shutdown timed out/.test(e.message)));
});

test('await conn.close() inside a handler of that connection waits for that very handler only until its bound (shutdownTimeout): the handler is aborted with ShutdownError and the client sees the close code', async (t) => {
  let handlerSignal: AbortSignal | undefined;
  let closeSeen = false;
  const { server, url, logger } = await startServer(t, {
    shutdownTimeout: 200,
    onRequest: async (conn, msg, ctx) => {
      if (msg.name !== 'leave') return msg.payload;
      handlerSignal = ctx.signal;
      await conn.close(4000, 'bye');
      closeSeen = true;
      return 'too late';
    },
  });
  const client = await connectClient(t, url);
  const codes: number[] = [];
  client.on('disconnect', ({ code }) => codes.push(code));
  const result = await within(
    outcome(client.request('leave', utf8(''), { timeout: 30_000 })),
    10_000,
    'the request whose handler awaits conn.close()',
  );
  assert.ok(result.error instanceof DisconnectedError, String(result.error ?? 'a reply'));
  assert.equal(result.error.closeCode, 4000);
  await waitFor(() => closeSeen, 5_000, 'the close the handler awaited');
  assert.equal(handlerSignal?.aborted, true, 'the handler was aborted at the bound');
  assert.ok(handlerSignal?.reason instanceof ShutdownError, String(handlerSignal?.reason));
  assert.ok(logger.entries.some((e) => e.level === 'warn' && /connection close timed out/.test(e.message)));
  await waitFor(() => codes.length === 1, 2_000, 'the disconnect event');
  assert.deepEqual(codes, [4000]);
  // Only that connection closed: the server still serves others.
  assert.equal(server.isShuttingDown, false);
  const other = await connectClient(t, url);
  assert.equal(payloadText(await other.request('echo', utf8('still up'))), 'still up');
});

test('conn.close(code, reason, { timeout }) overrides shutdownTimeout: a handler that ignores its signal is aborted and the connection closes with the code; a timeout out of range rejects and changes nothing', async (t) => {
  let conn: Connection | undefined;
  let handlerSignal: AbortSignal | undefined;
  const { url } = await startServer(t, {
    // Far beyond the test's bound: a close that waited for it would fail the test.
    shutdownTimeout: 60_000,
    onClientConnected: (c) => {
      conn = c;
    },
    onRequest: (_c, msg, ctx) => {
      if (msg.name !== 'forever') return msg.payload;
      handlerSignal = ctx.signal;
      // Ignores its signal on purpose: the close must not hang on it.
      return new Promise<never>(() => {});
    },
  });
  const client = await connectClient(t, url);
  const codes: number[] = [];
  client.on('disconnect', ({ code }) => codes.push(code));
  await waitFor(() => conn !== undefined, 1_000, 'onClientConnected');
  for (const timeout of [-1, 1.5, 2 ** 31]) {
    await assert.rejects(conn!.close(4001, 'x', { timeout }), InvalidArgumentError);
  }
  assert.equal(conn!.isOpen, true);
  assert.equal(payloadText(await client.request('echo', utf8('still served'))), 'still served');
  const pending = outcome(client.request('forever', utf8('x'), { timeout: 30_000 }));
  await waitFor(() => handlerSignal !== undefined, 1_000, 'the handler to start');
  await within(conn!.close(4001, 'enough', { timeout: 150 }), 10_000, 'conn.close()');
  assert.equal(handlerSignal!.aborted, true, 'the handler signal fired');
  const result = await pending;
  assert.ok(result.error instanceof DisconnectedError, String(result.error));
  assert.equal(result.error.closeCode, 4001);
  await waitFor(() => codes.length === 1, 2_000, 'the disconnect event');
  assert.deepEqual(codes, [4001]);
});

test('conn.close() from inside a handler, not awaited: the reply is delivered, then the connection closes with the code, without waiting for the bound', async (t) => {
  let closing: Promise<void> | undefined;
  const { url, logger } = await startServer(t, {
    // Far beyond the test's bound: a close that waited for it would fail the test.
    shutdownTimeout: 60_000,
    onRequest: (conn, msg) => {
      if (msg.name !== 'leave') return msg.payload;
      closing = conn.close(4002, 'logged out');
      return 'bye';
    },
  });
  const client = await connectClient(t, url);
  const events: string[] = [];
  client.on('disconnect', ({ code }) => events.push(`disconnect ${code}`));
  const reply = await client.request('leave', utf8(''));
  events.push(`reply ${payloadText(reply)}`);
  await within(closing!, 10_000, 'conn.close()');
  await waitFor(() => events.length === 2, 2_000, 'the disconnect event');
  assert.deepEqual(events, ['reply bye', 'disconnect 4002']);
  assert.ok(!logger.entries.some((e) => /close timed out/.test(e.message)), 'the close did not wait for its bound');
});
