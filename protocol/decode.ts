import * as T from './codes.ts';
import { ProtocolError } from './errors.ts';
import { decodeUtf8 } from './payload.ts';
import { type Encoding, ID_LENGTH, type Message, type RequestId } from './types.ts';

function badLength(type: number, length: number, rule: string): ProtocolError {
  return new ProtocolError('ERR_PROTOCOL_BAD_LENGTH', `message type ${type} of ${length} bytes: ${rule}`);
}

function minLength(bytes: Uint8Array, min: number): void {
  if (bytes.length < min) throw badLength(bytes[0]!, bytes.length, `needs at least ${min} bytes`);
}

function exactLength(bytes: Uint8Array, exact: number): void {
  if (bytes.length !== exact) throw badLength(bytes[0]!, bytes.length, `must be exactly ${exact} bytes`);
}

function readUint32(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>> 0;
}

/** Names are not validated on receipt (the reference does not); each byte becomes one character. */
function readLatin1(bytes: Uint8Array, start: number, end: number): string {
  if (end - start === 0) return '';
  return String.fromCharCode.apply(null, bytes.subarray(start, end) as unknown as number[]);
}

function readId(bytes: Uint8Array): RequestId {
  return bytes.subarray(1, 1 + ID_LENGTH);
}

function encodingOf(type: number, base: number): Encoding {
  const offset = type - base;
  return offset === 0 ? 'binary' : offset === 1 ? 'utf8' : 'utf16';
}

/**
 * Layout shared by signals and requests. `prefix` is where the name length byte sits (1 for
 * signals, 9 for requests).
 */
function decodeNamed(bytes: Uint8Array, prefix: number, encoding: Encoding): { name: string; data: Uint8Array } {
  const type = bytes[0]!;
  minLength(bytes, prefix + 1);
  const nameLength = bytes[prefix]!;
  const nameEnd = prefix + 1 + nameLength;
  if (nameEnd > bytes.length) {
    throw new ProtocolError('ERR_PROTOCOL_NAME_OVERFLOW', `message type ${type}: the name runs past the end`);
  }
  let start = nameEnd;
  if (encoding === 'utf16') {
    if ((bytes.length & 1) !== 0) {
      throw new ProtocolError('ERR_PROTOCOL_BAD_UTF16', `message type ${type}: UTF-16 of odd length`);
    }
    start += nameLength & 1;
    // A UTF-16 signal always carries a payload; a UTF-16 request may be name-only.
    const minPayload = prefix === 1 || nameLength === 0 ? 2 : 0;
    if (bytes.length < start + minPayload) {
      if (nameLength === 0 && bytes.length === start) {
        throw new ProtocolError('ERR_PROTOCOL_EMPTY_MESSAGE_BODY', `message type ${type} has neither name nor payload`);
      }
      throw badLength(type, bytes.length, `needs at least ${start + minPayload} bytes`);
    }
  } else if (nameLength === 0 && bytes.length === start) {
    throw new ProtocolError('ERR_PROTOCOL_EMPTY_MESSAGE_BODY', `message type ${type} has neither name nor payload`);
  }
  return { name: readLatin1(bytes, prefix + 1, nameEnd), data: bytes.subarray(start) };
}

/**
 * Decodes one WebSocket binary message. Payloads and ids are views into `bytes`, not copies.
 * Throws `ProtocolError` for anything malformed, and nothing else.
 */
export function decode(bytes: Uint8Array): Message {
  if (bytes.length === 0) throw new ProtocolError('ERR_PROTOCOL_EMPTY_MESSAGE', 'empty message');
  const type = bytes[0]!;
  switch (type) {
    case T.REPLY_ERROR: {
      minLength(bytes, 11);
      const codeLength = bytes[9]!;
      if (codeLength === 0) throw new ProtocolError('ERR_PROTOCOL_BAD_ERROR_CODE', 'error reply with an empty code');
      if (10 + codeLength > bytes.length) {
        throw new ProtocolError('ERR_PROTOCOL_BAD_ERROR_CODE', 'error reply: the code runs past the end');
      }
      return {
        kind: 'reply-error',
        id: readId(bytes),
        code: readLatin1(bytes, 10, 10 + codeLength),
        message: decodeUtf8(bytes.subarray(10 + codeLength)),
      };
    }
    case T.REPLY_SHUTDOWN:
    case T.REPLY_INTERNAL_ERROR:
    case T.REPLY_SESSION_NOT_FOUND:
    case T.REPLY_MAX_SESSION_CONNECTIONS:
    case T.REPLY_SESSIONS_DISABLED:
      minLength(bytes, 1 + ID_LENGTH);
      return { kind: 'special-reply', id: readId(bytes), reason: T.SPECIAL_REPLY_KINDS[type - 1]! };
    case T.NOTIFY_SESSION_CREATED:
      minLength(bytes, 2);
      return { kind: 'session-created', session: decodeUtf8(bytes.subarray(1)) };
    case T.NOTIFY_SESSION_CLOSED:
      exactLength(bytes, 1);
      return { kind: 'session-closed' };
    case T.ACCEPT_CONF:
      minLength(bytes, 11);
      return {
        kind: 'accept-conf',
        major: bytes[1]!,
        minor: bytes[2]!,
        readTimeout: readUint32(bytes, 3),
        maxMessageSize: readUint32(bytes, 7),
        subProtocol: bytes.subarray(11),
      };
    case T.REQUEST_CLOSE_SESSION:
      exactLength(bytes, 1 + ID_LENGTH);
      return { kind: 'close-session', id: readId(bytes) };
    case T.REQUEST_RESTORE_SESSION:
      minLength(bytes, 2 + ID_LENGTH);
      return { kind: 'restore-session', id: readId(bytes), key: bytes.subarray(1 + ID_LENGTH) };
    case T.HEARTBEAT:
      exactLength(bytes, 1);
      return { kind: 'heartbeat' };
    case T.CLIENT_CONF:
      exactLength(bytes, 2);
      return { kind: 'client-conf', minor: bytes[1]! };
    case T.CANCEL_REQUEST:
      exactLength(bytes, 1 + ID_LENGTH);
      return { kind: 'cancel', id: readId(bytes) };
    case T.SIGNAL_BINARY:
    case T.SIGNAL_UTF8:
    case T.SIGNAL_UTF16: {
      const encoding = encodingOf(type, T.SIGNAL_BINARY);
      const { name, data } = decodeNamed(bytes, 1, encoding);
      return { kind: 'signal', name, payload: { encoding, data } };
    }
    case T.REQUEST_BINARY:
    case T.REQUEST_UTF8:
    case T.REQUEST_UTF16: {
      const encoding = encodingOf(type, T.REQUEST_BINARY);
      const { name, data } = decodeNamed(bytes, 1 + ID_LENGTH, encoding);
      return { kind: 'request', id: readId(bytes), name, payload: { encoding, data } };
    }
    case T.REPLY_BINARY:
    case T.REPLY_UTF8:
      minLength(bytes, 1 + ID_LENGTH);
      return {
        kind: 'reply',
        id: readId(bytes),
        payload: { encoding: encodingOf(type, T.REPLY_BINARY), data: bytes.subarray(1 + ID_LENGTH) },
      };
    case T.REPLY_UTF16:
      minLength(bytes, 2 + ID_LENGTH);
      if ((bytes.length & 1) !== 0) {
        throw new ProtocolError('ERR_PROTOCOL_BAD_UTF16', `message type ${type}: UTF-16 of odd length`);
      }
      return { kind: 'reply', id: readId(bytes), payload: { encoding: 'utf16', data: bytes.subarray(2 + ID_LENGTH) } };
    default:
      throw new ProtocolError('ERR_PROTOCOL_UNKNOWN_TYPE', `unknown message type ${type}`);
  }
}

/**
 * The id as a number when its uint64 LE value is a safe integer (every id duplexwire allocates),
 * otherwise -1.
 */
export function idToNumber(id: RequestId): number {
  const lo = readUint32(id, 0);
  const hi = readUint32(id, 4);
  if (hi > 0x1f_ffff) return -1;
  return hi * 0x1_0000_0000 + lo;
}
