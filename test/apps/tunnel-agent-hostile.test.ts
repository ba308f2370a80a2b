/**
 * The agent against hostile users (whose requests reach it through the proxy) and a hostile or
 * buggy proxy (a scripted duplexwire server sending `tunnel.http` heads of its own): requests
 * never leave the target's origin or base path (nor a fetch handler's URL its path), never reach
 * the target ambiguous, and the agent's logs and errors never show the credentials or query of
 * its proxy URL.
 */
import assert from 'node:assert/strict';
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { test, type TestContext } from 'node:test';
import { jsonLogger } from '../../src/apps/shared/log.ts';
import { TunnelAgent } from '../../src/apps/tunnel/agent.ts';
import {
  BodyMode,
  decodeHttpReply,
  encodeHttpHead,
  type HttpHead,
  type HttpReply,
  TUNNEL_PROTOCOL_VERSION,
  tunnelProtocol,
} from '../../src/apps/tunnel/wire.ts';
import { type Connection, RequestError, Server, silentLogger } from '../../src/index.ts';
import { wsTransport } from '../../transports/ws.ts';
import { echoHandler, ID, raw, startAgent, startProxy, startTarget, TOKEN } from '../fixtures/tunnel-helpers.ts';
import { recordingLogger, waitFor } from '../helpers.ts';

function statusOf(response: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0);
}

function bodyOf(response: string): string {
  return response.slice(response.indexOf('\r\n\r\n') + 4);
}

/** A GET through the proxy to the agent of ID, on a connection of its own. */
function get(port: number, path: string, host = 'a', extra = ''): Promise<string> {
  return raw(
    port,
    `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nx-duplexwire-client-id: ${ID}\r\n${extra}Connection: close\r\n\r\n`,
  );
}

/** A target that keeps every byte it is sent and answers each request head with 200 `ok`, then closes. */
async function rawTarget(t: TestContext): Promise<{ url: string; received: () => string }> {
  let received = '';
  const server = createNetServer((socket) => {
    let head = '';
    socket.setEncoding('latin1');
    socket.on('error', () => {});
    socket.on('data', (text: string) => {
      received += text;
      head += text;
      if (head.includes('\r\n\r\n')) {
        head = '';
        socket.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, received: () => received };
}

/**
 * A scripted proxy: accepts one agent and sends it the heads a test writes. `perform` resolves
 * with the agent's reply, or the RequestError it answered with.
 */
async function fakeProxy(t: TestContext): Promise<{
  url: string;
  perform: (head: Omit<HttpHead, 'sid' | 'body'> & { body?: BodyMode }) => Promise<HttpReply | RequestError>;
}> {
  let connected!: (conn: Connection) => void;
  const connection = new Promise<Connection>((resolve) => {
    connected = resolve;
  });
  const server = new Server({
    transport: wsTransport({ host: '127.0.0.1', port: 0 }),
    logger: silentLogger,
    beforeUpgrade: () => ({ accept: true, protocol: tunnelProtocol(TUNNEL_PROTOCOL_VERSION) }),
    onClientConnected: (conn) => connected(conn),
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  let sid = 0;
  return {
    url: `ws://127.0.0.1:${server.address()!.port}/`,
    async perform(head) {
      const conn = await connection;
      assert.ok(await conn.negotiated(), 'the agent speaks v2.1');
      try {
        const payload = encodeHttpHead({ body: BodyMode.None, ...head, sid: `s${sid++}` });
        return decodeHttpReply(await conn.request('tunnel.http', payload, { timeout: 5000 }));
      } catch (error) {
        if (error instanceof RequestError) return error;
        throw error;
      }
    },
  };
}

async function agentOf(t: TestContext, proxyUrl: string, target: string): Promise<TunnelAgent> {
  const agent = new TunnelAgent({
    proxyUrl,
    id: ID,
    token: TOKEN,
    target,
    logger: recordingLogger(),
    reconnect: false,
  });
  t.after(() => agent.close(0));
  await agent.start();
  return agent;
}

test('a dot segment cannot climb out of the target’s base path, in a request or an upgrade', async (t) => {
  const target = await startTarget(t, echoHandler);
  const upgrades: string[] = [];
  target.server.on('upgrade', (req, socket) => {
    upgrades.push(req.url!);
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
  });
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: `${target.url}/api/` });
  let served = 0;
  target.server.on('request', () => served++);
  for (const path of [
    '/../admin',
    '/x/../../admin',
    '/%2e%2e/admin',
    '/.%2E/admin',
    '/..%2fadmin',
    '/x/..%5C..%5Cadmin',
    '/..;jsessionid=1/admin',
    '/./admin?q=1',
  ]) {
    const answer = await get(proxy.port, path);
    assert.equal(statusOf(answer), 400, `${path}: ${answer}`);
    assert.equal(JSON.parse(bodyOf(answer)).code, 'BAD_REQUEST', path);
  }
  // Written raw: a WebSocket client would resolve the dot segments itself.
  const upgrade = await get(
    proxy.port,
    '/%2e%2e/admin',
    'a',
    'Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: Upgrade\r\n',
  );
  assert.equal(statusOf(upgrade), 400, upgrade);
  // The same upgrade below the base path reaches the target (which refuses it).
  const allowed = await get(
    proxy.port,
    '/ws',
    'a',
    'Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: Upgrade\r\n',
  );
  assert.equal(statusOf(allowed), 403, allowed);
  assert.deepEqual(upgrades, ['/api/ws']);
  upgrades.length = 0;
  assert.equal(served, 0, 'the target saw none of them');
  assert.deepEqual(upgrades, []);
  // What stays below the base path goes on byte-exact: dots inside names, an encoded slash, a query.
  for (const path of ['/x/..a/.b%2Fc', '/x?path=../../admin']) {
    const answer = await get(proxy.port, path);
    assert.equal(statusOf(answer), 200, answer);
    assert.equal(JSON.parse(bodyOf(answer).split('\r\n')[1] ?? bodyOf(answer)).url, `/api${path}`);
  }
});

test('at a target without a base path, a dot segment goes on byte-exact (there is nothing to climb out of)', async (t) => {
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: target.url });
  const answer = await get(proxy.port, '/x/../%2e%2e/y');
  assert.equal(statusOf(answer), 200, answer);
  assert.match(answer, /"url":"\/x\/\.\.\/%2e%2e\/y"/);
});

test('a fetch handler’s URL has the request’s path whatever Host the user sends', async (t) => {
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { handler: (request: Request) => new Response(`url=${request.url}`) });
  for (const host of ['a/admin?', 'a/admin#', 'evil@a', 'a\\admin', 'a:80/x', '[::1']) {
    const answer = await get(proxy.port, '/public', host);
    assert.equal(statusOf(answer), 400, `${host}: ${answer}`);
    assert.equal(JSON.parse(bodyOf(answer)).code, 'BAD_REQUEST', host);
  }
  for (const [host, url] of [
    ['example.com:8080', 'http://example.com:8080/public'],
    ['[::1]:3000', 'http://[::1]:3000/public'],
    // RFC 9112 §3.2: an empty Host is an empty authority, not a path segment to take as the host.
    ['', 'http://localhost/public'],
  ] as const) {
    const answer = await get(proxy.port, '/public', host);
    assert.equal(statusOf(answer), 200, `${host}: ${answer}`);
    assert.ok(answer.includes(`url=${url}`), `${host}: ${answer}`);
  }
});

test('a proxy’s request target that is not a path, or a CONNECT, never reaches the target', async (t) => {
  for (const base of ['', '/api']) {
    const target = await rawTarget(t);
    const proxy = await fakeProxy(t);
    await agentOf(t, proxy.url, `${target.url}${base}`);
    for (const head of [
      { method: 'GET', url: 'http://evil.example/x' },
      { method: 'GET', url: 'x' },
      { method: 'GET', url: '-admin/secret' },
      { method: 'CONNECT', url: 'evil.example:443' },
      { method: 'CONNECT', url: '/x' },
    ]) {
      const reply = await proxy.perform({ ...head, headers: ['Host', 'a'] });
      assert.ok(reply instanceof RequestError, `${base} ${head.method} ${head.url}: ${JSON.stringify(reply)}`);
      assert.equal(reply.code, 'BAD_MESSAGE');
    }
    assert.equal(target.received(), '', `${base}: the target was sent nothing`);
    // The agent still works: an origin-form target goes below the base path.
    const ok = await proxy.perform({ method: 'GET', url: '/x', headers: ['Host', 'a'] });
    assert.ok(!(ok instanceof RequestError) && ok.kind === 'inline', JSON.stringify(ok));
    assert.equal(ok.status, 200);
    assert.match(target.received(), new RegExp(`^GET ${base}/x HTTP/1\\.1\r\n`));
  }
});

test('a fetch handler refuses a proxy’s request target that is not a path', async (t) => {
  let calls = 0;
  const proxy = await fakeProxy(t);
  const agent = new TunnelAgent({
    proxyUrl: proxy.url,
    id: ID,
    token: TOKEN,
    handler: (_request: Request) => {
      calls++;
      return new Response('x');
    },
    logger: recordingLogger(),
    reconnect: false,
  });
  t.after(() => agent.close(0));
  await agent.start();
  for (const url of ['@evil.example/x', 'evil.example/x']) {
    const reply = await proxy.perform({ method: 'GET', url, headers: ['Host', 'a'] });
    assert.ok(reply instanceof RequestError, url);
    assert.equal(reply.code, 'BAD_MESSAGE');
  }
  assert.equal(calls, 0);
});

test('a proxy’s ambiguous heads reach the target as one clean request, or not at all', async (t) => {
  const target = await rawTarget(t);
  const proxy = await fakeProxy(t);
  await agentOf(t, proxy.url, target.url);
  const hello = new TextEncoder().encode('hello');
  const refused: Array<{ name: string; headers: string[]; body?: BodyMode; data?: Uint8Array }> = [
    { name: 'CR LF in a value', headers: ['Host', 'a', 'X', 'a\r\nInjected: 1'] },
    { name: 'obs-fold', headers: ['Host', 'a', 'X', 'a\r\n folded'] },
    { name: 'LF alone', headers: ['Host', 'a', 'X', 'a\nInjected: 1'] },
    { name: 'CR LF in Host', headers: ['Host', 'a\r\nX: y'] },
    { name: 'a name with a space', headers: ['Host', 'a', 'X Y', '1'] },
    { name: 'a name with a colon', headers: ['Host', 'a', 'X:Y', '1'] },
    { name: 'two Hosts', headers: ['Host', 'a', 'Host', 'b'] },
    {
      name: 'two Content-Lengths',
      headers: ['Host', 'a', 'Content-Length', '5', 'Content-Length', '5'],
      body: BodyMode.Inline,
      data: hello,
    },
    {
      name: 'a Content-Length short of the body',
      headers: ['Host', 'a', 'Content-Length', '3'],
      body: BodyMode.Inline,
      data: hello,
    },
  ];
  for (const { name, headers, body, data } of refused) {
    const reply = await proxy.perform({
      method: 'POST',
      url: '/x',
      headers,
      ...(body === undefined ? {} : { body }),
      ...(data === undefined ? {} : { data }),
    });
    assert.ok(reply instanceof RequestError, `${name}: ${JSON.stringify(reply)}`);
  }
  assert.equal(target.received(), '', 'the target was sent nothing');
  // Framing and hop-by-hop headers are the agent's: the target gets one Content-Length, its own.
  const reply = await proxy.perform({
    method: 'POST',
    url: '/x',
    headers: [
      'Host',
      'a',
      'Content-Length',
      '+5',
      'Transfer-Encoding',
      'chunked',
      'TE',
      'trailers',
      'Connection',
      'close, X-Private',
      'X-Private',
      '1',
      'Keep-Alive',
      'timeout=5',
    ],
    body: BodyMode.Inline,
    data: hello,
  });
  assert.ok(!(reply instanceof RequestError) && reply.kind === 'inline' && reply.status === 200, JSON.stringify(reply));
  await waitFor(() => target.received().endsWith('hello'), 2000, 'the request at the target');
  const [head, rest] = target.received().split('\r\n\r\n') as [string, string];
  assert.equal(rest, 'hello');
  const names = head
    .split('\r\n')
    .slice(1)
    .map((line) => line.slice(0, line.indexOf(':')).toLowerCase());
  assert.deepEqual(names.sort(), ['connection', 'content-length', 'host']);
  assert.match(head, /\r\ncontent-length: 5(\r\n|$)/);
  assert.match(head, /\r\nconnection: keep-alive(\r\n|$)/);
});

test('the agent’s logs and errors never show the credentials or query of its proxy URL', async (t) => {
  const proxy = await startProxy(t);
  const target = await startTarget(t, echoHandler);
  const lines: string[] = [];
  const logger = jsonLogger({ level: 'debug', stream: { write: (line: string) => lines.push(line) } });
  const secrets = ['PASS-SECRET', 'QUERY-SECRET'];
  const agent = new TunnelAgent({
    proxyUrl: `ws://user:PASS-SECRET@127.0.0.1:${proxy.port}${proxy.proxy.agentsPath}?k=QUERY-SECRET`,
    id: ID,
    token: TOKEN,
    target: target.url,
    logger,
    reconnect: { initialDelay: 10, maxDelay: 50 },
  });
  t.after(() => agent.close(0));
  await agent.start();
  await waitFor(() => lines.some((line) => line.includes('connected to the proxy')));
  const connected = JSON.parse(lines.find((line) => line.includes('connected to the proxy'))!);
  assert.equal(connected.url, `ws://***@127.0.0.1:${proxy.port}${proxy.proxy.agentsPath}?…`);
  // A refused attempt: the client's own lines and the error start() rejects with.
  const closedPort = await new Promise<number>((resolve) => {
    const server = createNetServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
  const refused = new TunnelAgent({
    proxyUrl: `ws://user:PASS-SECRET@127.0.0.1:${closedPort}/_tunnel?k=QUERY-SECRET`,
    id: ID,
    token: TOKEN,
    target: target.url,
    logger,
    reconnect: { maxAttempts: 1 },
  });
  t.after(() => refused.close(0));
  const error = await refused.start().then(
    () => assert.fail('connected to a closed port'),
    (e: Error) => e,
  );
  assert.equal((error as { code?: unknown }).code, 'ERR_CONNECT');
  assert.match(error.message, /ws:\/\/\*\*\*@127\.0\.0\.1:\d+\/_tunnel\?…/);
  assert.ok(lines.some((line) => line.includes('connection to the proxy failed')));
  for (const secret of secrets) {
    assert.ok(!error.message.includes(secret) && !String(error.stack).includes(secret), `${secret} in the error`);
    for (const line of lines) assert.ok(!line.includes(secret), `${secret} in ${line}`);
  }
});
