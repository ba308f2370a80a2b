/** Server kind `duplexwire-uws`: duplexwire over the uWebSockets.js server transport. */
import { uwsTransport } from 'duplexwire/transports/uws';
import { serve } from './control.ts';
import { startDuplexwire } from './duplexwire-server.ts';

await serve(() => startDuplexwire(uwsTransport({ host: '127.0.0.1', port: 0 })));
