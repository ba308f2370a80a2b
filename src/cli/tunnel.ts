/**
 * `duplexwire tunnel proxy|agent|token`: the HTTP tunnel from the command line. Logs are JSON
 * lines on stderr; SIGTERM and SIGINT drain gracefully (refuse new work, finish what runs, close).
 */
import { createServer, type Server } from 'node:http';
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { TunnelAgent } from '../apps/tunnel/agent.ts';
import type { HealthCheckOptions } from '../apps/tunnel/health.ts';
import { jsonLogger } from '../apps/shared/log.ts';
import { hostPort, integerFlag, logLevel, onSignals, parseSize } from './common.ts';
import { egressProxyFor, redactedUrl } from './egress-proxy.ts';
import type { TunnelClusterOptions } from '../apps/tunnel/cluster.ts';
import { MAX_INFLIGHT_LIMIT } from '../apps/tunnel/constants.ts';
import type { Logger } from '../logger.ts';
import { DEFAULT_PUBLIC_OPS, type PublicOps, TunnelProxy } from '../apps/tunnel/proxy.ts';
import { isHeaderName, type RoutingStrategy } from '../apps/tunnel/routing.ts';
import { durationOption } from '../apps/tunnel/timeout.ts';
import {
  generateToken,
  isStrongToken,
  isValidClientId,
  loadTokenFile,
  MIN_TOKEN_LENGTH,
  tokenDigest,
} from '../apps/tunnel/tokens.ts';

export const TUNNEL_USAGE = `usage:
  duplexwire tunnel proxy [--listen 127.0.0.1:8080] [--agents-path /_tunnel] --tokens tokens.json
      [--route header | --route host:<domain> | --route path[:/t]]... [--client-id-header name]
      [--backstream-compat] [--timeout 30s] [--max-timeout 5m] [--max-body 10MiB]
      [--agent-timeout 20s] [--forwarded replace|append] [--max-inflight-per-agent 1024]
      [--ops-listen host:port] [--public-ops health|all|none | --no-ops] [--drain-timeout 30s]
      [--insecure] [--log-level info]
      [--cluster-redis redis://127.0.0.1:6379 --cluster-advertise http://10.0.0.5:8080
       --cluster-secret-file secret [--cluster-prefix duplexwire:tunnel:] [--cluster-ttl 15s]
       [--cluster-ca ca.pem]]
      The public side: users' HTTP requests are routed by client id to connected agents.
      With --cluster-*, several proxies share their agents through Redis: a request for an id
      with no agent here goes to the proxy that has one (at its advertised address). The secret
      comes from --cluster-secret-file or DUPLEXWIRE_TUNNEL_CLUSTER_SECRET; --cluster-ca trusts a
      private certificate authority for peers advertised at https: addresses.
      tokens.json: { "<id>": "sha256:<hex>" | "<token>" | [...] } (see "tunnel token").
      --insecure accepts agents without credentials (development only).
      --ops-listen serves /healthz, /readyz, /metrics and /status on a listener of their own;
      --public-ops says which of them the public listener serves: health (/healthz and /readyz,
      the default), all, or none. --no-ops: none of them anywhere.
      --max-inflight-per-agent: requests in flight per agent (1..16384; an agent announcing a
      lower --max-inflight gets no more than that); with every agent of an id full: 503.
  duplexwire tunnel agent --proxy ws://127.0.0.1:8080/_tunnel --id 4711 --token-file t
      --target http://127.0.0.1:3000 [--host-header preserve|rewrite] [--drain-timeout 30s]
      [--egress-proxy http://user:pass@egress:3128 | direct] [--insecure-tls] [--log-level info]
      [--health-check /healthz [--health-interval 10s] [--health-timeout 2s]] [--max-inflight 1024]
      The private side: dials out to the proxy and performs its requests against the target.
      The token comes from --token-file or the DUPLEXWIRE_TUNNEL_TOKEN environment variable.
      --egress-proxy: an HTTP proxy to dial out through (CONNECT); without it HTTPS_PROXY
      (wss:), HTTP_PROXY (ws:) or ALL_PROXY is used unless NO_PROXY lists the host; 'direct'
      ignores them.
      --health-check: GET this path of the target every interval; after 3 failures in a row the
      proxy prefers the id's other agents until a check passes again.
      --max-inflight: requests performed against the target at once (1..16384); the proxy is
      told, and one more is refused unperformed (another agent of the id takes it, or 503).
  duplexwire tunnel token [--id 4711]
      Prints a new random token (256 bits) and the line for the proxy's token file.
`;

function parseRoute(value: string, headerName: string | undefined, backstreamCompat: boolean): RoutingStrategy {
  if (headerName !== undefined && !isHeaderName(headerName))
    throw new RangeError(`--client-id-header must be a header name (an HTTP token), got ${JSON.stringify(headerName)}`);
  if (value === 'header') {
    return { by: 'header', ...(headerName === undefined ? {} : { name: headerName }), backstreamCompat };
  }
  if (value.startsWith('host:')) return { by: 'host', domain: value.slice(5) };
  if (value === 'path') return { by: 'path' };
  if (value.startsWith('path:')) return { by: 'path', prefix: value.slice(5) };
  throw new RangeError(`--route must be header, host:<domain> or path[:/prefix], got ${JSON.stringify(value)}`);
}

/** A connection to Redis for the command line's cluster: closed with the proxy. */
interface ClusterRedis {
  sendCommand(args: string[]): Promise<unknown>;
  close(): Promise<unknown>;
}

/**
 * Connects to Redis with node-redis (`redis`, an optional peer dependency: only `--cluster-*`
 * needs it). Commands fail at once while the connection is down, rather than queue: the proxy
 * then answers CLUSTER_UNAVAILABLE for what it cannot route, and node-redis reconnects.
 */
async function connectRedis(url: string, logger: Logger): Promise<ClusterRedis> {
  let redis: typeof import('redis');
  try {
    redis = await import('redis');
  } catch (error) {
    throw new RangeError('--cluster-redis needs the redis package (npm install redis)', { cause: error });
  }
  const client = redis.createClient({ url, disableOfflineQueue: true });
  let lastError = '';
  client.on('error', (error: Error) => {
    // node-redis repeats a failure on every reconnect attempt: log each distinct one once.
    if (error.message === lastError) return;
    lastError = error.message;
    logger.warn('cluster Redis connection failed', { error });
  });
  let closed = false;
  client.on('ready', () => {
    lastError = '';
    // node-redis (6.3) lets a connection being made when closed complete, and stay open: the
    // process would never exit (a proxy failing to start just after connecting, say).
    if (closed) client.destroy();
  });
  // Not awaited: a proxy serves its own agents without Redis, and node-redis keeps trying.
  client.connect().catch((error: unknown) => logger.error('cannot connect to the cluster Redis', { error }));
  return {
    sendCommand: (args) => client.sendCommand(args),
    close: async () => {
      closed = true;
      if (!client.isReady) {
        client.destroy();
        return;
      }
      try {
        await client.close();
      } catch {
        client.destroy();
      }
    },
  };
}

/** The cluster options from `--cluster-*`, with a Redis connection; undefined without them. */
async function clusterOption(
  values: {
    'cluster-redis'?: string | undefined;
    'cluster-advertise'?: string | undefined;
    'cluster-secret-file'?: string | undefined;
    'cluster-prefix'?: string | undefined;
    'cluster-ttl'?: string | undefined;
    'cluster-ca'?: string | undefined;
  },
  logger: Logger,
): Promise<{ options: TunnelClusterOptions; client: ClusterRedis } | undefined> {
  const redis = values['cluster-redis'];
  const advertise = values['cluster-advertise'];
  const given = Object.entries(values).filter(([name, v]) => name.startsWith('cluster-') && v !== undefined);
  if (given.length === 0) return undefined;
  if (redis === undefined || advertise === undefined) {
    throw new RangeError('a cluster needs --cluster-redis <url> and --cluster-advertise <http://address:port>');
  }
  const file = values['cluster-secret-file'];
  const secret =
    file === undefined ? process.env.DUPLEXWIRE_TUNNEL_CLUSTER_SECRET : (await readFile(file, 'utf8')).trim();
  if (secret === undefined || secret === '') {
    throw new RangeError('a cluster needs --cluster-secret-file <file> or DUPLEXWIRE_TUNNEL_CLUSTER_SECRET');
  }
  const caFile = values['cluster-ca'];
  const ca = caFile === undefined ? undefined : await readFile(caFile);
  const client = await connectRedis(redis, logger);
  return {
    client,
    options: {
      client,
      advertise,
      secret,
      ...(values['cluster-prefix'] === undefined ? {} : { prefix: values['cluster-prefix'] }),
      ...(values['cluster-ttl'] === undefined ? {} : { ttl: values['cluster-ttl'] }),
      ...(ca === undefined ? {} : { tls: { ca } }),
    },
  };
}

async function proxyCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      help: { type: 'boolean', short: 'h', default: false },
      listen: { type: 'string', default: '127.0.0.1:8080' },
      'agents-path': { type: 'string', default: '/_tunnel' },
      tokens: { type: 'string' },
      insecure: { type: 'boolean', default: false },
      route: { type: 'string', multiple: true },
      'client-id-header': { type: 'string' },
      'backstream-compat': { type: 'boolean', default: false },
      timeout: { type: 'string' },
      'max-timeout': { type: 'string' },
      'max-body': { type: 'string' },
      'agent-timeout': { type: 'string' },
      forwarded: { type: 'string' },
      'max-inflight-per-agent': { type: 'string' },
      'ops-listen': { type: 'string' },
      'public-ops': { type: 'string' },
      'no-ops': { type: 'boolean', default: false },
      'drain-timeout': { type: 'string' },
      'log-level': { type: 'string' },
      'cluster-redis': { type: 'string' },
      'cluster-advertise': { type: 'string' },
      'cluster-secret-file': { type: 'string' },
      'cluster-prefix': { type: 'string' },
      'cluster-ttl': { type: 'string' },
      'cluster-ca': { type: 'string' },
    },
  });
  if (values.help) {
    process.stdout.write(TUNNEL_USAGE);
    return;
  }
  const logger = jsonLogger({ level: logLevel(values['log-level']), fields: { component: 'tunnel-proxy' } });
  if (values.tokens === undefined && !values.insecure) {
    throw new RangeError('the proxy needs --tokens <file> (or --insecure for development, which accepts any agent)');
  }
  // What the command line says is checked before anything opens (a Redis connection, a listener).
  const listen = hostPort(values.listen, '--listen');
  const opsAt = values['ops-listen'] === undefined ? undefined : hostPort(values['ops-listen'], '--ops-listen');
  const publicOps = publicOpsFlag(values['public-ops'], values['no-ops'], opsAt !== undefined);
  const maxInflight = values['max-inflight-per-agent'];
  const maxInflightPerAgent =
    maxInflight === undefined ? undefined : integerFlag(maxInflight, '--max-inflight-per-agent', 1, MAX_INFLIGHT_LIMIT);
  const tokens = values.tokens === undefined ? undefined : await loadTokenFile(values.tokens);
  if (tokens !== undefined && tokens.ids().length === 0 && !values.insecure) {
    throw new RangeError(
      `token file ${values.tokens} has no entries: no agent could connect (duplexwire tunnel token --id <id> makes one)`,
    );
  }
  const routes = (values.route ?? ['header']).map((r) =>
    parseRoute(r, values['client-id-header'], values['backstream-compat']),
  );
  if (values.forwarded !== undefined && values.forwarded !== 'replace' && values.forwarded !== 'append') {
    throw new RangeError('--forwarded must be replace or append');
  }
  const cluster = await clusterOption(values, logger);
  let proxy: TunnelProxy | undefined;
  let opsServer: Server | undefined;
  try {
    proxy = new TunnelProxy({
      ...(tokens === undefined ? {} : { tokens }),
      insecure: values.insecure,
      agentsPath: values['agents-path'],
      routing: routes,
      ...(values.timeout === undefined ? {} : { requestTimeout: values.timeout }),
      ...(values['max-timeout'] === undefined ? {} : { maxRequestTimeout: values['max-timeout'] }),
      ...(values['max-body'] === undefined ? {} : { maxRequestBody: parseSize(values['max-body']) }),
      ...(values['agent-timeout'] === undefined ? {} : { agentTimeout: values['agent-timeout'] }),
      ...(values.forwarded === undefined ? {} : { forwarded: values.forwarded }),
      ...(maxInflightPerAgent === undefined ? {} : { maxInflightPerAgent }),
      ...(values['drain-timeout'] === undefined ? {} : { drainTimeout: values['drain-timeout'] }),
      publicOps,
      logger,
      ...(cluster === undefined ? {} : { cluster: cluster.options }),
    });
    const address = await proxy.listen(listen);
    // Whatever the log level, say where it is (on stdout: logs go to stderr).
    const host = address.host.includes(':') ? `[${address.host}]` : address.host;
    process.stdout.write(
      `tunnel proxy listening on http://${host}:${address.port}/ (agents: ws://${host}:${address.port}${proxy.agentsPath})\n`,
    );
    if (opsAt !== undefined) opsServer = await listenOps(proxy, opsAt, logger);
    else if (publicOps !== 'all' && !values['no-ops']) {
      // Said once, for whoever scraped /metrics on the public port before it was private.
      logger.info('metrics and status page not served: --ops-listen <host:port> serves them (or --public-ops all)');
    }
  } catch (error) {
    // Half started, the process would go on running (the Redis connection, the listener keep it
    // alive) without its ops endpoints or its drain on SIGTERM: close what opened, fail.
    await proxy?.close();
    await cluster?.client.close();
    throw error;
  }
  const started = proxy;
  onSignals(async () => {
    await started.drain();
    await cluster?.client.close();
    await new Promise<void>((resolve) => (opsServer === undefined ? resolve() : opsServer.close(() => resolve())));
  });
}

/**
 * `--public-ops`, or `--no-ops` (none of the ops endpoints anywhere). `--no-ops` with
 * `--ops-listen` is refused: it used to turn that listener off without a word, and which of the
 * two is meant cannot be told (`--public-ops none --ops-listen` keeps them private).
 */
function publicOpsFlag(value: string | undefined, noOps: boolean, opsListener: boolean): PublicOps {
  if (noOps) {
    if (value !== undefined) throw new RangeError('--no-ops and --public-ops exclude each other');
    if (opsListener) {
      throw new RangeError(
        '--no-ops turns every ops endpoint off, --ops-listen serves them: for them on --ops-listen only, use --public-ops none',
      );
    }
    return 'none';
  }
  if (value === undefined) return DEFAULT_PUBLIC_OPS;
  if (value !== 'all' && value !== 'health' && value !== 'none')
    throw new RangeError(`--public-ops must be health, all or none, got ${JSON.stringify(value)}`);
  return value;
}

/** The ops endpoints (`--ops-listen`) on a listener of their own; rejects when it cannot listen. */
async function listenOps(proxy: TunnelProxy, at: { host: string; port: number }, logger: Logger): Promise<Server> {
  const server = createServer((req, res) => {
    if (!proxy.serveOps(req, res)) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ code: 'NOT_FOUND', message: 'no such endpoint' }));
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (error) => logger.error('ops server error', { error }));
  const address = server.address();
  logger.info(
    'ops listening',
    typeof address === 'object' && address !== null ? { host: address.address, port: address.port } : {},
  );
  return server;
}

async function agentCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      help: { type: 'boolean', short: 'h', default: false },
      proxy: { type: 'string' },
      id: { type: 'string' },
      'token-file': { type: 'string' },
      target: { type: 'string' },
      'host-header': { type: 'string' },
      'drain-timeout': { type: 'string' },
      'max-inflight': { type: 'string' },
      'egress-proxy': { type: 'string' },
      'health-check': { type: 'string' },
      'health-interval': { type: 'string' },
      'health-timeout': { type: 'string' },
      'insecure-tls': { type: 'boolean', default: false },
      'log-level': { type: 'string' },
    },
  });
  if (values.help) {
    process.stdout.write(TUNNEL_USAGE);
    return;
  }
  if (values.proxy === undefined || values.id === undefined || values.target === undefined) {
    throw new RangeError('tunnel agent needs --proxy, --id and --target');
  }
  const tokenFile = values['token-file'];
  const token =
    tokenFile === undefined ? process.env.DUPLEXWIRE_TUNNEL_TOKEN : (await readFile(tokenFile, 'utf8')).trim();
  if (token === undefined || token === '') {
    throw new RangeError(
      tokenFile === undefined
        ? 'tunnel agent needs --token-file <file> or DUPLEXWIRE_TUNNEL_TOKEN'
        : `token file ${tokenFile} is empty`,
    );
  }
  // What the proxy asks of the tokens in its file; a sha256: digest there may stand for any.
  if (!isStrongToken(token)) {
    throw new RangeError(
      `the agent's token must have at least ${MIN_TOKEN_LENGTH} printable characters (128 bits): duplexwire tunnel token makes one`,
    );
  }
  const hostHeader = values['host-header'] ?? 'preserve';
  if (hostHeader !== 'preserve' && hostHeader !== 'rewrite')
    throw new RangeError('--host-header must be preserve or rewrite');
  const logger = jsonLogger({
    level: logLevel(values['log-level']),
    fields: { component: 'tunnel-agent', id: values.id },
  });
  const egressProxy = egressProxyFor(values.proxy, values['egress-proxy']);
  const agent = new TunnelAgent({
    proxyUrl: values.proxy,
    id: values.id,
    token,
    target: values.target,
    hostHeader,
    ...(egressProxy === undefined ? {} : { egressProxy }),
    ...healthCheckFlags(values['health-check'], values['health-interval'], values['health-timeout']),
    drainTimeout: durationOption('--drain-timeout', values['drain-timeout'], 30_000),
    ...(values['max-inflight'] === undefined
      ? {}
      : { maxInflight: integerFlag(values['max-inflight'], '--max-inflight', 1, MAX_INFLIGHT_LIMIT) }),
    ...(values['insecure-tls'] ? { tls: { rejectUnauthorized: false }, targetTls: { rejectUnauthorized: false } } : {}),
    logger,
  });
  if (egressProxy !== undefined)
    logger.info('dialing out through an HTTP proxy', { egressProxy: redactedUrl(egressProxy) });
  let stopping = false;
  onSignals(() => {
    stopping = true;
    return agent.close();
  });
  // The client gives up for good on a refusal that retrying cannot change (bad credentials, a
  // proxy of another tunnel version) or when reconnect attempts run out. The process would then
  // sit there connected to nothing: exit 1 instead, so that a supervisor sees it and says why.
  agent.client.on('state', (state) => {
    if (state !== 'disconnected') return;
    stopping = true;
    logger.error('gave up connecting to the proxy; exiting');
    void agent.close(0).finally(() => process.exit(1));
  });
  try {
    await agent.start();
  } catch (error) {
    // Stopped while connecting: the reason is logged and the process exits by itself; what the
    // close did to the first connection ("the client was closed") would be its misleading last line.
    if (!stopping) throw error;
  }
}

/** The agent's `healthCheck` from its flags (the intervals are checked by the agent). */
function healthCheckFlags(
  path: string | undefined,
  interval: string | undefined,
  timeout: string | undefined,
): { healthCheck?: HealthCheckOptions } {
  if (path === undefined) {
    if (interval !== undefined || timeout !== undefined)
      throw new RangeError('--health-interval and --health-timeout need --health-check <path>');
    return {};
  }
  return {
    healthCheck: {
      path,
      ...(interval === undefined ? {} : { interval }),
      ...(timeout === undefined ? {} : { timeout }),
    },
  };
}

function tokenCommand(args: string[]): void {
  const { values } = parseArgs({
    args,
    options: { id: { type: 'string', default: '<id>' }, help: { type: 'boolean', short: 'h', default: false } },
  });
  if (values.help) {
    process.stdout.write(TUNNEL_USAGE);
    return;
  }
  if (values.id !== '<id>' && !isValidClientId(values.id)) {
    throw new RangeError(`invalid client id ${JSON.stringify(values.id)}: letters, digits, _ . - (up to 63)`);
  }
  const token = generateToken();
  process.stdout.write(`token: ${token}\ntoken file entry: ${JSON.stringify({ [values.id]: tokenDigest(token) })}\n`);
}

export async function tunnel(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'proxy':
      return proxyCommand(rest);
    case 'agent':
      return agentCommand(rest);
    case 'token':
      return tokenCommand(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(TUNNEL_USAGE);
      return;
    default:
      process.stderr.write(`unknown tunnel command ${JSON.stringify(sub)}\n${TUNNEL_USAGE}`);
      process.exitCode = 2;
  }
}
