/**
 * Bridge, callbacks: the backend POSTs a message to `<callbackUrl>connections/<token>` (text for
 * `text/*`, binary otherwise) or DELETEs it to close the client, with the status codes of a
 * small REST API (204, 400, 401, 404, 405, 410, 413) and optional signatures.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sign, signCallback, WsHttpBridge } from '../../src/apps/bridge/index.ts';
import {
  type Backend,
  call,
  callbackPath,
  connected,
  openClient,
  type StartedBridge,
  SECRET,
  startBackend,
  startBridge,
  type TestClient,
  untilMetric,
} from '../fixtures/bridge-helpers.ts';
import { recordingLogger, waitFor } from '../helpers.ts';

/** A connected client and its callback path (learnt from the backend's first message event). */
async function withCallback(
  t: Parameters<typeof startBackend>[0],
  backend: Backend,
  bridge: StartedBridge,
): Promise<{ client: TestClient; id: string; path: string }> {
  const { client, id } = await connected(t, backend, bridge);
  client.ws.send('hello');
  const [message] = await backend.waitFor((r) => r.event === 'message' && r.connection === id);
  return { client, id, path: callbackPath(message!) };
}

test('POST sends the body to the client: text for text/*, binary otherwise; 204', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  const { client, path } = await withCallback(t, backend, bridge);
  const text = await call(bridge.port, {
    method: 'POST',
    path,
    headers: { 'content-type': 'text/plain; charset=utf-8' },
    body: 'héllo ✓',
  });
  assert.equal(text.status, 204);
  assert.equal(text.body.length, 0);
  await call(bridge.port, { method: 'POST', path, headers: { 'content-type': 'TEXT/HTML' }, body: '<b>x</b>' });
  await call(bridge.port, {
    method: 'POST',
    path,
    headers: { 'content-type': 'application/json' },
    body: '{"a":1}',
  });
  await call(bridge.port, { method: 'POST', path, body: Buffer.from([0, 0xff, 0xfe]) }); // no type: binary
  // A query string on the callback URL is ignored.
  await call(bridge.port, { method: 'POST', path: `${path}?x=1`, headers: { 'content-type': 'text/plain' }, body: '' });
  const got = await client.waitMessages(5);
  assert.deepEqual(
    got.map((m) => [m.binary, m.binary ? [...m.data] : m.text]),
    [
      [false, 'héllo ✓'],
      [false, '<b>x</b>'],
      [true, [...Buffer.from('{"a":1}')]],
      [true, [0, 0xff, 0xfe]],
      [false, ''],
    ],
  );
});

test('POST of invalid UTF-8 with a text type: 400 BAD_TEXT, nothing sent, the connection stays', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  const { client, path } = await withCallback(t, backend, bridge);
  const bad = await call(bridge.port, {
    method: 'POST',
    path,
    headers: { 'content-type': 'text/plain' },
    body: Buffer.from([0x61, 0xc3, 0x28]),
  });
  assert.equal(bad.status, 400);
  assert.equal(JSON.parse(bad.text).code, 'BAD_TEXT');
  const ok = await call(bridge.port, { method: 'POST', path, headers: { 'content-type': 'text/plain' }, body: 'ok' });
  assert.equal(ok.status, 204);
  const [only] = await client.waitMessages(1);
  assert.equal(only!.text, 'ok');
  assert.equal(client.messages.length, 1);
});

test('DELETE closes the client: empty body 1000, or {code, reason}; the close event follows', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  const cases: Array<{ body?: string; expected: { code: number; reason: string } }> = [
    { expected: { code: 1000, reason: '' } },
    { body: JSON.stringify({ code: 4001, reason: 'kicked ✓' }), expected: { code: 4001, reason: 'kicked ✓' } },
    {
      body: JSON.stringify({ code: 1000, reason: 'r'.repeat(123) }),
      expected: { code: 1000, reason: 'r'.repeat(123) },
    },
    { body: JSON.stringify({ code: 3000 }), expected: { code: 3000, reason: '' } },
    { body: JSON.stringify({ reason: 'only a reason' }), expected: { code: 1000, reason: 'only a reason' } },
  ];
  for (const { body, expected } of cases) {
    const { client, id, path } = await withCallback(t, backend, bridge);
    const reply = await call(bridge.port, {
      method: 'DELETE',
      path,
      ...(body === undefined ? {} : { body, headers: { 'content-type': 'application/json' } }),
    });
    assert.equal(reply.status, 204, body);
    assert.deepEqual(await client.closed, expected);
    const [close] = await backend.waitFor((r) => r.event === 'close' && r.connection === id);
    assert.deepEqual(close!.json(), { ...expected, dropped: 0 });
    const again = await call(bridge.port, { method: 'DELETE', path });
    assert.equal(again.status, 410, 'a closed connection is gone');
    assert.equal(JSON.parse(again.text).code, 'GONE');
  }
});

test('DELETE with a bad close body: 400 BAD_CLOSE, the connection stays open', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  const { client, path } = await withCallback(t, backend, bridge);
  const bad = [
    'not json',
    '"a string"',
    '42',
    'null',
    JSON.stringify({ code: 1001 }),
    JSON.stringify({ code: 1006 }),
    JSON.stringify({ code: 2999 }),
    JSON.stringify({ code: 5000 }),
    JSON.stringify({ code: 3000.5 }),
    JSON.stringify({ code: '4000' }),
    JSON.stringify({ code: 4000, reason: 7 }),
    JSON.stringify({ code: 4000, reason: 'r'.repeat(124) }),
    JSON.stringify({ code: 4000, reason: 'é'.repeat(62) }), // 124 bytes
  ];
  for (const body of bad) {
    const reply = await call(bridge.port, { method: 'DELETE', path, body });
    assert.equal(reply.status, 400, body);
    assert.equal(JSON.parse(reply.text).code, 'BAD_CLOSE', body);
  }
  const ok = await call(bridge.port, {
    method: 'POST',
    path,
    headers: { 'content-type': 'text/plain' },
    body: 'still here',
  });
  assert.equal(ok.status, 204);
  assert.equal((await client.waitMessages(1))[0]!.text, 'still here');
  assert.equal(client.ws.readyState, client.ws.OPEN);
});

test('unknown token 410, malformed token path 404, other methods 405 with Allow', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  const { path } = await withCallback(t, backend, bridge);
  const unknown = await call(bridge.port, {
    method: 'POST',
    path: `/connections/${'A'.repeat(32)}`,
    body: 'x',
  });
  assert.equal(unknown.status, 410);
  assert.equal(JSON.parse(unknown.text).code, 'GONE');
  for (const malformed of [
    '/connections/',
    '/connections/short',
    `/connections/${'A'.repeat(33)}`,
    `/connections/${'A'.repeat(31)}!`,
    `${path}/extra`,
    `/connections/${'%41'.repeat(32)}`,
  ]) {
    const reply = await call(bridge.port, { method: 'POST', path: malformed, body: 'x' });
    assert.equal(reply.status, 404, malformed);
    assert.equal(JSON.parse(reply.text).code, 'NOT_FOUND');
  }
  for (const method of ['GET', 'PUT', 'PATCH', 'HEAD', 'OPTIONS']) {
    const reply = await call(bridge.port, { method, path });
    assert.equal(reply.status, 405, method);
    assert.equal(reply.headers.allow, 'POST, DELETE');
  }
});

test('a body over maxMessageSize: 413, by Content-Length and chunked; nothing reaches the client', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend, { maxMessageSize: 1024 });
  const { client, path } = await withCallback(t, backend, bridge);
  const byLength = await call(bridge.port, { method: 'POST', path, body: Buffer.alloc(1025) });
  assert.equal(byLength.status, 413);
  assert.equal(JSON.parse(byLength.text).code, 'MESSAGE_TOO_LARGE');
  const chunked = await call(bridge.port, { method: 'POST', path, body: Buffer.alloc(5000), chunked: true });
  assert.equal(chunked.status, 413);
  const chunkedDelete = await call(bridge.port, { method: 'DELETE', path, body: Buffer.alloc(5000), chunked: true });
  assert.equal(chunkedDelete.status, 413);
  const atLimit = await call(bridge.port, { method: 'POST', path, body: Buffer.alloc(1024, 7), chunked: true });
  assert.equal(atLimit.status, 204);
  const [got] = await client.waitMessages(1);
  assert.equal(got!.data.length, 1024);
  assert.equal(client.messages.length, 1);
});

test('requireSignedCallbacks: unsigned or wrongly signed 401; signed with sign() works', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend, { requireSignedCallbacks: true });
  const { client, path } = await withCallback(t, backend, bridge);
  const token = path.slice('/connections/'.length);
  const body = Buffer.from('signed hello');
  const signature = (fields: { action: string; subject: string }, bytes: Uint8Array, secret = SECRET, at?: number) =>
    ({
      'x-bridge-signature': sign(secret, { domain: 'callback', ...fields, contentType: 'text/plain' }, bytes, at),
      'content-type': 'text/plain',
    }) as Record<string, string>;
  const wrong: Array<[string, Record<string, string>]> = [
    ['unsigned', { 'content-type': 'text/plain' }],
    ['garbage', { 'x-bridge-signature': 'nonsense', 'content-type': 'text/plain' }],
    ['other secret', signature({ action: 'POST', subject: token }, body, 'another-secret-0123456789abcdefghij')],
    ['other method', signature({ action: 'DELETE', subject: token }, body)],
    ['other token', signature({ action: 'POST', subject: 'B'.repeat(32) }, body)],
    ['other body', signature({ action: 'POST', subject: token }, Buffer.from('signed hellO'))],
    ['too old', signature({ action: 'POST', subject: token }, body, SECRET, Date.now() - 6 * 60_000)],
    [
      'other content type',
      { ...signature({ action: 'POST', subject: token }, body), 'content-type': 'application/octet-stream' },
    ],
  ];
  for (const [what, headers] of wrong) {
    const reply = await call(bridge.port, { method: 'POST', path, headers, body });
    assert.equal(reply.status, 401, what);
    assert.equal(JSON.parse(reply.text).code, 'BAD_SIGNATURE');
  }
  const ok = await call(bridge.port, {
    method: 'POST',
    path,
    headers: signature({ action: 'POST', subject: token }, body),
    body,
  });
  assert.equal(ok.status, 204);
  assert.equal((await client.waitMessages(1))[0]!.text, 'signed hello');
  assert.equal(client.messages.length, 1, 'the refused ones sent nothing');
  // DELETE is signed over its own method and (empty) body.
  const unsignedDelete = await call(bridge.port, { method: 'DELETE', path });
  assert.equal(unsignedDelete.status, 401);
  const close = await call(bridge.port, {
    method: 'DELETE',
    path,
    headers: {
      'x-bridge-signature': signCallback(
        SECRET,
        { method: 'DELETE', url: `http://127.0.0.1:${bridge.port}${path}` },
        new Uint8Array(0),
      ),
    },
  });
  assert.equal(close.status, 204);
  assert.equal((await client.closed).code, 1000);
});

test('without requireSignedCallbacks the token alone is enough', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  const { client, path } = await withCallback(t, backend, bridge);
  const reply = await call(bridge.port, {
    method: 'POST',
    path,
    headers: { 'x-bridge-signature': 'nonsense', 'content-type': 'text/plain' },
    body: 'x',
  });
  assert.equal(reply.status, 204);
  await client.waitMessages(1);
});

test('a client over maxBufferedBytes is closed with 1008 by the callback that finds it so', async (t) => {
  const BLOCK = 256 * 1024;
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend, { maxBufferedBytes: 64 * 1024, maxMessageSize: BLOCK });
  const { client, id, path } = await withCallback(t, backend, bridge);
  client.ws.pause(); // stops reading: what the bridge sends piles up
  let sent = 0;
  let last = 204;
  for (let i = 0; i < 400 && last === 204; i++) {
    last = (await call(bridge.port, { method: 'POST', path, body: Buffer.alloc(BLOCK, i) })).status;
    if (last === 204) sent++;
  }
  assert.equal(last, 410, `the callback after ${sent} blocks finds the client too slow`);
  assert.ok(sent >= 1);
  client.ws.resume();
  const closed = await client.closed;
  assert.deepEqual(closed, { code: 1008, reason: 'too slow' });
  assert.equal(client.messages.length, sent, 'every accepted block arrived before the close');
  const [close] = await backend.waitFor((r) => r.event === 'close' && r.connection === id);
  assert.equal(close!.json<{ code: number }>().code, 1008);
});

test('callbacks are counted by method and status', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend);
  const { path } = await withCallback(t, backend, bridge);
  await call(bridge.port, { method: 'POST', path, body: 'a' });
  await call(bridge.port, { method: 'POST', path, body: 'b' });
  await call(bridge.port, { method: 'GET', path });
  await call(bridge.port, { method: 'POST', path: '/connections/x', body: 'c' });
  await call(bridge.port, { method: 'DELETE', path });
  await waitFor(() => bridge.bridge.connectionCount === 0);
  await call(bridge.port, { method: 'DELETE', path });
  const text = await untilMetric(bridge, /duplexwire_bridge_callbacks_total\{method="DELETE",status="410"\} 1/);
  assert.match(text, /duplexwire_bridge_callbacks_total\{method="POST",status="204"\} 2/);
  assert.match(text, /duplexwire_bridge_callbacks_total\{method="POST",status="404"\} 1/);
  assert.match(text, /duplexwire_bridge_callbacks_total\{method="other",status="405"\} 1/);
  assert.match(text, /duplexwire_bridge_callbacks_total\{method="DELETE",status="204"\} 1/);
});

test('without callbackUrl the callback URL is the address the bridge listens on', async (t) => {
  const backend = await startBackend(t);
  const bridge = new WsHttpBridge({ backend: backend.url, secret: SECRET, path: '/ws', logger: recordingLogger() });
  t.after(() => bridge.close());
  const { port } = await bridge.listen({ host: '127.0.0.1', port: 0 });
  const client = await openClient(t, `ws://127.0.0.1:${port}/ws`);
  client.ws.send('hello');
  const [message] = await backend.waitFor((r) => r.event === 'message');
  assert.match(message!.callback!, new RegExp(`^http://127\\.0\\.0\\.1:${port}/connections/[A-Za-z0-9_-]{32}$`));
  const reply = await fetch(message!.callback!, {
    method: 'POST',
    headers: { 'content-type': 'text/plain' },
    body: 'back',
  });
  assert.equal(reply.status, 204);
  assert.equal((await client.waitMessages(1))[0]!.text, 'back');
});

test('requireSignedCallbacks: a signed callback is used once; a replay within the tolerance is refused', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend, { requireSignedCallbacks: true });
  const { client, path } = await withCallback(t, backend, bridge);
  const url = `${bridge.base}${path.slice(1)}`;
  const body = Buffer.from('once');
  const headers = {
    'content-type': 'text/plain',
    'x-bridge-signature': signCallback(SECRET, { method: 'POST', url, contentType: 'text/plain' }, body),
  };
  assert.equal((await call(bridge.port, { method: 'POST', path, headers, body })).status, 204);
  const again = await call(bridge.port, { method: 'POST', path, headers, body });
  assert.equal(again.status, 401, 'the same signature again');
  assert.equal(JSON.parse(again.text).code, 'REPLAYED');
  // The same message signed anew is another callback.
  const fresh = signCallback(SECRET, { method: 'POST', url, contentType: 'text/plain' }, body);
  const second = await call(bridge.port, {
    method: 'POST',
    path,
    headers: { ...headers, 'x-bridge-signature': fresh },
    body,
  });
  assert.equal(second.status, 204);
  await client.waitMessages(2);
  // A DELETE captured and replayed is refused the same way (before it finds the connection gone).
  const del = { 'x-bridge-signature': signCallback(SECRET, { method: 'DELETE', url }, new Uint8Array(0)) };
  assert.equal((await call(bridge.port, { method: 'DELETE', path, headers: del })).status, 204);
  const replayedDelete = await call(bridge.port, { method: 'DELETE', path, headers: del });
  assert.equal(replayedDelete.status, 401);
  assert.equal(JSON.parse(replayedDelete.text).code, 'REPLAYED');
  assert.equal((await client.closed).code, 1000);
  assert.deepEqual(
    client.messages.map((m) => m.text),
    ['once', 'once'],
  );
});
