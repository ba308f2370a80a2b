/**
 * Bounded memory: 1 GiB down and 1 GiB up through the tunnel, with the proxy and the agent
 * running as real `duplexwire tunnel` processes whose RSS is sampled during the transfer (from
 * /proc, Linux). The bytes are generated and consumed here without buffering: one reused block
 * written with backpressure, and a counter on the receiving side.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { test } from 'node:test';
import { ID, spawnCli, startTarget, tempFile, TOKEN } from '../fixtures/tunnel-helpers.ts';
import { tokenDigest } from '../../src/apps/tunnel/tokens.ts';

const GiB = 1024 * 1024 * 1024;
const LIMIT = 64 * 1024 * 1024;
const BLOCK = Buffer.alloc(1024 * 1024, 0x5a);

function rss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match === null ? 0 : Number(match[1]) * 1024;
}

/** Samples the RSS of `pids` every 50 ms until stopped; returns the peak of each. */
function sampler(pids: number[]): { stop(): number[] } {
  const peaks = pids.map(rss);
  const timer = setInterval(() => {
    pids.forEach((pid, i) => {
      peaks[i] = Math.max(peaks[i]!, rss(pid));
    });
  }, 50);
  return {
    stop() {
      clearInterval(timer);
      return peaks;
    },
  };
}

function download(port: number, size: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      path: `/down?size=${size}`,
      headers: { 'x-duplexwire-client-id': ID },
      agent: false,
    });
    req.on('error', reject);
    req.on('response', (res) => {
      let got = 0;
      res.on('data', (chunk: Buffer) => {
        got += chunk.length;
      });
      res.on('end', () => resolve(got));
      res.on('error', reject);
    });
    req.end();
  });
}

function upload(port: number, size: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/up',
      headers: { 'x-duplexwire-client-id': ID, 'content-length': String(size) },
      agent: false,
    });
    req.on('error', reject);
    req.on('response', (res) => {
      let text = '';
      res.on('data', (c: Buffer) => {
        text += c;
      });
      res.on('end', () => resolve(`${res.statusCode} ${text}`));
    });
    let sent = 0;
    const pump = (): void => {
      while (sent < size) {
        const n = Math.min(BLOCK.length, size - sent);
        sent += n;
        if (!req.write(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n))) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}

test('1 GiB down and 1 GiB up with proxy and agent RSS growing by less than 64 MB', {
  skip: process.platform !== 'linux',
}, async (t) => {
  const target = await startTarget(t, (req, res) => {
    if (req.url?.startsWith('/down')) {
      const size = Number(new URL(req.url, 'http://x').searchParams.get('size'));
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
      let sent = 0;
      const pump = (): void => {
        while (sent < size) {
          const n = Math.min(BLOCK.length, size - sent);
          sent += n;
          if (!res.write(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n))) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
      return;
    }
    let got = 0;
    req.on('data', (chunk: Buffer) => {
      got += chunk.length;
    });
    req.on('end', () => res.end(String(got)));
  });
  const tokens = await tempFile(t, 'tokens.json', JSON.stringify({ [ID]: tokenDigest(TOKEN) }));
  const tokenFile = await tempFile(t, 'token', TOKEN);
  const proxyInfo = spawnCli(t, [
    'tunnel',
    'proxy',
    '--listen',
    '127.0.0.1:0',
    '--tokens',
    tokens,
    '--max-body',
    'unlimited',
  ]);
  const listening = await proxyInfo.line((l) => l.msg === 'listening');
  const port = Number(listening.port);
  const agent = spawnCli(t, [
    'tunnel',
    'agent',
    '--proxy',
    `ws://127.0.0.1:${port}/_tunnel`,
    '--id',
    ID,
    '--token-file',
    tokenFile,
    '--target',
    target.url,
  ]);
  await agent.line((l) => l.msg === 'connected to the proxy');
  await proxyInfo.line((l) => l.msg === 'agent connected');
  const pids = [proxyInfo.child.pid!, agent.child.pid!];

  // Warm up (JIT, pools, first allocations), then measure from there.
  assert.equal(await download(port, 16 * 1024 * 1024), 16 * 1024 * 1024);
  assert.equal(await upload(port, 16 * 1024 * 1024), `200 ${16 * 1024 * 1024}`);
  const base = pids.map(rss);

  let started = performance.now();
  let sampling = sampler(pids);
  assert.equal(await download(port, GiB), GiB);
  let peaks = sampling.stop();
  const downSeconds = (performance.now() - started) / 1000;
  const downGrowth = peaks.map((p, i) => p - base[i]!);

  started = performance.now();
  sampling = sampler(pids);
  assert.equal(await upload(port, GiB), `200 ${GiB}`);
  peaks = sampling.stop();
  const upSeconds = (performance.now() - started) / 1000;
  const upGrowth = peaks.map((p, i) => p - base[i]!);

  const mb = (n: number) => (n / 1e6).toFixed(1);
  t.diagnostic(
    `baseline RSS proxy ${mb(base[0]!)} MB, agent ${mb(base[1]!)} MB; ` +
      `down 1 GiB in ${downSeconds.toFixed(1)} s (${(1024 / downSeconds).toFixed(0)} MiB/s), growth proxy ${mb(downGrowth[0]!)} MB, agent ${mb(downGrowth[1]!)} MB; ` +
      `up 1 GiB in ${upSeconds.toFixed(1)} s (${(1024 / upSeconds).toFixed(0)} MiB/s), growth proxy ${mb(upGrowth[0]!)} MB, agent ${mb(upGrowth[1]!)} MB`,
  );
  for (const [what, growth] of [
    ['download', downGrowth],
    ['upload', upGrowth],
  ] as const) {
    assert.ok(growth[0]! < LIMIT, `${what}: proxy RSS grew by ${mb(growth[0]!)} MB`);
    assert.ok(growth[1]! < LIMIT, `${what}: agent RSS grew by ${mb(growth[1]!)} MB`);
  }
});
