/**
 * Imports the built package by its name, exactly as a user on plain Node would (the `exports` map
 * points at dist/, built by `npm run build`, which `npm test` runs first).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

test('the built package works from plain node, by its name', () => {
  const script = `
    import { Server, Client, utf8, payloadText, RequestError } from 'duplexwire';
    import { wsTransport, wsClientTransport } from 'duplexwire/transports/ws';
    import { decode, encodeRequest } from 'duplexwire/protocol';
    import { Client as BrowserSafeClient } from 'duplexwire/client';
    const server = new Server({
      transport: wsTransport({ port: 0 }),
      logger: { error() {}, warn() {}, info() {}, debug() {} },
      onRequest: (conn, msg) => {
        if (msg.name === 'fail') throw new RequestError('NOPE', 'refused');
        return msg.payload;
      },
    });
    await server.listen();
    const url = 'ws://127.0.0.1:' + server.address().port + '/';
    const client = new Client(url, { reconnect: false });
    const reply = await client.request('echo', utf8('built'));
    let code;
    try { await client.request('fail', utf8('x')); } catch (e) { code = e.code; }
    const decoded = decode(encodeRequest(1, 'n', utf8('p')));
    await client.close();
    await server.shutdown();
    console.log(JSON.stringify({ reply: payloadText(reply), code, kind: decoded.kind, same: BrowserSafeClient === Client }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.deepEqual(JSON.parse(out.trim()), { reply: 'built', code: 'NOPE', kind: 'request', same: true });
});

test('the CLI prints its usage', () => {
  const out = execFileSync(process.execPath, ['dist/src/cli/main.js', '--help'], { cwd: root, encoding: 'utf8' });
  assert.match(out, /duplexwire demo/);
});

test('duplexwire/client/bundle resolves to the browser bundle a server can serve', () => {
  const script = `
    import { readFileSync } from 'node:fs';
    const file = new URL(import.meta.resolve('duplexwire/client/bundle'));
    const text = readFileSync(file, 'utf8');
    console.log(JSON.stringify({ path: file.pathname.endsWith('/dist/browser/duplexwire-client.js'), esm: /export\\s*\\{/.test(text) }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  assert.deepEqual(JSON.parse(out.trim()), { path: true, esm: true });
});
