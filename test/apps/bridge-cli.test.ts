/**
 * `duplexwire bridge` as a real process: a message to the backend and its answer back, a
 * callback, refusals at startup, and a graceful stop on SIGTERM that still posts the close event.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { verifyEvent } from '../../src/apps/bridge/signature.ts';
import { spawnCli, tempFile } from '../fixtures/tunnel-helpers.ts';
import { waitFor } from '../helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);
const SECRET = 'cli-test-secret-of-at-least-32-bytes!';

function cli(args: string[], env: Record<string, string> = {}) {
  return run(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    cwd: ROOT,
    timeout: 20_000,
    env: { ...process.env, ...env },
  });
}

test('bridge refuses to start without --backend or a secret, and with a short secret', async (t) => {
  const short = await tempFile(t, 'short', 'too short\n');
  for (const [args, pattern] of [
    [['bridge', '--secret-file', short], /--backend/],
    [['bridge', '--backend', 'http://127.0.0.1:1/'], /secret/],
    [['bridge', '--backend', 'http://127.0.0.1:1/', '--secret-file', short, '--listen', '127.0.0.1:0'], /32 bytes/],
  ] as const) {
    await assert.rejects(
      cli([...args], { DUPLEXWIRE_BRIDGE_SECRET: '' }),
      (error: { code: number; stderr: string }) => {
        assert.equal(error.code, 2, 'a configuration mistake is a usage error');
        assert.match(error.stderr, pattern);
        return true;
      },
    );
  }
  const { stdout } = await cli(['bridge', '--help']);
  assert.match(stdout, /duplexwire bridge --backend/);
});

test('bridge process: messages reach the backend signed, answers and callbacks reach the client, SIGTERM posts the close', async (t) => {
  const events: Array<{ event: string; connection: string; body: string; signed: boolean; callback?: string }> = [];
  const backend = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (part: Buffer) => parts.push(part));
    req.on('end', () => {
      const body = Buffer.concat(parts);
      const event = String(req.headers['x-bridge-event']);
      const connection = String(req.headers['x-bridge-connection']);
      const signed = verifyEvent(SECRET, req.headers, body);
      const callback = req.headers['x-bridge-callback'] as string | undefined;
      events.push({
        event,
        connection,
        body: body.toString(),
        signed,
        ...(callback === undefined ? {} : { callback }),
      });
      if (event === 'message') res.writeHead(200, { 'content-type': 'text/plain' }).end(`got ${body}`);
      else res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
  t.after(() => backend.close());
  const secretFile = await tempFile(t, 'secret', `${SECRET}\n`);
  const bridge = spawnCli(t, [
    'bridge',
    '--backend',
    `http://127.0.0.1:${(backend.address() as AddressInfo).port}/events`,
    '--secret-file',
    secretFile,
    '--listen',
    '127.0.0.1:0',
    '--path',
    '/ws',
  ]);
  const listening = await bridge.line((l) => l.msg === 'bridge listening');
  const url = String(listening.url);
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/ws$/);

  const ws = new WebSocket(url.replace(/^http/, 'ws'));
  const received: string[] = [];
  ws.on('message', (data) => received.push(String(data)));
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  ws.send('hello');
  await waitFor(() => received.length === 1, 5_000, 'the answer');
  assert.deepEqual(received, ['got hello']);

  const message = events.find((e) => e.event === 'message')!;
  assert.equal(message.body, 'hello');
  assert.match(message.callback!, /^http:\/\/127\.0\.0\.1:\d+\/connections\/[A-Za-z0-9_-]{32}$/);
  const pushed = await fetch(message.callback!, {
    method: 'POST',
    headers: { 'content-type': 'text/plain' },
    body: 'pushed',
  });
  assert.equal(pushed.status, 204);
  await waitFor(() => received.length === 2, 5_000, 'the pushed message');
  assert.equal(received[1], 'pushed');

  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
  bridge.child.kill('SIGTERM');
  assert.equal(await closed, 1001);
  assert.equal(await bridge.exited, 0);
  assert.deepEqual(
    events.map((e) => [e.event, e.signed]),
    [
      ['connect', true],
      ['message', true],
      ['close', true],
    ],
  );
  assert.deepEqual(JSON.parse(events[2]!.body), { code: 1001, reason: 'bridge shutting down', dropped: 0 });
  assert.ok(new Set(events.map((e) => e.connection)).size === 1, 'one connection id throughout');
  assert.ok(!JSON.stringify(bridge.logs).includes(message.callback!.slice(-32)), 'no callback token in the logs');
});
