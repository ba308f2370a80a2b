/**
 * The uWebSockets.js server transport: the server transport contract (server-contract.ts, with the
 * ws client transport and raw TCP peers as clients), then what only this adapter has: its own
 * limits (`maxPausedBytes`, `maxBackpressure`), option checks that keep uWS from aborting the
 * process, TLS from files, and loading as an optional peer dependency.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { SendResult, TransportSocket } from '../../transports/types.ts';
import { DEFAULT_HIGH_WATER_MARK, type UwsServerTransportOptions, uwsTransport } from '../../transports/uws.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { collectGarbage } from '../helpers.ts';
import { freePort } from '../transport-under-test.ts';
import {
  acceptAll,
  bytes,
  type ConnectOptions,
  connectWith,
  delay,
  type Fixture,
  type ServeOptions,
  serve,
  until,
} from './helpers.ts';
import { loopbackFactory, serverTransportContract } from './server-contract.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/**
 * A fixed free port rather than 0: uSockets binds a port-0 listener without the reuse option it
 * uses for a fixed port, so a server restarted on the port it first got (TIME_WAIT sockets left)
 * could not listen again (see `uwsUnderTest` in test/transport-under-test.ts).
 */
const uws = async (options: UwsServerTransportOptions = {}) =>
  uwsTransport({ host: '127.0.0.1', ...options, port: options.port ?? (await freePort()) });

serverTransportContract(
  'uws',
  loopbackFactory(
    ({ tls, ...options }) =>
      // uWS reads the PEM files itself.
      uws({ ...options, ...(tls === undefined ? {} : { tls: { key: tls.keyFile, cert: tls.certFile } }) }),
    DEFAULT_HIGH_WATER_MARK,
  ),
  {
    network: true,
    tls: true,
    pauseHoldsReadMessages: true,
    pauseHoldsClose: false,
    closeReportsPeerCode: false,
    farOversizeGetsCloseFrame: false,
    framesBeforeUpgrade: false,
  },
);

async function startServer(
  t: TestContext,
  options: ServeOptions & { transport?: UwsServerTransportOptions } = {},
): Promise<Fixture> {
  return serve(t, await uws(options.transport), options);
}

const connect = (t: TestContext, url: string, options: ConnectOptions = {}) =>
  connectWith(t, wsClientTransport(), url, options);

test('a peer that keeps sending while paused is closed with 1008 at maxPausedBytes', async (t) => {
  const server = await startServer(t, {
    transport: { maxPausedBytes: 10_000 },
    onConnection: (socket) => socket.pause(),
  });
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  for (let i = 0; i < 20; i++) socket.send(new Uint8Array(1000));
  const remote = server.accepted[0]!;
  await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, 'both closes');
  assert.deepEqual(remote.rec.closes, [{ code: 1008, reason: 'read buffer limit exceeded' }]);
  assert.deepEqual(rec.closes, [{ code: 1008, reason: 'read buffer limit exceeded' }]);
  assert.equal(remote.rec.messages.length, 0, 'a paused owner loses what waited');
});

test('maxPausedBytes bounds the memory held by tiny messages too: each counts what keeping it costs', async (t) => {
  // A message kept while paused costs a record, a Uint8Array and an ArrayBuffer whatever its
  // size: about 235 bytes of V8 heap on Node 20. Counted as 64, a peer sending 1-byte messages made
  // the adapter hold several times maxPausedBytes before the limit was reached.
  const limit = 4 * 1024 * 1024;
  const server = await startServer(t, {
    transport: { maxPausedBytes: limit },
    onConnection: (socket) => socket.pause(),
  });
  const { socket, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  await collectGarbage();
  const before = heldBytes();
  // 40,000 one-byte messages: 2.6 MB as counted before, some 9 MB held.
  const one = new Uint8Array(1);
  for (let sent = 0; sent < 40_000 && rec.closes.length === 0; sent += 1_000) {
    for (let i = 0; i < 1_000; i++) socket.send(one);
    await until(() => socket.bufferedAmount === 0 || rec.closes.length > 0, 'the batch written', 5_000);
  }
  // Pings reach the owner while paused: once this one did, uWS has read every message before it.
  socket.ping();
  await until(() => remote.rec.pings === 1 || remote.rec.closes.length > 0, 'the ping behind the messages', 5_000);
  if (remote.rec.closes.length === 0) {
    await collectGarbage();
    const held = heldBytes() - before;
    t.diagnostic(`still open, ${held} bytes held`);
    assert.ok(held <= 1.5 * limit, `${held} bytes held for the paused socket, maxPausedBytes ${limit}`);
  } else {
    assert.deepEqual(remote.rec.closes, [{ code: 1008, reason: 'read buffer limit exceeded' }]);
  }
});

/** V8 heap and ArrayBuffer bytes in use (after a collection: what stays alive). */
function heldBytes(): number {
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

// uWS v20.30 (WebSocketProtocol.h parseClosePayload) refuses codes above 1011 and below 4000,
// though RFC 6455 §7.4.2 and the IANA registry allow them (ws does): pinned so that the difference
// listed on uwsTransport and in the README is noticed when uWS changes.
test('a peer closing with 1012-1014 or 3000-3999 is seen as 1006 by the owner and gets an empty close frame', async (t) => {
  const server = await startServer(t);
  const codes = [1012, 1013, 1014, 3000, 3999, 4000];
  for (const [i, code] of codes.entries()) {
    const { socket, rec } = await connect(t, server.url);
    await until(() => server.accepted.length === i + 1, 'connection');
    const remote = server.accepted[i]!;
    socket.close(code, 'bye');
    await until(() => remote.rec.closes.length === 1 && rec.closes.length === 1, `both closes (${code})`);
    const refused = code < 4000;
    assert.deepEqual(remote.rec.closes, [refused ? { code: 1006, reason: '' } : { code, reason: 'bye' }], `${code}`);
    // ws reports what the answering close frame said: none (1005), not the code it sent.
    assert.deepEqual(rec.closes, [refused ? { code: 1005, reason: '' } : { code, reason: 'bye' }], `${code}`);
  }
});

test('a send beyond maxBackpressure is dropped and closes with 1008, never silently', async (t) => {
  const server = await startServer(t, { transport: { highWaterMark: 1024, maxBackpressure: 256 * 1024 } });
  const { socket: client, rec } = await connect(t, server.url);
  await until(() => server.accepted.length === 1, 'connection');
  const remote = server.accepted[0]!;
  client.pause();
  const chunk = new Uint8Array(64 * 1024);
  const results = new Set<SendResult>();
  let result: SendResult = 'ok';
  for (let i = 0; i < 2000 && result !== 'dropped'; i++) {
    result = remote.socket.send(chunk);
    results.add(result);
  }
  assert.equal(result, 'dropped');
  assert.ok(results.has('backpressure'), 'backpressure came first');
  await until(() => remote.rec.closes.length === 1, 'owner close');
  assert.deepEqual(remote.rec.closes, [{ code: 1008, reason: 'send buffer limit exceeded' }]);
  client.resume();
  await until(() => rec.closes.length === 1, 'client close', 5000);
  // uWS drops the close frame as well, being over the same limit: the peer sees the TCP close.
  assert.deepEqual(rec.closes, [{ code: 1006, reason: '' }]);
});

/* ---- native pub/sub (ServerTransport.publish) ---- */

/** Two turns of the event loop: uWS has written what its topic tree held (see PublishClock). */
async function twoTurns(): Promise<void> {
  for (let i = 0; i < 2; i++) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * Sends to a client that stopped reading until uWS's own buffer holds 4 MiB: the kernel may still
 * take some of it now and then (loopback TCP buffers fill asynchronously and grow), never all, so
 * what is written next lands in a buffer that cannot run empty. The assertions below hold whatever
 * the kernel takes meanwhile.
 */
function buildBacklog(remote: TransportSocket): void {
  const chunk = new Uint8Array(64 * 1024);
  for (let i = 0; i < 1_000 && remote.bufferedAmount < 4 * 1024 * 1024; i++) remote.send(chunk);
  assert.ok(remote.bufferedAmount >= 4 * 1024 * 1024, 'the kernel never filled up');
}

/** Connects `n` ws clients, each subscribed on the server side to `topic`. */
async function subscribers(t: TestContext, server: Fixture, n: number, topic: string) {
  const clients = [];
  for (let i = 0; i < n; i++) {
    clients.push(await connect(t, server.url));
    await until(() => server.accepted.length === i + 1, 'connection');
    server.accepted[i]!.socket.subscribe!(topic);
  }
  return clients;
}

const publish = (server: Fixture, topic: string, data: Uint8Array, skip: TransportSocket[] = []): void =>
  server.transport.publish!(topic, data, skip);

test('publish reaches every subscriber but those in skip, leaving their subscriptions as they were', async (t) => {
  const server = await startServer(t);
  const clients = await subscribers(t, server, 4, 'room');
  const [s0, s1, s2] = server.accepted.map((a) => a.socket);
  s2!.subscribe!('other');
  publish(server, 'room', bytes(1));
  publish(server, 'room', bytes(2), [s0!]); // ws.publish from s0
  publish(server, 'room', bytes(3), [s0!, s1!]); // both leave the topic around the publish
  publish(server, 'room', bytes(4), [server.accepted[3]!.socket]);
  publish(server, 'other', bytes(5), [s0!]); // s0 has not joined 'other': app.publish
  publish(server, 'room', bytes(6));
  publish(server, 'nobody', bytes(7));
  const expected = [
    [1, 4, 6],
    [1, 2, 4, 6],
    [1, 2, 3, 4, 5, 6],
    [1, 2, 3, 6],
  ];
  await until(() => clients.every(({ rec }, i) => rec.messages.length === expected[i]!.length), 'the messages');
  await delay(20);
  assert.deepEqual(
    clients.map(({ rec }) => rec.messages.map((m) => m.data[0])),
    expected,
  );
  assert.ok(clients.every(({ rec }) => rec.messages.every((m) => m.binary)));
});

test('a subscriber that leaves its last topic right after a publish still gets it (uWS v20.30 would drop it)', async (t) => {
  const server = await startServer(t);
  const [client] = await subscribers(t, server, 1, 'room');
  const remote = server.accepted[0]!.socket;
  publish(server, 'room', bytes(1));
  remote.unsubscribe!('room');
  publish(server, 'room', bytes(2));
  remote.subscribe!('room');
  remote.unsubscribe!('room');
  remote.unsubscribe!('never joined');
  remote.send(bytes(3));
  await until(() => client!.rec.messages.length === 2, 'the messages');
  await delay(20);
  assert.deepEqual(
    client!.rec.messages.map((m) => m.data[0]),
    [1, 3],
  );
});

test('publish: below 16 KiB uWS writes the message at the end of the turn, from 16 KiB at once (what admitPublish counts on)', async (t) => {
  const server = await startServer(t);
  const [client] = await subscribers(t, server, 1, 'room');
  const remote = server.accepted[0]!.socket;
  client!.socket.pause();
  buildBacklog(remote);
  let before = remote.bufferedAmount;
  publish(server, 'room', new Uint8Array(16 * 1024 - 1));
  // No write was even tried: whatever the kernel would take, the buffer is as it was.
  assert.equal(remote.bufferedAmount, before, 'below 16 KiB: waits in the topic tree');
  await twoTurns();
  // Had uWS still held it, this send would write it first (16 KiB more, less what the kernel takes).
  before = remote.bufferedAmount;
  remote.send(new Uint8Array(0));
  assert.ok(remote.bufferedAmount - before <= 2, 'two turns later uWS had written it');
  before = remote.bufferedAmount;
  publish(server, 'room', new Uint8Array(16 * 1024));
  // A write was tried: more in the buffer, or less if the kernel took some (never exactly as much).
  assert.notEqual(remote.bufferedAmount, before, 'from 16 KiB: written at once');
});

test('admitPublish admits while the buffer and what waits for the socket stay within the high-water mark', async (t) => {
  const server = await startServer(t, { transport: { highWaterMark: 4096 } });
  const [client] = await subscribers(t, server, 1, 'room');
  const remote = server.accepted[0]!.socket;
  const message = new Uint8Array(1000); // 1002 bytes framed
  const admitAndPublish = (): boolean => {
    if (!remote.admitPublish!(message.length)) return false;
    publish(server, 'room', message);
    return true;
  };
  // Four fit within 4096 bytes, a fifth would not: a send of it might answer backpressure.
  assert.deepEqual([1, 2, 3, 4, 5].map(admitAndPublish), [true, true, true, true, false]);
  // Written and read by the client two turns later: nothing counts any more.
  await twoTurns();
  await until(() => client!.rec.messages.length === 4, 'four messages');
  assert.deepEqual([1, 2, 3, 4, 5].map(admitAndPublish), [true, true, true, true, false]);
  // A send writes them out first: after it, the socket's buffer tells all.
  remote.send(bytes(0));
  assert.equal(admitAndPublish(), remote.bufferedAmount + 1002 <= 4096);
  // From 16 KiB, a publish is written at once: the buffer alone tells (never admitted here).
  assert.equal(remote.admitPublish!(16 * 1024), false);
  // A client that stopped reading: nothing is admitted once its buffer is over the mark.
  client!.socket.pause();
  buildBacklog(remote);
  assert.equal(remote.admitPublish!(1), false);
  remote.close(1000, '');
  assert.equal(remote.admitPublish!(1), false, 'closing');
});

test('invalid options are rejected up front (uWS would abort the process on some)', () => {
  assert.throws(() => uwsTransport({ idleTimeout: 5 }), RangeError);
  assert.throws(() => uwsTransport({ idleTimeout: 961 }), RangeError);
  assert.throws(() => uwsTransport({ port: 70000 }), RangeError);
  assert.throws(() => uwsTransport({ path: 'ws' }), RangeError);
  assert.throws(() => uwsTransport({ highWaterMark: -1 }), RangeError);
  assert.throws(() => uwsTransport({ highWaterMark: 1024, maxBackpressure: 1024 }), RangeError);
  assert.throws(() => uwsTransport({ maxPausedBytes: Number.NaN }), RangeError);
  assert.throws(() => uwsTransport({ tls: { key: '', cert: 'x' } }), TypeError);
  uwsTransport({ idleTimeout: 8 });
  uwsTransport({ idleTimeout: 960 });
});

test('wss: a TLS app whose key file is missing fails to start, saying so', async () => {
  const dir = join(tmpdir(), 'duplexwire-uws-no-such-dir');
  const missing = await uws({ tls: { key: join(dir, 'nope.pem'), cert: join(dir, 'cert.pem') } });
  await assert.rejects(missing.start(acceptAll(), { maxMessageSize: 1024 }), /could not load the TLS key/);
  assert.equal(missing.address(), null);
});

test('loading: a clear error without uWebSockets.js; importing duplexwire never loads it', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'duplexwire-uws-missing-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const file of [
    'uws.ts',
    'close-frame.ts',
    'handshake.ts',
    'owner-fault.ts',
    'server-lifecycle.ts',
    'types.ts',
    'ws-frame.ts',
  ])
    copyFileSync(join(ROOT, 'transports', file), join(dir, file));
  // Outside the package, so `uWebSockets.js` cannot be resolved.
  const missing = `
    try { await import(${JSON.stringify(join(dir, 'uws.ts'))}); console.log('loaded'); }
    catch (e) { console.log(JSON.stringify({ message: e.message, cause: e.cause?.code })); }
  `;
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', missing], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 20_000,
  });
  const result = JSON.parse(out.trim()) as { message: string; cause: string };
  assert.match(
    result.message,
    /^duplexwire\/transports\/uws needs the optional peer dependency uWebSockets\.js: npm install /,
  );
  assert.equal(result.cause, 'MODULE_NOT_FOUND');

  const check = (specifier: string): boolean => {
    const script = `
      import { createRequire } from 'node:module';
      await import(${JSON.stringify(specifier)});
      const cache = createRequire(import.meta.url).cache;
      console.log(Object.keys(cache).some((k) => k.includes('uWebSockets.js')));
    `;
    return JSON.parse(
      execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 20_000,
      }).trim(),
    ) as boolean;
  };
  assert.equal(check(join(ROOT, 'src/index.ts')), false, 'duplexwire does not load uWS');
  assert.equal(check(join(ROOT, 'transports/uws.ts')), true, 'the subpath does');
});
