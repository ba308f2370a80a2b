/**
 * Codec unit tests: round trips of every message kind, the edges of every length rule (PROTOCOL.md
 * section 3), what senders refuse, the ProtocolError catalogue and the payload helpers.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import {
  binary,
  decode,
  decodeUtf8,
  decodeUtf16le,
  type Encoding,
  encode,
  encodeAcceptConf,
  encodeCancel,
  encodeClientConf,
  encodeCloseSession,
  encodeReply,
  encodeReplyError,
  encodeRequest,
  encodeRestoreSession,
  encodeSessionCreated,
  encodeSignal,
  encodeSpecialReply,
  encodeUtf8,
  encodeUtf16le,
  idToNumber,
  isPayload,
  type Message,
  MessageType,
  PROTOCOL_ERROR_CLOSE_CODES,
  type Payload,
  ProtocolError,
  type ProtocolErrorCode,
  payloadText,
  type RequestIdInput,
  toPayload,
  utf8,
  utf16,
} from '../../protocol/index.ts';
import { bytesOf, fromHex, idBytes, plain, toHex } from './helpers.ts';

const ENCODINGS: readonly Encoding[] = ['binary', 'utf8', 'utf16'];
const EMPTY = new Uint8Array(0);
const ID = fromHex('0102030405060708');
const CODES = Object.keys(PROTOCOL_ERROR_CLOSE_CODES) as ProtocolErrorCode[];

/** Every byte value that is a message type; all others must be rejected as unknown. */
const KNOWN_TYPES = new Set<number>(Object.values(MessageType));

/** Asserts that `run` throws a ProtocolError with `code` and the close code the catalogue maps it to. */
function expectProtocolError(run: () => unknown, code: ProtocolErrorCode): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof ProtocolError, `expected a ProtocolError, got ${String(error)}`);
    assert.equal(error.code, code);
    assert.equal(error.closeCode, PROTOCOL_ERROR_CLOSE_CODES[code]);
    assert.equal(error.name, 'ProtocolError');
    assert.ok(error.message.length > 0);
    return true;
  });
}

function expectRejected(bytes: Uint8Array, code: ProtocolErrorCode): void {
  expectProtocolError(() => decode(bytes), code);
}

/** `size` printable ASCII characters. */
function nameOf(size: number): string {
  let out = '';
  for (let i = 0; i < size; i++) out += String.fromCharCode(32 + (i % 95));
  return out;
}

/** A payload of `size` bytes (for UTF-16, `size` must be even). */
function payloadOf(encoding: Encoding, size: number): Payload {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = encoding === 'utf16' ? (i & 1 ? 0 : 0x41 + (i % 26)) : 0x61 + (i % 26);
  return { encoding, data };
}

function cat(...parts: ReadonlyArray<Uint8Array | number | string>): Uint8Array {
  const chunks = parts.map((part) =>
    typeof part === 'number' ? Uint8Array.of(part) : typeof part === 'string' ? fromHex(part) : part,
  );
  const out = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

function bytes(type: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  if (length > 0) out[0] = type;
  return out;
}

/** decode(encode(m)) equals m, and encoding the decoded message gives the same bytes again. */
function assertRoundTrip(message: Message): Uint8Array {
  const wire = encode(message);
  const decoded = decode(wire);
  assert.deepEqual(plain(decoded), plain(message));
  assert.equal(toHex(encode(decoded)), toHex(wire));
  return wire;
}

describe('round trip', () => {
  const samples: readonly Message[] = [
    { kind: 'request', id: ID, name: 'user.get', payload: binary(fromHex('00ff10')) },
    { kind: 'request', id: ID, name: 'a', payload: utf8('héllo') },
    { kind: 'request', id: ID, name: 'abc', payload: utf16('héllo 😀') },
    { kind: 'reply', id: ID, payload: binary(fromHex('deadbeef')) },
    { kind: 'reply', id: ID, payload: utf8('ok') },
    { kind: 'reply', id: ID, payload: utf16('ok') },
    { kind: 'signal', name: 'tick', payload: binary(fromHex('01')) },
    { kind: 'signal', name: 'odd', payload: utf8('x') },
    { kind: 'signal', name: 'odd', payload: utf16('x') },
    { kind: 'reply-error', id: ID, code: 'NOT_FOUND', message: 'no such user: ä😀' },
    { kind: 'reply-error', id: ID, code: 'E', message: '' },
    { kind: 'special-reply', id: ID, reason: 'shutdown' },
    { kind: 'special-reply', id: ID, reason: 'internal-error' },
    { kind: 'special-reply', id: ID, reason: 'session-not-found' },
    { kind: 'special-reply', id: ID, reason: 'max-session-connections' },
    { kind: 'special-reply', id: ID, reason: 'sessions-disabled' },
    {
      kind: 'session-created',
      session: '{"k":"key","c":"2026-11-22T11:41:29.065369494Z","l":"2026-11-22T11:41:29.065369494Z"}',
    },
    { kind: 'session-closed' },
    {
      kind: 'accept-conf',
      major: 2,
      minor: 1,
      readTimeout: 0xffff_ffff,
      maxMessageSize: 0,
      subProtocol: bytesOf('chat.v1'),
    },
    { kind: 'close-session', id: ID },
    { kind: 'restore-session', id: ID, key: bytesOf('k'.repeat(64)) },
    { kind: 'heartbeat' },
    { kind: 'client-conf', minor: 1 },
    { kind: 'cancel', id: ID },
  ];
  for (const message of samples) {
    test(`${message.kind} ${toHex(encode(message)).slice(0, 24)}`, () => {
      assertRoundTrip(message);
    });
  }

  test('special replies use types 1..5', () => {
    const reasons = [
      'shutdown',
      'internal-error',
      'session-not-found',
      'max-session-connections',
      'sessions-disabled',
    ] as const;
    reasons.forEach((reason, index) => {
      assert.equal(encodeSpecialReply(ID, reason)[0], index + 1);
    });
  });

  test('every type byte the encoder emits is a known type', () => {
    for (const message of samples) assert.ok(KNOWN_TYPES.has(encode(message)[0]!));
  });
});

describe('names', () => {
  for (const size of [0, 1, 255]) {
    for (const encoding of ENCODINGS) {
      test(`signal and request with a ${size}-byte name, ${encoding}`, () => {
        const payload = payloadOf(encoding, 4);
        const name = nameOf(size);
        const pad = encoding === 'utf16' ? size & 1 : 0;
        const signal = assertRoundTrip({ kind: 'signal', name, payload });
        assert.equal(signal.length, 2 + size + pad + 4);
        assert.equal(signal[1], size);
        const request = assertRoundTrip({ kind: 'request', id: ID, name, payload });
        assert.equal(request.length, 10 + size + pad + 4);
        assert.equal(request[9], size);
        if (pad === 1) {
          assert.equal(signal[2 + size], 0);
          assert.equal(request[10 + size], 0);
        }
      });
    }
  }

  test('receivers accept name bytes outside printable ASCII, one character per byte', () => {
    const message = decode(cat(MessageType.SignalBinary, 3, '0a e9 7f', 'ff'));
    assert.deepEqual(plain(message), plain({ kind: 'signal', name: '\n\u00e9\u007f', payload: binary(fromHex('ff')) }));
  });
});

describe('name-only and payload-only messages', () => {
  for (const encoding of ENCODINGS) {
    test(`name-only request, ${encoding}`, () => {
      for (const size of [1, 2, 3]) {
        const wire = assertRoundTrip({
          kind: 'request',
          id: ID,
          name: nameOf(size),
          payload: { encoding, data: EMPTY },
        });
        const pad = encoding === 'utf16' ? size & 1 : 0;
        assert.equal(wire.length, 10 + size + pad);
      }
    });
    test(`payload-only request, ${encoding}`, () => {
      const wire = assertRoundTrip({ kind: 'request', id: ID, name: '', payload: payloadOf(encoding, 2) });
      assert.equal(wire.length, 12);
    });
    test(`payload-only signal, ${encoding}`, () => {
      const wire = assertRoundTrip({ kind: 'signal', name: '', payload: payloadOf(encoding, 2) });
      assert.equal(wire.length, 4);
    });
  }
  for (const encoding of ['binary', 'utf8'] as const) {
    test(`name-only signal, ${encoding}`, () => {
      const wire = assertRoundTrip({ kind: 'signal', name: 'abc', payload: { encoding, data: EMPTY } });
      assert.equal(wire.length, 5);
    });
  }
});

describe('empty replies', () => {
  const cases = [
    ['binary', MessageType.ReplyBinary, 9],
    ['utf8', MessageType.ReplyUtf8, 9],
    ['utf16', MessageType.ReplyUtf16, 10],
  ] as const;
  for (const [encoding, type, length] of cases) {
    test(`${type} (${encoding}) is ${length} bytes`, () => {
      const wire = assertRoundTrip({ kind: 'reply', id: ID, payload: { encoding, data: EMPTY } });
      assert.equal(wire.length, length);
      assert.equal(wire[0], type);
    });
  }
});

describe('decode rejects', () => {
  test('an empty message', () => expectRejected(EMPTY, 'ERR_PROTOCOL_EMPTY_MESSAGE'));

  test('unknown types 6, 36, 62, 255', () => {
    for (const type of [6, 36, 62, 255]) expectRejected(bytes(type, 20), 'ERR_PROTOCOL_UNKNOWN_TYPE');
  });

  test('every reserved type 36..62, at any length', () => {
    for (let type = 36; type <= 62; type++) {
      for (const length of [1, 2, 9, 11, 64]) expectRejected(bytes(type, length), 'ERR_PROTOCOL_UNKNOWN_TYPE');
    }
  });

  test('every byte value that is not a known type', () => {
    let unknown = 0;
    for (let type = 0; type < 256; type++) {
      if (KNOWN_TYPES.has(type)) continue;
      unknown++;
      expectRejected(bytes(type, 1), 'ERR_PROTOCOL_UNKNOWN_TYPE');
      expectRejected(bytes(type, 30), 'ERR_PROTOCOL_UNKNOWN_TYPE');
    }
    assert.equal(unknown, 256 - 23);
  });

  describe('exact-length types, one byte more and one less', () => {
    const exact = [
      [MessageType.NotifySessionClosed, 1],
      [MessageType.RequestCloseSession, 9],
      [MessageType.Heartbeat, 1],
      [MessageType.ClientConf, 2],
      [MessageType.CancelRequest, 9],
    ] as const;
    for (const [type, length] of exact) {
      test(`type ${type}: exactly ${length}`, () => {
        assert.doesNotThrow(() => decode(bytes(type, length)));
        expectRejected(bytes(type, length + 1), 'ERR_PROTOCOL_BAD_LENGTH');
        expectRejected(
          bytes(type, length - 1),
          length === 1 ? 'ERR_PROTOCOL_EMPTY_MESSAGE' : 'ERR_PROTOCOL_BAD_LENGTH',
        );
      });
    }
  });

  describe('minimum lengths, one byte short', () => {
    // [title, shortest legal message, error when its last byte is cut off]
    const cases: ReadonlyArray<readonly [string, Uint8Array, ProtocolErrorCode]> = [
      ['0 ReplyError (code 1 byte, empty message)', cat(0, ID, 1, '41'), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['1 ReplyShutdown', cat(1, ID), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['2 ReplyInternalError', cat(2, ID), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['3 ReplySessionNotFound', cat(3, ID), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['4 ReplyMaxSessConnsReached', cat(4, ID), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['5 ReplySessionsDisabled', cat(5, ID), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['21 NotifySessionCreated', cat(21, '7b'), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['23 AcceptConf', fromHex('17 02 00 60ea0000 00200000'), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['32 RequestRestoreSession', cat(32, ID, '6b'), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['63 SignalBinary, no name', cat(63, 0, '01'), 'ERR_PROTOCOL_EMPTY_MESSAGE_BODY'],
      ['63 SignalBinary, name-only', cat(63, 3, '616263'), 'ERR_PROTOCOL_NAME_OVERFLOW'],
      ['64 SignalUtf8, no name', cat(64, 0, '01'), 'ERR_PROTOCOL_EMPTY_MESSAGE_BODY'],
      ['64 SignalUtf8, name-only', cat(64, 1, '61'), 'ERR_PROTOCOL_NAME_OVERFLOW'],
      ['65 SignalUtf16, no name', cat(65, 0, '4100'), 'ERR_PROTOCOL_BAD_UTF16'],
      ['65 SignalUtf16, name of 3 (pad)', cat(65, 3, '616263', 0, '4100'), 'ERR_PROTOCOL_BAD_UTF16'],
      ['65 SignalUtf16, name of 2', cat(65, 2, '6162', '4100'), 'ERR_PROTOCOL_BAD_UTF16'],
      ['127 RequestBinary, no name', cat(127, ID, 0, '01'), 'ERR_PROTOCOL_EMPTY_MESSAGE_BODY'],
      ['127 RequestBinary, name-only', cat(127, ID, 2, '6162'), 'ERR_PROTOCOL_NAME_OVERFLOW'],
      ['128 RequestUtf8, no name', cat(128, ID, 0, '01'), 'ERR_PROTOCOL_EMPTY_MESSAGE_BODY'],
      ['128 RequestUtf8, name-only', cat(128, ID, 1, '61'), 'ERR_PROTOCOL_NAME_OVERFLOW'],
      ['129 RequestUtf16, no name', cat(129, ID, 0, '4100'), 'ERR_PROTOCOL_BAD_UTF16'],
      ['129 RequestUtf16, name-only of 3 (pad)', cat(129, ID, 3, '616263', 0), 'ERR_PROTOCOL_BAD_UTF16'],
      ['129 RequestUtf16, name-only of 2', cat(129, ID, 2, '6162'), 'ERR_PROTOCOL_NAME_OVERFLOW'],
      ['191 ReplyBinary', cat(191, ID), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['192 ReplyUtf8', cat(192, ID), 'ERR_PROTOCOL_BAD_LENGTH'],
      ['193 ReplyUtf16', cat(193, ID, 0), 'ERR_PROTOCOL_BAD_LENGTH'],
    ];
    for (const [title, shortest, code] of cases) {
      test(title, () => {
        assert.doesNotThrow(() => decode(shortest));
        expectRejected(shortest.subarray(0, shortest.length - 1), code);
      });
    }

    test('the bare type byte of every type with a minimum over 1', () => {
      for (const type of [0, 1, 2, 3, 4, 5, 21, 23, 32, 63, 64, 65, 127, 128, 129, 191, 192, 193]) {
        expectRejected(Uint8Array.of(type), 'ERR_PROTOCOL_BAD_LENGTH');
      }
    });

    test('even but too short: UTF-16 signal and request two bytes short', () => {
      expectRejected(cat(65, 3, '616263', 0), 'ERR_PROTOCOL_BAD_LENGTH');
      expectRejected(cat(65, 2, '6162'), 'ERR_PROTOCOL_BAD_LENGTH');
      expectRejected(cat(129, ID, 0), 'ERR_PROTOCOL_EMPTY_MESSAGE_BODY');
    });
  });

  test('a name length past the end, signals and requests', () => {
    for (const type of [63, 64, 65]) {
      expectRejected(cat(type, 5, '61626364'), 'ERR_PROTOCOL_NAME_OVERFLOW');
      expectRejected(cat(type, 255, bytesOf(nameOf(100))), 'ERR_PROTOCOL_NAME_OVERFLOW');
      expectRejected(cat(type, 1), 'ERR_PROTOCOL_NAME_OVERFLOW');
    }
    for (const type of [127, 128, 129]) {
      expectRejected(cat(type, ID, 5, '61626364'), 'ERR_PROTOCOL_NAME_OVERFLOW');
      expectRejected(cat(type, ID, 255, bytesOf(nameOf(200))), 'ERR_PROTOCOL_NAME_OVERFLOW');
      expectRejected(cat(type, ID, 1), 'ERR_PROTOCOL_NAME_OVERFLOW');
    }
  });

  test('UTF-16 messages of odd length: 65, 129, 193', () => {
    expectRejected(cat(65, 2, '6162', '410042'), 'ERR_PROTOCOL_BAD_UTF16');
    expectRejected(cat(65, 1, '61', 0, '410042'), 'ERR_PROTOCOL_BAD_UTF16');
    expectRejected(cat(65, 1, '61'), 'ERR_PROTOCOL_BAD_UTF16');
    expectRejected(cat(129, ID, 2, '6162', '410042'), 'ERR_PROTOCOL_BAD_UTF16');
    expectRejected(cat(129, ID, 1, '61'), 'ERR_PROTOCOL_BAD_UTF16');
    expectRejected(cat(129, ID, 0, '410042'), 'ERR_PROTOCOL_BAD_UTF16');
    expectRejected(cat(193, ID, 0, '41'), 'ERR_PROTOCOL_BAD_UTF16');
    expectRejected(cat(193, ID, 0, '410042'), 'ERR_PROTOCOL_BAD_UTF16');
  });

  test('a UTF-16 signal with an empty payload', () => {
    expectRejected(cat(65, 0), 'ERR_PROTOCOL_EMPTY_MESSAGE_BODY');
    expectRejected(cat(65, 2, '6162'), 'ERR_PROTOCOL_BAD_LENGTH');
    expectRejected(cat(65, 1, '61', 0), 'ERR_PROTOCOL_BAD_LENGTH');
    expectRejected(cat(65, 255, bytesOf(nameOf(255)), 0), 'ERR_PROTOCOL_BAD_LENGTH');
  });

  test('no name and no payload: 63, 64, 65, 127, 128, 129', () => {
    for (const type of [63, 64, 65]) expectRejected(cat(type, 0), 'ERR_PROTOCOL_EMPTY_MESSAGE_BODY');
    for (const type of [127, 128, 129]) expectRejected(cat(type, ID, 0), 'ERR_PROTOCOL_EMPTY_MESSAGE_BODY');
  });

  test('an error reply with code length 0 or past the end', () => {
    expectRejected(cat(0, ID, 0, '41'), 'ERR_PROTOCOL_BAD_ERROR_CODE');
    expectRejected(cat(0, ID, 0, bytesOf('message')), 'ERR_PROTOCOL_BAD_ERROR_CODE');
    expectRejected(cat(0, ID, 2, '41'), 'ERR_PROTOCOL_BAD_ERROR_CODE');
    expectRejected(cat(0, ID, 255, bytesOf('SAMPLE_ERROR')), 'ERR_PROTOCOL_BAD_ERROR_CODE');
    // Exactly filling the message is legal: the text after the code is empty.
    assert.deepEqual(
      plain(decode(cat(0, ID, 2, '4142'))),
      plain({ kind: 'reply-error', id: ID, code: 'AB', message: '' }),
    );
  });
});

describe('encoders refuse', () => {
  test('a signal or request with no name and no payload', () => {
    for (const encoding of ['binary', 'utf8'] as const) {
      expectProtocolError(() => encodeSignal('', { encoding, data: EMPTY }), 'ERR_PROTOCOL_NO_NAME_NO_PAYLOAD');
    }
    for (const encoding of ENCODINGS) {
      expectProtocolError(() => encodeRequest(1, '', { encoding, data: EMPTY }), 'ERR_PROTOCOL_NO_NAME_NO_PAYLOAD');
    }
    // A UTF-16 signal needs a payload even with a name.
    expectProtocolError(() => encodeSignal('', utf16('')), 'ERR_PROTOCOL_INVALID_UTF16');
    expectProtocolError(() => encodeSignal('name', utf16('')), 'ERR_PROTOCOL_INVALID_UTF16');
  });

  test('a name of 256 characters (255 is fine)', () => {
    expectProtocolError(() => encodeSignal(nameOf(256), utf8('x')), 'ERR_PROTOCOL_INVALID_NAME');
    expectProtocolError(() => encodeRequest(1, nameOf(256), utf8('x')), 'ERR_PROTOCOL_INVALID_NAME');
    assert.equal(encodeSignal(nameOf(255), utf8('x')).length, 258);
  });

  test('a name with a character outside 32..126', () => {
    for (const name of ['a\nb', 'é', '\u007f', '\u001f', ' \u0000', '😀', 'x\u0080']) {
      for (const encoding of ENCODINGS) {
        expectProtocolError(() => encodeSignal(name, payloadOf(encoding, 2)), 'ERR_PROTOCOL_INVALID_NAME');
        expectProtocolError(() => encodeRequest(1, name, payloadOf(encoding, 2)), 'ERR_PROTOCOL_INVALID_NAME');
      }
    }
    assert.doesNotThrow(() => encodeSignal(' ~', utf8('x')));
  });

  test('an error code that is empty, 256 characters long or not printable', () => {
    expectProtocolError(() => encodeReplyError(1, '', 'm'), 'ERR_PROTOCOL_INVALID_ERROR_CODE');
    expectProtocolError(() => encodeReplyError(1, nameOf(256), 'm'), 'ERR_PROTOCOL_INVALID_ERROR_CODE');
    for (const code of ['A\tB', 'é', '\u007f', 'E\n']) {
      expectProtocolError(() => encodeReplyError(1, code, 'm'), 'ERR_PROTOCOL_INVALID_ERROR_CODE');
    }
    assert.equal(encodeReplyError(1, nameOf(255), '').length, 10 + 255);
  });

  test('a UTF-16 payload of odd length', () => {
    const odd: Payload = { encoding: 'utf16', data: fromHex('410042') };
    expectProtocolError(() => encodeSignal('s', odd), 'ERR_PROTOCOL_INVALID_UTF16');
    expectProtocolError(() => encodeRequest(1, 's', odd), 'ERR_PROTOCOL_INVALID_UTF16');
    expectProtocolError(() => encodeReply(1, odd), 'ERR_PROTOCOL_INVALID_UTF16');
    expectProtocolError(() => encodeReply(1, { encoding: 'utf16', data: fromHex('41') }), 'ERR_PROTOCOL_INVALID_UTF16');
  });

  test('a numeric id that is negative, unsafe or not an integer, and ids not of 8 bytes', () => {
    const bad: readonly RequestIdInput[] = [
      -1,
      Number.MAX_SAFE_INTEGER + 1,
      2 ** 64,
      1.5,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      new Uint8Array(7),
      new Uint8Array(9),
      EMPTY,
    ];
    const encoders: ReadonlyArray<(id: RequestIdInput) => Uint8Array> = [
      (id) => encodeRequest(id, 'n', utf8('x')),
      (id) => encodeReply(id, utf8('x')),
      (id) => encodeReplyError(id, 'E', 'm'),
      (id) => encodeSpecialReply(id, 'shutdown'),
      (id) => encodeCloseSession(id),
      (id) => encodeRestoreSession(id, bytesOf('k')),
      (id) => encodeCancel(id),
    ];
    for (const id of bad) {
      for (const run of encoders) expectProtocolError(() => run(id), 'ERR_PROTOCOL_INVALID_FIELD');
    }
  });

  test('numeric ids are written as uint64 little-endian', () => {
    assert.equal(toHex(encodeCancel(0)), '230000000000000000');
    assert.equal(toHex(encodeCancel(0x0102_0304_0506)), '230605040302010000');
    assert.equal(toHex(encodeCancel(Number.MAX_SAFE_INTEGER)), '23ffffffffffff1f00');
  });

  test('out-of-range AcceptConf, ClientConf, session and restore fields', () => {
    const conf = { major: 2, minor: 1, readTimeout: 60_000, maxMessageSize: 8192, subProtocol: EMPTY };
    for (const patch of [
      { major: 256 },
      { major: -1 },
      { minor: 1.5 },
      { readTimeout: 2 ** 32 },
      { readTimeout: -1 },
      { maxMessageSize: Number.NaN },
    ]) {
      expectProtocolError(() => encodeAcceptConf({ ...conf, ...patch }), 'ERR_PROTOCOL_INVALID_FIELD');
    }
    expectProtocolError(() => encodeClientConf(256), 'ERR_PROTOCOL_INVALID_FIELD');
    expectProtocolError(() => encodeClientConf(-1), 'ERR_PROTOCOL_INVALID_FIELD');
    expectProtocolError(() => encodeSessionCreated(''), 'ERR_PROTOCOL_INVALID_FIELD');
    expectProtocolError(() => encodeRestoreSession(1, EMPTY), 'ERR_PROTOCOL_INVALID_FIELD');
  });
});

describe('ProtocolError catalogue', () => {
  test('every code maps to its close code: 1003 text, 1009 too big, 1002 the rest', () => {
    for (const code of CODES) {
      const error = new ProtocolError(code, 'reason', { cause: 'test' });
      assert.ok(error instanceof Error);
      assert.equal(error.code, code);
      assert.equal(error.closeCode, PROTOCOL_ERROR_CLOSE_CODES[code]);
      assert.equal(error.cause, 'test');
      const expected =
        code === 'ERR_PROTOCOL_TEXT_MESSAGE' ? 1003 : code === 'ERR_PROTOCOL_MESSAGE_TOO_BIG' ? 1009 : 1002;
      assert.equal(error.closeCode, expected, code);
    }
  });

  test('every code and its close code are documented in PROTOCOL.md', () => {
    const spec = readFileSync(new URL('../../protocol/PROTOCOL.md', import.meta.url), 'utf8');
    for (const code of CODES) {
      const row = spec.split('\n').find((line) => line.startsWith(`| \`${code}\``));
      assert.ok(row, `${code} has no row in PROTOCOL.md`);
      assert.ok(row.trimEnd().endsWith(`| ${PROTOCOL_ERROR_CLOSE_CODES[code]} |`), `${code}: ${row}`);
    }
  });
});

describe('payload helpers', () => {
  const text = '😀 𝄞 a';

  test('UTF-16LE keeps surrogate pairs', () => {
    const data = encodeUtf16le(text);
    assert.equal(data.length, text.length * 2);
    assert.equal(toHex(data.subarray(0, 4)), '3dd800de');
    assert.equal(decodeUtf16le(data), text);
    assert.equal(payloadText(utf16(text)), text);
  });

  test('a UTF-16 request carries surrogate pairs intact', () => {
    const message = decode(encodeRequest(9, 'odd', utf16(text)));
    assert.equal(message.kind, 'request');
    if (message.kind !== 'request') return;
    assert.equal(message.payload.encoding, 'utf16');
    assert.equal(decodeUtf16le(message.payload.data), text);
    assert.equal(payloadText(message.payload), text);
  });

  test('a leading U+FEFF is text, not a byte-order mark to strip', () => {
    assert.equal(decodeUtf16le(encodeUtf16le('\ufeffa')), '\ufeffa');
    assert.equal(decodeUtf8(encodeUtf8('\ufeffa')), '\ufeffa');
    const error = decode(encodeReplyError(1, 'E', '\ufeffmessage'));
    assert.equal(error.kind === 'reply-error' && error.message, '\ufeffmessage');
    const created = decode(encodeSessionCreated('\ufeff{}'));
    assert.equal(created.kind === 'session-created' && created.session, '\ufeff{}');
  });

  test('UTF-8 helpers round trip and replace invalid sequences', () => {
    assert.equal(decodeUtf8(encodeUtf8(text)), text);
    assert.equal(payloadText(utf8(text)), text);
    assert.equal(decodeUtf8(fromHex('61ff62')), 'a\ufffdb');
  });

  test('toPayload and isPayload', () => {
    assert.deepEqual(plain(toPayload(undefined)), plain(binary(EMPTY)));
    assert.deepEqual(plain(toPayload(null)), plain(binary(EMPTY)));
    assert.deepEqual(plain(toPayload('hé')), plain(utf8('hé')));
    assert.deepEqual(plain(toPayload(fromHex('0102'))), plain(binary(fromHex('0102'))));
    const payload = utf16('x');
    assert.equal(toPayload(payload), payload);
    assert.ok(isPayload(payload));
    assert.ok(!isPayload({ encoding: 'latin1', data: EMPTY }));
    assert.ok(!isPayload({ encoding: 'binary', data: [1] }));
    assert.ok(!isPayload(null));
  });

  test('idToNumber: 0, 1, 2^53-1, and -1 beyond', () => {
    assert.equal(idToNumber(new Uint8Array(8)), 0);
    assert.equal(idToNumber(idBytes(1)), 1);
    assert.equal(idToNumber(idBytes(Number.MAX_SAFE_INTEGER)), Number.MAX_SAFE_INTEGER);
    assert.equal(idToNumber(fromHex('0000000000002000')), -1);
    assert.equal(idToNumber(new Uint8Array(8).fill(0xff)), -1);
  });
});
