import { CLOSE_MESSAGE_TOO_BIG, CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED_DATA } from './codes.ts';

/** Stable codes of protocol violations, and the WebSocket close code each one maps to. */
export const PROTOCOL_ERROR_CLOSE_CODES = {
  /** A 0-byte WebSocket message. */
  ERR_PROTOCOL_EMPTY_MESSAGE: CLOSE_PROTOCOL_ERROR,
  /** Byte 0 is not a known message type (including reserved 36-62). */
  ERR_PROTOCOL_UNKNOWN_TYPE: CLOSE_PROTOCOL_ERROR,
  /** Shorter than the type's minimum, or not of the type's exact length. */
  ERR_PROTOCOL_BAD_LENGTH: CLOSE_PROTOCOL_ERROR,
  /** A name length that points past the end of the message. */
  ERR_PROTOCOL_NAME_OVERFLOW: CLOSE_PROTOCOL_ERROR,
  /** A UTF-16 message of odd length or without its padding byte. */
  ERR_PROTOCOL_BAD_UTF16: CLOSE_PROTOCOL_ERROR,
  /** A signal or request with neither name nor payload. */
  ERR_PROTOCOL_EMPTY_MESSAGE_BODY: CLOSE_PROTOCOL_ERROR,
  /** A ReplyError whose code length is 0 or points past the end. */
  ERR_PROTOCOL_BAD_ERROR_CODE: CLOSE_PROTOCOL_ERROR,
  /** A message that is well formed but not allowed at this point (ClientConf twice, ...). */
  ERR_PROTOCOL_UNEXPECTED_MESSAGE: CLOSE_PROTOCOL_ERROR,
  /** A text WebSocket message: the protocol is binary only. */
  ERR_PROTOCOL_TEXT_MESSAGE: CLOSE_UNSUPPORTED_DATA,
  /** A message over the receiver's size limit. */
  ERR_PROTOCOL_MESSAGE_TOO_BIG: CLOSE_MESSAGE_TOO_BIG,
  /** Sender side: a name over 255 bytes or outside printable ASCII. */
  ERR_PROTOCOL_INVALID_NAME: CLOSE_PROTOCOL_ERROR,
  /** Sender side: an error code that is empty, over 255 bytes or outside printable ASCII. */
  ERR_PROTOCOL_INVALID_ERROR_CODE: CLOSE_PROTOCOL_ERROR,
  /** Sender side: a UTF-16 payload of odd byte length. */
  ERR_PROTOCOL_INVALID_UTF16: CLOSE_PROTOCOL_ERROR,
  /** Sender side: a signal or request with neither name nor payload. */
  ERR_PROTOCOL_NO_NAME_NO_PAYLOAD: CLOSE_PROTOCOL_ERROR,
  /** Sender side: a field out of range (id length, uint32 values, minor version). */
  ERR_PROTOCOL_INVALID_FIELD: CLOSE_PROTOCOL_ERROR,
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
    // The table's rule (checked against it in test/protocol/codec.test.ts), written as a
    // comparison so that a bundle that never reads the table leaves it out.
    this.closeCode =
      code === 'ERR_PROTOCOL_TEXT_MESSAGE'
        ? CLOSE_UNSUPPORTED_DATA
        : code === 'ERR_PROTOCOL_MESSAGE_TOO_BIG'
          ? CLOSE_MESSAGE_TOO_BIG
          : CLOSE_PROTOCOL_ERROR;
  }
}
