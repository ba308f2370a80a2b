/**
 * duplexwire/wsproxy: a WebSocket reverse proxy. Each client connection is linked to a connection
 * of its own to an upstream WebSocket server; messages pass both ways unchanged, with
 * backpressure, and each side's close reaches the other.
 */
export {
  DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
  DEFAULT_WSPROXY_DRAIN_TIMEOUT,
  DEFAULT_WSPROXY_HEARTBEAT_INTERVAL,
  DEFAULT_WSPROXY_MAX_BUFFERED_BYTES,
  DEFAULT_WSPROXY_MAX_CONNECTIONS,
  DEFAULT_WSPROXY_MAX_MESSAGE_SIZE,
  DEFAULT_WSPROXY_UPGRADE_TIMEOUT,
  type UpstreamChoice,
  WsProxy,
  WsProxyCloseCode,
  type WsProxyOptions,
} from './proxy.ts';
export type { UpgradeRequest } from '../../../transports/types.ts';
export { jsonLogger, type JsonLoggerOptions, type LogLevel } from '../shared/log.ts';
