/**
 * The agent's own limit of requests in flight (`maxInflight`): the proxy learns it at the agent's
 * upgrade and routes no more than it; a proxy that does not hear it (one from before agents
 * announced it, simulated by taking the header off the upgrade request) still cannot push the
 * agent past it: the agent refuses, unperformed, and the proxy retries on another agent of the id
 * or answers 503 AGENTS_BUSY, never 502. Counted at the targets, which hold every request until
 * the test releases them: no timing in any assertion.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { after, type TestContext, test } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { TunnelAgent } from '../../src/apps/tunnel/agent.ts';
import { AGENT_MAX_INFLIGHT_HEADER } from '../../src/apps/tunnel/constants.ts';
import type { TunnelProxyOptions } from '../../src/apps/tunnel/proxy.ts';
import { TUNNEL_PROTOCOL_VERSION, tunnelProtocol } from '../../src/apps/tunnel/wire.ts';
import { Client, InvalidArgumentError } from '../../src/index.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { startNode, waitRegistered } from '../fixtures/tunnel-cluster-helpers.ts';
import {
  echoHandler,
  ID,
  json,
  type Reply,
  type StartedProxy,
  send,
  spawnAgent,
  spawnCli,
  startAgent,
  startProxy,
  startTarget,
  type Target,
  TOKEN,
} from '../fixtures/tunnel-helpers.ts';
import { recordingLogger, waitFor } from '../helpers.ts';
import { connectRedis, deletePrefix, redisUnreachable, uniquePrefix } from '../session/redis.ts';

interface GatedTarget extends Target {
  /** Requests at the target now, the most at once, and the path of every one it got. */
  readonly seen: { now: number; max: number; paths: string[] };
  /** Answers every request held, and every later one at once. */
  release(): void;
}

/**
 * A target that holds each request until `release()`, counting how many it has at once. One for
 * a path under `/over` (a request that must never get here) is answered at once: should it get
 * here, the test fails on its answer rather than waiting for it.
 */
async function gatedTarget(t: TestContext, name: string): Promise<GatedTarget> {
  const seen = { now: 0, max: 0, paths: [] as string[] };
  let open = false;
  const held: Array<() => void> = [];
  const release = (): void => {
    open = true;
    for (const answer of held.splice(0)) answer();
  };
  // First of the test's hooks (they run in order): a test that failed early leaves nothing held.
  t.after(release);
  const target = await startTarget(t, (req, res) => {
    seen.now++;
    seen.max = Math.max(seen.max, seen.now);
    seen.paths.push(req.url ?? '');
    res.once('close', () => seen.now--);
    req.resume();
    const answer = (): void => {
      res.end(name);
    };
    if (open || req.url?.startsWith('/over')) answer();
    else held.push(answer);
  });
  return Object.assign(target, { seen, release });
}

/**
 * Makes the proxy on `server` deaf to the limits agents announce, as a proxy from before they
 * did: the header is gone before the proxy sees the upgrade request.
 */
function deafen(server: Server): void {
  server.prependListener('upgrade', (req: IncomingMessage) => {
    delete req.headers[AGENT_MAX_INFLIGHT_HEADER];
  });
}

/** A proxy deaf to the agents' limits (see `deafen`). */
function deafProxy(t: TestContext, options: TunnelProxyOptions = {}): Promise<StartedProxy> {
  const http = createServer({ requestTimeout: 0 });
  deafen(http);
  return startProxy(t, options, http);
}

const REFUSED = 'request refused: at maxInflight';

/** How many requests the agent logging to `logger` refused at its limit. */
function refusals(logger: ReturnType<typeof recordingLogger>): number {
  return logger.entries.filter((e) => e.message === REFUSED).length;
}

function assertBusy(reply: Reply, what: string): void {
  assert.equal(reply.status, 503, `${what}: ${reply.status} ${reply.text}`);
  assert.equal(json(reply).code, 'AGENTS_BUSY', what);
}

/** Paths `/<prefix>0` ... sorted as the targets' records are compared. */
function paths(prefix: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `/${prefix}${i}`).sort();
}

test('the proxy routes an agent no more than its maxInflight: the rest go to the other agent, each performed once', async (t) => {
  const a = await gatedTarget(t, 'a');
  const b = await gatedTarget(t, 'b');
  const proxy = await startProxy(t);
  const logger = recordingLogger();
  await startAgent(t, proxy, { target: a.url, maxInflight: 2, logger });
  await startAgent(t, proxy, { target: b.url });
  assert.deepEqual(
    proxy.proxy
      .agents(ID)
      .map((e) => e.maxInflight)
      .sort((x, y) => x - y),
    [2, 1024],
    'the lower of the agent’s limit and the proxy’s (1024)',
  );
  const pending = Array.from({ length: 8 }, (_, i) => send(proxy.port, { path: `/r${i}` }));
  await waitFor(() => a.seen.paths.length + b.seen.paths.length === 8, 5000, 'every request at a target');
  assert.equal(a.seen.max, 2);
  assert.equal(b.seen.paths.length, 6);
  assert.equal(refusals(logger), 0, 'the proxy never sent the agent past its limit');
  a.release();
  b.release();
  for (const reply of await Promise.all(pending)) assert.equal(reply.status, 200);
  assert.deepEqual([...a.seen.paths, ...b.seen.paths].sort(), paths('r', 8), 'each performed once');
});

test('an agent alone at its limit: the proxy answers 503 AGENTS_BUSY without sending it, and routes again once one ended', async (t) => {
  const a = await gatedTarget(t, 'a');
  const proxy = await startProxy(t);
  const logger = recordingLogger();
  await startAgent(t, proxy, { target: a.url, maxInflight: 2, logger });
  const held = [send(proxy.port, { path: '/h0' }), send(proxy.port, { path: '/h1' })];
  await waitFor(() => a.seen.paths.length === 2, 5000, 'two at the target');
  assertBusy(await send(proxy.port, { path: '/over' }), 'a GET');
  assertBusy(await send(proxy.port, { path: '/over', method: 'POST', body: 'x', chunked: true }), 'a chunked POST');
  assert.deepEqual(a.seen.paths.sort(), ['/h0', '/h1'], 'the target never got them');
  assert.equal(refusals(logger), 0, 'nor the agent');
  assert.equal(proxy.proxy.agents(ID)[0]!.inflight, 2);
  a.release();
  for (const reply of await Promise.all(held)) assert.equal(reply.status, 200);
  assert.equal((await send(proxy.port, { path: '/after' })).status, 200);
});

test('a proxy deaf to the limit cannot push the agent past it: refused unperformed, answered 503 AGENTS_BUSY, never 502', async (t) => {
  const a = await gatedTarget(t, 'a');
  const proxy = await deafProxy(t);
  const logger = recordingLogger();
  await startAgent(t, proxy, { target: a.url, maxInflight: 2, logger });
  assert.equal(proxy.proxy.agents(ID)[0]!.maxInflight, 1024, 'the proxy did not hear the agent’s limit');
  const held = [send(proxy.port, { path: '/h0' }), send(proxy.port, { path: '/h1' })];
  await waitFor(() => a.seen.paths.length === 2, 5000, 'two at the target');
  // Without a body, with one inside the head, and streamed (chunks may follow the refused head).
  assertBusy(await send(proxy.port, { path: '/over' }), 'a GET');
  assertBusy(await send(proxy.port, { path: '/over', method: 'POST', body: 'small' }), 'an inline POST');
  assertBusy(await send(proxy.port, { path: '/over', method: 'POST', body: 'x', chunked: true }), 'a chunked POST');
  assert.equal(refusals(logger), 3);
  assert.equal(a.seen.max, 2);
  assert.deepEqual(a.seen.paths.sort(), ['/h0', '/h1'], 'none of the refused reached the target');
  // Refused for now, not for good: the agent is still routed to once a request ended.
  assert.equal(proxy.proxy.agents(ID)[0]!.draining, false);
  a.release();
  for (const reply of await Promise.all(held)) assert.equal(reply.status, 200);
  assert.equal((await send(proxy.port, { path: '/after' })).status, 200);
});

test('a proxy deaf to the limit retries what the agent refused on another agent of the id: each request performed once', async (t) => {
  const a = await gatedTarget(t, 'a');
  const b = await gatedTarget(t, 'b');
  const proxy = await deafProxy(t);
  const logger = recordingLogger();
  await startAgent(t, proxy, { target: a.url, maxInflight: 2, logger });
  await startAgent(t, proxy, { target: b.url });
  // Least in flight: the proxy keeps choosing the small agent whenever it holds fewer than the
  // other one, so it is sent past its limit again and again.
  const pending = Array.from({ length: 8 }, (_, i) =>
    send(proxy.port, { path: `/r${i}`, ...(i % 2 === 0 ? {} : { method: 'POST', body: `body ${i}` }) }),
  );
  await waitFor(() => a.seen.paths.length + b.seen.paths.length === 8, 5000, 'every request at a target');
  assert.equal(a.seen.max, 2);
  assert.equal(a.seen.paths.length, 2);
  assert.ok(refusals(logger) > 0, 'the agent refused some');
  a.release();
  b.release();
  for (const reply of await Promise.all(pending)) assert.equal(reply.status, 200);
  assert.deepEqual([...a.seen.paths, ...b.seen.paths].sort(), paths('r', 8), 'each performed once');
});

test('a WebSocket passed through counts as a request in flight while it is open, for the proxy and for the agent', async (t) => {
  for (const deaf of [false, true]) {
    const target = await startTarget(t, (_req, res) => res.end('plain'));
    const wss = new WebSocketServer({ server: target.server });
    wss.on('connection', (ws) => ws.on('message', (data) => ws.send(data)));
    const proxy = deaf ? await deafProxy(t) : await startProxy(t);
    const logger = recordingLogger();
    const agent = await startAgent(t, proxy, { target: target.url, maxInflight: 1, logger });
    const url = `ws://127.0.0.1:${proxy.port}/chat`;
    const users: WebSocket[] = [];
    try {
      const ws = new WebSocket(url, { headers: { 'x-duplexwire-client-id': ID } });
      users.push(ws);
      const echoed = new Promise<string>((resolve) => ws.once('message', (data: Buffer) => resolve(data.toString())));
      await new Promise<void>((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      });
      ws.send('ping');
      assert.equal(await echoed, 'ping');
      assert.equal(agent.inflight, 1);
      assertBusy(await send(proxy.port), `an HTTP request beside the open WebSocket (deaf: ${deaf})`);
      // A second WebSocket is refused the same way, on its raw socket.
      const second = new WebSocket(url, { headers: { 'x-duplexwire-client-id': ID } });
      users.push(second);
      const refused = await new Promise<{ status: number; code?: unknown }>((resolve) => {
        second.on('error', () => {});
        second.once('open', () => resolve({ status: 101 }));
        second.once('unexpected-response', (_req, res: IncomingMessage) => {
          let text = '';
          res.on('data', (chunk: Buffer) => {
            text += chunk;
          });
          res.once('end', () =>
            resolve({ status: res.statusCode ?? 0, code: (JSON.parse(text) as { code: unknown }).code }),
          );
        });
      });
      assert.deepEqual(refused, { status: 503, code: 'AGENTS_BUSY' }, `a second WebSocket (deaf: ${deaf})`);
      // A proxy that knows the limit sends neither; a deaf one both, and the agent refuses them.
      assert.equal(refusals(logger), deaf ? 2 : 0);
      ws.close();
      await waitFor(
        () => agent.inflight === 0 && proxy.proxy.agents(ID)[0]!.inflight === 0,
        5000,
        'the WebSocket ended on both ends',
      );
      assert.equal((await send(proxy.port)).status, 200, `after the WebSocket closed (deaf: ${deaf})`);
    } finally {
      // Upgraded sockets would keep the target's server from closing.
      for (const ws of [...users, ...wss.clients]) ws.terminate();
      wss.close();
    }
  }
});

test('the proxy takes the lower of its limit and the agent’s; an agent announcing none, or nonsense, gets the proxy’s', async (t) => {
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t, { maxInflightPerAgent: 3 });
  await startAgent(t, proxy, { target: target.url, maxInflight: 50 });
  await startAgent(t, proxy, { target: target.url, maxInflight: 2 });
  const deaf = await deafProxy(t, { maxInflightPerAgent: 5 });
  await startAgent(t, deaf, { target: target.url, maxInflight: 2 });
  const limits = (): number[] =>
    proxy.proxy
      .agents(ID)
      .map((e) => e.maxInflight)
      .sort((x, y) => x - y);
  assert.deepEqual(limits(), [2, 3]);
  assert.equal(deaf.proxy.agents(ID)[0]!.maxInflight, 5, 'no announcement: the proxy’s limit');
  // A header that is not a positive decimal is ignored (a later agent may say more in it).
  const odd = new Client(proxy.agentsUrl, {
    transport: wsClientTransport(),
    headers: { 'x-duplexwire-agent-id': ID, authorization: `Bearer ${TOKEN}`, [AGENT_MAX_INFLIGHT_HEADER]: '0x10' },
    protocols: [tunnelProtocol(TUNNEL_PROTOCOL_VERSION)],
    reconnect: false,
    logger: recordingLogger(),
  });
  t.after(() => odd.close());
  await odd.connect();
  await waitFor(() => proxy.proxy.agents(ID).length === 3, 2000, 'the third agent registered');
  assert.deepEqual(limits(), [2, 3, 3]);
  assert.ok(proxy.logger.entries.some((e) => e.level === 'warn' && /invalid limit/.test(e.message)));
  // The agent's own option: an integer in 1..16384.
  for (const maxInflight of [0, 1.5, 16_385, Number.NaN]) {
    assert.throws(
      () => new TunnelAgent({ proxyUrl: proxy.agentsUrl, id: ID, token: TOKEN, target: target.url, maxInflight }),
      (error: unknown) => error instanceof InvalidArgumentError && /maxInflight/.test(error.message),
      String(maxInflight),
    );
  }
});

test('duplexwire tunnel agent --max-inflight: announced to the proxy; a bad value is a command-line mistake (exit 2)', async (t) => {
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t);
  await spawnAgent(t, proxy, target.url, { args: ['--max-inflight', '3'] });
  assert.equal(proxy.proxy.agents(ID)[0]!.maxInflight, 3);
  // Decimal digits only: Number() would take 0x10 (16) and 1e3 (1000).
  for (const value of ['lots', '0x10', '1e3']) {
    const bad = spawnCli(
      t,
      ['tunnel', 'agent', '--proxy', proxy.agentsUrl, '--id', ID, '--target', target.url, '--max-inflight', value],
      { DUPLEXWIRE_TUNNEL_TOKEN: TOKEN },
    );
    assert.equal(await bad.exited, 2, value);
    const said = `--max-inflight must be an integer in 1..16384, got "${value}"`;
    assert.ok(
      bad.logs.some((l) => typeof l.raw === 'string' && l.raw.includes(said)),
      JSON.stringify(bad.logs),
    );
  }
});

const connected = await connectRedis();
if (connected instanceof Error) {
  redisUnreachable('the agent limit across proxies sharing agents over Redis', connected);
} else {
  const redis = connected;
  after(() => redis.quit());
  test('a peer whose agent is at its limit answers a miss: the forwarding proxy tries the next peer, or answers 503 AGENTS_BUSY', async (t) => {
    const prefix = uniquePrefix();
    t.after(() => deletePrefix(redis, prefix));
    const a = await gatedTarget(t, 'a');
    const front = await startNode(t, redis, prefix);
    // The peer that has the agent does not hear its limit: the agent's own refusal is the miss.
    const peer = await startNode(t, redis, prefix);
    deafen(peer.http);
    await startAgent(t, peer, { target: a.url, maxInflight: 1 });
    await waitRegistered(redis, prefix, ID, [peer.advertise]);
    const held = send(peer.port, { path: '/held' });
    await waitFor(() => a.seen.paths.length === 1, 5000, 'one at the target');
    assertBusy(await send(front.port, { path: '/over' }), 'forwarded to the only peer');
    assertBusy(await send(front.port, { path: '/over', method: 'POST', body: 'small' }), 'a POST too');
    // Another peer with a free agent: whichever the forwarding proxy tries first, it is served
    // there, once, with its body. (Asked through a new proxy: the first one keeps its registry
    // answer for a second, LOOKUP_CACHE_TIME.)
    const other = await startNode(t, redis, prefix);
    const c = await startTarget(t, echoHandler);
    await startAgent(t, other, { target: c.url });
    await waitRegistered(redis, prefix, ID, [peer.advertise, other.advertise]);
    const second = await startNode(t, redis, prefix);
    for (let i = 0; i < 4; i++) {
      const reply = await send(second.port, { path: `/p${i}`, method: 'POST', body: `body ${i}` });
      assert.equal(reply.status, 200, reply.text);
      assert.deepEqual([json(reply).url, json(reply).body], [`/p${i}`, `body ${i}`]);
    }
    assert.deepEqual(a.seen.paths, ['/held'], 'the agent at its limit performed nothing more');
    a.release();
    assert.equal((await held).status, 200);
  });
}
