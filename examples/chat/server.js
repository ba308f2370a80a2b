/**
 * A chat room. One HTTP server serves the page (index.html), the browser bundle of the client,
 * and the WebSocket endpoint /ws. Requests from a page:
 *   join  (its name)     -> the last 50 messages; from then on it gets every `message` signal
 *   say   (a message)    -> an empty reply once everyone has been sent the message
 * Joining creates a session, so a reload of the page comes back under the same name; joining
 * again under another name renames the session (same key, every connection holding it).
 *
 *   node examples/chat/server.js                 # http://127.0.0.1:8080/
 *   HOST=0.0.0.0 PORT=9000 node examples/chat/server.js
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { MemorySessionManager, payloadText, RequestError, Server, utf8 } from 'duplexwire';
import { wsTransport } from 'duplexwire/transports/ws';

const host = process.env.HOST ?? '127.0.0.1';
const port = Number(process.env.PORT ?? 8080); // 0 picks a free port

// A limit on everything a peer controls.
const NAME = /^[\p{L}\p{N} ._-]{1,24}$/u; // 1 to 24 letters, digits, spaces, . _ -
const MAX_TEXT = 500; // characters in a message
const HISTORY = 50; // messages kept, and sent to whoever joins
const MAX_CONNECTIONS = 500;
const ROOM = 'room'; // the topic every member subscribes to; a connection leaves it when it closes

// Two files, by exact path: a Map, so no URL can reach anything else (not even "__proto__").
const bundle = new URL(import.meta.resolve('duplexwire/client/bundle')); // dist/browser/duplexwire-client.js
const files = new Map([
  ['/', { type: 'text/html; charset=utf-8', body: readFileSync(new URL('index.html', import.meta.url)) }],
  ['/duplexwire-client.js', { type: 'text/javascript; charset=utf-8', body: readFileSync(bundle) }],
]);

const http = createServer((req, res) => {
  const file = req.method === 'GET' ? files.get(req.url.split('?')[0]) : undefined;
  if (file === undefined) res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  else res.writeHead(200, { 'content-type': file.type, 'x-content-type-options': 'nosniff' }).end(file.body);
});

// At most 10,000 names remembered (the least recently used go first), each for a day after its last use.
const sessions = new MemorySessionManager({ maxSessions: 10_000, maxAge: 86_400_000 });
const members = new Set(); // every connection that joined; its name is its session's
const joining = new Set(); // connections whose join is storing their session
const history = []; // the last HISTORY messages, oldest first

const server = new Server({
  transport: wsTransport({ server: http, path: '/ws' }),
  sessionManager: sessions,
  maxMessageSize: 16 * 1024, // far above a 500-character message; larger frames close the connection (1009)
  maxConnections: MAX_CONNECTIONS, // one more is refused with 503
  onRequest: async (conn, msg) => {
    switch (msg.name) {
      case 'join': {
        const name = payloadText(msg.payload).trim();
        if (!NAME.test(name)) {
          throw new RequestError('BAD_NAME', 'a name is 1 to 24 letters, digits, spaces, dots, _ or -');
        }
        if (conn.session?.info?.name !== name) {
          // One join at a time per connection: two at once would both try to create a session.
          if (joining.has(conn)) throw new RequestError('BUSY', 'a join is already under way');
          joining.add(conn);
          try {
            if (conn.session === null) await conn.createSession({ name });
            else await conn.updateSession({ name }); // a rename: same session, its other connections too
          } finally {
            joining.delete(conn);
          }
        }
        if (!conn.isOpen) return; // it left while its session was being stored
        // In the same tick as the history is taken: every later message reaches this connection.
        members.add(conn);
        conn.subscribe(ROOM);
        return utf8(JSON.stringify(history));
      }
      case 'say': {
        // From the session, so a rename made on another of its connections counts here too.
        const from = members.has(conn) ? conn.session?.info?.name : undefined;
        if (from === undefined) throw new RequestError('NOT_JOINED', 'join before you say something');
        const text = payloadText(msg.payload).trim();
        if (text.length === 0 || text.length > MAX_TEXT) {
          throw new RequestError('BAD_MESSAGE', `a message is 1 to ${MAX_TEXT} characters, not ${text.length}`);
        }
        const message = { from, text, at: new Date().toISOString() };
        history.push(message);
        if (history.length > HISTORY) history.shift();
        // To everyone who joined (the sender too: that is its echo), encoded once.
        server.publish(ROOM, 'message', utf8(JSON.stringify(message)));
        return; // an empty reply: the acknowledgement
      }
      default:
        throw new RequestError('UNKNOWN_REQUEST', `no request named ${JSON.stringify(msg.name)}`);
    }
  },
  onClientDisconnected: (conn) => {
    members.delete(conn); // it left the topic already; the session stays: a reload restores it
  },
});

await server.listen(); // attaches to `http`; listening is ours to do
await new Promise((resolve) => http.listen(port, host, resolve));
console.log(`listening on http://${host}:${http.address().port}/`);

for (const name of ['SIGINT', 'SIGTERM']) {
  process.once(name, async () => {
    await server.shutdown({ timeout: 5_000 }); // closes the WebSockets, not the HTTP server
    http.close();
    http.closeAllConnections();
    process.exit(0);
  });
}
