/**
 * Bridge, signatures: `sign` and `verifySignature` as a backend uses them (HMAC-SHA256 over the
 * domain, timestamp, nonce, action, subject, content type, callback URL and body;
 * `t=<unix ms>,n=<nonce>,v2=<hex>`), every event the bridge posts verifying against the secret
 * while any change to it does not, and events and callbacks never passing as one another.
 */
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { test } from 'node:test';
import {
  DEFAULT_SIGNATURE_TOLERANCE,
  MIN_SECRET_BYTES,
  parseSignature,
  SeenSignatures,
  SIGNATURE_HEADER,
  sign,
  signCallback,
  verifyEvent,
  verifySignature,
} from '../../src/apps/bridge/index.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { call, callbackPath, connected, SECRET, startBackend, startBridge } from '../fixtures/bridge-helpers.ts';

const fields = { domain: 'event', action: 'message', subject: 'conn-1' } as const;
const NONCE = 'nonce-0123456789_ABC';
const body = new TextEncoder().encode('hello ✓');
const NOW = 1_750_000_000_000;

test('sign: t=<unix ms>,n=<nonce>,v2=<hex HMAC-SHA256 of "v2\\n<domain>\\n<t>\\n<nonce>\\n<action>\\n<subject>\\n<content type>\\n<callback>\\n" + body>', () => {
  const header = sign(SECRET, fields, body, NOW, NONCE);
  const expected = createHmac('sha256', SECRET)
    .update(`v2\nevent\n${NOW}\n${NONCE}\nmessage\nconn-1\n\n\n`)
    .update(body)
    .digest('hex');
  assert.equal(header, `t=${NOW},n=${NONCE},v2=${expected}`);
  const full = { ...fields, contentType: 'text/plain; charset=utf-8', callback: 'http://b/connections/x' };
  const withAll = createHmac('sha256', SECRET)
    .update(`v2\nevent\n${NOW}\n${NONCE}\nmessage\nconn-1\ntext/plain; charset=utf-8\nhttp://b/connections/x\n`)
    .update(body)
    .digest('hex');
  assert.equal(sign(SECRET, full, body, NOW, NONCE), `t=${NOW},n=${NONCE},v2=${withAll}`);
  const callback = createHmac('sha256', SECRET)
    .update(`v2\ncallback\n${NOW}\n${NONCE}\nPOST\ntoken\ntext/plain\n\n`)
    .update(body)
    .digest('hex');
  assert.equal(
    sign(SECRET, { domain: 'callback', action: 'POST', subject: 'token', contentType: 'text/plain' }, body, NOW, NONCE),
    `t=${NOW},n=${NONCE},v2=${callback}`,
  );
  assert.match(sign(SECRET, fields, body), /^t=\d{13},n=[A-Za-z0-9_-]{21},v2=[0-9a-f]{64}$/);
  const stamp = Number(/^t=(\d+)/.exec(sign(SECRET, fields, body))![1]);
  assert.ok(Math.abs(stamp - Date.now()) < 1000, 'now by default');
  assert.notEqual(parseSignature(sign(SECRET, fields, body))!.nonce, parseSignature(sign(SECRET, fields, body))!.nonce);
  assert.deepEqual(parseSignature(header), { timestamp: NOW, nonce: NONCE });
  assert.equal(parseSignature('t=1,v1=00'), undefined);
  // A Uint8Array secret is the same key as its string.
  assert.equal(sign(new TextEncoder().encode(SECRET), fields, body, NOW, NONCE), header);
  assert.equal(MIN_SECRET_BYTES, 32);
  assert.equal(SIGNATURE_HEADER, 'x-bridge-signature');
  // An action outside its domain, or a bad nonce, is never signed.
  assert.throws(() => sign(SECRET, { ...fields, action: 'POST' }, body), InvalidArgumentError);
  assert.throws(
    () => sign(SECRET, { domain: 'callback', action: 'message', subject: 't' }, body),
    InvalidArgumentError,
  );
  assert.throws(() => sign(SECRET, fields, body, NOW, 'short'), InvalidArgumentError);
  assert.throws(() => sign(SECRET, fields, body, NOW, `${NONCE},v2=`), InvalidArgumentError);
});

test('the domain is signed: an event never verifies as a callback, nor a callback as an event', () => {
  const at = { now: NOW };
  const callback = { domain: 'callback', action: 'POST', subject: 'token' } as const;
  const signed = sign(SECRET, callback, body, NOW, NONCE);
  assert.equal(verifySignature(SECRET, signed, callback, body, at), true);
  assert.equal(verifySignature(SECRET, signed, { ...callback, domain: 'event' }, body, at), false);
  const event = sign(SECRET, fields, body, NOW, NONCE);
  assert.equal(verifySignature(SECRET, event, { ...fields, domain: 'callback' }, body, at), false);
  // verifyEvent takes only the bridge's events.
  const headers = { 'x-bridge-event': 'POST', 'x-bridge-connection': 'token', [SIGNATURE_HEADER]: signed };
  assert.equal(verifyEvent(SECRET, headers, body, at), false);
});

test('verifySignature with seen: a nonce verifies once within the tolerance', () => {
  const seen = new SeenSignatures(DEFAULT_SIGNATURE_TOLERANCE);
  const header = sign(SECRET, fields, body, NOW, NONCE);
  assert.equal(verifySignature(SECRET, header, fields, body, { now: NOW, seen }), true);
  assert.equal(verifySignature(SECRET, header, fields, body, { now: NOW + 1, seen }), false, 'replayed');
  // A bad signature is not remembered: it cannot use up a nonce.
  const other = sign(SECRET, fields, body, NOW, 'other-nonce-0123456789');
  const forged = other.replace(/v2=[0-9a-f]{4}/, 'v2=0000');
  assert.equal(verifySignature(SECRET, forged, fields, body, { now: NOW, seen }), false);
  assert.equal(verifySignature(SECRET, other, fields, body, { now: NOW, seen }), true);
  assert.equal(seen.size, 2);
  const headers = { 'x-bridge-event': 'message', 'x-bridge-connection': 'conn-1' };
  const event = sign(SECRET, fields, body, NOW);
  assert.equal(verifyEvent(SECRET, { ...headers, [SIGNATURE_HEADER]: event }, body, { now: NOW, seen }), true);
  assert.equal(verifyEvent(SECRET, { ...headers, [SIGNATURE_HEADER]: event }, body, { now: NOW, seen }), false);
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
  const [, nonce, mac] = header.split(',');
  assert.equal(verifySignature(SECRET, `t=${NOW + 1},${nonce},${mac}`, fields, body, at), false, 'timestamp changed');
  assert.equal(
    verifySignature(SECRET, `t=${NOW},n=${'A'.repeat(21)},${mac}`, fields, body, at),
    false,
    'nonce changed',
  );
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
  const header = sign(SECRET, fields, body, NOW, NONCE);
  const hex = header.split('v2=')[1]!;
  const v1 = createHmac('sha256', SECRET).update(`v1\n${NOW}\nmessage\nconn-1\n\n\n`).update(body).digest('hex');
  for (const bad of [
    undefined,
    '',
    'nonsense',
    `v2=${hex}`,
    `t=${NOW}`,
    `t=${NOW},v2=${hex}`,
    `t=${NOW},v1=${v1}`,
    `t=${NOW},n=${NONCE},v1=${hex}`,
    `t=${NOW},n=${NONCE},v2=${hex.toUpperCase()}`,
    `t=${NOW},n=${NONCE},v2=${hex.slice(2)}`,
    `t=${NOW},n=${NONCE},v2=${hex}00`,
    `t=${NOW},n=${NONCE},v2=${hex},v3=00`,
    ` t=${NOW},n=${NONCE},v2=${hex}`,
    `t=-${NOW},n=${NONCE},v2=${hex}`,
    `t=${NOW}.5,n=${NONCE},v2=${hex}`,
    `t=${NOW},n=${NONCE}!,v2=${hex}`,
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
    const signed = {
      domain: 'event' as const,
      action: req.event,
      subject: req.connection,
      contentType: req.contentType,
      callback: req.callback,
    };
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

test('a callback signature never passes as an event, nor an event as a callback', async (t) => {
  const backend = await startBackend(t);
  const bridge = await startBridge(t, backend, { requireSignedCallbacks: true });
  const { client, id } = await connected(t, backend, bridge);
  client.ws.send('hello');
  const [event] = await backend.waitFor((r) => r.event === 'message' && r.connection === id);
  assert.equal(event!.verified, true);
  const path = callbackPath(event!);
  const token = path.slice('/connections/'.length);
  // The backend signs a callback; a captured copy is replayed to the backend as an event, with
  // the event headers made of the callback's method and token.
  const bytes = Buffer.from('{"as":"callback"}');
  for (const method of ['POST', 'DELETE'] as const) {
    const signature = signCallback(
      SECRET,
      { method, url: `${bridge.base}connections/${token}`, contentType: 'application/json' },
      bytes,
    );
    const before = backend.requests.length;
    const replayed = await fetch(backend.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-bridge-event': method,
        'x-bridge-connection': token,
        [SIGNATURE_HEADER]: signature,
      },
      body: bytes,
    });
    await replayed.arrayBuffer();
    // Recorded before it was answered.
    assert.equal(backend.requests.length, before + 1);
    assert.equal(backend.requests.at(-1)!.verified, false, `a ${method} callback does not verify as an event`);
  }
  // And the bridge's own message event, sent to the callback URL, is no callback.
  const asCallback = await call(bridge.port, {
    method: 'POST',
    path,
    headers: {
      'content-type': event!.contentType,
      [SIGNATURE_HEADER]: event!.headers[SIGNATURE_HEADER] as string,
    },
    body: event!.body,
  });
  assert.equal(asCallback.status, 401);
  assert.equal(client.messages.length, 0);
});
