/**
 * Topics across server processes over a real Redis (`redisTopicBus`): two Servers, each with its
 * own Redis connections and its own topic map, as two processes would have. Skipped with the
 * reason when Redis is unreachable, failing instead in CI (see test/session/redis.ts).
 */
import assert from 'node:assert/strict';
import { after, describe, it, type TestContext } from 'node:test';
import { createClient } from 'redis';
import { EMPTY_PAYLOAD, payloadText, utf8 } from '../../protocol/payload.ts';
import { encodeSignal } from '../../protocol/encode.ts';
import { Client } from '../../src/client/client.ts';
import { BUS_RETRY_FIRST_DELAY, encodeBusMessage, redisTopicBus, type TopicBus } from '../../src/cluster/bus.ts';
import { Server } from '../../src/server/server.ts';
import { wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { delay, recordingLogger, waitFor } from '../helpers.ts';
import { FaultProxy } from '../fixtures/fault-proxy.ts';
import { connectRedis, REDIS_URL, redisUnreachable, type TestRedisClient, uniquePrefix } from '../session/redis.ts';

const connected = await connectRedis();

if (connected instanceof Error) {
  redisUnreachable('redisTopicBus', connected);
} else {
  const publisher: TestRedisClient = connected;
  const clients: TestRedisClient[] = [publisher];
  after(async () => {
    for (const client of clients) await client.quit().catch(() => client.destroy());
  });

  /** A subscriber connection of its own, as each process has. */
  async function subscriberConnection(): Promise<TestRedisClient> {
    const subscriber = publisher.duplicate();
    subscriber.on('error', () => {});
    await subscriber.connect();
    clients.push(subscriber);
    return subscriber;
  }

  /** How many Redis connections listen on `channel`. */
  async function listeners(channel: string): Promise<number> {
    const reply = (await publisher.sendCommand(['PUBSUB', 'NUMSUB', channel])) as [string, number];
    return Number(reply[1]);
  }

  /** Polls Redis until `channel` has `count` listeners. */
  async function untilListeners(channel: string, count: number, what: string, timeout = 2_000): Promise<void> {
    const deadline = Date.now() + timeout;
    while ((await listeners(channel)) !== count) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /**
   * A server as one process of a cluster: a `join` request subscribes its connection to the
   * topic named by the payload, `leave` unsubscribes, `say` publishes "<topic>|<text>".
   */
  async function node(t: TestContext, prefix: string, bus?: TopicBus) {
    const logger = recordingLogger();
    const server: Server = new Server({
      transport: wsTransport({ host: '127.0.0.1', port: 0 }),
      logger,
      bus: bus ?? redisTopicBus({ publisher, subscriber: await subscriberConnection(), prefix }),
      onRequest: (conn, msg) => {
        const text = payloadText(msg.payload);
        if (msg.name === 'join') conn.subscribe(text);
        else if (msg.name === 'leave') conn.unsubscribe(text);
        else if (msg.name === 'say') {
          const [topic, said] = text.split('|') as [string, string];
          return utf8(String(server.publish(topic, 'said', utf8(said))));
        }
        return EMPTY_PAYLOAD;
      },
    });
    await server.listen();
    t.after(() => server.shutdown({ timeout: 200 }));
    const url = `ws://127.0.0.1:${server.address()!.port}/`;
    return { server, url, logger };
  }

  async function member(t: TestContext, url: string) {
    const client = new Client(url, { transport: wsClientTransport(), reconnect: false, logger: recordingLogger() });
    t.after(() => client.close());
    await client.connect();
    const heard: string[] = [];
    client.on('signal', (msg) => heard.push(`${msg.name}:${payloadText(msg.payload)}`));
    return { client, heard };
  }

  /**
   * Server A on a bus whose subscriber reaches Redis through a fault proxy (reconnecting every 20
   * ms), server B on a plain bus, and a member of each; `lose(action, doing)` runs `action` with
   * the subscriber's commands held, then resets the link, and resolves once A reported `doing`
   * failed.
   */
  async function faultedPair(t: TestContext) {
    const redisPort = Number(new URL(REDIS_URL).port || 6379);
    const proxy = await FaultProxy.start({ targetPort: redisPort, targetHost: new URL(REDIS_URL).hostname });
    t.after(() => proxy.close());
    const firstLink = proxy.nextLink();
    const subscriber = createClient({
      url: `redis://127.0.0.1:${proxy.port}`,
      socket: { connectTimeout: 2_000, reconnectStrategy: () => 20 },
    });
    subscriber.on('error', () => {});
    await subscriber.connect();
    t.after(() => subscriber.destroy());
    const link = await firstLink;
    const prefix = uniquePrefix();
    const a = await node(t, prefix, redisTopicBus({ publisher, subscriber, prefix }));
    const b = await node(t, prefix);
    const onA = await member(t, a.url);
    const onB = await member(t, b.url);
    const lose = async (action: () => Promise<unknown>, doing: 'subscribing' | 'unsubscribing'): Promise<void> => {
      link.up.pause();
      await action();
      await waitFor(() => link.up.held > 0, 2_000, `the ${doing} held on its way to Redis`);
      link.reset();
      await waitFor(
        () => a.logger.entries.some((e) => e.message === `${doing} on the bus failed`),
        2_000,
        `the failed ${doing} reported`,
      );
    };
    return { subscriber, prefix, a, onA, onB, lose };
  }

  describe('redisTopicBus', () => {
    it('a publish on one server reaches the subscribers of every server, once each', async (t) => {
      const prefix = uniquePrefix();
      const a = await node(t, prefix);
      const b = await node(t, prefix);
      const onA = await member(t, a.url);
      const onB = await member(t, b.url);
      const elsewhere = await member(t, b.url);
      await onA.client.request('join', utf8('room'));
      await onB.client.request('join', utf8('room'));
      await elsewhere.client.request('join', utf8('other'));
      await untilListeners(`${prefix}room`, 2, 'both servers listening');

      // The count is this process's subscribers: the others' are not known here.
      assert.equal(payloadText(await onA.client.request('say', utf8('room|hello'))), '1');
      await waitFor(() => onB.heard.length === 1, 2_000, 'the publish on the other server');
      assert.deepEqual(onB.heard, ['said:hello']);
      assert.deepEqual(onA.heard, ['said:hello'], 'the publishing server delivers once, not again from Redis');
      assert.deepEqual(elsewhere.heard, []);

      await onB.client.request('say', utf8('room|back'));
      await waitFor(() => onA.heard.length === 2, 2_000, 'the reply across');
      assert.deepEqual(onA.heard, ['said:hello', 'said:back']);
      assert.deepEqual(onB.heard, ['said:hello', 'said:back']);
    });

    it('leaving and joining a topic again at once keeps the server listening (no lost channel)', async (t) => {
      const prefix = uniquePrefix();
      const a = await node(t, prefix);
      const b = await node(t, prefix);
      const onA = await member(t, a.url);
      const onB = await member(t, b.url);
      await onA.client.request('join', utf8('room'));
      await untilListeners(`${prefix}room`, 1, 'A listening');
      // The last subscriber leaves and a new subscription follows before Redis confirmed the
      // UNSUBSCRIBE: the process must end up listening.
      for (let i = 0; i < 5; i++) {
        await Promise.all([onA.client.request('leave', utf8('room')), onA.client.request('join', utf8('room'))]);
      }
      await untilListeners(`${prefix}room`, 1, 'A still listening');
      await onB.client.request('say', utf8('room|after rejoin'));
      await waitFor(() => onA.heard.length === 1, 2_000, 'the publish from the other server');
      assert.deepEqual(onA.heard, ['said:after rejoin']);
    });

    it('a SUBSCRIBE lost with the Redis connection is made again: the server does not stay deaf to the topic', async (t) => {
      // node-redis rejects a SUBSCRIBE still waiting for its reply when the connection breaks,
      // and after reconnecting subscribes again only to the channels Redis had confirmed.
      const { prefix, onA, onB, lose } = await faultedPair(t);
      await onB.client.request('join', utf8('other'));
      await untilListeners(`${prefix}other`, 1, 'B listening');

      await lose(() => onA.client.request('join', utf8('room')), 'subscribing');
      await untilListeners(`${prefix}room`, 1, 'A listening again after the reconnect', 5_000);
      await onB.client.request('say', utf8('room|after the outage'));
      await waitFor(() => onA.heard.length === 1, 2_000, 'the publish from the other server');
      assert.deepEqual(onA.heard, ['said:after the outage']);
    });

    it('an UNSUBSCRIBE lost with the Redis connection is made again: the server stops listening, and hears a topic joined again once', async (t) => {
      // node-redis keeps the listener of an UNSUBSCRIBE that failed, and subscribes it again after
      // reconnecting: the retry must hand node-redis that same listener, or the channel stays
      // subscribed, and a later join adds a second listener (every message delivered twice).
      const { subscriber, prefix, onA, onB, lose } = await faultedPair(t);
      await onA.client.request('join', utf8('room'));
      await untilListeners(`${prefix}room`, 1, 'A listening');

      await lose(() => onA.client.request('leave', utf8('room')), 'unsubscribing');
      // node-redis reconnects (20 ms) and subscribes again to what it still has listeners for.
      await waitFor(() => subscriber.isReady, 2_000, 'the subscriber reconnected');
      await delay(BUS_RETRY_FIRST_DELAY * 5);
      await untilListeners(`${prefix}room`, 0, 'A no longer listening after the reconnect', 5_000);

      await onA.client.request('join', utf8('room'));
      await untilListeners(`${prefix}room`, 1, 'A listening again');
      await onB.client.request('say', utf8('room|once'));
      await waitFor(() => onA.heard.length >= 1, 2_000, 'the publish from the other server');
      await delay(100);
      assert.deepEqual(onA.heard, ['said:once']);
    });

    it('a server listens to a channel only while one of its connections subscribes to the topic', async (t) => {
      const prefix = uniquePrefix();
      const a = await node(t, prefix);
      const one = await member(t, a.url);
      const two = await member(t, a.url);
      assert.equal(await listeners(`${prefix}t`), 0);
      await one.client.request('join', utf8('t'));
      await two.client.request('join', utf8('t'));
      await untilListeners(`${prefix}t`, 1, 'one listener for two subscribers');
      await one.client.request('leave', utf8('t'));
      assert.equal(await listeners(`${prefix}t`), 1, 'still one subscriber here');
      await two.client.close();
      await untilListeners(`${prefix}t`, 0, 'no listener once the last one left');
    });

    it('messages that are not duplexwire publishes are ignored, with a warning; valid ones from elsewhere are delivered', async (t) => {
      const prefix = uniquePrefix();
      const a = await node(t, prefix);
      const m = await member(t, a.url);
      await m.client.request('join', utf8('t'));
      await untilListeners(`${prefix}t`, 1, 'listening');
      const channel = `${prefix}t`;
      await publisher.publish(channel, Buffer.from('not ours'));
      // Our framing around something that is not a signal (a request).
      const request = Uint8Array.of(1, 1, 0x61, 0);
      await publisher.publish(channel, Buffer.from(encodeBusMessage('x', request)));
      // A valid publish of "another process".
      await publisher.publish(channel, Buffer.from(encodeBusMessage('elsewhere', encodeSignal('news', utf8('hi')))));
      await waitFor(() => m.heard.length === 1, 2_000, 'the valid one');
      assert.deepEqual(m.heard, ['news:hi']);
      await waitFor(
        () => a.logger.entries.filter((e) => e.message.includes('not a duplexwire publish')).length === 2,
        2_000,
        'two warnings',
      );
      assert.equal(m.client.isConnected, true);
    });

    for (const [how, fail] of [
      ['rejects', () => Promise.reject(new Error('redis down'))],
      [
        'throws',
        () => {
          throw new Error('redis down');
        },
      ],
    ] as const) {
      it(`a bus that ${how} does not cost this process its subscriptions or delivery; the failure is logged`, async (t) => {
        const failing: TopicBus = { publish: fail, subscribe: fail, unsubscribe: fail };
        const a = await node(t, uniquePrefix(), failing);
        const m = await member(t, a.url);
        await m.client.request('join', utf8('t'));
        assert.equal(payloadText(await m.client.request('say', utf8('t|local'))), '1');
        await waitFor(() => m.heard.length === 1, 2_000, 'the local delivery');
        const failures = () =>
          a.logger.entries
            .filter((e) => e.level === 'error' && /on the bus failed/.test(e.message))
            .map((e) => e.message);
        await waitFor(() => failures().length >= 2, 2_000, 'subscribe and publish failures logged');
        // Never subscribed on the bus: leaving calls nothing there, and the retries stop.
        await m.client.request('leave', utf8('t'));
        const after = failures().length;
        await delay(BUS_RETRY_FIRST_DELAY * 3);
        assert.equal(failures().length, after, 'no call once the topic is not wanted');
        assert.deepEqual([...new Set(failures())].sort(), [
          'publishing on the bus failed',
          'subscribing on the bus failed',
        ]);
      });
    }

    it('an option bus without the three methods is refused', () => {
      assert.throws(
        () =>
          new Server({
            transport: wsTransport({ port: 0 }),
            bus: { publish: async () => {} } as unknown as TopicBus,
          }),
        { name: 'InvalidArgumentError', message: /bus must have a subscribe method/ },
      );
    });
  });
}
