/**
 * Operating the proxy: routing strategies, health and readiness, Prometheus metrics, the status
 * page, graceful drain, and logs that never carry bodies or secrets.
 */
import assert from 'node:assert/strict';
import { type IncomingMessage, request } from 'node:http';
import { test } from 'node:test';
import { TunnelProxy } from '../../src/apps/tunnel/proxy.ts';
import { BACKSTREAM_CLIENT_ID_HEADER } from '../../src/apps/tunnel/routing.ts';
import {
  echoHandler,
  ID,
  json,
  OTHER_ID,
  send,
  startAgent,
  startProxy,
  startTarget,
  TOKEN,
} from '../fixtures/tunnel-helpers.ts';
import { waitFor } from '../helpers.ts';

test('routing by host (<id>.<domain>) and by path prefix (/t/<id>/...), tried in order', async (t) => {
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t, {
    routing: [{ by: 'host', domain: 'tunnel.example.com' }, { by: 'path', prefix: '/t' }, { by: 'header' }],
  });
  await startAgent(t, proxy, { target: target.url });
  const byHost = await send(proxy.port, { path: '/p?q=1', headers: { host: `${ID}.tunnel.example.com:8080` } });
  assert.equal(byHost.status, 200);
  assert.equal((json(byHost) as { url: string }).url, '/p?q=1');
  const byPath = await send(proxy.port, { path: `/t/${ID}/a%2Fb?x=1`, headers: {} });
  assert.equal(byPath.status, 200);
  assert.equal((json(byPath) as { url: string }).url, '/a%2Fb?x=1');
  const rootByPath = await send(proxy.port, { path: `/t/${ID}?x=1`, headers: {} });
  assert.equal((json(rootByPath) as { url: string }).url, '/?x=1');
  assert.equal((await send(proxy.port, { headers: { host: 'a.b.tunnel.example.com' } })).status, 400);
  assert.equal((await send(proxy.port)).status, 200, 'the header strategy still applies');
});

test('a routing or timeout header name that is no HTTP token is refused when the proxy is made', () => {
  for (const name of ['x tenant', '', 'x-tenant:', 'x\u00e9']) {
    assert.throws(
      () => new TunnelProxy({ insecure: true, routing: { by: 'header', name } }),
      /routing header name must be an HTTP token/,
    );
    assert.throws(
      () => new TunnelProxy({ insecure: true, timeoutHeader: name }),
      /timeoutHeader must be an HTTP token/,
    );
  }
});

test('a configurable routing header, and the backstream compatibility header', async (t) => {
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t, { routing: { by: 'header', name: 'x-tenant', backstreamCompat: true } });
  await startAgent(t, proxy, { target: target.url });
  const custom = await send(proxy.port, { headers: { 'x-tenant': ID } });
  assert.equal(custom.status, 200);
  const compat = await send(proxy.port, { headers: { [BACKSTREAM_CLIENT_ID_HEADER]: ID } });
  assert.equal(compat.status, 200);
  const raw = (json(compat) as { rawHeaders: string[] }).rawHeaders.map((h) => h.toLowerCase());
  assert.ok(!raw.includes(BACKSTREAM_CLIENT_ID_HEADER) && !raw.includes('x-tenant'), 'routing headers are stripped');
  assert.equal((await send(proxy.port, { headers: { 'x-duplexwire-client-id': ID } })).status, 400);
});

test("/healthz, /readyz, /metrics and /status (publicOps: 'all')", async (t) => {
  const target = await startTarget(t, (req, res) => {
    if (req.url === '/fail') res.writeHead(500).end('x');
    else {
      req.resume();
      req.on('end', () => res.end('hello'));
    }
  });
  const proxy = await startProxy(t, { publicOps: 'all' });
  await startAgent(t, proxy, { target: target.url });
  assert.equal((await send(proxy.port, { method: 'POST', body: 'abcdef' })).status, 200);
  assert.equal((await send(proxy.port, { path: '/fail' })).status, 500);
  assert.equal((await send(proxy.port, { headers: { 'x-duplexwire-client-id': OTHER_ID } })).status, 503);
  const health = await send(proxy.port, { path: '/healthz', headers: {} });
  assert.equal(health.status, 200);
  assert.deepEqual(json(health), { status: 'ok' });
  assert.equal((await send(proxy.port, { path: '/readyz', headers: {} })).status, 200);
  const metrics = await send(proxy.port, { path: '/metrics', headers: {} });
  assert.equal(metrics.status, 200);
  const text = metrics.text;
  assert.match(
    text,
    new RegExp(`duplexwire_tunnel_requests_total\\{client_id="${ID}",status_class="2xx",source="user"\\} 1`),
  );
  assert.match(
    text,
    new RegExp(`duplexwire_tunnel_requests_total\\{client_id="${ID}",status_class="5xx",source="user"\\} 1`),
  );
  assert.match(
    text,
    new RegExp(`duplexwire_tunnel_requests_total\\{client_id="${OTHER_ID}",status_class="5xx",source="user"\\} 1`),
  );
  assert.match(text, new RegExp(`duplexwire_tunnel_request_duration_seconds_count\\{client_id="${ID}"\\} 2`));
  assert.match(text, new RegExp(`duplexwire_tunnel_agents_connected\\{client_id="${ID}"\\} 1`));
  assert.match(text, new RegExp(`duplexwire_tunnel_bytes_total\\{client_id="${ID}",direction="in"\\} 6`));
  assert.match(text, new RegExp(`duplexwire_tunnel_bytes_total\\{client_id="${ID}",direction="out"\\} 6`));
  // A user-chosen id that no agent ever had is not a label of its own.
  await send(proxy.port, { headers: { 'x-duplexwire-client-id': 'made-up' } });
  const again = (await send(proxy.port, { path: '/metrics', headers: {} })).text;
  assert.ok(!again.includes('made-up'));
  assert.match(again, /client_id="_other"/);
  const status = await send(proxy.port, { path: '/status', headers: {} });
  assert.equal(status.status, 200);
  assert.match(String(status.headers['content-type']), /text\/html/);
  assert.match(status.text, new RegExp(`<td>${ID}</td>`));
  assert.match(status.text, /up<\/td>/);
});

test('by default the public listener serves the health checks only: /metrics and /status (agent addresses) through serveOps', async (t) => {
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  assert.equal((await send(proxy.port, { path: '/healthz', headers: {} })).status, 200);
  assert.equal((await send(proxy.port, { path: '/readyz', headers: {} })).status, 200);
  for (const path of ['/metrics', '/status']) {
    const reply = await send(proxy.port, { path, headers: {} });
    assert.equal(reply.status, 400, path);
    assert.equal(json(reply).code, 'MISSING_CLIENT_ID');
    assert.doesNotMatch(reply.text, /127\.0\.0\.1|4711/);
  }
  // A private listener of the application's own.
  const ops = await startTarget(t, (req, res) => {
    if (!proxy.proxy.serveOps(req, res)) res.writeHead(404).end();
  });
  assert.match((await send(ops.port, { path: '/metrics', headers: {} })).text, /duplexwire_tunnel_agents_connected/);
  assert.match((await send(ops.port, { path: '/status', headers: {} })).text, new RegExp(`<td>${ID}</td>`));
});

test("publicOps: 'none' serves no ops endpoint on the public listener", async (t) => {
  const proxy = await startProxy(t, { publicOps: 'none' });
  for (const path of ['/healthz', '/readyz', '/metrics', '/status']) {
    assert.equal((await send(proxy.port, { path, headers: {} })).status, 400, path);
  }
});

test('graceful drain: new work refused, work in flight finished, agents closed', async (t) => {
  let arrived!: () => void;
  const inTarget = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  const target = await startTarget(t, (_req, res) => {
    arrived();
    setTimeout(() => res.end('finished'), 400);
  });
  const proxy = await startProxy(t);
  const agent = await startAgent(t, proxy, { target: target.url });
  const disconnected = new Promise<number>((resolve) => agent.client.once('disconnect', ({ code }) => resolve(code)));
  const inflight = send(proxy.port);
  await inTarget;
  const drained = proxy.proxy.drain(5000);
  const refused = await send(proxy.port);
  assert.equal(refused.status, 503);
  assert.equal(json(refused).code, 'SHUTTING_DOWN');
  assert.equal(refused.headers.connection, 'close');
  const ready = await send(proxy.port, { path: '/readyz', headers: {} });
  assert.equal(ready.status, 503);
  const reply = await inflight;
  assert.equal(reply.status, 200);
  assert.equal(reply.text, 'finished');
  await drained;
  assert.equal(await disconnected, 1001);
});

test('a drain that times out: a user still waiting gets 503 DRAIN_TIMEOUT and Connection: close, one whose response began has it cut off', async (t) => {
  const closed: string[] = [];
  const target = await startTarget(t, (req, res) => {
    req.resume();
    res.on('close', () => closed.push(req.url ?? ''));
    // Neither ever ends.
    if (req.url === '/half') res.writeHead(200, { 'content-type': 'text/plain' }).write('partial');
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const waiting = send(proxy.port, { path: '/never', method: 'POST', body: 'x' });
  // The head of the other one is out, then the drain times out.
  const half = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = request({
      port: proxy.port,
      host: '127.0.0.1',
      path: '/half',
      headers: { 'x-duplexwire-client-id': ID },
    });
    req.on('response', resolve).on('error', reject).end();
  });
  assert.equal(half.statusCode, 200);
  const cut = new Promise<string>((resolve) => {
    half.on('data', () => {});
    half.on('end', () => resolve('ended'));
    half.on('error', () => resolve('cut'));
  });
  await waitFor(() => proxy.proxy.inflight === 2, 2000, 'both in flight');
  await proxy.proxy.drain(50);
  const reply = await waiting;
  assert.equal(reply.status, 503);
  assert.equal(json(reply).code, 'DRAIN_TIMEOUT');
  assert.equal(reply.headers.connection, 'close');
  assert.equal(await cut, 'cut', 'never a short body that looks complete');
  // The agent was told to cancel both: it aborted its requests to the target.
  await waitFor(() => closed.length === 2, 2000, 'the target saw both go');
  assert.deepEqual(Object.fromEntries(proxy.proxy.metrics.stats.get(ID)?.statusClasses ?? []), { '2xx': 1, '5xx': 1 });
  const logged = proxy.logger.entries.filter((e) => e.message === 'request').map((e) => e.context);
  assert.deepEqual(logged.map((c) => [c?.path, c?.status, c?.outcome]).sort(), [
    ['/half', 200, 'drain-aborted'],
    ['/never', 503, 'drain-aborted'],
  ]);
});

test('logs are JSON-ready records without bodies, tokens, Authorization or Cookie values', async (t) => {
  const target = await startTarget(t, (req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'set-cookie': 'session=SECRET-SET-COOKIE' }).end('RESPONSE-BODY-SECRET'));
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  await send(proxy.port, {
    method: 'POST',
    path: '/login?password=QUERY-SECRET',
    headers: { 'x-duplexwire-client-id': ID, authorization: 'Bearer AUTH-SECRET', cookie: 'sid=COOKIE-SECRET' },
    body: 'REQUEST-BODY-SECRET',
  });
  await waitFor(() => proxy.logger.entries.some((e) => e.message === 'request'));
  const text = JSON.stringify(proxy.logger.entries);
  for (const secret of [
    'QUERY-SECRET',
    'AUTH-SECRET',
    'COOKIE-SECRET',
    'REQUEST-BODY-SECRET',
    'RESPONSE-BODY-SECRET',
    'SECRET-SET-COOKIE',
    TOKEN,
  ]) {
    assert.ok(!text.includes(secret), `${secret} leaked into the logs`);
  }
  const line = proxy.logger.entries.find((e) => e.message === 'request')!;
  assert.equal(line.context?.path, '/login?…');
  assert.equal(line.context?.status, 200);
  assert.equal(line.context?.bytesIn, 19);
});
