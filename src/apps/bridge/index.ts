/**
 * duplexwire/bridge: WebSocket clients for an HTTP-only backend. The bridge holds the WebSockets;
 * each connection's `connect`, messages and `close` reach the backend as signed POSTs, and the
 * backend sends messages or closes a connection through its callback URL.
 */
export {
  BackendError,
  type BridgeEvent,
  CALLBACK_HEADER,
  CONNECTION_HEADER,
  EVENT_HEADER,
} from './backend.ts';
export {
  type BridgeOpsPaths,
  CALLBACK_PREFIX,
  DEFAULT_BACKEND_TIMEOUT,
  DEFAULT_BRIDGE_DRAIN_TIMEOUT,
  DEFAULT_BRIDGE_MAX_BUFFERED_BYTES,
  DEFAULT_BRIDGE_MAX_CONNECTIONS,
  DEFAULT_BRIDGE_MAX_MESSAGE_SIZE,
  DEFAULT_MAX_BACKEND_REQUESTS,
  DEFAULT_MAX_QUEUED_BYTES,
  DEFAULT_MAX_QUEUED_MESSAGES,
  WsHttpBridge,
  type WsHttpBridgeOptions,
} from './bridge.ts';
export {
  DEFAULT_SIGNATURE_TOLERANCE,
  MIN_SECRET_BYTES,
  parseSignature,
  type RequestHeaders,
  SIGNATURE_HEADER,
  type SignatureParts,
  type SignedDomain,
  type SignedFields,
  sign,
  signCallback,
  type VerifyOptions,
  verifyEvent,
  verifySignature,
} from './signature.ts';
export { MAX_REMEMBERED_SIGNATURES, SeenSignatures } from '../shared/seen-signatures.ts';
export { jsonLogger, type JsonLoggerOptions, type LogLevel } from '../shared/log.ts';
