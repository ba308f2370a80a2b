/**
 * The ws client transport through an HTTP CONNECT proxy (`proxy` option): plain and TLS servers,
 * Basic credentials, a proxy that refuses or hangs, and what the client makes of each.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { type TestContext, test } from 'node:test';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { Client, type ClientOptions } from '../../src/client/client.ts';
import { ConnectError } from '../../src/errors.ts';
import { Server } from '../../src/server/server.ts';
import { wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { startConnectProxy } from '../fixtures/connect-proxy.ts';
import { recordingLogger, waitFor } from '../helpers.ts';
import { testCertificate } from './helpers.ts';

async function echoServer(
  t: TestContext,
  tls?: { key: Buffer; cert: string | Buffer },
): Promise<{ server: Server; url: string; port: number }> {
  const server = new Server({
    transport: wsTransport({ port: 0, host: '127.0.0.1', ...(tls === undefined ? {} : { tls }) }),
    logger: recordingLogger(),
    onRequest: (_conn, msg) => utf8(`echo ${payloadText(msg.payload)}`),
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  const port = server.address()!.port;
  return { server, url: `${tls === undefined ? 'ws' : 'wss'}://127.0.0.1:${port}/`, port };
}

function client(t: TestContext, url: string, options: ClientOptions): Client {
  const c = new Client(url, { logger: recordingLogger(), reconnect: false, ...options });
  t.after(() => c.close());
  return c;
}

test('a client reaches the server through the proxy with CONNECT', async (t) => {
  const { url, port } = await echoServer(t);
  const proxy = await startConnectProxy(t);
  const c = client(t, url, { transport: wsClientTransport({ proxy: proxy.url }) });
  await c.connect();
  assert.equal(payloadText(await c.request('x', utf8('hi'))), 'echo hi');
  assert.deepEqual(proxy.requests, [{ target: `127.0.0.1:${port}`, authorization: undefined }]);
  assert.equal(proxy.tunnels, 1);
});

test('wss through the proxy: TLS end to end, the certificate checked as without a proxy', async (t) => {
  const cert = testCertificate(t);
  if (cert === undefined) {
    t.skip('openssl is not available to make a certificate');
    return;
  }
  const { url } = await echoServer(t, { key: readFileSync(cert.keyFile), cert: cert.cert });
  const proxy = await startConnectProxy(t);
  const trusted = client(t, url, { transport: wsClientTransport({ proxy: proxy.url, tls: { ca: cert.cert } }) });
  await trusted.connect();
  assert.equal(payloadText(await trusted.request('x', utf8('tls'))), 'echo tls');
  // The same proxy, without the CA: the server's certificate is refused, not the proxy's doing.
  const untrusted = client(t, url, { transport: wsClientTransport({ proxy: proxy.url }) });
  await assert.rejects(untrusted.connect(), (error: unknown) => {
    assert.ok(error instanceof ConnectError);
    assert.equal(error.status, undefined);
    assert.match(error.message, /self[- ]signed|certificate/i);
    return true;
  });
  assert.equal(proxy.requests.length, 2);
});

test('Basic credentials from the proxy URL; wrong ones fail with 407 naming the proxy, not its password', async (t) => {
  const { url } = await echoServer(t);
  const proxy = await startConnectProxy(t, { credentials: 'alice:s3cr%t' });
  const good = client(t, url, {
    transport: wsClientTransport({ proxy: `http://alice:${encodeURIComponent('s3cr%t')}@${proxy.url.slice(7)}` }),
  });
  await good.connect();
  assert.equal(proxy.requests[0]!.authorization, `Basic ${Buffer.from('alice:s3cr%t').toString('base64')}`);

  const bad = client(t, url, {
    transport: wsClientTransport({ proxy: `http://alice:wrong-password@${proxy.url.slice(7)}` }),
    reconnect: { initialDelay: 10, maxDelay: 10 },
  });
  await assert.rejects(bad.connect(), (error: unknown) => {
    assert.ok(error instanceof ConnectError);
    assert.equal(error.status, 407);
    assert.match(error.message, /proxy http:\/\/\*\*\*@127\.0\.0\.1:\d+ refused CONNECT with HTTP 407/);
    assert.ok(!error.message.includes('wrong-password'));
    return true;
  });
  // A 407 is not retried, like any 4xx refusal but 408 and 429.
  const asked = proxy.requests.length;
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(proxy.requests.length, asked);
});

test('a proxy that denies the target fails with 403; one that cannot reach it answers 502, which is retried', async (t) => {
  const { url } = await echoServer(t);
  const denying = await startConnectProxy(t, { mode: 'deny' });
  await assert.rejects(
    client(t, url, { transport: wsClientTransport({ proxy: denying.url }) }).connect(),
    (error: unknown) => error instanceof ConnectError && error.status === 403 && /refused CONNECT/.test(error.message),
  );
  const gone = await echoServer(t);
  await gone.server.shutdown({ timeout: 200 });
  const proxy = await startConnectProxy(t);
  const retrying = client(t, gone.url, {
    transport: wsClientTransport({ proxy: proxy.url }),
    reconnect: { initialDelay: 10, maxDelay: 20 },
  });
  const failures: Array<number | undefined> = [];
  retrying.on('reconnecting', () => failures.push(proxy.requests.length));
  void retrying.connect().catch(() => {});
  await waitFor(() => proxy.requests.length >= 3, 3_000, 'the client tries again after a 502');
  await retrying.close();
});

test('a proxy that never answers CONNECT: the attempt times out and its socket is closed', async (t) => {
  const { url } = await echoServer(t);
  const proxy = await startConnectProxy(t, { mode: 'hang' });
  const c = client(t, url, { transport: wsClientTransport({ proxy: proxy.url }), connectTimeout: 300 });
  const started = performance.now();
  await assert.rejects(
    c.connect(),
    (error: unknown) => error instanceof ConnectError && /timed out/.test(error.message),
  );
  assert.ok(performance.now() - started < 2_000);
  assert.equal(proxy.requests.length, 1);
  await waitFor(() => proxy.openSockets() === 0, 2_000, 'the socket to the proxy is closed');
});

test('client.close() while the proxy has not answered CONNECT closes the socket to the proxy at once', async (t) => {
  const proxy = await startConnectProxy(t, { mode: 'hang' });
  // The default connect timeout (10 s) would otherwise keep the attempt and its socket.
  const c = client(t, 'ws://127.0.0.1:9/', { transport: wsClientTransport({ proxy: proxy.url }) });
  const connecting = assert.rejects(c.connect());
  await waitFor(() => proxy.requests.length === 1, 2_000, 'the CONNECT sent');
  await c.close();
  await waitFor(() => proxy.openSockets() === 0, 1_000, 'the socket to the proxy is closed');
  await connecting;
});

test('the proxy option is checked', () => {
  for (const bad of ['not a url', 'ftp://proxy:21', 'http://proxy:3128/some/path', 'socks5://proxy:1080']) {
    assert.throws(() => wsClientTransport({ proxy: bad }), RangeError, bad);
  }
  assert.throws(
    () => wsClientTransport({ proxy: 'http://user:pw@proxy:3128/x' }),
    (error: unknown) => error instanceof RangeError && !error.message.includes('pw'),
  );
  // The refused URL is named (without credentials), whatever its scheme.
  assert.throws(() => wsClientTransport({ proxy: 'socks5://proxy:1080' }), /got socks5:\/\/proxy:1080$/);
  assert.throws(() => wsClientTransport({ proxy: 'socks5://u:pw@proxy:1080' }), /got socks5:\/\/\*\*\*@proxy:1080$/);
  wsClientTransport({ proxy: 'http://proxy:3128' });
  wsClientTransport({ proxy: new URL('https://proxy.internal:443/') });
});
