/**
 * A tunnel agent whose only way out is an HTTP proxy (CONNECT): the `egressProxy` option, and the
 * command line's `--egress-proxy` and proxy environment variables.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.ts';
import { TunnelAgent } from '../../src/apps/tunnel/agent.ts';
import { startConnectProxy } from '../fixtures/connect-proxy.ts';
import { ID, send, spawnAgent, startAgent, startProxy, startTarget, TOKEN } from '../fixtures/tunnel-helpers.ts';

test('an agent dials out through an egress proxy with Basic credentials; requests reach its target', async (t) => {
  const target = await startTarget(t, (req, res) => res.end(`target saw ${req.url}`));
  const proxy = await startProxy(t);
  const egress = await startConnectProxy(t, { credentials: 'agent:pw' });
  await startAgent(t, proxy, { target: target.url, egressProxy: `http://agent:pw@${egress.url.slice(7)}` });
  const reply = await send(proxy.port, { path: '/through' });
  assert.equal(reply.status, 200);
  assert.equal(reply.text, 'target saw /through');
  assert.equal(egress.requests.length, 1);
  assert.equal(egress.requests[0]!.target, `127.0.0.1:${proxy.port}`);
});

test('an invalid egressProxy is refused when the agent is made', () => {
  assert.throws(
    () =>
      new TunnelAgent({
        proxyUrl: 'ws://127.0.0.1:1/_t',
        id: ID,
        token: TOKEN,
        target: 'http://127.0.0.1:1',
        egressProxy: 'socks5://x:1',
      }),
    (error: unknown) => error instanceof InvalidArgumentError && /egressProxy/.test(error.message),
  );
});

test('the command line: HTTP_PROXY from the environment, --egress-proxy direct to ignore it', async (t) => {
  const target = await startTarget(t, (_req, res) => res.end('ok'));
  const proxy = await startProxy(t);
  const egress = await startConnectProxy(t);
  const env = { HTTP_PROXY: egress.url, http_proxy: '', NO_PROXY: '', no_proxy: '', ALL_PROXY: '', all_proxy: '' };
  const viaProxy = await spawnAgent(t, proxy, target.url, { env });
  const announced = await viaProxy.line((l) => l.msg === 'dialing out through an HTTP proxy');
  assert.equal(announced.egressProxy, `${egress.url}/`);
  assert.equal((await send(proxy.port)).status, 200);
  assert.equal(egress.tunnels, 1);

  const direct = await spawnAgent(t, proxy, target.url, { env, args: ['--egress-proxy', 'direct'] });
  assert.equal(egress.requests.length, 1, 'the second agent did not use the proxy');
  assert.ok(!direct.logs.some((l) => l.msg === 'dialing out through an HTTP proxy'));
});

test('the command line: an agent whose egress proxy refuses it (407) exits 1 and says why', async (t) => {
  const proxy = await startProxy(t);
  const egress = await startConnectProxy(t, { credentials: 'agent:pw' });
  const cli = await spawnAgent(t, proxy, 'http://127.0.0.1:1', {
    args: ['--egress-proxy', `http://agent:wrong@${egress.url.slice(7)}`],
    registered: false,
  });
  assert.equal(await cli.exited, 1);
  const said = JSON.stringify(cli.logs);
  assert.match(said, /refused CONNECT with HTTP 407/);
  assert.ok(!said.includes('wrong'), 'the password is not logged');
});
