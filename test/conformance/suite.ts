/**
 * The conformance suite: every end-to-end behaviour of the core and of sessions, run against one
 * transport. `runConformance` takes the transport (a factory of server and client transports)
 * with its capability flags, and loads each suite file that applies; each suite registers its
 * tests with node:test when loaded. One file per transport calls it (ws.test.ts, uws.test.ts,
 * memory.test.ts), so each transport runs in its own process.
 */
import { setTransportUnderTest, type TransportUnderTest } from '../transport-under-test.ts';

interface SuiteFile {
  readonly file: string;
  /** Needs real sockets (raw peers, fixed ports, child processes). */
  readonly network?: boolean;
  /** Exercises only the client against scripted servers: the server transport does not matter. */
  readonly clientOnly?: boolean;
}

const SUITES: readonly SuiteFile[] = [
  { file: 'server/smoke' },
  { file: 'server/handshake', network: true },
  { file: 'server/requests', network: true },
  { file: 'server/signals', network: true },
  { file: 'server/topics' },
  { file: 'server/concurrency', network: true },
  { file: 'server/upgrade', network: true },
  { file: 'server/upgrade-timeout' },
  { file: 'server/max-connections' },
  { file: 'server/pending-upgrades' },
  { file: 'server/violations', network: true },
  { file: 'server/limits', network: true },
  { file: 'server/timeouts', network: true },
  { file: 'server/stress', network: true },
  { file: 'client/requests', network: true },
  { file: 'client/cancel', network: true },
  { file: 'client/server-requests', network: true },
  { file: 'client/shutdown' },
  { file: 'client/reconnect', network: true },
  { file: 'client/kill', network: true },
  { file: 'client/handshake', network: true, clientOnly: true },
  { file: 'session/lifecycle', network: true },
  { file: 'session/registry', network: true },
  { file: 'session/client', network: true },
  { file: 'session/restart', network: true },
  { file: 'session/update' },
];

export async function runConformance(transport: TransportUnderTest): Promise<void> {
  setTransportUnderTest(transport);
  for (const suite of SUITES) {
    if (suite.network === true && !transport.caps.network) continue;
    if (suite.clientOnly === true && transport.name !== 'ws') continue;
    await import(new URL(`./${suite.file}.suite.ts`, import.meta.url).href);
  }
}
