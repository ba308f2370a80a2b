/**
 * The version of the tunnel's own messages, settled as the WebSocket subprotocol of the agent's
 * connection: the normal agent and the version it got; raw `ws` clients offering an unknown
 * version, none at all, or a wrong one with bad credentials (401 comes first); and a real agent
 * refused by a proxy of another version (a scripted one: this build's proxy speaks the agent's).
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { type TestContext, test } from 'node:test';
import { WebSocket } from 'ws';
import { TunnelAgent } from '../../src/apps/tunnel/agent.ts';
import { errorBody, TunnelErrorCode } from '../../src/apps/tunnel/http-errors.ts';
import {
  chooseTunnelVersion,
  TUNNEL_PROTOCOL_VERSION,
  TunnelVersionError,
  tunnelProtocol,
  tunnelVersionOf,
} from '../../src/apps/tunnel/wire.ts';
import { ConnectError } from '../../src/index.ts';
import {
  echoHandler,
  ID,
  OTHER_TOKEN,
  send,
  startAgent,
  startProxy,
  startTarget,
  TOKEN,
} from '../fixtures/tunnel-helpers.ts';
import { delay, recordingLogger, waitFor } from '../helpers.ts';
import { rawUpgrade } from '../transports/helpers.ts';

const CURRENT = tunnelProtocol(TUNNEL_PROTOCOL_VERSION);

interface Outcome {
  /** 101 when the upgrade was accepted. */
  readonly status: number;
  readonly headers: IncomingMessage['headers'];
  readonly body: string;
  /** The subprotocol of an accepted connection. */
  readonly protocol: string;
  /** WebSocket messages received (before the socket was closed again). */
  readonly messages: number;
}

/** One upgrade by a raw `ws` client offering `protocols`; an accepted one is closed after 100 ms. */
function rawAgent(
  agentsUrl: string,
  protocols: string[],
  headers: Record<string, string> = { 'x-duplexwire-agent-id': ID, authorization: `Bearer ${TOKEN}` },
): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(agentsUrl, protocols, { headers });
    let messages = 0;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('no answer to the upgrade'));
    }, 3000);
    ws.on('message', () => messages++);
    ws.on('error', () => {});
    ws.once('open', () => {
      setTimeout(() => {
        clearTimeout(timer);
        resolve({ status: 101, headers: {}, body: '', protocol: ws.protocol, messages });
        ws.terminate();
      }, 100);
    });
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.once('end', () => {
        clearTimeout(timer);
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          protocol: '',
          messages,
        });
        ws.terminate();
      });
    });
  });
}

/** The value of one series in the proxy's Prometheus text. */
async function metric(proxy: Awaited<ReturnType<typeof startProxy>>, series: string): Promise<number> {
  const text = await proxy.proxy.metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  assert.ok(line !== undefined, `no series ${series}`);
  return Number(line.slice(series.length + 1));
}

const REFUSED_VERSION = 'duplexwire_tunnel_agents_refused_total{reason="version"}';
const REFUSED_CREDENTIALS = 'duplexwire_tunnel_agents_refused_total{reason="credentials"}';

test('version names: one spelling per version; the proxy picks the highest both speak, in any order', () => {
  assert.equal(CURRENT, 'duplexwire-tunnel.1');
  assert.equal(tunnelVersionOf('duplexwire-tunnel.1'), 1);
  assert.equal(tunnelVersionOf('duplexwire-tunnel.12'), 12);
  for (const other of [
    'duplexwire-tunnel.01',
    'duplexwire-tunnel.0',
    'duplexwire-tunnel.',
    'duplexwire-tunnel.1x',
    'chat',
  ])
    assert.equal(tunnelVersionOf(other), undefined, other);
  assert.equal(chooseTunnelVersion(['duplexwire-tunnel.1', 'duplexwire-tunnel.3'], [1, 2, 3]), 3);
  assert.equal(chooseTunnelVersion(['chat', 'duplexwire-tunnel.2', 'duplexwire-tunnel.9'], [1, 2, 3]), 2);
  assert.equal(chooseTunnelVersion(['duplexwire-tunnel.9'], [1]), undefined);
  assert.equal(chooseTunnelVersion([], [1]), undefined);
  // The error says which side to upgrade.
  assert.match(
    new TunnelVersionError([1], [2]).message,
    /proxy speaks tunnel version 2, this agent 1: upgrade the agent/,
  );
  assert.match(new TunnelVersionError([2], [1]).message, /upgrade the proxy/);
  assert.match(new TunnelVersionError([1], undefined).message, /without saying which/);
});

test('the agent offers its version and the proxy settles on it: agent.version, the agent entry, conn.protocol, /status', async (t) => {
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t, { publicOps: 'all' });
  const agent = await startAgent(t, proxy, { target: target.url });
  assert.equal(agent.version, TUNNEL_PROTOCOL_VERSION);
  const [entry] = proxy.proxy.agents(ID);
  assert.equal(entry?.version, TUNNEL_PROTOCOL_VERSION);
  assert.equal(entry?.conn.protocol, CURRENT);
  assert.equal((await send(proxy.port)).status, 200, 'and the tunnel works on it');
  const status = await send(proxy.port, { path: '/status', headers: {} });
  assert.match(status.text, /<th>version<\/th>/);
  assert.match(status.text, new RegExp(`<td>${TUNNEL_PROTOCOL_VERSION}</td>`));
  const connected = proxy.logger.entries.find((e) => e.message === 'agent connected');
  assert.equal(connected?.context?.version, TUNNEL_PROTOCOL_VERSION);
  assert.equal(await metric(proxy, REFUSED_VERSION), 0);
  await agent.close(0);
  assert.equal(agent.version, undefined, 'no version while not connected');
});

test('a raw client offering only unknown versions gets 426 with the JSON answer, before any frame', async (t) => {
  const proxy = await startProxy(t);
  const refused = await rawAgent(proxy.agentsUrl, ['duplexwire-tunnel.99', 'duplexwire-tunnel.01', 'chat']);
  assert.equal(refused.status, 426);
  assert.equal(refused.messages, 0);
  assert.equal(refused.headers['content-type'], 'application/json; charset=utf-8');
  assert.equal(refused.headers.upgrade, 'websocket', 'RFC 9110 §15.5.22: a 426 names the protocol');
  const body = JSON.parse(refused.body) as { code: string; message: string; supported: number[] };
  assert.equal(body.code, 'TUNNEL_VERSION_UNSUPPORTED');
  assert.deepEqual(body.supported, [TUNNEL_PROTOCOL_VERSION]);
  assert.equal(refused.body, errorBody(TunnelErrorCode.TunnelVersionUnsupported, { supported: [1] }));
  assert.equal(proxy.proxy.agents().length, 0);
  const logged = proxy.logger.entries.find((e) => e.message === 'agent refused: no tunnel version in common');
  assert.deepEqual(logged?.context?.agentVersions, [99]);
  assert.equal(await metric(proxy, REFUSED_VERSION), 1);

  // With a known version anywhere in the offer, that one is answered, not the first offered.
  const accepted = await rawAgent(proxy.agentsUrl, ['duplexwire-tunnel.99', CURRENT]);
  assert.equal(accepted.status, 101);
  assert.equal(accepted.protocol, CURRENT);
  assert.ok(accepted.messages >= 1, 'the AcceptConf came');
  // A malformed offer (a duplicate, which ws clients cannot send) is a bad request, not a version
  // question: the transport refuses it before the proxy is asked, as any malformed handshake.
  const malformed = await rawUpgrade(proxy.port, '/_tunnel', {
    'sec-websocket-protocol': `${CURRENT}, ${CURRENT}`,
    'x-duplexwire-agent-id': ID,
    authorization: `Bearer ${TOKEN}`,
  });
  assert.equal(malformed.status, 400);
  assert.equal(malformed.body, 'Bad Request');
});

test('an agent offering no subprotocol (from before versions were negotiated) is refused with 426 too', async (t) => {
  const proxy = await startProxy(t);
  const refused = await rawAgent(proxy.agentsUrl, []);
  assert.equal(refused.status, 426);
  assert.equal(refused.messages, 0);
  assert.equal((JSON.parse(refused.body) as { code: string }).code, 'TUNNEL_VERSION_UNSUPPORTED');
  assert.ok(proxy.logger.entries.some((e) => e.level === 'warn' && /offers no tunnel version/.test(e.message)));
});

test('credentials are checked before the version: a wrong version with a bad token gets 401 and no versions', async (t) => {
  const proxy = await startProxy(t);
  const badToken = { 'x-duplexwire-agent-id': ID, authorization: `Bearer ${OTHER_TOKEN}` };
  for (const offer of [['duplexwire-tunnel.99'], []]) {
    const refused = await rawAgent(proxy.agentsUrl, offer, badToken);
    assert.equal(refused.status, 401);
    assert.deepEqual(JSON.parse(refused.body), { code: 'BAD_AGENT_CREDENTIALS', message: 'bad agent credentials' });
    assert.ok(!refused.body.includes('supported'), 'nothing about the proxy before credentials');
  }
  assert.equal(await metric(proxy, REFUSED_CREDENTIALS), 2);
  assert.equal(await metric(proxy, REFUSED_VERSION), 0);
  // The same offer with good credentials is a version refusal.
  assert.equal((await rawAgent(proxy.agentsUrl, ['duplexwire-tunnel.99'])).status, 426);
});

/** A proxy of another version: answers every upgrade with `status` and `body`, recording the offers. */
async function otherProxy(t: TestContext, status: number, body: string, type: string, port = 0) {
  const offers: Array<string | undefined> = [];
  const server = createServer((_req, res) => res.writeHead(404).end());
  server.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
    offers.push(req.headers['sec-websocket-protocol']);
    socket.on('error', () => {});
    socket.end(
      `HTTP/1.1 ${status} Upgrade Required\r\nConnection: close\r\nContent-Type: ${type}\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/_tunnel`, offers };
}

/** What this build's proxy would answer if it spoke only version 2. */
const VERSION_2_ONLY = errorBody(TunnelErrorCode.TunnelVersionUnsupported, { supported: [2] });

test('an agent refused for its version: TunnelVersionError naming both versions, logged once, never retried', async (t) => {
  // A proxy that speaks only version 2, answering as this proxy would.
  const newer = await otherProxy(t, 426, VERSION_2_ONLY, 'application/json; charset=utf-8');
  const logger = recordingLogger();
  const agent = new TunnelAgent({
    proxyUrl: newer.url,
    id: ID,
    token: TOKEN,
    target: 'http://127.0.0.1:1',
    logger,
    // A retry would come within 20 ms: any second attempt shows below.
    reconnect: { initialDelay: 10, maxDelay: 20 },
  });
  t.after(() => agent.close(0));
  await assert.rejects(agent.start(), (error: unknown) => {
    assert.ok(error instanceof TunnelVersionError);
    assert.equal(error.code, 'TUNNEL_VERSION_UNSUPPORTED');
    assert.equal(error.status, 426);
    assert.deepEqual(error.agentVersions, [1]);
    assert.deepEqual(error.proxyVersions, [2]);
    assert.match(error.message, /proxy speaks tunnel version 2, this agent 1: upgrade the agent/);
    assert.ok(error.cause instanceof ConnectError && error.cause.status === 426);
    return true;
  });
  await delay(300);
  assert.deepEqual(newer.offers, [CURRENT], 'one attempt, offering this agent’s version');
  assert.equal(agent.connected, false);
  assert.equal(agent.client.state, 'disconnected');
  const errors = logger.entries.filter((e) => e.level === 'error');
  assert.equal(errors.length, 1);
  assert.match(errors[0]!.message, /tunnel versions/);
  assert.deepEqual(errors[0]!.context?.proxyVersions, [2]);
  assert.deepEqual(errors[0]!.context?.agentVersions, [1]);

  // A 426 that is not the tunnel's answer (something in front of the proxy): the same error,
  // without the proxy's versions.
  const opaque = await otherProxy(t, 426, 'Upgrade Required', 'text/plain');
  const second = new TunnelAgent({
    proxyUrl: opaque.url,
    id: ID,
    token: TOKEN,
    target: 'http://127.0.0.1:1',
    logger: recordingLogger(),
  });
  t.after(() => second.close(0));
  await assert.rejects(second.start(), (error: unknown) => {
    assert.ok(error instanceof TunnelVersionError);
    assert.equal(error.proxyVersions, undefined);
    return true;
  });
  await delay(100);
  assert.equal(opaque.offers.length, 1);
});

test('an agent reconnecting to a proxy of another version gives up on the 426, as on a 401', async (t) => {
  // A real proxy first; then, on the same port, one that speaks only version 2.
  const target = await startTarget(t, echoHandler);
  const proxy = await startProxy(t);
  const logger = recordingLogger();
  const agent = await startAgent(t, proxy, {
    target: target.url,
    logger,
    reconnect: { initialDelay: 20, maxDelay: 40 },
  });
  await proxy.proxy.close();
  await waitFor(() => !agent.connected, 3000, 'agent disconnected');
  const newer = await otherProxy(t, 426, VERSION_2_ONLY, 'application/json', proxy.port);
  await waitFor(() => newer.offers.length === 1, 5000, 'the reconnect reached the new proxy');
  await waitFor(() => agent.client.state === 'disconnected', 2000, 'the agent gave up');
  await delay(200);
  assert.equal(newer.offers.length, 1, 'no retry after the 426');
  const errors = logger.entries.filter((e) => e.level === 'error');
  assert.equal(errors.length, 1);
  assert.deepEqual(errors[0]!.context?.proxyVersions, [2]);
});
