/**
 * `sendParts` of the ws adapter: messages of two buffers framed by the adapter itself (ws-frame.ts),
 * masked on the client side, checked byte for byte by a reader of RFC 6455 frames and, over real
 * sockets, by ws's own receiver, interleaved with ws's frames and with pooled buffers reused.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { clientFrame, frameHeaderLength, nativeMask, serverFrameStart } from '../../transports/ws-frame.ts';
import { connectWith, serve, until } from './helpers.ts';

/** Reads one frame: FIN, opcode, and the payload, unmasked. */
function readFrame(frame: Uint8Array): { fin: boolean; opcode: number; masked: boolean; payload: Uint8Array } {
  const fin = (frame[0]! & 0x80) !== 0;
  const opcode = frame[0]! & 0x0f;
  const masked = (frame[1]! & 0x80) !== 0;
  let length = frame[1]! & 0x7f;
  let at = 2;
  if (length === 126) {
    length = (frame[2]! << 8) | frame[3]!;
    at = 4;
  } else if (length === 127) {
    assert.deepEqual([...frame.subarray(2, 6)], [0, 0, 0, 0], 'lengths stay below 2^32');
    length = ((frame[6]! << 24) | (frame[7]! << 16) | (frame[8]! << 8) | frame[9]!) >>> 0;
    at = 10;
  }
  let key: Uint8Array | undefined;
  if (masked) {
    key = frame.subarray(at, at + 4);
    at += 4;
  }
  assert.equal(frame.length, at + length, 'the frame is exactly header + payload');
  // A plain copy: a Buffer (what the frame is) would not compare equal to a Uint8Array.
  const payload = new Uint8Array(frame.subarray(at));
  if (key !== undefined) for (let i = 0; i < payload.length; i++) payload[i] = payload[i]! ^ key[i & 3]!;
  return { fin, opcode, masked, payload };
}

/** `length` bytes of a pattern that differs with `seed` and position, as a view at `offset` of a larger buffer. */
function patterned(length: number, seed: number, offset = 0): Uint8Array {
  const backing = new Uint8Array(length + offset);
  for (let i = 0; i < length; i++) backing[offset + i] = (i * 31 + seed * 7 + (i >>> 8)) & 0xff;
  return backing.subarray(offset);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

const LENGTHS = [0, 1, 2, 3, 4, 5, 7, 113, 116, 117, 125, 126, 127, 65_526, 65_535, 65_536, 65_536 + 256, 200_000];

test('client frames: one masked binary frame of head + body, any length and alignment', (t) => {
  const native = nativeMask();
  if (native === null) t.diagnostic('bufferutil is not installed: only the JavaScript masking is checked');
  for (const masker of native === null ? [null] : [native, null]) {
    for (const bodyLength of LENGTHS) {
      for (const headLength of [1, 9, 10, 13]) {
        for (const offset of [0, 1, 2, 3]) {
          const head = patterned(headLength, 1);
          const body = patterned(bodyLength, 2, offset);
          const { frame } = clientFrame(head, body, masker);
          const total = headLength + bodyLength;
          assert.equal(frame.length, frameHeaderLength(total, true) + total);
          const read = readFrame(frame);
          assert.equal(read.fin, true);
          assert.equal(read.opcode, 2);
          assert.equal(read.masked, true);
          assert.deepEqual(
            read.payload,
            concat(head, body),
            `${masker ? 'native' : 'JavaScript'} masking, head ${headLength}, body ${bodyLength} at +${offset}`,
          );
        }
      }
    }
  }
});

test('only large client frames take a pooled buffer: a pile of small ones holds only their own bytes', () => {
  for (const [bodyLength, pooled] of [
    [1_000, false],
    [20_000, false],
    [40_000, true],
    [65_536, true],
    [70_000, false],
  ] as const) {
    const frame = clientFrame(Uint8Array.of(1), new Uint8Array(bodyLength));
    assert.equal(frame.pooled, pooled, `a ${bodyLength}-byte body`);
    if (!pooled) assert.equal(frame.buffer.length, frame.frame.length, "a buffer of the frame's own size");
  }
});

test('client frames get a fresh masking key each', () => {
  const keys = new Set<string>();
  for (let i = 0; i < 50; i++) {
    const { frame } = clientFrame(Uint8Array.of(1), new Uint8Array(0));
    keys.add(Buffer.from(frame.subarray(2, 6)).toString('hex'));
  }
  assert.ok(keys.size >= 45, `50 frames used only ${keys.size} keys`);
});

test('server frames: unmasked header + head, then the body as it is', () => {
  for (const bodyLength of LENGTHS) {
    const head = patterned(9, 3);
    const body = patterned(bodyLength, 4);
    const start = serverFrameStart(head, body.length);
    const read = readFrame(concat(start, body));
    assert.equal(read.masked, false);
    assert.equal(read.opcode, 2);
    assert.deepEqual(read.payload, concat(head, body));
  }
});

test('sendParts over real sockets, both ways: every message whole and in order with send()', async (t) => {
  const server = await serve(t, wsTransport({ host: '127.0.0.1', port: 0 }));
  const { socket: client, rec: clientRec } = await connectWith(t, wsClientTransport(), server.url);
  await until(() => server.accepted.length === 1, 'accepted');
  const accepted = server.accepted[0]!;
  assert.equal(typeof client.sendParts, 'function');
  assert.equal(typeof accepted.socket.sendParts, 'function');

  // Sizes around the frame length encodings and the client's pooled buffers, plain sends between.
  const expected: Uint8Array[] = [];
  const sizes = [0, 5, 200, 70_000, 65_536, 1, 65_536 + 300, 300_000, 3];
  for (let i = 0; i < 60; i++) {
    const size = sizes[i % sizes.length]!;
    const head = patterned(1 + (i % 11), i);
    const body = patterned(size, i + 100, i % 4);
    if (i % 3 === 2) {
      const whole = concat(head, body);
      expected.push(whole);
      assert.notEqual(client.send(whole), 'dropped');
      assert.notEqual(accepted.socket.send(whole), 'dropped');
    } else {
      expected.push(concat(head, body));
      assert.notEqual(client.sendParts!(head, body), 'dropped');
      assert.notEqual(accepted.socket.sendParts!(head, body), 'dropped');
    }
    // Some turns end between sends, so some frames go out alone and others corked together.
    if (i % 7 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  await until(
    () => accepted.rec.messages.length === expected.length && clientRec.messages.length === expected.length,
    'all messages',
    10_000,
  );
  for (let i = 0; i < expected.length; i++) {
    assert.deepEqual(accepted.rec.messages[i]!.data, expected[i], `client -> server message ${i}`);
    assert.equal(accepted.rec.messages[i]!.binary, true);
    assert.deepEqual(clientRec.messages[i]!.data, expected[i], `server -> client message ${i}`);
  }
});

test('sendParts: a frame buffer goes back to the pool only once written (a reader that stalls)', async (t) => {
  const server = await serve(t, wsTransport({ host: '127.0.0.1', port: 0 }));
  const { socket: client } = await connectWith(t, wsClientTransport(), server.url);
  await until(() => server.accepted.length === 1, 'accepted');
  const accepted = server.accepted[0]!;
  // The server stops reading: frames pile up in the client's socket buffer, holding pooled
  // buffers, while new frames need buffers of their own. Each message has its own pattern.
  accepted.socket.pause();
  const count = 120;
  let backpressure = 0;
  for (let i = 0; i < count; i++) {
    if (client.sendParts!(patterned(9, i), patterned(64 * 1024, i + 7)) === 'backpressure') backpressure++;
  }
  assert.ok(backpressure > 0, 'the stalled reader made the client report backpressure');
  accepted.socket.resume();
  await until(() => accepted.rec.messages.length === count, 'all messages', 20_000);
  for (let i = 0; i < count; i++) {
    assert.deepEqual(
      accepted.rec.messages[i]!.data,
      concat(patterned(9, i), patterned(64 * 1024, i + 7)),
      `message ${i}`,
    );
  }
});

test('sendParts after close() is dropped, as send()', async (t) => {
  const server = await serve(t, wsTransport({ host: '127.0.0.1', port: 0 }));
  const { socket: client } = await connectWith(t, wsClientTransport(), server.url);
  client.close(1000, 'bye');
  assert.equal(client.sendParts!(Uint8Array.of(1), new Uint8Array(2000)), 'dropped');
});
