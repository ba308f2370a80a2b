/**
 * Bridge, signatures: `sign` and `verifySignature` as a backend uses them (HMAC-SHA256 over the
 * timestamp, action, subject and body; `t=<unix ms>,v1=<hex>`), and every event the bridge posts
 * verifying against the secret, while any change to it does not.
 */
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { test } from 'node:test';
import {
  DEFAULT_SIGNATURE_TOLERANCE,
  MIN_SECRET_BYTES,
  SIGNATURE_HEADER,
  sign,
  verifyEvent,
  verifySignature,
} from '../../src/apps/bridge/index.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { call, callbackPath, connected, SECRET, startBackend, startBridge } from '../fixtures/bridge-helpers.ts';

const fields = { action: 'message', subject: 'conn-1' };
const body = new TextEncoder().encode('hello ✓');
const NOW = 1_750_000_000_000;

test('sign: t=<unix ms>,v1=<hex HMAC-SHA256 of "v1\\n<t>\\n<action>\\n<subject>\\n<content type>\\n<callback>\\n" + body>', () => {
  const header = sign(SECRET, fields, body, NOW);
  const expected = createHmac('sha256', SECRET).update(`v1\n${NOW}\nmessage\nconn-1\n\n\n`).update(body).digest('hex');
  assert.equal(header, `t=${NOW},v1=${expected}`);
  const full = { ...fields, contentType: 'text/plain; charset=utf-8', callback: 'http://b/connections/x' };
  const withAll = createHmac('sha256', SECRET)
    .update(`v1\n${NOW}\nmessage\nconn-1\ntext/plain; charset=utf-8\nhttp://b/connections/x\n`)
    .update(body)
    .digest('hex');
  assert.equal(sign(SECRET, full, body, NOW), `t=${NOW},v1=${withAll}`);
  assert.match(sign(SECRET, fields, body), /^t=\d{13},v1=[0-9a-f]{64}$/);
  const stamp = Number(/^t=(\d+)/.exec(sign(SECRET, fields, body))![1]);
  assert.ok(Math.abs(stamp - Date.now()) < 1000, 'now by default');
  // A Uint8Array secret is the same key as its string.
  assert.equal(sign(new TextEncoder().encode(SECRET), fields, body, NOW), header);
  assert.equal(MIN_SECRET_BYTES, 32);
  assert.equal(SIGNATURE_HEADER, 'x-bridge-signature');
});

test('verifySignature: true for the same secret, fields and body within the tolerance', () => {
  const header = sign(SECRET, fields, body, NOW);
  assert.equal(verifySignature(SECRET, header, fields, body, { now: NOW }), true);
  assert.equal(verifySignature(SECRET, header, fields, body, { now: NOW + DEFAULT_SIGNATURE_TOLERANCE }), true);
  assert.equal(verifySignature(SECRET, header, fields, body, { now: NOW - DEFAULT_SIGNATURE_TOLERANCE }), true);
  assert.equal(verifySignature(SECRET, sign(SECRET, fields, body), fields, body), true, 'now by default');
  assert.equal(
    verifySignature(SECRET, sign(SECRET, fields, new Uint8Array(0), NOW), fields, new Uint8Array(0), { now: NOW }),
    true,
  );
});

test('verifySignature: false for a changed body, action, subject, secret or a timestamp outside the tolerance', () => {
  const header = sign(SECRET, fields, body, NOW);
  const at = { now: NOW };
  assert.equal(verifySignature(SECRET, header, fields, new TextEncoder().encode('hello ✗'), at), false, 'body');
  assert.equal(verifySignature(SECRET, header, fields, body.subarray(1), at), false, 'body cut');
  assert.equal(verifySignature(SECRET, header, { ...fields, action: 'close' }, body, at), false, 'action');
  assert.equal(verifySignature(SECRET, header, { ...fields, subject: 'conn-2' }, body, at), false, 'subject');
  assert.equal(verifySignature(`${SECRET}x`, header, fields, body, at), false, 'secret');
  const late = { now: NOW + DEFAULT_SIGNATURE_TOLERANCE + 1 };
  const early = { now: NOW - DEFAULT_SIGNATURE_TOLERANCE - 1 };
  assert.equal(verifySignature(SECRET, header, fields, body, late), false, 'too old');
  assert.equal(verifySignature(SECRET, header, fields, body, early), false, 'from the future');
  assert.equal(verifySignature(SECRET, header, fields, body, { now: NOW + 1001, tolerance: 1000 }), false);
  assert.equal(verifySignature(SECRET, header, fields, body, { now: NOW + 1000, tolerance: 1000 }), true);
  // A replayed signature with a fresh timestamp is not valid either: the timestamp is signed.
  const [, mac] = header.split(',');
  assert.equal(verifySignature(SECRET, `t=${NOW + 1},${mac}`, fields, body, at), false, 'timestamp changed');
});

test('the content type and the callback URL are signed, and fields cannot shift between them', () => {
  const full = { ...fields, contentType: 'text/plain; charset=utf-8', callback: 'http://bridge/connections/t' };
  const header = sign(SECRET, full, body, NOW);
  const at = { now: NOW };
  assert.equal(verifySignature(SECRET, header, full, body, at), true);
  assert.equal(verifySignature(SECRET, header, { ...full, contentType: 'application/octet-stream' }, body, at), false);
  assert.equal(verifySignature(SECRET, header, { ...full, callback: 'http://attacker/x' }, body, at), false);
  assert.equal(verifySignature(SECRET, header, fields, body, at), false, 'the fields left out');
  assert.throws(() => sign(SECRET, { ...fields, callback: 'a\nb' }, body), InvalidArgumentError);
  assert.equal(verifySignature(SECRET, header, { ...full, callback: 'a\nb' }, body, at), false);
});

test('verifySignature: false for a missing or malformed header', () => {
  const header = sign(SECRET, fields, body, NOW);
  const hex = header.split('v1=')[1]!;
  for (const bad of [
    undefined,
    '',
    'nonsense',
    `v1=${hex}`,
    `t=${NOW}`,
    `t=${NOW},v1=${hex.toUpperCase()}`,
    `t=${NOW},v1=${hex.slice(2)}`,
    `t=${NOW},v1=${hex}00`,
    `t=${NOW},v1=${hex},v2=00`,
    ` t=${NOW},v1=${hex}`,
    `t=-${NOW},v1=${hex}`,
    `t=${NOW}.5,v1=${hex}`,
  ]) {
    assert.equal(verifySignature(SECRET, bad, fields, body, { now: NOW }), false, String(bad));
  }
});

test('every event the bridge posts verifies; a changed body, event, id or secret does not', async (t) => {
  const backend = await startBackend(t, (req) =>
    req.event === 'connect' ? { status: 200, contentType: 'text/plain', body: 'hi' } : { status: 204 },
  );
  const bridge = await startBridge(t, backend);
  const { client, id } = await connected(t, backend, bridge);
  client.ws.send('text message');
  client.ws.send(Buffer.from([1, 2, 3]));
  const [first] = await backend.waitFor((r) => r.event === 'message' && r.connection === id, 2);
  await call(bridge.port, { method: 'DELETE', path: callbackPath(first!) });
  await backend.waitFor((r) => r.event === 'close' && r.connection === id);
  assert.deepEqual(
    backend.requests.map((r) => r.event),
    ['connect', 'message', 'message', 'close'],
  );
  for (const req of backend.requests) {
    const header = req.headers[SIGNATURE_HEADER] as string;
    const signed = { action: req.event, subject: req.connection, contentType: req.contentType, callback: req.callback };
    assert.ok(verifySignature(SECRET, header, signed, req.body), `${req.event} verifies`);
    assert.ok(verifyEvent(SECRET, req.headers, req.body), `${req.event} verifies with verifyEvent`);
    // What the backend acts on is signed too: another callback URL or content type fails.
    if (req.callback !== undefined) {
      assert.equal(
        verifyEvent(SECRET, { ...req.headers, 'x-bridge-callback': 'http://attacker.example/steal' }, req.body),
        false,
        `${req.event}: callback`,
      );
    }
    const otherType =
      req.contentType === 'application/octet-stream' ? 'text/plain; charset=utf-8' : 'application/octet-stream';
    assert.equal(verifyEvent(SECRET, { ...req.headers, 'content-type': otherType }, req.body), false, 'content type');
    const stamp = Number(/^t=(\d+)/.exec(header)![1]);
    assert.ok(Math.abs(stamp - Date.now()) < 5000, 'signed just now');
    const changed = Buffer.concat([req.body, Buffer.from(' ')]);
    assert.equal(verifySignature(SECRET, header, signed, changed), false, `${req.event}: body`);
    const otherEvent = req.event === 'close' ? 'message' : 'close';
    assert.equal(verifySignature(SECRET, header, { ...signed, action: otherEvent }, req.body), false, 'event');
    assert.equal(verifySignature(SECRET, header, { ...signed, subject: `${id}x` }, req.body), false, 'id');
    assert.equal(verifySignature(`${SECRET}!`, header, signed, req.body), false, 'secret');
    assert.equal(
      verifySignature(SECRET, header, signed, req.body, { now: Date.now() + DEFAULT_SIGNATURE_TOLERANCE + 10_000 }),
      false,
      'replayed later',
    );
  }
});
