/**
 * What `duplexwire/client` exports in every runtime. The two entry points (`index.ts` for Node,
 * `index.browser.ts` for browsers) re-export this and differ only in the defaults they register.
 */
export { DEFAULT_RECONNECT, type ReconnectOptions } from './backoff.ts';
export { Client, type ClientEvents, type ClientOptions, type ClientState, type ServerInfo } from './client.ts';
export { localStorageKeyStore, memoryKeyStore, type SessionKeyStore, type StorageLike } from './session-key-store.ts';
export { type Session, sessionFromJson } from '../session/session.ts';
// The catalogue but what only a server throws (a session store's) and ERROR_CLASSES (the list
// for the documentation's test): the browser bundle would otherwise carry them.
export {
  CanceledError,
  ConnectError,
  DisconnectedError,
  DuplexwireError,
  IncompatibleServerError,
  InternalError,
  InvalidArgumentError,
  InvalidStateError,
  LimitExceededError,
  MaxSessionConnectionsError,
  PeerUnsupportedError,
  ProtocolError,
  type ProtocolErrorCode,
  QueueFullError,
  RequestError,
  SessionNotFoundError,
  SessionsDisabledError,
  ShutdownError,
  TimeoutError,
} from '../errors.ts';
export { consoleLogger, type Logger, silentLogger } from '../logger.ts';
export type { IncomingMessage, ReplyValue, RequestContext, RequestOptions } from '../peer/peer.ts';
export { type AbortSignalLike, Cancellation } from '../peer/cancellation.ts';
export {
  binary,
  EMPTY_PAYLOAD,
  type Encoding,
  type Payload,
  payloadText,
  utf8,
  utf16,
} from '../../protocol/payload.ts';
