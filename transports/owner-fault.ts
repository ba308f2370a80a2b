import type { SocketHandlers, TransportSocket } from './types.ts';

/**
 * The handlers of a socket its owner closed as soon as it opened, or failed to take: nothing it
 * says goes anywhere.
 */
export const IGNORED_SOCKET: SocketHandlers = {
  onMessage: () => {},
  onDrain: () => {},
  onPing: () => {},
  onClose: () => {},
};

/**
 * What every server transport does when its owner's `connection()` throws (the owner's bug; see
 * `ServerTransportHandlers.connection`), the same whichever path called it: the socket, just
 * accepted, is closed with 1011 (internal error, RFC 6455 §7.4.1) and the error is thrown again
 * from a microtask of its own, where Node reports it as an uncaught exception. Thrown where it
 * happened, it would be an uncaught exception after a synchronous decision (from the HTTP
 * server's `'upgrade'` event), an unhandled rejection after an asynchronous one (from a promise
 * reaction), and on uWebSockets.js would unwind through its native code. Returns the handlers to
 * install in place of the owner's.
 */
export function ownerFailed(socket: TransportSocket, error: unknown): SocketHandlers {
  socket.close(1011, '');
  queueMicrotask(() => {
    throw error;
  });
  return IGNORED_SOCKET;
}
