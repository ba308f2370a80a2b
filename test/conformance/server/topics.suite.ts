/**
 * Topics (pub/sub): `conn.subscribe()`, `server.publish()`, the limits, and what a closing
 * connection leaves behind (nothing).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EMPTY_PAYLOAD, payloadText, utf8 } from '../../../protocol/payload.ts';
import type { Client } from '../../../src/client/client.ts';
import type { Connection } from '../../../src/server/connection.ts';
import { Server } from '../../../src/server/server.ts';
import { connectClient, startServer, waitFor } from '../../helpers.ts';
import { transportUnderTest } from '../../transport-under-test.ts';

/** Connects `n` clients, each recording the signals it gets as `name:text`. */
async function clientsOf(
  t: Parameters<typeof connectClient>[0],
  url: string,
  server: Server,
  n: number,
): Promise<{ clients: Client[]; received: string[][]; conns: Connection[] }> {
  const clients: Client[] = [];
  const received: string[][] = [];
  const conns: Connection[] = [];
  for (let i = 0; i < n; i++) {
    const before = new Set(server.connections);
    const client = await connectClient(t, url);
    const log: string[] = [];
    client.on('signal', (message) => log.push(`${message.name}:${payloadText(message.payload)}`));
    clients.push(client);
    received.push(log);
    await waitFor(() => server.connections.size === before.size + 1, 2_000, 'the connection');
    conns.push([...server.connections].find((conn) => !before.has(conn))!);
  }
  return { clients, received, conns };
}

/** Publishes a marker to every connection and waits for it everywhere: what was sent before has arrived. */
async function settle(server: Server, received: string[][]): Promise<void> {
  const before = received.map((log) => log.length);
  server.broadcast('marker', utf8(''));
  await waitFor(() => received.every((log, i) => log.length > before[i]!), 2_000, 'the marker everywhere');
  for (const log of received) log.splice(log.indexOf('marker:'), 1);
}

test('publish reaches the subscribers of a topic only, once each, and counts them', async (t) => {
  const { url, server } = await startServer(t);
  const { received, conns } = await clientsOf(t, url, server, 4);
  assert.equal(conns[0]!.subscribe('news'), true);
  assert.equal(conns[1]!.subscribe('news'), true);
  assert.equal(conns[1]!.subscribe('news'), true, 'a second subscribe is the same subscription');
  assert.equal(conns[2]!.subscribe('sport'), true);
  assert.deepEqual([...server.subscribers('news')], [conns[0], conns[1]]);
  assert.deepEqual([...conns[1]!.topics], ['news']);
  assert.equal(server.publish('news', 'headline', utf8('one')), 2);
  assert.equal(server.publish('sport', 'score', utf8('2-1')), 1);
  assert.equal(server.publish('weather', 'rain', utf8('none listens')), 0);
  await settle(server, received);
  assert.deepEqual(received, [['headline:one'], ['headline:one'], ['score:2-1'], []]);
});

test('publish with except leaves that connection out; unsubscribe ends delivery', async (t) => {
  const { url, server } = await startServer(t);
  const { received, conns } = await clientsOf(t, url, server, 3);
  for (const conn of conns) conn.subscribe('room');
  assert.equal(server.publish('room', 'chat', utf8('hi from 0'), { except: conns[0] }), 2);
  assert.equal(conns[2]!.unsubscribe('room'), true);
  assert.equal(conns[2]!.unsubscribe('room'), false, 'not subscribed any more');
  assert.equal(conns[2]!.unsubscribe('never'), false);
  assert.equal(server.publish('room', 'chat', utf8('second')), 2);
  await settle(server, received);
  assert.deepEqual(received, [['chat:second'], ['chat:hi from 0', 'chat:second'], ['chat:hi from 0']]);
  assert.deepEqual([...conns[2]!.topics], []);
});

test('a connection that closes leaves every topic, and a topic without subscribers is gone', async (t) => {
  const { url, server } = await startServer(t);
  const { clients, received, conns } = await clientsOf(t, url, server, 2);
  for (const topic of ['a', 'b', 'c']) conns[0]!.subscribe(topic);
  conns[1]!.subscribe('a');
  await clients[0]!.close();
  await waitFor(() => server.connections.size === 1, 2_000, 'the closed connection gone');
  assert.deepEqual([...conns[0]!.topics], []);
  assert.deepEqual([...server.subscribers('a')], [conns[1]]);
  assert.equal(server.subscribers('b').size, 0);
  assert.equal(conns[0]!.subscribe('d'), false, 'a closed connection subscribes to nothing');
  assert.equal(server.subscribers('d').size, 0);
  assert.equal(server.publish('a', 'x', utf8('1')), 1);
  assert.equal(server.publish('b', 'x', utf8('2')), 0);
  await waitFor(() => received[1]!.length === 1, 2_000, 'the signal');
  assert.deepEqual(received[1], ['x:1']);
});

test('signals and publishes to one connection arrive in the order they were sent', async (t) => {
  const { url, server } = await startServer(t);
  const { received, conns } = await clientsOf(t, url, server, 1);
  const conn = conns[0]!;
  conn.subscribe('t');
  const expected: string[] = [];
  for (let i = 0; i < 200; i++) {
    if (i % 3 === 0) conn.signal('direct', utf8(String(i)));
    else server.publish('t', 'topic', utf8(String(i)));
    expected.push(`${i % 3 === 0 ? 'direct' : 'topic'}:${i}`);
  }
  await waitFor(() => received[0]!.length === 200, 2_000, '200 signals');
  assert.deepEqual(received[0], expected);
});

test('a request handler subscribes its connection (join), and publishes to the others in the room', async (t) => {
  const { url, server } = await startServer(t, {
    onRequest: (conn, message) => {
      const text = payloadText(message.payload);
      if (message.name === 'join') conn.subscribe(`room:${text}`);
      else if (message.name === 'say') {
        const [room] = [...conn.topics];
        if (room !== undefined) server.publish(room, 'said', utf8(text), { except: conn });
      }
      return EMPTY_PAYLOAD;
    },
  });
  const { clients, received } = await clientsOf(t, url, server, 3);
  await clients[0]!.request('join', utf8('blue'));
  await clients[1]!.request('join', utf8('blue'));
  await clients[2]!.request('join', utf8('red'));
  await clients[0]!.request('say', utf8('hello blue'));
  await settle(server, received);
  assert.deepEqual(received, [[], ['said:hello blue'], []]);
});

test('invalid topics and signals are refused before anything is sent; maxTopicsPerConnection holds', async (t) => {
  const { url, server } = await startServer(t, { maxTopicsPerConnection: 3 });
  const { received, conns } = await clientsOf(t, url, server, 1);
  const conn = conns[0]!;
  assert.throws(() => conn.subscribe(''), { name: 'InvalidArgumentError' });
  assert.throws(() => conn.subscribe('x'.repeat(1025)), { name: 'InvalidArgumentError' });
  assert.throws(() => conn.subscribe(42 as unknown as string), { name: 'InvalidArgumentError' });
  assert.throws(() => server.publish('', 'x', utf8('y')), { name: 'InvalidArgumentError' });
  assert.equal(conn.subscribe('x'.repeat(1024)), true);
  conn.subscribe('one');
  conn.subscribe('two');
  assert.throws(() => conn.subscribe('three'), { name: 'LimitExceededError', code: 'ERR_LIMIT_EXCEEDED' });
  assert.equal(conn.subscribe('one'), true, 'one it holds is fine at the limit');
  assert.equal(server.subscribers('three').size, 0);
  conn.unsubscribe('one');
  assert.equal(conn.subscribe('three'), true);
  assert.throws(() => server.publish('two', 'é', utf8('bad name')), { name: 'ProtocolError' });
  await settle(server, received);
  assert.deepEqual(received, [[]]);
  for (const bad of [0, 1.5, -1]) {
    assert.throws(() => new Server({ transport: transportUnderTest().server({}), maxTopicsPerConnection: bad }), {
      name: 'InvalidArgumentError',
      message: /maxTopicsPerConnection/,
    });
  }
});

test('topics are compared as strings: lone surrogates, MQTT-like wildcards and NUL name topics of their own', async (t) => {
  // uWS keys its topics by bytes and once had MQTT wildcards; none of that may show through.
  const topics = ['\uD800', '\uDC00', '\uFFFD', '\uD800\uDC00', 'a/+', 'a/#', '#', 'a/b', 'a', '\0', '\0d800', 'é'];
  const { url, server } = await startServer(t);
  const { received, conns } = await clientsOf(t, url, server, topics.length);
  for (const [i, topic] of topics.entries()) assert.equal(conns[i]!.subscribe(topic), true);
  for (const [i, topic] of topics.entries()) {
    assert.equal(server.publish(topic, 'to', utf8(String(i))), 1, JSON.stringify(topic));
  }
  await settle(server, received);
  assert.deepEqual(
    received,
    topics.map((_, i) => [`to:${i}`]),
  );
});
