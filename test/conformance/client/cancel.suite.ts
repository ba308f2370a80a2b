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
import { connectClient, delay, gate, hex, startServer, waitFor } from '../../helpers.ts';
import { aborted, acceptConf, outcome, rawServer, settledAtOnce, sharedSignalBatches } from './helpers.ts';

/**
 * A server whose 'slow' handler runs until its signal fires or the test calls `release()`, and
 * records what it saw. No timer ends it: a handler that gave up after a fixed time (it was 400 ms)
 * raced the cancel it waits for, and lost whenever the loaded machine stalled the test process
 * for that long; and a test that needs the late reply says when it may come. A handler still
 * waiting at the end is aborted by the server's shutdown.
 */
async function slowServer(t: Parameters<typeof startServer>[0], protocolMinor: 0 | 1 = 1) {
  const seen = { started: 0, aborted: 0, reasons: [] as unknown[], finished: 0 };
  const released = gate();
  const { url, logger } = await startServer(t, {
    protocolMinor,
    onRequest: async (_conn, msg, ctx) => {
      if (msg.name !== 'slow') return msg.payload;
      seen.started++;
      const reason = await Promise.race([aborted(ctx.signal), released.wait.then(() => 'released')]);
      if (reason !== 'released') {
        seen.aborted++;
        seen.reasons.push(reason);
      }
      seen.finished++;
      return 'late reply';
    },
  });
  return { url, seen, logger, release: released.open };
}

test('aborting a request rejects it with CanceledError at once and fires the handler signal', async (t) => {
  const { url, seen } = await slowServer(t);
  const client = await connectClient(t, url);
  const controller = new AbortController();
  const pending = client.request('slow', utf8('x'), { timeout: 5_000, signal: controller.signal });
  const settled = outcome(pending);
  await waitFor(() => seen.started === 1, 10_000, 'the handler to start');

  controller.abort(new Error('user gave up'));
  const result = await settledAtOnce(settled);
  assert.ok(result !== undefined, 'rejected synchronously with the abort');
  assert.ok(result.error instanceof CanceledError, String(result.error));
  assert.equal((result.error.cause as Error).message, 'user gave up');

  await waitFor(() => seen.aborted === 1, 10_000, 'the server handler signal to fire');
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
      seen.reason = await aborted(ctx.cancellation);
      return 'late reply';
    },
  });
  const client = await connectClient(t, url);
  const cancellation = new Cancellation();
  const settled = outcome(client.request('slow', utf8('x'), { timeout: 5_000, signal: cancellation }));
  await waitFor(() => seen.started === 1, 10_000, 'the handler to start');
  cancellation.abort(new Error('user gave up'));
  const result = await settled;
  assert.ok(result.error instanceof CanceledError, String(result.error));
  assert.equal((result.error.cause as Error).message, 'user gave up');
  await waitFor(() => seen.reason !== undefined, 10_000, 'the handler cancellation to fire');
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
  // The server handles one connection's requests in the order they were sent: once a later one
  // is answered, the aborted one would have started if it had been sent.
  assert.equal(payloadText(await client.request('echo', utf8('after'))), 'after');
  assert.equal(seen.started, 0);
});

test('a request timeout rejects with TimeoutError and cancels the handler', async (t) => {
  const { url, seen } = await slowServer(t);
  const client = await connectClient(t, url);
  const since = performance.now();
  const result = await outcome(client.request('slow', utf8('x'), { timeout: 100 }), since);
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  // Never early. How late is the machine's business: the handler runs until canceled, so only the
  // timeout (of 100 ms, says its message) can have ended the request.
  assert.ok(result.ms >= 99, `timed out after ${result.ms} ms`);
  assert.match(result.error.message, /within 100 ms/);
  await waitFor(() => seen.aborted === 1, 10_000, 'the server handler signal to fire');
  assert.ok(seen.reasons[0] instanceof CanceledError);
});

test('the requestTimeout option is the default timeout', async (t) => {
  const { url, seen } = await slowServer(t);
  const client = await connectClient(t, url, { requestTimeout: 80 });
  const since = performance.now();
  const result = await outcome(client.request('slow', utf8('x')), since);
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  assert.ok(result.ms >= 79, `timed out after ${result.ms} ms`);
  assert.match(result.error.message, /within 80 ms/);
  await waitFor(() => seen.aborted === 1, 10_000, 'the cancel');
});

test('toward a v2.0 server no cancel is sent; its late reply is ignored', async (t) => {
  const { url, seen, logger, release } = await slowServer(t, 0);
  const client = await connectClient(t, url);
  assert.equal(client.supportsV21, false);
  const disconnects: number[] = [];
  client.on('disconnect', ({ code }) => disconnects.push(code));
  const result = await outcome(client.request('slow', utf8('x'), { timeout: 100 }));
  assert.ok(result.error instanceof TimeoutError, String(result.error));
  // The handler was not told: it runs to its end, and only now, after the timeout, may it reply
  // (it used to end after 400 ms, which a stalled test process could see before its 1 s wait
  // for it was up, or not).
  await waitFor(() => seen.started === 1, 10_000, 'the handler to start');
  release();
  await waitFor(() => seen.finished === 1, 10_000, 'the handler to finish');
  assert.equal(seen.aborted, 0, 'a v2.0 server got no cancel');
  // Its reply reaches a client that forgot it: the server sent it before it read the next request
  // (no fixed sleep needed), so the client has read it, and ignored it, by the time that one is
  // answered.
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
  await waitFor(() => received.length === 1, 10_000, 'the request at the raw server');
  controller.abort();
  assert.ok((await canceled).error instanceof CanceledError);
  await waitFor(() => received.length === 2, 10_000, 'the cancel at the raw server');
  // Type 35 and the request's own id.
  assert.equal(received[1], `23${received[0]!.slice(2, 18)}`);

  // The late reply (id 1) must not resolve the next request (id 2) or raise anything. The raw
  // server sent it as it read the cancel, before the next request: the client reads it first.
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
      // 'a' holds the one slot until its cancel arrives (however long that takes); 'b' is quick.
      if (msg.name !== 'a') return 'done';
      await aborted(ctx.signal);
      abortedNames.push(msg.name);
      return 'done';
    },
  });
  const client = await connectClient(t, url);
  const first = new AbortController();
  const a = outcome(client.request('a', utf8('x'), { signal: first.signal }));
  await waitFor(() => started.length === 1, 10_000, 'the first handler');
  const b = outcome(client.request('b', utf8('x')));
  await delay(30);
  first.abort();
  assert.ok((await a).error instanceof CanceledError);
  // The server stops reading while 'b' waits for the one slot; the cancel must still get through.
  await waitFor(() => abortedNames.includes('a'), 10_000, "the cancel of 'a' to reach its handler");
  const result = await b;
  assert.equal(result.ok, true, String(result.error));
});
