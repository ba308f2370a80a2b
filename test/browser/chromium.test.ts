/**
 * The browser client in a real headless Chromium (Debian's `chromium`, driven by playwright-core),
 * against a real duplexwire Server on each server transport (ws and uWebSockets.js).
 *
 * A small HTTP server on 127.0.0.1 serves a page whose `<script type="module">` imports the
 * bundle a user would ship (dist/browser/duplexwire-client.js, from `npm run build`) and exposes a
 * harness on `window`; the tests drive it with `page.evaluate`. The client is built without a
 * transport, so the bundle's default (the standard-WebSocket adapter) is what runs.
 *
 * Outside CI the tests are skipped when Chromium is not installed; under CI=true they must run
 * (.ci/run installs it).
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type TestContext, test } from 'node:test';
import type { Page } from 'playwright-core';
import { binary, payloadText, utf8, utf16 } from '../../protocol/payload.ts';
import type { Payload } from '../../protocol/types.ts';
import type { Logger } from '../../src/logger.ts';
import type { Connection } from '../../src/server/connection.ts';
import { Server } from '../../src/server/server.ts';
import { MemorySessionManager } from '../../src/session/memory-store.ts';
import { uwsTransport } from '../../transports/uws.ts';
import { wsTransport } from '../../transports/ws.ts';
import { freePort } from '../transport-under-test.ts';
import { launchChromium, skipWithoutChromium } from './chromium.ts';

const skip = skipWithoutChromium;

const bundleUrl = new URL('../../dist/browser/duplexwire-client.js', import.meta.url);

/** Strings that cross every encoding boundary: non-ASCII, a surrogate pair, an empty-ish edge. */
const TEXTS = ['hello', 'héllo wörld ✓', 'emoji 😀 and 𝄞 (surrogate pairs)', '\u0000 nul and \uffff'];

/**
 * The page's harness, in plain JavaScript (it runs in the browser as is). It exposes
 * `window.harness` once the bundle is loaded, and keeps what the client observed in
 * `harness.log`.
 */
const HARNESS = `
import * as dw from './duplexwire-client.js';

const log = { signals: [], events: [], serverRequests: [], errors: [] };
let client;

const show = (p) => p.encoding === 'binary' ? { encoding: 'binary', bytes: [...p.data] } : { encoding: p.encoding, text: dw.payloadText(p) };
const make = (encoding, value) => encoding === 'binary' ? dw.binary(new Uint8Array(value)) : encoding === 'utf8' ? dw.utf8(value) : dw.utf16(value);
const reverse = (p) => p.encoding === 'binary' ? dw.binary(p.data.slice().reverse()) : make(p.encoding, [...dw.payloadText(p)].reverse().join(''));

window.harness = {
  log,
  async connect(url, store) {
    client = new dw.Client(url, {
      sessionKeyStore: dw.localStorageKeyStore(store),
      reconnect: { initialDelay: 50, maxDelay: 250 },
      requestTimeout: 8000,
      connectTimeout: 4000,
      onRequest: (msg) => {
        log.serverRequests.push({ name: msg.name, ...show(msg.payload) });
        if (msg.name !== 'reverse') throw new Error('unknown request ' + msg.name);
        return reverse(msg.payload);
      },
    });
    client.on('signal', (m) => log.signals.push({ name: m.name, ...show(m.payload) }));
    client.on('connect', () => log.events.push('connect'));
    client.on('disconnect', (info) => log.events.push('disconnect ' + info.code));
    client.on('sessionCreated', () => log.events.push('sessionCreated'));
    client.on('sessionRestored', () => log.events.push('sessionRestored'));
    client.on('sessionClosed', () => log.events.push('sessionClosed'));
    client.on('error', (e) => log.errors.push(e.name + ': ' + e.message));
    await client.connect();
    return { state: client.state, v21: client.supportsV21 };
  },
  async request(name, encoding, value) {
    return show(await client.request(name, make(encoding, value)));
  },
  signal(name, encoding, value) {
    return client.signal(name, make(encoding, value));
  },
  state() {
    return client.state;
  },
  session() {
    const s = client.session;
    return s === null ? null : { key: s.key, info: s.info ?? null };
  },
  stored(store) {
    return localStorage.getItem(store);
  },
  async close() {
    await client?.close();
  },
};
`;

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>duplexwire browser test</title></head>
<body><script type="module">${HARNESS}</script></body></html>`;

/** Serves the page and the bundle on 127.0.0.1 at a free port. */
async function startHttp(t: TestContext): Promise<string> {
  const bundle = readFileSync(bundleUrl);
  const http: HttpServer = createServer((req, res) => {
    if (req.url === '/' || req.url === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(PAGE);
    } else if (req.url === '/duplexwire-client.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-store' });
      res.end(bundle);
    } else if (req.url === '/favicon.ico') {
      res.writeHead(204).end();
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      }),
  );
  return `http://127.0.0.1:${(http.address() as AddressInfo).port}/`;
}

/** What the server side of a run saw. */
interface ServerRecord {
  readonly connections: Connection[];
  readonly signals: Array<{ name: string; encoding: string; text: string }>;
  readonly errors: string[];
}

type Kind = 'ws' | 'uws';

function recordingLogger(errors: string[]): Logger {
  const ignore = (): void => {};
  return { error: (message) => errors.push(message), warn: ignore, info: ignore, debug: ignore };
}

async function startServer(
  kind: Kind,
  port: number,
  sessions: MemorySessionManager,
  record: ServerRecord,
): Promise<Server> {
  const transport =
    kind === 'ws' ? wsTransport({ host: '127.0.0.1', port }) : uwsTransport({ host: '127.0.0.1', port });
  const server = new Server({
    transport,
    sessionManager: sessions,
    logger: recordingLogger(record.errors),
    shutdownTimeout: 1000,
    onClientConnected: (conn) => {
      record.connections.push(conn);
    },
    onSignal: (_conn, msg) => {
      record.signals.push({ name: msg.name, encoding: msg.payload.encoding, text: payloadText(msg.payload) });
    },
    onRequest: async (conn, msg) => {
      switch (msg.name) {
        case 'echo':
          return msg.payload;
        case 'login': {
          const session = await conn.createSession({ user: payloadText(msg.payload) });
          return utf8(session.key);
        }
        case 'whoami':
          return utf8(JSON.stringify({ key: conn.session?.key ?? null, user: conn.session?.info?.user ?? null }));
        default:
          throw new Error(`no handler for ${msg.name}`);
      }
    },
  });
  await server.listen();
  return server;
}

/** `page.evaluate` with a deadline, so a stuck page fails the test instead of hanging it. */
async function run<T>(what: string, fn: () => Promise<T>, ms = 15_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer from the page within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([fn(), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Loads the page (again) and waits for its harness. */
async function load(page: Page, url: string, reload = false): Promise<void> {
  if (reload) await page.reload({ waitUntil: 'load' });
  else await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => 'harness' in window, null, { timeout: 10_000 });
}

declare global {
  interface Window {
    harness: {
      log: {
        signals: Array<{ name: string; encoding: string; text?: string; bytes?: number[] }>;
        events: string[];
        serverRequests: Array<{ name: string; encoding: string; text?: string; bytes?: number[] }>;
        errors: string[];
      };
      connect(url: string, store: string): Promise<{ state: string; v21: boolean }>;
      request(
        name: string,
        encoding: string,
        value: string | number[],
      ): Promise<{ encoding: string; text?: string; bytes?: number[] }>;
      signal(name: string, encoding: string, value: string | number[]): boolean;
      state(): string;
      session(): { key: string; info: Record<string, unknown> | null } | null;
      stored(store: string): string | null;
      close(): Promise<void>;
    };
  }
}

/** Polls `check` (in Node) until it holds, up to `ms`. */
async function until(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('browser client in headless Chromium', { skip, timeout: 180_000 }, async (t) => {
  assert.ok(existsSync(bundleUrl), 'dist/browser/duplexwire-client.js is missing: run npm run build first');
  const pageUrl = await startHttp(t);
  const context = await launchChromium(t);

  for (const kind of ['ws', 'uws'] as const) {
    await t.test(`against a ${kind} server`, { timeout: 90_000 }, async (t) => {
      const sessions = new MemorySessionManager();
      const record: ServerRecord = { connections: [], signals: [], errors: [] };
      let server = await startServer(kind, kind === 'uws' ? await freePort() : 0, sessions, record);
      t.after(() => server.shutdown({ timeout: 500 }));
      const port = server.address()!.port;
      const wsUrl = `ws://127.0.0.1:${port}/`;
      const store = `duplexwire.test.${kind}`;

      const page = await context.newPage();
      page.setDefaultTimeout(10_000);
      t.after(() => page.close());
      const pageErrors: string[] = [];
      const consoleLines: string[] = [];
      page.on('pageerror', (error) => pageErrors.push(String(error)));
      page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
      t.after(() => {
        if (pageErrors.length > 0 || record.errors.length > 0) {
          console.log(`[${kind}] page console:\n${consoleLines.join('\n')}`);
        }
      });

      await load(page, pageUrl);
      const connected = await run('connect', () =>
        page.evaluate(([url, name]) => window.harness.connect(url, name), [wsUrl, store] as const),
      );
      assert.deepEqual(connected, { state: 'connected', v21: true });
      assert.equal(record.connections.length, 1);

      await t.test('requests in all three encodings', async () => {
        for (const text of TEXTS) {
          for (const encoding of ['utf8', 'utf16'] as const) {
            const reply = await run('request', () =>
              page.evaluate(([e, v]) => window.harness.request('echo', e, v), [encoding, text] as const),
            );
            assert.deepEqual(reply, { encoding, text });
          }
        }
        const bytes = [0, 1, 2, 127, 128, 254, 255];
        const reply = await run('request', () =>
          page.evaluate((v) => window.harness.request('echo', 'binary', v), bytes),
        );
        assert.deepEqual(reply, { encoding: 'binary', bytes });
        const big = Array.from({ length: 200_000 }, (_, i) => i & 0xff);
        const bigReply = await run('large request', () =>
          page.evaluate(async (n) => {
            const reply = await window.harness.request(
              'echo',
              'binary',
              Array.from({ length: n }, (_, i) => i & 0xff),
            );
            return reply.bytes?.length;
          }, big.length),
        );
        assert.equal(bigReply, big.length);
      });

      await t.test('signals both ways', async () => {
        const sent = await run('signal', () =>
          page.evaluate(() => [
            window.harness.signal('to-server', 'utf8', 'up 😀'),
            window.harness.signal('to-server', 'utf16', 'up 𝄞'),
            window.harness.signal('to-server', 'binary', [9, 8, 7]),
          ]),
        );
        assert.deepEqual(sent, [true, true, true]);
        await until('3 signals at the server', () => record.signals.length >= 3);
        assert.deepEqual(record.signals, [
          { name: 'to-server', encoding: 'utf8', text: 'up 😀' },
          { name: 'to-server', encoding: 'utf16', text: 'up 𝄞' },
          { name: 'to-server', encoding: 'binary', text: '\t\b\x07' },
        ]);

        const conn = record.connections.at(-1)!;
        assert.ok(conn.signal('to-browser', utf8('down 😀')));
        assert.ok(conn.signal('to-browser', utf16('down 𝄞')));
        assert.ok(conn.signal('to-browser', binary(Uint8Array.of(1, 2, 3))));
        await page.waitForFunction(() => window.harness.log.signals.length >= 3, null, { timeout: 5000 });
        const signals = await page.evaluate(() => window.harness.log.signals);
        assert.deepEqual(signals, [
          { name: 'to-browser', encoding: 'utf8', text: 'down 😀' },
          { name: 'to-browser', encoding: 'utf16', text: 'down 𝄞' },
          { name: 'to-browser', encoding: 'binary', bytes: [1, 2, 3] },
        ]);
      });

      await t.test('answers a request from the server (v2.1)', async () => {
        const conn = record.connections.at(-1)!;
        assert.equal(await conn.negotiated(), true);
        const cases: Payload[] = [utf8('abc 😀'), utf16('x𝄞y'), binary(Uint8Array.of(1, 2, 3))];
        const replies = await Promise.all(cases.map((payload) => conn.request('reverse', payload, { timeout: 5000 })));
        assert.deepEqual(
          replies.map((reply) => [reply.encoding, reply.encoding === 'binary' ? [...reply.data] : payloadText(reply)]),
          [
            ['utf8', '😀 cba'],
            ['utf16', 'y𝄞x'],
            ['binary', [3, 2, 1]],
          ],
        );
        const seen = await page.evaluate(() => window.harness.log.serverRequests.length);
        assert.equal(seen, 3);
      });

      let sessionKey = '';
      await t.test('keeps its session across a page reload (localStorage)', async () => {
        const key = await run('login', () => page.evaluate(() => window.harness.request('login', 'utf8', 'alice')));
        assert.equal(key.encoding, 'utf8');
        sessionKey = key.text!;
        assert.match(sessionKey, /^[A-Za-z0-9_-]{64}$/);
        const session = await page.evaluate(() => window.harness.session());
        assert.deepEqual(session, { key: sessionKey, info: { user: 'alice' } });
        // The key store is written without blocking the message path: wait for it.
        await page.waitForFunction((name) => window.harness.stored(name) !== null, store, { timeout: 5000 });
        assert.equal(await page.evaluate((name) => window.harness.stored(name), store), sessionKey);

        await load(page, pageUrl, true);
        const again = await run('connect after reload', () =>
          page.evaluate(([url, name]) => window.harness.connect(url, name), [wsUrl, store] as const),
        );
        assert.equal(again.state, 'connected');
        const events = await page.evaluate(() => window.harness.log.events);
        assert.deepEqual(events, ['sessionRestored', 'connect']);
        const who = await run('whoami', () => page.evaluate(() => window.harness.request('whoami', 'utf8', '')));
        assert.deepEqual(JSON.parse(who.text!), { key: sessionKey, user: 'alice' });
      });

      await t.test('reconnects after a server restart on the same port', async () => {
        const before = record.connections.length;
        await server.shutdown({ timeout: 500 });
        await page.waitForFunction(() => window.harness.state() !== 'connected', null, { timeout: 5000 });
        // Sent while the server is down: it waits for the reconnection.
        const pending = run('request across the restart', () =>
          page.evaluate(() => window.harness.request('echo', 'utf16', 'after restart 😀')),
        );
        // At least one attempt fails against the closed port before the server is back.
        await page.waitForFunction(() => window.harness.log.errors.length > 0, null, { timeout: 5000 });
        // The same port, and the same session store: a restart, not a new server.
        server = await startServer(kind, port, sessions, record);
        assert.deepEqual(await pending, { encoding: 'utf16', text: 'after restart 😀' });
        assert.equal(record.connections.length, before + 1);
        const log = await page.evaluate(() => window.harness.log);
        assert.ok(
          log.events.some((e) => e.startsWith('disconnect')),
          log.events.join(', '),
        );
        assert.equal(log.events.filter((e) => e === 'connect').length, 2, log.events.join(', '));
        // Browsers do not expose the refused upgrade's details: a plain ConnectError, retried.
        assert.match(
          log.errors[0]!,
          /^ConnectError: cannot connect to ws:\/\/127\.0\.0\.1:\d+\/: the WebSocket closed before it opened \(code 1006\)$/,
        );
        assert.equal(await page.evaluate(() => window.harness.state()), 'connected');
        // The session was restored on the new server's connection too.
        const who = await run('whoami', () => page.evaluate(() => window.harness.request('whoami', 'utf8', '')));
        assert.deepEqual(JSON.parse(who.text!), { key: sessionKey, user: 'alice' });
      });

      await run('close', () => page.evaluate(() => window.harness.close()));
      await until('the server to see the close', () => record.connections.every((conn) => !conn.isOpen));
      assert.deepEqual(pageErrors, []);
      assert.deepEqual(record.errors, []);
    });
  }
});
