/**
 * Property tests of the codec (fast-check):
 * - decode(encode(m)) equals m for every message a sender may legally build;
 * - decode throws nothing but ProtocolError, whatever the bytes;
 * - encode(decode(x)) gives back x exactly, except for the inputs the decoder normalises by
 *   design (`lossyReason` below, PROTOCOL.md "Decoding is a normal form").
 *
 * Run budget: 100 000 runs in total with CI=true, 10 000 otherwise, split by the weights in
 * `SHARE` (percent of the total).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  decode,
  type Encoding,
  encode,
  encodeReplyParts,
  encodeRequest,
  encodeRequestParts,
  encodeSignalParts,
  idToNumber,
  joinParts,
  type Message,
  MessageType,
  type Payload,
  ProtocolError,
  type SpecialReplyKind,
} from '../../protocol/index.ts';
import { plain, toHex } from './helpers.ts';

const TOTAL_RUNS = process.env.CI === 'true' ? 100_000 : 10_000;

const SHARE = {
  request: 9,
  signal: 9,
  reply: 6,
  replyError: 6,
  specialReply: 2,
  sessionCreated: 3,
  acceptConf: 3,
  restoreSession: 2,
  closeSession: 1,
  cancel: 1,
  clientConf: 1,
  bodiless: 1,
  numericIds: 4,
  parts: 3,
  decodeArbitrary: 20,
  reencode: 29,
} as const;

function runs(share: keyof typeof SHARE): number {
  return Math.round((TOTAL_RUNS * SHARE[share]) / 100);
}

// ---------------------------------------------------------------------------------------------
// Arbitraries of legal messages. Illegal combinations (no name and no payload; a UTF-16 signal
// without payload) are excluded by construction: either the name or the payload has a minimum.

const utf8Encoder = new TextEncoder();
const EMPTY_ID = new Uint8Array(8);
const FULL_ID = new Uint8Array(8).fill(0xff);
const ENCODINGS: readonly Encoding[] = ['binary', 'utf8', 'utf16'];
const SPECIAL_REASONS: readonly SpecialReplyKind[] = [
  'shutdown',
  'internal-error',
  'session-not-found',
  'max-session-connections',
  'sessions-disabled',
];

const printableChar = fc.integer({ min: 32, max: 126 }).map((code) => String.fromCharCode(code));

/** Printable ASCII of `minLength`..255 characters, often short, sometimes of the full 255. */
function asciiText(minLength: number): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.string({ unit: printableChar, minLength, maxLength: 16 }) },
    { weight: 2, arbitrary: fc.string({ unit: printableChar, minLength, maxLength: 255, size: 'max' }) },
    { weight: 1, arbitrary: fc.string({ unit: printableChar, minLength: 255, maxLength: 255 }) },
  );
}

const idArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.constant(EMPTY_ID),
  fc.constant(FULL_ID),
  fc.uint8Array({ minLength: 8, maxLength: 8 }),
);

/**
 * `make(size)` with fast-check's default small size (values of about 10 elements) or with the
 * full range up to the arbitrary's maximum length. Without 'max', an explicit maxLength is not
 * reached: fast-check's default size caps generated lengths near 10.
 */
function smallOrFull<T>(make: (size: 'small' | 'max') => fc.Arbitrary<T>): fc.Arbitrary<T> {
  return fc.oneof(make('small'), make('max'));
}

/**
 * Well-formed text (no lone surrogates), so that UTF-8 encoding it is lossless; sometimes with a
 * leading U+FEFF, which a decoder must not strip as a byte-order mark.
 */
const textArb = fc.oneof(
  { weight: 9, arbitrary: smallOrFull((size) => fc.string({ unit: 'binary', maxLength: 80, size })) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 8 }).map((text) => `\ufeff${text}`) },
);

/** Payload bytes of at least `minBytes` bytes (UTF-16: an even count, at least `minBytes`). */
function payloadArb(encoding: Encoding, minBytes: number): fc.Arbitrary<Payload> {
  switch (encoding) {
    case 'binary':
      return smallOrFull((size) => fc.uint8Array({ minLength: minBytes, maxLength: 300, size })).map((data) => ({
        encoding,
        data,
      }));
    case 'utf8':
      return smallOrFull((size) => fc.string({ unit: 'binary', minLength: minBytes, maxLength: 80, size })).map(
        (text) => ({
          encoding,
          data: utf8Encoder.encode(text),
        }),
      );
    case 'utf16':
      return smallOrFull((size) =>
        fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: Math.ceil(minBytes / 2), maxLength: 150, size }),
      ).map((units) => {
        const data = new Uint8Array(units.length * 2);
        units.forEach((unit, i) => {
          data[2 * i] = unit & 0xff;
          data[2 * i + 1] = unit >>> 8;
        });
        return { encoding, data };
      });
  }
}

/** Name and payload of a legal signal or request: a name, a payload, or both. */
function namedArb(encoding: Encoding, isSignal: boolean): fc.Arbitrary<{ name: string; payload: Payload }> {
  const minWithName = isSignal && encoding === 'utf16' ? 2 : 0;
  const minWithoutName = encoding === 'utf16' ? 2 : 1;
  return fc.oneof(
    fc.record({ name: asciiText(1), payload: payloadArb(encoding, minWithName) }),
    fc.record({ name: fc.constant(''), payload: payloadArb(encoding, minWithoutName) }),
  );
}

const requestArb: fc.Arbitrary<Message> = fc.oneof(
  ...ENCODINGS.map((encoding) =>
    fc
      .tuple(idArb, namedArb(encoding, false))
      .map(([id, { name, payload }]): Message => ({ kind: 'request', id, name, payload })),
  ),
);

const signalArb: fc.Arbitrary<Message> = fc.oneof(
  ...ENCODINGS.map((encoding) =>
    namedArb(encoding, true).map(({ name, payload }): Message => ({ kind: 'signal', name, payload })),
  ),
);

const replyArb: fc.Arbitrary<Message> = fc.oneof(
  ...ENCODINGS.map((encoding) =>
    fc.tuple(idArb, payloadArb(encoding, 0)).map(([id, payload]): Message => ({ kind: 'reply', id, payload })),
  ),
);

const replyErrorArb: fc.Arbitrary<Message> = fc
  .tuple(idArb, asciiText(1), textArb)
  .map(([id, code, message]): Message => ({ kind: 'reply-error', id, code, message }));

const specialReplyArb: fc.Arbitrary<Message> = fc
  .tuple(idArb, fc.constantFrom(...SPECIAL_REASONS))
  .map(([id, reason]): Message => ({ kind: 'special-reply', id, reason }));

const rfc3339 = fc
  .tuple(fc.date({ min: new Date(0), max: new Date(4e12), noInvalidDate: true }), fc.integer({ min: 0, max: 999_999 }))
  .map(([date, extra]) => date.toISOString().replace('Z', `${String(extra).padStart(6, '0')}Z`));

const sessionJsonArb: fc.Arbitrary<string> = fc.oneof(
  fc
    .record(
      {
        k: fc.string({
          unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'),
          minLength: 64,
          maxLength: 64,
        }),
        c: rfc3339,
        l: rfc3339,
        i: fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
      },
      { requiredKeys: ['k', 'c', 'l'] },
    )
    .map((session) => JSON.stringify(session)),
  // The codec does not parse the JSON: any non-empty text travels.
  smallOrFull((size) => fc.string({ unit: 'binary', minLength: 1, maxLength: 80, size })),
);

const sessionCreatedArb: fc.Arbitrary<Message> = sessionJsonArb.map(
  (session): Message => ({ kind: 'session-created', session }),
);

const uint32 = fc.oneof(fc.constantFrom(0, 0xffff_ffff, 60_000, 8192), fc.integer({ min: 0, max: 0xffff_ffff }));
const byte = fc.integer({ min: 0, max: 255 });

const acceptConfArb: fc.Arbitrary<Message> = fc
  .record({
    major: byte,
    minor: byte,
    readTimeout: uint32,
    maxMessageSize: uint32,
    subProtocol: smallOrFull((size) => fc.uint8Array({ maxLength: 40, size })),
  })
  .map((conf): Message => ({ kind: 'accept-conf', ...conf }));

const restoreSessionArb: fc.Arbitrary<Message> = fc
  .tuple(
    idArb,
    smallOrFull((size) => fc.uint8Array({ minLength: 1, maxLength: 120, size })),
  )
  .map(([id, key]): Message => ({ kind: 'restore-session', id, key }));

const closeSessionArb: fc.Arbitrary<Message> = idArb.map((id): Message => ({ kind: 'close-session', id }));
const cancelArb: fc.Arbitrary<Message> = idArb.map((id): Message => ({ kind: 'cancel', id }));
const clientConfArb: fc.Arbitrary<Message> = byte.map((minor): Message => ({ kind: 'client-conf', minor }));
const bodilessArb: fc.Arbitrary<Message> = fc.constantFrom<Message>({ kind: 'heartbeat' }, { kind: 'session-closed' });

describe('decode(encode(m)) equals m', () => {
  const cases: ReadonlyArray<readonly [keyof typeof SHARE, fc.Arbitrary<Message>]> = [
    ['request', requestArb],
    ['signal', signalArb],
    ['reply', replyArb],
    ['replyError', replyErrorArb],
    ['specialReply', specialReplyArb],
    ['sessionCreated', sessionCreatedArb],
    ['acceptConf', acceptConfArb],
    ['restoreSession', restoreSessionArb],
    ['closeSession', closeSessionArb],
    ['cancel', cancelArb],
    ['clientConf', clientConfArb],
    ['bodiless', bodilessArb],
  ];
  for (const [share, arbitrary] of cases) {
    test(`${share} (${runs(share)} runs)`, () => {
      fc.assert(
        fc.property(arbitrary, (message) => {
          const wire = encode(message);
          assert.deepEqual(plain(decode(wire)), plain(message));
        }),
        { numRuns: runs(share) },
      );
    });
  }

  test(`numeric ids read back with idToNumber (${runs('numericIds')} runs)`, () => {
    const idNumber = fc.oneof(fc.constantFrom(0, 1, Number.MAX_SAFE_INTEGER), fc.maxSafeNat());
    fc.assert(
      fc.property(idNumber, (id) => {
        const message = decode(encodeRequest(id, 'n', { encoding: 'binary', data: new Uint8Array(0) }));
        assert.equal(message.kind, 'request');
        if (message.kind === 'request') assert.equal(idToNumber(message.id), id);
      }),
      { numRuns: runs('numericIds') },
    );
  });
});

test(`the *Parts encoders give the same bytes in two pieces, the payload not copied (${runs('parts')} runs)`, () => {
  const arbitrary = fc.oneof(requestArb, signalArb, replyArb);
  fc.assert(
    fc.property(arbitrary, (message) => {
      if (message.kind !== 'request' && message.kind !== 'signal' && message.kind !== 'reply') {
        assert.fail(`no parts encoder for ${message.kind}`);
      }
      const parts =
        message.kind === 'request'
          ? encodeRequestParts(message.id, message.name, message.payload)
          : message.kind === 'signal'
            ? encodeSignalParts(message.name, message.payload)
            : encodeReplyParts(message.id, message.payload);
      assert.equal(parts[1], message.payload.data, 'the payload is passed on, not copied');
      assert.deepEqual(joinParts(parts), encode(message));
    }),
    { numRuns: runs('parts') },
  );
});

test('the *Parts encoders refuse what their single-buffer encoders refuse', () => {
  const utf16Odd: Payload = { encoding: 'utf16', data: new Uint8Array(3) };
  const empty: Payload = { encoding: 'binary', data: new Uint8Array(0) };
  for (const [parts, whole] of [
    [() => encodeRequestParts(1, 'bad\n', empty), () => encodeRequest(1, 'bad\n', empty)],
    [() => encodeRequestParts(1, '', empty), () => encodeRequest(1, '', empty)],
    [
      () => encodeSignalParts('x', { encoding: 'utf16', data: new Uint8Array(0) }),
      () => encode({ kind: 'signal', name: 'x', payload: { encoding: 'utf16', data: new Uint8Array(0) } }),
    ],
    [() => encodeReplyParts(1, utf16Odd), () => encode({ kind: 'reply', id: new Uint8Array(8), payload: utf16Odd })],
  ] as const) {
    let expected: unknown;
    try {
      whole();
    } catch (error) {
      expected = error;
    }
    assert.ok(expected instanceof ProtocolError);
    assert.throws(parts, (error: unknown) => error instanceof ProtocolError && error.code === expected.code);
  }
});

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes.

const KNOWN_TYPES: readonly number[] = Object.values(MessageType);

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Decodes, or returns the ProtocolError; anything else thrown fails the property. */
function tryDecode(bytes: Uint8Array): Message | ProtocolError {
  try {
    return decode(bytes);
  } catch (error) {
    if (error instanceof ProtocolError) return error;
    assert.fail(`decode(${toHex(bytes)}) threw ${String(error)}`);
  }
}

test(`decode throws only ProtocolError (${runs('decodeArbitrary')} runs)`, () => {
  const anyBytes = smallOrFull((size) => fc.uint8Array({ maxLength: 300, size }));
  const frames = fc.oneof(
    anyBytes,
    fc.tuple(fc.constantFrom(...KNOWN_TYPES), anyBytes).map(([type, rest]) => concat([Uint8Array.of(type), rest])),
  );
  fc.assert(
    fc.property(frames, (bytes) => {
      tryDecode(bytes);
    }),
    { numRuns: runs('decodeArbitrary') },
  );
});

// ---------------------------------------------------------------------------------------------
// encode(decode(x)) === x, except where decoding normalises by design.

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function isValidUtf8(bytes: Uint8Array): boolean {
  try {
    strictUtf8.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/**
 * Why re-encoding the decoded form of `x` (which decoded successfully) cannot give `x` back, or
 * null when it must. These are the decoder's normalisations, each deliberate:
 * - special replies 1..5: only `len >= 9` is required and nothing after the id has a meaning, so
 *   the trailing bytes are dropped;
 * - ReplyError message and session JSON: the protocol defines them as UTF-8 text and the decoder
 *   hands out strings; invalid sequences become U+FFFD, which re-encodes differently;
 * - the UTF-16 pad byte (after an odd name, or at offset 9 of 193) carries no data; receivers do
 *   not check it, senders write 0x00.
 * Names and error codes with bytes outside printable ASCII decode (receivers do not validate them)
 * but the encoder refuses them: see `refusalReason`.
 */
function lossyReason(x: Uint8Array): string | null {
  const type = x[0]!;
  if (type >= 1 && type <= 5) return x.length > 9 ? 'special reply with bytes after the id' : null;
  if (type === MessageType.ReplyError) return isValidUtf8(x.subarray(10 + x[9]!)) ? null : 'error message not UTF-8';
  if (type === MessageType.NotifySessionCreated) return isValidUtf8(x.subarray(1)) ? null : 'session JSON not UTF-8';
  if (type === MessageType.ReplyUtf16) return x[9] !== 0 ? 'reply pad byte not zero' : null;
  if (type === MessageType.SignalUtf16 || type === MessageType.RequestUtf16) {
    const at = type === MessageType.SignalUtf16 ? 1 : 9;
    const nameLength = x[at]!;
    return (nameLength & 1) === 1 && x[at + 1 + nameLength] !== 0 ? 'name pad byte not zero' : null;
  }
  return null;
}

function isPrintableAscii(text: string): boolean {
  return /^[\x20-\x7e]*$/.test(text);
}

/** Why the encoder may refuse to send a decoded message, or null when it must not. */
function refusalReason(message: Message): string | null {
  if ((message.kind === 'signal' || message.kind === 'request') && !isPrintableAscii(message.name)) {
    return 'name outside printable ASCII';
  }
  if (message.kind === 'reply-error' && !isPrintableAscii(message.code)) return 'error code outside printable ASCII';
  return null;
}

/** A byte array, often empty. */
const tailArb = fc.oneof(fc.constant(new Uint8Array(0)), fc.uint8Array({ minLength: 1, maxLength: 40, size: 'max' }));
/** Name bytes: printable ASCII mostly, arbitrary bytes sometimes. */
const nameBytesArb = fc.oneof(
  { weight: 4, arbitrary: asciiText(0).map((name) => utf8Encoder.encode(name)) },
  { weight: 1, arbitrary: smallOrFull((size) => fc.uint8Array({ maxLength: 255, size })) },
);
/** A pad byte: 0x00 mostly. */
const padArb = fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: byte });
/** Text bytes: valid UTF-8 mostly, arbitrary bytes sometimes. */
const textBytesArb = fc.oneof(
  { weight: 3, arbitrary: textArb.map((text) => utf8Encoder.encode(text)) },
  { weight: 1, arbitrary: smallOrFull((size) => fc.uint8Array({ maxLength: 60, size })) },
);
/** A length byte: the right one mostly, any value sometimes. */
function lengthByte(right: number): fc.Arbitrary<number> {
  return fc.oneof({ weight: 4, arbitrary: fc.constant(right) }, { weight: 1, arbitrary: byte });
}
/** Payload bytes whose length is even mostly. */
const bodyBytes = smallOrFull((size) => fc.uint8Array({ maxLength: 60, size }));
const bodyArb = fc.oneof(
  { weight: 3, arbitrary: bodyBytes.map((data) => data.subarray(0, data.length & ~1)) },
  { weight: 1, arbitrary: bodyBytes },
);

/** Frames shaped like real messages, with random flaws: most decode, many are in the lossy class. */
const frameArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  // Signals: type, L, name, [pad], payload.
  fc
    .tuple(fc.constantFrom(63, 64, 65), nameBytesArb, padArb, bodyArb)
    .chain(([type, name, pad, body]) =>
      lengthByte(name.length).map((length) =>
        concat([
          Uint8Array.of(type, length),
          name,
          type === 65 && (name.length & 1) === 1 ? Uint8Array.of(pad) : new Uint8Array(0),
          body,
        ]),
      ),
    ),
  // Requests: type, id, L, name, [pad], payload.
  fc
    .tuple(fc.constantFrom(127, 128, 129), idArb, nameBytesArb, padArb, bodyArb)
    .chain(([type, id, name, pad, body]) =>
      lengthByte(name.length).map((length) =>
        concat([
          Uint8Array.of(type),
          id,
          Uint8Array.of(length),
          name,
          type === 129 && (name.length & 1) === 1 ? Uint8Array.of(pad) : new Uint8Array(0),
          body,
        ]),
      ),
    ),
  // Replies: type, id, [pad], payload.
  fc
    .tuple(fc.constantFrom(191, 192, 193), idArb, padArb, bodyArb)
    .map(([type, id, pad, body]) =>
      concat([Uint8Array.of(type), id, type === 193 ? Uint8Array.of(pad) : new Uint8Array(0), body]),
    ),
  // ReplyError: type, id, code length, code, message.
  fc
    .tuple(idArb, nameBytesArb, textBytesArb)
    .chain(([id, code, text]) =>
      lengthByte(code.length).map((length) => concat([Uint8Array.of(0), id, Uint8Array.of(length), code, text])),
    ),
  // Special replies, with trailing bytes sometimes.
  fc
    .tuple(fc.integer({ min: 1, max: 5 }), idArb, tailArb)
    .map(([type, id, tail]) => concat([Uint8Array.of(type), id, tail])),
  // Session created: any bytes, valid UTF-8 mostly.
  textBytesArb.map((text) => concat([Uint8Array.of(21), text])),
  // AcceptConf, restore, and the fixed-length types, with a wrong length sometimes.
  fc.uint8Array({ minLength: 10, maxLength: 40, size: 'max' }).map((rest) => concat([Uint8Array.of(23), rest])),
  fc.tuple(idArb, tailArb).map(([id, key]) => concat([Uint8Array.of(32), id, key])),
  fc
    .tuple(
      fc.constantFrom(22, 31, 33, 34, 35),
      fc.uint8Array({ minLength: 8, maxLength: 8 }),
      fc.integer({ min: -1, max: 1 }),
    )
    .map(([type, rest, delta]) => {
      const exact = type === 22 || type === 33 ? 1 : type === 34 ? 2 : 9;
      return concat([Uint8Array.of(type), rest]).subarray(0, Math.max(1, exact + delta));
    }),
  // Anything.
  fc.uint8Array({ minLength: 1, maxLength: 64, size: 'max' }),
);

test(`encode(decode(x)) gives x back unless x is in the lossy class (${runs('reencode')} runs)`, (t) => {
  const seen = { rejected: 0, exact: 0, lossy: 0, refused: 0 };
  fc.assert(
    fc.property(frameArb, (x) => {
      const message = tryDecode(x);
      if (message instanceof ProtocolError) {
        seen.rejected++;
        return;
      }
      let y: Uint8Array;
      try {
        y = encode(message);
      } catch (error) {
        assert.ok(error instanceof ProtocolError, `encode threw ${String(error)}`);
        assert.ok(refusalReason(message) !== null, `encode refused ${toHex(x)}: ${error.message}`);
        seen.refused++;
        return;
      }
      const same = toHex(y) === toHex(x);
      const reason = lossyReason(x);
      // Exactly the lossy inputs change, and the decoded form is a fixed point.
      assert.equal(same, reason === null, `${toHex(x)} -> ${toHex(y)} (lossy: ${reason ?? 'no'})`);
      assert.deepEqual(plain(decode(y)), plain(message));
      if (same) seen.exact++;
      else seen.lossy++;
    }),
    { numRuns: runs('reencode') },
  );
  t.diagnostic(`outcomes: ${JSON.stringify(seen)}`);
  // The generator must actually exercise every branch, or the property proves little.
  for (const [outcome, count] of Object.entries(seen)) {
    assert.ok(count >= runs('reencode') / 100, `only ${count} ${outcome} frames: ${JSON.stringify(seen)}`);
  }
});
