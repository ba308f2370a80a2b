/**
 * duplexwire/tunnel: an HTTP tunnel over duplexwire. Agents next to private HTTP services dial
 * out to a public proxy over WebSocket and authenticate; the proxy routes each user request by
 * client id to a connected agent, which performs it against its target and streams the response
 * back. Built only on duplexwire's public API (server-to-client requests, cancel, backpressure).
 */
export { TunnelAgent, type NodeHandler, type TunnelAgentOptions } from './agent.ts';
export type { FetchHandler } from './agent-fetch.ts';
export {
  DEFAULT_HEALTH_FAILURES,
  DEFAULT_HEALTH_INTERVAL,
  DEFAULT_HEALTH_TIMEOUT,
  type HealthCheckOptions,
} from './health.ts';
export type { AgentEntry } from './balancer.ts';
export {
  CLUSTER_CLOCK_SKEW,
  DEFAULT_CLUSTER_PREFIX,
  DEFAULT_CLUSTER_TTL,
  DEFAULT_PEER_CONNECT_TIMEOUT,
  MAX_REMEMBERED_SIGNATURES,
  MIN_CLUSTER_SECRET_LENGTH,
  type RedisCommandClient,
  type TunnelClusterOptions,
} from './cluster.ts';
export {
  AGENT_ID_HEADER,
  DEFAULT_CHUNK_SIZE,
  DEFAULT_CONNECTION_WINDOW,
  DEFAULT_DRAIN_TIMEOUT,
  DEFAULT_STREAM_WINDOW,
} from './constants.ts';
export { addForwarded, filterHeaders, redactHeaders, redactUrl } from './headers.ts';
export { errorBody, TUNNEL_ERROR_STATUS, TunnelErrorCode } from './http-errors.ts';
export { DEFAULT_LINGER_TIMEOUT } from './linger.ts';
export { jsonLogger, type JsonLoggerOptions, type LogLevel } from '../shared/log.ts';
export { type AgentRefusal, TunnelMetrics } from './metrics.ts';
export {
  DEFAULT_AGENT_TIMEOUT,
  DEFAULT_AGENTS_PATH,
  DEFAULT_MAX_INFLIGHT_PER_AGENT,
  DEFAULT_MAX_REQUEST_BODY,
  DEFAULT_MAX_REQUEST_TIMEOUT,
  DEFAULT_PUBLIC_OPS,
  DEFAULT_REQUEST_TIMEOUT,
  DEFAULT_TIMEOUT_HEADER,
  INLINE_BODY_LIMIT,
  type OpsPaths,
  type PublicOps,
  TunnelProxy,
  type TunnelProxyOptions,
} from './proxy.ts';
export {
  BACKSTREAM_CLIENT_ID_HEADER,
  DEFAULT_CLIENT_ID_HEADER,
  DEFAULT_PATH_PREFIX,
  type RoutingStrategy,
} from './routing.ts';
export { chooseTimeout, parseDuration } from './timeout.ts';
export {
  chooseTunnelVersion,
  TUNNEL_PROTOCOL_VERSION,
  TUNNEL_PROTOCOL_VERSIONS,
  TunnelVersionError,
  tunnelProtocol,
  tunnelVersionOf,
} from './wire.ts';
export {
  type AgentAuthenticator,
  bearerToken,
  generateToken,
  isValidClientId,
  loadTokenFile,
  MIN_TOKEN_LENGTH,
  type TokenEntries,
  tokenAuthenticator,
  tokenDigest,
} from './tokens.ts';
