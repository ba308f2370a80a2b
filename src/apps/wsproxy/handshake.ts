/**
 * What the proxy checks in a client's upgrade request before it dials anything: the request
 * target (which an `upstream` function may append to a base URL) and the subprotocol offer (which
 * is offered to the upstream again). A request failing either is the client's error (400), never
 * an upstream failure.
 */

/** A subprotocol name: an RFC 7230 §3.2.6 token (RFC 6455 §4.1, §11.3.4), as ws checks it. */
const TOKEN = /^[!#$%&'*+\-.0-9A-Z^_`|a-z~]+$/;

/** Percent-encoded `.`, `/` and `\`, either case: what can hide a dot segment or a separator. */
const HIDING = /%(?:2e|2f|5c)/gi;

/**
 * True when `path` (a request target's path, without the query) has a `.` or `..` segment, as
 * written or hidden:
 * - percent-encoded (`%2e%2e`, `.%2E`): the WHATWG URL parser, so `new URL(base + req.url)`,
 *   removes those as it removes `..` (`ws://up/base/%2e%2e/x` is `ws://up/x`);
 * - behind `\` (`..\x`): the same parser reads `\` as `/` in ws(s) URLs;
 * - behind `%2f` or `%5c` (`%2e%2e%2fx`): left alone by `new URL`, but servers that decode the
 *   path before resolving it (an old mistake, e.g. CVE-2007-0450) would climb anyway;
 * - with path parameters (`..;x`): Tomcat and Spring read that segment as `..`.
 * A dot segment in a WebSocket endpoint's path has no use but climbing out of a base path, so the
 * proxy refuses them all rather than resolve them.
 */
export function hasDotSegment(path: string): boolean {
  const decoded = path.replace(HIDING, (encoded) => String.fromCharCode(Number.parseInt(encoded.slice(1), 16)));
  for (const segment of decoded.split(/[/\\]/)) {
    const name = segment.split(';', 1)[0];
    if (name === '.' || name === '..') return true;
  }
  return false;
}

/**
 * The subprotocols a client offered (`Sec-WebSocket-Protocol`), in its order ([] for no header),
 * or undefined for a malformed offer: an element that is not a token, an empty one, or a
 * duplicate. The same rules as ws's server (`lib/subprotocol.js`), which would answer such a
 * request 400 only after the proxy dialed the upstream, and ws's client, which throws on them.
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
