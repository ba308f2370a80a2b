import { CloseCode } from './types.ts';

/** Stable codes of protocol violations, and the WebSocket close code each one maps to. */
export const PROTOCOL_ERROR_CLOSE_CODES = {
  /** A 0-byte WebSocket message. */
  ERR_PROTOCOL_EMPTY_MESSAGE: CloseCode.ProtocolError,
  /** Byte 0 is not a known message type (including reserved 36-62). */
  ERR_PROTOCOL_UNKNOWN_TYPE: CloseCode.ProtocolError,
  /** Shorter than the type's minimum, or not of the type's exact length. */
  ERR_PROTOCOL_BAD_LENGTH: CloseCode.ProtocolError,
  /** A name length that points past the end of the message. */
  ERR_PROTOCOL_NAME_OVERFLOW: CloseCode.ProtocolError,
  /** A UTF-16 message of odd length or without its padding byte. */
  ERR_PROTOCOL_BAD_UTF16: CloseCode.ProtocolError,
  /** A signal or request with neither name nor payload. */
  ERR_PROTOCOL_EMPTY_MESSAGE_BODY: CloseCode.ProtocolError,
  /** A ReplyError whose code length is 0 or points past the end. */
  ERR_PROTOCOL_BAD_ERROR_CODE: CloseCode.ProtocolError,
  /** A message that is well formed but not allowed at this point (ClientConf twice, ...). */
  ERR_PROTOCOL_UNEXPECTED_MESSAGE: CloseCode.ProtocolError,
  /** A text WebSocket message: the protocol is binary only. */
  ERR_PROTOCOL_TEXT_MESSAGE: CloseCode.UnsupportedData,
  /** A message over the receiver's size limit. */
  ERR_PROTOCOL_MESSAGE_TOO_BIG: CloseCode.MessageTooBig,
  /** Sender side: a name over 255 bytes or outside printable ASCII. */
  ERR_PROTOCOL_INVALID_NAME: CloseCode.ProtocolError,
  /** Sender side: an error code that is empty, over 255 bytes or outside printable ASCII. */
  ERR_PROTOCOL_INVALID_ERROR_CODE: CloseCode.ProtocolError,
  /** Sender side: a UTF-16 payload of odd byte length. */
  ERR_PROTOCOL_INVALID_UTF16: CloseCode.ProtocolError,
  /** Sender side: a signal or request with neither name nor payload. */
  ERR_PROTOCOL_NO_NAME_NO_PAYLOAD: CloseCode.ProtocolError,
  /** Sender side: a field out of range (id length, uint32 values, minor version). */
  ERR_PROTOCOL_INVALID_FIELD: CloseCode.ProtocolError,
} as const;

export type ProtocolErrorCode = keyof typeof PROTOCOL_ERROR_CLOSE_CODES;

/**
 * A message that is malformed (when decoding) or illegal to send (when encoding). `closeCode` is
 * the WebSocket close code a receiver closes the connection with.
 */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly code: ProtocolErrorCode;
  readonly closeCode: number;

  constructor(code: ProtocolErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.closeCode = PROTOCOL_ERROR_CLOSE_CODES[code];
  }
}
