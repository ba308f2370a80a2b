/**
 * A command whose output nobody reads any more (`| head`, a log shipper or journald restarting)
 * keeps serving: a write to a closed pipe (EPIPE) loses that line, it does not end the process.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { send, spawnCli } from '../fixtures/tunnel-helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

test('stdout closed: the tunnel proxy writes its address there, keeps serving, and drains on SIGTERM (exit 0)', async (t) => {
  const proxy = spawnCli(t, ['tunnel', 'proxy', '--listen', '127.0.0.1:0', '--insecure']);
  // Closed before the process is far enough to write anything.
  proxy.child.stdout!.destroy();
  const port = Number((await proxy.line((l) => l.msg === 'listening')).port);
  // An id without an agent: answered (503) and logged; then the health check.
  assert.equal((await send(port, { headers: { 'x-duplexwire-client-id': 'nobody' } })).status, 503);
  assert.equal((await send(port, { path: '/healthz', headers: {} })).status, 200);
  proxy.child.kill('SIGTERM');
  assert.equal(await proxy.exited, 0);
});

test('stderr closed: the tunnel proxy logs every request into it, keeps serving, and drains on SIGTERM (exit 0)', async (t) => {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'src/cli/main.ts', 'tunnel', 'proxy', '--listen', '127.0.0.1:0', '--insecure'],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  child.stderr.destroy();
  let stdout = '';
  child.stdout.setEncoding('utf8');
  const address = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (text: string) => {
      stdout += text;
      const found = /listening on (http:\/\/\S+)/.exec(stdout);
      if (found !== null) resolve(found[1]!);
    });
    child.once('exit', (code) => reject(new Error(`exited ${code} before listening; stdout: ${stdout}`)));
  });
  const port = Number(new URL(address).port);
  for (let i = 0; i < 3; i++) {
    assert.equal((await send(port, { headers: { 'x-duplexwire-client-id': `nobody-${i}` } })).status, 503);
  }
  assert.equal((await send(port, { path: '/healthz', headers: {} })).status, 200);
  child.kill('SIGTERM');
  assert.deepEqual(await exited, [0, null]);
});
