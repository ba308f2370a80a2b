/**
 * Message types and shapes of the WebWire v2 binary protocol, with duplexwire's v2.1 additions.
 * See PROTOCOL.md beside this file for the layouts.
 */

import * as C from './codes.ts';

export {
  ID_LENGTH,
  MAX_ERROR_CODE_LENGTH,
  MAX_NAME_LENGTH,
  PROTOCOL_MAJOR,
  PROTOCOL_MINOR,
} from './codes.ts';

/** Byte 0 of every message. */
export const MessageType = {
  ReplyError: C.REPLY_ERROR,
  ReplyShutdown: C.REPLY_SHUTDOWN,
  ReplyInternalError: C.REPLY_INTERNAL_ERROR,
  ReplySessionNotFound: C.REPLY_SESSION_NOT_FOUND,
  ReplyMaxSessionConnections: C.REPLY_MAX_SESSION_CONNECTIONS,
  ReplySessionsDisabled: C.REPLY_SESSIONS_DISABLED,
  NotifySessionCreated: C.NOTIFY_SESSION_CREATED,
  NotifySessionClosed: C.NOTIFY_SESSION_CLOSED,
  AcceptConf: C.ACCEPT_CONF,
  RequestCloseSession: C.REQUEST_CLOSE_SESSION,
  RequestRestoreSession: C.REQUEST_RESTORE_SESSION,
  Heartbeat: C.HEARTBEAT,
  /** v2.1 */
  ClientConf: C.CLIENT_CONF,
  /** v2.1 */
  CancelRequest: C.CANCEL_REQUEST,
  SignalBinary: C.SIGNAL_BINARY,
  SignalUtf8: C.SIGNAL_UTF8,
  SignalUtf16: C.SIGNAL_UTF16,
  RequestBinary: C.REQUEST_BINARY,
  RequestUtf8: C.REQUEST_UTF8,
  RequestUtf16: C.REQUEST_UTF16,
  ReplyBinary: C.REPLY_BINARY,
  ReplyUtf8: C.REPLY_UTF8,
  ReplyUtf16: C.REPLY_UTF16,
} as const;
export type MessageTypeCode = (typeof MessageType)[keyof typeof MessageType];

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
  Normal: C.CLOSE_NORMAL,
  GoingAway: C.CLOSE_GOING_AWAY,
  ProtocolError: C.CLOSE_PROTOCOL_ERROR,
  UnsupportedData: C.CLOSE_UNSUPPORTED_DATA,
  Abnormal: C.CLOSE_ABNORMAL,
  PolicyViolation: C.CLOSE_POLICY_VIOLATION,
  MessageTooBig: C.CLOSE_MESSAGE_TOO_BIG,
  InternalError: C.CLOSE_INTERNAL_ERROR,
  TryAgainLater: C.CLOSE_TRY_AGAIN_LATER,
} as const;
