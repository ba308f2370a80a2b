/**
 * Edge cases of requests forwarded between tunnel proxies, through a real Redis: how each way an
 * exchange can end (the user leaving, a body over the limit, the deadline, a drain) is answered,
 * counted and cleaned up on both proxies, and bodies and upgraded streams arriving whole.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Agent, createServer, type IncomingMessage, request, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { after, describe, it, type TestContext } from 'node:test';
import { REPLAY_LIMIT } from '../../src/apps/tunnel/cluster-forward.ts';
import { LOOKUP_TIMEOUT, REGISTRY_CLOSE_TIMEOUT } from '../../src/apps/tunnel/cluster-registry.ts';
import type { TunnelProxy } from '../../src/apps/tunnel/proxy.ts';
import {
  closeServer,
  fakeField,
  listen,
  type Node,
  startNode,
  waitRegistered,
} from '../fixtures/tunnel-cluster-helpers.ts';
import { ID, json, readBody, send, startAgent, startTarget, upload } from '../fixtures/tunnel-helpers.ts';
import { WebSocket, WebSocketServer } from 'ws';
import { waitFor } from '../helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, uniquePrefix } from '../session/redis.ts';

/** Forwarded requests in flight per peer, as the forwarding proxy counts them. */
function peerInflight(proxy: TunnelProxy): Map<string, number> {
  return (proxy as unknown as { forwardHost: { peerInflight: Map<string, number> } }).forwardHost.peerInflight;
}

/** Answers per status class the proxy counted for its users (as in requests_total{source="user"}). */
function userAnswers(proxy: TunnelProxy): Record<string, number> {
  return Object.fromEntries(proxy.metrics.stats.get(ID)?.statusClasses ?? []);
}

/** Length and SHA-256 of a body, to compare bodies byte for byte. */
function digest(body: Buffer): string {
  return `${body.length} ${createHash('sha256').update(body).digest('hex')}`;
}

/** The outcome of the last logged request. */
function outcomes(node: Node): unknown[] {
  return node.logger.entries.filter((e) => e.message === 'request').map((e) => e.context?.outcome);
}

async function idle(...nodes: Node[]): Promise<void> {
  await waitFor(
    () => nodes.every((n) => n.proxy.inflight === 0 && peerInflight(n.proxy).size === 0),
    3000,
    'every proxy idle, nothing in flight to a peer',
  );
}

/**
 * A chunked POST (no Content-Length) of `total` bytes in 16 KiB blocks; resolves with the status
 * and text of the answer, or `error` when the connection died first.
 */
function chunkedUpload(port: number, total: number): Promise<{ status: number; text: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = request({
      port,
      host: '127.0.0.1',
      method: 'POST',
      headers: { 'x-duplexwire-client-id': ID, 'transfer-encoding': 'chunked' },
    });
    const block = Buffer.alloc(16 * 1024, 'z');
    let sent = 0;
    let answered = false;
    req.on('error', (error) => {
      if (!answered) resolve({ error: error.message });
    });
    req.on('response', (res) => {
      answered = true;
      readBody(res).then(
        (body) => resolve({ status: res.statusCode ?? 0, text: body.toString() }),
        (error: Error) => resolve({ error: error.message }),
      );
    });
    const pump = (): void => {
      while (sent < total && !answered && !req.destroyed) {
        sent += block.length;
        if (!req.write(block)) {
          req.once('drain', pump);
          return;
        }
      }
      if (!req.destroyed) req.end();
    };
    pump();
  });
}

const connected = await connectRedis();
if (connected instanceof Error) {
  redisUnreachable('edge cases of requests forwarded between tunnel proxies', connected);
} else {
  const redis = connected;
  after(async () => {
    await redis.quit();
  });

  describe('edge cases of requests forwarded between tunnel proxies', () => {
    const fresh = (t: TestContext): string => {
      const prefix = uniquePrefix();
      t.after(() => deletePrefix(redis, prefix));
      return prefix;
    };

    /** A without an agent, B and C with the agents of `targetB` and `targetC`, both registered. */
    async function threeProxies(
      t: TestContext,
      p: string,
      targetB: string,
      targetC: string,
    ): Promise<{ a: Node; b: Node; c: Node }> {
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      const c = await startNode(t, redis, p);
      await startAgent(t, b, { target: targetB });
      await startAgent(t, c, { target: targetC });
      await waitRegistered(redis, p, ID, [b.advertise, c.advertise]);
      return { a, b, c };
    }

    /** A forwards to B, which has the agent of `target`. */
    async function pair(t: TestContext, target: string, aOptions = {}, bOptions = {}): Promise<[Node, Node]> {
      const p = fresh(t);
      const a = await startNode(t, redis, p, aOptions);
      const b = await startNode(t, redis, p, bOptions);
      await startAgent(t, b, { target });
      await waitRegistered(redis, p, ID, [b.advertise]);
      return [a, b];
    }

    it('a chunked body over the forwarding proxy’s maxRequestBody: 413, not a peer failure', async (t) => {
      const target = await startTarget(t, (req, res) => {
        readBody(req).then(
          () => res.end('read it all'),
          () => {},
        );
      });
      const [a, b] = await pair(t, target.url, { maxRequestBody: 64 * 1024 }, { maxRequestBody: Infinity });
      const reply = await chunkedUpload(a.port, 1024 * 1024);
      assert.ok('status' in reply, JSON.stringify(reply));
      assert.equal(reply.status, 413);
      assert.equal(JSON.parse(reply.text).code, 'BODY_TOO_LARGE');
      assert.equal(a.proxy.metrics.cluster.peerFailures, 0);
      await idle(a, b);
      assert.deepEqual(userAnswers(a.proxy), { '4xx': 1 });
      assert.deepEqual(outcomes(a), ['body-too-large']);
    });

    it('a user who leaves mid-request-body: counted as gone, not as a peer failure or a 502', async (t) => {
      let received = 0;
      const target = await startTarget(t, (req) => {
        req.on('data', (c: Buffer) => {
          received += c.length;
        });
      });
      const [a, b] = await pair(t, target.url);
      const req = request({
        port: a.port,
        host: '127.0.0.1',
        method: 'POST',
        headers: { 'x-duplexwire-client-id': ID, 'transfer-encoding': 'chunked' },
      });
      req.on('error', () => {});
      req.write(Buffer.alloc(32 * 1024, 'q'));
      await waitFor(() => received >= 32 * 1024, 3000, 'the target got the first bytes');
      req.destroy();
      await idle(a, b);
      assert.equal(a.proxy.metrics.cluster.peerFailures, 0);
      assert.deepEqual(userAnswers(a.proxy), {});
      assert.deepEqual(outcomes(a), ['user-gone']);
    });

    it('a user who leaves mid-response-body: counted as gone, not as a peer failure', async (t) => {
      const target = await startTarget(t, (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('first part');
      });
      const [a, b] = await pair(t, target.url);
      await new Promise<void>((resolve) => {
        const req = request({ port: a.port, host: '127.0.0.1', headers: { 'x-duplexwire-client-id': ID } });
        req.on('error', () => resolve());
        req.on('response', (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.end();
      });
      await idle(a, b);
      assert.equal(a.proxy.metrics.cluster.peerFailures, 0);
      assert.deepEqual(userAnswers(a.proxy), { '2xx': 1 });
      assert.deepEqual(outcomes(a), ['user-gone']);
    });

    it('an empty chunked body goes on to the next peer after a miss', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, (req, res) => {
        readBody(req).then((body) => res.end(`got ${body.length}`));
      });
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      const c = await startNode(t, redis, p); // listed as having an agent, has none
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      await fakeField(redis, p, ID, 'stale', c.advertise);
      // B looks busier to A, so C is tried first.
      peerInflight(a.proxy).set(b.advertise, 5);
      const reply = await send(a.port, {
        method: 'POST',
        headers: { 'x-duplexwire-client-id': ID, 'transfer-encoding': 'chunked', 'x-duplexwire-request-timeout': '3s' },
        body: '',
        chunked: true,
      });
      assert.equal(c.proxy.metrics.cluster.forwardedIn, 1, 'C was asked first, and had no agent');
      assert.equal(reply.status, 200, reply.text);
      assert.equal(reply.text, 'got 0');
      peerInflight(a.proxy).delete(b.advertise);
      await idle(a, b, c);
    });
    /**
     * A, B with the agent of a target answering the length and SHA-256 of each body it gets, and
     * C, listed for the id, tried first: a proxy without an agent (it answers a miss), or `fake`.
     */
    async function missFirst(
      t: TestContext,
      fake?: (req: IncomingMessage, res: ServerResponse) => void,
    ): Promise<{ a: Node; b: Node; bodies: string[] }> {
      const p = fresh(t);
      const bodies: string[] = [];
      const target = await startTarget(t, (req, res) => {
        readBody(req).then((body) => {
          bodies.push(digest(body));
          res.end(digest(body));
        });
      });
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      let c: string;
      if (fake === undefined) {
        c = (await startNode(t, redis, p)).advertise;
      } else {
        const server = createServer(fake);
        c = `http://127.0.0.1:${await listen(server)}`;
        t.after(() => closeServer(server));
      }
      await fakeField(redis, p, ID, 'stale', c);
      // B looks busier to A, so C is tried first.
      peerInflight(a.proxy).set(b.advertise, 5);
      return { a, b, bodies };
    }

    /** Sends `pieces` as one POST body, each after the last was answered by `between`. */
    function post(
      port: number,
      pieces: Buffer[],
      chunked: boolean,
      between: () => Promise<void> = async () => {},
    ): Promise<{ status: number; text: string }> {
      const total = pieces.reduce((n, piece) => n + piece.length, 0);
      const req = request({
        host: '127.0.0.1',
        port,
        method: 'POST',
        headers: {
          'x-duplexwire-client-id': ID,
          'x-duplexwire-request-timeout': '5s',
          ...(chunked ? { 'transfer-encoding': 'chunked' } : { 'content-length': String(total) }),
        },
        agent: false,
      });
      const reply = new Promise<{ status: number; text: string }>((resolve, reject) => {
        req.on('error', reject);
        req.on('response', (res) => {
          readBody(res).then((body) => resolve({ status: res.statusCode ?? 0, text: `${body}` }), reject);
        });
      });
      void (async () => {
        for (const [i, piece] of pieces.entries()) {
          if (i > 0) await between();
          req.write(piece);
        }
        req.end();
      })().catch((error: Error) => req.destroy(error));
      return reply;
    }

    it('a POST body (Content-Length, and chunked) goes on whole to the next peer after a miss', async (t) => {
      const { a, b, bodies } = await missFirst(t);
      const body = randomBytes(40 * 1024);
      const whole = await post(a.port, [body], false);
      assert.equal(whole.status, 200, whole.text);
      assert.equal(whole.text, digest(body));

      // Chunked, in three pieces: C answers its miss on the head (with the first piece), and the
      // next ones are still to come from the user, to go to B after the first one again.
      const pieces = [randomBytes(3000), randomBytes(20 * 1024), randomBytes(7)];
      const misses = () => a.logger.entries.filter((e) => e.message.startsWith('peer proxy has no agent')).length;
      const chunked = await post(a.port, pieces, true, () =>
        waitFor(() => misses() === 2, 3000, 'C’s miss of the chunked body'),
      );
      assert.equal(chunked.status, 200, chunked.text);
      assert.equal(chunked.text, digest(Buffer.concat(pieces)));
      assert.deepEqual(bodies, [digest(body), digest(Buffer.concat(pieces))], 'each body reached the target once');
      assert.equal(b.proxy.metrics.cluster.forwardedIn, 2);
      assert.equal(a.proxy.metrics.stats.get(ID)?.bytesIn, body.length + 3000 + 20 * 1024 + 7, 'replays not counted');
      peerInflight(a.proxy).delete(b.advertise);
      await idle(a, b);
    });

    it('a POST body over the replay limit is not sent again after a miss: the miss is the answer', async (t) => {
      // C reads the whole body before it misses, so that A has sent more than it keeps.
      let taken = 0;
      const { a, b, bodies } = await missFirst(t, (req, res) => {
        readBody(req).then((body) => {
          taken = body.length;
          res.writeHead(503, { 'x-duplexwire-cluster-miss': 'NO_AGENT', 'content-type': 'application/json' });
          res.end('{"code":"NO_AGENT","message":"no agent"}');
        });
      });
      const over = randomBytes(REPLAY_LIMIT + 1);
      const reply = await post(a.port, [over], true);
      assert.equal(reply.status, 503, reply.text);
      assert.equal(taken, over.length);
      assert.deepEqual(bodies, [], 'B was not tried');
      assert.equal(b.proxy.metrics.cluster.forwardedIn, 0);

      // Within the limit, the same peer's miss is retried at B.
      const within = randomBytes(REPLAY_LIMIT);
      const retried = await post(a.port, [within], true);
      assert.equal(retried.status, 200, retried.text);
      assert.equal(retried.text, digest(within));
      peerInflight(a.proxy).delete(b.advertise);
      await idle(a, b);
    });

    it('the bytes kept for a replay are dropped when the response head comes', async (t) => {
      const [a, b] = await pair(
        t,
        (
          await startTarget(t, (req, res) => {
            // The head (and a first piece: the agent sends a head with one) first, then the
            // body's length once it all came.
            res.write('started, ');
            readBody(req).then((body) => res.end(`got ${body.length}`));
          })
        ).url,
      );
      const relays = (a.proxy as unknown as { active: Set<{ relay?: { kept?: Buffer[] } }> }).active;
      let head = false;
      const req = request({
        host: '127.0.0.1',
        port: a.port,
        method: 'POST',
        headers: { 'x-duplexwire-client-id': ID, 'transfer-encoding': 'chunked' },
        agent: false,
      });
      const reply = new Promise<string>((resolve, reject) => {
        req.on('error', reject);
        req.on('response', (res) => {
          head = true;
          readBody(res).then((body) => resolve(`${body}`), reject);
        });
      });
      req.write(Buffer.alloc(1024, 'k'));
      await waitFor(() => head, 3000, 'the response head');
      const [exchange] = [...relays];
      assert.ok(exchange?.relay !== undefined, 'the forwarded exchange is in flight');
      assert.equal(exchange.relay.kept, undefined, 'nothing kept after the head');
      req.end(Buffer.alloc(1024, 'k'));
      assert.equal(await reply, 'started, got 2048');
      await idle(a, b);
    });

    it('a peer that took the body and never answers: 504 at the deadline, not 502', async (t) => {
      const p = fresh(t);
      // Not a proxy: it reads the body and says nothing.
      const hung = await startTarget(t, (req) => {
        req.resume();
      });
      const a = await startNode(t, redis, p, { requestTimeout: 300 });
      await fakeField(redis, p, ID, 'hung', hung.url);
      const started = performance.now();
      const reply = await send(a.port, { method: 'POST', body: 'sent whole' });
      const elapsed = performance.now() - started;
      assert.equal(reply.status, 504, reply.text);
      assert.equal(json(reply).code, 'AGENT_TIMEOUT');
      assert.ok(elapsed >= 300 && elapsed < 2000, `after ${elapsed} ms`);
      assert.equal(a.proxy.metrics.cluster.peerFailures, 1, 'the peer failed to answer its deadline');
      assert.deepEqual(outcomes(a), ['timeout']);
      await idle(a);
    });
    it('a peer lost after it took a bodiless POST: 502, never performed again on another peer', async (t) => {
      const p = fresh(t);
      const hits = { b: 0, c: 0 };
      let b: Node | undefined;
      // B's target takes the request, then B's connection from A is cut: B took it, no answer came.
      const targetB = await startTarget(t, (req) => {
        hits.b++;
        req.resume();
        setTimeout(() => b?.http.closeAllConnections(), 50);
      });
      const targetC = await startTarget(t, (_req, res) => {
        hits.c++;
        res.end('again');
      });
      const nodes = await threeProxies(t, p, targetB.url, targetC.url);
      const { a, c } = nodes;
      b = nodes.b;
      // C looks busier to A, so B is tried first.
      peerInflight(a.proxy).set(c.advertise, 5);
      const reply = await send(a.port, { method: 'POST', path: '/charge', headers: { 'x-duplexwire-client-id': ID } });
      peerInflight(a.proxy).delete(c.advertise);
      assert.equal(hits.b, 1);
      assert.equal(hits.c, 0, 'performed once only');
      assert.equal(reply.status, 502, reply.text);
      assert.equal(json(reply).code, 'PEER_UNREACHABLE');
      await idle(a);
    });

    it('a peer lost after it took a GET: the GET goes on to the next peer (idempotent)', async (t) => {
      const p = fresh(t);
      let b: Node | undefined;
      const targetB = await startTarget(t, () => {
        setTimeout(() => b?.http.closeAllConnections(), 50);
      });
      const targetC = await startTarget(t, (_req, res) => res.end('from C'));
      const nodes = await threeProxies(t, p, targetB.url, targetC.url);
      const { a, c } = nodes;
      b = nodes.b;
      peerInflight(a.proxy).set(c.advertise, 5);
      const reply = await send(a.port, { path: '/read' });
      peerInflight(a.proxy).delete(c.advertise);
      assert.equal(reply.status, 200, reply.text);
      assert.equal(reply.text, 'from C');
      await idle(a);
    });
    it('closing either proxy with forwarded requests in flight ends them on both', async (t) => {
      const closes: string[] = [];
      const target = await startTarget(t, (req) => {
        req.resume();
        req.socket.once('close', () => closes.push(req.url ?? ''));
      });
      const p = fresh(t);
      const a = await startNode(t, redis, p);
      const b = await startNode(t, redis, p);
      const a2 = await startNode(t, redis, p);
      await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      // The forwarding proxy closes: its user, still waiting for the head, gets 503 DRAIN_TIMEOUT,
      // the peer and the target see it go.
      const cut = send(a.port, { path: '/a-closes', method: 'POST', body: 'x' });
      await waitFor(() => b.proxy.inflight === 1, 2000, 'forwarded to B');
      const started = performance.now();
      await a.proxy.close();
      assert.ok(performance.now() - started < 1500);
      const answer = await cut;
      assert.equal(answer.status, 503);
      assert.equal(json(answer).code, 'DRAIN_TIMEOUT');
      assert.equal(answer.headers.connection, 'close');
      await waitFor(() => closes.includes('/a-closes'), 2000, 'the target saw the cancel');
      await idle(a, b);
      // The receiving proxy closes: its 503 DRAIN_TIMEOUT reaches the forwarding proxy's user at
      // once, as it is (no miss: the agent may have performed the request, no other peer gets it).
      const lost = send(a2.port, { path: '/b-closes', method: 'POST', body: 'x' });
      await waitFor(() => b.proxy.inflight === 1, 2000, 'forwarded to B');
      await b.proxy.close();
      const reply = await lost;
      assert.equal(reply.status, 503, reply.text);
      assert.equal(json(reply).code, 'DRAIN_TIMEOUT');
      assert.equal(a2.proxy.metrics.cluster.peerFailures, 0);
      await idle(a2, b);
    });

    it('a proxy closes while Redis does not answer (its fields expire by themselves)', {
      timeout: 10_000,
    }, async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, (_req, res) => res.end('ok'));
      let hang = false;
      const client = {
        sendCommand: (args: string[]) => (hang ? new Promise<never>(() => {}) : redis.sendCommand(args)),
      };
      const b = await startNode(t, client, p);
      // Upgrade sockets are not the server's to close: without an answer one would stay open.
      const upgrades: Duplex[] = [];
      b.http.on('upgrade', (_req, socket: Duplex) => upgrades.push(socket));
      const agent = await startAgent(t, b, { target: target.url });
      await waitRegistered(redis, p, ID, [b.advertise]);
      // Redis goes quiet (a network partition, or node-redis queueing commands while offline).
      hang = true;
      // The write of the agent's departure hangs.
      await agent.close(0);
      const started = performance.now();
      const closed = b.proxy.close();
      // The agents' transport has stopped while the registry is still being left: an agent that
      // connects now is told 503, not left waiting for an answer.
      await new Promise((resolve) => setTimeout(resolve, 300));
      const answer = await new Promise<string>((resolve) => {
        const socket = connect(b.port, '127.0.0.1');
        socket.setTimeout(1000, () => {
          socket.destroy();
          resolve('no answer');
        });
        let text = '';
        socket.on('data', (c: Buffer) => {
          text += c.toString('latin1');
        });
        socket.on('close', () => resolve(text.split('\r\n')[0] ?? ''));
        socket.on('error', () => {});
        socket.write(
          'GET /_tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
            'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
        );
      });
      for (const socket of upgrades) socket.destroy();
      assert.match(answer, /^HTTP\/1\.1 503 /);
      await closed;
      const elapsed = performance.now() - started;
      assert.ok(elapsed < REGISTRY_CLOSE_TIMEOUT + 1000, `closed after ${elapsed} ms`);
    });
    it('a lookup Redis does not answer: 503 CLUSTER_UNAVAILABLE within LOOKUP_TIMEOUT, not 504 at the deadline', {
      timeout: 15_000,
    }, async (t) => {
      const p = fresh(t);
      let hang = false;
      const client = {
        sendCommand: (args: string[]) => (hang ? new Promise<never>(() => {}) : redis.sendCommand(args)),
      };
      const a = await startNode(t, client, p);
      hang = true;
      const started = performance.now();
      const reply = await send(a.port, {
        headers: { 'x-duplexwire-client-id': ID, 'x-duplexwire-request-timeout': '10s' },
      });
      const elapsed = performance.now() - started;
      assert.equal(reply.status, 503);
      assert.equal(json(reply).code, 'CLUSTER_UNAVAILABLE');
      assert.ok(elapsed >= LOOKUP_TIMEOUT - 100 && elapsed < LOOKUP_TIMEOUT + 2000, `answered after ${elapsed} ms`);
      assert.ok(a.proxy.metrics.cluster.registryErrors >= 1);
    });

    it('a body over the receiving proxy’s maxRequestBody: its 413 reaches the user, not a 502', async (t) => {
      const target = await startTarget(t, (req, res) => {
        readBody(req).then(
          () => res.end('read it all'),
          () => {},
        );
      });
      const [a, b] = await pair(t, target.url, { maxRequestBody: Infinity }, { maxRequestBody: 64 * 1024 });
      const reply = await chunkedUpload(a.port, 1024 * 1024);
      assert.ok('status' in reply, JSON.stringify(reply));
      assert.equal(reply.status, 413);
      assert.equal(JSON.parse(reply.text).code, 'BODY_TOO_LARGE');
      await idle(a, b);
      // Announced by Content-Length: refused by B before it reads any of it.
      const announced = await upload(a.port, Buffer.alloc(64 * 1024, 'y'), 1024 * 1024);
      assert.equal(JSON.parse(announced).code, 'BODY_TOO_LARGE');
      assert.equal(a.proxy.metrics.cluster.peerFailures, 0);
      await idle(a, b);
    });

    it('a 413 relayed from the receiving proxy closes the user’s connection, as one of the proxy’s own does', async (t) => {
      const target = await startTarget(t, (req, res) => {
        readBody(req).then(
          () => res.end('read it all'),
          () => {},
        );
      });
      const [a, b] = await pair(t, target.url, { maxRequestBody: Infinity }, { maxRequestBody: 1024 });
      // Over B's limit, and not the end of the body: the user is still sending it.
      const answer = await new Promise<{ text: string; closed: boolean }>((resolve) => {
        const socket = connect(a.port, '127.0.0.1');
        let text = '';
        const timer = setTimeout(() => {
          socket.destroy();
          resolve({ text, closed: false });
        }, 5000);
        socket.on('data', (c: Buffer) => {
          text += c.toString('latin1');
        });
        socket.on('close', () => {
          clearTimeout(timer);
          resolve({ text, closed: true });
        });
        socket.on('error', () => {});
        const block = 'x'.repeat(4096);
        socket.write(
          `POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nx-duplexwire-client-id: ${ID}\r\nTransfer-Encoding: chunked\r\n\r\n` +
            `${block.length.toString(16)}\r\n${block}\r\n`,
        );
      });
      assert.match(answer.text, /^HTTP\/1\.1 413 /);
      assert.match(answer.text, /\r\nconnection: close\r\n/i);
      assert.match(answer.text, /"code":"BODY_TOO_LARGE"/);
      assert.ok(answer.closed, `the user's connection is still open after: ${answer.text}`);
      assert.equal(a.proxy.metrics.cluster.peerFailures, 0);
      // A fresh connection is served as usual.
      const next = await send(a.port, { method: 'POST', body: 'small' });
      assert.equal(next.status, 200);
      assert.equal(next.text, 'read it all');
      await idle(a, b);
    });

    it('HEAD, 204 and 304 through two proxies, one after the other on one connection', async (t) => {
      const target = await startTarget(t, (req, res) => {
        if (req.url === '/204') res.writeHead(204).end();
        else if (req.url === '/304') res.writeHead(304, { etag: '"x"' }).end();
        else
          res
            .writeHead(200, { 'content-length': '11', 'content-type': 'text/plain' })
            .end(req.method === 'HEAD' ? undefined : 'hello world');
      });
      const [a, b] = await pair(t, target.url);
      const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });
      t.after(() => keepAlive.destroy());
      const one = (method: string, path: string) =>
        new Promise<{ status: number; body: string; length: string | undefined }>((resolve, reject) => {
          const req = request({
            port: a.port,
            host: '127.0.0.1',
            method,
            path,
            agent: keepAlive,
            headers: { 'x-duplexwire-client-id': ID },
          });
          req.on('error', reject);
          req.on('response', (res) => {
            readBody(res).then(
              (body) =>
                resolve({ status: res.statusCode ?? 0, body: body.toString(), length: res.headers['content-length'] }),
              reject,
            );
          });
          req.end();
        });
      assert.deepEqual(await one('HEAD', '/'), { status: 200, body: '', length: '11' });
      assert.deepEqual(await one('GET', '/204'), { status: 204, body: '', length: undefined });
      assert.deepEqual(await one('GET', '/304'), { status: 304, body: '', length: undefined });
      assert.deepEqual(await one('GET', '/'), { status: 200, body: 'hello world', length: '11' });
      await idle(a, b);
    });

    it('200 requests at once through two proxies', async (t) => {
      const target = await startTarget(t, (req, res) => {
        setTimeout(() => res.end(req.url), 20);
      });
      const [a, b] = await pair(t, target.url);
      const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => send(a.port, { path: `/${i}` })));
      assert.deepEqual(
        replies.map((r) => `${r.status} ${r.text}`),
        replies.map((_, i) => `200 /${i}`),
      );
      assert.equal(b.proxy.metrics.cluster.refused, 0);
      await idle(a, b);
    });

    it('forwarded WebSocket upgrades end on both proxies whichever side goes', async (t) => {
      const target = await startTarget(t, (_req, res) => res.end('plain'));
      const wss = new WebSocketServer({ server: target.server });
      t.after(() => wss.close());
      wss.on('connection', (ws, req) => {
        if (req.url === '/target-closes') setTimeout(() => ws.close(4002, 'bye'), 50);
        if (req.url === '/target-dies') setTimeout(() => ws.terminate(), 50);
        ws.on('message', (data) => ws.send(data));
      });
      const [a, b] = await pair(t, target.url);
      for (const path of ['/user-closes', '/user-dies', '/target-closes', '/target-dies']) {
        const ws = new WebSocket(`ws://127.0.0.1:${a.port}${path}`, { headers: { 'x-duplexwire-client-id': ID } });
        ws.on('error', () => {});
        await new Promise<void>((resolve, reject) => {
          ws.once('open', resolve);
          ws.once('unexpected-response', () => reject(new Error('refused')));
        });
        const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
        if (path === '/user-closes') ws.close(1000);
        if (path === '/user-dies') ws.terminate();
        await closed;
        await idle(a, b);
      }
    });

    it('the registry: written once Redis answers again, and after SCRIPT FLUSH', async (t) => {
      const p = fresh(t);
      const target = await startTarget(t, (_req, res) => res.end('ok'));
      let down = true;
      const flaky = {
        sendCommand: (args: string[]) =>
          down ? Promise.reject(new Error('connection refused')) : redis.sendCommand(args),
      };
      const a = await startNode(t, redis, p);
      const b = await startNode(t, flaky, p);
      await startAgent(t, b, { target: target.url });
      assert.ok(b.proxy.metrics.cluster.registryErrors >= 1);
      assert.equal((await send(a.port)).status, 503);
      down = false;
      // Renewed every third of the ttl.
      await waitRegistered(redis, p, ID, [b.advertise]);
      assert.equal((await send(a.port)).status, 200);
      await redis.sendCommand(['SCRIPT', 'FLUSH']);
      await new Promise((resolve) => setTimeout(resolve, 1100)); // past the lookup cache
      assert.equal((await send(a.port)).status, 200);
      await new Promise((resolve) => setTimeout(resolve, 1000)); // past the ttl: renewed
      await waitRegistered(redis, p, ID, [b.advertise]);
      assert.equal((await send(a.port)).status, 200);
    });
  });
}
