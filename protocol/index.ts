/**
 * The WebWire v2 binary protocol with duplexwire's v2.1 additions: pure encode and decode over
 * Uint8Array, no I/O. See PROTOCOL.md beside this file.
 */
export { decode, idToNumber } from './decode.ts';
export {
  assertValidErrorCode,
  assertValidName,
  encode,
  encodeAcceptConf,
  encodeCancel,
  encodeClientConf,
  encodeCloseSession,
  encodeHeartbeat,
  encodeReply,
  encodeReplyError,
  encodeReplyParts,
  encodeRequest,
  encodeRequestParts,
  encodeRestoreSession,
  encodeSessionClosed,
  encodeSessionCreated,
  encodeSignal,
  encodeSignalParts,
  encodeSpecialReply,
  joinParts,
  type MessageParts,
  type RequestIdInput,
} from './encode.ts';
export { PROTOCOL_ERROR_CLOSE_CODES, ProtocolError, type ProtocolErrorCode } from './errors.ts';
export {
  binary,
  decodeUtf8,
  decodeUtf16le,
  EMPTY_PAYLOAD,
  encodeUtf8,
  encodeUtf16le,
  isPayload,
  payloadText,
  toPayload,
  utf8,
  utf16,
} from './payload.ts';
export * from './types.ts';
