/**
 * beforeUpgrade: refusals with their HTTP status and body, a throwing hook, async decisions, and
 * what the hook and the connection see of the upgrade request.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { Client } from '../../../src/client/client.ts';
import { ConnectError } from '../../../src/errors.ts';
import type { Connection } from '../../../src/server/connection.ts';
import type { UpgradeRequest } from '../../../transports/types.ts';
import { connectClient, delay, startServer } from '../../helpers.ts';
import { newestConnection, within } from './wire.ts';

interface Refusal {
  readonly status: number;
  readonly body: string;
  readonly contentType: string | undefined;
}

/** Opens a raw ws connection that must be refused; resolves with the HTTP response. */
function expectRefusal(url: string, headers: Record<string, string> = {}): Promise<Refusal> {
  const ws = new WebSocket(url, { headers });
  const result = new Promise<Refusal>((resolve, reject) => {
    ws.once('open', () => reject(new Error('the upgrade was accepted')));
    ws.on('error', () => {});
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.once('end', () => {
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks).toString('utf8'),
          contentType: res.headers['content-type'],
        });
        ws.terminate();
      });
    });
  });
  return within(result, 2_000, `a refusal from ${url}`).finally(() => ws.terminate());
}

test('beforeUpgrade returning false refuses with 403 and a non-empty body', async (t) => {
  const { url, server } = await startServer(t, { beforeUpgrade: () => false });
  const refusal = await expectRefusal(url);
  assert.equal(refusal.status, 403);
  assert.ok(refusal.body.length > 0);
  assert.match(refusal.contentType ?? '', /^text\/plain/);
  assert.equal(server.connections.size, 0);
});

test('a Client refused with 403 fails with ConnectError carrying the status', async (t) => {
  const { url } = await startServer(t, { beforeUpgrade: () => false });
  const client = await connectClient(t, url, { autoConnect: false });
  await assert.rejects(within(client.connect(), 2_000, 'connect'), (error: unknown) => {
    assert.ok(error instanceof ConnectError);
    assert.equal(error.status, 403);
    return true;
  });
});

test('{ accept: false, status: 401, reason } refuses with that status and body', async (t) => {
  const { url } = await startServer(t, {
    beforeUpgrade: () => ({ accept: false, status: 401, reason: 'bad token' }),
  });
  const refusal = await expectRefusal(url);
  assert.equal(refusal.status, 401);
  assert.equal(refusal.body, 'bad token');
});

test('{ accept: false } without a status refuses with 403', async (t) => {
  const { url } = await startServer(t, { beforeUpgrade: () => ({ accept: false }) });
  const refusal = await expectRefusal(url);
  assert.equal(refusal.status, 403);
  assert.ok(refusal.body.length > 0);
});

test('a refusal with a status outside 400..599 becomes 500 and is logged', async (t) => {
  const { url, logger } = await startServer(t, { beforeUpgrade: () => ({ accept: false, status: 200 }) });
  const refusal = await expectRefusal(url);
  assert.equal(refusal.status, 500);
  assert.ok(logger.entries.some((e) => e.level === 'error'));
});

test('a throwing beforeUpgrade refuses with 500 and is logged', async (t) => {
  const { url, logger } = await startServer(t, {
    beforeUpgrade: () => {
      throw new Error('auth backend down');
    },
  });
  const refusal = await expectRefusal(url);
  assert.equal(refusal.status, 500);
  assert.ok(!refusal.body.includes('auth backend down'), 'the error text must not leak');
  const logged = logger.entries.filter((e) => e.level === 'error');
  assert.equal(logged.length, 1);
  assert.equal((logged[0]!.context!.error as Error).message, 'auth backend down');
});

test('a rejecting async beforeUpgrade refuses with 500 and is logged', async (t) => {
  const { url, logger } = await startServer(t, {
    beforeUpgrade: async () => {
      await delay(10);
      throw new Error('async failure');
    },
  });
  assert.equal((await expectRefusal(url)).status, 500);
  assert.equal(logger.entries.filter((e) => e.level === 'error').length, 1);
});

test('an async beforeUpgrade decides after a delay, per request', async (t) => {
  const { url } = await startServer(t, {
    beforeUpgrade: async (request) => {
      await delay(50);
      return request.headers['x-token'] === 'good';
    },
    onRequest: () => 'welcome',
  });
  const refusal = await expectRefusal(url, { 'x-token': 'bad' });
  assert.equal(refusal.status, 403);
  const client = await connectClient(t, url, { headers: { 'x-token': 'good' } });
  assert.equal(payloadText(await client.request('hi', utf8(''))), 'welcome');
});

test('info from beforeUpgrade is attached as conn.info', async (t) => {
  const info = { user: 'ann', roles: ['admin'] };
  const connected: Connection[] = [];
  const { url } = await startServer(t, {
    beforeUpgrade: async () => ({ accept: true, info }),
    onClientConnected: (conn) => {
      connected.push(conn);
    },
    onRequest: (conn) => JSON.stringify(conn.info),
  });
  const client = await connectClient(t, url);
  assert.deepEqual(JSON.parse(payloadText(await client.request('who', utf8('')))), info);
  assert.equal(connected.length, 1);
  assert.equal(connected[0]!.info, info);
});

test('conn.info is undefined when beforeUpgrade returns true or is absent', async (t) => {
  const { url, server } = await startServer(t, { beforeUpgrade: () => true });
  await connectClient(t, url);
  assert.equal((await newestConnection(server)).info, undefined);
});

test('headers, path and query are visible to beforeUpgrade and as conn.handshake', async (t) => {
  const seen: UpgradeRequest[] = [];
  const { url, server } = await startServer(t, {
    path: '/ws',
    beforeUpgrade: (request) => {
      seen.push(request);
      return true;
    },
  });
  await connectClient(t, `${url}?token=abc&x=1`, { headers: { 'X-Token': 'secret', 'X-Multi': 'a' } });
  const conn = await newestConnection(server);
  assert.equal(seen.length, 1);
  const request = seen[0]!;
  assert.equal(conn.handshake, request);
  assert.equal(request.path, '/ws');
  assert.equal(request.query, 'token=abc&x=1');
  assert.equal(request.url, '/ws?token=abc&x=1');
  assert.equal(request.headers['x-token'], 'secret', 'header names are lower-case');
  assert.equal(request.headers['x-multi'], 'a');
  assert.match(request.headers['sec-websocket-key'] ?? '', /^[A-Za-z0-9+/=]+$/);
  assert.equal(request.remoteAddress, '127.0.0.1');
  assert.equal(conn.remoteAddress, '127.0.0.1');
  // Peer-chosen header names cannot reach Object.prototype.
  assert.equal(Object.getPrototypeOf(request.headers), null);
});

test('a path other than the transport path is answered 404 and never reaches beforeUpgrade', async (t) => {
  let calls = 0;
  const { port } = await startServer(t, {
    path: '/ws',
    beforeUpgrade: () => {
      calls++;
      return true;
    },
  });
  const refusal = await expectRefusal(`ws://127.0.0.1:${port}/other`);
  assert.equal(refusal.status, 404);
  assert.equal(calls, 0);
});

test('a refused upgrade does not disturb an accepted connection on the same server', async (t) => {
  const { url } = await startServer(t, {
    beforeUpgrade: (request) => request.query !== 'deny',
    onRequest: () => 'ok',
  });
  const client = await connectClient(t, url);
  assert.equal((await expectRefusal(`${url}?deny`)).status, 403);
  assert.equal(payloadText(await client.request('x', utf8(''))), 'ok');
});

test("WebSocket subprotocols: the client's offer, beforeUpgrade's choice, conn.protocol and client.protocol", async (t) => {
  const offers: Array<string | undefined> = [];
  const { url, server } = await startServer(t, {
    beforeUpgrade: (request) => {
      const offer = request.headers['sec-websocket-protocol'];
      offers.push(offer);
      if (request.query === 'default') return true;
      return offer?.includes('app.1') === true ? { accept: true, protocol: 'app.1' } : { accept: true, protocol: '' };
    },
  });
  const chosen = await connectClient(t, url, { protocols: ['app.2', 'app.1'] });
  assert.deepEqual(
    offers[0]?.split(',').map((p) => p.trim()),
    ['app.2', 'app.1'],
    'offered most preferred first',
  );
  assert.equal(chosen.protocol, 'app.1', "the server's choice, not the first offered");
  assert.equal((await newestConnection(server)).protocol, 'app.1');

  const byDefault = await connectClient(t, `${url}?default`, { protocols: ['app.2', 'app.1'] });
  assert.equal(byDefault.protocol, 'app.2', 'without a choice: the first offered');

  const none = await connectClient(t, url);
  assert.equal(offers[2], undefined, 'nothing offered');
  assert.equal(none.protocol, '');
  await none.close();
  assert.equal(none.protocol, undefined, 'not connected');

  assert.throws(() => connectClientSync(url, ['a b']), /option protocols/);
  assert.throws(() => connectClientSync(url, ['x', 'x']), /option protocols/);
});

function connectClientSync(url: string, protocols: string[]): void {
  new Client(url, { autoConnect: false, protocols });
}

test('a refusal with headers: a JSON body with its Content-Type reaches ConnectError.body', async (t) => {
  const body = JSON.stringify({ code: 'TOO_OLD', supported: [2] });
  const { url } = await startServer(t, {
    beforeUpgrade: () => ({
      accept: false,
      status: 426,
      reason: body,
      headers: { 'content-type': 'application/json; charset=utf-8', 'retry-after': '60' },
    }),
  });
  const refusal = await expectRefusal(url);
  assert.equal(refusal.status, 426);
  assert.equal(refusal.body, body);
  assert.equal(refusal.contentType, 'application/json; charset=utf-8');
  const client = await connectClient(t, url, { autoConnect: false });
  await assert.rejects(within(client.connect(), 2_000, 'connect'), (error: unknown) => {
    assert.ok(error instanceof ConnectError);
    assert.equal(error.status, 426);
    assert.equal(error.body, body);
    return true;
  });
});
