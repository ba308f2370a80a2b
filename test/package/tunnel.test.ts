/**
 * `duplexwire/tunnel` from the built package, by its name, on plain Node (dist/ is built by
 * `npm run build`, which `npm test` runs first): a proxy, an in-process agent and one request.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

test('duplexwire/tunnel works from plain node, by its name', () => {
  const script = `
    import http from 'node:http';
    import { TunnelProxy, TunnelAgent, generateToken } from 'duplexwire/tunnel';
    const quiet = { error() {}, warn() {}, info() {}, debug() {} };
    const token = generateToken();
    const proxy = new TunnelProxy({ tokens: { app: token }, logger: quiet, processMetrics: false });
    const { port } = await proxy.listen({ port: 0 });
    const agent = new TunnelAgent({
      proxyUrl: 'ws://127.0.0.1:' + port + '/_tunnel', id: 'app', token, logger: quiet,
      handler: (request) => new Response('built ' + new URL(request.url).pathname),
    });
    await agent.start();
    while (proxy.agents('app').length === 0) await new Promise((r) => setTimeout(r, 10));
    const text = await new Promise((resolve, reject) => {
      http.get({ port, path: '/x', headers: { 'x-duplexwire-client-id': 'app' } }, (res) => {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => resolve(res.statusCode + ' ' + body));
      }).on('error', reject);
    });
    await agent.close(0);
    await proxy.close();
    console.log(JSON.stringify({ text }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.deepEqual(JSON.parse(out.trim()), { text: '200 built /x' });
});

test('the CLI runs the tunnel from the build', () => {
  const out = execFileSync(process.execPath, ['dist/src/cli/main.js', 'tunnel', 'token', '--id', 'x'], {
    cwd: root,
    encoding: 'utf8',
  });
  assert.match(out, /^token: \S{43}$/m);
});
