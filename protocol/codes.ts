import type { SpecialReplyKind } from './types.ts';

/**
 * The protocol's numbers as plain top-level constants: versions and lengths (exported by
 * types.ts), message type bytes and WebSocket close codes (internal, for the codec and the core:
 * the public names are `MessageType` and `CloseCode` in types.ts, built from these).
 *
 * Why a module of its own, importing nothing: esbuild inlines a `const` number imported from a
 * module that starts with such constants and imports nothing, but not a property of an object.
 * Written as `MessageType.Heartbeat`, each use costs the object and a property access in the
 * browser bundle; written as `HEARTBEAT`, it is the number `33` there.
 */

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

// Byte 0 of every message (PROTOCOL.md, section 3).
export const REPLY_ERROR = 0;
export const REPLY_SHUTDOWN = 1;
export const REPLY_INTERNAL_ERROR = 2;
export const REPLY_SESSION_NOT_FOUND = 3;
export const REPLY_MAX_SESSION_CONNECTIONS = 4;
export const REPLY_SESSIONS_DISABLED = 5;
export const NOTIFY_SESSION_CREATED = 21;
export const NOTIFY_SESSION_CLOSED = 22;
export const ACCEPT_CONF = 23;
export const REQUEST_CLOSE_SESSION = 31;
export const REQUEST_RESTORE_SESSION = 32;
export const HEARTBEAT = 33;
/** v2.1 */
export const CLIENT_CONF = 34;
/** v2.1 */
export const CANCEL_REQUEST = 35;
export const SIGNAL_BINARY = 63;
export const SIGNAL_UTF8 = 64;
export const SIGNAL_UTF16 = 65;
export const REQUEST_BINARY = 127;
export const REQUEST_UTF8 = 128;
export const REQUEST_UTF16 = 129;
export const REPLY_BINARY = 191;
export const REPLY_UTF8 = 192;
export const REPLY_UTF16 = 193;

// WebSocket close codes duplexwire uses (RFC 6455 section 7.4.1).
export const CLOSE_NORMAL = 1000;
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_PROTOCOL_ERROR = 1002;
export const CLOSE_UNSUPPORTED_DATA = 1003;
export const CLOSE_ABNORMAL = 1006;
export const CLOSE_POLICY_VIOLATION = 1008;
export const CLOSE_MESSAGE_TOO_BIG = 1009;
export const CLOSE_INTERNAL_ERROR = 1011;
export const CLOSE_TRY_AGAIN_LATER = 1013;

/** The id-only replies in type order: types 1 to 5 (type - 1 is the index). */
export const SPECIAL_REPLY_KINDS: readonly SpecialReplyKind[] = [
  'shutdown',
  'internal-error',
  'session-not-found',
  'max-session-connections',
  'sessions-disabled',
];
