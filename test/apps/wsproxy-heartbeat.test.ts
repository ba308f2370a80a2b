/**
 * WebSocket proxy, liveness: both sides of every link are pinged each `heartbeatInterval`; a side
 * from which nothing came for two intervals (it stopped reading: no pong, and no FIN either, as a
 * phone that lost its network) is dropped, and the other side is told as for any vanished peer
 * (1001 for the upstream, 1014 for the client), freeing the link's slot. Peers that answer pings
 * stay linked however long they are idle; a side the proxy itself stopped reading (backpressure)
 * is not judged meanwhile, unless it does not take what waits for it either (both sides waiting
 * for each other); `heartbeatInterval: 0` pings nobody. First the shared `Heartbeat`
 * itself, on mock timers.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { createWebSocketStream, type WebSocket } from 'ws';
import { Heartbeat, UNTRACKED } from '../../src/apps/shared/heartbeat.ts';
import {
  get,
  openClient,
  type StartedProxy,
  sample,
  startUpstream,
  startWsProxy,
  type Upstream,
  upgradeStatus,
  within,
} from '../fixtures/wsproxy-helpers.ts';
import { FaultProxy } from '../fixtures/fault-proxy.ts';
import { waitFor } from '../helpers.ts';

const INTERVAL = 100;

test('Heartbeat: one timer pings every tracked socket, drops one silent for two intervals, skips paused ones, ends with stop()', (t) => {
  t.mock.timers.enable({ apis: ['setInterval'] });
  const fake = () => ({
    pings: 0,
    terminated: false,
    ping() {
      this.pings++;
    },
    terminate() {
      this.terminated = true;
    },
  });
  const heartbeat = new Heartbeat(1000);
  const [talking, silent, paused] = [fake(), fake(), fake()];
  const timeouts: string[] = [];
  const talkingBeat = heartbeat.track(talking, () => timeouts.push('talking'));
  heartbeat.track(silent, () => timeouts.push('silent'));
  const pausedBeat = heartbeat.track(paused, () => timeouts.push('paused'));
  pausedBeat.pause();
  for (let i = 0; i < 5; i++) {
    talkingBeat.seen();
    t.mock.timers.tick(1000);
  }
  assert.equal(talking.pings, 5);
  assert.equal(talking.terminated, false);
  // Tracking counts as a sign of life; then two ticks without one: pinged twice, then dropped.
  assert.equal(silent.pings, 2);
  assert.equal(silent.terminated, true);
  assert.deepEqual(timeouts, ['silent']);
  // Paused: neither pinged nor judged; resume() starts its clock over.
  assert.equal(paused.pings, 0);
  assert.equal(paused.terminated, false);
  pausedBeat.resume();
  t.mock.timers.tick(1000);
  assert.equal(paused.pings, 1);
  assert.equal(heartbeat.size, 2);
  pausedBeat.untrack();
  pausedBeat.untrack();
  assert.equal(heartbeat.size, 1);
  heartbeat.stop();
  t.mock.timers.tick(5000);
  assert.equal(talking.pings, 6, 'nothing after stop()');
  assert.equal(heartbeat.size, 0);
  assert.equal(heartbeat.track(fake()), UNTRACKED);
  assert.equal(new Heartbeat(0).track(fake()), UNTRACKED, 'interval 0: off');
  assert.throws(() => new Heartbeat(-1), RangeError);
});

test('Heartbeat: a paused socket that owes a drain is judged by its drains alone', (t) => {
  t.mock.timers.enable({ apis: ['setInterval'] });
  const fake = () => ({
    terminated: false,
    ping() {},
    terminate() {
      this.terminated = true;
    },
  });
  const heartbeat = new Heartbeat(1000);
  t.after(() => heartbeat.stop());
  const [draining, stuck, clear] = [fake(), fake(), fake()];
  const drainingBeat = heartbeat.track(draining);
  const stuckBeat = heartbeat.track(stuck);
  const clearBeat = heartbeat.track(clear);
  for (const beat of [drainingBeat, stuckBeat, clearBeat]) {
    beat.owing();
    beat.pause();
  }
  // A drain settles what was owed: paused and owing nothing, it is not judged any more.
  clearBeat.drained();
  for (let i = 0; i < 5; i++) {
    drainingBeat.drained();
    drainingBeat.owing();
    t.mock.timers.tick(1000);
  }
  assert.equal(draining.terminated, false);
  assert.equal(stuck.terminated, true);
  assert.equal(clear.terminated, false);
});

async function link(t: TestContext, proxy: StartedProxy, upstream: Upstream) {
  const client = await openClient(t, proxy.url);
  return { client, upstream: await upstream.connection(upstream.connections.length) };
}

/** Counts the pings `ws` receives. */
function pings(ws: WebSocket): { readonly count: number } {
  let count = 0;
  ws.on('ping', () => count++);
  return {
    get count() {
      return count;
    },
  };
}

test('a client that vanished (reads nothing, sends nothing, no FIN) is dropped after two intervals: the upstream gets 1001, the slot is free', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = await startWsProxy(t, { upstream: upstream.url, heartbeatInterval: INTERVAL, maxConnections: 1 });
  const { client, upstream: connection } = await link(t, proxy, upstream);
  const started = Date.now();
  // Its socket stays open, but it reads nothing: the proxy's pings are never answered.
  client.ws.pause();
  const closed = await within(connection.closed, 10 * INTERVAL, 'the upstream to be closed');
  const elapsed = Date.now() - started;
  assert.deepEqual(closed, { code: 1001, reason: 'client went away' });
  assert.ok(elapsed >= 2 * INTERVAL - 20, `dropped after ${elapsed} ms`);
  await waitFor(() => proxy.proxy.linkCount === 0, 2000, 'linkCount 0');
  // Its slot under maxConnections (1) is free again.
  assert.equal((await upgradeStatus(proxy.url)).status, 101);
  const metrics = (await get(proxy.port, '/metrics')).text;
  assert.equal(sample(metrics, 'duplexwire_wsproxy_heartbeat_timeouts_total', 'side="client"'), 1);
  assert.ok(proxy.logger.entries.some((e) => e.level === 'info' && e.context?.side === 'client'));
});

test('an upstream that vanished is dropped after two intervals: the client gets 1014', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = await startWsProxy(t, { upstream: upstream.url, heartbeatInterval: INTERVAL });
  const { client, upstream: connection } = await link(t, proxy, upstream);
  connection.ws.pause();
  const closed = await within(client.closed, 10 * INTERVAL, 'the client to be closed');
  assert.deepEqual(closed, { code: 1014, reason: 'upstream connection lost' });
  await waitFor(() => proxy.proxy.linkCount === 0, 2000, 'linkCount 0');
  const metrics = (await get(proxy.port, '/metrics')).text;
  assert.equal(sample(metrics, 'duplexwire_wsproxy_heartbeat_timeouts_total', 'side="upstream"'), 1);
});

test('idle peers that answer pings stay linked; heartbeatInterval 0 pings nobody and drops nobody', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = await startWsProxy(t, { upstream: upstream.url, heartbeatInterval: INTERVAL });
  const { client, upstream: connection } = await link(t, proxy, upstream);
  const [clientPings, upstreamPings] = [pings(client.ws), pings(connection.ws)];
  // Ten intervals without a message either way: only pings and the peers' automatic pongs.
  await new Promise((resolve) => setTimeout(resolve, 10 * INTERVAL));
  assert.equal(client.ended, undefined);
  assert.equal(connection.ended, undefined);
  assert.equal(proxy.proxy.linkCount, 1);
  assert.ok(clientPings.count >= 5, `the client got ${clientPings.count} pings`);
  assert.ok(upstreamPings.count >= 5, `the upstream got ${upstreamPings.count} pings`);
  client.ws.send('still linked');
  assert.equal((await client.waitMessages(1))[0]!.text, 'still linked');

  const off = await startWsProxy(t, { upstream: upstream.url, heartbeatInterval: 0 });
  const silent = await link(t, off, upstream);
  const silentPings = [pings(silent.client.ws), pings(silent.upstream.ws)];
  silent.client.ws.pause();
  await new Promise((resolve) => setTimeout(resolve, 5 * INTERVAL));
  assert.deepEqual(
    silentPings.map((p) => p.count),
    [0, 0],
  );
  assert.equal(silent.upstream.ended, undefined);
  assert.equal(off.proxy.linkCount, 1);
});

test('a side the proxy stopped reading (its peer does not keep up) is not judged meanwhile', async (t) => {
  const upstream = await startUpstream(t, { onConnection: () => {} });
  const proxy = await startWsProxy(t, {
    upstream: upstream.url,
    heartbeatInterval: INTERVAL,
    maxBufferedBytes: 1024 * 1024,
  });
  const { client, upstream: connection } = await link(t, proxy, upstream);
  // The client reads nothing but keeps talking: alive, yet it takes nothing from the upstream.
  client.ws.pause();
  const talking = setInterval(() => client.ws.send('alive'), INTERVAL / 2);
  t.after(() => clearInterval(talking));
  // The upstream sends until its own buffer fills: the proxy stopped reading it, so its pongs
  // stay unread too.
  let sent = 0;
  const deadline = Date.now() + 8000;
  while (connection.ws.bufferedAmount < 4 * 1024 * 1024) {
    if (Date.now() > deadline) throw new Error(`the proxy never stopped reading the upstream (${sent} sent)`);
    for (let i = 0; i < 16; i++) connection.ws.send(Buffer.alloc(64 * 1024, sent++ % 251));
    await new Promise((resolve) => setImmediate(resolve));
  }
  // Ten intervals of that: neither side is dropped.
  await new Promise((resolve) => setTimeout(resolve, 10 * INTERVAL));
  assert.equal(connection.ended, undefined, 'the paused upstream was not dropped');
  assert.equal(proxy.proxy.linkCount, 1);
  assert.ok(connection.messages.length >= 10, 'the client’s messages went through meanwhile');
  clearInterval(talking);
  // Once the client reads again, everything arrives, and both sides are still judged.
  client.ws.resume();
  await client.waitMessages(sent, 15_000);
  assert.equal(connection.ended, undefined);
  client.ws.pause();
  assert.equal((await within(connection.closed, 10 * INTERVAL, 'the upstream to be closed')).code, 1001);
});

test('a client that sends, reads nothing, then vanishes, linked to an upstream that stops reading while its replies back up, is dropped', async (t) => {
  // An echo with backpressure: it stops reading the proxy while its replies wait to be written.
  const upstream = await startUpstream(t, {
    onConnection: (c) => {
      const duplex = createWebSocketStream(c.ws);
      duplex.on('error', () => {});
      duplex.pipe(duplex);
    },
  });
  const proxy = await startWsProxy(t, { upstream: upstream.url, heartbeatInterval: INTERVAL });
  const { client, upstream: connection } = await link(t, proxy, upstream);
  client.ws.pause();
  // The client sends until its own buffer fills: the proxy stopped reading it (the upstream does
  // not take more), and the proxy stopped reading the upstream (the client does not take more).
  let sent = 0;
  const deadline = Date.now() + 8000;
  while (client.ws.bufferedAmount < 4 * 1024 * 1024) {
    if (Date.now() > deadline) throw new Error(`the proxy never stopped reading the client (${sent} sent)`);
    for (let i = 0; i < 16; i++) client.ws.send(Buffer.alloc(64 * 1024, sent++ % 251));
    await new Promise((resolve) => setImmediate(resolve));
  }
  // Then it vanishes: sends nothing more, reads nothing, no FIN. Both sides of the link are
  // paused, each waiting for the other; the client takes nothing of what waits for it.
  const closed = await within(connection.closed, 20 * INTERVAL, 'the upstream to be closed');
  assert.deepEqual(closed, { code: 1001, reason: 'client went away' });
  await waitFor(() => proxy.proxy.linkCount === 0, 2000, 'linkCount 0');
  const metrics = (await get(proxy.port, '/metrics')).text;
  assert.equal(sample(metrics, 'duplexwire_wsproxy_heartbeat_timeouts_total', 'side="client"'), 1);
  assert.equal(sample(metrics, 'duplexwire_wsproxy_heartbeat_timeouts_total', 'side="upstream"') ?? 0, 0);
});

// Found with the fault suite (test/chaos/faults.ts): the heartbeat saw only whole messages,
// pings and pongs, so a client sending a large message over a slow link, its pongs queued behind
// it, was dropped as vanished while its bytes kept coming.
test('a client sending a large message over a slow link for 10 intervals is not dropped: the message reaches the upstream', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = await startWsProxy(t, { upstream: upstream.url, heartbeatInterval: INTERVAL });
  const faults = await FaultProxy.start({ targetPort: proxy.port });
  t.after(() => faults.close());
  const { client, upstream: connection } = await link(t, { ...proxy, url: faults.url('') }, upstream);
  // 32 KiB/s: 32 KiB take about ten intervals.
  faults.newest!.up.throttle(32 * 1024);
  client.ws.send(Buffer.alloc(32 * 1024, 7));
  await waitFor(() => connection.messages.length === 1, 10_000, 'the message upstream');
  assert.equal(connection.messages[0]!.data.length, 32 * 1024);
  assert.equal(connection.ended, undefined);
  assert.equal(client.ended, undefined);
  assert.equal(proxy.proxy.linkCount, 1);
});
