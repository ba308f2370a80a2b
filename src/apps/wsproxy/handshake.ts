/**
 * What the proxy checks in a client's request target before it dials anything (an `upstream`
 * function may append it to a base URL). A request failing it is the client's error (400), never
 * an upstream failure. (The subprotocol offer is checked by `parseProtocolOffer`, shared/websocket.ts.)
 */

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
