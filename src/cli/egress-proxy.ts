/**
 * The HTTP proxy a command-line client dials out through: `--egress-proxy <url>`, `--egress-proxy
 * direct` for none, or else the environment as curl and most tools read it: `HTTPS_PROXY` for a
 * `wss:` address, `HTTP_PROXY` for a `ws:` one, `ALL_PROXY` for both (lower case first), unless
 * `NO_PROXY` lists the host (proxy-from-env's matching: names, `.suffix`, `host:port`, `*`; and
 * here address ranges, subdomains of a name, bare IPv6 addresses).
 */
import { BlockList, isIPv4, isIPv6 } from 'node:net';
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
  if (noProxyLists(target.hostname)) return undefined;
  const proxy = getProxyForUrl(`${scheme}://${target.host}/`);
  if (proxy === '') return undefined;
  // A proxy written without a scheme is an http: one, as curl reads it (proxy-from-env would
  // give it the target's scheme, and speak TLS to a plain proxy for every wss: address).
  const raw = [`${scheme}_proxy`, 'all_proxy'].map(environment).find((value) => value !== '');
  return raw !== undefined && !raw.includes('://') ? `http://${raw}` : proxy;
}

/**
 * True when NO_PROXY lists the host in a way proxy-from-env does not read but curl (7.86 and
 * later) and Go do: an address range (`10.0.0.0/8`, `fd00::/8`: what Kubernetes and OpenShift
 * clusters put there), a domain without a leading dot, which covers its subdomains too
 * (`svc.cluster.local`; proxy-from-env matches the name itself only), and a bare IPv6 address
 * (`::1`, as in the common `localhost,127.0.0.1,::1`: proxy-from-env compares `::1` with `[::1]`
 * and takes its last `:1` for a port, so such an entry never matched). `hostname` is the URL's,
 * lower case, an IPv6 address in brackets.
 */
function noProxyLists(hostname: string): boolean {
  const address = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  return environment('no_proxy')
    .split(/[,\s]/)
    .some((entry) => {
      if (entry.includes('/')) return inRange(entry, address);
      if (isIPv6(entry)) return address !== hostname && new URL(`http://[${entry}]/`).hostname === hostname;
      const name = entry.toLowerCase();
      return /^[a-z0-9-]+(?:\.[a-z0-9-]+)+$/.test(name) && !isIPv4(name) && hostname.endsWith(`.${name}`);
    });
}

/** True when `address` (an IP address, else false) is in `range` (`10.0.0.0/8`; else false). */
function inRange(range: string, address: string): boolean {
  const [network = '', bits = '', ...more] = range.split('/');
  const family = isIPv4(network) ? 'ipv4' : isIPv6(network) ? 'ipv6' : undefined;
  const prefix = Number(bits);
  if (family === undefined || more.length > 0 || !/^\d{1,3}$/.test(bits) || prefix > (family === 'ipv4' ? 32 : 128))
    return false;
  const kind = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : undefined;
  if (kind !== family) return false;
  const list = new BlockList();
  list.addSubnet(network, prefix, family);
  return list.check(address, kind);
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
