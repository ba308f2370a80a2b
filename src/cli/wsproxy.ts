/**
 * `duplexwire wsproxy`: the WebSocket proxy from the command line. Logs are JSON lines on stderr;
 * SIGTERM and SIGINT close it gracefully (both sides of every link get 1001).
 */
import { parseArgs } from 'node:util';
import type { UpgradeRequest } from '../../transports/types.ts';
import { jsonLogger } from '../apps/shared/log.ts';
import { durationOption } from '../apps/tunnel/timeout.ts';
import { type UpstreamChoice, WsProxy } from '../apps/wsproxy/proxy.ts';
import { heartbeatOption, hostPort, logLevel, onSignals, parseSize } from './common.ts';

export const WSPROXY_USAGE = `usage:
  duplexwire wsproxy --upstream ws://127.0.0.1:9000/ [--listen 127.0.0.1:8082] [--path /ws]
      [--forward-path] [--connect-timeout 10s] [--max-message-size 1MiB]
      [--max-connections 10000] [--drain-timeout 5s] [--heartbeat 30s] [--log-level info]
      Links each WebSocket client to a connection of its own to the upstream: messages pass
      both ways unchanged, closes are passed on. --forward-path appends the client's path and
      query to the upstream URL (else every client goes to the upstream URL as given); a path
      with . or .. segments, or one that would leave the upstream URL's path, gets 400.
      --heartbeat pings both sides of every link that often and drops a side silent for twice
      as long (0: off).
`;

/**
 * The `upstream` of --forward-path: the client's path and query appended to `base`. The proxy
 * already refuses dot segments before this runs (`hasDotSegment`); this makes sure besides that,
 * whatever `new URL` (and so the ws client) normalizes, the path the upstream gets stays under
 * the base's path, and refuses with 400 otherwise. A base that cannot take a path (not ws(s),
 * with a query or fragment, where the client's path would land) fails at once.
 */
export function forwardPathUpstream(base: string): (request: UpgradeRequest) => UpstreamChoice {
  let baseUrl: URL;
  try {
    baseUrl = new URL(base);
  } catch {
    throw new RangeError(`--upstream must be an absolute ws or wss URL, got ${JSON.stringify(base)}`);
  }
  if (baseUrl.protocol !== 'ws:' && baseUrl.protocol !== 'wss:') {
    throw new RangeError(`--upstream must be a ws or wss URL, got ${baseUrl.protocol}`);
  }
  if (baseUrl.search !== '' || baseUrl.hash !== '' || base.includes('?') || base.includes('#')) {
    throw new RangeError('--forward-path appends the client’s path: --upstream cannot have a query or fragment');
  }
  const head = base.replace(/\/$/, '');
  // '' for a base at the root: every path is under it.
  const prefix = baseUrl.pathname.replace(/\/$/, '');
  return (request) => {
    const url = `${head}${request.url}`;
    const { pathname } = new URL(url);
    if (pathname !== prefix && !pathname.startsWith(`${prefix}/`)) {
      return { accept: false, status: 400, body: 'the path leaves the upstream base path' };
    }
    return url;
  };
}

export async function wsproxy(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      upstream: { type: 'string' },
      listen: { type: 'string', default: '127.0.0.1:8082' },
      path: { type: 'string' },
      'forward-path': { type: 'boolean', default: false },
      'connect-timeout': { type: 'string' },
      'max-message-size': { type: 'string' },
      'max-connections': { type: 'string' },
      'drain-timeout': { type: 'string' },
      heartbeat: { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(WSPROXY_USAGE);
    return;
  }
  if (values.upstream === undefined) throw new RangeError(`--upstream <ws url> is required\n${WSPROXY_USAGE}`);
  const base = values.upstream;
  const forwardPath = values['forward-path'];
  const logger = jsonLogger({ level: logLevel(values['log-level']), fields: { component: 'wsproxy' } });
  const proxy = new WsProxy({
    // The URL is checked at startup (by the constructor, or forwardPathUpstream); with
    // --forward-path each client's path and query follow it (the proxy only lets origin-form
    // targets without dot segments, `/...`, this far).
    upstream: forwardPath ? forwardPathUpstream(base) : base,
    ...(values.path === undefined ? {} : { path: values.path }),
    connectTimeout: durationOption('--connect-timeout', values['connect-timeout'], 10_000),
    ...(values['max-message-size'] === undefined ? {} : { maxMessageSize: parseSize(values['max-message-size']) }),
    ...(values['max-connections'] === undefined ? {} : { maxConnections: Number(values['max-connections']) }),
    drainTimeout: durationOption('--drain-timeout', values['drain-timeout'], 5_000),
    heartbeatInterval: heartbeatOption(values.heartbeat),
    logger,
  });
  await proxy.listen(hostPort(values.listen, '--listen'));
  onSignals(() => proxy.close());
}
