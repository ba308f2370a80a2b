/**
 * `duplexwire wsproxy`: the WebSocket proxy from the command line. Logs are JSON lines on stderr;
 * SIGTERM and SIGINT close it gracefully (both sides of every link get 1001).
 */
import { parseArgs } from 'node:util';
import { jsonLogger } from '../apps/shared/log.ts';
import { durationOption } from '../apps/tunnel/timeout.ts';
import { WsProxy } from '../apps/wsproxy/proxy.ts';
import { hostPort, logLevel, onSignals, parseSize } from './common.ts';

export const WSPROXY_USAGE = `usage:
  duplexwire wsproxy --upstream ws://127.0.0.1:9000/ [--listen 127.0.0.1:8082] [--path /ws]
      [--forward-path] [--connect-timeout 10s] [--max-message-size 1MiB]
      [--max-connections 10000] [--drain-timeout 5s] [--log-level info]
      Links each WebSocket client to a connection of its own to the upstream: messages pass
      both ways unchanged, closes are passed on. --forward-path appends the client's path and
      query to the upstream URL (else every client goes to the upstream URL as given).
`;

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
    // The URL is checked by the constructor; with --forward-path each client's path and query follow
    // it (the proxy only lets origin-form targets, `/...`, this far).
    upstream: forwardPath ? (request) => `${base.replace(/\/$/, '')}${request.url}` : base,
    ...(values.path === undefined ? {} : { path: values.path }),
    connectTimeout: durationOption('--connect-timeout', values['connect-timeout'], 10_000),
    ...(values['max-message-size'] === undefined ? {} : { maxMessageSize: parseSize(values['max-message-size']) }),
    ...(values['max-connections'] === undefined ? {} : { maxConnections: Number(values['max-connections']) }),
    drainTimeout: durationOption('--drain-timeout', values['drain-timeout'], 5_000),
    logger,
  });
  if (forwardPath) new URL(base); // a malformed base fails at startup, not at the first client
  await proxy.listen(hostPort(values.listen, '--listen'));
  onSignals(() => proxy.close());
}
