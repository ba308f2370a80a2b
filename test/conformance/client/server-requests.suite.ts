/**
 * Requests from the server to the client (v2.1): conn.request() against a Client with
 * onRequest, the error mapping, timeouts and cancels in that direction, and the refusals toward
 * peers that speak only v2.0.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { binary, payloadText, utf8, utf16 } from '../../../protocol/payload.ts';
import type { Payload } from '../../../protocol/types.ts';
import type { ClientOptions } from '../../../src/client/client.ts';
import { CanceledError, InternalError, PeerUnsupportedError, RequestError, TimeoutError } from '../../../src/errors.ts';
import type { ServerOptions } from '../../../src/server/options.ts';
import type { Connection } from '../../../src/server/connection.ts';
import { connectClient, delay, hex, rawPeer, startServer, waitFor } from '../../helpers.ts';
import { aborted, outcome, settledAtOnce, sharedSignalBatches } from './helpers.ts';

/** A server and one client; resolves with the server side of that client's connection. */
async function pair(
  t: TestContext,
  clientOptions: ClientOptions,
  serverOptions: Omit<ServerOptions, 'transport'> = {},
  { waitV21 = true } = {},
) {
  let conn: Connection | undefined;
  const started = await startServer(t, {
    onRequest: (_c, msg) => msg.payload,
    ...serverOptions,
    onClientConnected: (c) => {
      conn = c;
    },
  });
  const client = await connectClient(t, started.url, clientOptions);
  await waitFor(() => conn !== undefined, 1_000, 'onClientConnected');
  // ClientConf travels after the AcceptConf: the server learns about v2.1 a moment later.
  if (waitV21) await waitFor(() => conn!.supportsRequests, 1_000, 'the ClientConf to arrive');
  return { ...started, client, conn: conn! };
}

test('conn.request() resolves with the client reply in all three encodings', async (t) => {
  const seen: string[] = [];
  const { conn, client } = await pair(t, {
    onRequest: (msg) => {
      seen.push(`${msg.name}:${msg.payload.encoding}:${payloadText(msg.payload)}`);
      // Answer in the encoding asked, with a transformed payload.
      const text = payloadText(msg.payload).toUpperCase();
      if (msg.payload.encoding === 'utf16') return utf16(text);
      if (msg.payload.encoding === 'binary') return new Uint8Array([...msg.payload.data].reverse());
      return text;
    },
  });
  assert.equal(client.supportsV21, true);
  assert.equal(conn.supportsRequests, true);

  const a = await conn.request('up', utf8('héllo'));
  assert.equal(a.encoding, 'utf8');
  assert.equal(payloadText(a), 'HÉLLO');

  const b = await conn.request('odd', utf16('wörld 😀'));
  assert.equal(b.encoding, 'utf16');
  assert.equal(payloadText(b), 'WÖRLD 😀');

  const c = await conn.request('bin', binary(new Uint8Array([1, 2, 3, 0, 255])));
  assert.equal(c.encoding, 'binary');
  assert.equal(hex(c.data), 'ff00030201');

  assert.deepEqual(seen, ['up:utf8:héllo', 'odd:utf16:wörld 😀', 'bin:binary:\u0001\u0002\u0003\u0000\ufffd']);
});

test('requests in both directions at once use separate id spaces', async (t) => {
  const { conn, client } = await pair(
    t,
    { onRequest: async (msg) => `client:${payloadText(msg.payload)}` },
    { onRequest: async (_c, msg) => `server:${payloadText(msg.payload)}` },
  );
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      i % 2 === 0 ? client.request('c2s', utf8(String(i))) : conn.request('s2c', utf8(String(i))),
    ),
  );
  assert.deepEqual(
    results.map(payloadText),
    Array.from({ length: 20 }, (_, i) => `${i % 2 === 0 ? 'server' : 'client'}:${i}`),
  );
});

test('a RequestError thrown by the client handler reaches the server with its code and message', async (t) => {
  const { conn } = await pair(t, {
    onRequest: () => {
      throw new RequestError('NOT_ALLOWED', 'the agent refuses — politely');
    },
  });
  const result = await outcome(conn.request('x', utf8('x')));
  assert.ok(result.error instanceof RequestError, String(result.error));
  assert.equal(result.error.code, 'NOT_ALLOWED');
  assert.equal(result.error.message, 'the agent refuses — politely');
});

test('any other failure of the client handler becomes InternalError, details kept on the client', async (t) => {
  const { conn, client } = await pair(t, {
    onRequest: async (msg) => {
      if (msg.name === 'sync') throw new TypeError('secret detail');
      await delay(1);
      throw new Error('secret detail');
    },
  });
  for (const name of ['sync', 'async']) {
    const result = await outcome(conn.request(name, utf8('x')));
    assert.ok(result.error instanceof InternalError, String(result.error));
    assert.doesNotMatch(result.error.message, /secret/);
  }
  assert.equal(client.isConnected, true);
});

test('a client without onRequest answers with an internal error', async (t) => {
  const { conn, client } = await pair(t, {});
  assert.equal(client.supportsV21, true);
  await assert.rejects(conn.request('x', utf8('x')), InternalError);
  assert.equal(client.isConnected, true);
});

test('conn.request() with a timeout: TimeoutError, and the client handler signal fires', async (t) => {
  let reason: unknown;
  let started = false;
  const { conn } = await pair(t, {
    onRequest: async (_msg, ctx) => {
      started = true;
      // Until the cancel: a fallback after 1 s raced it on a loaded machine.
      reason = await aborted(ctx.signal);
      return 'late';
    },
  });
  const since = performance.now();
  const result = await outcome(conn.request('slow', utf8('x'), { timeout: 100 }), since);
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  // Never early; how late is the loaded machine's business (it was "< 500 ms"). The handler runs
  // until canceled, so only the timeout (of 100 ms, says the message) can have ended the request.
  assert.ok(result.ms >= 99, `timed out after ${result.ms} ms`);
  assert.match(result.error.message, /within 100 ms/);
  assert.equal(started, true);
  await waitFor(() => reason !== undefined, 10_000, 'the client handler signal');
  assert.ok(reason instanceof CanceledError, String(reason));
});

test("conn.request() without a timeout times out after the server's requestTimeout; 0 waits", async (t) => {
  let release!: () => void;
  const held = new Promise<string>((resolve) => {
    release = () => resolve('late');
  });
  t.after(() => release());
  const { conn } = await pair(t, { onRequest: () => held }, { requestTimeout: 150 });
  const pending = conn.request('never', utf8('x'));
  const result = await outcome(
    Promise.race([
      pending,
      delay(3_000).then(() => {
        throw new Error('still pending after 3 s');
      }),
    ]),
  );
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  assert.match(result.error.message, /within 150 ms/);
  // An explicit timeout wins, 0 included (waits until the reply).
  const waiting = conn.request('held', utf8('x'), { timeout: 0 });
  await delay(300);
  release();
  assert.equal(payloadText(await waiting), 'late');
});

test('conn.request() with an AbortSignal: CanceledError, and the client handler signal fires', async (t) => {
  let reason: unknown;
  let started = false;
  const { conn } = await pair(t, {
    onRequest: async (msg, ctx) => {
      if (msg.name !== 'slow') return msg.payload;
      started = true;
      reason = await aborted(ctx.signal);
      return 'late';
    },
  });
  const controller = new AbortController();
  const pending = outcome(conn.request('slow', utf8('x'), { signal: controller.signal }));
  await waitFor(() => started, 10_000, 'the client handler to start');
  controller.abort();
  const result = await pending;
  assert.ok(result.error instanceof CanceledError, String(result.error));
  await waitFor(() => reason !== undefined, 10_000, 'the client handler signal');
  assert.ok(reason instanceof CanceledError, String(reason));
  // The connection carries on.
  assert.equal(payloadText(await conn.request('echo', utf8('ok'), { timeout: 1_000 })), 'ok');
});

test('conn.request() with one AbortSignal shared by 50 requests: one listener on it, none left after', async (t) => {
  const { conn } = await pair(t, {
    onRequest: async (msg, ctx) => {
      if (msg.name !== 'slow') return msg.payload;
      await aborted(ctx.signal);
      return 'late';
    },
  });
  await sharedSignalBatches(t, (name, payload, signal) => conn.request(name, payload, { timeout: 5_000, signal }));
});

test('toward a raw v2.0 peer (no ClientConf) conn.request() rejects at once and sends nothing', async (t) => {
  let conn: Connection | undefined;
  const { url } = await startServer(t, {
    onClientConnected: (c) => {
      conn = c;
    },
    onRequest: (_c, msg) => msg.payload,
  });
  const peer = await rawPeer(t, url);
  assert.equal(hex(await peer.next()), '17020160ea000000001000', 'AcceptConf v2.1');
  await waitFor(() => conn !== undefined, 1_000, 'onClientConnected');
  // A v2.0 request round trip: the server has read everything this peer sent.
  peer.send(new Uint8Array([0x7f, 1, 0, 0, 0, 0, 0, 0, 0, 4, ...new TextEncoder().encode('echohi')]));
  assert.equal(hex(await peer.next()), `bf0100000000000000${hex(new TextEncoder().encode('hi'))}`);

  const result = await settledAtOnce(outcome(conn!.request('x', utf8('x'), { timeout: 5_000 })));
  assert.ok(result !== undefined, 'rejected at once');
  assert.ok(result.error instanceof PeerUnsupportedError, String(result.error));
  await delay(50);
  assert.equal(peer.messages.length, 2, 'nothing was sent after the reply');
  assert.equal(conn!.isOpen, true);
});

test('toward a Client with protocolMinor: 0, conn.request() rejects with PeerUnsupportedError', async (t) => {
  const { conn, client } = await pair(t, { protocolMinor: 0 }, {}, { waitV21: false });
  // A round trip, so a ClientConf (if one had been sent) would have arrived by now.
  assert.equal(payloadText(await client.request('echo', utf8('v2.0'))), 'v2.0');
  assert.equal(client.supportsV21, false);
  assert.equal(conn.supportsRequests, false);
  await assert.rejects(conn.request('x', utf8('x')), PeerUnsupportedError);
});

test('a Client against a Server with protocolMinor: 0 works and sends no ClientConf', async (t) => {
  const { client, conn } = await pair(t, {}, { protocolMinor: 0 }, { waitV21: false });
  const disconnects: number[] = [];
  client.on('disconnect', ({ code }) => disconnects.push(code));
  assert.equal(client.serverInfo?.minor, 0);
  assert.equal(client.supportsV21, false);
  const replies: Payload[] = [];
  for (const payload of [utf8('a'), utf16('b'), binary(new Uint8Array([7]))]) {
    replies.push(await client.request('echo', payload));
  }
  assert.deepEqual(
    replies.map((p) => [p.encoding, hex(p.data)]),
    [
      ['utf8', '61'],
      ['utf16', '6200'],
      ['binary', '07'],
    ],
  );
  // A v2.0 server closes with 1002 on type 34; it did not, so none was sent.
  await delay(50);
  assert.equal(client.isConnected, true);
  assert.equal(conn.isOpen, true);
  assert.deepEqual(disconnects, []);
  await assert.rejects(conn.request('x', utf8('x')), PeerUnsupportedError);
});

test('a handler awaiting conn.request() is not blocked by a request queued behind it (concurrency 1)', async (t) => {
  const { client } = await pair(
    t,
    { onRequest: (msg) => `client saw ${payloadText(msg.payload)}` },
    {
      concurrency: 1,
      onRequest: async (conn, msg) => {
        if (msg.name !== 'ask-back') return msg.payload;
        // The client's reply arrives while 'second' waits for this connection's only slot.
        return conn.request('question', utf8('q'), { timeout: 1_000 });
      },
    },
  );
  const [first, second] = await Promise.all([
    outcome(client.request('ask-back', utf8('x'), { timeout: 2_000 })),
    outcome(client.request('second', utf8('y'), { timeout: 2_000 })),
  ]);
  assert.equal(first.ok, true, String(first.error));
  assert.equal(payloadText(first.value!), 'client saw q');
  assert.equal(second.ok, true, String(second.error));
});
