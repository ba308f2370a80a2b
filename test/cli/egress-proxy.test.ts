/**
 * Which HTTP proxy the command line dials out through: the flag, or the environment as curl
 * reads it (proxy-from-env for NO_PROXY), and how it is logged.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { type TestContext, test } from 'node:test';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { egressProxyFor, redactedUrl } from '../../src/cli/egress-proxy.ts';
import { Server } from '../../src/server/server.ts';
import { wsTransport } from '../../transports/ws.ts';
import { startConnectProxy } from '../fixtures/connect-proxy.ts';
import { recordingLogger } from '../helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

const NAMES = ['http_proxy', 'https_proxy', 'all_proxy', 'no_proxy'];

/** Runs `fn` with exactly these proxy variables set (others of the kind cleared). */
function withProxyEnv(vars: Record<string, string>, fn: () => void): void {
  const names = [...NAMES, ...NAMES.map((n) => n.toUpperCase())];
  const saved = new Map(names.map((n) => [n, process.env[n]]));
  for (const n of names) delete process.env[n];
  Object.assign(process.env, vars);
  try {
    fn();
  } finally {
    for (const [n, v] of saved) {
      if (v === undefined) delete process.env[n];
      else process.env[n] = v;
    }
  }
}

test('the flag wins over the environment; "direct" means none', () => {
  withProxyEnv({ HTTPS_PROXY: 'http://env:3128' }, () => {
    assert.equal(egressProxyFor('wss://tunnel.example/_t', 'http://flag:8080'), 'http://flag:8080');
    assert.equal(egressProxyFor('wss://tunnel.example/_t', 'direct'), undefined);
  });
});

test('HTTPS_PROXY for wss:, HTTP_PROXY for ws:, ALL_PROXY for both, lower case first', () => {
  withProxyEnv({ HTTPS_PROXY: 'http://secure:3128', HTTP_PROXY: 'http://plain:3128' }, () => {
    assert.equal(egressProxyFor('wss://tunnel.example/_t', undefined), 'http://secure:3128');
    assert.equal(egressProxyFor('ws://tunnel.example/_t', undefined), 'http://plain:3128');
  });
  withProxyEnv({ ALL_PROXY: 'http://all:3128' }, () => {
    assert.equal(egressProxyFor('wss://tunnel.example/_t', undefined), 'http://all:3128');
  });
  withProxyEnv({ https_proxy: 'http://lower:1', HTTPS_PROXY: 'http://upper:2' }, () => {
    assert.equal(egressProxyFor('wss://tunnel.example/_t', undefined), 'http://lower:1');
  });
  withProxyEnv({}, () => assert.equal(egressProxyFor('wss://tunnel.example/_t', undefined), undefined));
});

test('a proxy without a scheme is an http: one, even for wss: (as curl reads it)', () => {
  withProxyEnv({ HTTPS_PROXY: 'egress.internal:3128' }, () => {
    assert.equal(egressProxyFor('wss://tunnel.example/_t', undefined), 'http://egress.internal:3128');
  });
  withProxyEnv({ HTTPS_PROXY: 'https://egress.internal:3129' }, () => {
    assert.equal(egressProxyFor('wss://tunnel.example/_t', undefined), 'https://egress.internal:3129');
  });
});

test('NO_PROXY: hosts, suffixes, ports and * go direct', () => {
  withProxyEnv({ HTTPS_PROXY: 'http://p:3128', NO_PROXY: 'localhost,.corp.example,tunnel.example:8443' }, () => {
    assert.equal(egressProxyFor('wss://localhost/_t', undefined), undefined);
    assert.equal(egressProxyFor('wss://edge.corp.example/_t', undefined), undefined);
    assert.equal(egressProxyFor('wss://tunnel.example:8443/_t', undefined), undefined);
    assert.equal(egressProxyFor('wss://tunnel.example/_t', undefined), 'http://p:3128', 'another port (443)');
  });
  withProxyEnv({ HTTPS_PROXY: 'http://p:3128', NO_PROXY: '*' }, () => {
    assert.equal(egressProxyFor('wss://anything.example/_t', undefined), undefined);
  });
});

test('NO_PROXY: a bare IPv6 address (::1) goes direct, as curl reads it', () => {
  withProxyEnv({ HTTP_PROXY: 'http://p:3128', NO_PROXY: 'localhost,127.0.0.1,::1' }, () => {
    assert.equal(egressProxyFor('ws://[::1]:8080/', undefined), undefined);
    assert.equal(egressProxyFor('ws://[0:0:0:0:0:0:0:1]/', undefined), undefined, 'the same address written long');
    assert.equal(egressProxyFor('ws://[fd00::1]/', undefined), 'http://p:3128');
  });
  withProxyEnv({ HTTP_PROXY: 'http://p:3128', NO_PROXY: '[fd00::1]:8080' }, () => {
    assert.equal(egressProxyFor('ws://[fd00::1]:8080/', undefined), undefined);
    assert.equal(egressProxyFor('ws://[fd00::1]:8081/', undefined), 'http://p:3128');
  });
});

test('NO_PROXY: address ranges and a domain with its subdomains go direct, as curl and Go read them', () => {
  // What Kubernetes and OpenShift clusters put there.
  withProxyEnv({ HTTP_PROXY: 'http://p:3128', NO_PROXY: '10.0.0.0/8,fd00::/8,svc.cluster.local,Example.COM' }, () => {
    assert.equal(egressProxyFor('ws://10.1.2.3:8080/_t', undefined), undefined);
    assert.equal(egressProxyFor('ws://11.1.2.3:8080/_t', undefined), 'http://p:3128');
    assert.equal(egressProxyFor('ws://[fd00::5]/_t', undefined), undefined);
    assert.equal(egressProxyFor('ws://[fe80::5]/_t', undefined), 'http://p:3128');
    assert.equal(egressProxyFor('ws://svc.cluster.local/_t', undefined), undefined);
    assert.equal(egressProxyFor('ws://tunnel.ns.svc.cluster.local:8080/_t', undefined), undefined);
    assert.equal(egressProxyFor('ws://notsvc.cluster.local/_t', undefined), 'http://p:3128');
    assert.equal(egressProxyFor('ws://edge.example.com/_t', undefined), undefined);
  });
  // Not ranges: proxied, as without the entry.
  withProxyEnv({ HTTP_PROXY: 'http://p:3128', NO_PROXY: '10.0.0.0/33,10.0.0.0/,/8,example/8,10.0.0.0/8/8' }, () => {
    assert.equal(egressProxyFor('ws://10.1.2.3/_t', undefined), 'http://p:3128');
  });
});

test('duplexwire request goes direct to an address NO_PROXY lists as a range', async (t) => {
  const { url, proxy, env } = await echoServerAndProxy(t);
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--import', 'tsx', 'src/cli/main.ts', 'request', url, 'x', 'hi'],
    { cwd: ROOT, env: { ...env, HTTP_PROXY: proxy.url, NO_PROXY: 'localhost,127.0.0.0/8' }, timeout: 20_000 },
  );
  assert.equal(stdout.trim(), 'echo hi');
  assert.deepEqual(proxy.requests, []);
});

test('logged without credentials', () => {
  assert.equal(redactedUrl('http://alice:secret@egress:3128'), 'http://***@egress:3128/');
  assert.equal(redactedUrl('http://egress:3128'), 'http://egress:3128/');
  assert.equal(redactedUrl('not a url'), '(not a URL)');
});

/** An echo server, a CONNECT proxy, and the environment without any proxy variable. */
async function echoServerAndProxy(t: TestContext) {
  const server = new Server({
    transport: wsTransport({ port: 0, host: '127.0.0.1' }),
    logger: recordingLogger(),
    onRequest: (_conn, msg) => utf8(`echo ${payloadText(msg.payload)}`),
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 200 }));
  const proxy = await startConnectProxy(t);
  const env: Record<string, string | undefined> = { ...process.env };
  for (const name of NAMES) {
    delete env[name];
    delete env[name.toUpperCase()];
  }
  return { url: `ws://127.0.0.1:${server.address()!.port}/`, port: server.address()!.port, proxy, env };
}

test('duplexwire request goes through the proxy the environment names', async (t) => {
  const { url, port, proxy, env } = await echoServerAndProxy(t);
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--import', 'tsx', 'src/cli/main.ts', 'request', url, 'x', 'hi'],
    { cwd: ROOT, env: { ...env, HTTP_PROXY: proxy.url }, timeout: 20_000 },
  );
  assert.equal(stdout.trim(), 'echo hi');
  assert.deepEqual(
    proxy.requests.map((r) => r.target),
    [`127.0.0.1:${port}`],
  );
});
