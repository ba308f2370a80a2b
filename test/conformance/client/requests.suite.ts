/**
 * Client requests end to end over ws: payload encodings, the error mapping, and the rule that
 * every request settles exactly once, whatever happens to it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { binary, EMPTY_PAYLOAD, payloadText, utf8, utf16 } from '../../../protocol/payload.ts';
import { Client } from '../../../src/client/client.ts';
import {
  CanceledError,
  DisconnectedError,
  InternalError,
  InvalidArgumentError,
  ProtocolError,
  RequestError,
  TimeoutError,
} from '../../../src/errors.ts';
import type { Connection } from '../../../src/server/connection.ts';
import { transportUnderTest } from '../../transport-under-test.ts';
import { connectClient, delay, hex, recordingLogger, startServer, waitFor } from '../../helpers.ts';
import { abortedWithin, freePort, outcome, startServerOnPort } from './helpers.ts';

test('echo in the three encodings, empty payloads and name-only requests', async (t) => {
  const names: string[] = [];
  const { url } = await startServer(t, {
    onRequest: (_c, msg) => {
      names.push(msg.name);
      return msg.payload;
    },
  });
  const client = await connectClient(t, url);
  for (const [payload, encoding] of [
    [utf8('héllo wörld'), 'utf8'],
    [utf16('surrogates 😀 kept'), 'utf16'],
    [binary(new Uint8Array([0, 1, 2, 254, 255])), 'binary'],
    [EMPTY_PAYLOAD, 'binary'],
    [utf8(''), 'utf8'],
    [utf16(''), 'utf16'],
  ] as const) {
    const reply = await client.request('echo', payload);
    assert.equal(reply.encoding, encoding);
    assert.equal(hex(reply.data), hex(payload.data));
  }
  // Odd-length names put the UTF-16 payload behind a padding byte; the server must still see it.
  const reply = await client.request('odd', utf16('pad'));
  assert.equal(payloadText(reply), 'pad');
  assert.equal(names.at(-1), 'odd');
  // A request without a name but with a payload is legal.
  assert.equal(payloadText(await client.request('', utf8('anon'))), 'anon');
  assert.equal(names.at(-1), '');
});

test('handler results: string, bytes, nothing; RequestError and other failures', async (t) => {
  const { url, logger } = await startServer(t, {
    onRequest: (_c, msg) => {
      switch (msg.name) {
        case 'string':
          return 'text';
        case 'bytes':
          return new Uint8Array([9, 8]);
        case 'nothing':
          return undefined;
        case 'request-error':
          throw new RequestError('BAD_INPUT', 'ünïcode message');
        case 'crash':
          throw new Error('database password is hunter2');
        default:
          return Promise.reject(new TypeError('async crash'));
      }
    },
  });
  const client = await connectClient(t, url);
  const text = await client.request('string', EMPTY_PAYLOAD);
  assert.deepEqual([text.encoding, payloadText(text)], ['utf8', 'text']);
  const bytes = await client.request('bytes', EMPTY_PAYLOAD);
  assert.deepEqual([bytes.encoding, hex(bytes.data)], ['binary', '0908']);
  const nothing = await client.request('nothing', utf8('x'));
  assert.equal(nothing.data.length, 0);

  const error = await outcome(client.request('request-error', utf8('x')));
  assert.ok(error.error instanceof RequestError, String(error.error));
  assert.equal(error.error.code, 'BAD_INPUT');
  assert.equal(error.error.message, 'ünïcode message');

  for (const name of ['crash', 'async']) {
    const crash = await outcome(client.request(name, utf8('x')));
    assert.ok(crash.error instanceof InternalError, String(crash.error));
    assert.doesNotMatch(crash.error.message, /hunter2|async crash/);
  }
  assert.equal(logger.entries.filter((e) => e.level === 'error').length, 2, 'both failures logged on the server');
});

test('what cannot be sent is refused locally, and the connection stays usable', async (t) => {
  const { url } = await startServer(t, { onRequest: (_c, msg) => msg.payload });
  const client = await connectClient(t, url);
  // No name and no payload: illegal for requests.
  await assert.rejects(client.request('', EMPTY_PAYLOAD), ProtocolError);
  // Names are at most 255 bytes of printable ASCII.
  await assert.rejects(client.request('x'.repeat(256), utf8('x')), ProtocolError);
  await assert.rejects(client.request('nön-ascii', utf8('x')), ProtocolError);
  assert.equal(payloadText(await client.request('echo', utf8('fine'))), 'fine');
  assert.throws(() => new Client('http://127.0.0.1/'), InvalidArgumentError);
  assert.throws(() => new Client('ws://127.0.0.1/', { requestTimeout: -1 }), InvalidArgumentError);
});

test('a request timeout a timer cannot honour is refused, connected or waiting, on both ends', async (t) => {
  let conn: Connection | undefined;
  const { url } = await startServer(t, {
    onRequest: (_c, msg) => msg.payload,
    onClientConnected: (c) => {
      conn = c;
    },
  });
  const client = await connectClient(t, url);
  // Past 2^31 - 1 ms Node fires a timer at once: such a timeout would time out immediately.
  for (const timeout of [2 ** 31, -1, 1.5, Number.NaN]) {
    await assert.rejects(client.request('echo', utf8('x'), { timeout }), InvalidArgumentError);
  }
  assert.ok(conn !== undefined && (await conn.negotiated()), 'a v2.1 client');
  await assert.rejects(conn!.request('echo', utf8('x'), { timeout: 2 ** 31 }), InvalidArgumentError);
  assert.equal(payloadText(await client.request('echo', utf8('fine'), { timeout: 2 ** 31 - 1 })), 'fine');
  // Waiting for a connection: refused as well, not queued.
  const idle = new Client(`ws://127.0.0.1:${await freePort()}/`, {
    transport: transportUnderTest().client(),
    autoConnect: false,
  });
  t.after(() => idle.close());
  await assert.rejects(idle.request('echo', utf8('x'), { timeout: 2 ** 31 }), InvalidArgumentError);
});

test('every pending request settles exactly once, with mixed outcomes', async (t) => {
  const N = 300;
  let conn: Connection | undefined;
  const { url } = await startServer(t, {
    concurrency: 1_024,
    onClientConnected: (c) => {
      conn = c;
    },
    onRequest: async (_c, msg, ctx) => {
      const kind = msg.name.split('-')[0];
      switch (kind) {
        case 'ok':
          await delay(Number(payloadText(msg.payload)) % 20);
          return msg.payload;
        case 'error':
          throw new RequestError('E', 'expected');
        case 'crash':
          throw new Error('crash');
        default:
          // 'slow', 'cancel', 'hang': wait for the cancel or the connection drop.
          await abortedWithin(ctx.signal, 3_000);
          return 'late';
      }
    },
  });
  const client = await connectClient(t, url);
  const kinds = ['ok', 'error', 'crash', 'slow', 'cancel', 'hang'] as const;
  const settlements = new Map<number, string[]>();
  const controllers: AbortController[] = [];
  const expected: Record<(typeof kinds)[number], new (...args: never[]) => Error | object> = {
    ok: Object,
    error: RequestError,
    crash: InternalError,
    slow: TimeoutError,
    cancel: CanceledError,
    hang: DisconnectedError,
  };
  const sent = Array.from({ length: N }, (_, i) => {
    const kind = kinds[i % kinds.length]!;
    const controller = new AbortController();
    if (kind === 'cancel') controllers.push(controller);
    const promise = client.request(`${kind}-${i}`, utf8(String(i)), {
      timeout: kind === 'slow' ? 50 + (i % 50) : 0,
      signal: controller.signal,
    });
    settlements.set(i, []);
    promise.then(
      () => settlements.get(i)!.push('resolved'),
      (error: unknown) => settlements.get(i)!.push((error as Error).name),
    );
    return { kind, promise };
  });

  await delay(30);
  for (const controller of controllers) controller.abort();
  // Everything but the hanging requests settles on its own.
  const hanging = sent.filter((s) => s.kind === 'hang').length;
  await waitFor(
    () => [...settlements.values()].filter((s) => s.length > 0).length === N - hanging,
    2_000,
    'all but the hanging requests to settle',
  );
  conn!.terminate();
  await waitFor(() => [...settlements.values()].every((s) => s.length > 0), 1_000, 'every request to settle');
  // Late replies, cancels and the close must not settle anything twice.
  await delay(100);

  const results = await Promise.all(sent.map((s) => outcome(s.promise)));
  for (const [i, { kind }] of sent.entries()) {
    assert.equal(settlements.get(i)!.length, 1, `request ${i} settled ${settlements.get(i)!.length} times`);
    const result = results[i]!;
    if (kind === 'ok') {
      assert.equal(result.ok, true, `request ${i}: ${String(result.error)}`);
      assert.equal(payloadText(result.value!), String(i));
    } else {
      assert.ok(result.error instanceof expected[kind], `request ${i} (${kind}): ${String(result.error)}`);
    }
  }
});

test('requests waiting for the connection settle exactly once too (connect, timeout, abort, close)', async (t) => {
  const port = await freePort();
  const client = new Client(`ws://127.0.0.1:${port}/`, {
    transport: transportUnderTest().client(),
    logger: recordingLogger(),
    reconnect: { delay: () => 30 },
  });
  t.after(() => client.close());
  const counts: number[] = [];
  const track = (i: number, promise: Promise<unknown>) => {
    counts[i] = 0;
    return outcome(
      promise.finally(() => {
        counts[i]!++;
      }),
    );
  };
  const controller = new AbortController();
  const waiting = [
    track(0, client.request('echo', utf8('a'), { timeout: 2_000 })),
    track(1, client.request('echo', utf8('b'), { timeout: 60 })),
    track(2, client.request('echo', utf8('c'), { timeout: 2_000, signal: controller.signal })),
    track(3, client.request('echo', utf8('d'), { timeout: 0 })),
  ];
  await delay(100);
  controller.abort();
  await startServerOnPort(t, port, { onRequest: (_c, msg) => msg.payload });
  const [a, b, c, d] = await Promise.all(waiting);
  assert.equal(payloadText(a!.value as ReturnType<typeof utf8>), 'a');
  assert.ok(b!.error instanceof TimeoutError, String(b!.error));
  assert.ok(c!.error instanceof CanceledError, String(c!.error));
  assert.equal(payloadText(d!.value as ReturnType<typeof utf8>), 'd');
  await client.close();
  await delay(20);
  assert.deepEqual(counts, [1, 1, 1, 1]);
});
