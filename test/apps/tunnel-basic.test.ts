/**
 * The tunnel end to end on loopback: round trips, every error status, timeouts and cancel,
 * concurrency, in-process handlers and agent credentials.
 */
import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { test } from 'node:test';
import { TunnelAgent } from '../../src/apps/tunnel/agent.ts';
import { TunnelProxy } from '../../src/apps/tunnel/proxy.ts';
import { ConnectError, InvalidArgumentError } from '../../src/errors.ts';
import {
  echoHandler,
  ID,
  json,
  OTHER_ID,
  OTHER_TOKEN,
  readBody,
  send,
  startAgent,
  startProxy,
  startTarget,
  TOKEN,
} from '../fixtures/tunnel-helpers.ts';
import { delay, recordingLogger, waitFor } from '../helpers.ts';

test('round trip: method, raw path and query, headers in order, body, status and response headers', async (t) => {
  const target = await startTarget(t, (req, res) => {
    readBody(req).then((body) => {
      const out = JSON.stringify({
        method: req.method,
        url: req.url,
        rawHeaders: req.rawHeaders,
        body: body.toString(),
      });
      res.writeHead(201, [
        'X-Reply',
        'yes',
        'Set-Cookie',
        'a=1',
        'Set-Cookie',
        'b=2',
        'Content-Type',
        'application/json',
      ]);
      res.end(out);
    });
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const reply = await send(proxy.port, {
    method: 'POST',
    path: '/any/a%2Fb/path?q=1&x=%20y',
    headers: [
      'Host',
      `127.0.0.1:${proxy.port}`,
      'x-duplexwire-client-id',
      ID,
      'X-Multi',
      'one',
      'x-multi',
      'two',
      'Content-Type',
      'text/plain',
      'Content-Length',
      '5',
    ],
    body: 'hello',
  });
  assert.equal(reply.status, 201);
  assert.equal(reply.headers['x-reply'], 'yes');
  assert.deepEqual(reply.headers['set-cookie'], ['a=1', 'b=2']);
  const seen = json(reply) as { method: string; url: string; rawHeaders: string[]; body: string };
  assert.equal(seen.method, 'POST');
  assert.equal(seen.url, '/any/a%2Fb/path?q=1&x=%20y');
  assert.equal(seen.body, 'hello');
  // Multi-valued headers in order, names as sent; routing header gone; X-Forwarded-* added.
  const pairs: Array<[string, string]> = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) pairs.push([seen.rawHeaders[i]!, seen.rawHeaders[i + 1]!]);
  assert.deepEqual(
    pairs.filter(([n]) => n.toLowerCase() === 'x-multi'),
    [
      ['X-Multi', 'one'],
      ['x-multi', 'two'],
    ],
  );
  assert.ok(!pairs.some(([n]) => n.toLowerCase() === 'x-duplexwire-client-id'));
  assert.deepEqual(
    pairs.filter(([n]) => n.toLowerCase().startsWith('x-forwarded')),
    [
      ['X-Forwarded-For', '127.0.0.1'],
      ['X-Forwarded-Proto', 'http'],
      ['X-Forwarded-Host', `127.0.0.1:${proxy.port}`],
    ],
  );
  // The Host header is preserved by default (its value: the agent's HTTP client, undici, writes
  // the name itself, in lower case and first, as header names are case-insensitive).
  assert.deepEqual(
    pairs.filter(([n]) => n.toLowerCase() === 'host').map(([, value]) => value),
    [`127.0.0.1:${proxy.port}`],
  );
});

test("forwarded: 'replace' drops what users claim, RFC 7239 Forwarded included; 'append' keeps it", async (t) => {
  const target = await startTarget(t, echoHandler);
  const claims = [
    'X-Forwarded-For',
    '6.6.6.6',
    'X-Forwarded-Proto',
    'https',
    'X-Forwarded-Host',
    'evil.example',
    'Forwarded',
    'for=6.6.6.6;proto=https;host=evil.example',
  ];
  const seenBy = async (forwarded: 'replace' | 'append'): Promise<Array<[string, string]>> => {
    const proxy = await startProxy(t, { forwarded });
    await startAgent(t, proxy, { target: target.url });
    const reply = await send(proxy.port, {
      headers: ['Host', 'public.example', 'x-duplexwire-client-id', ID, ...claims],
    });
    const { rawHeaders } = json(reply) as { rawHeaders: string[] };
    const pairs: Array<[string, string]> = [];
    for (let i = 0; i < rawHeaders.length; i += 2) pairs.push([rawHeaders[i]!, rawHeaders[i + 1]!]);
    return pairs.filter(([n]) => n.toLowerCase().startsWith('x-forwarded') || n.toLowerCase() === 'forwarded');
  };
  assert.deepEqual(await seenBy('replace'), [
    ['X-Forwarded-For', '127.0.0.1'],
    ['X-Forwarded-Proto', 'http'],
    ['X-Forwarded-Host', 'public.example'],
  ]);
  assert.deepEqual(await seenBy('append'), [
    ['Forwarded', 'for=6.6.6.6;proto=https;host=evil.example'],
    ['X-Forwarded-For', '6.6.6.6, 127.0.0.1'],
    ['X-Forwarded-Proto', 'http'],
    ['X-Forwarded-Host', 'public.example'],
  ]);
});

test('host header rewrite and a target URL with a base path', async (t) => {
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: `${target.url}/base/`, hostHeader: 'rewrite' });
  const seen = json(await send(proxy.port, { path: '/x?y' })) as { url: string; rawHeaders: string[] };
  assert.equal(seen.url, '/base/x?y');
  const host = seen.rawHeaders[seen.rawHeaders.findIndex((h) => h.toLowerCase() === 'host') + 1];
  assert.equal(host, `127.0.0.1:${target.port}`);
});

test('400 without a client id, 400 with an invalid one, 503 when no agent is connected', async (t) => {
  const proxy = await startProxy(t);
  const missing = await send(proxy.port, { headers: {} });
  assert.equal(missing.status, 400);
  assert.equal(json(missing).code, 'MISSING_CLIENT_ID');
  const invalid = await send(proxy.port, { headers: { 'x-duplexwire-client-id': 'no/slash' } });
  assert.equal(invalid.status, 400);
  assert.equal(json(invalid).code, 'INVALID_CLIENT_ID');
  const none = await send(proxy.port);
  assert.equal(none.status, 503);
  assert.equal(json(none).code, 'NO_AGENT');
  assert.match(String(none.headers['content-type']), /^application\/json/);
});

test('504 when the agent does not answer in time; the target sees the cancel', async (t) => {
  let closed!: () => void;
  const targetClosed = new Promise<void>((resolve) => {
    closed = resolve;
  });
  const target = await startTarget(t, (req) => {
    req.socket.once('close', closed);
  });
  const proxy = await startProxy(t, { requestTimeout: 300 });
  await startAgent(t, proxy, { target: target.url });
  const started = performance.now();
  const reply = await send(proxy.port);
  const elapsed = performance.now() - started;
  assert.equal(reply.status, 504);
  assert.equal(json(reply).code, 'AGENT_TIMEOUT');
  assert.ok(elapsed >= 280 && elapsed < 2000, `elapsed ${elapsed}`);
  await Promise.race([targetClosed, delay(2000).then(() => assert.fail('the target request was not aborted'))]);
});

test('timeout header: valid, invalid (400), over the cap (capped)', async (t) => {
  const target = await startTarget(t, () => {});
  const proxy = await startProxy(t, { requestTimeout: 5000, maxRequestTimeout: 1200 });
  await startAgent(t, proxy, { target: target.url });
  const header = (v: string) => ({ 'x-duplexwire-client-id': ID, 'x-duplexwire-request-timeout': v });
  const timed = async (headers: Record<string, string>): Promise<number> => {
    const started = performance.now();
    const reply = await send(proxy.port, { headers });
    assert.equal(reply.status, 504);
    return performance.now() - started;
  };
  // Well apart from the cap (1200 ms), so that a loaded machine cannot blur them.
  let elapsed = await timed(header('150ms'));
  assert.ok(elapsed >= 140 && elapsed < 1000, `150ms took ${elapsed}`);
  elapsed = await timed(header('0.2s'));
  assert.ok(elapsed >= 190 && elapsed < 1000, `0.2s took ${elapsed}`);
  for (const bad of ['12', 'abc', '0s', '-1s', '1.5.2s', '10 s']) {
    const reply = await send(proxy.port, { headers: header(bad) });
    assert.equal(reply.status, 400, bad);
    assert.equal(json(reply).code, 'INVALID_TIMEOUT');
  }
  elapsed = await timed(header('1h'));
  assert.ok(elapsed >= 1180 && elapsed < 4000, `capped took ${elapsed}`);
  // Without the header: the default (5 s), capped too.
  elapsed = await timed({ 'x-duplexwire-client-id': ID });
  assert.ok(elapsed >= 1180 && elapsed < 4000, `default capped took ${elapsed}`);
});

test('the user going away cancels the request at the target', async (t) => {
  let closed!: () => void;
  const targetClosed = new Promise<void>((resolve) => {
    closed = resolve;
  });
  let arrived!: () => void;
  const targetArrived = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  const target = await startTarget(t, (req) => {
    arrived();
    req.socket.once('close', closed);
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const socket = connect(proxy.port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write(`GET / HTTP/1.1\r\nHost: x\r\nx-duplexwire-client-id: ${ID}\r\n\r\n`);
  await targetArrived;
  socket.destroy();
  await Promise.race([targetClosed, delay(2000).then(() => assert.fail('the target request was not aborted'))]);
  await waitFor(() => proxy.proxy.inflight === 0);
});

test('502 at once when the agent is lost mid-request', async (t) => {
  let arrived!: () => void;
  const targetArrived = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  const target = await startTarget(t, () => arrived());
  const proxy = await startProxy(t, { requestTimeout: 10_000 });
  const agent = await startAgent(t, proxy, { target: target.url, reconnect: false });
  const started = performance.now();
  const pending = send(proxy.port);
  await targetArrived;
  await agent.client.close();
  const reply = await pending;
  assert.equal(reply.status, 502);
  assert.equal(json(reply).code, 'AGENT_LOST');
  assert.ok(performance.now() - started < 2000);
});

test('502 when the target is unreachable', async (t) => {
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: 'http://127.0.0.1:1' });
  const reply = await send(proxy.port);
  assert.equal(reply.status, 502);
  assert.equal(json(reply).code, 'TARGET_UNREACHABLE');
});

test('413 for a body over the limit (Content-Length and chunked); the tunnel keeps working', async (t) => {
  let reached = 0;
  const target = await startTarget(t, (req, res) => {
    reached++;
    echoHandler(req, res);
  });
  const proxy = await startProxy(t, { maxRequestBody: 1000 });
  await startAgent(t, proxy, { target: target.url });
  const big = Buffer.alloc(1001, 97);
  const byLength = await send(proxy.port, { method: 'POST', body: big });
  assert.equal(byLength.status, 413);
  assert.equal(json(byLength).code, 'BODY_TOO_LARGE');
  assert.equal(reached, 0, 'a body refused by its Content-Length never reaches the target');
  const chunked = await send(proxy.port, { method: 'POST', body: Buffer.alloc(5000, 98), chunked: true });
  assert.equal(chunked.status, 413);
  const ok = await send(proxy.port, { method: 'POST', body: Buffer.alloc(1000, 99) });
  assert.equal(ok.status, 200);
  assert.equal((json(ok) as { body: string }).body.length, 1000);
  assert.equal(proxy.proxy.agents(ID).length, 1);
});

test('500 when the in-process handler fails (Node and fetch handlers)', async (t) => {
  const proxy = await startProxy(t);
  await startAgent(t, proxy, {
    handler: (_req: unknown, _res: ServerResponse) => {
      throw new Error('boom');
    },
  });
  const reply = await send(proxy.port);
  assert.equal(reply.status, 500);
  assert.equal(json(reply).code, 'AGENT_HANDLER_FAILED');
  await startAgent(t, proxy, {
    id: OTHER_ID,
    handler: async (_request: Request): Promise<Response> => {
      throw new Error('boom');
    },
  });
  const fetchReply = await send(proxy.port, { headers: { 'x-duplexwire-client-id': OTHER_ID } });
  assert.equal(fetchReply.status, 500);
  assert.equal(json(fetchReply).code, 'AGENT_HANDLER_FAILED');
});

test('in-process handlers: Node (req, res) and fetch-style (Request) => Response', async (t) => {
  const proxy = await startProxy(t);
  await startAgent(t, proxy, {
    handler: (req: import('node:http').IncomingMessage, res: ServerResponse) => {
      readBody(req).then((body) => {
        res.setHeader('x-node', '1');
        res.end(`node ${req.method} ${req.url} ${body.toString()}`);
      });
    },
  });
  const node = await send(proxy.port, { method: 'PUT', path: '/n?x=1', body: 'abc' });
  assert.equal(node.status, 200);
  assert.equal(node.headers['x-node'], '1');
  assert.equal(node.text, 'node PUT /n?x=1 abc');
  await startAgent(t, proxy, {
    id: OTHER_ID,
    handler: async (request: Request) => {
      const body = await request.text();
      const url = new URL(request.url);
      return new Response(`fetch ${request.method} ${url.pathname}${url.search} ${body}`, {
        status: 202,
        headers: [
          ['x-fetch', '1'],
          ['set-cookie', 'a=1'],
          ['set-cookie', 'b=2'],
        ],
      });
    },
  });
  const fetched = await send(proxy.port, {
    method: 'POST',
    path: '/f?y=2',
    headers: { 'x-duplexwire-client-id': OTHER_ID },
    body: Buffer.alloc(200_000, 120),
  });
  assert.equal(fetched.status, 202);
  assert.equal(fetched.headers['x-fetch'], '1');
  assert.deepEqual(fetched.headers['set-cookie'], ['a=1', 'b=2']);
  assert.equal(fetched.text, `fetch POST /f?y=2 ${'x'.repeat(200_000)}`);
});

test('50 concurrent requests on one agent, answered out of order, each gets its own answer', async (t) => {
  const target = await startTarget(t, (req, res) => {
    const n = Number(new URL(req.url!, 'http://x').searchParams.get('n'));
    // Later requests answer first.
    setTimeout(() => res.end(`answer ${n}`), (50 - n) * 4);
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const order: number[] = [];
  const replies = await Promise.all(
    Array.from({ length: 50 }, (_, n) =>
      send(proxy.port, { path: `/?n=${n}` }).then((r) => {
        order.push(n);
        return r;
      }),
    ),
  );
  replies.forEach((r, n) => {
    assert.equal(r.status, 200);
    assert.equal(r.text, `answer ${n}`);
  });
  assert.notDeepEqual(
    order,
    [...order].sort((a, b) => a - b),
    'answers came out of order',
  );
});

test('agent credentials: wrong token, another id’s token and a missing id get 401 before any frame', async (t) => {
  const proxy = await startProxy(t);
  const attempt = async (id: string, token: string): Promise<number | undefined> => {
    const agent = new TunnelAgent({
      proxyUrl: proxy.agentsUrl,
      id,
      token,
      target: 'http://127.0.0.1:1',
      logger: recordingLogger(),
      reconnect: false,
    });
    try {
      await agent.start();
      return 200;
    } catch (error) {
      assert.ok(error instanceof ConnectError);
      return error.status;
    } finally {
      await agent.close(0);
    }
  };
  assert.equal(await attempt(ID, 'x'.repeat(43)), 401);
  assert.equal(await attempt(ID, OTHER_TOKEN), 401, 'a token is bound to its id');
  assert.equal(await attempt(OTHER_ID, TOKEN), 401);
  assert.equal(await attempt('9999', TOKEN), 401, 'unknown id');
  assert.equal(await attempt(ID, TOKEN), 200);
  assert.equal(proxy.proxy.agents().length, 0);
  assert.ok(!JSON.stringify(proxy.logger.entries).includes(TOKEN), 'logs never contain tokens');
});

test('the proxy refuses to start without credentials unless insecure', async (t) => {
  assert.throws(() => new TunnelProxy({ logger: recordingLogger() }), InvalidArgumentError);
  assert.throws(() => new TunnelProxy({ tokens: { [ID]: 'short' }, logger: recordingLogger() }), RangeError);
  const proxy = await startProxy(t, { tokens: {}, insecure: true });
  const target = await startTarget(t, echoHandler);
  await startAgent(t, proxy, { id: 'anything', token: 'whatever', target: target.url });
  const reply = await send(proxy.port, { headers: { 'x-duplexwire-client-id': 'anything' } });
  assert.equal(reply.status, 200);
});
