/**
 * Message types and shapes of the WebWire v2 binary protocol, with duplexwire's v2.1 additions.
 * See PROTOCOL.md beside this file for the layouts.
 */

/** Byte 0 of every message. */
export const MessageType = {
  ReplyError: 0,
  ReplyShutdown: 1,
  ReplyInternalError: 2,
  ReplySessionNotFound: 3,
  ReplyMaxSessionConnections: 4,
  ReplySessionsDisabled: 5,
  NotifySessionCreated: 21,
  NotifySessionClosed: 22,
  AcceptConf: 23,
  RequestCloseSession: 31,
  RequestRestoreSession: 32,
  Heartbeat: 33,
  /** v2.1 */
  ClientConf: 34,
  /** v2.1 */
  CancelRequest: 35,
  SignalBinary: 63,
  SignalUtf8: 64,
  SignalUtf16: 65,
  RequestBinary: 127,
  RequestUtf8: 128,
  RequestUtf16: 129,
  ReplyBinary: 191,
  ReplyUtf8: 192,
  ReplyUtf16: 193,
} as const;
export type MessageTypeCode = (typeof MessageType)[keyof typeof MessageType];

/** Protocol major version spoken (and required of peers). */
export const PROTOCOL_MAJOR = 2;
/** Highest minor version this implementation speaks: 1 = duplexwire v2.1 extensions. */
export const PROTOCOL_MINOR = 1;

/** Length of a request id on the wire: 8 opaque bytes, copied back unchanged in the reply. */
export const ID_LENGTH = 8;
/** Longest name (namespace) a message can carry: its length is one byte. */
export const MAX_NAME_LENGTH = 255;
/** Longest error code a ReplyError can carry: its length is one byte. */
export const MAX_ERROR_CODE_LENGTH = 255;

/** How a payload's bytes are to be read. */
export type Encoding = 'binary' | 'utf8' | 'utf16';

/**
 * A payload with its encoding, as on the wire. `data` holds the raw bytes: for `utf16` they are
 * UTF-16LE code units.
 */
export interface Payload {
  readonly encoding: Encoding;
  readonly data: Uint8Array;
}

/** 8 opaque bytes. */
export type RequestId = Uint8Array;

/** Replies that carry nothing but the request id (types 1 to 5). */
export type SpecialReplyKind =
  | 'shutdown'
  | 'internal-error'
  | 'session-not-found'
  | 'max-session-connections'
  | 'sessions-disabled';

export interface RequestMessage {
  readonly kind: 'request';
  readonly id: RequestId;
  readonly name: string;
  readonly payload: Payload;
}
export interface ReplyMessage {
  readonly kind: 'reply';
  readonly id: RequestId;
  readonly payload: Payload;
}
export interface SignalMessage {
  readonly kind: 'signal';
  readonly name: string;
  readonly payload: Payload;
}
export interface ReplyErrorMessage {
  readonly kind: 'reply-error';
  readonly id: RequestId;
  readonly code: string;
  readonly message: string;
}
export interface SpecialReplyMessage {
  readonly kind: 'special-reply';
  readonly id: RequestId;
  readonly reason: SpecialReplyKind;
}
export interface SessionCreatedMessage {
  readonly kind: 'session-created';
  /** The session as UTF-8 JSON text. */
  readonly session: string;
}
export interface SessionClosedMessage {
  readonly kind: 'session-closed';
}
export interface AcceptConfMessage {
  readonly kind: 'accept-conf';
  readonly major: number;
  readonly minor: number;
  /** Server read timeout in milliseconds (uint32). */
  readonly readTimeout: number;
  /** Largest message the server accepts, in bytes (uint32). */
  readonly maxMessageSize: number;
  /** Raw sub-protocol bytes; empty for none. */
  readonly subProtocol: Uint8Array;
}
export interface CloseSessionMessage {
  readonly kind: 'close-session';
  readonly id: RequestId;
}
export interface RestoreSessionMessage {
  readonly kind: 'restore-session';
  readonly id: RequestId;
  /** The session key bytes as sent (not validated here). */
  readonly key: Uint8Array;
}
export interface HeartbeatMessage {
  readonly kind: 'heartbeat';
}
export interface ClientConfMessage {
  readonly kind: 'client-conf';
  readonly minor: number;
}
export interface CancelMessage {
  readonly kind: 'cancel';
  readonly id: RequestId;
}

/** Every message of the protocol, decoded. */
export type Message =
  | RequestMessage
  | ReplyMessage
  | SignalMessage
  | ReplyErrorMessage
  | SpecialReplyMessage
  | SessionCreatedMessage
  | SessionClosedMessage
  | AcceptConfMessage
  | CloseSessionMessage
  | RestoreSessionMessage
  | HeartbeatMessage
  | ClientConfMessage
  | CancelMessage;

/** WebSocket close codes duplexwire uses (RFC 6455 section 7.4.1). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  UnsupportedData: 1003,
  Abnormal: 1006,
  PolicyViolation: 1008,
  MessageTooBig: 1009,
  InternalError: 1011,
  TryAgainLater: 1013,
} as const;
