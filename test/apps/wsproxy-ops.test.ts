/**
 * WebSocket proxy, operations: `/healthz`, `/readyz` and `/metrics` on its own listener; `close()`
 * answers new upgrades 503 and `/readyz` 503, closes both sides of every link with 1001, resolves
 * within `drainTimeout` even when a side never completes its closing handshake, answers upgrades
 * whose `upstream` function is still pending 503 at once, and leaves nothing that keeps the process
 * alive (no upgrade deadline, no heartbeat timer).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  get,
  openClient,
  sample,
  startRefusingUpstream,
  startUpstream,
  startWsProxy,
  upgradeStatus,
  within,
} from '../fixtures/wsproxy-helpers.ts';
import { waitFor } from '../helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

test('/healthz, /readyz, and /metrics with links, messages and bytes by direction, upstream failures by reason', async (t) => {
  const upstream = await startUpstream(t);
  const refusing = await startRefusingUpstream(t, 403);
  const { proxy, port, url } = await startWsProxy(t, {
    upstream: (request) => (request.path === '/refused' ? refusing.url : upstream.url),
  });
  const health = await get(port, '/healthz');
  assert.equal(health.status, 200);
  assert.deepEqual(JSON.parse(health.text), { status: 'ok' });
  assert.equal((await get(port, '/healthz', 'HEAD')).status, 200);
  const ready = await get(port, '/readyz');
  assert.equal(ready.status, 200);
  assert.deepEqual(JSON.parse(ready.text), { status: 'ready' });
  assert.equal((await get(port, '/nope')).status, 404);

  const client = await openClient(t, url);
  client.ws.send('abc'); // 3 bytes up, 3 down (echoed)
  client.ws.send(Buffer.alloc(10)); // 10 up, 10 down
  client.ws.send(''); // 0 up, 0 down
  await client.waitMessages(3);
  (await upstream.connection()).ws.send('only down'); // 9 down
  await client.waitMessages(4);
  assert.equal((await upgradeStatus(`${url}/refused`)).status, 403);

  const metrics = await get(port, '/metrics');
  assert.equal(metrics.status, 200);
  assert.match(String(metrics.headers['content-type']), /^text\/plain/);
  const text = metrics.text;
  assert.equal(sample(text, 'duplexwire_wsproxy_links'), 1);
  assert.equal(sample(text, 'duplexwire_wsproxy_messages_total', 'direction="upstream"'), 3);
  assert.equal(sample(text, 'duplexwire_wsproxy_messages_total', 'direction="client"'), 4);
  assert.equal(sample(text, 'duplexwire_wsproxy_bytes_total', 'direction="upstream"'), 13);
  assert.equal(sample(text, 'duplexwire_wsproxy_bytes_total', 'direction="client"'), 22);
  assert.equal(sample(text, 'duplexwire_wsproxy_upstream_failures_total', 'reason="refused"'), 1);
  client.ws.close(1000);
  await client.closed;
  await waitFor(() => proxy.linkCount === 0, 2000, 'the link to be gone');
  assert.equal(sample((await get(port, '/metrics')).text, 'duplexwire_wsproxy_links'), 0);
});

test('close(): upgrades 503 and /readyz 503 meanwhile, both sides of every link 1001, done within drainTimeout', async (t) => {
  const DRAIN = 800;
  const upstream = await startUpstream(t);
  const { proxy, port, url } = await startWsProxy(t, { upstream: upstream.url, drainTimeout: DRAIN });
  const polite = await openClient(t, url);
  const pollingUpstream = await upstream.connection(1);
  // A client that never reads the proxy's close frame, and an upstream that never reads it.
  const deaf = await openClient(t, url);
  const deafUpstreamPeer = await upstream.connection(2);
  const withDeafUpstream = await openClient(t, url);
  const deafUpstream = await upstream.connection(3);
  deaf.ws.pause();
  deafUpstream.ws.pause();
  assert.equal(proxy.linkCount, 3);

  const started = Date.now();
  const closing = proxy.close();
  // The well-behaved link is closed at once, both sides with 1001.
  assert.equal((await within(polite.closed, 500, 'the polite client')).code, 1001);
  assert.equal((await within(pollingUpstream.closed, 500, 'its upstream')).code, 1001);
  assert.equal((await within(deafUpstreamPeer.closed, 500, 'the deaf client’s upstream')).code, 1001);
  assert.equal((await within(withDeafUpstream.closed, 500, 'the deaf upstream’s client')).code, 1001);
  // The deaf ones hold the close open: the proxy keeps serving its ops, refusing new work.
  const upgrade = await upgradeStatus(url);
  assert.deepEqual(upgrade, { status: 503, body: 'the proxy is shutting down' });
  const ready = await get(port, '/readyz');
  assert.equal(ready.status, 503);
  assert.deepEqual(JSON.parse(ready.text), { status: 'closing' });
  assert.equal((await get(port, '/healthz')).status, 200);
  assert.equal(upstream.connections.length, 3, 'nothing dialed for the refused upgrade');

  await within(closing, DRAIN + 1000, 'close()');
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= DRAIN - 50, `close() waited for the handshakes (${elapsed} ms)`);
  assert.equal(proxy.linkCount, 0);
  // The deaf sides find their connection gone (with the 1001 close frame ahead) once they read.
  deaf.ws.resume();
  deafUpstream.ws.resume();
  assert.equal((await within(deaf.closed, 2000, 'the deaf client')).code, 1001);
  assert.equal((await within(deafUpstream.closed, 2000, 'the deaf upstream')).code, 1001);
  await assert.rejects(get(port, '/healthz'), /ECONNREFUSED/, 'the listener is closed');
  // A second close() is the same one.
  await proxy.close();
});

test('close() while an upstream is being dialed: the late upstream connection is closed at once', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  let asked = 0;
  const upstream = await startUpstream(t, {
    beforeUpgrade: () => {
      asked++;
      return held;
    },
  });
  const { proxy, url } = await startWsProxy(t, { upstream: upstream.url });
  const attempt = upgradeStatus(url).catch((error: Error) => error.message);
  await waitFor(() => asked === 1, 2000, 'the upstream dial');
  await within(proxy.close(), 1000, 'close()');
  const answer = await attempt;
  assert.notEqual(typeof answer === 'string' ? 0 : answer.status, 101, 'the client was not linked');
  release();
  const late = await upstream.connection(1);
  // Not left to ws's 30 s close timer. The client's upgrade was dropped with the proxy's pending
  // upgrades, which ends the dial made for it (`request.signal`): the proxy's end of the socket is
  // gone (1006); had the upstream answered first, the proxy would close it with 1001.
  const closed = await within(late.closed, 2000, 'the late upstream connection to close');
  assert.ok(
    (closed.code === 1006 && closed.reason === '') || (closed.code === 1001 && closed.reason === 'proxy shutting down'),
    JSON.stringify(closed),
  );
});

test('after close() nothing keeps the process alive', async (t) => {
  // A process of its own: it links a client that reads and one that never reads its close, starts
  // an upgrade whose upstream function never answers (its deadline is a timer, of 10 minutes here),
  // closes the proxy, then closes only what it made itself. It must exit by itself: within the
  // test's bound, far shorter than any timer of the proxy's it could be waiting for. (The bound was
  // 7 s "before the 10 s upgrade deadline", counted from the spawn: a loaded machine spent most of
  // it starting node and tsx.)
  const script = `
    import { WebSocket, WebSocketServer } from 'ws';
    import { WsProxy } from './src/apps/wsproxy/index.ts';
    const silent = { error() {}, warn() {}, info() {}, debug() {} };
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((resolve) => wss.once('listening', resolve));
    wss.on('connection', (ws) => ws.on('message', (data, binary) => ws.send(data, { binary })));
    let hung = 0;
    const proxy = new WsProxy({
      upstream: (req) => req.path === '/hung' ? (hung++, new Promise(() => {})) : 'ws://127.0.0.1:' + wss.address().port,
      heartbeatInterval: 50,
      drainTimeout: 300,
      upgradeTimeout: 600_000,
      logger: silent,
    });
    const { port } = await proxy.listen({ host: '127.0.0.1', port: 0 });
    const open = async () => {
      const ws = new WebSocket('ws://127.0.0.1:' + port);
      ws.on('error', () => {});
      await new Promise((resolve) => ws.once('open', resolve));
      ws.send('ping');
      await new Promise((resolve) => ws.once('message', resolve));
      return ws;
    };
    const reader = await open();
    const deaf = await open();
    deaf.pause();
    const closed = new Promise((resolve) => reader.once('close', resolve));
    const pending = new WebSocket('ws://127.0.0.1:' + port + '/hung');
    pending.on('error', () => {});
    const answered = new Promise((resolve) => {
      pending.once('unexpected-response', (_req, res) => resolve(res.statusCode));
      pending.once('close', () => resolve('closed'));
    });
    while (hung === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    await proxy.close();
    console.log('closed', await closed, proxy.linkCount);
    console.log('pending upgrade', await answered);
    deaf.terminate();
    wss.close();
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '--eval', script], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => {
    output += text;
  });
  child.stderr.setEncoding('utf8').on('data', (text: string) => {
    output += text;
  });
  const code = await within(
    new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode))),
    // A bound for a child that hangs: 60 s, well before the 10 min upgrade deadline.
    60_000,
    `the process to exit by itself; output so far: ${output}`,
  ).catch((error: Error) => {
    throw new Error(`${error.message}\n${output}`);
  });
  assert.equal(code, 0, output);
  assert.match(output, /^closed 1001 0$/m);
  assert.match(output, /^pending upgrade 503$/m);
});
