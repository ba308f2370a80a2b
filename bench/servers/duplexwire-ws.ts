/** Server kind `duplexwire-ws`: duplexwire over the `ws` server transport. */
import { wsTransport } from 'duplexwire/transports/ws';
import { serve } from './control.ts';
import { startDuplexwire } from './duplexwire-server.ts';

await serve(() => startDuplexwire(wsTransport({ host: '127.0.0.1', port: 0 })));
