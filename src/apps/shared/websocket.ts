/** WebSocket handshake details the applications (bridge, wsproxy) share. */

/** A subprotocol name: an RFC 7230 §3.2.6 token (RFC 6455 §4.1, §11.3.4), as ws checks it. */
const TOKEN = /^[!#$%&'*+\-.0-9A-Z^_`|a-z~]+$/;

/**
 * The subprotocols a client offered (`Sec-WebSocket-Protocol`), in its order ([] for no header),
 * or undefined for a malformed offer: an element that is not a token, an empty one, or a
 * duplicate. The same rules as ws's server (`lib/subprotocol.js`), which answers such a request
 * 400 only after the application decided on it (the bridge asked its backend, the proxy dialed
 * its upstream), and ws's client, which throws on them: the applications refuse it first.
 */
export function parseProtocolOffer(header: string | undefined): string[] | undefined {
  if (header === undefined) return [];
  // A Set: the header may hold thousands of elements.
  const offered = new Set<string>();
  for (const element of header.split(',')) {
    const token = element.replace(/^[ \t]+|[ \t]+$/g, '');
    if (!TOKEN.test(token) || offered.has(token)) return undefined;
    offered.add(token);
  }
  return [...offered];
}
