/**
 * The answers the proxy gives itself, each a short JSON body with a stable code:
 * `{"code":"NO_AGENT","message":"..."}`. Codes are part of the public contract (README).
 */

export const TunnelErrorCode = {
  MissingClientId: 'MISSING_CLIENT_ID',
  InvalidClientId: 'INVALID_CLIENT_ID',
  InvalidTimeout: 'INVALID_TIMEOUT',
  BadRequest: 'BAD_REQUEST',
  UpgradeNotSupported: 'UPGRADE_NOT_SUPPORTED',
  BodyTooLarge: 'BODY_TOO_LARGE',
  NoAgent: 'NO_AGENT',
  AgentsBusy: 'AGENTS_BUSY',
  ShuttingDown: 'SHUTTING_DOWN',
  /**
   * The drain timed out before the response head: the request may have been performed (unlike
   * SHUTTING_DOWN, which nothing reached), so no proxy retries it.
   */
  DrainTimeout: 'DRAIN_TIMEOUT',
  AgentTimeout: 'AGENT_TIMEOUT',
  AgentLost: 'AGENT_LOST',
  TargetUnreachable: 'TARGET_UNREACHABLE',
  BadAgentResponse: 'BAD_AGENT_RESPONSE',
  AgentHandlerFailed: 'AGENT_HANDLER_FAILED',
  UpgradeUnsupportedByAgent: 'UPGRADE_UNSUPPORTED_BY_AGENT',
  /** To agents, at the upgrade: no valid id, or a token that is not this id's. */
  BadAgentCredentials: 'BAD_AGENT_CREDENTIALS',
  /** To agents, at the upgrade: none of the tunnel versions they offer is one the proxy speaks. */
  TunnelVersionUnsupported: 'TUNNEL_VERSION_UNSUPPORTED',
  PeerUnreachable: 'PEER_UNREACHABLE',
  ClusterUnavailable: 'CLUSTER_UNAVAILABLE',
} as const;
export type TunnelErrorCode = (typeof TunnelErrorCode)[keyof typeof TunnelErrorCode];

/** HTTP status of each code. */
export const TUNNEL_ERROR_STATUS: Readonly<Record<TunnelErrorCode, number>> = {
  MISSING_CLIENT_ID: 400,
  INVALID_CLIENT_ID: 400,
  INVALID_TIMEOUT: 400,
  BAD_REQUEST: 400,
  UPGRADE_NOT_SUPPORTED: 400,
  BODY_TOO_LARGE: 413,
  NO_AGENT: 503,
  AGENTS_BUSY: 503,
  SHUTTING_DOWN: 503,
  DRAIN_TIMEOUT: 503,
  AGENT_TIMEOUT: 504,
  AGENT_LOST: 502,
  TARGET_UNREACHABLE: 502,
  BAD_AGENT_RESPONSE: 502,
  AGENT_HANDLER_FAILED: 500,
  UPGRADE_UNSUPPORTED_BY_AGENT: 501,
  BAD_AGENT_CREDENTIALS: 401,
  // RFC 9110 §15.5.22: the request may succeed once the client speaks another protocol; RFC 6455
  // §4.2.2 suggests it for a WebSocket version the server lacks, the same case one level up.
  TUNNEL_VERSION_UNSUPPORTED: 426,
  PEER_UNREACHABLE: 502,
  CLUSTER_UNAVAILABLE: 503,
};

const MESSAGES: Readonly<Record<TunnelErrorCode, string>> = {
  MISSING_CLIENT_ID: 'the request names no client id',
  INVALID_CLIENT_ID: 'the client id is not valid',
  INVALID_TIMEOUT: 'the request timeout must be a positive duration such as 12s or 1500ms',
  BAD_REQUEST: 'the request cannot be forwarded',
  UPGRADE_NOT_SUPPORTED: 'only WebSocket upgrades are forwarded',
  BODY_TOO_LARGE: 'the request body is over the limit',
  NO_AGENT: 'no agent is connected for this client id',
  AGENTS_BUSY: 'every agent for this client id is at its limit of requests in flight',
  SHUTTING_DOWN: 'the proxy is shutting down',
  DRAIN_TIMEOUT: 'the proxy shut down before the response came; the request may have been performed',
  AGENT_TIMEOUT: 'the agent did not answer in time',
  AGENT_LOST: 'the agent was lost during the request',
  TARGET_UNREACHABLE: 'the agent could not reach its target',
  BAD_AGENT_RESPONSE: 'the agent sent an invalid response',
  AGENT_HANDLER_FAILED: "the agent's handler failed",
  UPGRADE_UNSUPPORTED_BY_AGENT: "the agent's target cannot upgrade connections",
  BAD_AGENT_CREDENTIALS: 'bad agent credentials',
  TUNNEL_VERSION_UNSUPPORTED: 'the agent offers no version of the tunnel protocol that this proxy speaks',
  PEER_UNREACHABLE: 'the proxy holding an agent for this client id could not be reached, or was lost',
  CLUSTER_UNAVAILABLE: 'the cluster registry (Redis) could not be reached',
};

/** The JSON body of an answer; `extra` fields (e.g. the versions the proxy speaks) follow the message. */
export function errorBody(code: TunnelErrorCode, extra?: Readonly<Record<string, unknown>>): string {
  return JSON.stringify({ code, message: MESSAGES[code], ...extra });
}
