import type { ClientTransport } from '../../transports/types.ts';

/**
 * The transport a Client uses when none is given: in Node, the `ws` adapter, loaded on first use
 * so that code passing its own transport never loads `ws`. (The browser build gets a sibling of
 * this file that returns the standard-WebSocket adapter.)
 */
export async function loadDefaultTransport(): Promise<ClientTransport> {
  const { wsClientTransport } = await import('../../transports/ws.ts');
  return wsClientTransport();
}
