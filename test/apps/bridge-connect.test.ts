/**
 * Bridge, connect: each upgrade is decided by a signed `connect` POST to the backend. 2xx
 * accepts (its body is the client's first message), 4xx refuses with that status, 3xx (never
 * followed), 5xx, an unreachable backend or an answer too large give 502, no answer in time 504,
 * too many connections or a closing bridge 503.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import { WsHttpBridge } from '../../src/apps/bridge/index.ts';
import { delay, recordingLogger, waitFor } from '../helpers.ts';
import {
  closeServer,
  connected,
  openClient,
  SECRET,
  startBackend,
  startBridge,
  upgradeStatus,
} from '../fixtures/bridge-helpers.ts';

test('connect: a signed POST with the id, path, query, headers (handshake and hop-by-hop ones removed) and address', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  const { id } = await connected(t, backend, bridge, {
    query: 'room=42&x=%2F',
    headers: {
      cookie: 'session=s3cr3t',
      authorization: 'Bearer abc.def',
      'x-custom': 'yes',
      'proxy-authorization': 'Basic Zm9vOmJhcg==',
      'keep-alive': 'timeout=5',
    },
  });
  assert.equal(backend.requests.length, 1);
  const connect = backend.requests[0]!;
  assert.equal(connect.method, 'POST');
  assert.equal(connect.url, '/events');
  assert.equal(connect.event, 'connect');
  assert.equal(connect.connection, id);
  assert.equal(connect.callback, undefined, 'no callback URL before the connection exists');
  assert.match(connect.contentType, /^application\/json/);
  assert.ok(connect.verified, 'the connect event is signed');
  const body = connect.json<{
    id: string;
    path: string;
    query: string;
    headers: Record<string, string>;
    remoteAddress: string;
  }>();
  assert.equal(body.id, id);
  assert.equal(body.path, '/ws');
  assert.equal(body.query, 'room=42&x=%2F');
  assert.equal(body.remoteAddress, '127.0.0.1');
  assert.equal(body.headers.cookie, 'session=s3cr3t');
  assert.equal(body.headers.authorization, 'Bearer abc.def');
  assert.equal(body.headers['x-custom'], 'yes');
  assert.equal(body.headers.host, `127.0.0.1:${bridge.port}`);
  for (const dropped of [
    'sec-websocket-key',
    'sec-websocket-version',
    'sec-websocket-extensions',
    'connection',
    'upgrade',
    'keep-alive',
    'proxy-authorization',
  ]) {
    assert.equal(body.headers[dropped], undefined, `${dropped} is not passed on`);
  }
  // Every connection gets an id of its own.
  await connected(t, backend, bridge);
  const ids = backend.events('connect').map((r) => r.connection);
  assert.equal(new Set(ids).size, 2);
});

test('connect: headers named like Object properties (__proto__, constructor, toString) arrive like any other', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  // A computed key: `{ '__proto__': ... }` in a literal would set the prototype instead.
  const headers: Record<string, string> = { ['__proto__']: 'proto-value', constructor: 'ctor', tostring: 'ts' };
  assert.ok(Object.hasOwn(headers, '__proto__'));
  await connected(t, backend, bridge, { headers });
  const [connect] = backend.events('connect');
  // Parsed without a reviver, JSON keeps `__proto__` as an own property.
  const sent = connect!.json<{ headers: Record<string, string> }>().headers;
  assert.ok(Object.hasOwn(sent, '__proto__'), `__proto__ is in ${connect!.body.toString('utf8')}`);
  assert.equal(Object.getOwnPropertyDescriptor(sent, '__proto__')?.value, 'proto-value');
  assert.equal(sent.constructor, 'ctor');
  assert.equal(sent.tostring, 'ts');
  assert.equal(sent['x-nothing'], undefined);
});

test('a 2xx body is the first message: text for text/*, binary otherwise; an empty body sends nothing', async (t) => {
  const backend = await startBackend(t, (req) => {
    if (req.event !== 'connect') return { status: 204 };
    const kind = new URLSearchParams(req.json<{ query: string }>().query).get('kind');
    if (kind === 'text') return { status: 200, contentType: 'text/plain; charset=utf-8', body: 'welcome ✓' };
    if (kind === 'binary')
      return { status: 201, contentType: 'application/octet-stream', body: Buffer.from([0, 1, 255]) };
    return { status: 204 };
  });
  const bridge = await startBridge(t, backend);
  const text = await connected(t, backend, bridge, { query: 'kind=text' });
  const [welcome] = await text.client.waitMessages(1);
  assert.equal(welcome!.binary, false);
  assert.equal(welcome!.text, 'welcome ✓');
  const binary = await connected(t, backend, bridge, { query: 'kind=binary' });
  const [bytes] = await binary.client.waitMessages(1);
  assert.equal(bytes!.binary, true);
  assert.deepEqual([...bytes!.data], [0, 1, 255]);
  const none = await connected(t, backend, bridge, { query: 'kind=none' });
  // A message sent now comes back only after whatever the bridge would have sent first.
  none.client.ws.send('ping');
  await backend.waitFor((r) => r.event === 'message' && r.connection === none.id);
  await delay(50);
  assert.equal(none.client.messages.length, 0);
});

test('4xx refuses the upgrade with that status; no close event follows a refusal', async (t) => {
  const backend = await startBackend(t, (req) => {
    const code = Number(new URLSearchParams(req.json<{ query: string }>().query).get('status'));
    return { status: code, body: 'no' };
  });
  const bridge = await startBridge(t, backend);
  for (const code of [400, 401, 403, 404, 429, 451]) {
    assert.equal(await upgradeStatus(`${bridge.wsUrl}?status=${code}`), code);
  }
  assert.equal(backend.events('connect').length, 6);
  assert.equal(bridge.bridge.connectionCount, 0);
  await delay(50);
  assert.equal(backend.events('close').length, 0);
});

test('3xx (never followed), 5xx and an unreachable backend give 502', async (t) => {
  let redirectFollowed = false;
  const elsewhere = await startBackend(t, () => {
    redirectFollowed = true;
    return { status: 200 };
  });
  const backend = await startBackend(t, (req, res) => {
    const code = Number(new URLSearchParams(req.json<{ query: string }>().query).get('status'));
    if (code >= 300 && code < 400) {
      res.writeHead(code, { location: elsewhere.url }).end();
      return undefined;
    }
    return { status: code };
  });
  const bridge = await startBridge(t, backend);
  for (const code of [301, 302, 303, 307, 308, 500, 502, 503]) {
    assert.equal(await upgradeStatus(`${bridge.wsUrl}?status=${code}`), 502, `backend ${code}`);
  }
  assert.equal(redirectFollowed, false, 'a redirect is never followed');
  await closeServer(backend.server);
  assert.equal(await upgradeStatus(bridge.wsUrl), 502, 'backend unreachable');
  assert.equal(bridge.bridge.connectionCount, 0);
});

test('a connect answer over maxMessageSize gives 502', async (t) => {
  const backend = await startBackend(t, () => ({ status: 200, contentType: 'text/plain', body: 'x'.repeat(2048) }));
  const bridge = await startBridge(t, backend, { maxMessageSize: 1024 });
  assert.equal(await upgradeStatus(bridge.wsUrl), 502);
  assert.equal(bridge.bridge.connectionCount, 0);
});

test('no answer within backendTimeout gives 504', async (t) => {
  const backend = await startBackend(t, () => undefined); // never answers
  const bridge = await startBridge(t, backend, { backendTimeout: 200 });
  const started = performance.now();
  assert.equal(await upgradeStatus(bridge.wsUrl), 504);
  const elapsed = performance.now() - started;
  assert.ok(elapsed >= 190 && elapsed < 2000, `elapsed ${elapsed}`);
});

test('maxConnections counts the upgrades being decided: one more gets 503, a freed slot is reused', async (t) => {
  const held: Array<() => void> = [];
  const backend = await startBackend(t, (req) => {
    if (req.event !== 'connect' || !req.json<{ query: string }>().query.includes('hold')) return { status: 204 };
    return new Promise((resolve) => held.push(() => resolve({ status: 204 })));
  });
  const bridge = await startBridge(t, backend, { maxConnections: 2 });
  const first = openClient(t, `${bridge.wsUrl}?hold`);
  const second = openClient(t, `${bridge.wsUrl}?hold`);
  await waitFor(() => held.length === 2, 2000, 'two connects held');
  assert.equal(await upgradeStatus(bridge.wsUrl), 503, 'two upgrades being decided fill the bridge');
  assert.equal(backend.events('connect').length, 2, 'a refused upgrade is not posted');
  for (const release of held) release();
  const [a] = await Promise.all([first, second]);
  assert.equal(bridge.bridge.connectionCount, 2);
  assert.equal(await upgradeStatus(bridge.wsUrl), 503, 'two open connections fill the bridge');
  a.ws.close(1000);
  await backend.waitFor((r) => r.event === 'close');
  await waitFor(() => bridge.bridge.connectionCount === 1);
  await openClient(t, bridge.wsUrl);
  assert.equal(bridge.bridge.connectionCount, 2);
});

test('once close() began, upgrades get 503 and /readyz 503', async (t) => {
  let releaseClose!: () => void;
  const closeHeld = new Promise<void>((resolve) => {
    releaseClose = resolve;
  });
  const backend = await startBackend(t, async (req) => {
    if (req.event === 'close') await closeHeld;
    return { status: 204 };
  });
  const bridge = await startBridge(t, backend);
  const { client } = await connected(t, backend, bridge);
  const closing = bridge.bridge.close();
  assert.deepEqual(await client.closed, { code: 1001, reason: 'bridge shutting down' });
  await backend.waitFor((r) => r.event === 'close');
  // close() waits for that close event: the listener still answers meanwhile.
  assert.equal(await upgradeStatus(bridge.wsUrl), 503);
  const ready = await fetch(`${bridge.base}readyz`);
  assert.equal(ready.status, 503);
  assert.deepEqual(await ready.json(), { status: 'closing' });
  releaseClose();
  await closing;
  assert.equal(backend.events('connect').length, 1, 'the refused upgrade never reached the backend');
});

test('the bridge on its own server (listen): other paths and non-WebSocket upgrades are refused, not left hanging', async (t) => {
  const backend = await startBackend(t);
  const bridge = new WsHttpBridge({
    backend: backend.url,
    secret: SECRET,
    callbackUrl: 'http://bridge.internal:8081/',
    path: '/ws',
    logger: recordingLogger(),
  });
  t.after(() => bridge.close());
  const { port } = await bridge.listen({ host: '127.0.0.1', port: 0 });
  assert.equal(await upgradeStatus(`ws://127.0.0.1:${port}/other`), 404);
  assert.equal(await upgradeStatus(`ws://127.0.0.1:${port}/ws`), 101);
  const h2c = await rawUpgrade(port, '/ws', 'h2c');
  assert.match(h2c, /^HTTP\/1\.1 4\d\d /);
  assert.equal(backend.events('connect').length, 1);
});

/** Sends an upgrade request of another protocol and returns the first bytes of the answer. */
function rawUpgrade(port: number, path: string, protocol: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no answer to the upgrade'));
    }, 3000);
    let text = '';
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
    socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${protocol}\r\n\r\n`);
  });
}

test('subprotocols: the backend picks one of those offered with x-bridge-protocol; none unless it does; another is 502', async (t) => {
  const backend = await startBackend(t, (req) => {
    if (req.event !== 'connect') return { status: 204 };
    const pick = new URLSearchParams(req.json<{ query: string }>().query).get('pick');
    return { status: 204, ...(pick === null ? {} : { headers: { 'x-bridge-protocol': pick } }) };
  });
  const bridge = await startBridge(t, backend);
  const chosen = await openClient(t, `${bridge.wsUrl}?pick=chat.v2`, { protocols: ['chat.v1', 'chat.v2'] });
  assert.equal(chosen.ws.protocol, 'chat.v2');
  const offer = backend.events('connect')[0]!.json<{ headers: Record<string, string> }>();
  assert.equal(offer.headers['sec-websocket-protocol'], 'chat.v1,chat.v2');
  // No choice: none (the ws client library and Chrome fail that answer when they offered some),
  // so this client offers none.
  const plain = await openClient(t, bridge.wsUrl);
  assert.equal(plain.ws.protocol, '');
  assert.equal(await upgradeStatus(`${bridge.wsUrl}?pick=other`, { 'sec-websocket-protocol': 'chat.v1' }), 502);
  // The backend heard that the connection it accepted with a bad choice never opened.
  await backend.waitFor((r) => r.event === 'close' && r.json<{ code: number }>().code === 1006);
});

test('a malformed subprotocol offer is refused with 400 before the backend is asked', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  for (const offer of ['a, a', 'a,,b', 'bad token', '']) {
    assert.equal(await upgradeStatus(bridge.wsUrl, { 'sec-websocket-protocol': offer }), 400, JSON.stringify(offer));
  }
  assert.equal(backend.events('connect').length, 0);
});
