/**
 * The one catalogue of duplexwire's errors. Every class has a stable `code` (README, "Errors");
 * a test fails when a code is missing from the README's table.
 */
import { ProtocolError, type ProtocolErrorCode } from '../protocol/errors.ts';

export { ProtocolError, type ProtocolErrorCode };

/** Base class of every error duplexwire raises (ProtocolError aside, which lives in the codec). */
export abstract class DuplexwireError extends Error {
  abstract readonly code: string;
}

/**
 * An application error: thrown by a request handler, it reaches the requester as a ReplyError
 * (type 0) with this `code` and `message`, and is raised there as a `RequestError` again. This is
 * the one error whose `code` is chosen by the application (1..255 printable ASCII characters).
 *
 * @example
 * throw new RequestError('NOT_FOUND', 'no such user');
 */
export class RequestError extends DuplexwireError {
  override readonly name = 'RequestError';
  readonly code: string;
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/** The request got no reply within its timeout. The peer was told to cancel (v2.1). */
export class TimeoutError extends DuplexwireError {
  override readonly name = 'TimeoutError';
  readonly code = 'ERR_TIMEOUT';
}

/** The caller aborted the request through its `AbortSignal`. The peer was told to cancel (v2.1). */
export class CanceledError extends DuplexwireError {
  override readonly name = 'CanceledError';
  readonly code = 'ERR_CANCELED';
}

/** The connection closed (or was never open) before the operation could complete. */
export class DisconnectedError extends DuplexwireError {
  override readonly name = 'DisconnectedError';
  readonly code = 'ERR_DISCONNECTED';
  /** WebSocket close code, when the connection was closed by a close frame or by us. */
  readonly closeCode: number | undefined;
  constructor(message: string, options?: ErrorOptions & { closeCode?: number }) {
    super(message, options);
    this.closeCode = options?.closeCode;
  }
}

/** The peer is shutting down and refused the request (ReplyShutdown, type 1). */
export class ShutdownError extends DuplexwireError {
  override readonly name = 'ShutdownError';
  readonly code = 'ERR_SHUTDOWN';
}

/** The peer failed to handle the request (ReplyInternalError, type 2); details stay on its side. */
export class InternalError extends DuplexwireError {
  override readonly name = 'InternalError';
  readonly code = 'ERR_INTERNAL';
}

/** No session with that key: a restore (type 3), or an update of a session the store no longer has. */
export class SessionNotFoundError extends DuplexwireError {
  override readonly name = 'SessionNotFoundError';
  readonly code = 'ERR_SESSION_NOT_FOUND';
}

/** Session restore: the session already has its maximum number of connections (type 4). */
export class MaxSessionConnectionsError extends DuplexwireError {
  override readonly name = 'MaxSessionConnectionsError';
  readonly code = 'ERR_MAX_SESSION_CONNECTIONS';
}

/** Sessions are disabled on the server (type 5). */
export class SessionsDisabledError extends DuplexwireError {
  override readonly name = 'SessionsDisabledError';
  readonly code = 'ERR_SESSIONS_DISABLED';
}

/**
 * The session store lacks an optional hook the operation needs (`hook` names it), e.g.
 * `onSessionUpdate` for `updateSession`: the operation is refused rather than done in part.
 */
export class SessionStoreUnsupportedError extends DuplexwireError {
  override readonly name = 'SessionStoreUnsupportedError';
  readonly code = 'ERR_SESSION_STORE_UNSUPPORTED';
  /** The missing `SessionManager` method. */
  readonly hook: string | undefined;
  constructor(message: string, options?: ErrorOptions & { hook?: string }) {
    super(message, options);
    this.hook = options?.hook;
  }
}

/** The peer speaks protocol v2.0 and cannot receive what was asked (requests to a client, cancel). */
export class PeerUnsupportedError extends DuplexwireError {
  override readonly name = 'PeerUnsupportedError';
  readonly code = 'ERR_PEER_UNSUPPORTED';
}

/** A connection attempt failed. `status` is set when the server refused the upgrade over HTTP. */
export class ConnectError extends DuplexwireError {
  override readonly name = 'ConnectError';
  readonly code = 'ERR_CONNECT';
  readonly status: number | undefined;
  /**
   * The body of a refused upgrade (its first 512 bytes in the ws transport), e.g. the JSON with
   * which an application says why; undefined when the upgrade was not answered with a status.
   */
  readonly body: string | undefined;
  constructor(message: string, options?: ErrorOptions & { status?: number | undefined; body?: string | undefined }) {
    super(message, options);
    this.status = options?.status;
    this.body = options?.body;
  }
}

/** The server is not one this client can talk to (major version or sub-protocol differ). */
export class IncompatibleServerError extends DuplexwireError {
  override readonly name = 'IncompatibleServerError';
  readonly code = 'ERR_INCOMPATIBLE_SERVER';
}

/** Too many requests waiting for a connection while the client reconnects. */
export class QueueFullError extends DuplexwireError {
  override readonly name = 'QueueFullError';
  readonly code = 'ERR_QUEUE_FULL';
}

/** An argument or option is invalid. */
export class InvalidArgumentError extends DuplexwireError {
  override readonly name = 'InvalidArgumentError';
  readonly code = 'ERR_INVALID_ARGUMENT';
}

/** The operation needs a state the object is not in (listen twice, request on a closed client). */
export class InvalidStateError extends DuplexwireError {
  override readonly name = 'InvalidStateError';
  readonly code = 'ERR_INVALID_STATE';
}

/** A configured limit would be exceeded (e.g. `maxTopicsPerConnection` by `conn.subscribe()`). */
export class LimitExceededError extends DuplexwireError {
  override readonly name = 'LimitExceededError';
  readonly code = 'ERR_LIMIT_EXCEEDED';
}

/**
 * Every error class of the catalogue with a fixed code, for documentation and its test.
 * RequestError is left out: its code is the application's.
 */
export const ERROR_CLASSES: ReadonlyArray<new (message: string) => DuplexwireError> = [
  TimeoutError,
  CanceledError,
  DisconnectedError,
  ShutdownError,
  InternalError,
  SessionNotFoundError,
  MaxSessionConnectionsError,
  SessionsDisabledError,
  SessionStoreUnsupportedError,
  PeerUnsupportedError,
  ConnectError,
  IncompatibleServerError,
  QueueFullError,
  InvalidArgumentError,
  InvalidStateError,
  LimitExceededError,
];
