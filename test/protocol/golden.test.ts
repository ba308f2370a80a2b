/**
 * Golden vectors: the WebWire v2.0 reference vectors and duplexwire's v2.1 ones (PROTOCOL.md
 * section 10), byte-exact in both directions.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  binary,
  decode,
  encode,
  encodeAcceptConf,
  encodeCancel,
  encodeClientConf,
  encodeReply,
  encodeReplyError,
  encodeRequest,
  encodeSessionClosed,
  encodeSignal,
  encodeSpecialReply,
  type Message,
  utf16,
} from '../../protocol/index.ts';
import { bytesOf, fromHex, idBytes, plain, toHex } from './helpers.ts';

interface Vector {
  readonly title: string;
  readonly hex: string;
  readonly message: Message;
  /** The same bytes through the dedicated encoder function. */
  readonly direct: () => Uint8Array;
}

const EMPTY = new Uint8Array(0);

const WEBWIRE_V20: readonly Vector[] = [
  {
    title: 'binary request "echo", id 1, payload "hello"',
    hex: '7f 0100000000000000 04 6563686f 68656c6c6f',
    message: { kind: 'request', id: idBytes(1), name: 'echo', payload: binary(bytesOf('hello')) },
    direct: () => encodeRequest(1, 'echo', binary(bytesOf('hello'))),
  },
  {
    title: 'its binary reply',
    hex: 'bf 0100000000000000 68656c6c6f',
    message: { kind: 'reply', id: idBytes(1), payload: binary(bytesOf('hello')) },
    direct: () => encodeReply(1, binary(bytesOf('hello'))),
  },
  {
    title: 'error reply id 0x14 SAMPLE_ERROR',
    hex: `00 1400000000000000 0c ${toHex(bytesOf('SAMPLE_ERROR'))} ${toHex(bytesOf('Sample error message'))}`,
    message: { kind: 'reply-error', id: idBytes(0x14), code: 'SAMPLE_ERROR', message: 'Sample error message' },
    direct: () => encodeReplyError(0x14, 'SAMPLE_ERROR', 'Sample error message'),
  },
  {
    title: 'internal error id 0x15',
    hex: '02 1500000000000000',
    message: { kind: 'special-reply', id: idBytes(0x15), reason: 'internal-error' },
    direct: () => encodeSpecialReply(0x15, 'internal-error'),
  },
  {
    title: 'empty UTF-16 reply id 0x0c',
    hex: 'c1 0c00000000000000 00',
    message: { kind: 'reply', id: idBytes(0x0c), payload: { encoding: 'utf16', data: EMPTY } },
    direct: () => encodeReply(0x0c, utf16('')),
  },
  {
    title: 'UTF-16 signal "utf16_sig" (odd name length, padded)',
    hex: `41 09 ${toHex(bytesOf('utf16_sig'))} 00 730061006d0070006c006500`,
    message: { kind: 'signal', name: 'utf16_sig', payload: utf16('sample') },
    direct: () => encodeSignal('utf16_sig', utf16('sample')),
  },
  {
    title: 'unnamed binary signal "binary"',
    hex: `3f 00 ${toHex(bytesOf('binary'))}`,
    message: { kind: 'signal', name: '', payload: binary(bytesOf('binary')) },
    direct: () => encodeSignal('', binary(bytesOf('binary'))),
  },
  {
    title: 'session closed notification',
    hex: '16',
    message: { kind: 'session-closed' },
    direct: () => encodeSessionClosed(),
  },
  {
    title: 'AcceptConf defaults (v2.0, 60000 ms, 8192 bytes)',
    hex: '17 02 00 60 ea 00 00 00 20 00 00',
    message: { kind: 'accept-conf', major: 2, minor: 0, readTimeout: 60_000, maxMessageSize: 8192, subProtocol: EMPTY },
    direct: () =>
      encodeAcceptConf({ major: 2, minor: 0, readTimeout: 60_000, maxMessageSize: 8192, subProtocol: EMPTY }),
  },
];

const DUPLEXWIRE_V21: readonly Vector[] = [
  {
    title: 'ClientConf minor 1',
    hex: '22 01',
    message: { kind: 'client-conf', minor: 1 },
    direct: () => encodeClientConf(1),
  },
  {
    title: 'CancelRequest id 7',
    hex: '23 0700000000000000',
    message: { kind: 'cancel', id: idBytes(7) },
    direct: () => encodeCancel(7),
  },
  {
    title: 'AcceptConf v2.1, 60000 ms, 1 MiB',
    hex: '17 02 01 60ea0000 00001000',
    message: {
      kind: 'accept-conf',
      major: 2,
      minor: 1,
      readTimeout: 60_000,
      maxMessageSize: 1 << 20,
      subProtocol: EMPTY,
    },
    direct: () =>
      encodeAcceptConf({ major: 2, minor: 1, readTimeout: 60_000, maxMessageSize: 1 << 20, subProtocol: EMPTY }),
  },
  {
    title: 'name-only UTF-16 request "abc", id 2 (pad with no payload)',
    hex: '81 0200000000000000 03 616263 00',
    message: { kind: 'request', id: idBytes(2), name: 'abc', payload: utf16('') },
    direct: () => encodeRequest(2, 'abc', utf16('')),
  },
  {
    title: 'unnamed UTF-16 request id 3 "A"',
    hex: '81 0300000000000000 00 4100',
    message: { kind: 'request', id: idBytes(3), name: '', payload: utf16('A') },
    direct: () => encodeRequest(3, '', utf16('A')),
  },
  {
    title: 'UTF-16 reply id 7 "A"',
    hex: 'c1 0700000000000000 00 4100',
    message: { kind: 'reply', id: idBytes(7), payload: utf16('A') },
    direct: () => encodeReply(7, utf16('A')),
  },
  {
    title: 'UTF-16 signal "ab" (even name length, no pad)',
    hex: '41 02 6162 4100',
    message: { kind: 'signal', name: 'ab', payload: utf16('A') },
    direct: () => encodeSignal('ab', utf16('A')),
  },
];

function checkVectors(vectors: readonly Vector[]): void {
  for (const vector of vectors) {
    const expected = toHex(fromHex(vector.hex));
    test(`encode: ${vector.title}`, () => {
      assert.equal(toHex(encode(vector.message)), expected);
      assert.equal(toHex(vector.direct()), expected);
    });
    test(`decode: ${vector.title}`, () => {
      assert.deepEqual(plain(decode(fromHex(vector.hex))), plain(vector.message));
    });
  }
}

describe('golden vectors: WebWire v2.0 reference', () => checkVectors(WEBWIRE_V20));
describe('golden vectors: duplexwire v2.1', () => checkVectors(DUPLEXWIRE_V21));

describe('golden vectors: decoding details', () => {
  test('the UTF-16 signal payload reads back as its text', () => {
    const message = decode(fromHex(`41 09 ${toHex(bytesOf('utf16_sig'))} 00 730061006d0070006c006500`));
    assert.equal(message.kind, 'signal');
    if (message.kind !== 'signal') return;
    assert.equal(new TextDecoder('utf-16le').decode(message.payload.data), 'sample');
  });

  test('decoded ids and payloads are views into the input, not copies', () => {
    const bytes = fromHex('7f 0100000000000000 04 6563686f 68656c6c6f');
    const message = decode(bytes);
    assert.equal(message.kind, 'request');
    if (message.kind !== 'request') return;
    assert.equal(message.id.buffer, bytes.buffer);
    assert.equal(message.payload.data.buffer, bytes.buffer);
    assert.equal(message.payload.data.byteOffset, 14);
  });

  test('decoding works on a view at a non-zero offset of a larger buffer', () => {
    const frame = fromHex('ff ff ff 23 0700000000000000 ff');
    const view = frame.subarray(3, 12);
    assert.deepEqual(plain(decode(view)), plain({ kind: 'cancel', id: idBytes(7) }));
  });
});
