/**
 * `duplexwire/wsproxy` from the built package, by its name, on plain Node (dist/ is built by
 * `npm run build`, which `npm test` runs first): a proxy in front of a `ws` server, one round trip.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

test('duplexwire/wsproxy works from plain node, by its name', () => {
  const script = `
    import { WebSocketServer, WebSocket } from 'ws';
    import { WsProxy } from 'duplexwire/wsproxy';
    const quiet = { error() {}, warn() {}, info() {}, debug() {} };
    const upstream = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((r) => upstream.once('listening', r));
    upstream.on('connection', (ws, req) => ws.on('message', (d) => ws.send('upstream ' + req.url + ' ' + d)));
    const proxy = new WsProxy({ upstream: (req) => 'ws://127.0.0.1:' + upstream.address().port + req.url, logger: quiet });
    const { port } = await proxy.listen({ port: 0 });
    const ws = new WebSocket('ws://127.0.0.1:' + port + '/p?q=1');
    await new Promise((r) => ws.once('open', r));
    const reply = new Promise((r) => ws.once('message', (d) => r(String(d))));
    ws.send('built');
    const text = await reply;
    const code = new Promise((r) => ws.once('close', (c) => r(c)));
    await proxy.close();
    upstream.close();
    console.log(JSON.stringify({ text, code: await code }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.deepEqual(JSON.parse(out), { text: 'upstream /p?q=1 built', code: 1001 });
});
