/**
 * Several tunnel proxies sharing their agents through a real Redis: a request reaching a proxy
 * without the agent is served through the peer that has it, bodies stream both ways with
 * backpressure, departures and deaths are seen within the TTL, outsiders cannot forge a cluster
 * request, and no request goes round in circles. Proxies listen on 127.0.0.1 port 0; each is
 * mounted on a server the test owns (its advertised address must be known before it starts, and
 * a test kills one abruptly).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { after, describe, it, type TestContext } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { TunnelAgent } from '../../src/apps/tunnel/agent.ts';
import {
  CLUSTER_CLOCK_SKEW,
  type RedisCommandClient,
  resolveCluster,
  SeenSignatures,
} from '../../src/apps/tunnel/cluster.ts';
import { LOOKUP_CACHE_TIME } from '../../src/apps/tunnel/cluster-registry.ts';
import { generateToken } from '../../src/apps/tunnel/tokens.ts';
import { TunnelProxy } from '../../src/apps/tunnel/proxy.ts';
import {
  echoHandler,
  ID,
  json,
  OTHER_ID,
  readBody,
  send,
  spawnCli,
  startAgent,
  startTarget,
  TOKEN,
  tempFile,
  upload,
  writeBlocks,
  pattern,
} from '../fixtures/tunnel-helpers.ts';
import {
  closeServer,
  listen,
  registered,
  SECRET,
  startNode,
  TTL,
  waitRegistered,
} from '../fixtures/tunnel-cluster-helpers.ts';
import { delay, recordingLogger, waitFor } from '../helpers.ts';
import { testCertificate } from '../transports/helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, uniquePrefix } from '../session/redis.ts';

describe('remembered cluster signatures', () => {
  it('a nonce is accepted once, and forgotten only when the clock skew refuses its signature anyway', () => {
    const seen = new SeenSignatures(CLUSTER_CLOCK_SKEW);
    const now = 1_000_000;
    assert.equal(seen.add('a', now, now), true);
    assert.equal(seen.add('a', now, now), false, 'a replay');
    assert.equal(seen.add('b', now - 5, now), true, 'another nonce, a little older');
    // Still within the skew: still remembered.
    assert.equal(seen.add('a', now, now + CLUSTER_CLOCK_SKEW), false);
    // Past it: forgotten (verify refuses the stale time before asking).
    assert.equal(seen.add('c', now + CLUSTER_CLOCK_SKEW + 1, now + CLUSTER_CLOCK_SKEW + 1), true);
    assert.equal(seen.size, 1);
  });

  it('full: the oldest is forgotten and nothing up to its time passes again', () => {
    const seen = new SeenSignatures(CLUSTER_CLOCK_SKEW, 3);
    const now = 1_000_000;
    for (const [nonce, time] of [
      ['a', now - 30],
      ['b', now - 20],
      ['c', now - 10],
    ] as const) {
      assert.equal(seen.add(nonce, time, now), true);
    }
    assert.equal(seen.add('d', now, now), true, 'makes room by forgetting a');
    assert.equal(seen.size, 3);
    assert.equal(seen.add('a', now - 30, now), false, 'a cannot come back');
    assert.equal(seen.add('e', now - 25, now), false, 'nor anything not newer than it');
    assert.equal(seen.add('f', now - 29, now), false);
    assert.equal(seen.add('g', now + 1, now), true, 'newer ones pass');
  });

  it('the proxy signs each request with its own nonce, so two alike requests in one millisecond both pass', () => {
    const cluster = resolveCluster({
      client: { sendCommand: async () => null },
      advertise: 'http://127.0.0.1:1',
      secret: SECRET,
    });
    const facts = { audience: 'http://127.0.0.1:1', method: 'GET', target: '/', id: ID, timeout: '30000' };
    const signatures = Array.from({ length: 50 }, () => cluster.sign(facts));
    assert.equal(new Set(signatures).size, 50);
    for (const signature of signatures) assert.equal(cluster.verify(signature, facts), 'ok');
    assert.equal(cluster.verify(signatures[0], facts), 'replayed');
    assert.equal(cluster.verify(signatures[1], { ...facts, target: '/other' }), 'invalid');
    const good = signatures[2]!;
    const at = good.length - 10; // inside the MAC
    const forged = `${good.slice(0, at)}${good[at] === 'A' ? 'B' : 'A'}${good.slice(at + 1)}`;
    assert.equal(cluster.verify(forged, facts), 'invalid');
  });
});

const connected = await connectRedis();
if (connected instanceof Error) {
  redisUnreachable('tunnel proxies sharing agents over Redis', connected);
} else {
  const redis = connected;
  after(async () => {
    await redis.quit();
  });

  describe('tunnel proxies sharing agents over Redis', () => {
    let prefix = '';
    const fresh = (t: TestContext): string => {
      prefix = uniquePrefix();
      t.after(() => deletePrefix(redis, prefix));
      return prefix;
    };

    it('a request to a proxy without the agent is served through the peer that has it', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, (req, res) => {
        readBody(req).then((body) => {
          const out = JSON.stringify({ method: req.method, url: req.url, rawHeaders: req.rawHeaders, body: `${body}` });
          res.writeHead(201, ['X-Reply', 'yes', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'Content-Type', 'text/json']);
          res.end(out);
        });
      });
      const a = await startNode(t, redis, p, { publicOps: 'all' });
      const b = await startNode(t, redis, p, { publicOps: 'all' });
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      const reply = await send(a.port, {
        method: 'POST',
        path: '/any/a%2Fb/path?q=1&x=%20y',
        headers: [
          'Host',
          `127.0.0.1:${a.port}`,
          'x-duplexwire-client-id',
          ID,
          'X-Multi',
          'one',
          'x-multi',
          'two',
          'X-Forwarded-For',
          '6.6.6.6',
          'Content-Length',
          '5',
        ],
        body: 'hello',
      });
      assert.equal(reply.status, 201);
      assert.equal(reply.headers['x-reply'], 'yes');
      assert.deepEqual(reply.headers['set-cookie'], ['a=1', 'b=2']);
      assert.ok(!reply.rawHeaders.some((h) => h.toLowerCase().startsWith('x-duplexwire-cluster')));
      const seen = json(reply) as { method: string; url: string; rawHeaders: string[]; body: string };
      assert.equal(seen.method, 'POST');
      assert.equal(seen.url, '/any/a%2Fb/path?q=1&x=%20y');
      assert.equal(seen.body, 'hello');
      const pairs: Array<[string, string]> = [];
      for (let i = 0; i < seen.rawHeaders.length; i += 2) pairs.push([seen.rawHeaders[i]!, seen.rawHeaders[i + 1]!]);
      assert.deepEqual(
        pairs.filter(([n]) => n.toLowerCase() === 'x-multi'),
        [
          ['X-Multi', 'one'],
          ['x-multi', 'two'],
        ],
      );
      assert.ok(!pairs.some(([n]) => n.toLowerCase().startsWith('x-duplexwire')), JSON.stringify(pairs));
      // As if A had served it itself: A's view of the user, once.
      assert.deepEqual(
        pairs.filter(([n]) => n.toLowerCase().startsWith('x-forwarded')),
        [
          ['X-Forwarded-For', '127.0.0.1'],
          ['X-Forwarded-Proto', 'http'],
          ['X-Forwarded-Host', `127.0.0.1:${a.port}`],
        ],
      );
      assert.deepEqual(
        pairs.filter(([n]) => n.toLowerCase() === 'host').map(([, v]) => v),
        [`127.0.0.1:${a.port}`],
      );
      assert.equal(a.proxy.metrics.cluster.forwardedOut, 1);
      assert.equal(b.proxy.metrics.cluster.forwardedIn, 1);
      const metrics = await send(a.port, { path: '/metrics', headers: {} });
      assert.match(metrics.text, /duplexwire_tunnel_cluster_requests_total\{direction="out"\} 1/);
      // The user's request once as a user's (on the proxy the user reached), once as a peer's.
      const requests = (text: string) =>
        text.split('\n').filter((l) => l.startsWith('duplexwire_tunnel_requests_total{'));
      assert.deepEqual(requests(metrics.text), [
        `duplexwire_tunnel_requests_total{client_id="${ID}",status_class="2xx",source="user"} 1`,
      ]);
      assert.deepEqual(requests((await send(b.port, { path: '/metrics', headers: {} })).text), [
        `duplexwire_tunnel_requests_total{client_id="${ID}",status_class="2xx",source="peer"} 1`,
      ]);
      const ready = json(await send(a.port, { path: '/readyz', headers: {} }));
      assert.deepEqual(ready.cluster, {
        advertise: a.advertise,
        registry: 'ok',
        forwardedOut: 1,
        forwardedIn: 0,
        peerFailures: 0,
      });
      // A GET without a body, and the other direction: B has the agent, so B serves it itself.
      const direct = json(await send(b.port, { path: '/x' })) as { url: string };
      assert.equal(direct.url, '/x');
      assert.equal(b.proxy.metrics.cluster.forwardedOut, 0);
    });

    /**
     * Once `sent()` stops growing behind a paused end (unchanged for 300 ms, waited for up to 5 s:
     * the buffers on the way take a while to fill on a loaded machine): its value then, and 300 ms
     * later. Without backpressure it never stops, and the two differ.
     */
    async function stalled(sent: () => number): Promise<{ mid: number; end: number }> {
      const deadline = performance.now() + 5_000;
      let last = sent();
      let since = performance.now();
      while (performance.now() < deadline && performance.now() - since < 300) {
        await delay(50);
        if (sent() !== last) {
          last = sent();
          since = performance.now();
        }
      }
      const mid = sent();
      await delay(300);
      return { mid, end: sent() };
    }

    it('large bodies stream both ways through two proxies, and a slow end holds the other back', async (t) => {
      const p = fresh(t);
      // Larger than the buffers on the way (kernel's included) so that a held-back end must stall.
      const total = 96 * 1024 * 1024;
      const block = pattern(256 * 1024);
      let uploadRead = 0;
      const download = { sent: 0 };
      const uploadHash = createHash('sha256');
      const marks = { upMid: 0, upEnd: 0, downMid: 0, downEnd: 0 };
      const progress = { sent: 0 };
      let got = 0;
      const target = await startTarget(t, (req, res) => {
        if (req.method === 'POST') {
          let paused = false;
          req.on('data', (chunk: Buffer) => {
            uploadHash.update(chunk);
            uploadRead += chunk.length;
            if (!paused && uploadRead >= 4 * 1024 * 1024) {
              paused = true;
              req.pause();
              void stalled(() => progress.sent).then(({ mid, end }) => {
                marks.upMid = mid;
                marks.upEnd = end;
                req.resume();
              });
            }
          });
          req.on('end', () => res.end(String(uploadRead)));
          return;
        }
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        writeBlocks(res, block, total, download);
      });
      const a = await startNode(t, redis, p, { maxRequestBody: Number.POSITIVE_INFINITY });
      const b = await startNode(t, redis, p, { maxRequestBody: Number.POSITIVE_INFINITY });
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);

      const reply = await upload(a.port, block, total, progress);
      const expected = createHash('sha256');
      for (let n = 0; n < total; n += block.length) expected.update(block);
      const digest = expected.digest('hex');
      assert.equal(reply, String(total));
      assert.equal(uploadHash.digest('hex'), digest);
      assert.ok(marks.upEnd < total, `the user did not finish while the target was paused (${marks.upEnd})`);
      assert.equal(marks.upEnd, marks.upMid, 'the user stalled while the target was paused');

      const downloadHash = createHash('sha256');
      await new Promise<void>((resolve, reject) => {
        const req = request({ port: a.port, host: '127.0.0.1', headers: { 'x-duplexwire-client-id': ID } });
        req.on('error', reject);
        req.on('response', (res) => {
          let paused = false;
          res.on('data', (chunk: Buffer) => {
            downloadHash.update(chunk);
            got += chunk.length;
            if (!paused && got >= 4 * 1024 * 1024) {
              paused = true;
              res.pause();
              void stalled(() => download.sent).then(({ mid, end }) => {
                marks.downMid = mid;
                marks.downEnd = end;
                res.resume();
              });
            }
          });
          res.on('end', resolve);
        });
        req.end();
      });
      assert.equal(got, total);
      assert.equal(downloadHash.digest('hex'), digest);
      assert.ok(marks.downEnd < total, `the target did not finish while the user was paused (${marks.downEnd})`);
      assert.equal(marks.downEnd, marks.downMid, 'the target stalled while the user was paused');
      assert.equal(a.proxy.metrics.cluster.forwardedOut, 2);
      await waitFor(() => a.proxy.inflight === 0 && b.proxy.inflight === 0, 2000, 'both proxies idle');
    });

    it('concurrent requests for one id share one registry lookup, and an answer is reused briefly', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, (_req, res) => res.end('ok'));
      let lookups = 0;
      const counting: RedisCommandClient = {
        sendCommand: (args) => {
          // The lookup script takes the key and this proxy's field only (the writes take three).
          if (args[0]?.startsWith('EVAL') && args[3] === `${p}agents:${ID}` && args.length === 5) lookups++;
          return redis.sendCommand(args);
        },
      };
      // A ttl of 30 s: answers are used again for LOOKUP_CACHE_TIME (1 s), not a third of it.
      const a = await startNode(t, counting, p, {}, 30_000);
      const b = await startNode(t, redis, p);
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);

      const replies = await Promise.all(Array.from({ length: 20 }, () => send(a.port)));
      assert.deepEqual(new Set(replies.map((r) => `${r.status} ${r.text}`)), new Set(['200 ok']));
      assert.equal(lookups, 1, 'one lookup for 20 requests in flight together');
      assert.equal((await send(a.port)).status, 200);
      assert.equal(lookups, 1, 'the answer is used again for a while');
      await new Promise((resolve) => setTimeout(resolve, LOOKUP_CACHE_TIME + 100));
      assert.equal((await send(a.port)).status, 200);
      assert.equal(lookups, 2, 'and asked again after it');
    });

    it('the agent leaving B: B leaves the registry at once and A answers 503 promptly', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, echoHandler);
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      const agent = await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      assert.equal((await send(a.port)).status, 200);
      await agent.close(0);
      await waitFor(() => b.proxy.agents(ID).length === 0, 2000, 'agent gone from B');
      const started = performance.now();
      const reply = await send(a.port);
      assert.equal(reply.status, 503);
      assert.equal(json(reply).code, 'NO_AGENT');
      assert.ok(performance.now() - started < 500);
      await waitRegistered(redis, p, ID, []);
    });

    it('B dies without cleaning up: A tries the other live proxy at once, and forgets B within the TTL', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, echoHandler);
      // B's own Redis connection: when B dies, so does it (nothing renews or deletes B's field).
      const bRedis = await connectRedis();
      assert.ok(!(bRedis instanceof Error));
      t.after(() => bRedis.destroy());
      // A longer TTL than the other cases': room for the requests below on a loaded machine.
      const ttl = 3_000;
      const a = await startNode(t, redis, p, {}, ttl);
      const b = await startNode(t, bRedis, p, {}, ttl);
      const c = await startNode(t, redis, p, {}, ttl);
      const onB = await startAgent(t, b, { target: target.url, reconnect: { initialDelay: 5000, maxDelay: 5000 } });
      const onC = await startAgent(t, c, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise, c.advertise]);

      // B dies: its Redis connection, its listener and its connections go, nothing is cleaned up.
      bRedis.destroy();
      const bClosed = closeServer(b.http);
      await onB.close(0);
      await bClosed;
      const diedAt = performance.now();
      // Within the TTL B is still registered: A's attempt to reach it fails and C serves. Which
      // peer A tries first is random among equals: requests until it has tried B (bounded).
      let sent = 0;
      for (; sent < 6 || (a.proxy.metrics.cluster.peerFailures === 0 && sent < 40); sent++) {
        assert.equal((await send(a.port)).status, 200);
      }
      assert.ok(performance.now() - diedAt < ttl, 'still within the TTL');
      assert.ok(a.proxy.metrics.cluster.peerFailures >= 1, 'A tried B at least once');
      assert.ok(c.proxy.metrics.cluster.forwardedIn >= sent);
      // After the TTL B's field is ignored (and deleted): A routes to C only.
      await new Promise((resolve) => setTimeout(resolve, ttl + 100));
      const failures = a.proxy.metrics.cluster.peerFailures;
      for (let i = 0; i < 4; i++) assert.equal((await send(a.port)).status, 200);
      assert.equal(a.proxy.metrics.cluster.peerFailures, failures, 'B no longer tried');
      assert.deepEqual(await registered(redis, p, ID), [c.advertise]);
      // And with no live proxy left holding an agent: 503.
      await onC.close(0);
      await waitRegistered(redis, p, ID, []);
      const none = await send(a.port);
      assert.equal(none.status, 503);
      assert.equal(json(none).code, 'NO_AGENT');
    });

    it('a peer that cannot be reached, and none other: 502 PEER_UNREACHABLE', async (t) => {
      const p = fresh(t);
      const a = await startNode(t, redis, p);
      // A registration of a proxy that is not there (an address nothing listens on).
      const gone = createServer();
      const port = await listen(gone);
      await closeServer(gone);
      const [seconds] = (await redis.sendCommand(['TIME'])) as [string, string];
      await redis.sendCommand([
        'HSET',
        `${p}agents:${ID}`,
        `ghost http://127.0.0.1:${port}`,
        `1 ${Number(seconds) * 1000 + 60_000}`,
      ]);
      const reply = await send(a.port, { method: 'POST', body: 'x' });
      assert.equal(reply.status, 502);
      assert.equal(json(reply).code, 'PEER_UNREACHABLE');
    });

    it('outsiders cannot forge a cluster request: it is served as an ordinary one, its cluster headers dropped', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, echoHandler);
      const b = await startNode(t, redis, p);
      await startAgent(t, b, { target: target.url });
      const forged = {
        'x-duplexwire-cluster-auth': generateToken(),
        'x-duplexwire-cluster-id': ID,
        'x-duplexwire-cluster-timeout': '1',
        'x-forwarded-for': '6.6.6.6',
      };
      // The cluster id header routes nothing: no client id.
      const unrouted = await send(b.port, { headers: forged });
      assert.equal(unrouted.status, 400);
      assert.equal(json(unrouted).code, 'MISSING_CLIENT_ID');
      // With a routing header: an ordinary request; the agent sees none of it.
      const reply = await send(b.port, { headers: { ...forged, 'x-duplexwire-client-id': ID } });
      assert.equal(reply.status, 200);
      const seen = json(reply) as { rawHeaders: string[] };
      const names = seen.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
      assert.ok(!names.some((n) => n.startsWith('x-duplexwire')), JSON.stringify(seen.rawHeaders));
      const xff = seen.rawHeaders[seen.rawHeaders.findIndex((h) => h.toLowerCase() === 'x-forwarded-for') + 1];
      assert.equal(xff, '127.0.0.1');
      assert.equal(b.proxy.metrics.cluster.refused, 2);
      assert.equal(b.proxy.metrics.cluster.forwardedIn, 0);
      assert.ok(!JSON.stringify(b.logger.entries).includes(forged['x-duplexwire-cluster-auth']), 'secret never logged');
      // The real secret is never logged either, on either side of a forwarded request.
      const a = await startNode(t, redis, p);
      await waitRegistered(redis, p, ID, [b.advertise]);
      assert.equal((await send(a.port)).status, 200);
      assert.ok(!JSON.stringify([...a.logger.entries, ...b.logger.entries]).includes(SECRET));
    });

    it('cluster requests are signed: the secret never travels, and a signature serves only its own request, peer and time, once', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, echoHandler);
      const b = await startNode(t, redis, p);
      await startAgent(t, b, { target: target.url });
      const signer = resolveCluster({ client: redis, advertise: b.advertise, secret: SECRET });
      const facts = { audience: b.advertise, method: 'GET', target: '/x', id: ID, timeout: '5000' };
      const headers = (auth: string, id = ID) => ({
        'x-duplexwire-cluster-auth': auth,
        'x-duplexwire-cluster-id': id,
        'x-duplexwire-cluster-timeout': '5000',
        'x-forwarded-for': '10.9.8.7',
      });
      const xff = (reply: Awaited<ReturnType<typeof send>>): string | undefined => {
        const raw = (json(reply) as { rawHeaders: string[] }).rawHeaders;
        const at = raw.findIndex((h) => h.toLowerCase() === 'x-forwarded-for');
        return at < 0 ? undefined : raw[at + 1];
      };
      // A good signature: served as a peer's request (its X-Forwarded-For is the first proxy's).
      const goodAuth = signer.sign(facts);
      const good = await send(b.port, { path: '/x', headers: headers(goodAuth) });
      assert.equal(good.status, 200);
      assert.equal(xff(good), '10.9.8.7');
      assert.equal(b.proxy.metrics.cluster.forwardedIn, 1);

      const refusedBefore = b.proxy.metrics.cluster.refused;
      const replays: Array<[string, Record<string, string>, string]> = [
        ['the secret itself', headers(SECRET), '/x'],
        ['another path', headers(signer.sign(facts)), '/y'],
        ['another client id', headers(signer.sign(facts), OTHER_ID), '/x'],
        ['another peer', headers(signer.sign({ ...facts, audience: 'http://127.0.0.1:1' })), '/x'],
        ['a longer deadline', { ...headers(signer.sign(facts)), 'x-duplexwire-cluster-timeout': '60000' }, '/x'],
        [
          'an old one',
          headers(`v1.${Date.now() - CLUSTER_CLOCK_SKEW - 1_000}.${'A'.repeat(16)}.${'A'.repeat(43)}`),
          '/x',
        ],
        // The body is not signed: without the proxy remembering signatures, this one would be
        // served again with any body, to the agent, as the first proxy's request.
        ['the good one again', headers(goodAuth), '/x'],
      ];
      for (const [what, forged, path] of replays) {
        // Not a peer's request: without a routing header it routes nowhere.
        const reply = await send(b.port, { path, headers: forged });
        assert.equal(reply.status, 400, what);
      }
      assert.equal(b.proxy.metrics.cluster.refused - refusedBefore, replays.length);
      assert.equal(b.proxy.metrics.cluster.forwardedIn, 1);
    });

    it('no loop: two proxies that each believe the other has the agent answer 503 after one hop', async (t) => {
      const p = fresh(t);
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      const [seconds] = (await redis.sendCommand(['TIME'])) as [string, string];
      const expiry = `1 ${Number(seconds) * 1000 + 60_000}`;
      await redis.sendCommand(['HSET', `${p}agents:${ID}`, `x ${a.advertise}`, expiry, `y ${b.advertise}`, expiry]);
      for (const [from, to] of [
        [a, b],
        [b, a],
      ] as const) {
        const started = performance.now();
        const reply = await send(from.port, { method: 'POST', body: 'payload' });
        assert.equal(reply.status, 503);
        assert.equal(json(reply).code, 'NO_AGENT');
        assert.ok(performance.now() - started < 1000);
        assert.ok(!reply.rawHeaders.some((h) => h.toLowerCase().startsWith('x-duplexwire-cluster')));
        assert.equal(from.proxy.metrics.cluster.forwardedOut, 1);
        assert.equal(to.proxy.metrics.cluster.forwardedIn, 1);
      }
    });

    it('timeouts and users going away propagate through both proxies to the target', async (t) => {
      const p = fresh(t);
      const closes: string[] = [];
      const target = await startTarget(t, (req) => {
        req.socket.once('close', () => closes.push(req.url ?? ''));
      });
      const a = await startNode(t, redis, p, { requestTimeout: 300 });
      const b = await startNode(t, redis, p);
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      const started = performance.now();
      const reply = await send(a.port, { path: '/slow' });
      const elapsed = performance.now() - started;
      assert.equal(reply.status, 504);
      assert.equal(json(reply).code, 'AGENT_TIMEOUT');
      assert.ok(elapsed >= 280 && elapsed < 1500, `504 after ${elapsed} ms`);
      await waitFor(() => closes.includes('/slow'), 2000, 'the target saw the cancel');
      // A user who goes away.
      await new Promise<void>((resolve) => {
        const req = request({
          port: a.port,
          host: '127.0.0.1',
          path: '/gone',
          headers: { 'x-duplexwire-client-id': ID, 'x-duplexwire-request-timeout': '10s' },
        });
        req.on('error', () => resolve());
        req.end();
        setTimeout(() => req.destroy(), 150);
      });
      await waitFor(() => closes.includes('/gone'), 2000, 'the target saw the user leave');
      await waitFor(() => a.proxy.inflight === 0 && b.proxy.inflight === 0, 2000, 'both proxies idle');
    });

    it("a cluster request cannot stretch the deadline past the receiving proxy's maxRequestTimeout", async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, () => {}); // never answers
      const b = await startNode(t, redis, p, { maxRequestTimeout: 300 });
      await startAgent(t, b, { target: target.url });
      const started = performance.now();
      const reply = await send(b.port, {
        headers: {
          'x-duplexwire-cluster-auth': resolveCluster({ client: redis, advertise: b.advertise, secret: SECRET }).sign({
            audience: b.advertise,
            method: 'GET',
            target: '/',
            id: ID,
            timeout: String(60_000),
          }),
          'x-duplexwire-cluster-id': ID,
          'x-duplexwire-cluster-timeout': String(60_000),
        },
      });
      assert.equal(reply.status, 504);
      assert.ok(performance.now() - started < 5_000, 'the 60 s asked for were capped');
    });

    it('a peer at an https: origin, trusted through cluster.tls.ca', async (t) => {
      const cert = testCertificate(t);
      if (cert === undefined) {
        t.skip('openssl is not available to make a certificate');
        return;
      }
      const p = fresh(t);
      const target = await startTarget(t, (req, res) => res.end(`tls ${req.url}`));
      const https = createHttpsServer({ key: readFileSync(cert.keyFile), cert: cert.cert, requestTimeout: 0 });
      const port = await listen(https as unknown as Server);
      const advertise = `https://127.0.0.1:${port}`;
      const b = new TunnelProxy({
        tokens: { [ID]: TOKEN },
        logger: recordingLogger(),
        processMetrics: false,
        cluster: { client: redis, advertise, secret: SECRET, prefix: p, ttl: TTL },
      });
      await b.attach(https as unknown as Server);
      t.after(async () => {
        await b.close();
        await closeServer(https as unknown as Server);
      });
      const agent = new TunnelAgent({
        proxyUrl: `wss://127.0.0.1:${port}${b.agentsPath}`,
        id: ID,
        token: TOKEN,
        target: target.url,
        tls: { ca: cert.cert },
        logger: recordingLogger(),
        reconnect: false,
      });
      t.after(() => agent.close(0));
      await agent.start();
      await waitRegistered(redis, p, ID, [advertise]);

      // This proxy only forwards (it has no agent), so the address it advertises is never used.
      const trusting = await startNode(t, redis, p, {
        cluster: {
          client: redis,
          advertise: 'http://127.0.0.1:1',
          secret: SECRET,
          prefix: p,
          ttl: TTL,
          tls: { ca: cert.cert },
        },
      });
      const reply = await send(trusting.port, { path: '/over-tls' });
      assert.equal(reply.status, 200);
      assert.equal(reply.text, 'tls /over-tls');
      // Without the CA the peer's certificate is not trusted: it cannot be reached.
      const doubting = await startNode(t, redis, p);
      const refused = await send(doubting.port, { path: '/over-tls' });
      assert.equal(refused.status, 502);
      assert.equal(json(refused).code, 'PEER_UNREACHABLE');
    });

    it('WebSocket upgrades pass through two proxies', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, (_req, res) => res.end('plain'));
      const wss = new WebSocketServer({ server: target.server });
      t.after(() => wss.close());
      wss.on('connection', (ws, req) => {
        ws.send(`hello ${req.url} ${req.headers['x-forwarded-for']}`);
        ws.on('message', (data, isBinary) => {
          if (!isBinary && data.toString() === 'bye') ws.close(4001, 'see you');
          else ws.send(data, { binary: isBinary });
        });
      });
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      const ws = new WebSocket(`ws://127.0.0.1:${a.port}/chat?room=1`, { headers: { 'x-duplexwire-client-id': ID } });
      const messages: string[] = [];
      ws.on('message', (data: Buffer) => messages.push(data.toString()));
      await new Promise<void>((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      });
      const big = 'x'.repeat(2 * 1024 * 1024);
      ws.send('one');
      ws.send(big);
      await waitFor(() => messages.length === 3, 5000, 'echoes');
      assert.equal(messages[0], 'hello /chat?room=1 127.0.0.1');
      assert.equal(messages[1], 'one');
      assert.equal(messages[2], big);
      const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
      ws.send('bye');
      assert.equal(await closed, 4001);
      await waitFor(() => a.proxy.inflight === 0 && b.proxy.inflight === 0, 2000, 'both proxies idle');
      assert.equal(a.proxy.metrics.cluster.forwardedOut, 1);
    });

    it('a forwarded WebSocket upgrade that meets a peer without the agent goes on to the next peer', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, (_req, res) => res.end('plain'));
      const wss = new WebSocketServer({ server: target.server });
      t.after(() => wss.close());
      wss.on('connection', (ws) => ws.send('hello'));
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      const c = await startNode(t, redis, p); // listed as having an agent, has none
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      const [seconds] = (await redis.sendCommand(['TIME'])) as [string, string];
      await redis.sendCommand([
        'HSET',
        `${p}agents:${ID}`,
        `stale ${c.advertise}`,
        `1 ${Number(seconds) * 1000 + 60_000}`,
      ]);
      // B looks busier to A, so C is tried first.
      (a.proxy as unknown as { forwardHost: { peerInflight: Map<string, number> } }).forwardHost.peerInflight.set(
        b.advertise,
        5,
      );
      const ws = new WebSocket(`ws://127.0.0.1:${a.port}/chat`, { headers: { 'x-duplexwire-client-id': ID } });
      const first = await new Promise<string>((resolve, reject) => {
        ws.once('message', (data: Buffer) => resolve(data.toString()));
        ws.once('error', reject);
      });
      assert.equal(first, 'hello');
      assert.equal(c.proxy.metrics.cluster.forwardedIn, 1, 'C was asked first, and had no agent');
      assert.equal(b.proxy.metrics.cluster.forwardedIn, 1);
      ws.close();
    });

    it('a draining proxy leaves the registry and its peers stop routing to it', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, echoHandler);
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      await b.proxy.drain(0);
      await waitRegistered(redis, p, ID, []);
      const reply = await send(a.port);
      assert.equal(reply.status, 503);
      assert.equal(json(reply).code, 'NO_AGENT');
    });

    it('the command line: two proxy processes with --cluster-* (node-redis)', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, echoHandler);
      const secretFile = await tempFile(t, 'secret', `${SECRET}\n`);
      const ports: number[] = [];
      for (let i = 0; i < 2; i++) {
        const probe = createServer();
        ports.push(await listen(probe));
        await closeServer(probe);
      }
      const [portA, portB] = ports as [number, number];
      const start = (port: number) => {
        const cli = spawnCli(t, [
          'tunnel',
          'proxy',
          '--listen',
          `127.0.0.1:${port}`,
          '--insecure',
          '--cluster-redis',
          process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
          '--cluster-advertise',
          `http://127.0.0.1:${port}`,
          '--cluster-secret-file',
          secretFile,
          '--cluster-prefix',
          p,
          '--cluster-ttl',
          '2s',
        ]);
        return cli.line((l) => l.msg === 'listening').then(() => cli);
      };
      await Promise.all([start(portA), start(portB)]);
      const agent = new TunnelAgent({
        proxyUrl: `ws://127.0.0.1:${portB}/_tunnel`,
        id: 'cli-7',
        token: generateToken(),
        target: target.url,
        logger: recordingLogger(),
      });
      t.after(() => agent.close(0));
      await agent.start();
      await waitRegistered(redis, p, 'cli-7', [`http://127.0.0.1:${portB}`]);
      const reply = await send(portA, { path: '/via-a', headers: { 'x-duplexwire-client-id': 'cli-7' } });
      assert.equal(reply.status, 200);
      assert.equal((json(reply) as { url: string }).url, '/via-a');
    });
  });
}
