/**
 * Agent health shared through the cluster registry, with a real Redis: each proxy writes how many
 * of its agents for an id are healthy beside how many are usable, and a request goes to a healthy
 * agent here, else a peer's healthy one, else an unhealthy one here, else a peer's unhealthy one.
 * Targets' health endpoints are flipped and the agents' own health checks notice. The registry
 * stays readable both ways across a rolling upgrade.
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { type AddressInfo, createServer as createNetServer, type Socket } from 'node:net';
import { after, describe, it, type TestContext } from 'node:test';
import { ClusterRegistry } from '../../src/apps/tunnel/cluster-registry.ts';
import { LUA_NOW } from '../../src/util/redis-script.ts';
import {
  fakeField,
  type Node,
  registeredCounts,
  startNode,
  until,
  waitRegistered,
} from '../fixtures/tunnel-cluster-helpers.ts';
import {
  checkedTarget,
  FAST_HEALTH_CHECK,
  ID,
  readBody,
  send,
  startAgent,
  startTarget,
} from '../fixtures/tunnel-helpers.ts';
import { recordingLogger, waitFor } from '../helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, uniquePrefix } from '../session/redis.ts';

/**
 * The lookup script of proxies from before health was shared, as they run it: a registry must
 * stay readable to them while a cluster is upgraded one proxy at a time.
 */
const OLDER_LOOKUP = `
${LUA_NOW}
local out = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local count, expires = string.match(redis.call('HGET', KEYS[1], f) or '', '^(%d+) (%d+)$')
  if count == nil or tonumber(expires) <= now then
    redis.call('HDEL', KEYS[1], f)
  elseif f ~= ARGV[1] then
    out[#out + 1] = f
    out[#out + 1] = count
  end
end
return out
`;

/**
 * An agent on `node` whose target fails its health checks (503 on /healthz) and answers every
 * other request with its method and body; resolves once the proxy knows the agent is unhealthy.
 */
async function unhealthyEchoAgent(t: TestContext, node: Node): Promise<void> {
  const target = await startTarget(t, (req, res) => {
    if (req.url === '/healthz') {
      res.statusCode = 503;
      res.end();
      return;
    }
    readBody(req).then((body) => res.end(`${req.method} ${body}`));
  });
  await startAgent(t, node, { target: target.url, healthCheck: FAST_HEALTH_CHECK });
  await waitFor(() => node.proxy.agents(ID).every((e) => !e.healthy), 3000, 'the proxy hears its agent is unhealthy');
}

const connected = await connectRedis();
if (connected instanceof Error) {
  redisUnreachable('agent health shared between tunnel proxies', connected);
} else {
  const redis = connected;
  after(async () => {
    await redis.quit();
  });

  describe('agent health shared between tunnel proxies', () => {
    const fresh = (t: TestContext): string => {
      const prefix = uniquePrefix();
      t.after(() => deletePrefix(redis, prefix));
      return prefix;
    };

    /** Who served `n` requests in a row through `node` (the targets answer their name). */
    async function servedBy(node: Node, n = 5): Promise<string[]> {
      const names: string[] = [];
      for (let i = 0; i < n; i++) {
        const reply = await send(node.port);
        assert.equal(reply.status, 200, reply.text);
        names.push(reply.text);
      }
      return names;
    }

    /**
     * Checks that `node` routes to `name`, once it no longer uses a registry answer from before
     * (a forwarding proxy uses one again for a third of the ttl here): call it after the registry
     * says what the test changed.
     */
    async function routesTo(node: Node, name: string): Promise<void> {
      const lookups = (node.proxy as unknown as { registry: { lookups: Map<string, { until: number | undefined }> } })
        .registry.lookups;
      await waitFor(
        () => {
          const cached = lookups.get(ID);
          return cached === undefined || (cached.until !== undefined && performance.now() >= cached.until);
        },
        3000,
        `${node.advertise} done with its last registry answer`,
      );
      assert.deepEqual(await servedBy(node), Array(5).fill(name));
    }

    async function healthSays(p: string, node: Node, usable: number, healthy: number): Promise<void> {
      await until(
        async () =>
          JSON.stringify(await registeredCounts(redis, p, ID, node.advertise)) === JSON.stringify({ usable, healthy }),
        5000,
        `the registry: ${node.advertise} has ${healthy} of ${usable} agents healthy`,
      );
    }

    it('a healthy agent here, then a peer’s healthy one, then an unhealthy one here, then a peer’s unhealthy one', async (t) => {
      const p = fresh(t);
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      const c = await startNode(t, redis, p); // no agent of its own
      const targetA = await checkedTarget(t, 'a');
      const targetB = await checkedTarget(t, 'b');
      await startAgent(t, a, { target: targetA.url, healthCheck: FAST_HEALTH_CHECK });
      await startAgent(t, b, { target: targetB.url, healthCheck: FAST_HEALTH_CHECK });
      await waitRegistered(redis, p, ID, [a.advertise, b.advertise]);
      await healthSays(p, a, 1, 1);
      await healthSays(p, b, 1, 1);

      // Everyone healthy: each proxy serves through its own agent.
      assert.deepEqual(await servedBy(a), Array(5).fill('a'));
      assert.deepEqual(await servedBy(b), Array(5).fill('b'));
      assert.equal(a.proxy.metrics.cluster.forwardedOut + b.proxy.metrics.cluster.forwardedOut, 0);

      // A's target fails: A's requests go to B's healthy agent, and so do C's.
      targetA.state.status = 503;
      await waitFor(() => a.proxy.agents(ID).every((e) => !e.healthy), 3000, 'A hears its agent is unhealthy');
      await healthSays(p, a, 1, 0);
      await routesTo(a, 'b');
      await routesTo(c, 'b');

      // B's fails too: A's unhealthy agent before B's, and B's before A's. C, with none of its
      // own, still gets an answer from one of them rather than a 503.
      targetB.state.status = 503;
      await waitFor(() => b.proxy.agents(ID).every((e) => !e.healthy), 3000, 'B hears its agent is unhealthy');
      await healthSays(p, b, 1, 0);
      await routesTo(a, 'a');
      await routesTo(b, 'b');
      for (const name of await servedBy(c)) assert.ok(name === 'a' || name === 'b', name);

      // A's recovers: B's requests go to A, and all of C's.
      targetA.state.status = 200;
      await waitFor(() => a.proxy.agents(ID).every((e) => e.healthy), 3000, 'A hears its agent recovered');
      await healthSays(p, a, 1, 1);
      await routesTo(b, 'a');
      await routesTo(c, 'a');
      assert.deepEqual(await servedBy(a), Array(5).fill('a'));
    });

    it('a healthy peer that misses hands the request back to the unhealthy agent here, its body intact', async (t) => {
      const p = fresh(t);
      const a = await startNode(t, redis, p);
      const d = await startNode(t, redis, p); // no agent: it answers a miss
      await unhealthyEchoAgent(t, a);
      await healthSays(p, a, 1, 0);
      // D as a proxy from before health was shared writes itself: no health field, so healthy.
      await fakeField(redis, p, ID, 'older', d.advertise);

      const get = await send(a.port);
      assert.equal(get.status, 200);
      assert.equal(get.text, 'GET ');
      assert.equal(d.proxy.metrics.cluster.forwardedIn, 1, 'D, healthy as far as the registry says, was tried first');

      // An empty chunked body, whose end the attempt at D took: still ended here.
      const empty = await send(a.port, { method: 'POST', body: '', chunked: true });
      assert.equal(empty.status, 200);
      assert.equal(empty.text, 'POST ');
      assert.equal(d.proxy.metrics.cluster.forwardedIn, 2);

      // Bodies with bytes, which undici sent D with the head: those D took come here first (the
      // whole of a Content-Length one, D read it before its miss), then the rest.
      const whole = await send(a.port, { method: 'POST', body: 'hello world' });
      assert.equal(whole.status, 200, whole.text);
      assert.equal(whole.text, 'POST hello world');
      assert.equal(d.proxy.metrics.cluster.forwardedIn, 3);
      const req = request({
        host: '127.0.0.1',
        port: a.port,
        method: 'POST',
        headers: { 'x-duplexwire-client-id': ID, 'transfer-encoding': 'chunked' },
        agent: false,
      });
      const reply = new Promise<{ status: number; text: string }>((resolve, reject) => {
        req.on('error', reject);
        req.on('response', (res) => {
          readBody(res).then((body) => resolve({ status: res.statusCode ?? 0, text: `${body}` }), reject);
        });
      });
      req.write('first, ');
      await waitFor(() => a.proxy.agents(ID)[0]!.inflight === 1, 3000, 'D’s miss, and the agent here has the POST');
      req.end('then the rest');
      assert.deepEqual(await reply, { status: 200, text: 'POST first, then the rest' });
      assert.equal(d.proxy.metrics.cluster.forwardedIn, 4);
    });

    it('a PUT whose peer was lost before any byte of its body came: served here, read from its first byte', async (t) => {
      const p = fresh(t);
      const a = await startNode(t, redis, p);
      await unhealthyEchoAgent(t, a);
      // E takes connections and drops them when told; the registry says it has a healthy agent.
      const held: Socket[] = [];
      const e = createNetServer((socket) => held.push(socket));
      await new Promise<void>((resolve) => e.listen(0, '127.0.0.1', resolve));
      t.after(() => new Promise<void>((resolve) => e.close(() => resolve())));
      t.after(() => {
        for (const socket of held) socket.destroy();
      });
      await fakeField(redis, p, ID, 'e', `http://127.0.0.1:${(e.address() as AddressInfo).port}`);

      const req = request({
        host: '127.0.0.1',
        port: a.port,
        method: 'PUT',
        headers: { 'x-duplexwire-client-id': ID, 'transfer-encoding': 'chunked' },
      });
      const reply = new Promise<{ status: number; text: string }>((resolve, reject) => {
        req.on('error', reject);
        req.on('response', (res) => {
          readBody(res).then((body) => resolve({ status: res.statusCode ?? 0, text: `${body}` }), reject);
        });
      });
      reply.catch(() => {});
      req.flushHeaders();
      // A's relay to E reads the user's request (undici asked for the body), which sent none yet.
      const active = (a.proxy as unknown as { active: Set<{ relay?: { attached: boolean } }> }).active;
      await waitFor(
        () => held.length === 1 && [...active].some((x) => x.relay?.attached === true),
        3000,
        'the relay to E reading the user’s request',
      );
      held[0]!.destroy();
      await waitFor(() => a.proxy.agents(ID)[0]!.inflight === 1, 3000, 'the agent here has the PUT');
      req.write('hello ');
      req.end('world');
      assert.deepEqual(await reply, { status: 200, text: 'PUT hello world' });
    });

    it('a registry that fails: the unhealthy agent here serves, not 503 CLUSTER_UNAVAILABLE', async (t) => {
      const p = fresh(t);
      let failing = false;
      const client = {
        sendCommand: (args: string[]) =>
          failing ? Promise.reject(new Error('LOADING Redis is loading the dataset')) : redis.sendCommand(args),
      };
      const a = await startNode(t, client, p);
      const target = await checkedTarget(t, 'a');
      target.state.status = 503;
      await startAgent(t, a, { target: target.url, healthCheck: FAST_HEALTH_CHECK });
      await waitFor(() => a.proxy.agents(ID).every((e) => !e.healthy), 3000, 'A hears its agent is unhealthy');
      failing = true;
      const reply = await send(a.port);
      assert.equal(reply.status, 200, reply.text);
      assert.equal(reply.text, 'a');
      assert.ok(a.proxy.metrics.cluster.registryErrors >= 1, 'the registry was asked');
    });

    it('the registry: health counts beside the agents, read by newer and older proxies alike', async (t) => {
      const p = fresh(t);
      const registry = (advertise: string): ClusterRegistry => {
        const r = new ClusterRegistry({ client: redis, prefix: p, advertise, ttl: 5000, logger: recordingLogger() });
        t.after(() => r.close());
        return r;
      };
      const one = registry('http://127.0.0.1:1');
      const other = registry('http://127.0.0.1:2');
      one.set(ID, 3, 1);
      await one.settled();
      assert.deepEqual(await other.lookup(ID), [{ url: 'http://127.0.0.1:1', agents: 3, healthy: 1 }]);

      // An older proxy's lookup sees `one` with its agents, and keeps (and skips, having no
      // address) its health field.
      const key = one.key(ID);
      const before = ((await redis.sendCommand(['HKEYS', key])) as string[]).sort();
      assert.deepEqual(before, [one.field, one.healthField].sort());
      const older = (await redis.sendCommand(['EVAL', OLDER_LOOKUP, '1', key, 'x http://127.0.0.1:9'])) as string[];
      const byField = new Map<string, number>();
      for (let i = 0; i < older.length; i += 2) byField.set(older[i]!, Number(older[i + 1]));
      assert.deepEqual(
        [...byField].filter(([field, agents]) => field.includes(' ') && agents > 0),
        [[one.field, 3]],
      );
      assert.deepEqual(((await redis.sendCommand(['HKEYS', key])) as string[]).sort(), before);

      // An older proxy's field, without health: all its agents are taken as healthy.
      await fakeField(redis, p, ID, 'older', 'http://127.0.0.1:3');
      const third = registry('http://127.0.0.1:4');
      const peers = (await third.lookup(ID)).sort((x, y) => x.url.localeCompare(y.url));
      assert.deepEqual(peers, [
        { url: 'http://127.0.0.1:1', agents: 3, healthy: 1 },
        { url: 'http://127.0.0.1:3', agents: 1, healthy: 1 },
      ]);

      // Gone: both fields go.
      one.set(ID, 0, 0);
      await one.settled();
      assert.deepEqual(await registeredCounts(redis, p, ID, 'http://127.0.0.1:1'), undefined);
      assert.ok(!((await redis.sendCommand(['HKEYS', key])) as string[]).includes(one.healthField));
    });
  });
}
