/** Server kind `socketio-msgpack`: Socket.IO with socket.io-msgpack-parser. */
import parser from 'socket.io-msgpack-parser';
import { serve } from './control.ts';
import { startSocketIo } from './socketio-server.ts';

await serve(() => startSocketIo(parser));
