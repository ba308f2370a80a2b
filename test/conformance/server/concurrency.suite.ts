/**
 * Handlers running at once per connection: the default of 32, strictly in order with 1, a
 * per-connection value from beforeUpgrade, and nothing dropped on the way.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { payloadText, utf8 } from '../../../protocol/payload.ts';
import { connectClient, delay, gate, hex, rawPeer, startServer, waitFor } from '../../helpers.ts';
import { bytes, id, takeAcceptConf, within } from './wire.ts';

/** Counts handlers running at once; each waits on `door` before it returns. */
function gatedHandler() {
  const door = gate();
  const stats = { active: 0, max: 0, started: 0, finished: 0 };
  const onRequest = async (_conn: unknown, message: { name: string }) => {
    stats.started++;
    stats.active++;
    stats.max = Math.max(stats.max, stats.active);
    await door.wait;
    stats.active--;
    stats.finished++;
    return message.name;
  };
  return { door, stats, onRequest };
}

test('default concurrency 32: 40 gated requests, exactly 32 run, the rest wait, all answered', async (t) => {
  const { door, stats, onRequest } = gatedHandler();
  const { url } = await startServer(t, { onRequest });
  t.after(() => door.open());
  const client = await connectClient(t, url);
  const replies = Array.from({ length: 40 }, (_, i) => client.request(`r${i}`, utf8('')));
  await waitFor(() => stats.active === 32, 2_000, '32 handlers running');
  // Give the 8 others every chance to start if the limit were not enforced.
  await delay(100);
  assert.equal(stats.active, 32);
  assert.equal(stats.started, 32);
  door.open();
  const payloads = await within(Promise.all(replies), 2_000, 'all 40 replies');
  assert.deepEqual(
    payloads.map(payloadText),
    Array.from({ length: 40 }, (_, i) => `r${i}`),
  );
  assert.equal(stats.max, 32);
  assert.equal(stats.finished, 40);
});

test('concurrency 1 runs handlers strictly in order, replies included', async (t) => {
  const events: string[] = [];
  const delays = [40, 5, 25, 0, 15, 30, 1, 10];
  const { url } = await startServer(t, {
    concurrency: 1,
    onRequest: async (_conn, message) => {
      const i = Number(message.name);
      events.push(`start ${i}`);
      if (delays[i]! > 0) await delay(delays[i]!);
      events.push(`end ${i}`);
      return message.name;
    },
  });
  // A raw peer sees the order replies are written in.
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  for (let i = 0; i < delays.length; i++) peer.send(bytes(0x7f, id(i), 0x01, String(i)));
  const order: string[] = [];
  for (let i = 0; i < delays.length; i++) order.push(hex((await peer.next()).subarray(1, 9)));
  assert.deepEqual(
    order,
    delays.map((_, i) => hex(id(i))),
  );
  assert.deepEqual(
    events,
    delays.flatMap((_, i) => [`start ${i}`, `end ${i}`]),
  );
});

test('concurrency 1 keeps signals and requests in one order', async (t) => {
  const events: string[] = [];
  const { url } = await startServer(t, {
    concurrency: 1,
    onRequest: async (_conn, message) => {
      events.push(`req ${message.name}`);
      await delay(20);
      return '';
    },
    onSignal: async (_conn, message) => {
      events.push(`sig ${message.name}`);
      await delay(5);
    },
  });
  const client = await connectClient(t, url);
  const replies = [client.request('a', utf8(''))];
  client.signal('b', utf8(''));
  replies.push(client.request('c', utf8('')));
  client.signal('d', utf8(''));
  await within(Promise.all(replies), 2_000, 'replies');
  await waitFor(() => events.length === 4, 2_000, 'all handlers');
  assert.deepEqual(events, ['req a', 'sig b', 'req c', 'sig d']);
});

test('beforeUpgrade sets the concurrency of one connection; others keep the default', async (t) => {
  const perConnection = new Map<string, ReturnType<typeof gatedHandler>>();
  perConnection.set('/two', gatedHandler());
  perConnection.set('/default', gatedHandler());
  const { url } = await startServer(t, {
    beforeUpgrade: (request) => (request.query === 'limit=2' ? { accept: true, concurrency: 2 } : true),
    onRequest: (conn, message) =>
      perConnection.get(conn.handshake.query === 'limit=2' ? '/two' : '/default')!.onRequest(conn, message),
  });
  t.after(() => {
    for (const h of perConnection.values()) h.door.open();
  });
  const two = perConnection.get('/two')!;
  const other = perConnection.get('/default')!;
  const limited = await connectClient(t, `${url}?limit=2`);
  const plain = await connectClient(t, url);
  const limitedReplies = Array.from({ length: 6 }, (_, i) => limited.request(String(i), utf8('')));
  const plainReplies = Array.from({ length: 6 }, (_, i) => plain.request(String(i), utf8('')));
  await waitFor(() => two.stats.active === 2 && other.stats.active === 6, 2_000, 'handlers running');
  await delay(80);
  assert.equal(two.stats.active, 2);
  assert.equal(two.stats.started, 2);
  assert.equal(other.stats.active, 6);
  two.door.open();
  other.door.open();
  const all = await within(Promise.all([...limitedReplies, ...plainReplies]), 2_000, 'replies');
  assert.equal(all.length, 12);
  assert.equal(two.stats.max, 2);
  assert.equal(two.stats.finished, 6);
});

test('an invalid concurrency from beforeUpgrade falls back to the default and is logged', async (t) => {
  const { door, stats, onRequest } = gatedHandler();
  t.after(() => door.open());
  const { url, logger } = await startServer(t, {
    concurrency: 3,
    beforeUpgrade: () => ({ accept: true, concurrency: 0 }),
    onRequest,
  });
  const client = await connectClient(t, url);
  const replies = Array.from({ length: 5 }, (_, i) => client.request(String(i), utf8('')));
  await waitFor(() => stats.active === 3, 2_000, '3 handlers running');
  await delay(50);
  assert.equal(stats.started, 3);
  door.open();
  await within(Promise.all(replies), 2_000, 'replies');
  assert.ok(logger.entries.some((e) => e.level === 'error' && /concurrency/.test(e.message)));
});

test('nothing is dropped: 300 requests with varying delays at concurrency 4 all get their own reply', async (t) => {
  const { url } = await startServer(t, {
    concurrency: 4,
    onRequest: async (_conn, message) => {
      const n = Number(payloadText(message.payload));
      if (n % 3 === 0) await delay(n % 7);
      return utf8(`${message.name}:${n * 2}`);
    },
  });
  const client = await connectClient(t, url);
  const replies = Array.from({ length: 300 }, (_, i) => client.request(`q${i}`, utf8(String(i))));
  const payloads = await within(Promise.all(replies), 2_500, '300 replies');
  payloads.forEach((payload, i) => {
    assert.equal(payloadText(payload), `q${i}:${i * 2}`);
  });
});

test('nothing is dropped over a raw peer: one reply per id, even past the concurrency limit', async (t) => {
  const { url } = await startServer(t, {
    concurrency: 2,
    onRequest: async (_conn, message) => {
      await delay(Number(message.name) % 4);
      return undefined;
    },
  });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  const count = 100;
  for (let i = 0; i < count; i++) peer.send(bytes(0x7f, id(i), 0x01, String(i % 10)));
  const seen = new Set<string>();
  for (let i = 0; i < count; i++) {
    const reply = await peer.next();
    assert.equal(reply.length, 9);
    assert.equal(reply[0], 0xbf);
    seen.add(hex(reply.subarray(1, 9)));
  }
  assert.equal(seen.size, count);
  await delay(50);
  assert.equal(peer.messages.length, count + 1, 'no extra replies');
});

/**
 * Handlers that run until their request's signal fires, counting the aborts, and one (`quick`)
 * that answers at once. Ids are the peer's to choose: it may send another request with the id of
 * one still running.
 */
function abortableHandlers() {
  const stats = { started: 0, aborted: 0 };
  const onRequest = (_conn: unknown, message: { name: string }, ctx: { signal: AbortSignal }) => {
    if (message.name === 'quick') return 'done';
    stats.started++;
    return new Promise<undefined>((resolve) => {
      ctx.signal.addEventListener('abort', () => {
        stats.aborted++;
        resolve(undefined);
      });
    });
  };
  return { stats, onRequest };
}

test('requests sharing an id: every one still running is aborted when the connection closes, whichever ended first', async (t) => {
  const { stats, onRequest } = abortableHandlers();
  const { url, server } = await startServer(t, { onRequest });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x7f, id(1), 0x04, 'wait'));
  peer.send(bytes(0x7f, id(1), 0x04, 'wait'));
  await waitFor(() => stats.started === 2, 2_000, 'two handlers running');
  // The newest with the id ends first: the others must still be found.
  peer.send(bytes(0x7f, id(1), 0x05, 'quick'));
  const reply = await peer.next();
  assert.equal(hex(reply), `c0${hex(id(1))}646f6e65`);
  peer.ws.close();
  await waitFor(() => server.connections.size === 0, 2_000, 'the connection gone');
  await waitFor(() => stats.aborted === 2, 2_000, 'both waiting handlers aborted');
});

test('requests sharing an id: a cancel of the id reaches every one running, and none is answered', async (t) => {
  const { stats, onRequest } = abortableHandlers();
  const { url } = await startServer(t, { onRequest });
  const peer = await rawPeer(t, url);
  await takeAcceptConf(peer);
  peer.send(bytes(0x22, 0x01));
  peer.send(bytes(0x7f, id(7), 0x04, 'wait'));
  peer.send(bytes(0x7f, id(7), 0x04, 'wait'));
  await waitFor(() => stats.started === 2, 2_000, 'two handlers running');
  peer.send(bytes(0x23, id(7)));
  await waitFor(() => stats.aborted === 2, 2_000, 'both handlers aborted');
  // A later request's reply is the next message: the canceled ones sent nothing.
  peer.send(bytes(0x7f, id(8), 0x05, 'quick'));
  assert.equal(hex(await peer.next()), `c0${hex(id(8))}646f6e65`);
});
