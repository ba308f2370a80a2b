/**
 * `duplexwire bridge`: the WebSocket-to-HTTP bridge from the command line. Logs are JSON lines on
 * stderr; SIGTERM and SIGINT close it gracefully (clients get 1001, close events go out).
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { WsHttpBridge } from '../apps/bridge/bridge.ts';
import { jsonLogger } from '../apps/shared/log.ts';
import { durationOption } from '../apps/tunnel/timeout.ts';
import { heartbeatOption, hostPort, logLevel, onSignals, parseSize } from './common.ts';

export const BRIDGE_USAGE = `usage:
  duplexwire bridge --backend http://127.0.0.1:3000/ws-events --secret-file secret
      [--listen 127.0.0.1:8081] [--path /] [--callback-url http://127.0.0.1:8081/]
      [--backend-timeout 10s] [--max-message-size 1MiB] [--max-connections 10000]
      [--require-signed-callbacks] [--drain-timeout 10s] [--heartbeat 30s] [--log-level info]
      Holds WebSocket connections for an HTTP backend: connect, every message and close are
      signed POSTs to --backend; the backend answers a connection through its callback URL
      (POST a message, DELETE to close). The secret (>= 32 bytes) comes from --secret-file or
      the DUPLEXWIRE_BRIDGE_SECRET environment variable. --callback-url is how the backend
      reaches this bridge (default: the --listen address). --heartbeat pings every client that
      often and drops one silent for twice as long (0: off).
`;

export async function bridge(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      backend: { type: 'string' },
      'secret-file': { type: 'string' },
      listen: { type: 'string', default: '127.0.0.1:8081' },
      path: { type: 'string', default: '/' },
      'callback-url': { type: 'string' },
      'backend-timeout': { type: 'string' },
      'max-message-size': { type: 'string' },
      'max-connections': { type: 'string' },
      'require-signed-callbacks': { type: 'boolean', default: false },
      'drain-timeout': { type: 'string' },
      heartbeat: { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(BRIDGE_USAGE);
    return;
  }
  if (values.backend === undefined) throw new RangeError(`--backend <url> is required\n${BRIDGE_USAGE}`);
  const secret =
    values['secret-file'] === undefined
      ? process.env.DUPLEXWIRE_BRIDGE_SECRET
      : (await readFile(values['secret-file'], 'utf8')).trim();
  if (secret === undefined || secret === '') {
    throw new RangeError('the bridge needs a secret: --secret-file <file> or DUPLEXWIRE_BRIDGE_SECRET');
  }
  const listen = hostPort(values.listen, '--listen');
  const logger = jsonLogger({ level: logLevel(values['log-level']), fields: { component: 'bridge' } });
  const hostForUrl = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  const bridgeServer = new WsHttpBridge({
    backend: values.backend,
    secret,
    ...(values['callback-url'] === undefined ? {} : { callbackUrl: values['callback-url'] }),
    path: values.path,
    backendTimeout: durationOption('--backend-timeout', values['backend-timeout'], 10_000),
    ...(values['max-message-size'] === undefined ? {} : { maxMessageSize: parseSize(values['max-message-size']) }),
    ...(values['max-connections'] === undefined ? {} : { maxConnections: Number(values['max-connections']) }),
    requireSignedCallbacks: values['require-signed-callbacks'],
    drainTimeout: durationOption('--drain-timeout', values['drain-timeout'], 10_000),
    heartbeatInterval: heartbeatOption(values.heartbeat),
    logger,
  });
  const address = await bridgeServer.listen(listen);
  console.log(`bridge listening on ws://${hostForUrl}:${address.port}${values.path}`);
  onSignals(() => bridgeServer.close());
}
