/**
 * duplexwire: duplex request-reply and signals over WebSocket, byte-compatible with WebWire v2.
 *
 * Transports live behind their own subpaths (`duplexwire/transports/ws`, ...), the codec behind
 * `duplexwire/protocol`.
 */
import './client/node-default.ts';
export { Client, type ClientEvents, type ClientOptions, type ClientState, type ServerInfo } from './client/client.ts';
export {
  DEFAULT_CLIENT_MAX_MESSAGE_SIZE,
  DEFAULT_CONNECT_TIMEOUT,
  DEFAULT_MAX_QUEUED_REQUESTS,
  DEFAULT_REQUEST_TIMEOUT,
} from './client/client.ts';
export { DEFAULT_RECONNECT, type ReconnectOptions } from './client/backoff.ts';
export { localStorageKeyStore, memoryKeyStore, type SessionKeyStore } from './client/session-key-store.ts';
export { fileKeyStore } from './session/file-key-store.ts';
export * from './session/index.ts';
export * from './errors.ts';
export { consoleLogger, type Logger, silentLogger } from './logger.ts';
export type { IncomingMessage, ReplyValue, RequestContext, RequestOptions } from './peer/peer.ts';
export { type AbortSignalLike, Cancellation } from './peer/cancellation.ts';
export { type CloseOptions, Connection } from './server/connection.ts';
export {
  DEFAULT_CONCURRENCY,
  DEFAULT_MAX_BUFFERED_BYTES,
  DEFAULT_MAX_INFLIGHT_REQUESTS,
  DEFAULT_MAX_MESSAGE_SIZE,
  DEFAULT_MAX_PENDING_UPGRADES,
  DEFAULT_MAX_TOPICS_PER_CONNECTION,
  DEFAULT_READ_TIMEOUT,
  DEFAULT_SESSION_DIR,
  DEFAULT_SHUTDOWN_TIMEOUT,
  DEFAULT_UPGRADE_TIMEOUT,
  type DisconnectInfo,
  type ServerOptions,
  type UpgradeVerdict,
} from './server/options.ts';
export { type PublishOptions, Server, type ShutdownOptions } from './server/server.ts';
export { MAX_TOPIC_LENGTH } from './server/topics.ts';
export {
  DEFAULT_TOPIC_CHANNEL_PREFIX,
  type RedisPublisher,
  type RedisSubscriber,
  type RedisTopicBusOptions,
  redisTopicBus,
  SESSIONS_CHANNEL,
  type TopicBus,
} from './cluster/bus.ts';
export {
  binary,
  EMPTY_PAYLOAD,
  type Encoding,
  type Payload,
  payloadText,
  utf8,
  utf16,
} from '../protocol/payload.ts';
export type { UpgradeRequest } from '../transports/types.ts';
