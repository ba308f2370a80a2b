/**
 * The programs in examples/, run as a user runs them: real child processes on plain `node` (no
 * TypeScript loader), importing the built package by its name, on 127.0.0.1 at port 0 (each
 * server prints the URL it got). The echo and pubsub clients' output is checked line by line; the chat
 * server is driven by Node clients (`duplexwire/client`) and by its page in headless Chromium
 * (skipped when Chromium is not installed, except under CI=true, launched by test/browser/chromium.ts).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client, type IncomingMessage, payloadText, utf8 } from 'duplexwire/client';
import type { BrowserContext, Page } from 'playwright-core';
import { launchChromium, skipWithoutChromium } from '../browser/chromium.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);

const skipBrowser = skipWithoutChromium;

/** An example server running as a child process. */
interface ExampleProcess {
  readonly child: ChildProcess;
  /** What it printed as `listening on <url>`. */
  readonly url: string;
  stdout(): string;
  stderr(): string;
  /** Sends SIGTERM and resolves with the exit code (fails after `ms`). */
  stop(ms?: number): Promise<number | null>;
}

/**
 * Starts `node <script>` with HOST=127.0.0.1 and PORT=0 and waits for its `listening on <url>`
 * line. The process is killed after the test whatever happens.
 */
async function startExample(t: TestContext, script: string, ms = 15_000): Promise<ExampleProcess> {
  const child = spawn(process.execPath, [script], {
    cwd: ROOT,
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  let wake: (() => void) | undefined;
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    out += text;
    wake?.();
  });
  child.stderr!.setEncoding('utf8').on('data', (text: string) => {
    err += text;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const running = () => child.exitCode === null && child.signalCode === null;
  t.after(async () => {
    if (running()) {
      child.kill('SIGKILL');
      await exited;
    }
  });

  const deadline = Date.now() + ms;
  const printedUrl = () => /^listening on (\S+)$/m.exec(out)?.[1];
  while (printedUrl() === undefined) {
    if (!running() || Date.now() > deadline) {
      const why = running() ? `printed no "listening on <url>" within ${ms} ms` : `exited with ${child.exitCode}`;
      throw new Error(`node ${script} ${why}\nstdout:\n${out}\nstderr:\n${err}`);
    }
    await new Promise<void>((resolve) => {
      wake = resolve;
      setTimeout(resolve, 50);
    });
  }
  const url = printedUrl()!;
  return {
    child,
    url,
    stdout: () => out,
    stderr: () => err,
    async stop(ms = 10_000) {
      if (running()) child.kill('SIGTERM');
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`node ${script} did not exit within ${ms} ms of SIGTERM`)), ms);
      });
      try {
        return await Promise.race([exited, late]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Polls `check` until it holds, up to `ms`. */
async function until(what: string, check: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('echo: the client prints every reply, in all three encodings, and the signal sent back', async (t) => {
  const server = await startExample(t, 'examples/echo/server.js');
  assert.match(server.url, /^ws:\/\/127\.0\.0\.1:\d+\/$/);

  const { stdout, stderr } = await run(process.execPath, ['examples/echo/client.js', server.url], {
    cwd: ROOT,
    timeout: 20_000,
  });
  assert.equal(stderr, '');
  assert.deepEqual(stdout.trimEnd().split('\n'), [
    'echo utf8: hello',
    'echo utf16: héllo wörld 😀',
    'echo binary: deadbeef',
    'shout failed: UNKNOWN_REQUEST: no request named "shout"',
    'signal note: a signal has no reply',
  ]);
  await until('the server to print the signal', () =>
    /^signal note from \S+: a signal has no reply$/m.test(server.stdout()),
  );

  assert.equal(await server.stop(), 0, 'a graceful shutdown on SIGTERM');
  assert.equal(server.stderr(), '');
});

test('pubsub: the client watches two symbols, unsubscribes one, and its prices stop', async (t) => {
  const server = await startExample(t, 'examples/pubsub/server.js');
  assert.match(server.url, /^ws:\/\/127\.0\.0\.1:\d+\/$/);
  for (const [a, b] of [
    ['ACME', 'GLOBEX'],
    ['INITECH', 'UMBRELLA'],
  ] as const) {
    const { stdout, stderr } = await run(process.execPath, ['examples/pubsub/client.js', server.url, a, b], {
      cwd: ROOT,
      timeout: 20_000,
    });
    assert.equal(stderr, '');
    const lines = stdout.trimEnd().split('\n');
    assert.equal(lines.length, 5, stdout);
    assert.match(lines[0]!, new RegExp(`^watching ${a} \\(now \\d+(\\.\\d+)?\\)$`));
    assert.match(lines[1]!, new RegExp(`^watching ${b} \\(now \\d+(\\.\\d+)?\\)$`));
    assert.deepEqual(lines.slice(2), [
      `3 prices of ${a} and of ${b}`,
      `after unsubscribing ${b}: 0 more ${b}, ${a} went on`,
      'subscribe NOPE failed: UNKNOWN_SYMBOL',
    ]);
  }
  assert.equal(await server.stop(), 0, 'a graceful shutdown on SIGTERM');
  assert.equal(server.stderr(), '');
});

interface ChatMessage {
  readonly from: string;
  readonly text: string;
  readonly at: string;
}

/** A Node chat client: what a page does, without the page. */
async function chatter(t: TestContext, url: string, options: ConstructorParameters<typeof Client>[1] = {}) {
  const client = new Client(url, { reconnect: false, requestTimeout: 5_000, ...options });
  t.after(() => client.close());
  const heard: ChatMessage[] = [];
  client.on('signal', (msg: IncomingMessage) => {
    if (msg.name === 'message') heard.push(JSON.parse(payloadText(msg.payload)) as ChatMessage);
  });
  await client.connect();
  return {
    client,
    heard,
    join: async (name: string) => JSON.parse(payloadText(await client.request('join', utf8(name)))) as ChatMessage[],
    say: (text: string) => client.request('say', utf8(text)),
  };
}

test('chat: Node clients join, say, hear each other, get the history; limits are enforced', async (t) => {
  const server = await startExample(t, 'examples/chat/server.js');
  assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
  const wsUrl = `${server.url.replace(/^http/, 'ws')}ws`;

  const alice = await chatter(t, wsUrl);
  const bob = await chatter(t, wsUrl);
  assert.deepEqual(await alice.join('alice'), []);
  assert.deepEqual(await bob.join('bob'), []);

  await t.test('a message reaches everyone as a signal, and is acknowledged', async () => {
    const ack = await alice.say('hi bob, <b>bold</b>?');
    assert.equal(ack.data.length, 0, 'an empty reply acknowledges the message');
    await until('bob to hear alice', () => bob.heard.length === 1);
    assert.equal(bob.heard[0]!.from, 'alice');
    assert.equal(bob.heard[0]!.text, 'hi bob, <b>bold</b>?');
    assert.ok(!Number.isNaN(Date.parse(bob.heard[0]!.at)));
    await until('alice to hear herself', () => alice.heard.length === 1);
    assert.deepEqual(alice.heard, bob.heard);
  });

  await t.test('whoever joins gets the history as the reply to join', async () => {
    const carol = await chatter(t, wsUrl);
    const history = await carol.join('carol');
    assert.deepEqual(history, bob.heard);
  });

  await t.test('over-long or malformed names and messages are refused with a clear error', async () => {
    const dave = await chatter(t, wsUrl);
    await assert.rejects(dave.say('hello?'), { name: 'RequestError', code: 'NOT_JOINED' });
    for (const name of ['d'.repeat(25), '<b>dave</b>', '', '   ']) {
      await assert.rejects(dave.join(name), {
        name: 'RequestError',
        code: 'BAD_NAME',
        message: 'a name is 1 to 24 letters, digits, spaces, dots, _ or -',
      });
    }
    assert.deepEqual(await dave.join(`d${'é'.repeat(23)}`), bob.heard, 'a name of 24 letters');
    await assert.rejects(dave.say('x'.repeat(501)), {
      name: 'RequestError',
      code: 'BAD_MESSAGE',
      message: 'a message is 1 to 500 characters, not 501',
    });
    await assert.rejects(dave.say('  '), { name: 'RequestError', code: 'BAD_MESSAGE' });
    await assert.rejects(dave.client.request('shout', utf8('x')), { name: 'RequestError', code: 'UNKNOWN_REQUEST' });
    await dave.say('y'.repeat(500));
    await until('the 500-character message', () => bob.heard.length === 2);
    assert.equal(bob.heard[1]!.text.length, 500);
  });

  await t.test('the history keeps the last 50 messages', async () => {
    for (let i = 1; i <= 55; i++) await bob.say(`message ${i}`);
    const erin = await chatter(t, wsUrl);
    const history = await erin.join('erin');
    assert.equal(history.length, 50);
    assert.deepEqual(
      history.map((m) => m.text),
      Array.from({ length: 50 }, (_, i) => `message ${i + 6}`),
    );
  });

  await t.test('a new connection with the session key comes back under its name', async () => {
    const key = alice.client.session?.key;
    assert.ok(key !== undefined, 'join created a session');
    assert.deepEqual(alice.client.session?.info, { name: 'alice' });
    let stored: string | null = key;
    const again = await chatter(t, wsUrl, {
      sessionKeyStore: {
        load: () => stored,
        save: (k) => {
          stored = k;
        },
        clear: () => {
          stored = null;
        },
      },
    });
    assert.deepEqual(again.client.session?.info, { name: 'alice' });
    assert.equal(again.client.session?.key, key);

    // Joining again under another name renames the session: same key, on both connections.
    const renamed = new Promise<unknown>((resolve) => alice.client.once('sessionUpdated', (s) => resolve(s.info)));
    await again.join('alicia');
    assert.deepEqual(await renamed, { name: 'alicia' });
    assert.equal(alice.client.session?.key, key);
    assert.deepEqual(again.client.session?.info, { name: 'alicia' });
    const heard = bob.heard.length;
    await alice.say('still me');
    await until('bob to hear the renamed alice', () => bob.heard.length === heard + 1);
    assert.equal(bob.heard.at(-1)!.from, 'alicia', 'the name comes from the session, wherever it was renamed');
  });

  assert.equal(await server.stop(), 0, 'a graceful shutdown on SIGTERM');
  assert.equal(server.stderr(), '');
});

/** A chat page, with what went wrong in it kept for the failure message. */
async function openChat(context: BrowserContext, url: string) {
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text());
  });
  await page.goto(url, { waitUntil: 'load' });
  return { page, errors };
}

/** Waits for `fn` to hold in the page; on timeout says what was awaited and what the page shows. */
async function inPage(page: Page, what: string, fn: (arg: string) => boolean, arg = '', ms = 10_000): Promise<void> {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms });
  } catch (error) {
    const shown = await page
      .evaluate(() => ({
        status: document.getElementById('status')?.textContent,
        messages: Array.from(document.querySelectorAll('#messages li'), (li) => li.textContent),
      }))
      .catch(() => 'unreadable');
    throw new Error(`${what}: not within ${ms} ms; the page shows ${JSON.stringify(shown)}`, { cause: error });
  }
}

async function joinAs(page: Page, name: string): Promise<void> {
  await page.fill('#name', name);
  await page.press('#name', 'Enter');
  await inPage(
    page,
    `joined as ${name}`,
    (n) => document.getElementById('status')?.textContent === `you are ${n}`,
    name,
  );
}

/** Each line of the page's message list as [from, text]. */
function shownMessages(page: Page): Promise<Array<[string, string]>> {
  return page.$$eval('#messages li', (items) =>
    items.map(
      (li) => [li.querySelector('.from')?.textContent ?? '', li.lastChild?.textContent ?? ''] as [string, string],
    ),
  );
}

test('chat: the page in headless Chromium', { skip: skipBrowser, timeout: 120_000 }, async (t) => {
  const server = await startExample(t, 'examples/chat/server.js');
  const context = await launchChromium(t);
  const alice = await openChat(context, server.url);
  const bob = await openChat(context, server.url);
  t.after(async () => {
    await alice.page.close();
    await bob.page.close();
  });

  await t.test('a name the server refuses is shown as its error', async () => {
    await alice.page.fill('#name', '<i>alice</i>');
    await alice.page.press('#name', 'Enter');
    await inPage(alice.page, 'the BAD_NAME error', () =>
      /letters, digits/.test(document.getElementById('status')?.textContent ?? ''),
    );
    assert.equal(await alice.page.isHidden('#say-form'), true);
  });

  await t.test('two pages join; one sends, both show it, markup as text', async () => {
    await joinAs(alice.page, 'alice');
    await joinAs(bob.page, 'bob');
    const text = 'hello <b>bob</b> & <img src=x onerror=alert(1)>';
    await alice.page.fill('#text', text);
    await alice.page.press('#text', 'Enter');
    // The input is cleared once the server acknowledged the message.
    await inPage(
      alice.page,
      'the say acknowledged',
      () => (document.getElementById('text') as HTMLInputElement).value === '',
    );
    for (const { page } of [bob, alice]) {
      await inPage(
        page,
        'the message shown',
        (t) => document.getElementById('messages')!.textContent!.includes(t),
        text,
      );
      assert.deepEqual(await shownMessages(page), [['alice', `: ${text}`]]);
      assert.equal(await page.locator('#messages b, #messages img').count(), 0, 'user text was parsed as HTML');
    }
  });

  await t.test('a reload keeps the name (session) and shows the history', async () => {
    await bob.page.reload({ waitUntil: 'load' });
    await inPage(bob.page, 'rejoined as bob', () => document.getElementById('status')?.textContent === 'you are bob');
    assert.equal(await bob.page.isHidden('#join-form'), true);
    assert.deepEqual(await shownMessages(bob.page), [['alice', ': hello <b>bob</b> & <img src=x onerror=alert(1)>']]);
    await bob.page.fill('#text', 'back again');
    await bob.page.press('#text', 'Enter');
    await inPage(
      alice.page,
      'alice to see bob again',
      () => document.getElementById('messages')!.childElementCount === 2,
    );
    assert.deepEqual((await shownMessages(alice.page))[1], ['bob', ': back again']);
  });

  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
  assert.equal(await server.stop(), 0, 'a graceful shutdown on SIGTERM');
  assert.equal(server.stderr(), '');
});
