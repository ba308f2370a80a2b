import { allocate } from './alloc.ts';
import * as T from './codes.ts';
import { ProtocolError, type ProtocolErrorCode } from './errors.ts';
import { encodeUtf8 } from './payload.ts';
import {
  type AcceptConfMessage,
  type Encoding,
  ID_LENGTH,
  MAX_NAME_LENGTH,
  type Message,
  type Payload,
  type SpecialReplyKind,
} from './types.ts';

/**
 * A request id: 8 raw bytes, or a non-negative safe integer written as uint64 little-endian
 * (what the reference Go client does with its counter).
 */
export type RequestIdInput = Uint8Array | number;

/** Each encoding's offset from the binary type of its family: 63/127/191 + 0, 1 or 2. */
const ENCODING_OFFSET: Readonly<Record<Encoding, number>> = { binary: 0, utf8: 1, utf16: 2 };

/** True when every character of `text` is printable ASCII (32..126). */
function isPrintableAscii(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 32 || c > 126) return false;
  }
  return true;
}

/**
 * Throws `code` unless `text` is `min`..255 printable ASCII characters (32..126): the rule of names
 * and of error codes, whose length is one byte on the wire.
 */
function assertAsciiField(what: string, text: string, min: number, code: ProtocolErrorCode): void {
  if (text.length < min || text.length > MAX_NAME_LENGTH) {
    throw new ProtocolError(code, `${what} of ${text.length} bytes, not ${min}..255`);
  }
  if (!isPrintableAscii(text)) throw new ProtocolError(code, `${what} must be printable ASCII (32..126)`);
}

/**
 * Throws unless `name` may be sent: at most 255 characters, each printable ASCII. The empty name
 * is legal (a message without a name).
 */
export function assertValidName(name: string): void {
  assertAsciiField('name', name, 0, 'ERR_PROTOCOL_INVALID_NAME');
}

/** Throws unless `code` may be sent as a ReplyError code: 1..255 printable ASCII characters. */
export function assertValidErrorCode(code: string): void {
  assertAsciiField('error code', code, 1, 'ERR_PROTOCOL_INVALID_ERROR_CODE');
}

function assertUtf16Even(payload: Payload): void {
  if (payload.encoding === 'utf16' && (payload.data.length & 1) !== 0) {
    throw new ProtocolError('ERR_PROTOCOL_INVALID_UTF16', 'UTF-16 payload of odd length');
  }
}

function writeId(out: Uint8Array, offset: number, id: RequestIdInput): void {
  if (typeof id === 'number') {
    if (!Number.isSafeInteger(id) || id < 0) {
      throw new ProtocolError('ERR_PROTOCOL_INVALID_FIELD', 'request id must be a safe integer >= 0');
    }
    const lo = id % 0x1_0000_0000;
    const hi = (id - lo) / 0x1_0000_0000;
    writeUint32(out, offset, lo);
    writeUint32(out, offset + 4, hi);
    return;
  }
  if (id.length !== ID_LENGTH) {
    throw new ProtocolError('ERR_PROTOCOL_INVALID_FIELD', `request id of ${id.length} bytes, not 8`);
  }
  out.set(id, offset);
}

/** A message of `length` bytes starting with its type byte and, unless `id` is null, the id. */
function frame(type: number, id: RequestIdInput | null, length: number): Uint8Array {
  const out = allocate(length);
  out[0] = type;
  if (id !== null) writeId(out, 1, id);
  return out;
}

function writeUint32(out: Uint8Array, offset: number, value: number): void {
  out[offset] = value & 0xff;
  out[offset + 1] = (value >>> 8) & 0xff;
  out[offset + 2] = (value >>> 16) & 0xff;
  out[offset + 3] = (value >>> 24) & 0xff;
}

function writeAscii(out: Uint8Array, offset: number, text: string): void {
  for (let i = 0; i < text.length; i++) out[offset + i] = text.charCodeAt(i);
}

/**
 * A message as two pieces to be sent back to back as one WebSocket message: `head` (the type, id,
 * name and padding) and the payload's bytes themselves, not copied. For large payloads on
 * transports that can write several buffers as one message (`TransportSocket.sendParts`): the
 * payload is then written from where it already is. `joinParts` makes one message of them.
 */
export type MessageParts = readonly [head: Uint8Array, payload: Uint8Array];

/** The two pieces as one message (for a transport that sends single buffers). */
export function joinParts(parts: MessageParts): Uint8Array {
  const [head, payload] = parts;
  const out = allocate(head.length + payload.length);
  out.set(head, 0);
  out.set(payload, head.length);
  return out;
}

/**
 * Shared layout of signals and requests: `prefix` bytes (type, and the id for requests), the name
 * length, the name, a padding byte for UTF-16 after an odd-length name (even with no payload, so
 * the message length stays even), then the payload: all in one buffer, or, with `split`, the
 * payload left where it is ({@link MessageParts}).
 */
function encodeNamed(
  prefix: number,
  type: number,
  id: RequestIdInput | null,
  name: string,
  payload: Payload,
  split: boolean,
): Uint8Array | MessageParts {
  assertValidName(name);
  assertUtf16Even(payload);
  if (name.length === 0 && payload.data.length === 0) {
    throw new ProtocolError('ERR_PROTOCOL_NO_NAME_NO_PAYLOAD', 'message with neither name nor payload');
  }
  const pad = payload.encoding === 'utf16' ? name.length & 1 : 0;
  const start = prefix + 1 + name.length + pad;
  const out = frame(type, id, split ? start : start + payload.data.length);
  out[prefix] = name.length;
  writeAscii(out, prefix + 1, name);
  if (split) return [out, payload.data];
  out.set(payload.data, start);
  return out;
}

function requestType(payload: Payload): number {
  return T.REQUEST_BINARY + ENCODING_OFFSET[payload.encoding];
}

/** Request (127/128/129): type, id, name length, name, [pad], payload. */
export function encodeRequest(id: RequestIdInput, name: string, payload: Payload): Uint8Array {
  return encodeNamed(1 + ID_LENGTH, requestType(payload), id, name, payload, false) as Uint8Array;
}

/** {@link encodeRequest} as {@link MessageParts}: the same bytes, the payload not copied. */
export function encodeRequestParts(id: RequestIdInput, name: string, payload: Payload): MessageParts {
  return encodeNamed(1 + ID_LENGTH, requestType(payload), id, name, payload, true) as MessageParts;
}

function signalType(payload: Payload): number {
  if (payload.encoding === 'utf16' && payload.data.length === 0) {
    throw new ProtocolError('ERR_PROTOCOL_INVALID_UTF16', 'empty UTF-16 signal');
  }
  return T.SIGNAL_BINARY + ENCODING_OFFSET[payload.encoding];
}

/** Signal (63/64/65): type, name length, name, [pad], payload. A UTF-16 signal needs a payload. */
export function encodeSignal(name: string, payload: Payload): Uint8Array {
  return encodeNamed(1, signalType(payload), null, name, payload, false) as Uint8Array;
}

/** {@link encodeSignal} as {@link MessageParts}: the same bytes, the payload not copied. */
export function encodeSignalParts(name: string, payload: Payload): MessageParts {
  return encodeNamed(1, signalType(payload), null, name, payload, true) as MessageParts;
}

/** Reply (191/192/193): type, id, [pad at offset 9 for UTF-16], then the payload (or left apart, with `split`). */
function encodeReplyAs(id: RequestIdInput, payload: Payload, split: boolean): Uint8Array | MessageParts {
  assertUtf16Even(payload);
  const start = payload.encoding === 'utf16' ? 10 : 9;
  const out = frame(
    T.REPLY_BINARY + ENCODING_OFFSET[payload.encoding],
    id,
    split ? start : start + payload.data.length,
  );
  if (split) return [out, payload.data];
  out.set(payload.data, start);
  return out;
}

/** Reply (191/192/193): type, id, [pad at offset 9 for UTF-16], payload. Empty payloads are legal. */
export function encodeReply(id: RequestIdInput, payload: Payload): Uint8Array {
  return encodeReplyAs(id, payload, false) as Uint8Array;
}

/** {@link encodeReply} as {@link MessageParts}: the same bytes, the payload not copied. */
export function encodeReplyParts(id: RequestIdInput, payload: Payload): MessageParts {
  return encodeReplyAs(id, payload, true) as MessageParts;
}

/** ReplyError (0): type, id, code length, code, UTF-8 message. */
export function encodeReplyError(id: RequestIdInput, code: string, message: string): Uint8Array {
  assertValidErrorCode(code);
  const text = encodeUtf8(message);
  const out = frame(T.REPLY_ERROR, id, 10 + code.length + text.length);
  out[9] = code.length;
  writeAscii(out, 10, code);
  out.set(text, 10 + code.length);
  return out;
}

/** One of the id-only replies (types 1 to 5). */
export function encodeSpecialReply(id: RequestIdInput, reason: SpecialReplyKind): Uint8Array {
  return encodeIdOnly(T.SPECIAL_REPLY_KINDS.indexOf(reason) + 1, id);
}

function encodeIdOnly(type: number, id: RequestIdInput): Uint8Array {
  return frame(type, id, 1 + ID_LENGTH);
}

/** NotifySessionCreated (21): type, UTF-8 JSON of the session. */
export function encodeSessionCreated(sessionJson: string): Uint8Array {
  const text = encodeUtf8(sessionJson);
  if (text.length === 0) throw new ProtocolError('ERR_PROTOCOL_INVALID_FIELD', 'the session JSON must not be empty');
  const out = frame(T.NOTIFY_SESSION_CREATED, null, 1 + text.length);
  out.set(text, 1);
  return out;
}

/** NotifySessionClosed (22): the type byte alone. */
export function encodeSessionClosed(): Uint8Array {
  return Uint8Array.of(T.NOTIFY_SESSION_CLOSED);
}

function assertUint32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new ProtocolError('ERR_PROTOCOL_INVALID_FIELD', `${what} must be an integer in 0..2^32-1`);
  }
}

function assertByte(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 255) {
    throw new ProtocolError('ERR_PROTOCOL_INVALID_FIELD', `${what} must be an integer in 0..255`);
  }
}

/** AcceptConf (23): type, major, minor, read timeout (uint32 LE), max message size (uint32 LE), sub-protocol. */
export function encodeAcceptConf(conf: Omit<AcceptConfMessage, 'kind'>): Uint8Array {
  assertByte(conf.major, 'major');
  assertByte(conf.minor, 'minor');
  assertUint32(conf.readTimeout, 'readTimeout');
  assertUint32(conf.maxMessageSize, 'maxMessageSize');
  const out = allocate(11 + conf.subProtocol.length);
  out[0] = T.ACCEPT_CONF;
  out[1] = conf.major;
  out[2] = conf.minor;
  writeUint32(out, 3, conf.readTimeout);
  writeUint32(out, 7, conf.maxMessageSize);
  out.set(conf.subProtocol, 11);
  return out;
}

/** RequestCloseSession (31): type, id. */
export function encodeCloseSession(id: RequestIdInput): Uint8Array {
  return encodeIdOnly(T.REQUEST_CLOSE_SESSION, id);
}

/** RequestRestoreSession (32): type, id, key. The key must not be empty. */
export function encodeRestoreSession(id: RequestIdInput, key: Uint8Array): Uint8Array {
  if (key.length === 0) throw new ProtocolError('ERR_PROTOCOL_INVALID_FIELD', 'the session key must not be empty');
  const out = frame(T.REQUEST_RESTORE_SESSION, id, 1 + ID_LENGTH + key.length);
  out.set(key, 9);
  return out;
}

/** Heartbeat (33): the type byte alone. */
export function encodeHeartbeat(): Uint8Array {
  return Uint8Array.of(T.HEARTBEAT);
}

/** ClientConf (34, v2.1): type, minor. */
export function encodeClientConf(minor: number): Uint8Array {
  assertByte(minor, 'minor');
  return Uint8Array.of(T.CLIENT_CONF, minor);
}

/** CancelRequest (35, v2.1): type, id. */
export function encodeCancel(id: RequestIdInput): Uint8Array {
  return encodeIdOnly(T.CANCEL_REQUEST, id);
}

/** Encodes any message. Throws `ProtocolError` for anything illegal to send. */
export function encode(message: Message): Uint8Array {
  switch (message.kind) {
    case 'request':
      return encodeRequest(message.id, message.name, message.payload);
    case 'reply':
      return encodeReply(message.id, message.payload);
    case 'signal':
      return encodeSignal(message.name, message.payload);
    case 'reply-error':
      return encodeReplyError(message.id, message.code, message.message);
    case 'special-reply':
      return encodeSpecialReply(message.id, message.reason);
    case 'session-created':
      return encodeSessionCreated(message.session);
    case 'session-closed':
      return encodeSessionClosed();
    case 'accept-conf':
      return encodeAcceptConf(message);
    case 'close-session':
      return encodeCloseSession(message.id);
    case 'restore-session':
      return encodeRestoreSession(message.id, message.key);
    case 'heartbeat':
      return encodeHeartbeat();
    case 'client-conf':
      return encodeClientConf(message.minor);
    case 'cancel':
      return encodeCancel(message.id);
  }
}
