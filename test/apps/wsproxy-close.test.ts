/**
 * WebSocket proxy, closes: a side's close code and reason reach the other side (after every
 * message sent before it); a client that drops makes the upstream see 1001, an upstream that drops
 * makes the client see 1014; a message over `maxMessageSize` closes its sender 1009 and the other
 * side 1011; after any close both sides are gone and `linkCount` is back to 0.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import {
  type Closed,
  openClient,
  type Peer,
  type StartedProxy,
  startUpstream,
  startWsProxy,
  type Upstream,
  type UpstreamConnection,
  within,
} from '../fixtures/wsproxy-helpers.ts';
import { waitFor } from '../helpers.ts';

interface Linked {
  readonly client: Peer;
  readonly upstream: UpstreamConnection;
}

async function link(t: TestContext, proxy: StartedProxy, upstream: Upstream): Promise<Linked> {
  const client = await openClient(t, proxy.url);
  return { client, upstream: await upstream.connection(upstream.connections.length) };
}

/** Both sides closed, and the proxy forgot the link. */
async function gone(proxy: StartedProxy, { client, upstream }: Linked): Promise<[Closed, Closed]> {
  const both = await within(Promise.all([client.closed, upstream.closed]), 3000, 'both sides to close');
  await waitFor(() => proxy.proxy.linkCount === 0, 2000, 'linkCount 0');
  return both;
}

const CODES: ReadonlyArray<{ code?: number; reason?: string; expected: Closed }> = [
  { code: 1000, reason: 'done', expected: { code: 1000, reason: 'done' } },
  { code: 1001, reason: '', expected: { code: 1001, reason: '' } },
  { code: 3000, reason: 'app-defined', expected: { code: 3000, reason: 'app-defined' } },
  { code: 4999, reason: 'bye ✓', expected: { code: 4999, reason: 'bye ✓' } },
  { code: 1011, reason: 'oops', expected: { code: 1011, reason: 'oops' } },
  // No code in the close frame (1005 on the receiving end): the other side is told "going away".
  { expected: { code: 1001, reason: 'client went away' } },
];

test('a client close with code C (and reason) reaches the upstream as C, after the messages sent before it', async (t) => {
  const upstream = await startUpstream(t, { onConnection: () => {} });
  const proxy = await startWsProxy(t, { upstream: upstream.url });
  for (const { code, reason, expected } of CODES) {
    const linked = await link(t, proxy, upstream);
    linked.client.ws.send('one');
    linked.client.ws.send(Buffer.from('two'));
    if (code === undefined) linked.client.ws.close();
    else linked.client.ws.close(code, reason);
    const [, atUpstream] = await gone(proxy, linked);
    assert.deepEqual(atUpstream, expected, `client close ${code}`);
    assert.deepEqual(
      linked.upstream.messages.map((m) => m.text),
      ['one', 'two'],
    );
  }
});

test('an upstream close with code C (and reason) reaches the client as C, after the messages sent before it', async (t) => {
  const upstream = await startUpstream(t, { onConnection: () => {} });
  const proxy = await startWsProxy(t, { upstream: upstream.url });
  for (const { code, reason, expected } of CODES) {
    const linked = await link(t, proxy, upstream);
    linked.upstream.ws.send('one');
    linked.upstream.ws.send(Buffer.from('two'));
    if (code === undefined) linked.upstream.ws.close();
    else linked.upstream.ws.close(code, reason);
    const [atClient] = await gone(proxy, linked);
    assert.deepEqual(
      atClient,
      code === undefined ? { code: 1001, reason: 'upstream went away' } : expected,
      `upstream close ${code}`,
    );
    assert.deepEqual(
      linked.client.messages.map((m) => m.text),
      ['one', 'two'],
    );
  }
});

test('a client that drops its TCP connection: the upstream gets 1001', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = await startWsProxy(t, { upstream: upstream.url });
  const linked = await link(t, proxy, upstream);
  linked.client.ws.terminate();
  const [, atUpstream] = await gone(proxy, linked);
  assert.equal(atUpstream.code, 1001);
});

test('an upstream that drops its TCP connection: the client gets 1014', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = await startWsProxy(t, { upstream: upstream.url });
  const linked = await link(t, proxy, upstream);
  linked.upstream.ws.send('last words');
  linked.upstream.ws.terminate();
  const [atClient] = await gone(proxy, linked);
  assert.equal(atClient.code, 1014);
  assert.deepEqual(
    linked.client.messages.map((m) => m.text),
    ['last words'],
  );
});

test('a client message over maxMessageSize: the client is closed 1009, the upstream 1011', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = await startWsProxy(t, { upstream: upstream.url, maxMessageSize: 1000 });
  const linked = await link(t, proxy, upstream);
  linked.client.ws.send(Buffer.alloc(1000, 1));
  linked.client.ws.send('x'.repeat(1000));
  await linked.client.waitMessages(2);
  linked.client.ws.send(Buffer.alloc(1001, 2));
  const [atClient, atUpstream] = await gone(proxy, linked);
  assert.equal(atClient.code, 1009);
  assert.equal(atUpstream.code, 1011);
  assert.equal(linked.upstream.messages.length, 2, 'the large message was not forwarded');
});

test('an upstream message over maxMessageSize: the upstream is closed 1009, the client 1011', async (t) => {
  const upstream = await startUpstream(t, { onConnection: () => {} });
  const proxy = await startWsProxy(t, { upstream: upstream.url, maxMessageSize: 1000 });
  const linked = await link(t, proxy, upstream);
  linked.upstream.ws.send('y'.repeat(1000));
  linked.upstream.ws.send('y'.repeat(1001));
  const [atClient, atUpstream] = await gone(proxy, linked);
  assert.equal(atUpstream.code, 1009);
  assert.equal(atClient.code, 1011);
  assert.equal(linked.client.messages.length, 1, 'the large message was not forwarded');
});

test('many links opened and closed from either side leave nothing behind', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = await startWsProxy(t, { upstream: upstream.url });
  const links: Linked[] = [];
  for (let i = 0; i < 20; i++) links.push(await link(t, proxy, upstream));
  assert.equal(proxy.proxy.linkCount, 20);
  links.forEach(({ client, upstream: connection }, i) => {
    if (i % 4 === 0) client.ws.close(1000);
    else if (i % 4 === 1) connection.ws.close(4000);
    else if (i % 4 === 2) client.ws.terminate();
    else connection.ws.terminate();
  });
  await within(Promise.all(links.flatMap((l) => [l.client.closed, l.upstream.closed])), 3000, 'every side closed');
  await waitFor(() => proxy.proxy.linkCount === 0, 2000, 'linkCount 0');
});
