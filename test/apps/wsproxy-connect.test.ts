/**
 * WebSocket proxy, connecting: the upstream is dialed before the client's upgrade is answered, so
 * the client sees the upstream's refusal (401/403/404 as they are, 5xx as 502), an unreachable
 * upstream (502) or a silent one (504 after `connectTimeout`) as its own HTTP status; `upstream`
 * as a function routes, refuses, or fails (500); the headers the upstream sees; upgrades the
 * proxy does not serve are answered; `maxConnections` counts links being set up; paths with dot
 * segments are refused (400) before any `upstream` function can append them to a base; a
 * malformed subprotocol offer is the client's error (400), and an upstream that chooses none of
 * the offered subprotocols links with none; an `upstream` function that does not answer within
 * `upgradeTimeout` gets 503 and frees its slot.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { WsProxy } from '../../src/apps/wsproxy/index.ts';
import {
  deadUrl,
  get,
  openClient,
  rawUpgrade,
  sample,
  startRefusingUpstream,
  startSilentUpstream,
  startUpstream,
  startWsProxy,
  UPGRADE_LINES,
  upgradeResponse,
  upgradeStatus,
} from '../fixtures/wsproxy-helpers.ts';
import { waitFor } from '../helpers.ts';

test('the upstream’s refusal is the client’s: 401, 403 and 404 as they are, 5xx as 502', async (t) => {
  const refusing = new Map<string, Awaited<ReturnType<typeof startRefusingUpstream>>>();
  for (const status of [401, 403, 404, 500, 503]) refusing.set(`/${status}`, await startRefusingUpstream(t, status));
  const { proxy, url, port } = await startWsProxy(t, { upstream: (request) => refusing.get(request.path)!.url });
  for (const [status, expected] of [
    [401, 401],
    [403, 403],
    [404, 404],
    [500, 502],
    [503, 502],
  ] as const) {
    const answer = await upgradeStatus(`${url}/${status}`);
    assert.equal(answer.status, expected, `upstream ${status}`);
    assert.equal(refusing.get(`/${status}`)!.upgrades, 1, 'the upstream was asked');
    assert.notEqual(answer.body, 'refused', 'the upstream’s body is not passed on');
  }
  assert.equal(proxy.linkCount, 0);
  const metrics = (await get(port, '/metrics')).text;
  assert.equal(sample(metrics, 'duplexwire_wsproxy_upstream_failures_total', 'reason="refused"'), 5);
});

test('nothing listening upstream: 502; an upstream that never answers the upgrade: 504 after connectTimeout', async (t) => {
  const dead = await deadUrl();
  const silent = await startSilentUpstream(t);
  const { proxy, url, port } = await startWsProxy(t, {
    upstream: (request) => (request.path === '/dead' ? dead : silent.url),
    connectTimeout: 300,
  });
  assert.equal((await upgradeStatus(`${url}/dead`)).status, 502);
  const started = Date.now();
  assert.equal((await upgradeStatus(`${url}/silent`)).status, 504);
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 280 && elapsed < 2000, `answered after ${elapsed} ms`);
  assert.equal(silent.accepted, 1);
  assert.equal(proxy.linkCount, 0);
  const metrics = (await get(port, '/metrics')).text;
  assert.equal(sample(metrics, 'duplexwire_wsproxy_upstream_failures_total', 'reason="unreachable"'), 1);
  assert.equal(sample(metrics, 'duplexwire_wsproxy_upstream_failures_total', 'reason="timeout"'), 1);
});

test('upstream as a function: routing by path, refusals with a status and body, async answers', async (t) => {
  const chat = await startUpstream(t);
  const feed = await startUpstream(t, { onConnection: (c) => c.ws.send('feed') });
  const { url } = await startWsProxy(t, {
    upstream: async (request) => {
      await new Promise((resolve) => setImmediate(resolve));
      switch (request.path) {
        case '/chat':
          return `${chat.url}/room?${request.query}`;
        case '/feed':
          return `${feed.url}/`;
        case '/private':
          return { accept: false, status: 401, body: 'who are you?' };
        case '/teapot':
          // Not a refusal status: refused with 403.
          return { accept: false, status: 200 };
        default:
          return { accept: false, status: 404 };
      }
    },
  });
  const a = await openClient(t, `${url}/chat?id=7`);
  a.ws.send('hi');
  assert.equal((await a.waitMessages(1))[0]!.text, 'hi');
  assert.equal((await chat.connection()).url, '/room?id=7');
  const b = await openClient(t, `${url}/feed`);
  assert.equal((await b.waitMessages(1))[0]!.text, 'feed');
  assert.equal(feed.connections.length, 1);
  assert.deepEqual(await upgradeStatus(`${url}/private`), { status: 401, body: 'who are you?' });
  assert.equal((await upgradeStatus(`${url}/teapot`)).status, 403);
  assert.equal((await upgradeStatus(`${url}/nope`)).status, 404);
  assert.equal(chat.connections.length + feed.connections.length, 2, 'refusals dial nothing');
});

test('a function that throws, rejects, or answers something that is not a ws URL: 500', async (t) => {
  const upstream = await startUpstream(t);
  const { proxy, url, logger } = await startWsProxy(t, {
    upstream: (request) => {
      if (request.path === '/throws') throw new Error('boom');
      if (request.path === '/rejects') return Promise.reject(new Error('async boom'));
      if (request.path === '/http') return upstream.url.replace('ws:', 'http:');
      if (request.path === '/garbage') return 'not a url';
      return upstream.url;
    },
  });
  for (const path of ['/throws', '/rejects', '/http', '/garbage']) {
    assert.equal((await upgradeStatus(`${url}${path}`)).status, 500, path);
  }
  assert.equal(upstream.connections.length, 0);
  assert.equal(proxy.linkCount, 0);
  assert.ok(logger.entries.some((e) => e.level === 'error' && e.message === 'the upstream function failed'));
  // The proxy still works.
  assert.equal((await upgradeStatus(`${url}/ok`)).status, 101);
});

test('a string upstream gets its own path; the client’s path and query only when the function passes them', async (t) => {
  const upstream = await startUpstream(t);
  const fixed = await startWsProxy(t, { upstream: `${upstream.url}/base?x=1` });
  await openClient(t, `${fixed.url}/other/path?y=2`);
  assert.equal((await upstream.connection(1)).url, '/base?x=1');
  const forwarding = await startWsProxy(t, { upstream: (request) => `${upstream.url}${request.url}` });
  await openClient(t, `${forwarding.url}/other/path?y=2&z=%2F`);
  assert.equal((await upstream.connection(2)).url, '/other/path?y=2&z=%2F');
});

test('headers: the client’s own pass; X-Forwarded-* are the proxy’s; hop-by-hop and Connection-named ones do not', async (t) => {
  const upstream = await startUpstream(t);
  const { port } = await startWsProxy(t, { upstream: (request) => `${upstream.url}${request.url}` });
  const status = await rawUpgrade(port, '/in?q=1', [
    ...UPGRADE_LINES,
    'Host: public.example:8443',
    'Connection: Upgrade, X-Hop-Secret',
    'X-Hop-Secret: not for the upstream',
    'Keep-Alive: timeout=5',
    'TE: trailers',
    'Trailer: X-Checksum',
    'Proxy-Authorization: Basic cHJveHk6c2VjcmV0',
    'Proxy-Connection: keep-alive',
    'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits',
    'Authorization: Bearer abc.def',
    'Cookie: a=1',
    'Cookie: b=2',
    'X-Custom: custom value',
    'Origin: https://app.example',
    'User-Agent: wsproxy-test',
    'X-Forwarded-For: 10.0.0.1',
    'X-Forwarded-For: 10.0.0.2',
    'X-Forwarded-Proto: https',
    'X-Forwarded-Host: evil.example',
    'Forwarded: for=6.6.6.6;proto=https;host=evil.example',
  ]);
  assert.equal(status, 101);
  const { headers, url } = await upstream.connection();
  assert.equal(url, '/in?q=1');
  assert.equal(headers.authorization, 'Bearer abc.def');
  assert.equal(headers.cookie, 'a=1; b=2');
  assert.equal(headers['x-custom'], 'custom value');
  assert.equal(headers.origin, 'https://app.example');
  assert.equal(headers['user-agent'], 'wsproxy-test');
  assert.equal(headers['x-forwarded-for'], '10.0.0.1, 10.0.0.2, 127.0.0.1');
  assert.equal(headers['x-forwarded-proto'], 'http', 'the client’s own X-Forwarded-Proto is not trusted');
  assert.equal(headers['x-forwarded-host'], 'public.example:8443', 'the Host the client asked for');
  assert.equal(headers.forwarded, undefined, 'the client’s own Forwarded (RFC 7239) is not trusted either');
  assert.equal(headers.host, `127.0.0.1:${upstream.port}`, 'Host names the upstream');
  for (const name of ['x-hop-secret', 'keep-alive', 'te', 'trailer', 'proxy-authorization', 'proxy-connection']) {
    assert.equal(headers[name], undefined, `${name} is not forwarded`);
  }
  assert.equal(headers['sec-websocket-extensions'], undefined, 'extensions belong to each hop');
  assert.equal(headers.connection, 'Upgrade');
  // Without an incoming X-Forwarded-For, the client's address alone.
  const client = new WebSocket(`ws://127.0.0.1:${port}/second`);
  client.on('error', () => {});
  t.after(() => client.terminate());
  const second = await upstream.connection(2);
  assert.equal(second.headers['x-forwarded-for'], '127.0.0.1');
  assert.equal(second.headers['x-forwarded-host'], `127.0.0.1:${port}`);
});

test('upgrades the proxy does not serve are answered (404 other paths, 400 not WebSocket), not held', async (t) => {
  const upstream = await startUpstream(t);
  const { proxy, port, url } = await startWsProxy(t, { upstream: upstream.url, path: '/ws' });
  assert.equal((await upgradeStatus(`${url}/ws?token=1`)).status, 101);
  assert.equal((await upgradeStatus(`${url}/other`, {}, 2000)).status, 404);
  assert.equal(await rawUpgrade(port, '/ws', ['Host: x', 'Connection: Upgrade', 'Upgrade: h2c'], 2000), 400);
  assert.equal(upstream.connections.length, 1);
  // A plain request to the WebSocket path is not an ops endpoint.
  assert.equal((await get(port, '/ws')).status, 404);
  // Nothing is left holding the listener open: close() is prompt.
  await waitFor(() => proxy.linkCount === 0, 2000, 'no links');
  const started = Date.now();
  await proxy.close();
  assert.ok(Date.now() - started < 500, `close() took ${Date.now() - started} ms`);
});

test('maxConnections counts links being set up: one more gets 503, until a link is gone', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  let asked = 0;
  const upstream = await startUpstream(t, {
    beforeUpgrade: () => {
      asked++;
      return held;
    },
  });
  const { proxy, url } = await startWsProxy(t, { upstream: upstream.url, maxConnections: 1 });
  const first = openClient(t, url);
  await waitFor(() => asked === 1, 2000, 'the first upstream dial');
  // The first link is only being set up (its upstream has not answered): it counts.
  const refused = await upgradeStatus(url);
  assert.deepEqual(refused, { status: 503, body: 'too many connections' });
  assert.equal(asked, 1, 'the refused client was not dialed');
  release();
  const client = await first;
  assert.equal(proxy.linkCount, 1);
  assert.equal((await upgradeStatus(url)).status, 503);
  client.ws.close(1000);
  await client.closed;
  await waitFor(() => proxy.linkCount === 0, 2000, 'the link to be gone');
  assert.equal((await upgradeStatus(url)).status, 101);
});

test("subprotocols: the client's offer reaches the upstream, and the upstream's choice reaches the client", async (t) => {
  // The upstream picks the last one offered, so a proxy that answered with its own default (the
  // first) would be caught.
  const upstream = await startUpstream(t, { pickProtocol: (offered) => [...offered].at(-1) ?? false });
  const { url } = await startWsProxy(t, { upstream: upstream.url });
  const ws = new WebSocket(url, ['chat.v1', 'chat.v2']);
  ws.on('error', () => {});
  t.after(() => ws.terminate());
  const protocol = await new Promise<string>((resolve, reject) => {
    ws.once('open', () => resolve(ws.protocol));
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with ${res.statusCode}`)));
  });
  const connection = await upstream.connection();
  assert.equal(connection.headers['sec-websocket-protocol'], 'chat.v1,chat.v2');
  assert.equal(connection.ws.protocol, 'chat.v2');
  assert.equal(protocol, 'chat.v2');
  // And a client offering none gets none.
  const plain = new WebSocket(url);
  t.after(() => plain.terminate());
  await new Promise((resolve, reject) => plain.once('open', resolve).once('error', reject));
  assert.equal(plain.protocol, '');
});

test('a path with . or .. segments (raw, percent-encoded, behind \\ or %2f, with ;params) is refused 400 before the upstream function', async (t) => {
  const upstream = await startUpstream(t);
  let asked = 0;
  const { port } = await startWsProxy(t, {
    upstream: (request) => {
      asked++;
      return `${upstream.url}/public${request.url}`;
    },
  });
  for (const path of [
    '/../admin',
    '/%2e%2e/internal/secret',
    '/%2E%2e/x',
    '/.%2e/x',
    '/chat/%2e/x',
    '/a/./b',
    '/a/..',
    '/..\\admin',
    '/%2e%2e%2fadmin',
    '/%2e%2e%5Cadmin',
    '/..;jsessionid=1/admin',
    '/chat#/../admin',
  ]) {
    assert.equal(await rawUpgrade(port, path, ['Host: x', 'Connection: Upgrade', ...UPGRADE_LINES]), 400, path);
  }
  assert.equal(asked, 0, 'refused before the upstream function');
  assert.equal(upstream.connections.length, 0);
  // Dots that are not whole segments, and anything in the query, are fine.
  for (const path of ['/a..b/.../c.d', '/.well-known/x', '/chat?next=/../x&y=%2e%2e']) {
    assert.equal(await rawUpgrade(port, path, ['Host: x', 'Connection: Upgrade', ...UPGRADE_LINES]), 101, path);
  }
  await upstream.connection(3);
  assert.deepEqual(
    upstream.connections.map((c) => c.url),
    ['/public/a..b/.../c.d', '/public/.well-known/x', '/public/chat?next=/../x&y=%2e%2e'],
  );
});

test('an upstream that chooses none of the offered subprotocols: the client is linked with none (not 502)', async (t) => {
  // As RFC 6455 §4.2.2 lets a server do: no Sec-WebSocket-Protocol in its 101.
  const upstream = await startUpstream(t, { pickProtocol: () => false });
  const { proxy, port } = await startWsProxy(t, { upstream: upstream.url });
  // A raw upgrade: the ws library would itself refuse a 101 without a subprotocol it asked for.
  const answer = await upgradeResponse(port, '/', { 'sec-websocket-protocol': 'chat.v1, chat.v2' });
  assert.equal(answer.status, 101);
  assert.equal(answer.headers['sec-websocket-protocol'], undefined, 'the client gets none');
  const connection = await upstream.connection();
  assert.equal(connection.headers['sec-websocket-protocol'], 'chat.v1,chat.v2', 'the offer reached the upstream');
  assert.equal(connection.ws.protocol, '');
  const metrics = (await get(port, '/metrics')).text;
  assert.equal(sample(metrics, 'duplexwire_wsproxy_upstream_failures_total', 'reason="unreachable"'), undefined);
  await waitFor(() => proxy.linkCount === 0, 2000, 'the link to close after the client left');
});

test('a malformed subprotocol offer is the client’s error: 400, no upstream dialed, no upstream failure counted', async (t) => {
  const upstream = await startUpstream(t);
  const { port } = await startWsProxy(t, { upstream: upstream.url });
  for (const offer of ['a, a', 'a,,b', 'a b', 'ch@t', 'a,', ' ']) {
    const status = await rawUpgrade(port, '/', [
      'Host: x',
      'Connection: Upgrade',
      ...UPGRADE_LINES,
      `Sec-WebSocket-Protocol: ${offer}`,
    ]);
    assert.equal(status, 400, JSON.stringify(offer));
  }
  // Two headers are one list (Node joins them): a duplicate across them too.
  assert.equal(
    await rawUpgrade(port, '/', [
      'Host: x',
      'Connection: Upgrade',
      ...UPGRADE_LINES,
      'Sec-WebSocket-Protocol: a',
      'Sec-WebSocket-Protocol: a',
    ]),
    400,
  );
  assert.equal(upstream.connections.length, 0);
  const metrics = (await get(port, '/metrics')).text;
  assert.doesNotMatch(metrics, /^duplexwire_wsproxy_upstream_failures_total\{/m);
  // A well-formed offer, spaces and tabs around the commas included, still goes through.
  const answer = await upgradeResponse(port, '/', { 'sec-websocket-protocol': 'a ,\tb' });
  assert.equal(answer.status, 101);
  assert.equal(answer.headers['sec-websocket-protocol'], 'a');
  assert.equal((await upstream.connection()).headers['sec-websocket-protocol'], 'a,b');
});

test('an upstream function that does not answer within upgradeTimeout: 503, its slot is free again, a late answer dials nothing', async (t) => {
  const upstream = await startUpstream(t);
  let answerLate!: (url: string) => void;
  const late = new Promise<string>((resolve) => {
    answerLate = resolve;
  });
  const { proxy, url, logger } = await startWsProxy(t, {
    maxConnections: 1,
    upgradeTimeout: 200,
    upstream: (request) => (request.path === '/hung' ? late : upstream.url),
  });
  const started = Date.now();
  assert.deepEqual(await upgradeStatus(`${url}/hung`, {}, 3000), { status: 503, body: 'upgrade decision timed out' });
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 180 && elapsed < 2000, `answered after ${elapsed} ms`);
  const warning = logger.entries.find((e) => e.message.startsWith('the upstream function did not answer in time'));
  assert.deepEqual(warning?.context, { timeout: 200, path: '/hung', remoteAddress: '127.0.0.1' });
  // The one slot of maxConnections is free again.
  const client = await openClient(t, `${url}/ok`);
  assert.equal(proxy.linkCount, 1);
  // The late answer is ignored: nothing is dialed for it.
  answerLate(upstream.url);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(upstream.connections.length, 1);
  assert.equal(proxy.linkCount, 1);
  client.ws.close(1000);
  await waitFor(() => proxy.linkCount === 0, 2000, 'the link to close');
  // Neither is a late rejection a problem (the test process fails on an unhandled one).
  const { url: url2 } = await startWsProxy(t, {
    upgradeTimeout: 100,
    upstream: () => new Promise<string>((_resolve, reject) => setTimeout(() => reject(new Error('late')), 300)),
  });
  assert.equal((await upgradeStatus(url2, {}, 3000)).status, 503);
  await new Promise((resolve) => setTimeout(resolve, 300));
});

test('upgradeTimeout and heartbeatInterval are checked (heartbeatInterval 0 is off)', () => {
  for (const upgradeTimeout of [0, -1, 1.5, 2 ** 31]) {
    assert.throws(() => new WsProxy({ upstream: 'ws://127.0.0.1:1/', upgradeTimeout }), RangeError);
  }
  for (const heartbeatInterval of [-1, 1.5, 2 ** 31, Number.NaN]) {
    assert.throws(() => new WsProxy({ upstream: 'ws://127.0.0.1:1/', heartbeatInterval }), RangeError);
  }
  assert.doesNotThrow(() => new WsProxy({ upstream: 'ws://127.0.0.1:1/', heartbeatInterval: 0 }));
  assert.throws(() => new WsProxy({ upstream: 'ws://127.0.0.1:1/#fragment' }), /fragment/);
});

test('a client that leaves while its upstream is still being dialed ends the dial at once, counted as no upstream failure', async (t) => {
  const upstream = await startSilentUpstream(t);
  const { proxy, port } = await startWsProxy(t, { upstream: upstream.url, connectTimeout: 10_000 });
  const raw = connect(port, '127.0.0.1');
  raw.on('error', () => {});
  t.after(() => raw.destroy());
  await new Promise<void>((resolve) => raw.once('connect', () => resolve()));
  raw.write(`GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n${UPGRADE_LINES.join('\r\n')}\r\n\r\n`);
  await waitFor(() => upstream.accepted === 1, 2000, 'the dial reached the upstream');
  raw.destroy();
  await waitFor(() => upstream.open === 0, 2000, 'the dial ended, well before connectTimeout');
  const metrics = (await get(port, '/metrics')).text;
  assert.equal(sample(metrics, 'duplexwire_wsproxy_upstream_failures_total', 'reason="timeout"'), undefined);
  assert.equal(sample(metrics, 'duplexwire_wsproxy_upstream_failures_total', 'reason="unreachable"'), undefined);
  assert.equal(proxy.linkCount, 0);
});
