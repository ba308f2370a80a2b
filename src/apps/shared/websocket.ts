/** WebSocket handshake details the applications (bridge, wsproxy) share. */
import type { UpgradeRequest } from '../../../transports/types.ts';

/** The subprotocols a client offered (`Sec-WebSocket-Protocol`), in its order. */
export function offeredProtocols(request: UpgradeRequest): string[] {
  return (request.headers['sec-websocket-protocol'] ?? '')
    .split(',')
    .map((token) => token.trim())
    .filter((token) => token !== '');
}
