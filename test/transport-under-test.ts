/**
 * The transport the end-to-end suites run on. One conformance run per transport and per process
 * (`test/conformance/<transport>.test.ts`) sets it before the suites are loaded; child-process
 * fixtures read it from DUPLEXWIRE_TEST_TRANSPORT.
 */
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import type { ClientTransport, ServerTransport } from '../transports/types.ts';
import { memoryTransport } from '../transports/memory.ts';
import { wsClientTransport, wsTransport } from '../transports/ws.ts';

export type TransportName = 'ws' | 'uws' | 'memory';

/** What a transport offers beyond the contract, so suites can tell which of their tests apply. */
export interface TransportCaps {
  /** Real WebSockets on TCP ports: raw peers, fixed ports, other processes. */
  readonly network: boolean;
}

export interface TransportUnderTest {
  readonly name: TransportName;
  readonly caps: TransportCaps;
  /** A server transport on 127.0.0.1 (`port` 0 by default). */
  server(options?: { readonly port?: number; readonly path?: string }): ServerTransport;
  /** A client transport that reaches the servers made by `server()`. */
  client(): ClientTransport;
}

export const wsUnderTest: TransportUnderTest = {
  name: 'ws',
  caps: { network: true },
  server: ({ port = 0, path } = {}) =>
    wsTransport({ host: '127.0.0.1', port, ...(path === undefined ? {} : { path }) }),
  client: () => wsClientTransport(),
};

/** A port nothing listens on right now (the kernel's pick for port 0). */
export async function freePort(): Promise<number> {
  const probe = createNetServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', resolve);
  });
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/**
 * uWebSockets.js for the server; clients stay on ws (uWS.js has no client). uSockets binds a port-0
 * listener without the reuse option it uses for a fixed port, so after such a server closed its
 * connections (TIME_WAIT) the port cannot be listened on again for a minute: restart tests need
 * the first server on a fixed port too. So port 0 becomes a free port picked here.
 */
export async function uwsUnderTest(): Promise<TransportUnderTest> {
  const { uwsTransport } = await import('../transports/uws.ts');
  const make = (port: number, path: string | undefined): ServerTransport =>
    uwsTransport({ host: '127.0.0.1', port, ...(path === undefined ? {} : { path }) });
  return {
    name: 'uws',
    caps: { network: true },
    server: ({ port = 0, path } = {}) => {
      if (port !== 0) return make(port, path);
      let inner: ServerTransport | undefined;
      let stopped = false;
      return {
        start: async (handlers, options) => {
          stopped = false;
          const free = await freePort();
          // stop() while the port was being picked: stay stopped, as a real transport would.
          if (stopped) return;
          inner = make(free, path);
          return inner.start(handlers, options);
        },
        address: () => inner?.address() ?? null,
        stop: async () => {
          stopped = true;
          await inner?.stop();
        },
        // The native fan-out, so that Server.publish takes the uWS path in the suites.
        publish: (topic, data, skip) => inner?.publish?.(topic, data, skip),
        refuseUpgrades: (refusal) => inner?.refuseUpgrades?.(refusal),
      };
    },
    client: () => wsClientTransport(),
  };
}

/** In-process pairs: a client connects to the most recently made server. */
export function memoryUnderTest(): TransportUnderTest {
  let latest: ReturnType<typeof memoryTransport> | undefined;
  return {
    name: 'memory',
    caps: { network: false },
    server: () => {
      latest = memoryTransport();
      return latest.server;
    },
    client: () => ({
      connect: (url, options, handlers) => {
        if (latest === undefined)
          return Promise.reject(Object.assign(new Error('no memory server'), { code: 'ECONNREFUSED' }));
        return latest.client.connect(url, options, handlers);
      },
    }),
  };
}

let current: TransportUnderTest = wsUnderTest;

export function setTransportUnderTest(transport: TransportUnderTest): void {
  current = transport;
  process.env.DUPLEXWIRE_TEST_TRANSPORT = transport.name;
}

export function transportUnderTest(): TransportUnderTest {
  return current;
}

/** For child-process fixtures: the server transport named by DUPLEXWIRE_TEST_TRANSPORT (ws by default). */
export async function serverTransportFromEnv(port: number): Promise<ServerTransport> {
  const name = process.env.DUPLEXWIRE_TEST_TRANSPORT;
  if (name === 'uws') return (await uwsUnderTest()).server({ port });
  // (A child given port 0 gets a fixed free port from uwsUnderTest, for the same reason.)
  return wsUnderTest.server({ port });
}
