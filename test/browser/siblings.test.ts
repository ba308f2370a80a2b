/**
 * Modules with a browser sibling: package.json's `browser` field maps `x.js` to `x.browser.js`
 * for bundlers (esbuild, webpack, Rollup, Vite), so the browser bundle carries a smaller
 * implementation of a Node speed trick. Each pair must keep one contract: the same exports, and
 * the same observable behaviour, checked here against both implementations.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import * as nodeAlloc from '../../protocol/alloc.ts';
import * as browserAlloc from '../../protocol/alloc.browser.ts';
import * as nodeDeadlines from '../../src/peer/deadlines.ts';
import * as browserDeadlines from '../../src/peer/deadlines.browser.ts';
import * as nodeOutgoing from '../../src/peer/outgoing.ts';
import * as browserOutgoing from '../../src/peer/outgoing.browser.ts';
import { encodeReply, encodeRequest, encodeSignal } from '../../protocol/encode.ts';
import type { TransportSocket } from '../../transports/types.ts';

const root = new URL('../../', import.meta.url);
const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { browser: Record<string, string> };

test('every browser mapping is a built x.js -> x.browser.js pair with the same exports', async () => {
  const pairs = Object.entries(pkg.browser);
  assert.ok(pairs.length > 0);
  for (const [from, to] of pairs) {
    assert.equal(to, from.replace(/\.js$/, '.browser.js'), 'a sibling file');
    assert.ok(existsSync(new URL(from, root)), `${from} is missing: run npm run build first`);
    assert.ok(existsSync(new URL(to, root)), `${to} is missing: run npm run build first`);
    const [a, b] = await Promise.all([import(new URL(from, root).href), import(new URL(to, root).href)]);
    assert.deepEqual(Object.keys(b).sort(), Object.keys(a).sort(), `${to} exports what ${from} does`);
  }
});

test('the browser bundle was built from the browser siblings', () => {
  const meta = JSON.parse(readFileSync(new URL('dist/browser/duplexwire-client.meta.json', root), 'utf8')) as {
    inputs: Record<string, unknown>;
  };
  const inputs = Object.keys(meta.inputs);
  for (const [from, to] of Object.entries(pkg.browser)) {
    const path = (p: string) => p.replace(/^\.\//, '');
    assert.ok(inputs.includes(path(to)), `${to} is in the bundle`);
    assert.ok(!inputs.includes(path(from)), `${from} is not`);
  }
});

for (const [which, { allocate }] of [
  ['node', nodeAlloc],
  ['browser', browserAlloc],
] as const) {
  test(`allocate (${which}): zeroed bytes of the length asked, never shared`, () => {
    const seen: Uint8Array[] = [];
    for (const length of [0, 1, 9, 100, 511, 512, 513, 4096, 9000]) {
      const bytes = allocate(length);
      assert.ok(bytes instanceof Uint8Array);
      assert.equal(bytes.length, length);
      assert.ok(
        bytes.every((b) => b === 0),
        'zeroed',
      );
      bytes.fill(0xff);
      seen.push(bytes);
    }
    // Writing one never changed another.
    for (const bytes of seen) assert.ok(bytes.every((b) => b === 0xff));
  });
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

for (const [which, { Deadlines }] of [
  ['node', nodeDeadlines],
  ['browser', browserDeadlines],
] as const) {
  describe(`Deadlines (${which})`, () => {
    test('expires each request once its timeout passed, not a settled one', async () => {
      const expired: number[] = [];
      const deadlines = new Deadlines((id) => expired.push(id));
      const now = performance.now();
      deadlines.add(1, 60, now);
      deadlines.add(2, 20, now);
      deadlines.add(3, 20, now);
      deadlines.add(4, 40, now);
      deadlines.delete(3, 20);
      await delay(10);
      assert.deepEqual(expired, []);
      await delay(150);
      assert.deepEqual(expired, [2, 4, 1]);
      deadlines.clear();
    });

    test('clear forgets every deadline', async () => {
      const expired: number[] = [];
      const deadlines = new Deadlines((id) => expired.push(id));
      deadlines.add(1, 10, performance.now());
      deadlines.add(2, 30, performance.now());
      deadlines.clear();
      await delay(60);
      assert.deepEqual(expired, []);
    });

    test('expire may add and delete deadlines', async () => {
      const expired: number[] = [];
      const deadlines = new Deadlines((id) => {
        expired.push(id);
        if (id === 1) deadlines.add(5, 40, performance.now());
        if (id === 2) deadlines.delete(3, 60);
      });
      const now = performance.now();
      deadlines.add(1, 10, now);
      deadlines.add(2, 20, now);
      deadlines.add(3, 60, now);
      await delay(150);
      assert.deepEqual(expired, [1, 2, 5]);
      deadlines.clear();
    });
  });
}

/** A socket that records what it is asked to send; with `parts`, it has `sendParts` as the ws adapter does. */
function recordingSocket(parts: boolean): TransportSocket & { sent: Uint8Array[] } {
  const sent: Uint8Array[] = [];
  const join = (head: Uint8Array, body: Uint8Array): Uint8Array => {
    const out = new Uint8Array(head.length + body.length);
    out.set(head, 0);
    out.set(body, head.length);
    return out;
  };
  const record = (data: Uint8Array): 'ok' => {
    sent.push(data);
    return 'ok';
  };
  return {
    sent,
    send: record,
    ...(parts ? { sendParts: (head: Uint8Array, body: Uint8Array) => record(join(head, body)) } : {}),
    sendText: () => 'ok',
    bufferedAmount: 0,
    pause() {},
    resume() {},
    close() {},
    terminate() {},
    ping() {},
    remoteAddress: '',
  };
}

for (const [which, outgoing] of [
  ['node', nodeOutgoing],
  ['browser', browserOutgoing],
] as const) {
  test(`outgoing (${which}): what goes on the wire is the message encodeX makes, small or large`, () => {
    for (const parts of [false, true]) {
      for (const size of [0, 10, 1023, 1024, 70_000]) {
        const socket = recordingSocket(parts);
        const payload = { encoding: 'binary' as const, data: new Uint8Array(size).fill(size & 0xff) };
        const named = size === 0 ? 'x' : '';
        for (const message of [
          outgoing.outgoingRequest(socket, 7, named, payload),
          outgoing.outgoingReply(socket, 7, payload),
          outgoing.outgoingSignal(socket, named, payload),
        ]) {
          assert.equal(outgoing.sendOutgoing(socket, message), 'ok');
        }
        assert.deepEqual(socket.sent, [
          encodeRequest(7, named, payload),
          encodeReply(7, payload),
          encodeSignal(named, payload),
        ]);
      }
    }
  });
}
