#!/usr/bin/env node
/**
 * The `duplexwire` command.
 *
 *   duplexwire demo [--host 127.0.0.1] [--port 8080]   a small echo + signals server
 *   duplexwire request <url> <name> [text]              one request, prints the reply
 *   duplexwire tunnel proxy|agent|token ...             the HTTP tunnel (src/cli/tunnel.ts)
 *   duplexwire bridge ...                               the WebSocket-to-HTTP bridge (src/cli/bridge.ts)
 *   duplexwire wsproxy ...                              the WebSocket proxy (src/cli/wsproxy.ts)
 *   duplexwire --version                                the package's version
 */
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { Client } from '../client/client.ts';
import { DuplexwireError, InvalidArgumentError } from '../errors.ts';
import { Server } from '../server/server.ts';
import { keepHeapHeadroom } from './heap-headroom.ts';
import { egressProxyFor } from './egress-proxy.ts';

const USAGE = `usage:
  duplexwire demo [--host 127.0.0.1] [--port 8080]
      Runs a demo server: request "echo" returns its payload, request "time" the server time;
      a signal "broadcast" is sent on to every client, any other signal is echoed back.
  duplexwire request <url> <name> [text] [--timeout ms] [--egress-proxy url|direct]
      Sends one UTF-8 request and prints the reply, e.g.
      duplexwire request ws://127.0.0.1:8080/ echo hello
      Through an HTTP proxy given by --egress-proxy, or else by HTTPS_PROXY (wss:), HTTP_PROXY
      (ws:) or ALL_PROXY unless NO_PROXY lists the host; --egress-proxy direct ignores them.
  duplexwire tunnel proxy|agent|token ...
      The HTTP tunnel (duplexwire tunnel --help for its options).
  duplexwire bridge --backend <url> --secret-file <file> ...
      The WebSocket-to-HTTP bridge (duplexwire bridge --help for its options).
  duplexwire wsproxy --upstream <ws url> ...
      The WebSocket proxy (duplexwire wsproxy --help for its options).
  duplexwire --version
      Prints the version of the duplexwire package.
`;

/**
 * The version in the package's own package.json, found by the package's name (a self-reference
 * through its `exports`): the same from src/ under tsx, from dist/, and installed, where a path
 * relative to this file would differ.
 */
function packageVersion(): string {
  return (createRequire(import.meta.url)('duplexwire/package.json') as { version: string }).version;
}

async function demo(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8080' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) {
    process.stdout.write(USAGE);
    return;
  }
  const port = Number(values.port);
  const server = new Server({
    transport: wsTransport({ host: values.host, port }),
    onRequest: (_conn, msg) => {
      switch (msg.name) {
        case 'echo':
          return msg.payload;
        case 'time':
          return utf8(new Date().toISOString());
        default:
          return utf8(`unknown request ${JSON.stringify(msg.name)}; try "echo" or "time"`);
      }
    },
    onSignal: (conn, msg) => {
      if (msg.name === 'broadcast') {
        server.broadcast('broadcast', msg.payload);
      } else {
        conn.signal(msg.name || 'echo', msg.payload);
      }
    },
    onClientConnected: (conn) => console.log(`connected    ${conn.id} from ${conn.remoteAddress}`),
    onClientDisconnected: (conn, info) => console.log(`disconnected ${conn.id} (${info.code})`),
  });
  await server.listen();
  const address = server.address();
  const url = `ws://${address?.host ?? values.host}:${address?.port ?? port}/`;
  console.log(`duplexwire demo server on ${url}
Talk to it:
  npx duplexwire request ${url} echo hello
  npx duplexwire request ${url} time
or from code:
  const client = new Client('${url}');
  console.log(payloadText(await client.request('echo', utf8('hi'))));
Ctrl-C stops it gracefully.`);
  const stop = (): void => {
    console.log('shutting down...');
    server.shutdown({ timeout: 5_000 }).then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(error);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

async function request(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      timeout: { type: 'string', default: '10000' },
      'egress-proxy': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) {
    process.stdout.write(USAGE);
    return;
  }
  const [url, name, text = ''] = positionals;
  if (url === undefined || name === undefined) {
    process.stderr.write(USAGE);
    process.exitCode = 2;
    return;
  }
  // Through an HTTP proxy when given one, or when the environment names one (HTTPS_PROXY, ...).
  const proxy = egressProxyFor(url, values['egress-proxy']);
  const client = new Client(url, {
    transport: wsClientTransport(proxy === undefined ? {} : { proxy }),
    reconnect: false,
    requestTimeout: Number(values.timeout),
  });
  try {
    const reply = await client.request(name, utf8(text));
    console.log(payloadText(reply));
  } finally {
    await client.close();
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  // The long-running servers get room between full garbage collections (heap-headroom.ts).
  if (command === 'demo' || command === 'tunnel' || command === 'bridge' || command === 'wsproxy') keepHeapHeadroom();
  switch (command) {
    case 'demo':
      return demo(rest);
    case 'request':
      return request(rest);
    case 'tunnel':
      // Loaded on demand: the tunnel's dependencies (prom-client, msgpack) are not the demo's.
      return (await import('./tunnel.ts')).tunnel(rest);
    case 'bridge':
      return (await import('./bridge.ts')).bridge(rest);
    case 'wsproxy':
      return (await import('./wsproxy.ts')).wsproxy(rest);
    case '--version':
    case '-v':
    case 'version':
      process.stdout.write(`${packageVersion()}\n`);
      return;
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return;
    default:
      process.stderr.write(`unknown command ${JSON.stringify(command)}\n${USAGE}`);
      process.exitCode = 2;
  }
}

/**
 * A mistake on the command line (an unknown option, a bad value, an option the application
 * refused): one line, exit code 2. Commands fail this way only while starting, from their options.
 */
function isUsageError(error: unknown): error is Error {
  const code = (error as { code?: unknown } | null)?.code;
  return (
    error instanceof RangeError ||
    error instanceof InvalidArgumentError ||
    (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_'))
  );
}

/** What the operating system refused (a file not found, an address in use): its message says it all. */
function isSystemError(error: unknown): error is Error {
  return error instanceof Error && typeof (error as { syscall?: unknown }).syscall === 'string';
}

/**
 * A write to output nobody reads any more (a closed pipe: `| head`, a log shipper or journald
 * restarting; a terminal gone) fails with EPIPE or EIO, reported as an 'error' event: without a
 * listener that is an uncaught exception, and a proxy would stop serving over a lost log line.
 * The line is lost instead, and so is what follows on that stream (Node destroys it).
 */
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

main(process.argv.slice(2)).catch((error: unknown) => {
  if (isUsageError(error)) {
    const code = error instanceof InvalidArgumentError ? `${error.code}: ` : '';
    console.error(`duplexwire: ${code}${error.message}\n(--help lists the options)`);
    process.exitCode = 2;
    return;
  }
  if (error instanceof DuplexwireError) console.error(`duplexwire: ${error.code}: ${error.message}`);
  else if (isSystemError(error)) console.error(`duplexwire: ${error.message}`);
  else console.error(error);
  process.exitCode = 1;
});
