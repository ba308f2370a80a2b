/**
 * Lingering close of a user's connection (nginx's `lingering_close`): a response that goes out
 * before the request body arrived closes the connection, and the proxy reads and drops what the
 * user still sends for a bounded time after its own FIN, then closes.
 *
 * Why both halves. Kept alive, the connection would have Node read and drop the rest of the body
 * for as long as the user sends it (a chunked body: for ever; the proxy's server has no
 * `requestTimeout`, long uploads must pass). Closed at once, it loses the answer: bytes arriving
 * at a closed socket make the kernel send a reset, and a user still sending (many clients send
 * the whole body before they read) gets EPIPE or ECONNRESET instead of the 413 or the early 200
 * waiting in its socket. Lingering gives it the time to finish sending, or to see the answer and
 * stop, before the close.
 *
 * How. Node's HTTP server ends a connection whose response said `Connection: close` in
 * `resOnFinish` (lib/_http_server.js, Node 20): `socket.destroySoon()`, which is `end()`, then
 * `destroy()` once the write side finished, whatever is still arriving. Nothing else there can be
 * hooked: the response's own 'finish' listeners run after it. So the proxy replaces
 * `destroySoon` on that one socket, once the response is known to be its last, with the lingering
 * close below; the server calls nothing else on it for a last response.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/** @default 5 s: how long the proxy reads and drops what a user still sends after an answer that closes the connection (nginx's `lingering_timeout`) */
export const DEFAULT_LINGER_TIMEOUT = 5_000;
/**
 * A body not yet arrived when the answer goes out, but announced by a Content-Length up to this,
 * is read and dropped on a connection kept alive (a bounded cost, and no new connection for the
 * user's next request).
 */
export const MAX_DISCARDED_BODY = 64 * 1024;

/** Connections whose last response went out or is going out: nothing more is served on them. */
const closing = new WeakSet<Duplex>();

/**
 * True when `req`'s body has arrived, or what is left of it is small and announced: the answer
 * may keep the connection alive. Otherwise it must close it (see the module comment).
 */
export function bodyArrived(req: IncomingMessage): boolean {
  if (req.complete) return true;
  const { headers } = req;
  if (headers['transfer-encoding'] !== undefined) return false;
  const length = Number(headers['content-length'] ?? 0);
  return length <= MAX_DISCARDED_BODY;
}

/**
 * True when `socket` carries a response that closes it: a request the user pipelined behind it is
 * not served (RFC 9112 §9.6: "The server MUST NOT process any further requests received on that
 * connection").
 */
export function isClosing(socket: Duplex): boolean {
  return closing.has(socket);
}

/**
 * `res` is the last response of its connection (it says `Connection: close`): once it is written,
 * the connection lingers up to `timeout` ms instead of closing at once.
 */
export function lingerAfter(res: ServerResponse, timeout: number): void {
  const { req } = res;
  const socket = req.socket as Duplex & { destroySoon?: () => void };
  if (closing.has(socket)) return;
  closing.add(socket);
  // Not a net.Socket (a test double, an HTTP/2 stream): the server ends it its own way.
  if (typeof socket.destroySoon !== 'function') return;
  socket.destroySoon = () => linger(socket, req, timeout);
}

/**
 * Ends the write side (FIN after the response), reads and drops what still comes, and destroys
 * the socket once the request body has arrived, or after `timeout` ms. A user that closes its own
 * side first ends it earlier (Node's server then closes the socket itself).
 */
function linger(socket: Duplex, req: IncomingMessage, timeout: number): void {
  // The exchange may have paused the body (waiting for credit, or a relay held): unread bytes
  // would stay in the kernel and be what resets the connection.
  req.resume();
  if (socket.writable) socket.end();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const close = (): void => {
    clearTimeout(timer);
    socket.destroy();
  };
  const linger = (): void => {
    // The whole body is here: nothing more to wait for (what a user pipelines behind it after a
    // `Connection: close` answer is its own to retry).
    if (req.complete) {
      close();
      return;
    }
    req.once('end', close);
    timer = setTimeout(close, timeout);
  };
  socket.once('close', () => {
    clearTimeout(timer);
    req.off('end', close);
  });
  // The linger starts once the answer left: a user that reads it slowly is not cut off.
  if (socket.writableFinished) linger();
  else socket.once('finish', linger);
}

/**
 * Ends a raw socket the same way: an upgrade request answered without a switch, which Node's
 * server no longer manages once it emitted 'upgrade'. FIN after `data`, what still comes read and
 * dropped, then destroyed: at the user's FIN (Node closes a socket whose two halves ended), or
 * `timeout` ms after the answer left. Only ended, such a socket lived as long as its user kept
 * its own half open: a user that never closes held it for good.
 */
export function lingerRaw(socket: Duplex, timeout: number, data?: Uint8Array | string): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  socket.once('close', () => clearTimeout(timer));
  // Read on: the user's FIN is seen, and unread bytes would make the close a reset.
  socket.resume();
  const lingering = (): void => {
    if (socket.destroyed) return;
    timer = setTimeout(() => socket.destroy(), timeout);
    // Never what keeps a process alive: the socket itself does, while it is open.
    timer.unref();
  };
  if (data === undefined) socket.end(lingering);
  else socket.end(data, lingering);
}
