/**
 * Bridge, operations: `/healthz`, `/readyz`, `/metrics` (Prometheus text with the bridge's
 * counters), options validated at construction, and logs that never carry a callback token or
 * URL, a message body, a cookie or an authorization value.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DEFAULT_BACKEND_TIMEOUT,
  DEFAULT_BRIDGE_DRAIN_TIMEOUT,
  DEFAULT_BRIDGE_MAX_BUFFERED_BYTES,
  DEFAULT_BRIDGE_MAX_CONNECTIONS,
  DEFAULT_BRIDGE_MAX_MESSAGE_SIZE,
  DEFAULT_MAX_QUEUED_MESSAGES,
  WsHttpBridge,
  type WsHttpBridgeOptions,
} from '../../src/apps/bridge/index.ts';
import {
  call,
  callbackPath,
  connected,
  openClient,
  SECRET,
  startBackend,
  startBridge,
  untilMetric,
  upgradeStatus,
} from '../fixtures/bridge-helpers.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { recordingLogger, waitFor } from '../helpers.ts';

test('/healthz 200; /readyz 200, then 503 once close() began; other paths 404', async (t) => {
  let releaseClose!: () => void;
  const closeHeld = new Promise<void>((resolve) => {
    releaseClose = resolve;
  });
  const backend = await startBackend(t, async (req) => {
    if (req.event === 'close') await closeHeld;
    return { status: 204 };
  });
  const bridge = await startBridge(t, backend);
  const health = await call(bridge.port, { path: '/healthz' });
  assert.equal(health.status, 200);
  assert.deepEqual(JSON.parse(health.text), { status: 'ok' });
  const ready = await call(bridge.port, { path: '/readyz?verbose=1' });
  assert.equal(ready.status, 200);
  assert.deepEqual(JSON.parse(ready.text), { status: 'ready' });
  assert.equal((await call(bridge.port, { method: 'HEAD', path: '/healthz' })).status, 200);
  assert.equal((await call(bridge.port, { method: 'POST', path: '/healthz', body: '' })).status, 404);
  assert.equal((await call(bridge.port, { path: '/nothing-here' })).status, 404);
  await connected(t, backend, bridge);
  const closing = bridge.bridge.close();
  await backend.waitFor((r) => r.event === 'close');
  const notReady = await call(bridge.port, { path: '/readyz' });
  assert.equal(notReady.status, 503);
  assert.deepEqual(JSON.parse(notReady.text), { status: 'closing' });
  assert.equal((await call(bridge.port, { path: '/healthz' })).status, 200, 'still alive while closing');
  releaseClose();
  await closing;
});

test('ops paths can be moved or turned off', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend, { ops: { healthz: '/-/health', readyz: false, metrics: '/-/metrics' } });
  assert.equal((await call(bridge.port, { path: '/-/health' })).status, 200);
  assert.equal((await call(bridge.port, { path: '/healthz' })).status, 404);
  assert.equal((await call(bridge.port, { path: '/readyz' })).status, 404);
  assert.equal((await call(bridge.port, { path: '/-/metrics' })).status, 200);
  assert.equal((await call(bridge.port, { path: '/metrics' })).status, 404);
});

test('/metrics: Prometheus text with connections, events by event and result, durations and callbacks', async (t) => {
  const backend = await startBackend(t, (req) => {
    if (req.event === 'connect') {
      return { status: req.json<{ query: string }>().query === 'refuse' ? 403 : 204 };
    }
    if (req.event === 'message') return { status: req.body.toString() === 'fail' ? 500 : 204 };
    return { status: 204 };
  });
  const bridge = await startBridge(t, backend);
  const a = await connected(t, backend, bridge);
  const b = await connected(t, backend, bridge);
  assert.equal(await upgradeStatus(`${bridge.wsUrl}?refuse`), 403);
  a.client.ws.send('one');
  a.client.ws.send('two');
  const [message] = await backend.waitFor((r) => r.event === 'message', 2);
  await call(bridge.port, { method: 'POST', path: callbackPath(message!), body: 'x' });
  b.client.ws.send('fail');
  await b.client.closed;
  await backend.waitFor((r) => r.event === 'close');
  const response = await fetch(`${bridge.base}metrics`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await untilMetric(bridge, /duplexwire_bridge_connections 1\n/);
  assert.match(text, /# TYPE duplexwire_bridge_connections gauge/);
  assert.match(text, /# TYPE duplexwire_bridge_events_total counter/);
  assert.match(text, /duplexwire_bridge_events_total\{event="connect",result="ok"\} 2/);
  assert.match(text, /duplexwire_bridge_events_total\{event="connect",result="refused"\} 1/);
  assert.match(text, /duplexwire_bridge_events_total\{event="message",result="ok"\} 2/);
  assert.match(text, /duplexwire_bridge_events_total\{event="message",result="failed"\} 1/);
  assert.match(text, /duplexwire_bridge_events_total\{event="close",result="ok"\} 1/);
  assert.match(text, /duplexwire_bridge_event_duration_seconds_count\{event="message"\} 3/);
  assert.match(text, /duplexwire_bridge_event_duration_seconds_count\{event="connect"\} 3/);
  assert.match(text, /duplexwire_bridge_callbacks_total\{method="POST",status="204"\} 1/);
  a.client.ws.close();
  await untilMetric(bridge, /duplexwire_bridge_connections 0\n/);
});

test('two bridges in one process keep their metrics apart', async (t) => {
  const backend = await startBackend(t);
  const one = await startBridge(t, backend);
  const two = await startBridge(t, backend);
  await openClient(t, one.wsUrl);
  await untilMetric(one, /duplexwire_bridge_connections 1\n/);
  assert.match(await (await fetch(`${two.base}metrics`)).text(), /duplexwire_bridge_connections 0\n/);
});

const valid: WsHttpBridgeOptions = {
  backend: 'http://127.0.0.1:3000/events',
  secret: SECRET,
  callbackUrl: 'http://127.0.0.1:8081/',
};

test('options: the defaults, and valid values accepted', () => {
  assert.equal(DEFAULT_BACKEND_TIMEOUT, 10_000);
  assert.equal(DEFAULT_BRIDGE_MAX_MESSAGE_SIZE, 1024 * 1024);
  assert.equal(DEFAULT_BRIDGE_MAX_CONNECTIONS, 10_000);
  assert.equal(DEFAULT_MAX_QUEUED_MESSAGES, 32);
  assert.equal(DEFAULT_BRIDGE_MAX_BUFFERED_BYTES, 8 * 1024 * 1024);
  assert.equal(DEFAULT_BRIDGE_DRAIN_TIMEOUT, 10_000);
  const logger = recordingLogger();
  for (const options of [
    valid,
    { ...valid, backend: 'https://backend.example/ws?x=1' },
    { ...valid, callbackUrl: 'https://bridge.internal:8443/prefix/' },
    { ...valid, secret: 'é'.repeat(16) }, // 32 bytes of UTF-8
    { ...valid, path: '/socket' },
    { ...valid, maxMessageSize: 1, maxConnections: 1, maxQueuedMessages: 1, maxBufferedBytes: 1 },
    { ...valid, backendTimeout: 2 ** 31 - 1, drainTimeout: 1 },
  ]) {
    assert.doesNotThrow(() => new WsHttpBridge({ ...options, logger }), JSON.stringify(options));
  }
});

test('options: backend and callbackUrl must be http(s) URLs, callbackUrl ending in /, a 32-byte secret, a path', () => {
  const badOptions: Array<[string, Partial<WsHttpBridgeOptions>]> = [
    ['backend not a URL', { backend: 'not a url' }],
    ['backend relative', { backend: '/events' }],
    ['backend ws:', { backend: 'ws://127.0.0.1:3000/' }],
    ['backend ftp:', { backend: 'ftp://127.0.0.1/' }],
    ['callbackUrl without /', { callbackUrl: 'http://127.0.0.1:8081/prefix' }],
    ['callbackUrl with query', { callbackUrl: 'http://127.0.0.1:8081/?a=1' }],
    ['callbackUrl with hash', { callbackUrl: 'http://127.0.0.1:8081/#x' }],
    ['callbackUrl file:', { callbackUrl: 'file:///tmp/' }],
    ['callbackUrl not a URL', { callbackUrl: 'bridge/' }],
    ['secret short', { secret: 'x'.repeat(31) }],
    ['secret short in bytes', { secret: 'é'.repeat(15) }],
    ['secret not a string', { secret: 42 as unknown as string }],
    ['path relative', { path: 'ws' }],
    ['path on the callbacks', { path: '/connections/ws' }],
  ];
  for (const [what, options] of badOptions) {
    assert.throws(() => new WsHttpBridge({ ...valid, ...options }), InvalidArgumentError, what);
  }
  // The secret never appears in an error message.
  assert.throws(
    () => new WsHttpBridge({ ...valid, secret: 'short-secret-value' }),
    (error: Error) => !error.message.includes('short-secret-value'),
  );
});

test('options: integer limits out of range are RangeErrors', () => {
  const limits = [
    'backendTimeout',
    'maxMessageSize',
    'maxConnections',
    'maxQueuedMessages',
    'maxBufferedBytes',
    'drainTimeout',
  ] as const;
  for (const name of limits) {
    for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, '10' as unknown as number]) {
      assert.throws(() => new WsHttpBridge({ ...valid, [name]: bad }), RangeError, `${name} = ${String(bad)}`);
    }
  }
});

test('logs never carry the callback token or URL, message bodies, cookies or authorization values', async (t) => {
  const BODY = 'body-marker-7f3a';
  const COOKIE = 'cookie-marker-91bd';
  const AUTH = 'auth-marker-c0de';
  const backend = await startBackend(t, (req) => {
    if (req.event === 'connect') {
      return req.json<{ query: string }>().query === 'refuse'
        ? { status: 401, body: AUTH }
        : { status: 200, contentType: 'text/plain', body: `welcome ${BODY}` };
    }
    if (req.event === 'message') {
      const text = req.body.toString();
      if (text.startsWith('fail')) return { status: 500, body: BODY };
      // Not UTF-8 although text: the bridge logs a warning about it.
      if (text.startsWith('bad-reply'))
        return { status: 200, contentType: 'text/plain', body: Buffer.from([0xff, 0xfe]) };
      return { status: 200, contentType: 'text/plain', body: `echo ${text}` };
    }
    return { status: 204 };
  });
  const bridge = await startBridge(t, backend, { requireSignedCallbacks: true, maxMessageSize: 4096 });
  const headers = { cookie: `sid=${COOKIE}`, authorization: `Bearer ${AUTH}` };
  const a = await connected(t, backend, bridge, { headers, query: `q=${BODY}` });
  assert.equal(await upgradeStatus(`${bridge.wsUrl}?refuse`, headers), 401);
  a.client.ws.send(`hello ${BODY}`);
  a.client.ws.send(`bad-reply ${BODY}`);
  const [message] = await backend.waitFor((r) => r.event === 'message', 2);
  const path = callbackPath(message!);
  await call(bridge.port, { method: 'POST', path, headers: { cookie: `c=${COOKIE}` }, body: BODY }); // 401
  await call(bridge.port, { method: 'POST', path: `${path}x`, body: BODY }); // 404
  await call(bridge.port, { method: 'POST', path, body: Buffer.alloc(5000) }); // 413
  a.client.ws.send(`fail ${BODY}`);
  await a.client.closed;
  const b = await connected(t, backend, bridge, { headers });
  b.client.ws.send(Buffer.alloc(5000)); // 1009
  await b.client.closed;
  await backend.waitFor((r) => r.event === 'close', 2);
  await bridge.bridge.close();
  await waitFor(() => bridge.logger.entries.length > 0);
  const logged = JSON.stringify(bridge.logger.entries);
  const token = path.slice('/connections/'.length);
  for (const secret of [token, message!.callback!, BODY, COOKIE, AUTH, SECRET]) {
    assert.ok(!logged.includes(secret), `the logs carry ${secret}: ${logged}`);
  }
  assert.ok(!logged.includes('/connections/'), 'no callback path in the logs');
  // They do say what happened.
  assert.ok(bridge.logger.entries.some((e) => e.message === 'message event failed; closing the client'));
  assert.ok(bridge.logger.entries.some((e) => e.message === 'connect refused'));
});

test('the listening log line carries a URL that parses, an IPv6 address in brackets', async (t) => {
  const backend = await startBackend(t);
  const logger = recordingLogger();
  const bridge = new WsHttpBridge({ backend: backend.url, secret: SECRET, path: '/ws', logger });
  t.after(() => bridge.close());
  const { port } = await bridge.listen({ host: '::1', port: 0 });
  const url = String(logger.entries.find((e) => e.message === 'bridge listening')?.context?.url);
  assert.equal(url, `http://[::1]:${port}/ws`);
  const health = await fetch(new URL('/healthz', url));
  assert.equal(health.status, 200);
});
