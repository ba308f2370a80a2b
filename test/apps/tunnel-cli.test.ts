/**
 * `duplexwire tunnel proxy|agent|token` as real processes: a round trip through both, refusals
 * at startup, and a graceful drain on SIGTERM that lets the request in flight finish.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { TunnelAgent } from '../../src/apps/tunnel/agent.ts';
import { TunnelProxy } from '../../src/apps/tunnel/proxy.ts';
import { loadTokenFile, tokenAuthenticator } from '../../src/apps/tunnel/tokens.ts';
import {
  type CliProcess,
  ID,
  OTHER_ID,
  OTHER_TOKEN,
  send,
  spawnAgent,
  spawnCli,
  startAgent,
  startProxy,
  startTarget,
  tempFile,
  TOKEN,
} from '../fixtures/tunnel-helpers.ts';
import { recordingLogger } from '../helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);

function cli(args: string[]) {
  return run(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: ROOT, timeout: 20_000 });
}

test('tunnel token prints a 256-bit token and its token-file entry, which the proxy accepts', async () => {
  const { stdout } = await cli(['tunnel', 'token', '--id', 'svc-1']);
  const token = /^token: (\S+)$/m.exec(stdout)?.[1];
  const entry = /^token file entry: (.+)$/m.exec(stdout)?.[1];
  assert.ok(token !== undefined && entry !== undefined, stdout);
  assert.equal(Buffer.from(token, 'base64url').length, 32);
  const parsed = JSON.parse(entry) as Record<string, string>;
  assert.match(parsed['svc-1']!, /^sha256:[0-9a-f]{64}$/);
  const auth = tokenAuthenticator(parsed);
  assert.ok(auth.verify('svc-1', token));
  assert.ok(!auth.verify('svc-2', token));
});

test('a tokens file that starts with a UTF-8 byte order mark (as Windows editors write it) is read', async (t) => {
  const file = await tempFile(t, 'tokens.json', `\uFEFF${JSON.stringify({ [ID]: TOKEN })}\r\n`);
  const auth = await loadTokenFile(file);
  assert.deepEqual(auth.ids(), [ID]);
  assert.ok(auth.verify(ID, TOKEN));
  // And the command starts with it.
  const proxy = spawnCli(t, ['tunnel', 'proxy', '--listen', '127.0.0.1:0', '--tokens', file]);
  await proxy.line((l) => l.msg === 'listening');
});

test('the proxy refuses to start without credentials unless --insecure; the agent without a token', async () => {
  await assert.rejects(
    cli(['tunnel', 'proxy', '--listen', '127.0.0.1:0']),
    (error: { code: number; stderr: string }) => {
      assert.equal(error.code, 2);
      assert.match(error.stderr, /--tokens/);
      return true;
    },
  );
  await assert.rejects(
    cli(['tunnel', 'agent', '--proxy', 'ws://127.0.0.1:1/_tunnel', '--id', ID, '--target', 'http://127.0.0.1:1']),
    (error: { code: number; stderr: string }) => {
      assert.match(error.stderr, /token/);
      return true;
    },
  );
  const { stderr } = await cli(['tunnel', 'nope']).catch((e: { stderr: string }) => e);
  assert.match(stderr, /usage/);
});

test('the commands answer --help with their usage, and a mistake on the command line with one line and exit code 2', async () => {
  for (const args of [
    ['tunnel', 'proxy', '--help'],
    ['tunnel', 'agent', '-h'],
    ['tunnel', 'token', '--help'],
  ]) {
    const { stdout } = await cli(args);
    assert.match(stdout, /^usage:\n {2}duplexwire tunnel proxy/, args.join(' '));
  }
  for (const args of [
    ['demo', '--help'],
    ['request', '-h'],
    ['request', 'ws://127.0.0.1:1/', 'echo', '--help'],
  ]) {
    const { stdout } = await cli(args);
    assert.match(stdout, /^usage:\n {2}duplexwire demo/, args.join(' '));
  }
  for (const [args, message] of [
    [['tunnel', 'agent', '--bogus'], /^duplexwire: Unknown option '--bogus'/],
    [['tunnel', 'proxy', '--listen', 'nope', '--insecure'], /^duplexwire: --listen must be host:port, got "nope"/],
    [['demo', '--port'], /^duplexwire: Option '--port <value>' argument missing/],
  ] as const) {
    await assert.rejects(cli([...args]), (error: { code: number; stderr: string }) => {
      assert.equal(error.code, 2, args.join(' '));
      assert.match(error.stderr, message);
      assert.doesNotMatch(error.stderr, /\n\s+at /, 'no stack trace');
      return true;
    });
  }
  // What the system refused is said as it is, without a stack either.
  await assert.rejects(
    cli(['tunnel', 'proxy', '--tokens', '/nonexistent/tokens.json']),
    (error: { code: number; stderr: string }) => {
      assert.equal(error.code, 1);
      assert.match(error.stderr, /^duplexwire: ENOENT: no such file or directory/);
      assert.doesNotMatch(error.stderr, /\n\s+at /);
      return true;
    },
  );
});

test('refused at startup with one line and exit code 2: a token file without ids, a weak or empty agent token, a bad target or id', async (t) => {
  const noIds = await tempFile(t, 'tokens.json', '{}');
  const weak = await tempFile(t, 'weak', 'password\n');
  const empty = await tempFile(t, 'empty', '\n');
  const good = await tempFile(t, 'token', `${TOKEN}\n`);
  const insecureProxy = ['tunnel', 'proxy', '--listen', '127.0.0.1:0', '--insecure'];
  const agent = (token: string, target = 'http://127.0.0.1:1') => [
    ...['tunnel', 'agent', '--proxy', 'ws://127.0.0.1:1/_tunnel', '--id', ID],
    ...['--token-file', token, '--target', target],
  ];
  for (const [args, message] of [
    [['tunnel', 'proxy', '--listen', '127.0.0.1:0', '--tokens', noIds], /token file .* has no entries/],
    [agent(weak), /at least 22 printable characters \(128 bits\)/],
    [agent(empty), /token file .* is empty/],
    [agent(good, 'nope'), /^duplexwire: ERR_INVALID_ARGUMENT: target must be an absolute http: or https: URL/],
    [['tunnel', 'token', '--id', 'no spaces'], /invalid client id "no spaces"/],
    [[...insecureProxy, '--public-ops', 'some'], /--public-ops must be health, all or none, got "some"/],
    [[...insecureProxy, '--no-ops', '--public-ops', 'all'], /--no-ops and --public-ops exclude each other/],
    [[...insecureProxy, '--no-ops', '--ops-listen', '127.0.0.1:0'], /--no-ops turns every ops endpoint off/],
    [[...insecureProxy, '--client-id-header', 'x tenant'], /--client-id-header must be a header name .*"x tenant"/],
    [[...insecureProxy, '--client-id-header', ''], /--client-id-header must be a header name .*""/],
    ...['0', '16385', 'lots', '1e3'].map(
      (value) =>
        [
          [...insecureProxy, '--max-inflight-per-agent', value],
          new RegExp(`--max-inflight-per-agent must be an integer in 1\\.\\.16384, got "${value}"`),
        ] as const,
    ),
  ] as const) {
    await assert.rejects(cli([...args]), (error: { code: number; stderr: string; stdout: string }) => {
      assert.equal(error.code, 2, `${args.join(' ')}: ${error.stderr}`);
      assert.match(error.stderr, message);
      assert.doesNotMatch(error.stderr, /\n\s+at /, 'no stack trace');
      assert.doesNotMatch(error.stdout, /listening|token file entry/);
      return true;
    });
  }
  // With --insecure, a token file without ids is what it says: any agent, none checked.
  const insecure = spawnCli(t, ['tunnel', 'proxy', '--listen', '127.0.0.1:0', '--tokens', noIds, '--insecure']);
  await insecure.line((l) => l.msg === 'listening');
});

test('the proxy process serves /metrics and /status (agent addresses) publicly only with --public-ops all; --ops-listen serves them privately', async (t) => {
  const proxy = ['tunnel', 'proxy', '--listen', '127.0.0.1:0', '--insecure'];
  const byDefault = spawnCli(t, proxy);
  const opsListen = spawnCli(t, [...proxy, '--ops-listen', '127.0.0.1:0']);
  const all = spawnCli(t, [...proxy, '--public-ops', 'all']);
  const privateOnly = spawnCli(t, [...proxy, '--public-ops', 'none', '--ops-listen', '127.0.0.1:0']);
  const noOps = spawnCli(t, [...proxy, '--no-ops']);
  /** The port of the public listener, or with `ops` of the ops listener. */
  const port = async (cli: CliProcess, ops = false) =>
    Number((await cli.line((l) => l.msg === (ops ? 'ops listening' : 'listening'))).port);
  const status = async (port: number, path: string) => (await send(port, { path, headers: {} })).status;
  const served = async (port: number) => ({
    healthz: await status(port, '/healthz'),
    readyz: await status(port, '/readyz'),
    metrics: await status(port, '/metrics'),
    status: await status(port, '/status'),
  });
  const health = { healthz: 200, readyz: 200, metrics: 400, status: 400 };
  const every = { healthz: 200, readyz: 200, metrics: 200, status: 200 };
  const none = { healthz: 400, readyz: 400, metrics: 400, status: 400 };

  assert.deepEqual(await served(await port(byDefault)), health);
  assert.ok(byDefault.logs.some((l) => /metrics and status page not served: --ops-listen/.test(String(l.msg))));
  assert.deepEqual(await served(await port(opsListen)), health);
  assert.deepEqual(await served(await port(opsListen, true)), every);
  assert.deepEqual(await served(await port(all)), every);
  assert.deepEqual(await served(await port(privateOnly)), none);
  assert.deepEqual(await served(await port(privateOnly, true)), every);
  assert.deepEqual(await served(await port(noOps)), none);
});

test('proxy --max-inflight-per-agent: the most requests in flight the proxy routes to each agent', async (t) => {
  const proxy = spawnCli(t, [
    'tunnel',
    'proxy',
    '--listen',
    '127.0.0.1:0',
    '--insecure',
    '--max-inflight-per-agent',
    '3',
  ]);
  const port = Number((await proxy.line((l) => l.msg === 'listening')).port);
  const agent = new TunnelAgent({
    proxyUrl: `ws://127.0.0.1:${port}/_tunnel`,
    id: ID,
    token: TOKEN,
    target: 'http://127.0.0.1:1',
    logger: recordingLogger(),
  });
  t.after(() => agent.close(0));
  await agent.start();
  assert.equal((await proxy.line((l) => l.msg === 'agent connected')).maxInflight, 3);
});

test('a proxy that fails to start exits with the error: nothing it opened keeps it running', async (t) => {
  // A port in use, for --listen and --ops-listen.
  const taken = createNetServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => taken.close(() => resolve())));
  const inUse = `127.0.0.1:${(taken.address() as AddressInfo).port}`;
  const tokens = await tempFile(t, 'tokens.json', JSON.stringify({ [ID]: TOKEN }));
  const secret = await tempFile(t, 'secret', 'the-cluster-secret-of-the-command-line-test');
  // The cluster's Redis connection is open before the proxy is made and listens.
  const cluster = [
    '--cluster-redis',
    'redis://127.0.0.1:6379',
    '--cluster-advertise',
    'http://127.0.0.1:1',
    '--cluster-secret-file',
    secret,
    '--cluster-prefix',
    `duplexwire:test:cli:${process.pid}:`,
  ];
  const proxy = ['tunnel', 'proxy', '--tokens', tokens];
  for (const [args, code, message] of [
    [[...proxy, '--listen', '127.0.0.1:0', '--ops-listen', inUse], 1, /EADDRINUSE/],
    [[...proxy, '--listen', '127.0.0.1:0', '--ops-listen', 'nope'], 2, /--ops-listen must be host:port/],
    [[...proxy, '--listen', inUse, ...cluster], 1, /EADDRINUSE/],
    [[...proxy, '--listen', '127.0.0.1:0', '--timeout', 'soon', ...cluster], 2, /requestTimeout must be a duration/],
  ] as const) {
    await assert.rejects(cli([...args]), (error: { code: number | null; stderr: string; stdout: string }) => {
      assert.equal(error.code, code, `${args.join(' ')}: ${error.stderr}`);
      assert.match(error.stderr, message);
      return true;
    });
  }
  // A mistake on the command line is found before anything listens.
  const refused = await cli([...proxy, '--listen', '127.0.0.1:0', '--ops-listen', 'nope']).catch(
    (error: { stdout: string }) => error,
  );
  assert.doesNotMatch(refused.stdout, /listening/);
});

test('proxy and agent processes: a request through both; SIGTERM drains, finishing the request in flight', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  let arrived!: () => void;
  const inTarget = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  const target = await startTarget(t, (req, res) => {
    if (req.url === '/slow') {
      arrived();
      held.then(() => res.end('slow done'));
      return;
    }
    res.end(`hello ${req.url} via ${req.headers['x-forwarded-for']}`);
  });
  const tokens = await tempFile(t, 'tokens.json', JSON.stringify({ [ID]: TOKEN }));
  const tokenFile = await tempFile(t, 'token', `${TOKEN}\n`);
  const proxy = spawnCli(t, [
    'tunnel',
    'proxy',
    '--listen',
    '127.0.0.1:0',
    '--tokens',
    tokens,
    '--agents-path',
    '/agents',
  ]);
  const port = Number((await proxy.line((l) => l.msg === 'listening')).port);
  const agent = spawnCli(t, [
    'tunnel',
    'agent',
    '--proxy',
    `ws://127.0.0.1:${port}/agents`,
    '--id',
    ID,
    '--token-file',
    tokenFile,
    '--target',
    target.url,
  ]);
  await agent.line((l) => l.msg === 'connected to the proxy');
  await proxy.line((l) => l.msg === 'agent connected');
  const reply = await send(port, { path: '/any/path?q=1' });
  assert.equal(reply.status, 200);
  assert.equal(reply.text, 'hello /any/path?q=1 via 127.0.0.1');
  // Every log line is JSON, and none carries the token.
  assert.ok(proxy.logs.every((l) => l.raw === undefined && typeof l.time === 'string' && typeof l.level === 'string'));
  assert.ok(!JSON.stringify([...proxy.logs, ...agent.logs]).includes(TOKEN));

  const slow = send(port, { path: '/slow' });
  await inTarget;
  proxy.child.kill('SIGTERM');
  await proxy.line((l) => l.msg === 'draining');
  // New work is refused while the old one finishes.
  const refused = await send(port).catch(() => undefined);
  if (refused !== undefined) assert.equal(refused.status, 503);
  release();
  const finished = await slow;
  assert.equal(finished.status, 200);
  assert.equal(finished.text, 'slow done');
  assert.equal(await proxy.exited, 0);
  await agent.line((l) => l.msg === 'disconnected from the proxy' && l.code === 1001);
  agent.child.kill('SIGTERM');
  assert.equal(await agent.exited, 0);
});

test('an agent process refused for good on a reconnect exits 1 and says why', async (t) => {
  const target = await startTarget(t, (_req, res) => res.end('ok'));
  // A proxy that knows the agent, then, on the same port, one that no longer does.
  const first = await startProxy(t);
  const agent = await spawnAgent(t, first, target.url);
  await first.proxy.close();
  await startProxy(t, { tokens: { [OTHER_ID]: OTHER_TOKEN } }, first.port);
  await agent.line((l) => l.msg === 'gave up connecting to the proxy; exiting');
  assert.equal(await agent.exited, 1);
  assert.ok(agent.logs.some((l) => l.msg === 'connection to the proxy failed' && JSON.stringify(l).includes('401')));
});

test('an agent process refused at its first connection exits 1, its last words the refusal', async (t) => {
  const proxy = await startProxy(t, { tokens: { [OTHER_ID]: OTHER_TOKEN } });
  const agent = await spawnAgent(t, proxy, 'http://127.0.0.1:1', { registered: false });
  assert.equal(await agent.exited, 1);
  assert.ok(agent.logs.some((l) => l.msg === 'connection to the proxy failed' && JSON.stringify(l).includes('401')));
  // Not followed by what closing the agent did to its own start (a misleading "client was closed").
  assert.equal(agent.logs.at(-1)?.msg, 'gave up connecting to the proxy; exiting', JSON.stringify(agent.logs));
});

test('mounted on an existing http.Server next to the application’s own routes', async (t) => {
  const target = await startTarget(t, (req, res) => res.end(`tunneled ${req.url}`));
  const proxy = new TunnelProxy({ tokens: { [ID]: TOKEN }, logger: recordingLogger(), processMetrics: false });
  const server = createServer((req, res) => {
    if (req.url?.startsWith('/app/')) res.end('the app itself');
    else proxy.handleRequest(req, res);
  });
  await proxy.attach(server, { requests: false });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    await proxy.close();
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const started = {
    proxy,
    port,
    base: `http://127.0.0.1:${port}`,
    agentsUrl: `ws://127.0.0.1:${port}/_tunnel`,
    logger: recordingLogger(),
  };
  await startAgent(t, started, { target: target.url });
  assert.equal((await send(port, { path: '/app/x' })).text, 'the app itself');
  assert.equal((await send(port, { path: '/y' })).text, 'tunneled /y');
  assert.deepEqual(proxy.address(), { host: '127.0.0.1', port });
});
