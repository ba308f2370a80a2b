/**
 * The HTTP proxy a command-line client dials out through: `--egress-proxy <url>`, `--egress-proxy
 * direct` for none, or else the environment as curl and most tools read it: `HTTPS_PROXY` for a
 * `wss:` address, `HTTP_PROXY` for a `ws:` one, `ALL_PROXY` for both (lower case first), unless
 * `NO_PROXY` lists the host (proxy-from-env's matching: names, `.suffix`, `host:port`, `*`; and
 * bare IPv6 addresses here).
 */
import { isIPv6 } from 'node:net';
import { getProxyForUrl } from 'proxy-from-env';

/** The proxy for connections to `url` (ws: or wss:), or undefined for a direct connection. */
export function egressProxyFor(url: string, flag: string | undefined): string | undefined {
  if (flag === 'direct') return undefined;
  if (flag !== undefined) return flag;
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    return undefined; // the client reports the bad address itself
  }
  // proxy-from-env picks the variable by the target's scheme: WebSockets go by their HTTP one.
  const scheme = target.protocol === 'wss:' || target.protocol === 'https:' ? 'https' : 'http';
  if (noProxyIpv6(target.hostname)) return undefined;
  const proxy = getProxyForUrl(`${scheme}://${target.host}/`);
  if (proxy === '') return undefined;
  // A proxy written without a scheme is an http: one, as curl reads it (proxy-from-env would
  // give it the target's scheme, and speak TLS to a plain proxy for every wss: address).
  const raw = [`${scheme}_proxy`, 'all_proxy'].map(environment).find((value) => value !== '');
  return raw !== undefined && !raw.includes('://') ? `http://${raw}` : proxy;
}

/**
 * True when NO_PROXY names this bracketed IPv6 host bare, as curl reads `::1` in it (the common
 * `localhost,127.0.0.1,::1`): proxy-from-env compares `::1` with `[::1]` and takes its last
 * `:1` for a port, so such an entry never matched.
 */
function noProxyIpv6(hostname: string): boolean {
  if (!hostname.startsWith('[')) return false;
  return environment('no_proxy')
    .split(/[,\s]/)
    .some((entry) => isIPv6(entry) && new URL(`http://[${entry}]/`).hostname === hostname);
}

function environment(name: string): string {
  return process.env[name] || process.env[name.toUpperCase()] || '';
}

/** `url` as it may be logged: without its credentials. */
export function redactedUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.username !== '' || parsed.password !== '') {
      parsed.username = '***';
      parsed.password = '';
    }
    return parsed.href;
  } catch {
    return '(not a URL)';
  }
}
