/**
 * Sessions: the model and its JSON form, the storage contract, and the stores.
 *
 * `session.ts` alone is browser-safe (the client parses sessions with it); the stores are
 * Node-only (`node:fs`, `node:crypto`).
 */
export {
  DEFAULT_MAX_OPEN_FILES,
  DEFAULT_SWEEP_INTERVAL,
  FileSessionManager,
  type FileSessionManagerOptions,
  MIN_DEFAULT_SWEEP_INTERVAL,
  STALE_TEMP_FILE_AGE,
  type SweepResult,
} from './file-store.ts';
export {
  DEFAULT_MAX_MEMORY_SESSIONS,
  MemorySessionManager,
  type MemorySessionManagerOptions,
} from './memory-store.ts';
export {
  DEFAULT_PRESENCE_TTL,
  DEFAULT_REDIS_PREFIX,
  type RedisCommandClient,
  RedisSessionManager,
  type RedisSessionManagerOptions,
} from './redis-store.ts';
export {
  checkSessionInfo,
  DEFAULT_SESSION_KEY_BYTES,
  defaultKeyGenerator,
  formatSessionTime,
  isStorableSessionKey,
  parseSessionTime,
  type Session,
  type SessionAttachResult,
  type SessionJson,
  type SessionKeyGenerator,
  type SessionManager,
  sessionFromJson,
  sessionFromJsonValue,
  sessionToJson,
  sessionToJsonValue,
} from './session.ts';
