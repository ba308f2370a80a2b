/**
 * What the applications check in a request target's path before they append it to a base URL:
 * the WebSocket proxy before it dials anything (an `upstream` function may append it), the tunnel
 * agent before it adds it to its target URL's path. A request failing it is the client's error
 * (400), never an upstream's or a target's failure.
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
 * A dot segment in a path appended to a base has no use but climbing out of that base, so they
 * are all refused rather than resolved.
 */
export function hasDotSegment(path: string): boolean {
  const decoded = path.replace(HIDING, (encoded) => String.fromCharCode(Number.parseInt(encoded.slice(1), 16)));
  for (const segment of decoded.split(/[/\\]/)) {
    const name = segment.split(';', 1)[0];
    if (name === '.' || name === '..') return true;
  }
  return false;
}
