/**
 * The client of each stack, imported only when used: a load process runs one stack, and loading
 * the others' libraries would only slow its start.
 */
import type { Stack } from '../../stacks.ts';
import type { ConnectClient } from './types.ts';

export const CLIENTS: Readonly<Record<Stack, () => Promise<ConnectClient>>> = {
  'ws-echo': async () => (await import('./raw-ws.ts')).connectRawWs,
  'uws-echo': async () => (await import('./raw-ws.ts')).connectRawWs,
  'duplexwire-ws': async () => (await import('./duplexwire.ts')).connectDuplexwire,
  'duplexwire-uws': async () => (await import('./duplexwire.ts')).connectDuplexwire,
  socketio: async () => (await import('./socketio.ts')).socketIoClient(),
  'socketio-msgpack': async () => {
    const [{ socketIoClient }, parser] = await Promise.all([
      import('./socketio.ts'),
      import('socket.io-msgpack-parser'),
    ]);
    return socketIoClient(parser.default);
  },
};

export type { BenchClient } from './types.ts';
