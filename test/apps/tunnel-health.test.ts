/**
 * Health checks of an agent's target (`healthCheck`): the agent tells the proxy when its target
 * turns unhealthy and healthy again, the proxy prefers the id's healthy agents, still uses an
 * unhealthy one when no other can take a request, and shows the state in its metrics and status
 * page. A reconnecting agent says again what it knows.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Pool } from 'undici';
import { TunnelAgent } from '../../src/apps/tunnel/agent.ts';
import { TargetHealth } from '../../src/apps/tunnel/health.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import {
  checkedTarget,
  FAST_HEALTH_CHECK as FAST,
  ID,
  send,
  spawnAgent,
  startAgent,
  startProxy,
  startTarget,
  TOKEN,
} from '../fixtures/tunnel-helpers.ts';
import { recordingLogger, waitFor } from '../helpers.ts';

test('an unhealthy target: its agent is avoided while another is healthy, and used again once it recovers', async (t) => {
  const proxy = await startProxy(t, { publicOps: 'all' });
  const a = await checkedTarget(t, 'a');
  const b = await checkedTarget(t, 'b');
  const agentA = await startAgent(t, proxy, { target: a.url, healthCheck: FAST });
  await startAgent(t, proxy, { target: b.url, healthCheck: FAST });
  const served = async (n: number): Promise<Record<string, number>> => {
    const counts: Record<string, number> = {};
    for (let i = 0; i < n; i++) {
      const reply = await send(proxy.port);
      counts[reply.text] = (counts[reply.text] ?? 0) + 1;
    }
    return counts;
  };
  assert.deepEqual(Object.keys(await served(10)).sort(), ['a', 'b'], 'both serve while healthy');

  a.state.status = 503;
  await waitFor(() => proxy.proxy.agents(ID).some((e) => !e.healthy), 3000, 'the proxy hears a is unhealthy');
  assert.equal(agentA.healthy, false);
  assert.deepEqual(await served(10), { b: 10 });
  const metrics = await send(proxy.port, { path: '/metrics', headers: {} });
  assert.match(metrics.text, new RegExp(`duplexwire_tunnel_agents_unhealthy\\{client_id="${ID}"\\} 1`));
  assert.match(metrics.text, new RegExp(`duplexwire_tunnel_agents_connected\\{client_id="${ID}"\\} 2`));
  assert.match((await send(proxy.port, { path: '/status', headers: {} })).text, /up, target unhealthy/);
  assert.ok(proxy.logger.entries.some((e) => e.level === 'warn' && e.message.startsWith("agent's target unhealthy")));

  a.state.status = 204;
  await waitFor(() => proxy.proxy.agents(ID).every((e) => e.healthy), 3000, 'the proxy hears a recovered');
  assert.equal(agentA.healthy, true);
  assert.deepEqual(Object.keys(await served(10)).sort(), ['a', 'b']);
});

test('a check that gets no answer within its timeout fails; one failure alone changes nothing', async (t) => {
  const proxy = await startProxy(t);
  const a = await checkedTarget(t, 'a');
  const agent = await startAgent(t, proxy, { target: a.url, healthCheck: { ...FAST, failures: 3 } });
  a.state.status = 503;
  const seen = a.checks();
  await waitFor(() => a.checks() >= seen + 1, 2000, 'one failing check');
  a.state.status = 200;
  // Passing checks reset the count: still healthy after many intervals.
  const later = a.checks();
  await waitFor(() => a.checks() >= later + 4, 2000, 'more checks');
  assert.equal(agent.healthy, true);
  a.state.status = 0;
  await waitFor(() => !agent.healthy, 3000, 'hung checks make it unhealthy');
  await waitFor(() => proxy.proxy.agents(ID).every((e) => !e.healthy), 2000, 'the proxy hears it');
});

test('no healthy agent: the unhealthy one still serves (its target may answer, a 503 never would)', async (t) => {
  const proxy = await startProxy(t);
  const a = await checkedTarget(t, 'a');
  await startAgent(t, proxy, { target: a.url, healthCheck: FAST });
  a.state.status = 500;
  await waitFor(() => proxy.proxy.agents(ID).every((e) => !e.healthy), 3000, 'unhealthy');
  const reply = await send(proxy.port);
  assert.equal(reply.status, 200);
  assert.equal(reply.text, 'a');
});

test('an agent that reconnects while unhealthy says so again on its new connection', async (t) => {
  const proxy = await startProxy(t);
  const a = await checkedTarget(t, 'a');
  const agent = await startAgent(t, proxy, { target: a.url, healthCheck: FAST });
  a.state.status = 503;
  await waitFor(() => proxy.proxy.agents(ID).every((e) => !e.healthy), 3000, 'unhealthy');
  const first = proxy.proxy.agents(ID)[0]!.conn;
  await first.close(1001, 'test drops the agent');
  await waitFor(
    () => proxy.proxy.agents(ID).length === 1 && proxy.proxy.agents(ID)[0]!.conn !== first,
    5000,
    'the agent reconnected',
  );
  await waitFor(() => proxy.proxy.agents(ID).every((e) => !e.healthy), 2000, 'unhealthy on the new connection');
  assert.equal(agent.healthy, false);
  // Logged for each connection, whether the signal came before the agent was registered or after.
  const said = proxy.logger.entries.filter((e) => e.message.startsWith("agent's target unhealthy"));
  assert.equal(said.length, 2);
});

test('an agent whose start() is refused stops checking its target', async (t) => {
  const proxy = await startProxy(t);
  const a = await checkedTarget(t, 'a');
  const agent = new TunnelAgent({
    proxyUrl: proxy.agentsUrl,
    id: ID,
    token: `${TOKEN}-wrong`,
    target: a.url,
    healthCheck: FAST,
    logger: recordingLogger(),
  });
  t.after(() => agent.close(0));
  await assert.rejects(agent.start());
  const after = a.checks();
  await new Promise((resolve) => setTimeout(resolve, 6 * FAST.interval));
  assert.ok(a.checks() <= after + 1, `${a.checks() - after} checks after the refusal`);
});

test('a check in flight across stop() and start() is not counted, and the new one can still be stopped', async (t) => {
  // The first check hangs until aborted; every later one passes at once.
  let checks = 0;
  const aborted: number[] = [];
  const target = await startTarget(t, (req, res) => {
    const n = ++checks;
    if (n === 1 || n === 3) {
      req.socket.once('close', () => aborted.push(n));
      return;
    }
    res.end();
  });
  const pool = new Pool(target.url);
  t.after(() => pool.destroy());
  const changes: boolean[] = [];
  const health = new TargetHealth(
    { path: '/healthz', interval: 50, timeout: 2_000, failures: 1 },
    { dispatcher: pool, basePath: '' },
    (healthy) => changes.push(healthy),
    recordingLogger(),
  );
  t.after(() => health.stop());
  health.start();
  await waitFor(() => checks === 1, 2000, 'the first check in flight');
  health.stop();
  health.start();
  await waitFor(() => checks >= 3, 2000, 'checks after the restart');
  // The aborted first check was no failure of the target (failures: 1 would have turned it).
  assert.deepEqual(changes, []);
  assert.equal(health.healthy, true);
  // The third check hangs: stop() aborts it at once, not at its 2 s timeout.
  health.stop();
  await waitFor(() => aborted.includes(3), 1000, 'the check in flight aborted by stop()');
  const stoppedAt = checks;
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(checks, stoppedAt, 'no check after stop()');
});

test('healthCheck is checked: a path, sane durations, and only with a target URL', () => {
  const base = { proxyUrl: 'ws://127.0.0.1:1/_t', id: ID, token: TOKEN };
  for (const healthCheck of [
    { path: 'healthz' },
    { path: '/a b' },
    { path: '/h', interval: 5 },
    { path: '/h', interval: 1000, timeout: 2000 },
    { path: '/h', failures: 0 },
    { path: '/h', failures: 1.5 },
  ]) {
    assert.throws(
      () => new TunnelAgent({ ...base, target: 'http://127.0.0.1:1', healthCheck }),
      InvalidArgumentError,
      JSON.stringify(healthCheck),
    );
  }
  assert.throws(
    () => new TunnelAgent({ ...base, handler: () => new Response('x'), healthCheck: { path: '/h' } }),
    /needs a target URL/,
  );
});

test('the command line: --health-check with --health-interval and --health-timeout', async (t) => {
  const proxy = await startProxy(t);
  const a = await checkedTarget(t, 'a');
  a.state.status = 503;
  const cli = await spawnAgent(t, proxy, a.url, {
    args: ['--health-check', '/healthz', '--health-interval', '50ms', '--health-timeout', '40ms'],
    registered: false,
  });
  const warned = await cli.line((l) => l.msg === 'target unhealthy');
  assert.equal(warned.path, '/healthz');
  await waitFor(
    () => proxy.proxy.agents(ID).length === 1 && !proxy.proxy.agents(ID)[0]!.healthy,
    5000,
    'the proxy hears it',
  );
});
