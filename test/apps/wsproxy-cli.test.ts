/**
 * `duplexwire wsproxy` as a real process: `--upstream` is required, `--forward-path` passes the
 * client's path and query on (never out of the upstream URL's path), messages make the round
 * trip, `--heartbeat` drops a vanished client, and SIGTERM closes both sides of every link with
 * 1001 and exits 0.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { UpgradeRequest } from '../../transports/types.ts';
import { forwardPathUpstream } from '../../src/cli/wsproxy.ts';
import { spawnCli } from '../fixtures/tunnel-helpers.ts';
import {
  openClient,
  rawUpgrade,
  startUpstream,
  UPGRADE_LINES,
  upgradeStatus,
  within,
} from '../fixtures/wsproxy-helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);

function cli(args: string[]) {
  return run(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: ROOT, timeout: 20_000 });
}

/** The port a `duplexwire wsproxy` process listens on, from its first log line. */
async function listening(proxy: ReturnType<typeof spawnCli>): Promise<number> {
  const line = await proxy.line((l) => l.msg === 'wsproxy listening');
  return Number(new URL(String(line.url)).port);
}

test('wsproxy refuses to start without --upstream, or with one that is not a ws URL; --help prints usage', async () => {
  const [missing, notWs, help] = await Promise.all([
    cli(['wsproxy', '--listen', '127.0.0.1:0']).catch((error: { code: number; stderr: string }) => error),
    cli(['wsproxy', '--upstream', 'http://127.0.0.1:1/', '--listen', '127.0.0.1:0']).catch(
      (error: { code: number; stderr: string }) => error,
    ),
    cli(['wsproxy', '--help']),
  ]);
  assert.equal((missing as { code: number }).code, 2);
  assert.match(missing.stderr, /--upstream <ws url> is required/);
  assert.equal((notWs as { code: number }).code, 2);
  assert.match(notWs.stderr, /ws or wss URL/);
  assert.match((help as { stdout: string }).stdout, /duplexwire wsproxy --upstream/);
});

test('wsproxy --forward-path: a round trip with the client’s path and query; SIGTERM closes both sides 1001, exit 0', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = spawnCli(t, [
    'wsproxy',
    '--upstream',
    `${upstream.url}/base/`,
    '--forward-path',
    '--listen',
    '127.0.0.1:0',
    '--drain-timeout',
    '2s',
  ]);
  const port = await listening(proxy);
  const client = await openClient(t, `ws://127.0.0.1:${port}/room/7?user=ann`, {
    headers: { authorization: 'Bearer t0k3n' },
  });
  const connection = await upstream.connection();
  assert.equal(connection.url, '/base/room/7?user=ann');
  assert.equal(connection.headers.authorization, 'Bearer t0k3n');
  client.ws.send('héllo');
  client.ws.send(Buffer.from([0, 1, 2, 255]));
  const echoed = await client.waitMessages(2);
  assert.deepEqual(
    echoed.map((m) => [m.binary, m.text]),
    [
      [false, 'héllo'],
      [true, Buffer.from([0, 1, 2, 255]).toString('utf8')],
    ],
  );
  assert.deepEqual([...echoed[1]!.data], [0, 1, 2, 255]);
  // Logs are JSON lines and carry no header values.
  assert.ok(proxy.logs.every((l) => l.raw === undefined && typeof l.level === 'string'));
  assert.ok(!JSON.stringify(proxy.logs).includes('t0k3n'));
  // Only a path is appended to the upstream URL: an absolute-form request target would otherwise
  // become part of it (here its path; with `--upstream ws://backend/` its host name).
  assert.equal(await rawUpgrade(port, 'x://y/', ['Host: x', 'Connection: Upgrade', ...UPGRADE_LINES]), 400);
  // Nor can dot segments climb out of /base/ (`new URL` would resolve them): 400.
  for (const path of ['/../admin', '/%2e%2e/internal/secret', '/room/..%2F..%2Fadmin', '/..\\admin']) {
    assert.equal(await rawUpgrade(port, path, ['Host: x', 'Connection: Upgrade', ...UPGRADE_LINES]), 400, path);
  }
  assert.equal(upstream.connections.length, 1);

  proxy.child.kill('SIGTERM');
  assert.equal((await within(client.closed, 3000, 'the client to be closed')).code, 1001);
  assert.equal((await within(connection.closed, 3000, 'the upstream to be closed')).code, 1001);
  assert.equal(await within(proxy.exited, 5000, 'the process to exit'), 0);
});

test('--forward-path keeps every upstream path under the base path, whatever new URL normalizes', () => {
  const request = (url: string): UpgradeRequest => {
    const query = url.indexOf('?');
    return {
      url,
      path: query === -1 ? url : url.slice(0, query),
      query: query === -1 ? '' : url.slice(query + 1),
      headers: {},
      remoteAddress: '127.0.0.1',
    };
  };
  const refused = { accept: false, status: 400, body: 'the path leaves the upstream base path' };
  for (const base of ['ws://up:9000/public', 'ws://up:9000/public/']) {
    const upstream = forwardPathUpstream(base);
    assert.equal(upstream(request('/chat?room=1')), 'ws://up:9000/public/chat?room=1');
    assert.equal(upstream(request('/')), 'ws://up:9000/public/');
    // What the proxy refuses before (dot segments) is refused here too, on its own.
    for (const path of ['/../admin', '/%2e%2e/internal', '/..\\admin', '/a/../../admin', '/../publicity']) {
      assert.deepEqual(upstream(request(path)), refused, `${base} + ${path}`);
    }
    // Resolved within the base: allowed.
    assert.equal(upstream(request('/a/../b')), 'ws://up:9000/public/a/../b');
  }
  // A base at the root cannot be left.
  assert.equal(forwardPathUpstream('ws://up/')(request('/x?y=1')), 'ws://up/x?y=1');
  // A base where the client's path cannot go, at startup.
  assert.throws(() => forwardPathUpstream('ws://up/base?k=v'), /query or fragment/);
  assert.throws(() => forwardPathUpstream('ws://up/base#top'), /query or fragment/);
  assert.throws(() => forwardPathUpstream('http://up/base'), /ws or wss/);
  assert.throws(() => forwardPathUpstream('not a url'), RangeError);
});

test('wsproxy --heartbeat: a client that vanished is dropped (the upstream gets 1001); a bad value does not start', async (t) => {
  const bad = await cli(['wsproxy', '--upstream', 'ws://127.0.0.1:1/', '--heartbeat', 'soon']).catch(
    (error: { code: number; stderr: string }) => error,
  );
  assert.equal((bad as { code: number }).code, 2);
  assert.match(bad.stderr, /--heartbeat must be a duration/);
  const upstream = await startUpstream(t);
  const proxy = spawnCli(t, ['wsproxy', '--upstream', upstream.url, '--listen', '127.0.0.1:0', '--heartbeat', '100ms']);
  const port = await listening(proxy);
  const client = await openClient(t, `ws://127.0.0.1:${port}/`);
  const connection = await upstream.connection();
  client.ws.pause();
  assert.deepEqual(await within(connection.closed, 3000, 'the upstream to be closed'), {
    code: 1001,
    reason: 'client went away',
  });
  proxy.child.kill('SIGTERM');
  assert.equal(await within(proxy.exited, 5000, 'the process to exit'), 0);
});

test('wsproxy without --forward-path sends every client to the upstream URL as given; --path limits the endpoint', async (t) => {
  const upstream = await startUpstream(t);
  const proxy = spawnCli(t, [
    'wsproxy',
    '--upstream',
    `${upstream.url}/fixed?k=v`,
    '--listen',
    '127.0.0.1:0',
    '--path',
    '/ws',
    '--max-connections',
    '1',
  ]);
  const port = await listening(proxy);
  const client = await openClient(t, `ws://127.0.0.1:${port}/ws?ignored=1`);
  assert.equal((await upstream.connection()).url, '/fixed?k=v');
  client.ws.send('ping');
  assert.equal((await client.waitMessages(1))[0]!.text, 'ping');
  assert.equal((await upgradeStatus(`ws://127.0.0.1:${port}/ws`)).status, 503, '--max-connections 1');
  assert.equal((await upgradeStatus(`ws://127.0.0.1:${port}/other`)).status, 404);
  proxy.child.kill('SIGINT');
  assert.equal((await within(client.closed, 3000, 'the client to be closed')).code, 1001);
  assert.equal(await within(proxy.exited, 5000, 'the process to exit'), 0);
});
