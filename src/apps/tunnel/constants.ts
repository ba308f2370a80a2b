/** Defaults both ends of the tunnel share. */

/** Header with which agents name their client id on the upgrade request. */
export const AGENT_ID_HEADER = 'x-duplexwire-agent-id';
/**
 * Header with which agents announce, on the upgrade request, how many requests they perform at
 * once (`maxInflight`): the proxy sends an agent no more than the lower of that and its own
 * `maxInflightPerAgent`. Outside the versioned format (wire.ts): an older proxy ignores it, and a
 * proxy takes an agent without it (an older one) as taking its own limit.
 */
export const AGENT_MAX_INFLIGHT_HEADER = 'x-duplexwire-agent-max-inflight';
/**
 * Requests an agent performs against its target at once; one more is refused unperformed
 * (AGENT_BUSY). @default 1024: the proxy's default `maxInflightPerAgent`, so that the two ends
 * agree when neither is configured and upgrading an agent refuses nothing a proxy sent before.
 * The owner of a small service sets it lower; a proxy configured higher (or a broken one) can no
 * longer push the agent past it.
 */
export const DEFAULT_AGENT_MAX_INFLIGHT = 1024;
/** The highest requests-in-flight limit of either end (the proxy's `maxInflightPerAgent`, the agent's `maxInflight`). */
export const MAX_INFLIGHT_LIMIT = 16_384;
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
