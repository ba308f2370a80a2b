/**
 * Node: the Client's default transport is the `ws` adapter, imported on first use. Imported for
 * its effect by the Node entry points (`duplexwire`, `duplexwire/client` under Node).
 */
import { setDefaultClientTransport } from './default-transport.ts';

setDefaultClientTransport(async () => {
  const { wsClientTransport } = await import('../../transports/ws.ts');
  return wsClientTransport();
});
