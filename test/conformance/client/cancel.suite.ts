/**
 * Giving up on a request from the client (v2.1 CancelRequest, type 35): abort signals and
 * timeouts reject at once with typed errors, the server handler's signal fires, and a reply that
 * still arrives afterwards is ignored without a trace.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode } from '../../../protocol/decode.ts';
import { encodeReply } from '../../../protocol/encode.ts';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { CanceledError, TimeoutError } from '../../../src/errors.ts';
import { Cancellation } from '../../../src/peer/cancellation.ts';
import { connectClient, delay, hex, startServer, waitFor } from '../../helpers.ts';
import { abortedWithin, acceptConf, outcome, rawServer, sharedSignalBatches } from './helpers.ts';

/** A server whose 'slow' handler waits for its signal and records what it saw. */
async function slowServer(t: Parameters<typeof startServer>[0], protocolMinor: 0 | 1 = 1) {
  const seen = { started: 0, aborted: 0, reasons: [] as unknown[], finished: 0 };
  const { url, logger } = await startServer(t, {
    protocolMinor,
    onRequest: async (_conn, msg, ctx) => {
      if (msg.name !== 'slow') return msg.payload;
      seen.started++;
      const reason = await abortedWithin(ctx.signal, 400, 'no abort');
      if (reason !== 'no abort') {
        seen.aborted++;
        seen.reasons.push(reason);
      }
      seen.finished++;
      return 'late reply';
    },
  });
  return { url, seen, logger };
}

test('aborting a request rejects it with CanceledError at once and fires the handler signal', async (t) => {
  const { url, seen } = await slowServer(t);
  const client = await connectClient(t, url);
  const controller = new AbortController();
  const pending = client.request('slow', utf8('x'), { timeout: 5_000, signal: controller.signal });
  const settled = outcome(pending);
  await waitFor(() => seen.started === 1, 1_000, 'the handler to start');

  const abortedAt = performance.now();
  controller.abort(new Error('user gave up'));
  const result = await settled;
  assert.ok(result.error instanceof CanceledError, String(result.error));
  assert.ok(performance.now() - abortedAt < 20, 'rejected synchronously with the abort');
  assert.equal((result.error.cause as Error).message, 'user gave up');

  await waitFor(() => seen.aborted === 1, 1_000, 'the server handler signal to fire');
  assert.ok(seen.reasons[0] instanceof CanceledError, String(seen.reasons[0]));
  // The connection is fine afterwards, and the canceled request left nothing behind.
  assert.equal(payloadText(await client.request('echo', utf8('still ok'))), 'still ok');
});

test('a Cancellation works as the signal, and the handler can listen on its cancellation instead of its signal', async (t) => {
  const seen = { started: 0, reason: undefined as unknown, signalMade: false };
  const { url } = await startServer(t, {
    onRequest: async (_conn, msg, ctx) => {
      if (msg.name !== 'slow') return msg.payload;
      seen.started++;
      seen.reason = await abortedWithin(ctx.cancellation, 1_000, 'no abort');
      return 'late reply';
    },
  });
  const client = await connectClient(t, url);
  const cancellation = new Cancellation();
  const settled = outcome(client.request('slow', utf8('x'), { timeout: 5_000, signal: cancellation }));
  await waitFor(() => seen.started === 1, 1_000, 'the handler to start');
  cancellation.abort(new Error('user gave up'));
  const result = await settled;
  assert.ok(result.error instanceof CanceledError, String(result.error));
  assert.equal((result.error.cause as Error).message, 'user gave up');
  await waitFor(() => seen.reason !== undefined, 1_000, 'the handler cancellation to fire');
  assert.ok(seen.reason instanceof CanceledError, String(seen.reason));
  // An aborted Cancellation fails a request at once, as an aborted AbortSignal does.
  await assert.rejects(client.request('slow', utf8('x'), { signal: cancellation }), CanceledError);
  assert.equal(payloadText(await client.request('echo', utf8('still ok'))), 'still ok');
});

test('one AbortSignal shared by 50 requests: one listener on it, an abort rejects them all, none left after', async (t) => {
  const { url } = await slowServer(t);
  const client = await connectClient(t, url);
  await sharedSignalBatches(t, (name, payload, signal) => client.request(name, payload, { timeout: 5_000, signal }));
});

test('an already aborted signal fails the request without sending it', async (t) => {
  const { url, seen } = await slowServer(t);
  const client = await connectClient(t, url);
  await assert.rejects(client.request('slow', utf8('x'), { signal: AbortSignal.abort() }), CanceledError);
  await delay(50);
  assert.equal(seen.started, 0);
});

test('a request timeout rejects with TimeoutError and cancels the handler', async (t) => {
  const { url, seen } = await slowServer(t);
  const client = await connectClient(t, url);
  const result = await outcome(client.request('slow', utf8('x'), { timeout: 100 }));
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  assert.ok(result.ms >= 95 && result.ms < 400, `timed out after ${Math.round(result.ms)} ms`);
  await waitFor(() => seen.aborted === 1, 1_000, 'the server handler signal to fire');
  assert.ok(seen.reasons[0] instanceof CanceledError);
});

test('the requestTimeout option is the default timeout', async (t) => {
  const { url, seen } = await slowServer(t);
  const client = await connectClient(t, url, { requestTimeout: 80 });
  const result = await outcome(client.request('slow', utf8('x')));
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  assert.ok(result.ms >= 75 && result.ms < 400);
  await waitFor(() => seen.aborted === 1, 1_000, 'the cancel');
});

test('toward a v2.0 server no cancel is sent; its late reply is ignored', async (t) => {
  const { url, seen, logger } = await slowServer(t, 0);
  const client = await connectClient(t, url);
  assert.equal(client.supportsV21, false);
  const disconnects: number[] = [];
  client.on('disconnect', ({ code }) => disconnects.push(code));
  const result = await outcome(client.request('slow', utf8('x'), { timeout: 100 }));
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  // The handler was not told: it runs to its end and its reply reaches a client that forgot it.
  await waitFor(() => seen.finished === 1, 1_000, 'the handler to finish');
  assert.equal(seen.aborted, 0, 'a v2.0 server got no cancel');
  await delay(30);
  assert.equal(payloadText(await client.request('echo', utf8('after'))), 'after');
  assert.deepEqual(disconnects, []);
  assert.deepEqual(
    logger.entries.filter((e) => e.level === 'error' || e.level === 'warn'),
    [],
  );
});

test('a reply arriving after the cancel is ignored (raw v2.1 server that answers anyway)', async (t) => {
  const received: string[] = [];
  const server = await rawServer(t, async (conn) => {
    conn.send(acceptConf({ minor: 1 }));
    assert.equal(hex(await conn.next()), '2201');
    for (;;) {
      const bytes = await conn.next(5_000);
      received.push(hex(bytes));
      const message = decode(bytes);
      if (message.kind === 'cancel') {
        // Answer the canceled request anyway, as the protocol allows.
        conn.send(encodeReply(message.id, utf8('too late')));
      } else if (message.kind === 'request' && message.name === 'echo') {
        conn.send(encodeReply(message.id, message.payload));
      }
    }
  });
  const client = await connectClient(t, server.url);
  const controller = new AbortController();
  const canceled = outcome(client.request('slow', utf8('x'), { signal: controller.signal }));
  await waitFor(() => received.length === 1, 1_000, 'the request at the raw server');
  controller.abort();
  assert.ok((await canceled).error instanceof CanceledError);
  await waitFor(() => received.length === 2, 1_000, 'the cancel at the raw server');
  // Type 35 and the request's own id.
  assert.equal(received[1], `23${received[0]!.slice(2, 18)}`);

  // The late reply (id 1) must not resolve the next request (id 2) or raise anything.
  await delay(50);
  assert.equal(payloadText(await client.request('echo', utf8('fresh'))), 'fresh');
  assert.equal(client.isConnected, true);
});

test('a cancel reaches a running handler while later requests wait for a slot (concurrency 1)', async (t) => {
  const started: string[] = [];
  const abortedNames: string[] = [];
  const { url } = await startServer(t, {
    concurrency: 1,
    onRequest: async (_conn, msg, ctx) => {
      started.push(msg.name);
      const reason = await abortedWithin(ctx.signal, 1_000, 'no abort');
      if (reason !== 'no abort') abortedNames.push(msg.name);
      return 'done';
    },
  });
  const client = await connectClient(t, url);
  const first = new AbortController();
  const a = outcome(client.request('a', utf8('x'), { signal: first.signal }));
  await waitFor(() => started.length === 1, 1_000, 'the first handler');
  const b = outcome(client.request('b', utf8('x'), { timeout: 3_000 }));
  await delay(30);
  first.abort();
  assert.ok((await a).error instanceof CanceledError);
  // The server stops reading while 'b' waits for the one slot; the cancel must still get through.
  await waitFor(() => abortedNames.includes('a'), 500, "the cancel of 'a' to reach its handler");
  const result = await b;
  assert.equal(result.ok, true, String(result.error));
});
