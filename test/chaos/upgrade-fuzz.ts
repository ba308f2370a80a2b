/**
 * Upgrade fuzz (not a test file): hostile HTTP upgrade requests over raw TCP (`node:net`) against
 * a Server on 127.0.0.1, one process per transport (`upgrade-fuzz-ws.test.ts`,
 * `upgrade-fuzz-uws.test.ts`), as faults.ts is run. The message-level wire is fuzzed by
 * wire-fuzz.test.ts; this is what comes before it.
 *
 * Each fast-check run is one TCP connection: a request built from parts (method, target, HTTP
 * version, line endings, Host, Upgrade and Connection tokens, zero to two Sec-WebSocket-Key and
 * -Version headers, valid or garbled, a Sec-WebSocket-Protocol list, valid or malformed, huge
 * values, many headers, a header name with `_`), or bytes that are not HTTP at all; delivered
 * whole, in random chunks or byte by byte; maybe followed in the same write by a valid frame, a
 * garbage frame or a second request; maybe cut (FIN or destroy) at any byte, or destroyed right
 * after the request while the async `beforeUpgrade` (a random delay, sometimes a refusal) decides.
 * A model (`expectOutcome`) says what each transport may answer; per run the test checks:
 * - the answer is one the model allows: never a 101 for an invalid request; 101 with the right
 *   Sec-WebSocket-Accept and subprotocol, and a working connection (an echo request written by
 *   hand gets its reply) for a valid one; a 4xx or a closed socket otherwise, within SETTLE_MS;
 * - `beforeUpgrade` ran exactly for the requests a transport may accept (once), never for others;
 * - afterwards the server holds no connection but the well-behaved Client's;
 * and over the whole property: no uncaught exception, unhandled rejection or process warning, no
 * error or warning logged, and the Client still gets replies and a new Client connects.
 *
 * Where ws and uWS legitimately differ (uWS's HTTP parser, see `uwsTransport`): what Node answers
 * 400 for being no HTTP it parses (bytes that are not HTTP, bare LF line endings, HTTP/1.0, a
 * target that is not a path, a lower-case method), uWS leaves unanswered until its HTTP timeout,
 * or closes at once (a header name with `_`, more than 48 headers, no Host). Both never upgrade
 * it and never ask the owner; here such a request may stay unanswered for UNANSWERED_MS, and
 * the slowloris case checks that uWS does close it. Frames written before the 101 are dropped
 * by uWS (documented), so the fuzz's own echo goes after it.
 *
 * Environment: FUZZ_RUNS (default 80; 300 with CI=true), FUZZ_SEED, FUZZ_PATH, as wire-fuzz.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { maxHeaderSize } from 'node:http';
import { connect, type Socket } from 'node:net';
import { describe, type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { encodeReply } from '../../protocol/encode.ts';
import { binary, payloadText, utf8 } from '../../protocol/payload.ts';
import { Client } from '../../src/client/client.ts';
import { Server } from '../../src/server/server.ts';
import type { ServerTransport, UpgradeRequest } from '../../transports/types.ts';
import { DEFAULT_HANDSHAKE_TIMEOUT, wsClientTransport, wsTransport } from '../../transports/ws.ts';
import { delay, hex, recordingLogger, waitFor } from '../helpers.ts';
import type { TransportUnderTest } from '../transport-under-test.ts';
import { checkFuzz, envInteger, Histogram, latin1, requestBytes, watchFaults } from './fuzz-helpers.ts';

const CI = process.env.CI === 'true';
const DEFAULT_RUNS = CI ? 300 : 80;
const RUNS = envInteger('FUZZ_RUNS') ?? DEFAULT_RUNS;
const SEED = envInteger('FUZZ_SEED') ?? randomInt(1, 2 ** 31);
const PATH = process.env.FUZZ_PATH;
/** Bound of every answer, close and reply. */
const SETTLE_MS = 3_000;
/** How long a request uWS's parser does not answer is watched for an answer before it is let go. */
const UNANSWERED_MS = 300;
/** Whole property, shrinking included: a hang fails instead of eating the suite's time. */
const PROPERTY_MS = CI ? 60_000 : 30_000;
const WS_PATH = '/ws';
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/* ------------------------------------------------------------------------------------------- */
/* Scenarios                                                                                   */
/* ------------------------------------------------------------------------------------------- */

interface RequestSpec {
  readonly method: string;
  readonly target: string;
  readonly version: string;
  readonly eol: '\r\n' | '\n';
  readonly host: boolean;
  readonly upgrade: string | undefined;
  readonly connection: string | undefined;
  readonly keys: readonly string[];
  readonly versions: readonly string[];
  readonly protocol: string | undefined;
  readonly extra: ReadonlyArray<readonly [string, string]>;
}

type After = 'none' | 'frame' | 'garbage-frame' | 'second-request';
type Delivery =
  | { readonly how: 'whole' }
  | { readonly how: 'bytes' }
  | { readonly how: 'chunks'; readonly cuts: number[] };
type Hangup =
  | { readonly when: 'never' }
  /** Cut inside the request: at `at` (a fraction of its length) the peer ends (FIN) or destroys. */
  | { readonly when: 'inside'; readonly at: number; readonly how: 'end' | 'destroy' }
  /** Destroyed right after the request, while `beforeUpgrade` is still deciding. */
  | { readonly when: 'after-request' };

interface Scenario {
  readonly request: RequestSpec | { readonly junk: Uint8Array };
  readonly delivery: Delivery;
  readonly after: After;
  readonly hangup: Hangup;
  /** What the async hook does: its delay, and whether it refuses (403). */
  readonly hookDelay: number;
  readonly refuse: boolean;
}

const VALID_KEY = (): string => randomBytes(16).toString('base64');

const keyArb = fc.oneof(
  { weight: 8, arbitrary: fc.constant('valid') },
  {
    weight: 1,
    arbitrary: fc.uint8Array({ minLength: 15, maxLength: 15 }).map((b) => Buffer.from(b).toString('base64')),
  },
  {
    weight: 1,
    arbitrary: fc.uint8Array({ minLength: 17, maxLength: 17 }).map((b) => Buffer.from(b).toString('base64')),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom('not base64 but 24 chars!', 'dGhlIHNhbXBsZSBub25jZQ=', '', '========================'),
  },
);
const protocolArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant(undefined) },
  { weight: 2, arbitrary: fc.constantFrom('chat', 'chat.v2, chat.v1', 'a,b', ' a , b ', 'x\t,\ty') },
  { weight: 2, arbitrary: fc.constantFrom('a b', 'a,,b', 'a, a', 'a,', ',a', ' ', '', 'ch@t', 'a;b', '"a"', 'é') },
);
const headerNameArb = fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,11}$/).map((name) => `X-${name}`);
const extraArb: fc.Arbitrary<ReadonlyArray<readonly [string, string]>> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.array(
      fc.tuple(headerNameArb, fc.stringMatching(/^[ -~]{0,20}$/)).map(([n, v]) => [n, v.trim()] as const),
      { maxLength: 3 },
    ),
  },
  // Clearly past Node's limit (16 KiB) and under uWS's own, or far past both.
  { weight: 1, arbitrary: fc.constantFrom(20_000, 64_000).map((size) => [['X-Huge', 'h'.repeat(size)] as const]) },
  // More headers than uWS takes (48), few bytes.
  {
    weight: 1,
    arbitrary: fc.constantFrom(60, 200).map((n) => Array.from({ length: n }, (_, i) => [`X-N${i}`, 'v'] as const)),
  },
  { weight: 1, arbitrary: fc.constant([['X_Under', '1'] as const]) },
);
const requestArb: fc.Arbitrary<RequestSpec> = fc.record({
  method: fc.oneof(
    { weight: 12, arbitrary: fc.constant('GET') },
    { weight: 1, arbitrary: fc.constantFrom('POST', 'HEAD', 'PUT', 'CONNECT', 'get', 'OPTIONS') },
  ),
  target: fc.oneof(
    { weight: 10, arbitrary: fc.constantFrom(WS_PATH, `${WS_PATH}?token=abc`, `${WS_PATH}?`) },
    {
      weight: 2,
      arbitrary: fc.constantFrom('/other', '/', '/WS', `${WS_PATH}/`, '/ws/../ws', `http://127.0.0.1${WS_PATH}`, '*'),
    },
  ),
  version: fc.oneof(
    { weight: 12, arbitrary: fc.constant('HTTP/1.1') },
    { weight: 1, arbitrary: fc.constant('HTTP/1.0') },
  ),
  eol: fc.oneof(
    { weight: 15, arbitrary: fc.constant('\r\n' as const) },
    { weight: 1, arbitrary: fc.constant('\n' as const) },
  ),
  host: fc.oneof({ weight: 12, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  upgrade: fc.oneof(
    { weight: 10, arbitrary: fc.constantFrom('websocket', 'WebSocket') },
    { weight: 1, arbitrary: fc.constantFrom(undefined, 'h2c', 'websocket2') },
  ),
  connection: fc.oneof(
    { weight: 10, arbitrary: fc.constantFrom('Upgrade', 'keep-alive, Upgrade', 'upgrade') },
    { weight: 1, arbitrary: fc.constantFrom(undefined, 'keep-alive', 'close', 'Upgraded') },
  ),
  keys: fc.oneof(
    { weight: 10, arbitrary: keyArb.map((k) => [k]) },
    { weight: 1, arbitrary: fc.constant([]) },
    { weight: 1, arbitrary: fc.constant(['valid', 'valid']) },
  ),
  versions: fc.oneof(
    { weight: 10, arbitrary: fc.constantFrom(['13'], ['8']) },
    { weight: 1, arbitrary: fc.constantFrom([], ['12'], ['7'], ['014'], ['13', '13'], ['abc'], ['']) },
  ),
  protocol: protocolArb,
  extra: extraArb,
});
/** Bytes that are no HTTP request: random ones behind a byte no method starts with, and known shapes. */
const junkArb = fc.oneof(
  fc.uint8Array({ minLength: 1, maxLength: 64 }).map((rest) => Uint8Array.from([0x16, ...rest])),
  fc.constantFrom(
    latin1('hello there\r\n\r\n'),
    Uint8Array.of(0x00, 0x01, 0x02, 0xff, 0x0d, 0x0a, 0x0d, 0x0a),
    latin1('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
    latin1('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nBad Header\r\n\r\n'),
  ),
);
const deliveryArb: fc.Arbitrary<Delivery> = fc.oneof(
  { weight: 4, arbitrary: fc.constant({ how: 'whole' as const }) },
  { weight: 2, arbitrary: fc.constant({ how: 'bytes' as const }) },
  {
    weight: 2,
    arbitrary: fc
      .array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 4 })
      .map((cuts) => ({ how: 'chunks' as const, cuts })),
  },
);
const hangupArb: fc.Arbitrary<Hangup> = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ when: 'never' as const }) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.double({ min: 0, max: 0.999, noNaN: true }), fc.constantFrom('end' as const, 'destroy' as const))
      .map(([at, how]) => ({ when: 'inside' as const, at, how })),
  },
  { weight: 2, arbitrary: fc.constant({ when: 'after-request' as const }) },
);
const scenarioArb: fc.Arbitrary<Scenario> = fc.record({
  request: fc.oneof({ weight: 12, arbitrary: requestArb }, { weight: 1, arbitrary: junkArb.map((junk) => ({ junk })) }),
  delivery: deliveryArb,
  after: fc.constantFrom<After>('none', 'none', 'frame', 'garbage-frame', 'second-request'),
  hangup: hangupArb,
  hookDelay: fc.integer({ min: 0, max: 40 }),
  refuse: fc.integer({ min: 0, max: 9 }).map((n) => n < 2),
});

/* ------------------------------------------------------------------------------------------- */
/* Bytes                                                                                       */
/* ------------------------------------------------------------------------------------------- */

interface Built {
  readonly bytes: Buffer;
  /** The key a valid request carries (for Sec-WebSocket-Accept). */
  readonly key: string | undefined;
  readonly id: string;
}

function buildRequest(spec: RequestSpec, id: string): Built {
  const keys = spec.keys.map((k) => (k === 'valid' ? VALID_KEY() : k));
  const lines = [`${spec.method} ${spec.target} ${spec.version}`];
  if (spec.host) lines.push('Host: 127.0.0.1');
  if (spec.connection !== undefined) lines.push(`Connection: ${spec.connection}`);
  if (spec.upgrade !== undefined) lines.push(`Upgrade: ${spec.upgrade}`);
  for (const key of keys) lines.push(`Sec-WebSocket-Key: ${key}`);
  for (const version of spec.versions) lines.push(`Sec-WebSocket-Version: ${version}`);
  if (spec.protocol !== undefined) lines.push(`Sec-WebSocket-Protocol: ${spec.protocol}`);
  lines.push(`X-Fuzz-Id: ${id}`);
  for (const [name, value] of spec.extra) lines.push(`${name}: ${value}`);
  const text = `${lines.join(spec.eol)}${spec.eol}${spec.eol}`;
  return { bytes: Buffer.from(text, 'latin1'), key: keys.length === 1 ? keys[0] : undefined, id };
}

const ECHO_ID = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);

/** A masked client frame with a zero mask (payload < 126 bytes). */
function maskedFrame(opcode: number, payload: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}

function echoFrame(text: string): Buffer {
  return maskedFrame(0x2, requestBytes(127, ECHO_ID, latin1('echo'), latin1(text)));
}

function echoReplyHex(text: string): string {
  return hex(encodeReply(ECHO_ID, binary(latin1(text))));
}

/** The binary messages in what the server wrote after its 101 (unmasked frames), and whether a close frame came. */
function serverFrames(bytes: Buffer): { messages: string[]; closed: boolean; closeCode: number | undefined } {
  const messages: string[] = [];
  let closed = false;
  let closeCode: number | undefined;
  let at = 0;
  while (at + 2 <= bytes.length) {
    const opcode = bytes[at]! & 0x0f;
    let length = bytes[at + 1]! & 0x7f;
    let start = at + 2;
    if (length === 126) {
      if (at + 4 > bytes.length) break;
      length = bytes.readUInt16BE(at + 2);
      start = at + 4;
    } else if (length === 127) {
      if (at + 10 > bytes.length) break;
      length = Number(bytes.readBigUInt64BE(at + 2));
      start = at + 10;
    }
    if (start + length > bytes.length) break;
    if (opcode === 0x2) messages.push(bytes.subarray(start, start + length).toString('hex'));
    if (opcode === 0x8) {
      closed = true;
      if (length >= 2) closeCode = bytes.readUInt16BE(start);
    }
    at = start + length;
  }
  return { messages, closed, closeCode };
}

/* ------------------------------------------------------------------------------------------- */
/* The model                                                                                   */
/* ------------------------------------------------------------------------------------------- */

type TransportName = 'ws' | 'uws';

interface Expectation {
  /** The request may be upgraded: the hook is asked, and a 101 (or its refusal) follows. */
  readonly upgrade: boolean;
  /** Answers allowed for a request that is not upgraded: statuses, 'closed', 'unanswered'. */
  readonly refusals: ReadonlySet<string>;
  readonly why: string;
}

const NODE_CLIENT_ERROR = 'Node answers 400 to what its parser rejects';
/** uWS's parser: no answer, a close at once or at its HTTP timeout (see `uwsTransport`). */
const UWS_PARSER = new Set(['closed', 'unanswered']);

function hasToken(value: string | undefined, token: string): boolean {
  return value?.split(',').some((t) => t.trim().toLowerCase() === token) === true;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function validProtocols(value: string): boolean {
  const list = value.split(',').map((t) => t.replace(/^[ \t]+|[ \t]+$/g, ''));
  return list.every((t) => TOKEN.test(t)) && new Set(list).size === list.length;
}

/**
 * What a transport may answer to `spec`, from RFC 6455 §4.2.1, Node's HTTP parser (for `ws`), the
 * order in which the transports check (`transports/handshake.ts`, `ws.ts`, `uws.ts`) and uWS's
 * documented parser differences.
 */
function expectOutcome(spec: RequestSpec, built: Built, transport: TransportName): Expectation {
  const refuse = (statuses: readonly string[], why: string): Expectation => ({
    upgrade: false,
    refusals: new Set(statuses),
    why,
  });
  const path = spec.target.split('?')[0]!;
  const upgradeRequested = spec.upgrade !== undefined && hasToken(spec.connection, 'upgrade');
  if (transport === 'uws') {
    if (spec.eol === '\n' || spec.version !== 'HTTP/1.1' || !spec.target.startsWith('/')) {
      return refuse([...UWS_PARSER], "uWS's parser: bare LF, HTTP/1.0 or a target that is not a path");
    }
    if (spec.method === 'get') return refuse([...UWS_PARSER], "uWS's parser: a lower-case method");
    if (spec.extra.some(([name]) => name.includes('_'))) return refuse([...UWS_PARSER], "uWS's parser: `_` in a name");
    if (spec.extra.length > 40) return refuse([...UWS_PARSER], "uWS's parser: more than 48 headers");
    if (!spec.host) return refuse([...UWS_PARSER], "uWS's parser: no Host");
  } else {
    if (spec.eol === '\n' || spec.method === 'get') return refuse(['400'], NODE_CLIENT_ERROR);
    if (built.bytes.length > maxHeaderSize) return refuse(['431'], 'over maxHeaderSize');
    // Node hands CONNECT to its 'connect' listeners (none: closed); uWS answers it as any other.
    if (spec.method === 'CONNECT') return refuse(['400', 'closed'], 'CONNECT');
  }
  if (built.bytes.length > maxHeaderSize) {
    // uWS closes a head over 4 KiB that came in more than one read (its fixed fallback buffer),
    // before the adapter sees it; one read of it reaches the adapter's 431.
    return refuse(transport === 'uws' ? ['431', 'closed'] : ['431'], 'over maxHeaderSize');
  }
  // Node answers a plain HTTP/1.1 request without Host itself (`requireHostHeader`).
  if (transport === 'ws' && !upgradeRequested && !spec.host && spec.version === 'HTTP/1.1') {
    return refuse(['400'], NODE_CLIENT_ERROR);
  }
  // Node keeps a plain HTTP connection after its 426; uWS closes it.
  if (!upgradeRequested) return refuse(['426'], 'not an upgrade (Upgrade and Connection: upgrade)');
  if (path !== WS_PATH) return refuse(['404'], 'another path');
  if (spec.upgrade?.toLowerCase() !== 'websocket') return refuse(['400'], 'another protocol');
  if (spec.method !== 'GET' || spec.version !== 'HTTP/1.1' || !spec.host) {
    return refuse(['400'], 'method, HTTP version or Host');
  }
  if (spec.keys.length !== 1 || built.key === undefined || !/^[+/0-9A-Za-z]{22}==$/.test(built.key)) {
    return refuse(['400'], 'key');
  }
  if (spec.versions.length !== 1 || (spec.versions[0] !== '13' && spec.versions[0] !== '8')) {
    return refuse(['400'], 'version');
  }
  if (spec.protocol !== undefined && !validProtocols(spec.protocol)) return refuse(['400'], 'subprotocols');
  return { upgrade: true, refusals: new Set(), why: 'valid' };
}

/* ------------------------------------------------------------------------------------------- */
/* A raw peer                                                                                  */
/* ------------------------------------------------------------------------------------------- */

class RawPeer {
  readonly socket: Socket;
  received = Buffer.alloc(0);
  closed = false;
  readonly connected: Promise<void>;

  constructor(port: number, sockets: Set<Socket>) {
    this.socket = connect(port, '127.0.0.1');
    this.socket.setNoDelay(true);
    sockets.add(this.socket);
    this.socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
    });
    this.socket.on('error', () => {});
    this.socket.on('close', () => {
      this.closed = true;
      sockets.delete(this.socket);
    });
    this.connected = new Promise((resolve) => this.socket.once('connect', () => resolve()));
  }

  /** The status of the response, once its head came. */
  get status(): number | undefined {
    const match = /^HTTP\/1\.1 (\d{3}) /.exec(this.received.toString('latin1', 0, 16));
    return match === null ? undefined : Number(match[1]);
  }

  get head(): string | undefined {
    const end = this.received.indexOf('\r\n\r\n');
    return end === -1 ? undefined : this.received.toString('latin1', 0, end);
  }

  /** What came after the 101's head. */
  get afterHead(): Buffer {
    const end = this.received.indexOf('\r\n\r\n');
    return end === -1 ? Buffer.alloc(0) : this.received.subarray(end + 4);
  }

  async write(bytes: Buffer): Promise<void> {
    if (this.socket.destroyed || !this.socket.writable) return;
    await new Promise<void>((resolve) => this.socket.write(bytes, () => resolve()));
  }
}

/* ------------------------------------------------------------------------------------------- */
/* The fuzz                                                                                    */
/* ------------------------------------------------------------------------------------------- */

interface Harness {
  readonly server: Server;
  readonly port: number;
  readonly client: Client;
  readonly logger: ReturnType<typeof recordingLogger>;
  /** Hook calls by X-Fuzz-Id. */
  readonly hooked: Map<string, number>;
  readonly scenarios: Map<string, Scenario>;
  readonly sockets: Set<Socket>;
  readonly stats: { runs: number; outcomes: Histogram; why: Histogram };
}

async function startHarness(t: TestContext, under: TransportUnderTest): Promise<Harness> {
  const logger = recordingLogger();
  const hooked = new Map<string, number>();
  const scenarios = new Map<string, Scenario>();
  const server = new Server({
    transport: under.server({ path: WS_PATH }),
    logger,
    upgradeTimeout: 2_000,
    beforeUpgrade: async (request: UpgradeRequest) => {
      const id = request.headers['x-fuzz-id'] ?? '';
      hooked.set(id, (hooked.get(id) ?? 0) + 1);
      const scenario = scenarios.get(id);
      await delay(scenario?.hookDelay ?? 0);
      return scenario?.refuse === true ? { accept: false, status: 403, reason: 'fuzz says no' } : true;
    },
    onRequest: (_conn, msg) => msg.payload,
  });
  await server.listen();
  t.after(() => server.shutdown({ timeout: 500 }));
  const port = server.address()!.port;
  const client = new Client(`ws://127.0.0.1:${port}${WS_PATH}`, {
    transport: wsClientTransport(),
    reconnect: false,
    logger: recordingLogger(),
  });
  t.after(() => client.close());
  await client.connect();
  const sockets = new Set<Socket>();
  t.after(() => {
    for (const socket of sockets) socket.destroy();
  });
  return {
    server,
    port,
    client,
    logger,
    hooked,
    scenarios,
    sockets,
    stats: { runs: 0, outcomes: new Histogram(), why: new Histogram() },
  };
}

/** Writes `bytes` as the scenario says: whole, in chunks, or a byte at a time (a turn apart). */
async function deliver(peer: RawPeer, bytes: Buffer, delivery: Delivery): Promise<void> {
  if (delivery.how === 'whole' || bytes.length === 0) return peer.write(bytes);
  const bounds =
    delivery.how === 'bytes' && bytes.length <= 2_000
      ? Array.from({ length: bytes.length + 1 }, (_, i) => i)
      : [
          0,
          ...(delivery.how === 'chunks' ? delivery.cuts : [0.25, 0.5, 0.75])
            .map((c) => Math.floor(c * bytes.length))
            .sort((a, b) => a - b),
          bytes.length,
        ];
  for (let i = 1; i < bounds.length; i++) {
    const part = bytes.subarray(bounds[i - 1], bounds[i]);
    if (part.length === 0) continue;
    await peer.write(part);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function describeScenario(scenario: Scenario): string {
  return JSON.stringify(
    scenario,
    (_k, v) =>
      v instanceof Uint8Array
        ? hex(v)
        : typeof v === 'string' && v.length > 80
          ? `${v.slice(0, 20)}… (${v.length})`
          : v,
    1,
  );
}

async function runScenario(h: Harness, transport: TransportName, scenario: Scenario): Promise<void> {
  h.stats.runs++;
  const id = `f${h.stats.runs}-${randomInt(1e9)}`;
  h.scenarios.set(id, scenario);
  const built: Built =
    'junk' in scenario.request
      ? { bytes: Buffer.from(scenario.request.junk), key: undefined, id }
      : buildRequest(scenario.request, id);
  const expected: Expectation =
    'junk' in scenario.request
      ? { upgrade: false, refusals: new Set(transport === 'ws' ? ['400'] : UWS_PARSER), why: 'not HTTP' }
      : expectOutcome(scenario.request, built, transport);
  h.stats.why.add(expected.why);
  const peer = new RawPeer(h.port, h.sockets);
  await peer.connected;
  try {
    const { hangup } = scenario;
    if (hangup.when === 'inside') {
      // Cut inside the request: the transport never sees it whole, so never upgrades or asks.
      const cut = Math.floor(hangup.at * built.bytes.length);
      await deliver(peer, built.bytes.subarray(0, cut), scenario.delivery);
      if (hangup.how === 'destroy') peer.socket.destroy();
      else peer.socket.end();
      await waitFor(
        () => peer.closed || peer.status !== undefined,
        SETTLE_MS,
        'an answer or a close after a FIN',
      ).catch(() => {
        // uWS may keep a half-closed connection whose request it cannot parse until its timeout.
        assert.ok(
          transport === 'uws' && expected.refusals.has('unanswered'),
          `no answer or close after a FIN (${expected.why})`,
        );
      });
      assert.notEqual(peer.status, 101, 'a cut request was upgraded');
      assert.equal(h.hooked.get(id), undefined, 'beforeUpgrade was asked about a cut request');
      h.stats.outcomes.add(`cut ${peer.status ?? 'closed'}`);
      return;
    }
    let bytes = built.bytes;
    const frameText = `early ${id}`;
    if (scenario.after === 'frame') bytes = Buffer.concat([bytes, echoFrame(frameText)]);
    if (scenario.after === 'garbage-frame') bytes = Buffer.concat([bytes, Buffer.from([0xff, 0xff, 0x00, 0x01, 0x02])]);
    if (scenario.after === 'second-request' && !('junk' in scenario.request)) {
      bytes = Buffer.concat([bytes, buildRequest(scenario.request, `${id}-2`).bytes]);
    }
    await deliver(peer, bytes, scenario.delivery);
    if (hangup.when === 'after-request') {
      peer.socket.destroy();
      // The hook may still be deciding: nothing must come of it (checked by the connection count).
      if (expected.upgrade) await waitFor(() => (h.hooked.get(id) ?? 0) <= 1, SETTLE_MS);
      h.stats.outcomes.add('destroyed after the request');
      return;
    }
    const mayStayUnanswered = expected.refusals.has('unanswered');
    try {
      await waitFor(
        () => peer.closed || peer.head !== undefined,
        mayStayUnanswered ? UNANSWERED_MS : SETTLE_MS,
        'an answer',
      );
    } catch (error) {
      if (!mayStayUnanswered) throw new Error(`no answer within ${SETTLE_MS} ms (${expected.why})`, { cause: error });
    }
    const status = peer.status;
    const outcome = status === undefined ? (peer.closed ? 'closed' : 'unanswered') : String(status);
    h.stats.outcomes.add(outcome);
    const calls = h.hooked.get(id) ?? 0;
    if (transport === 'uws' && scenario.after === 'second-request' && outcome === 'closed') {
      // uWS reads a request pipelined behind an upgrade while the owner decides, and drops the
      // connection for it (RFC 6455 §4.1: a client sends nothing more before the 101); `ws` gets
      // those bytes as the upgrade's `head`. Either way nothing is upgraded.
      assert.ok(calls <= 1, 'beforeUpgrade asked twice');
      return;
    }
    if (!expected.upgrade) {
      assert.ok(
        expected.refusals.has(outcome),
        `answered ${outcome}, expected one of ${[...expected.refusals]} (${expected.why})`,
      );
      assert.equal(calls, 0, `beforeUpgrade was asked about an invalid request (${expected.why})`);
      return;
    }
    assert.equal(calls, 1, 'beforeUpgrade asked once about a valid request');
    if (scenario.refuse) {
      assert.equal(outcome, '403', 'the refusal of beforeUpgrade');
      return;
    }
    assert.equal(outcome, '101', 'a valid request is upgraded');
    const head = peer.head!.toLowerCase();
    const accept = createHash('sha1').update(`${built.key}${GUID}`).digest('base64').toLowerCase();
    assert.ok(head.includes(`sec-websocket-accept: ${accept}`), 'Sec-WebSocket-Accept');
    const spec = scenario.request as RequestSpec;
    const firstOffered = spec.protocol?.split(',')[0]?.trim();
    if (firstOffered === undefined) assert.ok(!head.includes('sec-websocket-protocol'), 'a subprotocol nobody offered');
    else
      assert.ok(
        head.includes(`sec-websocket-protocol: ${firstOffered.toLowerCase()}`),
        'the first subprotocol offered',
      );
    // A working duplexwire connection: a request written by hand after the 101 gets its reply.
    // (What came before the 101 is dropped by uWS, documented; `ws` reads it: a garbage frame
    // or a second request there closes the connection with 1002, which is fine.)
    const probe = `probe ${id}`;
    await peer.write(echoFrame(probe));
    await waitFor(
      () => peer.closed || serverFrames(peer.afterHead).messages.includes(echoReplyHex(probe)),
      SETTLE_MS,
      'the reply to a request after the 101',
    );
    const { messages, closed, closeCode } = serverFrames(peer.afterHead);
    const earlyDelivered = messages.includes(echoReplyHex(frameText));
    if (
      transport === 'uws' &&
      scenario.after === 'frame' &&
      scenario.delivery.how !== 'whole' &&
      (closed || peer.closed)
    ) {
      // uWS drops what arrives before it sent the 101 (documented; RFC 6455 §4.1: a client sends
      // nothing before it). A frame written with the request in pieces can straddle that moment:
      // its start dropped, its rest read as a frame of its own, a protocol error on which uWS
      // closes the connection (with 1002, or at once without a close frame).
      if (closeCode !== undefined) assert.equal(closeCode, 1002, 'an early frame cut at the 101 is a protocol error');
      h.stats.outcomes.add('uws: early frame cut at the 101');
      return;
    }
    if (scenario.after === 'none' || scenario.after === 'frame') {
      assert.ok(!peer.closed && !closed, 'a clean upgraded connection was closed');
      assert.ok(messages.includes(echoReplyHex(probe)), 'the reply to a request after the 101');
      // Frames written with the request: `ws` reads them, uWS drops them (documented) when they
      // come in the request's read. Written in pieces, a frame may also come whole after uWS sent
      // the 101, and is then read (or straddle it: above).
      if (scenario.after === 'frame' && (transport === 'ws' || scenario.delivery.how === 'whole')) {
        assert.equal(earlyDelivered, transport === 'ws', 'a frame sent with the request');
      }
    }
    h.stats.outcomes.add(peer.closed || closed ? '101 then closed' : '101 and a reply');
  } finally {
    peer.socket.destroy();
    h.scenarios.delete(id);
    // Nothing is left on the server but the well-behaved client's connection.
    await waitFor(() => h.server.connections.size === 1, SETTLE_MS, 'the server to let go of the connection');
  }
}

/* ------------------------------------------------------------------------------------------- */
/* Tests                                                                                       */
/* ------------------------------------------------------------------------------------------- */

export function upgradeFuzz(under: TransportUnderTest): void {
  const transport = under.name as TransportName;

  describe(`${transport}: the HTTP upgrade handshake`, { concurrency: true }, () => {
    test(`upgrade fuzz over raw TCP (${RUNS} scenarios)`, async (t) => {
      const faults = watchFaults(t);
      const h = await startHarness(t, under);
      const started = performance.now();
      await checkFuzz(
        scenarioArb,
        async (scenario) => {
          await runScenario(h, transport, scenario);
          assert.deepEqual(faults, [], 'uncaught exception, unhandled rejection or warning');
        },
        { runs: RUNS, seed: SEED, path: PATH, timeLimit: PROPERTY_MS, label: transport, describe: describeScenario },
      );
      console.log(
        `upgrade-fuzz ${transport}: ${JSON.stringify({ seed: SEED, runs: h.stats.runs, ms: Math.round(performance.now() - started), outcomes: h.stats.outcomes, why: h.stats.why })}`,
      );
      t.diagnostic(`seed ${SEED} (FUZZ_SEED=${SEED} FUZZ_RUNS=${RUNS} replays this run)`);

      // Health: the client connected all along still gets replies, a new one connects.
      assert.equal(payloadText(await h.client.request('echo', utf8('after'), { timeout: SETTLE_MS })), 'after');
      const fresh = new Client(`ws://127.0.0.1:${h.port}${WS_PATH}`, {
        transport: wsClientTransport(),
        reconnect: false,
        logger: recordingLogger(),
      });
      t.after(() => fresh.close());
      await fresh.connect();
      assert.equal(payloadText(await fresh.request('echo', utf8('fresh'), { timeout: SETTLE_MS })), 'fresh');
      await fresh.close();
      await waitFor(() => h.server.connections.size === 1, SETTLE_MS, 'the fresh client to leave');
      assert.deepEqual(faults, [], 'uncaught exception, unhandled rejection or warning');
      const logged = h.logger.entries.filter((e) => e.level === 'error' || e.level === 'warn');
      assert.deepEqual(logged, [], 'the server logged errors or warnings');
      if (RUNS >= DEFAULT_RUNS && PATH === undefined) {
        const why = `seed ${SEED}: ${JSON.stringify(h.stats.outcomes)}`;
        assert.ok(h.stats.outcomes.get('101 and a reply') > 0, `no upgrade; ${why}`);
        assert.ok(h.stats.outcomes.get('400') > 0, `no 400; ${why}`);
      }
    });

    test('malformed handshakes are refused alike, before beforeUpgrade is asked', async (t) => {
      const faults = watchFaults(t);
      const h = await startHarness(t, under);
      const ok = (extra = '', line = `GET ${WS_PATH} HTTP/1.1`, connection = 'Upgrade'): string =>
        `${line}\r\nHost: 127.0.0.1\r\nConnection: ${connection}\r\nUpgrade: websocket\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${VALID_KEY()}\r\n${extra}`;
      // Each once answered differently by the two transports, or by 101 (see CHANGELOG).
      const cases: Array<readonly [string, string, string]> = [
        ['no Connection: upgrade (uWS answered 101)', `${ok('', undefined, 'keep-alive')}\r\n`, '426'],
        ['a repeated subprotocol (uWS answered 101)', `${ok('Sec-WebSocket-Protocol: a, a\r\n')}\r\n`, '400'],
        ['a subprotocol with a space (uWS answered 101)', `${ok('Sec-WebSocket-Protocol: a b\r\n')}\r\n`, '400'],
        ['20 KB of headers in one write (uWS answered 101)', `${ok(`X-Big: ${'b'.repeat(20_000)}\r\n`)}\r\n`, '431'],
        ['a bad key (ws asked the hook)', `${ok().replace(/Key: .*\r\n/, 'Key: not-a-key\r\n')}\r\n`, '400'],
        ['version 12 (ws asked the hook)', `${ok().replace('Version: 13', 'Version: 12')}\r\n`, '400'],
        ['POST (ws asked the hook, then 405)', `${ok('', `POST ${WS_PATH} HTTP/1.1`)}\r\n`, '400'],
        // uWS's parser answers neither (documented); ws upgraded both.
        [
          'HTTP/1.0 (ws answered 101)',
          `${ok('', `GET ${WS_PATH} HTTP/1.0`)}\r\n`,
          transport === 'ws' ? '400' : 'no 101',
        ],
        [
          'no Host (ws answered 101)',
          `${ok().replace('Host: 127.0.0.1\r\n', '')}\r\n`,
          transport === 'ws' ? '400' : 'no 101',
        ],
      ];
      for (const [what, request, expected] of cases) {
        const peer = new RawPeer(h.port, h.sockets);
        await peer.connected;
        await peer.write(Buffer.from(request, 'latin1'));
        await waitFor(
          () => peer.closed || peer.head !== undefined,
          expected === 'no 101' ? UNANSWERED_MS : SETTLE_MS,
          what,
        ).catch(() => {});
        if (expected === 'no 101') assert.notEqual(peer.status, 101, what);
        else assert.equal(String(peer.status), expected, what);
        if (what.startsWith('version'))
          assert.match(peer.head ?? '', /\r\nSec-WebSocket-Version: 13, 8(\r\n|$)/i, what);
        peer.socket.destroy();
      }
      // The well-behaved client's upgrade carries no X-Fuzz-Id.
      assert.deepEqual(
        [...h.hooked.keys()].filter((id) => id !== ''),
        [],
        'beforeUpgrade was asked about a malformed handshake',
      );
      assert.equal(h.server.connections.size, 1);
      assert.deepEqual(faults, []);
    });

    test('a client leaving while beforeUpgrade decides: the hook is told, nothing waits for the deadline', async (t) => {
      const faults = watchFaults(t);
      const logger = recordingLogger();
      const asked: string[] = [];
      const aborted: string[] = [];
      const server = new Server({
        transport: under.server({ path: WS_PATH }),
        logger,
        upgradeTimeout: 300,
        beforeUpgrade: (request) => {
          asked.push(request.query);
          request.signal?.addEventListener('abort', () => aborted.push(request.query));
          // 'never' never settles; 'late' accepts after its client left; others at once.
          if (request.query === 'never') return new Promise<boolean>(() => {});
          if (request.query === 'late') return delay(150).then(() => true);
          return true;
        },
        onRequest: (_conn, msg) => msg.payload,
      });
      await server.listen();
      t.after(() => server.shutdown({ timeout: 200 }));
      const port = server.address()!.port;
      const sockets = new Set<Socket>();
      t.after(() => {
        for (const socket of sockets) socket.destroy();
      });
      for (const query of ['never', 'late']) {
        const peer = new RawPeer(port, sockets);
        await peer.connected;
        const request = `GET ${WS_PATH}?${query} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${VALID_KEY()}\r\n\r\n`;
        await peer.write(Buffer.from(request, 'latin1'));
        await waitFor(() => asked.includes(query), SETTLE_MS, `the hook for ${query}`);
        peer.socket.destroy();
      }
      // Both hooks heard their client leave; past the deadline, the one that never settled was not
      // timed out (its client was gone: no warning), the late accept opened nothing, and no 101
      // went to a dead socket (no error, no fault).
      await waitFor(() => aborted.length === 2, SETTLE_MS, 'both hooks told');
      assert.deepEqual(aborted, ['never', 'late']);
      await delay(600);
      const warnings = logger.entries.filter((e) => e.level === 'warn' || e.level === 'error');
      assert.deepEqual(
        warnings.map((e) => e.message),
        [],
      );
      assert.equal(server.connections.size, 0);
      assert.deepEqual(faults, []);
      const client = new Client(`ws://127.0.0.1:${port}${WS_PATH}`, {
        transport: wsClientTransport(),
        reconnect: false,
        logger: recordingLogger(),
      });
      t.after(() => client.close());
      assert.equal(payloadText(await client.request('echo', utf8('still'), { timeout: SETTLE_MS })), 'still');
    });

    slowlorisTest(under, transport);
  });
}

/**
 * A peer that never completes its request is closed by the transport's handshake timeout: the ws
 * transport's `handshakeTimeout` (here short), uWS's fixed HTTP timeout (10 s, checked every 4 s).
 */
function slowlorisTest(under: TransportUnderTest, transport: TransportName): void {
  const timeout = transport === 'ws' ? 400 : 10_000;
  // uSockets checks its timeouts every 4 s; a loaded machine adds its own.
  const bound = transport === 'ws' ? timeout + 1_500 : timeout + 6_000;
  test(`a peer that never completes its upgrade request is closed after ${timeout} ms (slowloris)`, async (t) => {
    const faults = watchFaults(t);
    if (transport === 'ws') assert.equal(DEFAULT_HANDSHAKE_TIMEOUT, 10_000, 'the same default as uWS');
    const serverTransport: ServerTransport =
      transport === 'ws'
        ? wsTransport({ host: '127.0.0.1', port: 0, path: WS_PATH, handshakeTimeout: timeout })
        : under.server({ path: WS_PATH });
    const logger = recordingLogger();
    const server = new Server({
      transport: serverTransport,
      logger,
      upgradeTimeout: timeout * 3,
      // Longer than the handshake timeout: a complete request's decision is not cut by it.
      beforeUpgrade: (request) => (request.query === 'slow' ? delay(timeout * 1.5).then(() => true) : true),
      onRequest: (_conn, msg) => msg.payload,
    });
    await server.listen();
    t.after(() => server.shutdown({ timeout: 200 }));
    const port = server.address()!.port;
    const sockets = new Set<Socket>();
    const timers: Array<ReturnType<typeof setInterval>> = [];
    t.after(() => {
      for (const timer of timers) clearInterval(timer);
      for (const socket of sockets) socket.destroy();
    });
    const request = (query = ''): string =>
      `GET ${WS_PATH}${query} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${VALID_KEY()}\r\n\r\n`;
    const started = performance.now();
    const peers = new Map<string, RawPeer>();
    const closedAt = new Map<string, number>();
    const open = async (name: string): Promise<RawPeer> => {
      const peer = new RawPeer(port, sockets);
      peer.socket.on('close', () => closedAt.set(name, performance.now() - started));
      peers.set(name, peer);
      await peer.connected;
      return peer;
    };
    await open('silent');
    await (await open('partial request line')).write(Buffer.from('GET /w', 'latin1'));
    await (await open('partial headers')).write(Buffer.from(request().slice(0, 60), 'latin1'));
    // One header byte at a time, never the end: data must not reset the deadline.
    const trickle = await open('trickle');
    await trickle.write(Buffer.from(request().slice(0, -2), 'latin1'));
    timers.push(
      setInterval(
        () => void trickle.write(Buffer.from('X-Slow: 1\r\n'.slice(0, 1), 'latin1')),
        Math.min(timeout / 4, 1_000),
      ),
    );
    const slow = await open('upgraded after a slow decision');
    await slow.write(Buffer.from(request('?slow'), 'latin1'));
    const upgraded = await open('upgraded');
    await upgraded.write(Buffer.from(request(), 'latin1'));

    const stalled = ['silent', 'partial request line', 'partial headers', 'trickle'];
    await waitFor(
      () => stalled.every((name) => closedAt.has(name)),
      bound,
      `the stalled peers to be closed (${JSON.stringify([...closedAt])})`,
    );
    for (const name of stalled) {
      const at = closedAt.get(name)!;
      assert.ok(at >= timeout * 0.75 && at <= bound, `${name} closed after ${Math.round(at)} ms`);
      assert.equal(peers.get(name)!.status, undefined, `${name} got an answer`);
    }
    // Complete requests are not cut by it: the slow decision (past the timeout) and the quick one upgraded.
    await waitFor(() => slow.status !== undefined, timeout * 3, 'the slow decision');
    for (const peer of [slow, upgraded]) {
      assert.equal(peer.status, 101);
      assert.equal(peer.closed, false);
      const text = `alive ${performance.now()}`;
      await peer.write(echoFrame(text));
      await waitFor(() => serverFrames(peer.afterHead).messages.includes(echoReplyHex(text)), SETTLE_MS, 'an echo');
    }
    assert.equal(server.connections.size, 2);
    assert.deepEqual(faults, []);
    assert.deepEqual(
      logger.entries.filter((e) => e.level === 'error' || e.level === 'warn'),
      [],
    );
  });
}
