/**
 * Opening-handshake rules shared by the server adapters (ws, uWS), so that both answer the same
 * upgrade the same way. Internal: not part of any subpath export.
 */

/** A 16-byte nonce in base64 (RFC 6455 §4.1), the check `ws` makes. */
const WEBSOCKET_KEY = /^[+/0-9A-Za-z]{22}==$/;

/** RFC 7230 §3.2.6 `tchar`: what a subprotocol name may be made of (RFC 6455 §4.1). */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Why an upgrade request was refused: the HTTP status and the headers that go with it. */
export interface HandshakeFault {
  readonly status: number;
  readonly headers?: Readonly<Record<string, string>>;
}

const BAD_REQUEST: HandshakeFault = { status: 400 };
/** RFC 6455 §4.4: a server refusing the version names those it speaks. */
const BAD_VERSION: HandshakeFault = { status: 400, headers: { 'Sec-WebSocket-Version': '13, 8' } };

/**
 * True when the request asks to switch protocols, as Node's parser (llhttp) decides it: an
 * `Upgrade` header and the `upgrade` token in `Connection`. Node hands anything else to its
 * `'request'` listeners as plain HTTP, so uWS (which looks at the key alone) must ask the same
 * question to answer the same: a request without it gets 426 on both, never a 101.
 */
export function isUpgradeRequest(headers: Readonly<Record<string, string | undefined>>): boolean {
  if (headers.upgrade === undefined) return false;
  const connection = headers.connection;
  if (connection === undefined) return false;
  return connection.split(',').some((token) => token.trim().toLowerCase() === 'upgrade');
}

/**
 * The subprotocols a `Sec-WebSocket-Protocol` value offers, or undefined when it is malformed:
 * tokens separated by commas, with optional spaces or tabs around them, none empty or repeated
 * (what `ws` accepts, `lib/subprotocol.js`). An empty value is malformed too.
 */
export function parseProtocols(value: string): string[] | undefined {
  const offered = value.split(',').map((token) => token.replace(/^[ \t]+|[ \t]+$/g, ''));
  if (!offered.every((token) => TOKEN.test(token))) return undefined;
  return new Set(offered).size === offered.length ? offered : undefined;
}

/**
 * What is wrong with a WebSocket upgrade request (RFC 6455 §4.2.1), checked before the owner is
 * asked, by both adapters, so that a hook is never run for a request that cannot be accepted
 * (and no adapter answers 101 to one): a method other than GET, HTTP/1.0, a target that is not a
 * path (absolute-form, `*`), no `Host` (item 2; uWS drops such a request), a missing or malformed key, a version other than 13 (or 8, which `ws`
 * also speaks), a malformed subprotocol list. Undefined when none is.
 */
export function handshakeFault(
  method: string,
  httpVersion: string,
  target: string,
  headers: Readonly<Record<string, string | undefined>>,
): HandshakeFault | undefined {
  const [major = 0, minor = 0] = httpVersion.split('.').map(Number);
  if (method !== 'GET' || !(major > 1 || (major === 1 && minor >= 1)) || !target.startsWith('/')) return BAD_REQUEST;
  if (headers.host === undefined) return BAD_REQUEST;
  if (!WEBSOCKET_KEY.test(headers['sec-websocket-key'] ?? '')) return BAD_REQUEST;
  const version = headers['sec-websocket-version'];
  if (version !== '13' && version !== '8') return BAD_VERSION;
  const protocols = headers['sec-websocket-protocol'];
  if (protocols !== undefined && parseProtocols(protocols) === undefined) return BAD_REQUEST;
  return undefined;
}

/**
 * The subprotocol an accepted upgrade answers with: the owner's choice when the client offered it
 * ('' for none), by default the first offered (or none). Undefined for a choice the client did
 * not offer: the handshake would fail at the client, so the upgrade is refused instead.
 */
export function chooseProtocol(choice: string | undefined, offeredHeader: string | undefined): string | undefined {
  const offered = offeredHeader === undefined ? [] : (parseProtocols(offeredHeader) ?? []);
  if (choice === undefined) return offered[0] ?? '';
  if (choice === '') return '';
  return offered.includes(choice) ? choice : undefined;
}
