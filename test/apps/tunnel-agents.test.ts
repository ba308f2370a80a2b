/**
 * Several agents on one id: least-in-flight balancing, an agent dying mid-run (only its requests
 * in flight are lost), a frozen agent found by the heartbeat, retries of never-performed
 * requests only, draining agents, and reconnects after a proxy restart. Agents that die run in
 * child processes (`duplexwire tunnel agent`), killed for real.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Client, RequestError } from '../../src/index.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { MSG_HTTP, TUNNEL_PROTOCOL_VERSION, tunnelProtocol } from '../../src/apps/tunnel/wire.ts';
import { ID, json, send, spawnAgent, startAgent, startProxy, startTarget, TOKEN } from '../fixtures/tunnel-helpers.ts';
import { delay, recordingLogger, waitFor } from '../helpers.ts';

/** Two targets that tell which agent served a request, each answering after `ms`. */
async function twoTargets(t: Parameters<typeof startTarget>[0], ms: number) {
  const served = { a: 0, b: 0 };
  const a = await startTarget(t, (_req, res) => {
    served.a++;
    setTimeout(() => res.end('a'), ms);
  });
  const b = await startTarget(t, (_req, res) => {
    served.b++;
    setTimeout(() => res.end('b'), ms);
  });
  return { a, b, served };
}

test('two agents on one id share the load (least in flight)', async (t) => {
  const { a, b, served } = await twoTargets(t, 50);
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: a.url });
  await startAgent(t, proxy, { target: b.url });
  const replies = await Promise.all(Array.from({ length: 40 }, () => send(proxy.port)));
  assert.ok(replies.every((r) => r.status === 200));
  // Least in flight with 40 requests at once: an even split.
  assert.ok(Math.abs(served.a - served.b) <= 6, `split ${served.a}/${served.b}`);
  // One after another (nothing in flight): the tie is broken round-robin.
  served.a = 0;
  served.b = 0;
  for (let i = 0; i < 10; i++) assert.equal((await send(proxy.port)).status, 200);
  assert.ok(served.a >= 3 && served.b >= 3, `sequential split ${served.a}/${served.b}`);
});

test('an agent dying mid-run loses only its requests in flight, at once', async (t) => {
  // Requests take 1.5 s at the targets; the lost ones must be answered long before.
  const { a, b } = await twoTargets(t, 1500);
  const proxy = await startProxy(t, { requestTimeout: 20_000 });
  await startAgent(t, proxy, { target: a.url });
  const child = await spawnAgent(t, proxy, b.url);
  const started = performance.now();
  const pending = Array.from({ length: 20 }, () =>
    send(proxy.port).then((r) => ({ r, at: performance.now() - started })),
  );
  await waitFor(() => proxy.proxy.inflight === 20, 3000, 'all in flight');
  await delay(100);
  child.child.kill('SIGKILL');
  const results = await Promise.all(pending);
  const lost = results.filter(({ r }) => r.status === 502);
  const ok = results.filter(({ r }) => r.status === 200);
  assert.equal(lost.length + ok.length, 20);
  assert.ok(lost.length >= 7 && lost.length <= 13, `lost ${lost.length}`);
  assert.ok(
    ok.every(({ r }) => r.text === 'a'),
    'every request that succeeded was the surviving agent’s',
  );
  for (const { r, at } of lost) {
    assert.equal(json(r).code, 'AGENT_LOST');
    assert.ok(at < 1200, `a lost request was answered at ${Math.round(at)} ms, not at once`);
  }
  // Afterwards everything goes to the survivor.
  await waitFor(() => proxy.proxy.agents(ID).length === 1, 3000, 'dead agent removed');
  const after = await Promise.all(Array.from({ length: 5 }, () => send(proxy.port)));
  assert.ok(after.every((r) => r.status === 200 && r.text === 'a'));
});

test('a frozen agent is found by the heartbeat and routed around', async (t) => {
  const { a, b, served } = await twoTargets(t, 0);
  const proxy = await startProxy(t, { agentTimeout: 800, requestTimeout: 5000 });
  await startAgent(t, proxy, { target: a.url });
  const child = await spawnAgent(t, proxy, b.url);
  // Both serve while alive.
  await Promise.all(Array.from({ length: 8 }, () => send(proxy.port)));
  assert.ok(served.b > 0);
  // Freeze it: its socket stays open, it just never answers nor sends its heartbeat again.
  child.child.kill('SIGSTOP');
  t.after(() => {
    child.child.kill('SIGCONT');
  });
  const frozenAt = performance.now();
  await waitFor(() => proxy.proxy.agents(ID).filter((e) => e.conn.isOpen).length === 1, 4000, 'frozen agent detected');
  const detectedAfter = performance.now() - frozenAt;
  assert.ok(detectedAfter < 2500, `detected after ${Math.round(detectedAfter)} ms`);
  served.b = 0;
  const replies = await Promise.all(Array.from({ length: 10 }, () => send(proxy.port)));
  assert.ok(replies.every((r) => r.status === 200 && r.text === 'a'));
  assert.equal(served.b, 0);
  child.child.kill('SIGKILL');
});

test('only requests never performed are retried: a draining agent’s refusals go to another agent', async (t) => {
  const target = await startTarget(t, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => res.end(`real ${Buffer.concat(chunks).toString()}`));
  });
  const proxy = await startProxy(t);
  // Scripted agents that refuse everything as draining (without telling the proxy first).
  let refused = 0;
  const fakeAgent = async (): Promise<void> => {
    const fake = new Client(proxy.agentsUrl, {
      transport: wsClientTransport(),
      headers: { 'x-duplexwire-agent-id': ID, authorization: `Bearer ${TOKEN}` },
      protocols: [tunnelProtocol(TUNNEL_PROTOCOL_VERSION)],
      reconnect: false,
      logger: recordingLogger(),
      onRequest: (msg) => {
        if (msg.name === MSG_HTTP) refused++;
        throw new RequestError('AGENT_DRAINING', 'draining');
      },
    });
    t.after(() => fake.close());
    const before = proxy.proxy.agents(ID).length;
    await fake.connect();
    await waitFor(() => proxy.proxy.agents(ID).length === before + 1);
  };
  await fakeAgent();
  // Alone, it leaves nobody to retry on: 503; and it is routed nothing more.
  const alone = await send(proxy.port);
  assert.equal(alone.status, 503);
  assert.equal(json(alone).code, 'NO_AGENT');
  assert.equal(refused, 1);
  assert.equal((await send(proxy.port)).status, 503);
  assert.equal(refused, 1, 'an agent that refused as draining gets nothing more');
  await startAgent(t, proxy, { target: target.url });
  await fakeAgent();
  refused = 0;
  const replies = await Promise.all(
    Array.from({ length: 10 }, (_, i) => send(proxy.port, { method: 'POST', body: `body ${i}` })),
  );
  replies.forEach((r, i) => {
    assert.equal(r.status, 200);
    assert.equal(r.text, `real body ${i}`, 'the retried request kept its body');
  });
  assert.ok(refused >= 1, `the second fake agent saw ${refused} requests`);
});

test('a draining agent gets nothing new, finishes what it has, then leaves', async (t) => {
  const { a, b, served } = await twoTargets(t, 300);
  const proxy = await startProxy(t);
  await startAgent(t, proxy, { target: a.url });
  const leaving = await startAgent(t, proxy, { target: b.url });
  const inflight = Array.from({ length: 6 }, () => send(proxy.port));
  await waitFor(() => served.a + served.b === 6);
  const closed = leaving.close(5000);
  await waitFor(() => proxy.proxy.agents(ID).some((e) => e.draining));
  served.a = 0;
  served.b = 0;
  const later = await Promise.all(Array.from({ length: 6 }, () => send(proxy.port)));
  assert.ok(later.every((r) => r.status === 200 && r.text === 'a'));
  assert.equal(served.b, 0);
  assert.ok(
    (await Promise.all(inflight)).every((r) => r.status === 200),
    'requests in flight on the draining agent finished',
  );
  await closed;
  await waitFor(() => proxy.proxy.agents(ID).length === 1);
});

test('the agent reconnects after a proxy restart (backoff with jitter)', async (t) => {
  const target = await startTarget(t, (_req, res) => res.end('back'));
  const first = await startProxy(t);
  const agent = await startAgent(t, first, {
    target: target.url,
    reconnect: { initialDelay: 50, maxDelay: 300, jitter: 0.5 },
  });
  assert.equal((await send(first.port)).text, 'back');
  await first.proxy.drain(1000);
  await waitFor(() => !agent.connected, 2000, 'agent saw the proxy go');
  await delay(300);
  const second = await startProxy(t, {}, first.port);
  await waitFor(() => second.proxy.agents(ID).length === 1, 5000, 'agent reconnected');
  const reply = await send(second.port);
  assert.equal(reply.status, 200);
  assert.equal(reply.text, 'back');
});
