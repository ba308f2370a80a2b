/** Defaults both ends of the tunnel share. */

/** Header with which agents name their client id on the upgrade request. */
export const AGENT_ID_HEADER = 'x-duplexwire-agent-id';
/** Bytes per body chunk message. @default 64 KiB */
export const DEFAULT_CHUNK_SIZE = 64 * 1024;
/** Unacked body bytes per stream and direction. @default 2 MiB (a 1 MiB response goes out without waiting for an ack) */
export const DEFAULT_STREAM_WINDOW = 2 * 1024 * 1024;
/**
 * Unacked body bytes per agent connection and direction. @default 4 MiB: below duplexwire's
 * 8 MiB send-buffer limit, past which a connection is closed as a slow consumer.
 */
export const DEFAULT_CONNECTION_WINDOW = 4 * 1024 * 1024;
/** How long a drain lets requests in flight finish. @default 30 s */
export const DEFAULT_DRAIN_TIMEOUT = 30_000;
