/** Server kind `socketio`: Socket.IO with its default parser. */
import { serve } from './control.ts';
import { startSocketIo } from './socketio-server.ts';

await serve(() => startSocketIo());
