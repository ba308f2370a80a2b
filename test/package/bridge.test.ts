/**
 * `duplexwire/bridge` from the built package, by its name, on plain Node (dist/ is built by
 * `npm run build`, which `npm test` runs first): a bridge, a backend answering a message, a client.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

test('duplexwire/bridge works from plain node, by its name', () => {
  const script = `
    import http from 'node:http';
    import WebSocket from 'ws';
    import { WsHttpBridge, verifyEvent } from 'duplexwire/bridge';
    const secret = 's'.repeat(32);
    const quiet = { error() {}, warn() {}, info() {}, debug() {} };
    const backend = http.createServer((req, res) => {
      const parts = [];
      req.on('data', (p) => parts.push(p));
      req.on('end', () => {
        const body = Buffer.concat(parts);
        const ok = verifyEvent(secret, req.headers, body);
        if (req.headers['x-bridge-event'] === 'message') res.writeHead(200, { 'content-type': 'text/plain' }).end(ok + ' ' + body);
        else res.writeHead(204).end();
      });
    });
    await new Promise((r) => backend.listen(0, '127.0.0.1', r));
    const bridge = new WsHttpBridge({ backend: 'http://127.0.0.1:' + backend.address().port + '/', secret, logger: quiet });
    const { port } = await bridge.listen({ port: 0 });
    const ws = new WebSocket('ws://127.0.0.1:' + port + '/');
    await new Promise((r) => ws.once('open', r));
    const reply = new Promise((r) => ws.once('message', (d) => r(String(d))));
    ws.send('built');
    const text = await reply;
    await bridge.close();
    backend.close();
    console.log(JSON.stringify({ text }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.deepEqual(JSON.parse(out), { text: 'true built' });
});
