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
import type { SendResult } from '../../transports/types.ts';
import { DEFAULT_HIGH_WATER_MARK, type UwsServerTransportOptions, uwsTransport } from '../../transports/uws.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { freePort } from '../transport-under-test.ts';
import {
  acceptAll,
  type ConnectOptions,
  connectWith,
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
    handshakeCheckedBeforeDecision: true,
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
  for (const file of ['uws.ts', 'close-frame.ts', 'server-lifecycle.ts', 'types.ts'])
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
