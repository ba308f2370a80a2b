/**
 * Client fuzz over real sockets, the mirror image of wire-fuzz: a raw `ws` WebSocketServer on
 * 127.0.0.1 plays a broken or malicious duplexwire server against a real `Client` (the one of
 * `duplexwire/client`, over its default ws transport). Frames are written by hand on the TCP
 * socket, so the fuzz controls every byte: fragmentation, TCP splits, malformed frames, close
 * frames with any code.
 *
 * Each fast-check run is a scenario: a client setup (protocol minor, a server-request handler
 * that echoes, fails, is missing or never answers, reconnect on or off, sub-protocol, serverTimeout)
 * and one or two hostile connections, each a plan:
 * - a handshake: an AcceptConf (v2.0, v2.1, odd minors, any read timeout, whole, fragmented, split
 *   across TCP writes, or in the same write as the 101 and what follows), a mutated one, a wrong
 *   major, another sub-protocol, another message or a text frame first, a malformed frame,
 *   silence until the connect timeout, or a hang-up;
 * - steps: what the server sends (valid messages of every type, replies and error replies to the
 *   client's requests and to ids never issued or not issued yet, duplicates, sessions with good and
 *   broken JSON, signals, requests and cancels, mutated and random messages, text frames, messages
 *   at and over the client's size limit, pings, malformed frames) interleaved with what the
 *   client does (requests with and without timeouts and AbortSignals, aborts, signals);
 * - an ending: a close frame with any code (valid, reserved, invalid, empty, a 1-byte payload,
 *   an overlong or invalid UTF-8 reason), an abrupt destroy, a TCP FIN, client.close(), or none
 *   (the server never answers again).
 * Connections past the plans go to a well-behaved duplexwire Server on the same port.
 *
 * A model (`handshakeModel`, `connectionModel`, built on the pure codec and PROTOCOL.md) says what
 * the client must do; the test checks, per scenario:
 * - no uncaught exception, unhandled rejection or process warning;
 * - every `client.request()` settles once, in time (its timeout, or its abort, plus MARGIN_MS;
 *   requests without a timeout by client.close()), with a reply payload the server sent for its id
 *   or a typed error the wire or the clock explains (RequestError, InternalError, ... only when the
 *   server sent that reply; TimeoutError only after the timeout; CanceledError only after an abort);
 *   never a plain Error;
 * - what the raw server receives: binary messages that decode, ClientConf `22 01` first exactly when
 *   both sides speak v2.1, no v2.1 byte otherwise, request ids increasing, cancels only for the
 *   client's own requests, each request at most once over all connections, replies to server
 *   requests that match the handler (and one per request while the connection stays open), a
 *   session restore before any request, signals only when `signal()` said so;
 * - the close code the raw server sees: the one PROTOCOL.md names for the first violation (1002,
 *   1003, 1007, 1009, 1008 for too many requests in flight), 1002 for a failed handshake, the echo
 *   of a valid close code (RFC 6455 §5.5.1; 1002/1007 for an invalid one), 1000 for client.close();
 * - `client.state` only moves along the documented transitions; connect() settles consistently;
 *   the session the client holds is one the server sent in valid JSON (exactly the model's when no
 *   restore interfered); with reconnect on, the client reconnects to the good server after the
 *   hostile one drops it and a request then succeeds; with it off (or after an incompatible
 *   server), it stays disconnected;
 * - the signals the client emits are the ones the server sent, in order, up to the violation;
 *   heartbeats come no faster than 0.75 x the announced read timeout, and none under 1 ms;
 * - client.close() resolves within CLOSE_BOUND_MS, after which no timer or socket made during the
 *   scenario is left (async_hooks bookkeeping of Timeout and TCPWRAP resources, unref'd ones
 *   included, with a bounded wait). One allowance: a connection attempt whose socket was already
 *   opening when close() ran may still reach the server (the transport contract cannot abort a
 *   connect); it must come at once, and be closed with 1000 without a message (`LateConnection`).
 * A histogram of outcomes is printed, and a minimum coverage is asserted.
 *
 * Where the model is deliberately loose, and why:
 * - messages in the same TCP read as the 101 wait in the client's early buffer while the
 *   WebSocket layer reads on, so a violation that layer catches itself (size, UTF-8, framing)
 *   later in that burst may close first (`connectionModel`); past the burst, the server waits
 *   until the client finished its handshake before it sends more;
 * - an ending that does not wait for the client to read everything (client.close(), a destroy)
 *   may cut the connection after any message; and a client whose handler never answers counts
 *   a cancel as a released request only a microtask later, so its 1008 is "possible" before it
 *   is "certain";
 * - a v2.0 connection (the server announced minor 0, or the client speaks 2.0) may see server
 *   requests answered or ignored: they are not part of v2.0 and PROTOCOL.md does not say which.
 *
 * Environment (as wire-fuzz):
 *   FUZZ_RUNS=<n>   scenarios (default 100; 300 with CI=true). The coverage minimums are only
 *                   asserted at the default count or above, and not when replaying a path.
 *   FUZZ_SEED=<n>   fast-check seed (default: random, printed in the summary and in any failure).
 *   FUZZ_PATH=<p>   with FUZZ_SEED, replays exactly the counterexample a failure printed.
 */
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { isUtf8 } from 'node:buffer';
import { randomBytes, randomInt } from 'node:crypto';
import { createServer } from 'node:http';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { WebSocket, WebSocketServer } from 'ws';
import { decode, idToNumber } from '../../protocol/decode.ts';
import { encodeAcceptConf } from '../../protocol/encode.ts';
import { encodeUtf8 } from '../../protocol/payload.ts';
import type { Encoding, Message, Payload } from '../../protocol/types.ts';
import {
  CanceledError,
  Client,
  type ClientOptions,
  type ClientState,
  ConnectError,
  DisconnectedError,
  DuplexwireError,
  IncompatibleServerError,
  InternalError,
  MaxSessionConnectionsError,
  ProtocolError,
  type RequestContext,
  RequestError,
  SessionNotFoundError,
  SessionsDisabledError,
  ShutdownError,
  TimeoutError,
} from '../../src/client/index.ts';
import { Server } from '../../src/server/server.ts';
import { wsTransport } from '../../transports/ws.ts';
import { delay, hex, recordingLogger, waitFor } from '../helpers.ts';
import {
  checkFuzz,
  concat,
  envInteger,
  fragmentBounds,
  Histogram,
  idBytes,
  invalidUtf8Arb,
  latin1,
  mutate,
  mutationArb,
  payloadArb,
  requestBytes,
  signalBytes,
  TYPE_BYTES,
  utf16PayloadArb,
  validTextArb,
  watchFaults,
} from './fuzz-helpers.ts';

/* ------------------------------------------------------------------------------------------- */
/* Settings                                                                                    */
/* ------------------------------------------------------------------------------------------- */

const DEFAULT_RUNS = process.env.CI === 'true' ? 300 : 100;
const RUNS = envInteger('FUZZ_RUNS') ?? DEFAULT_RUNS;
const SEED = envInteger('FUZZ_SEED') ?? randomInt(1, 2 ** 31);
const PATH = process.env.FUZZ_PATH;
/** The client's maxMessageSize, small so that oversized messages are cheap: 256 bytes pass, 257 close 1009. */
const LIMIT = 256;
/** The client's connectTimeout: a silent server costs this much, a busy machine must not trip it. */
const CONNECT_TIMEOUT = 200;
/** The client's requestTimeout: the bound of requests without their own, and of session restores. */
const REQUEST_TIMEOUT = 150;
/** What a timeout or an abort may take beyond its due time to settle a request: the machine is noisy. */
const MARGIN_MS = 1_500;
/** client.close() resolves within this: the raw server always completes the closing handshake. */
const CLOSE_BOUND_MS = 1_500;
/** Bound of every wait on a socket (a reconnect, a close, a reply). */
const SETTLE_MS = 3_000;
/** After close() and the server's sockets are gone, what the client made must be released within this. */
const RELEASE_MS = 1_000;
/** Server requests a client whose handler never answers may hold; one more closes 1008. */
const HANG_INFLIGHT = 3;
/** Whole property, shrinking included: a hang fails instead of eating the suite's time. */
const PROPERTY_MS = 60_000;
/** The sub-protocol of clients that use one. */
const SUB = 'fuzz.v1';

/** Close codes a receiver accepts in a close frame (RFC 6455 §7.4.1 and the IANA registry). */
function isValidCloseCode(code: number): boolean {
  return (
    (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999)
  );
}

/* ------------------------------------------------------------------------------------------- */
/* Frames a server writes (unmasked, RFC 6455 §5.1)                                            */
/* ------------------------------------------------------------------------------------------- */

function serverFrame(
  first: number,
  payload: Uint8Array,
  { masked = false, declared = BigInt(payload.length) } = {},
): Buffer {
  const mask = masked ? 0x80 : 0;
  let header: Buffer;
  if (declared < 126n) {
    header = Buffer.from([first, mask | Number(declared)]);
  } else if (declared < 65536n) {
    header = Buffer.alloc(4);
    header[0] = first;
    header[1] = mask | 126;
    header.writeUInt16BE(Number(declared), 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = first;
    header[1] = mask | 127;
    header.writeBigUInt64BE(declared, 2);
  }
  // A zero masking key leaves the payload as it is.
  return Buffer.concat([header, masked ? Buffer.alloc(4) : Buffer.alloc(0), payload]);
}

/** One message as frames: `fragments` data frames (a ping between them when asked). */
function messageFrames(opcode: 1 | 2, bytes: Uint8Array, fragments: number, pingBetween = false): Buffer[] {
  const cuts = fragmentBounds(bytes.length, fragments);
  const frames: Buffer[] = [];
  for (let i = 0; i < cuts.length - 1; i++) {
    const last = i === cuts.length - 2;
    frames.push(serverFrame((last ? 0x80 : 0) | (i === 0 ? opcode : 0), bytes.subarray(cuts[i], cuts[i + 1])));
    if (pingBetween && !last) frames.push(serverFrame(0x89, latin1('between')));
  }
  return frames;
}

/** Frame-level faults a client must refuse (RFC 6455 §5.2, §5.4, §5.5; ws closes 1002, or 1009 for a length). */
type FrameFault =
  | { readonly fault: 'huge-length'; readonly declared: bigint }
  | { readonly fault: 'reserved-bits'; readonly rsv: number }
  | { readonly fault: 'reserved-opcode'; readonly opcode: number }
  | { readonly fault: 'stray-continuation' }
  | { readonly fault: 'long-ping' }
  | { readonly fault: 'fragmented-ping' }
  | { readonly fault: 'masked' }
  | { readonly fault: 'data-inside-fragments' };

function faultBytes(f: FrameFault): Buffer {
  const small = Uint8Array.of(0x3f, 0x00, 0x21); // an unnamed binary signal "!"
  switch (f.fault) {
    case 'huge-length':
      return serverFrame(0x82, small, { declared: f.declared });
    case 'reserved-bits':
      return serverFrame(0x82 | f.rsv, small);
    case 'reserved-opcode':
      return serverFrame(0x80 | f.opcode, small);
    case 'stray-continuation':
      return serverFrame(0x80, small);
    case 'long-ping':
      return serverFrame(0x89, new Uint8Array(126));
    case 'fragmented-ping':
      return serverFrame(0x09, small);
    case 'masked':
      return serverFrame(0x82, small, { masked: true });
    case 'data-inside-fragments':
      return Buffer.concat([serverFrame(0x02, small.subarray(0, 1)), serverFrame(0x82, small.subarray(1))]);
  }
}

function faultCode(f: FrameFault): number {
  return f.fault === 'huge-length' ? 1009 : 1002;
}

/* ------------------------------------------------------------------------------------------- */
/* Scenarios                                                                                   */
/* ------------------------------------------------------------------------------------------- */

/** What the client's onRequest does with a server request (v2.1). */
type Handler = 'echo' | 'fail' | 'none' | 'hang';

interface Setup {
  readonly protocolMinor: 0 | 1;
  readonly handler: Handler;
  readonly reconnect: boolean;
  readonly subProtocol: string;
  readonly serverTimeout: 0 | 6000;
  /** Requests issued before connect(), waiting for the connection. */
  readonly early: number;
}

type Delivery =
  | { readonly how: 'whole' }
  | { readonly how: 'fragments'; readonly count: number; readonly pingBetween: boolean }
  /** The frame's bytes in `pieces` TCP writes, `pauseMs` apart. */
  | { readonly how: 'split'; readonly pieces: number; readonly pauseMs: number };

type Ending =
  | { readonly end: 'never' }
  | { readonly end: 'close'; readonly code: number | 'none' | 'one-byte'; readonly reason: CloseReason }
  | { readonly end: 'destroy' }
  | { readonly end: 'fin' }
  | { readonly end: 'client-close' };

type CloseReason = 'none' | 'short' | 'max' | 'long' | 'bad-utf8';

type Handshake =
  | { readonly kind: 'message'; readonly text: boolean; readonly bytes: Uint8Array; readonly delivery: Delivery }
  | { readonly kind: 'silent' }
  | { readonly kind: 'fault'; readonly fault: FrameFault }
  | { readonly kind: 'hang-up'; readonly ending: Ending };

/** Which id a reply carries, chosen when it is written. */
type Target =
  /** The id of the n-th (mod count) id-carrying message the client sent on this connection. */
  | { readonly to: 'received'; readonly n: number }
  /** Past the highest id the client used on this connection (an id not issued yet). */
  | { readonly to: 'future'; readonly ahead: number }
  | { readonly to: 'id'; readonly id: Uint8Array };

type ReplyShape =
  | { readonly r: 'reply'; readonly encoding: Encoding; readonly data: Uint8Array }
  | { readonly r: 'error'; readonly code: string; readonly message: Uint8Array }
  | { readonly r: 'special'; readonly type: 1 | 2 | 3 | 4 | 5 }
  | { readonly r: 'session'; readonly json: string };

type ServerOp =
  | { readonly op: 'send'; readonly bytes: Uint8Array; readonly delivery: Delivery }
  | { readonly op: 'text'; readonly bytes: Uint8Array; readonly fragments: number }
  | { readonly op: 'reply'; readonly target: Target; readonly shape: ReplyShape; readonly twice: boolean }
  | { readonly op: 'ping' | 'pong'; readonly bytes: Uint8Array }
  | { readonly op: 'fault'; readonly fault: FrameFault };

type ClientStep =
  | {
      readonly op: 'request';
      readonly encoding: Encoding;
      readonly timeout: number | 'default';
      readonly abortable: boolean;
    }
  | { readonly op: 'abort'; readonly n: number }
  | { readonly op: 'signal' }
  | { readonly op: 'pause'; readonly ms: number };

type Step = ServerOp | ClientStep;

interface Plan {
  readonly handshake: Handshake;
  /** Server ops written in the same TCP write as the 101 and the AcceptConf. */
  readonly burst: number;
  readonly steps: readonly Step[];
  /** Waits until the client read everything (a ping's pong) before the ending. */
  readonly sync: boolean;
  readonly ending: Ending;
}

interface Scenario {
  readonly setup: Setup;
  readonly plans: readonly Plan[];
}

/**
 * How many of the first steps go out with the 101 and the AcceptConf: the burst's server ops, up
 * to the first client step or split delivery. Only after an AcceptConf sent whole or fragmented.
 */
function burstLength(plan: Plan): number {
  const { handshake } = plan;
  if (handshake.kind !== 'message' || handshake.text || handshake.delivery.how === 'split') return 0;
  let n = 0;
  for (const step of plan.steps) {
    if (n >= plan.burst || !isServerOp(step) || (step.op === 'send' && step.delivery.how === 'split')) break;
    n++;
  }
  return n;
}

function isServerOp(step: Step): step is ServerOp {
  return (
    step.op === 'send' ||
    step.op === 'text' ||
    step.op === 'reply' ||
    step.op === 'ping' ||
    step.op === 'pong' ||
    step.op === 'fault'
  );
}

function describeScenario(scenario: Scenario): string {
  return JSON.stringify(
    scenario,
    (_key, value: unknown) => {
      if (value instanceof Uint8Array) {
        return value.length > 48 ? `${hex(value.subarray(0, 48))}… (${value.length} bytes)` : hex(value);
      }
      return typeof value === 'bigint' ? value.toString() : value;
    },
    1,
  );
}

/* ------------------------------------------------------------------------------------------- */
/* Generators                                                                                  */
/* ------------------------------------------------------------------------------------------- */

/** Ids that collide on purpose (with the client's own 1, 2, 3 and with each other), and the edges. */
const ID_POOL: readonly Uint8Array[] = [
  idBytes(0n),
  idBytes(1n),
  idBytes(2n),
  idBytes(3n),
  idBytes(2n ** 53n - 1n),
  idBytes(2n ** 53n),
  idBytes(2n ** 64n - 1n),
];
const idArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...ID_POOL) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 8, maxLength: 8 }) },
);
const nameArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('', 'echo', 'a', 'abc', '__proto__', 'constructor').map(latin1) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 12 }) },
  { weight: 1, arbitrary: fc.constant(new Uint8Array(200).fill(0x6e)) },
);

/** Session JSON texts whose fate PROTOCOL.md §6 decides: the key the client must take, or null. */
const KEY64 = 'pB3vQ2wX9yZ8aA7bB6cC5dD4eE3fF2gG1hH0iIjJkKlLmMnNoOpPqQrRsStTuUvV';
const TIME = '2026-11-22T11:41:29.065369494Z';
const SESSION_JSON: ReadonlyMap<string, string | null> = new Map([
  [`{"k":"${KEY64}","c":"${TIME}","l":"${TIME}"}`, KEY64],
  [`{"k":"abc","c":"${TIME}","l":"${TIME}","i":{"any":"info"}}`, 'abc'],
  [`{"k":"k-null-info","c":"2026-01-01T00:00:00Z","l":"2026-01-01T00:00:00+02:00","i":null}`, 'k-null-info'],
  [`{"k":"k-proto","c":"${TIME}","l":"${TIME}","i":{"__proto__":{"x":1}},"x":1}`, 'k-proto'],
  [`{"k":"ключ","c":"${TIME}","l":"${TIME}"}`, 'ключ'],
  ['not json', null],
  ['[]', null],
  ['null', null],
  ['{}', null],
  [`{"k":"","c":"${TIME}","l":"${TIME}"}`, null],
  [`{"k":5,"c":"${TIME}","l":"${TIME}"}`, null],
  ['{"k":"missing-times"}', null],
  [`{"k":"bad-time","c":"yesterday","l":"${TIME}"}`, null],
  [`{"k":"feb-30","c":"2026-02-30T00:00:00Z","l":"${TIME}"}`, null],
  [`{"k":"\\ud800","c":"${TIME}","l":"${TIME}"}`, null],
  [`{"k":"info-array","c":"${TIME}","l":"${TIME}","i":[1]}`, null],
  [`{"__proto__":{"k":"inherited","c":"${TIME}","l":"${TIME}"}}`, null],
]);
const sessionJsonArb = fc.constantFrom(...SESSION_JSON.keys());
/** A session the client must take: the next connection restores it first. */
const goodSessionArb = fc
  .constantFrom(...[...SESSION_JSON].filter(([, key]) => key !== null).map(([json]) => json))
  .map((json) => concat(21, encodeUtf8(json)));

const serverRequestArb = fc
  .tuple(fc.constantFrom(127, 128, 129), idArb, nameArb, payloadArb, utf16PayloadArb)
  .map(([type, id, name, payload, utf16]) => {
    let body = type === 129 ? utf16 : payload;
    if (name.length === 0 && body.length === 0) body = type === 129 ? Uint8Array.of(0x41, 0) : Uint8Array.of(0x21);
    return requestBytes(type, id, name, body);
  });
const signalArb = fc
  .tuple(fc.constantFrom(63, 64, 65), nameArb, payloadArb, utf16PayloadArb)
  .map(([type, name, payload, utf16]) => {
    let body = type === 65 ? utf16 : payload;
    if (type === 65 && body.length === 0) body = Uint8Array.of(0x41, 0);
    if (name.length === 0 && body.length === 0) body = Uint8Array.of(0x21);
    return signalBytes(type, name, body);
  });
/** Replies of every kind to pooled ids: stray, or answering the client's requests 1..3 by chance. */
const strayReplyArb = fc.oneof(
  fc
    .tuple(fc.constantFrom(191, 192, 193), idArb, payloadArb, utf16PayloadArb)
    .map(([type, id, payload, utf16]) => (type === 193 ? concat(type, id, 0, utf16) : concat(type, id, payload))),
  fc
    .tuple(idArb, fc.integer({ min: 1, max: 12 }), payloadArb)
    .map(([id, codeLength, message]) => concat(0, id, codeLength, new Uint8Array(codeLength).fill(0x45), message)),
  fc
    .tuple(fc.integer({ min: 1, max: 5 }), idArb, fc.uint8Array({ maxLength: 3 }))
    .map(([type, id, extra]) => concat(type, id, extra)),
);
/** Well-formed messages a client has no use for (client-to-server types, AcceptConf again): ignored. */
const unexpectedArb = fc.oneof(
  fc.constant(Uint8Array.of(33)),
  fc.integer({ min: 0, max: 255 }).map((minor) => Uint8Array.of(34, minor)),
  idArb.map((id) => concat(31, id)),
  fc.tuple(idArb, fc.uint8Array({ minLength: 1, maxLength: 70 })).map(([id, key]) => concat(32, id, key)),
  fc.uint8Array({ minLength: 10, maxLength: 14 }).map((rest) => concat(23, rest)),
);
const validMessageArb = fc.oneof(
  { weight: 3, arbitrary: serverRequestArb },
  { weight: 3, arbitrary: signalArb },
  { weight: 2, arbitrary: strayReplyArb },
  { weight: 2, arbitrary: sessionJsonArb.map((json) => concat(21, encodeUtf8(json))) },
  { weight: 1, arbitrary: fc.constant(Uint8Array.of(22)) },
  { weight: 2, arbitrary: idArb.map((id) => concat(35, id)) },
  { weight: 2, arbitrary: unexpectedArb },
);
const mutatedArb = fc
  .tuple(validMessageArb, fc.array(mutationArb, { minLength: 1, maxLength: 3 }))
  .map(([bytes, mutations]) => mutate(bytes, mutations));
const randomMessageArb = fc
  .tuple(fc.constantFrom(...TYPE_BYTES), fc.uint8Array({ maxLength: 40 }))
  .map(([type, rest]) => concat(type, rest));
/** A valid signal of exactly `size` bytes: the limit passes, one more closes 1009. */
const sizedArb = fc.constantFrom(LIMIT, LIMIT + 1, 2 * LIMIT).map((size) => {
  const out = new Uint8Array(size).fill(0x2e);
  out.set(signalBytes(63, latin1('big'), new Uint8Array(0)));
  return out;
});
const textArb = fc.oneof(
  { weight: 3, arbitrary: validTextArb },
  { weight: 3, arbitrary: invalidUtf8Arb },
  { weight: 1, arbitrary: fc.constant(new Uint8Array(0)) },
  {
    weight: 1,
    arbitrary: fc.boolean().map((bad) => new Uint8Array(LIMIT + 1).fill(bad ? 0xff : 0x61)),
  },
);

const deliveryArb: fc.Arbitrary<Delivery> = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ how: 'whole' as const }) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.integer({ min: 2, max: 3 }), fc.boolean())
      .map(([count, pingBetween]) => ({ how: 'fragments' as const, count, pingBetween })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.integer({ min: 2, max: 3 }), fc.integer({ min: 0, max: 3 }))
      .map(([pieces, pauseMs]) => ({ how: 'split' as const, pieces, pauseMs })),
  },
);

const faultArb: fc.Arbitrary<FrameFault> = fc.oneof(
  fc
    .constantFrom(BigInt(LIMIT + 1), 65_535n, 2n ** 32n, 2n ** 53n, 2n ** 63n)
    .map((declared) => ({ fault: 'huge-length' as const, declared })),
  fc.constantFrom(0x40, 0x20, 0x10).map((rsv) => ({ fault: 'reserved-bits' as const, rsv })),
  fc.constantFrom(3, 4, 7, 0xb, 0xf).map((opcode) => ({ fault: 'reserved-opcode' as const, opcode })),
  fc.constantFrom(
    { fault: 'stray-continuation' as const },
    { fault: 'long-ping' as const },
    { fault: 'fragmented-ping' as const },
    { fault: 'masked' as const },
    { fault: 'data-inside-fragments' as const },
  ),
);

const targetArb: fc.Arbitrary<Target> = fc.oneof(
  { weight: 6, arbitrary: fc.nat(8).map((n) => ({ to: 'received' as const, n })) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }).map((ahead) => ({ to: 'future' as const, ahead })) },
  { weight: 1, arbitrary: idArb.map((id) => ({ to: 'id' as const, id })) },
);
const replyShapeArb: fc.Arbitrary<ReplyShape> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc
      .tuple(fc.constantFrom<Encoding>('binary', 'utf8', 'utf16'), payloadArb, utf16PayloadArb)
      .map(([encoding, data, utf16]) => ({ r: 'reply' as const, encoding, data: encoding === 'utf16' ? utf16 : data })),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.constantFrom('E', 'NOT_FOUND', 'x'.repeat(40)), payloadArb)
      .map(([code, message]) => ({ r: 'error' as const, code, message })),
  },
  {
    weight: 2,
    arbitrary: fc.constantFrom(1 as const, 2 as const, 3 as const, 4 as const, 5 as const).map((type) => ({
      r: 'special' as const,
      type,
    })),
  },
  { weight: 1, arbitrary: sessionJsonArb.map((json) => ({ r: 'session' as const, json })) },
);

const sendOp = (bytes: fc.Arbitrary<Uint8Array>): fc.Arbitrary<ServerOp> =>
  fc.tuple(bytes, deliveryArb).map(([b, delivery]) => ({ op: 'send' as const, bytes: b, delivery }));

/** Server ops no client may close for: valid messages, replies, pings. */
const cleanServerOpArb: fc.Arbitrary<ServerOp> = fc.oneof(
  { weight: 8, arbitrary: sendOp(validMessageArb) },
  { weight: 2, arbitrary: sendOp(goodSessionArb) },
  {
    weight: 8,
    arbitrary: fc
      .tuple(targetArb, replyShapeArb, fc.boolean())
      .map(([target, shape, twice]) => ({ op: 'reply' as const, target, shape, twice })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom('ping' as const, 'pong' as const), fc.uint8Array({ maxLength: 125 }))
      .map(([op, bytes]) => ({ op, bytes })),
  },
);

const serverOpArb: fc.Arbitrary<ServerOp> = fc.oneof(
  { weight: 8, arbitrary: sendOp(validMessageArb) },
  { weight: 1, arbitrary: sendOp(goodSessionArb) },
  { weight: 4, arbitrary: sendOp(mutatedArb) },
  { weight: 2, arbitrary: sendOp(randomMessageArb) },
  { weight: 1, arbitrary: sendOp(sizedArb) },
  { weight: 1, arbitrary: sendOp(fc.constant(new Uint8Array(0))) },
  {
    weight: 8,
    arbitrary: fc
      .tuple(targetArb, replyShapeArb, fc.boolean())
      .map(([target, shape, twice]) => ({ op: 'reply' as const, target, shape, twice })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(textArb, fc.integer({ min: 1, max: 2 }))
      .map(([bytes, fragments]) => ({ op: 'text' as const, bytes, fragments })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom('ping' as const, 'pong' as const), fc.uint8Array({ maxLength: 125 }))
      .map(([op, bytes]) => ({ op, bytes })),
  },
  { weight: 1, arbitrary: faultArb.map((fault) => ({ op: 'fault' as const, fault })) },
);

const clientStepArb: fc.Arbitrary<ClientStep> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc
      .tuple(
        fc.constantFrom<Encoding>('binary', 'utf8', 'utf16'),
        fc.oneof(
          { weight: 2, arbitrary: fc.constant('default' as const) },
          { weight: 1, arbitrary: fc.constant(0) },
          { weight: 3, arbitrary: fc.integer({ min: 5, max: 80 }) },
        ),
        fc.boolean(),
      )
      .map(([encoding, timeout, abortable]) => ({ op: 'request' as const, encoding, timeout, abortable })),
  },
  { weight: 1, arbitrary: fc.nat(4).map((n) => ({ op: 'abort' as const, n })) },
  { weight: 1, arbitrary: fc.constant({ op: 'signal' as const }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 8 }).map((ms) => ({ op: 'pause' as const, ms })) },
);

const closeReasonArb = fc.constantFrom<CloseReason>('none', 'short', 'max', 'long', 'bad-utf8');
const closeCodeArb = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.constantFrom(1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999),
  },
  { weight: 1, arbitrary: fc.constantFrom('none' as const, 'one-byte' as const) },
  { weight: 2, arbitrary: fc.constantFrom(0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535) },
);
const closeEndingArb: fc.Arbitrary<Ending> = fc
  .tuple(closeCodeArb, closeReasonArb)
  .map(([code, reason]) => ({ end: 'close' as const, code, reason }));
const endingArb: fc.Arbitrary<Ending> = fc.oneof(
  { weight: 2, arbitrary: fc.constant({ end: 'never' as const }) },
  { weight: 4, arbitrary: closeEndingArb },
  { weight: 2, arbitrary: fc.constant({ end: 'destroy' as const }) },
  { weight: 1, arbitrary: fc.constant({ end: 'fin' as const }) },
  { weight: 2, arbitrary: fc.constant({ end: 'client-close' as const }) },
);

function acceptConfBytes(major: number, minor: number, readTimeout: number, size: number, sub: Uint8Array): Uint8Array {
  return encodeAcceptConf({ major, minor, readTimeout, maxMessageSize: size, subProtocol: sub });
}

/** Read timeouts a server may announce: none, tiny (heartbeats every 1.5 ms), past a timer's range. */
const readTimeoutArb = fc.constantFrom(0, 1, 2, 40, 60_000, 0x7fff_ffff, 0xaaaa_aaab, 0xffff_ffff);

function handshakeArb(setup: Setup): fc.Arbitrary<Handshake> {
  const sub = encodeUtf8(setup.subProtocol);
  const message = (bytes: fc.Arbitrary<Uint8Array>, text = false): fc.Arbitrary<Handshake> =>
    fc.tuple(bytes, deliveryArb).map(([b, delivery]) => ({ kind: 'message' as const, text, bytes: b, delivery }));
  const valid = fc
    .tuple(fc.constantFrom(0, 1, 1, 2, 7, 255), readTimeoutArb, fc.nat(0xffff_ffff))
    .map(([minor, readTimeout, size]) => acceptConfBytes(2, minor, readTimeout, size, sub));
  return fc.oneof(
    { weight: 12, arbitrary: message(valid) },
    {
      weight: 2,
      arbitrary: message(
        fc.tuple(valid, fc.array(mutationArb, { minLength: 1, maxLength: 2 })).map(([b, m]) => mutate(b, m)),
      ),
    },
    {
      weight: 1,
      arbitrary: message(fc.constantFrom(0, 1, 3, 255).map((major) => acceptConfBytes(major, 1, 60_000, 1024, sub))),
    },
    {
      weight: 1,
      arbitrary: message(
        fc
          .constantFrom(setup.subProtocol === '' ? SUB : '', 'other', `${setup.subProtocol}\u0000`)
          .map((other) => acceptConfBytes(2, 1, 60_000, 1024, encodeUtf8(other))),
      ),
    },
    { weight: 1, arbitrary: message(acceptConfBytesArbOversized(sub)) },
    { weight: 1, arbitrary: message(fc.oneof(validMessageArb, randomMessageArb, fc.constant(new Uint8Array(0)))) },
    { weight: 1, arbitrary: message(textArb, true) },
    { weight: 1, arbitrary: fc.constant({ kind: 'silent' as const }) },
    { weight: 1, arbitrary: faultArb.map((fault) => ({ kind: 'fault' as const, fault })) },
    {
      weight: 1,
      arbitrary: fc
        .oneof(closeEndingArb, fc.constant({ end: 'destroy' as const }), fc.constant({ end: 'fin' as const }))
        .map((ending) => ({ kind: 'hang-up' as const, ending })),
    },
  );
}

/** An AcceptConf whose sub-protocol makes it longer than the client accepts. */
function acceptConfBytesArbOversized(sub: Uint8Array): fc.Arbitrary<Uint8Array> {
  return fc.constant(acceptConfBytes(2, 1, 60_000, 1024, concat(sub, new Uint8Array(LIMIT).fill(0x78))));
}

const setupArb: fc.Arbitrary<Setup> = fc.record({
  protocolMinor: fc.constantFrom(0 as const, 1 as const, 1 as const, 1 as const),
  handler: fc.constantFrom<Handler>('echo', 'echo', 'fail', 'none', 'hang'),
  reconnect: fc.boolean(),
  subProtocol: fc.constantFrom('', SUB),
  // Long enough that a stalled machine does not trip it; its ping timer must still go with close().
  serverTimeout: fc.constantFrom(0 as const, 0 as const, 0 as const, 6000 as const),
  early: fc.nat(2),
});

/** Server requests and cancels of pooled ids: the client's handlers, cancellation, and its in-flight limit (1008). */
const floodOpArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 4, arbitrary: sendOp(serverRequestArb) },
  { weight: 1, arbitrary: sendOp(fc.constantFrom(...ID_POOL).map((id) => concat(35, id))) },
  { weight: 1, arbitrary: clientStepArb },
);

/** Steps of a clean server (every message well-formed), a flooding one, or a hostile one. */
const stepsArb = fc.oneof(
  fc.array(floodOpArb, { minLength: 2, maxLength: 8 }),
  fc.array(fc.oneof({ weight: 3, arbitrary: cleanServerOpArb }, { weight: 2, arbitrary: clientStepArb }), {
    maxLength: 10,
  }),
  fc.array(fc.oneof({ weight: 3, arbitrary: serverOpArb }, { weight: 2, arbitrary: clientStepArb }), {
    maxLength: 10,
  }),
);

function planArb(setup: Setup): fc.Arbitrary<Plan> {
  return fc
    .tuple(handshakeArb(setup), fc.nat(3), stepsArb, fc.boolean(), endingArb)
    .map(([handshake, burst, steps, sync, ending]) => ({ handshake, burst, steps, sync, ending }));
}

const scenarioArb: fc.Arbitrary<Scenario> = setupArb.chain((setup) =>
  fc.array(planArb(setup), { minLength: 1, maxLength: 2 }).map((plans) => ({ setup, plans })),
);

/* ------------------------------------------------------------------------------------------- */
/* The model                                                                                   */
/* ------------------------------------------------------------------------------------------- */

interface HandshakeModel {
  readonly accepted: boolean;
  /** The announced minor, when accepted. */
  readonly minor: number;
  /** What the raw server sees when not accepted: the client's close code (1006: the server hung up). */
  readonly code: number;
  /** An IncompatibleServerError: the client gives up, reconnect or not. */
  readonly permanent: boolean;
  readonly why: string;
}

/** What the raw server sees after it wrote this ending: the client's close code. */
function endingCode(ending: Ending): number {
  switch (ending.end) {
    case 'never':
    case 'client-close':
      return 1000; // client.close() at the end of the scenario, or from the steps
    case 'destroy':
    case 'fin':
      return 1006;
    case 'close': {
      // RFC 6455 §5.5: a control frame carries at most 125 bytes, a close payload 0 or >= 2; the
      // code must be one a sender may use (§7.4.1) and the reason UTF-8 (§8.1). A valid close is
      // echoed with its code (§5.5.1).
      if (ending.code === 'none') return 1005; // an empty payload: no code, no reason
      if (ending.code === 'one-byte' || ending.reason === 'long') return 1002;
      if (!isValidCloseCode(ending.code)) return 1002;
      if (ending.reason === 'bad-utf8') return 1007;
      return ending.code;
    }
  }
}

function handshakeModel(handshake: Handshake, setup: Setup): HandshakeModel {
  const fail = (code: number, permanent: boolean, why: string): HandshakeModel => ({
    accepted: false,
    minor: 0,
    code,
    permanent,
    why,
  });
  switch (handshake.kind) {
    case 'silent':
      return fail(1002, false, 'no AcceptConf within connectTimeout');
    case 'fault':
      return fail(faultCode(handshake.fault), false, `malformed frame (${handshake.fault.fault}) first`);
    case 'hang-up':
      return fail(endingCode(handshake.ending), false, `the server hung up first (${handshake.ending.end})`);
    case 'message':
      break;
  }
  const { bytes } = handshake;
  // The WebSocket layer checks size (on the header) and UTF-8 before the client sees a message.
  if (bytes.length > LIMIT) return fail(1009, false, 'first message over the limit');
  if (handshake.text) {
    if (!isUtf8(bytes)) return fail(1007, false, 'first message: text of invalid UTF-8');
    // Anything but an AcceptConf first is "not a duplexwire server" (IncompatibleServerError, 1002).
    return fail(1002, true, 'first message: text');
  }
  let message: Message;
  try {
    message = decode(bytes);
  } catch {
    return fail(1002, true, 'first message does not decode');
  }
  if (message.kind !== 'accept-conf') return fail(1002, true, `first message: ${message.kind}`);
  // PROTOCOL.md §4: a client checks the major and the sub-protocol, nothing else.
  if (message.major !== 2) return fail(1002, true, `major ${message.major}`);
  if (hex(message.subProtocol) !== hex(encodeUtf8(setup.subProtocol))) return fail(1002, true, 'sub-protocol');
  return { accepted: true, minor: message.minor, code: 0, permanent: false, why: 'AcceptConf' };
}

interface ConnectionModel {
  /** Codes the client may have closed with, because of what the server sent (1008: requests in flight). */
  readonly possible: ReadonlySet<number>;
  /** The first violation no client may miss: its code, and the step it is at. */
  readonly certain: number | undefined;
  readonly certainAt: number;
  /** Session keys the client may hold when the connection ends (undefined: the model cannot say). */
  readonly sessions: ReadonlySet<string | null> | undefined;
  /** The signals the client must emit, in order (`signalKey`): the first `sureSignals` for sure, more up to all. */
  readonly signals: readonly string[];
  readonly sureSignals: number;
  readonly why: string;
}

/** The close code of a server op that breaks a rule (PROTOCOL.md §1, §3, §8; RFC 6455), or undefined. */
function violationOf(op: ServerOp): { code: number; why: string } | undefined {
  switch (op.op) {
    case 'text':
      if (op.bytes.length > LIMIT) return { code: 1009, why: 'text over the limit' };
      if (!isUtf8(op.bytes)) return { code: 1007, why: 'text of invalid UTF-8' };
      return { code: 1003, why: 'text message' };
    case 'fault':
      return { code: faultCode(op.fault), why: `malformed frame (${op.fault.fault})` };
    case 'send': {
      if (op.bytes.length > LIMIT) return { code: 1009, why: 'message over the limit' };
      try {
        decode(op.bytes);
      } catch (error) {
        if (!(error instanceof ProtocolError)) throw error;
        return { code: 1002, why: `${error.code}: ${error.message}` };
      }
      return undefined;
    }
    default:
      return undefined;
  }
}

function signalKey(name: string, payload: Payload): string {
  return `${hex(latin1(name))}:${payload.encoding}:${hex(payload.data)}`;
}

/** The close code of a violation the WebSocket layer catches itself, before the client sees a message. */
function wsLevelViolation(op: ServerOp): number | undefined {
  if (op.op === 'fault') return faultCode(op.fault);
  if (op.op === 'send' && op.bytes.length > LIMIT) return 1009;
  if (op.op === 'text') return op.bytes.length > LIMIT ? 1009 : isUtf8(op.bytes) ? undefined : 1007;
  return undefined;
}

/**
 * What the client does with the server ops of an accepted connection: which op closes it, with
 * which code, and which session it holds at the end. Server requests count against the client's
 * maxInflightRequests only when its handler never answers ('hang'); a cancel releases those of
 * its id (every one, when the server reused the id), but only once their handlers settled (a
 * microtask later), so the 1008 close is "possible" from the first request where no cancel counts
 * and "certain" where even all cancels do not help.
 */
function connectionModel(plan: Plan, setup: Setup, v21: boolean): ConnectionModel {
  const burst = burstLength(plan);
  const possible = new Set<number>();
  let certain: number | undefined;
  let certainAt = -1;
  let why = 'no violation';
  // Requests in flight, counting cancels as released at once (min) or never (max). A v2.0 client
  // may ignore server requests (they are not part of v2.0): they count for max only.
  let min = 0;
  let max = 0;
  /** Requests of each id not canceled yet: a cancel of the id releases them all. */
  const uncanceled = new Map<string, number>();
  let session: Set<string | null> | undefined = new Set([null]);
  // An ending that does not wait for the client to read everything (client.close(), a destroy
  // that may discard what the client has not read yet): it may stop after any op.
  const e = plan.ending.end;
  let ambiguous = !plan.sync && (e === 'client-close' || e === 'destroy' || e === 'fin');
  const allowed = new Set<string | null>(ambiguous ? [null] : []);
  const signals: string[] = [];
  let sureSignals = 0;
  for (const [at, step] of plan.steps.entries()) {
    if (!isServerOp(step)) continue;
    const violation = violationOf(step);
    if (violation !== undefined) {
      certain = violation.code;
      certainAt = at;
      why = `step #${at}: ${violation.why}`;
      // The burst reaches the client with the 101, before its handshake is done: the WebSocket
      // layer reads all of it while the messages wait for the client in its early buffer. A
      // violation the WebSocket layer catches itself (size, UTF-8, framing) in a later burst op
      // closes the connection before the client reads the earlier message it would close for.
      for (const later of plan.steps.slice(at + 1, burst)) {
        const code = isServerOp(later) ? wsLevelViolation(later) : undefined;
        if (code !== undefined) possible.add(code);
      }
      break;
    }
    if (step.op === 'reply') {
      // A session restore answered with a session: the loose check applies (see `checkSession`).
      if (step.shape.r === 'session') session = undefined;
      continue;
    }
    if (step.op !== 'send') continue;
    const message = decode(step.bytes);
    if (message.kind === 'request' && setup.handler === 'hang') {
      max++;
      if (v21) min++;
      uncanceled.set(hex(message.id), (uncanceled.get(hex(message.id)) ?? 0) + 1);
      if (min > HANG_INFLIGHT) {
        certain = 1008;
        certainAt = at;
        why = `step #${at}: request ${min} in flight`;
        break;
      }
      if (max > HANG_INFLIGHT) {
        possible.add(1008);
        ambiguous = true;
      }
    } else if (message.kind === 'cancel') {
      const released = uncanceled.get(hex(message.id)) ?? 0;
      uncanceled.delete(hex(message.id));
      if (v21) min = Math.max(0, min - released);
    } else if (message.kind === 'session-created' && session !== undefined) {
      const key = SESSION_JSON.get(message.session);
      if (key === undefined) session = undefined;
      else if (key !== null) session = new Set([key]);
    } else if (message.kind === 'session-closed' && session !== undefined) {
      session = new Set([null]);
    } else if (message.kind === 'signal') {
      signals.push(signalKey(message.name, message.payload));
      if (!ambiguous) sureSignals = signals.length;
    }
    if (ambiguous && session !== undefined) for (const s of session) allowed.add(s);
  }
  if (session !== undefined) for (const s of session) allowed.add(s);
  if (!ambiguous) sureSignals = signals.length;
  return {
    possible,
    certain,
    certainAt,
    sessions: session === undefined ? undefined : allowed,
    signals,
    sureSignals,
    why,
  };
}

/* ------------------------------------------------------------------------------------------- */
/* Resource bookkeeping                                                                        */
/* ------------------------------------------------------------------------------------------- */

/**
 * Timers and TCP sockets created while a scenario runs, and not destroyed yet (async_hooks:
 * unlike `process.getActiveResourcesInfo()`, this also sees unref'd timers). A resource is
 * attributed to the run that created it.
 */
class ResourceTracker {
  readonly live = new Map<number, { readonly type: string; readonly run: number; readonly stack: string }>();
  run = 0;
  readonly #hook = createHook({
    init: (asyncId, type) => {
      if (this.run === 0 || (type !== 'Timeout' && type !== 'TCPWRAP')) return;
      this.live.set(asyncId, { type, run: this.run, stack: new Error('created').stack ?? '' });
    },
    destroy: (asyncId) => {
      this.live.delete(asyncId);
    },
  });

  enable(): void {
    this.#hook.enable();
  }

  disable(): void {
    this.#hook.disable();
    this.live.clear();
  }

  leftovers(run: number): string[] {
    return [...this.live.values()]
      .filter((r) => r.run === run)
      .map((r) => {
        const frames = r.stack.split('\n').filter((line) => line.includes('    at ') && !line.includes('(node:'));
        return `${r.type} ${frames.slice(0, 6).join(' <-').replace(/\s+/g, ' ')}`;
      });
  }
}

/* ------------------------------------------------------------------------------------------- */
/* The hostile server side                                                                     */
/* ------------------------------------------------------------------------------------------- */

/** An id-carrying message the client sent: a request, a session restore or close. */
interface ClientRequestOnWire {
  readonly kind: 'request' | 'restore-session' | 'close-session';
  readonly id: Uint8Array;
  readonly name: string;
}

/** One connection of the raw server: what it wrote, what it read, how it ended. */
class HostileConnection {
  readonly index: number;
  readonly plan: Plan;
  readonly ws: WebSocket;
  readonly socket: Duplex;
  readonly model: HandshakeModel;
  /** Everything the client sent, in order. */
  readonly received: Array<{ readonly bytes: Uint8Array; readonly binary: boolean }> = [];
  readonly requests: ClientRequestOnWire[] = [];
  /** Replies (of any type) written to the client, by hex id. */
  readonly answers = new Map<string, Message[]>();
  /** Server requests written to the client, by hex id (payloads), and cancels written for them. */
  readonly serverRequests = new Map<string, Payload[]>();
  readonly serverCancels = new Map<string, number>();
  /** Session JSON texts written (21 and restore replies). */
  readonly sessionTexts: string[] = [];
  readonly pongs = new Set<string>();
  closeInfo: { code: number; reason: string } | undefined;
  closedAt = Number.POSITIVE_INFINITY;
  readonly closed: Promise<{ code: number; reason: string }>;
  /** The script (handshake, steps, ending) ran to its end. */
  done: Promise<void> = Promise.resolve();
  /** The scenario closed the client (an earlier plan's ending) before this script's steps. */
  preempted = false;
  readonly openedAt = performance.now();

  constructor(index: number, plan: Plan, ws: WebSocket, socket: Duplex, model: HandshakeModel) {
    this.index = index;
    this.plan = plan;
    this.ws = ws;
    this.socket = socket;
    this.model = model;
    ws.on('error', () => {});
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      const bytes = new Uint8Array(data);
      this.received.push({ bytes, binary: isBinary });
      if (!isBinary) return;
      try {
        const message = decode(bytes);
        if (message.kind === 'request') this.requests.push({ kind: 'request', id: message.id, name: message.name });
        if (message.kind === 'restore-session' || message.kind === 'close-session') {
          this.requests.push({ kind: message.kind, id: message.id, name: '' });
        }
      } catch {}
    });
    ws.on('pong', (data: Buffer) => this.pongs.add(data.toString('hex')));
    this.closed = new Promise((resolve) => {
      ws.on('close', (code: number, reason: Buffer) => {
        this.closedAt = performance.now();
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
      });
    });
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN && !this.socket.destroyed;
  }

  write(data: Uint8Array): void {
    if (this.isOpen && this.socket.writable) this.socket.write(data);
  }

  /** A binary message written by this server: recorded by what it means to the client. */
  writeMessage(bytes: Uint8Array, delivery: Delivery): Promise<void> | undefined {
    if (!this.isOpen) return undefined;
    this.note(bytes);
    return this.deliver(2, bytes, delivery);
  }

  deliver(opcode: 1 | 2, bytes: Uint8Array, delivery: Delivery): Promise<void> | undefined {
    switch (delivery.how) {
      case 'whole':
        this.write(serverFrame(0x80 | opcode, bytes));
        return undefined;
      case 'fragments':
        for (const frame of messageFrames(opcode, bytes, delivery.count, delivery.pingBetween)) this.write(frame);
        return undefined;
      case 'split': {
        const frame = serverFrame(0x80 | opcode, bytes);
        const cuts = fragmentBounds(frame.length, delivery.pieces);
        this.write(frame.subarray(cuts[0], cuts[1]));
        return (async () => {
          for (let i = 1; i < cuts.length - 1; i++) {
            await delay(delivery.pauseMs);
            this.write(frame.subarray(cuts[i], cuts[i + 1]));
          }
        })();
      }
    }
  }

  note(bytes: Uint8Array): void {
    let message: Message;
    try {
      message = decode(bytes);
    } catch {
      return;
    }
    switch (message.kind) {
      case 'reply':
      case 'reply-error':
      case 'special-reply': {
        const key = hex(message.id);
        const list = this.answers.get(key) ?? [];
        list.push(message);
        this.answers.set(key, list);
        if (message.kind === 'reply' && message.payload.encoding === 'utf8') {
          this.sessionTexts.push(new TextDecoder().decode(message.payload.data));
        }
        return;
      }
      case 'request': {
        const key = hex(message.id);
        const list = this.serverRequests.get(key) ?? [];
        list.push(message.payload);
        this.serverRequests.set(key, list);
        return;
      }
      case 'cancel': {
        const key = hex(message.id);
        if (this.serverRequests.has(key)) this.serverCancels.set(key, (this.serverCancels.get(key) ?? 0) + 1);
        return;
      }
      case 'session-created':
        this.sessionTexts.push(message.session);
        return;
      default:
    }
  }

  /** Waits until the client read everything written so far (its pong), or closed. */
  async sync(): Promise<void> {
    if (!this.isOpen) return;
    const token = randomBytes(8);
    this.write(serverFrame(0x89, token));
    await waitFor(
      () => this.pongs.has(token.toString('hex')) || !this.isOpen,
      SETTLE_MS,
      `the pong of connection ${this.index}`,
    );
  }

  /** The id a reply op addresses, chosen now. */
  resolveTarget(target: Target): Uint8Array {
    switch (target.to) {
      case 'id':
        return target.id;
      case 'received':
        if (this.requests.length > 0) return this.requests[target.n % this.requests.length]!.id;
        return idBytes(1n);
      case 'future': {
        const highest = Math.max(0, ...this.requests.map((r) => idToNumber(r.id)));
        return idBytes(BigInt(highest + target.ahead));
      }
    }
  }

  replyBytes(id: Uint8Array, shape: ReplyShape): Uint8Array {
    switch (shape.r) {
      case 'reply':
        return shape.encoding === 'utf16'
          ? concat(193, id, 0, shape.data)
          : concat(shape.encoding === 'binary' ? 191 : 192, id, shape.data);
      case 'error':
        return concat(0, id, shape.code.length, latin1(shape.code), shape.message);
      case 'special':
        return concat(shape.type, id);
      case 'session':
        return concat(192, id, encodeUtf8(shape.json));
    }
  }

  /** One server op; resolves when its bytes are all written. */
  async serverOp(op: ServerOp): Promise<void> {
    if (!this.isOpen) return;
    switch (op.op) {
      case 'send':
        await this.writeMessage(op.bytes, op.delivery);
        return;
      case 'text':
        this.deliver(1, op.bytes, { how: 'fragments', count: op.fragments, pingBetween: false });
        return;
      case 'reply': {
        const bytes = this.replyBytes(this.resolveTarget(op.target), op.shape);
        this.writeMessage(bytes, { how: 'whole' });
        if (op.twice) this.writeMessage(bytes, { how: 'whole' });
        return;
      }
      case 'ping':
        this.write(serverFrame(0x89, op.bytes));
        return;
      case 'pong':
        this.write(serverFrame(0x8a, op.bytes));
        return;
      case 'fault':
        this.write(faultBytes(op.fault));
        return;
    }
  }

  /** The server's side of an ending ('never' and 'client-close' write nothing). */
  end(ending: Ending): void {
    switch (ending.end) {
      case 'close': {
        const reason =
          ending.reason === 'none'
            ? new Uint8Array(0)
            : ending.reason === 'short'
              ? latin1('bye')
              : ending.reason === 'max'
                ? new Uint8Array(123).fill(0x72)
                : ending.reason === 'long'
                  ? new Uint8Array(124).fill(0x72)
                  : Uint8Array.of(0x62, 0xff, 0x65);
        let payload: Uint8Array;
        if (ending.code === 'none') payload = new Uint8Array(0);
        else if (ending.code === 'one-byte') payload = Uint8Array.of(0x03);
        else payload = concat(ending.code >> 8, ending.code & 0xff, reason);
        this.write(serverFrame(0x88, payload));
        return;
      }
      case 'destroy':
        this.socket.destroy();
        return;
      case 'fin':
        if (!this.socket.destroyed) this.socket.end();
        return;
      default:
    }
  }

  terminate(): void {
    this.socket.destroy();
  }
}

/* ------------------------------------------------------------------------------------------- */
/* The harness: one HTTP server on 127.0.0.1:0, the raw server and a good Server on it         */
/* ------------------------------------------------------------------------------------------- */

interface RequestRecord {
  readonly name: string;
  readonly payload: Payload;
  /** The timeout in effect (the client's requestTimeout for 'default'); 0 waits forever. */
  readonly timeout: number;
  readonly issuedAt: number;
  readonly controller: AbortController | undefined;
  abortedAt: number | undefined;
  settledAt: number | undefined;
  settlements: number;
  outcome:
    | { readonly ok: true; readonly payload: Payload }
    | { readonly ok: false; readonly error: unknown }
    | undefined;
}

/**
 * A connection that reached the server after client.close() was called. The transport contract
 * has no way to abort a connect in flight: an attempt whose socket was already opening when
 * close() ran completes its upgrade, and the client closes it at once (1000, nothing sent).
 */
class LateConnection {
  readonly at: number;
  messages = 0;
  closeInfo: { code: number } | undefined;

  constructor(ws: WebSocket, at: number) {
    this.at = at;
    ws.on('error', () => {});
    ws.on('message', () => {
      this.messages++;
    });
    ws.on('close', (code: number) => {
      this.closeInfo = { code };
    });
  }
}

/** Everything one scenario saw. */
class Run {
  readonly number: number;
  readonly scenario: Scenario;
  readonly models: HandshakeModel[];
  upgrades = 0;
  readonly hostile: HostileConnection[] = [];
  /** Upgrades routed to the good Server. */
  goodUpgrades = 0;
  readonly goodRequests = new Map<string, Payload>();
  readonly goodSignals: string[] = [];
  goodOpen = 0;
  readonly requests: RequestRecord[] = [];
  readonly signals = new Map<string, boolean>();
  readonly states: ClientState[] = ['idle'];
  /** State changes outside TRANSITIONS (recorded: an assertion in a listener would be swallowed). */
  readonly badTransitions: string[] = [];
  /** 'signal' events, with the connection the client was on (the latest upgrade). */
  readonly signalEvents: Array<{ readonly conn: number; readonly key: string }> = [];
  readonly errors: Array<{ readonly at: number; readonly error: Error }> = [];
  /** What the client was connected to at each 'connect' ('good' or a hostile index). */
  readonly connects: Array<number | 'good'> = [];
  readonly disconnects: Array<{
    readonly to: number | 'good';
    readonly session: string | null;
    readonly code: number;
  }> = [];
  /** When client.close() was called (by a plan's ending, or at the end of the scenario). */
  closeCalledAt = Number.POSITIVE_INFINITY;
  readonly late: LateConnection[] = [];
  /** The client and the counters of its steps, set once it exists. */
  driven: Driven | undefined;

  constructor(number: number, scenario: Scenario) {
    this.number = number;
    this.scenario = scenario;
    this.models = scenario.plans.map((plan) => handshakeModel(plan.handshake, scenario.setup));
  }

  /** Resolves with hostile connection `index`, or undefined when it did not come within `ms`. */
  async connection(index: number, ms: number): Promise<HostileConnection | undefined> {
    const deadline = performance.now() + ms;
    while (performance.now() < deadline) {
      if (index < this.hostile.length) return this.hostile[index]!;
      await delay(2);
    }
    return undefined;
  }
}

interface Harness {
  readonly url: string;
  current: Run | undefined;
  /** Scenarios by number (the `run` of their client's URL), until their last check is done. */
  readonly runs: Map<number, Run>;
  /** Upgrades from a client whose scenario is over. */
  readonly strays: string[];
  readonly tracker: ResourceTracker;
  readonly stats: {
    readonly handshakes: Histogram;
    readonly serverSaw: Histogram;
    readonly outcomes: Histogram;
    readonly events: Histogram;
    /** What the client sent to the hostile servers, by kind. */
    readonly clientSent: Histogram;
  };
}

async function startHarness(t: TestContext): Promise<Harness> {
  const http = createServer();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });
  const harness: Harness = {
    url: '',
    current: undefined,
    runs: new Map(),
    strays: [],
    tracker: new ResourceTracker(),
    stats: {
      handshakes: new Histogram(),
      serverSaw: new Histogram(),
      outcomes: new Histogram(),
      events: new Histogram(),
      clientSent: new Histogram(),
    },
  };
  // Registered before the good Server's listener: upgrades past a scenario's plans are handed to
  // it by rewriting their path, which it reads after this listener returns.
  http.on('upgrade', (req, socket: Duplex, head: Buffer) => {
    const url = req.url ?? '/';
    if (!url.startsWith('/fuzz')) return;
    socket.on('error', () => {});
    const from = Number(new URLSearchParams(url.slice(url.indexOf('?') + 1)).get('run'));
    const run = harness.runs.get(from);
    if (run === undefined) {
      harness.strays.push(`run ${from} during run ${harness.current?.number}`);
      socket.destroy();
      return;
    }
    if (run.closeCalledAt < Number.POSITIVE_INFINITY) {
      // After client.close(): only an attempt already under way may still arrive (see `late`).
      wss.handleUpgrade(req, socket, head, (ws) => run.late.push(new LateConnection(ws, performance.now())));
      return;
    }
    const index = run.upgrades++;
    const plan = run.scenario.plans[index];
    if (plan === undefined) {
      run.goodUpgrades++;
      req.url = `/good${run.scenario.setup.subProtocol === '' ? '' : '-sub'}${url.slice('/fuzz'.length)}`;
      return;
    }
    // The 101, the first message and the burst leave in one TCP write.
    socket.cork();
    wss.handleUpgrade(req, socket, head, (ws) => {
      const conn = new HostileConnection(index, plan, ws, socket, run.models[index]!);
      run.hostile.push(conn);
      conn.done = script(run, conn).catch((error: unknown) => {
        conn.terminate();
        throw error;
      });
      // Handled where the driver awaits it; a script that throws fails the run there.
      conn.done.catch(() => {});
      process.nextTick(() => socket.uncork());
    });
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(0, '127.0.0.1', () => resolve());
  });
  // The good servers, one per sub-protocol a client may use (sessions off: restores get 05).
  const servers = ['', SUB].map(
    (subProtocol) =>
      new Server({
        transport: wsTransport({ server: http, path: subProtocol === '' ? '/good' : '/good-sub' }),
        logger: recordingLogger(),
        subProtocol,
        onRequest: (_conn, message) => {
          harness.current?.goodRequests.set(message.name, message.payload);
          return message.payload;
        },
        onSignal: (_conn, message) => {
          harness.current?.goodSignals.push(message.name);
        },
        onClientConnected: () => {
          if (harness.current !== undefined) harness.current.goodOpen++;
        },
        onClientDisconnected: () => {
          if (harness.current !== undefined) harness.current.goodOpen--;
        },
      }),
  );
  for (const server of servers) await server.listen();
  t.after(async () => {
    for (const ws of wss.clients) ws.terminate();
    for (const server of servers) await server.shutdown({ timeout: 200 });
    wss.close();
    await new Promise<void>((resolve) => http.close(() => resolve()));
  });
  const { port } = http.address() as { port: number };
  return Object.assign(harness, { url: `ws://127.0.0.1:${port}/fuzz` });
}

/* ------------------------------------------------------------------------------------------- */
/* Running a scenario                                                                          */
/* ------------------------------------------------------------------------------------------- */

/** The client under test, with what the scenario needs next to it. */
interface Driven {
  readonly client: Client;
  readonly run: Run;
  requestCount: number;
  signalCount: number;
}

function makePayload(encoding: Encoding, n: number): Payload {
  const text = `p${n}é`;
  if (encoding === 'utf16') {
    const out = new Uint8Array(text.length * 2);
    for (let i = 0; i < text.length; i++) {
      out[2 * i] = text.charCodeAt(i) & 0xff;
      out[2 * i + 1] = text.charCodeAt(i) >> 8;
    }
    return { encoding, data: out };
  }
  return { encoding, data: encoding === 'utf8' ? encodeUtf8(text) : Uint8Array.of(n & 0xff, 0, 0xff) };
}

function issueRequest(d: Driven, step: Extract<ClientStep, { op: 'request' }>): RequestRecord {
  const n = d.requestCount++;
  const controller = step.abortable ? new AbortController() : undefined;
  const record: RequestRecord = {
    name: `q${n}`,
    payload: makePayload(step.encoding, n),
    timeout: step.timeout === 'default' ? REQUEST_TIMEOUT : step.timeout,
    issuedAt: performance.now(),
    controller,
    abortedAt: undefined,
    settledAt: undefined,
    settlements: 0,
    outcome: undefined,
  };
  d.run.requests.push(record);
  const options = {
    ...(step.timeout === 'default' ? {} : { timeout: step.timeout }),
    ...(controller === undefined ? {} : { signal: controller.signal }),
  };
  d.client.request(record.name, record.payload, options).then(
    (payload) => {
      record.settlements++;
      record.settledAt ??= performance.now();
      record.outcome ??= { ok: true, payload };
    },
    (error: unknown) => {
      record.settlements++;
      record.settledAt ??= performance.now();
      record.outcome ??= { ok: false, error };
    },
  );
  return record;
}

/** One client step, run by the script of the connection it happens on. */
async function clientStep(d: Driven, step: ClientStep, conn: HostileConnection | undefined): Promise<void> {
  switch (step.op) {
    case 'request': {
      const connected = d.client.isConnected;
      const record = issueRequest(d, step);
      // Let it reach the server, so that the reply ops that follow can answer it.
      if (connected && conn !== undefined) {
        await waitFor(
          () => conn.requests.some((r) => r.name === record.name) || !conn.isOpen || record.settledAt !== undefined,
          SETTLE_MS,
          `request ${record.name} on the wire`,
        );
      }
      return;
    }
    case 'abort': {
      const abortable = d.run.requests.filter((r) => r.controller !== undefined);
      const record = abortable[step.n % Math.max(1, abortable.length)];
      if (record?.controller !== undefined && !record.controller.signal.aborted) {
        record.abortedAt = performance.now();
        record.controller.abort(new Error('aborted by the fuzz'));
      }
      return;
    }
    case 'signal': {
      const name = `s${d.signalCount++}`;
      d.run.signals.set(name, d.client.signal(name, makePayload('utf8', d.signalCount)));
      return;
    }
    case 'pause':
      await delay(step.ms);
      return;
  }
}

/** client.close(), promptly (CLOSE_BOUND_MS) whatever state the client is in. */
async function closeClient(d: Driven): Promise<void> {
  d.run.closeCalledAt = Math.min(d.run.closeCalledAt, performance.now());
  const state = d.client.state;
  await withinBound(d.client.close(), CLOSE_BOUND_MS, `client.close() called in state ${state}`);
}

/** The script of one hostile connection: handshake, steps, ending. Starts inside the upgrade callback. */
async function script(run: Run, conn: HostileConnection): Promise<void> {
  const { plan } = conn;
  const { handshake } = plan;
  const accepted = conn.model.accepted;
  let pending: Promise<void> | undefined;
  const burst = accepted ? burstLength(plan) : 0;
  // Synchronous part: in the same TCP write as the 101.
  switch (handshake.kind) {
    case 'message':
      pending = handshake.text
        ? conn.deliver(1, handshake.bytes, handshake.delivery)
        : conn.writeMessage(handshake.bytes, handshake.delivery);
      for (const step of plan.steps.slice(0, burst)) void conn.serverOp(step as ServerOp);
      break;
    case 'fault':
      conn.write(faultBytes(handshake.fault));
      break;
    case 'silent':
    case 'hang-up':
      break;
  }
  await pending;
  // One script at a time: an earlier plan may still run client steps after the client left its
  // connection (a failed handshake, a violation), and may end with client.close().
  await run.hostile[conn.index - 1]?.done.catch(() => {});
  if (run.closeCalledAt < Number.POSITIVE_INFINITY) {
    conn.preempted = true;
    return;
  }
  if (handshake.kind === 'hang-up') {
    await delay(1);
    conn.end(handshake.ending);
  }
  const d = run.driven!;
  if (accepted) {
    // What comes before the client finished its handshake waits in the client's early buffer
    // while the WebSocket layer reads on (see `connectionModel`): past the burst, the steps wait
    // until the client is wired (it sent something: ClientConf, a restore, a request; or it is
    // connected), so that it reads them in order.
    await waitFor(
      () => conn.received.length > 0 || d.client.state === 'connected' || !conn.isOpen,
      SETTLE_MS,
      `the client to finish the handshake of connection ${conn.index}`,
    );
  }
  for (const step of plan.steps.slice(burst)) {
    if (isServerOp(step)) {
      if (accepted) await conn.serverOp(step);
    } else {
      await clientStep(d, step, conn);
    }
  }
  if (!accepted) {
    if (plan.ending.end === 'client-close') await closeClient(d);
    return;
  }
  const ending = plan.ending;
  if (plan.sync || ending.end === 'never') await conn.sync();
  if (ending.end === 'client-close') {
    await closeClient(d);
    return;
  }
  if (conn.isOpen) conn.end(ending);
}

/* ------------------------------------------------------------------------------------------- */
/* Checks                                                                                      */
/* ------------------------------------------------------------------------------------------- */

/** Documented transitions of `client.state` (ClientState, the connection loop, close()). */
const TRANSITIONS: ReadonlyMap<ClientState, ReadonlySet<ClientState>> = new Map([
  ['idle', new Set<ClientState>(['connecting', 'closed'])],
  ['connecting', new Set<ClientState>(['connected', 'reconnecting', 'disconnected', 'closed'])],
  ['connected', new Set<ClientState>(['reconnecting', 'disconnected', 'closed'])],
  ['reconnecting', new Set<ClientState>(['connected', 'disconnected', 'closed'])],
  ['disconnected', new Set<ClientState>(['connecting', 'closed'])],
  ['closed', new Set<ClientState>()],
]);

/** The typed errors a request may end with, and what must have happened for each. */
function checkRequest(run: Run, record: RequestRecord, closedAt: number): void {
  const what = `request ${record.name} (timeout ${record.timeout}${record.controller ? ', abortable' : ''})`;
  assert.equal(record.settlements, 1, `${what}: settled ${record.settlements} times`);
  const settledAt = record.settledAt!;
  const outcome = record.outcome!;
  // In time: its timeout, its abort, or the close.
  let due = closedAt;
  if (record.timeout > 0) due = Math.min(due, record.issuedAt + record.timeout);
  if (record.abortedAt !== undefined) due = Math.min(due, record.abortedAt);
  assert.ok(
    settledAt <= due + MARGIN_MS,
    `${what}: settled ${Math.round(settledAt - due)} ms after it was due (${outcome.ok ? 'ok' : String(outcome.error)})`,
  );
  // Where it went, and what came back for it.
  const onGood = run.goodRequests.get(record.name);
  const wire = run.hostile.flatMap((conn) =>
    conn.requests.filter((r) => r.kind === 'request' && r.name === record.name).map((r) => ({ conn, id: r.id })),
  );
  assert.ok(wire.length + (onGood === undefined ? 0 : 1) <= 1, `${what}: sent ${wire.length} times`);
  let answers: Message[] = [];
  if (wire.length === 1) answers = wire[0]!.conn.answers.get(hex(wire[0]!.id)) ?? [];
  else if (onGood === undefined) {
    // Sent, but a server that hung up abruptly never read it: it had one of the ids the client had
    // not used yet on that connection (they only grow), and a reply already on its way may answer it.
    for (const conn of run.hostile) {
      const used = Math.max(0, ...conn.requests.map((r) => idToNumber(r.id)));
      for (const [key, list] of conn.answers) {
        if (idToNumber(Buffer.from(key, 'hex')) > used) answers = answers.concat(list);
      }
    }
  }
  const answered = (test: (m: Message) => boolean): boolean => answers.some(test);
  if (outcome.ok) {
    const got = `${outcome.payload.encoding}:${hex(outcome.payload.data)}`;
    const fromGood = onGood !== undefined && got === `${record.payload.encoding}:${hex(record.payload.data)}`;
    const fromHostile = answered((m) => m.kind === 'reply' && `${m.payload.encoding}:${hex(m.payload.data)}` === got);
    assert.ok(fromGood || fromHostile, `${what}: resolved with ${got}, which no server sent for it`);
    return;
  }
  const error = outcome.error;
  assert.ok(
    error instanceof DuplexwireError,
    `${what}: rejected with ${String(error)}, not one of the typed errors of src/errors.ts`,
  );
  if (error instanceof RequestError) {
    assert.ok(
      answered((m) => m.kind === 'reply-error' && m.code === error.code && m.message === error.message),
      `${what}: RequestError(${error.code}) without such a ReplyError for it`,
    );
  } else if (
    error instanceof ShutdownError ||
    error instanceof InternalError ||
    error instanceof SessionNotFoundError ||
    error instanceof MaxSessionConnectionsError ||
    error instanceof SessionsDisabledError
  ) {
    const reason = {
      ShutdownError: 'shutdown',
      InternalError: 'internal-error',
      SessionNotFoundError: 'session-not-found',
      MaxSessionConnectionsError: 'max-session-connections',
      SessionsDisabledError: 'sessions-disabled',
    }[error.name];
    assert.ok(
      answered((m) => m.kind === 'special-reply' && m.reason === reason),
      `${what}: ${error.name} without a ${reason} reply for it`,
    );
  } else if (error instanceof TimeoutError) {
    assert.ok(record.timeout > 0, `${what}: TimeoutError without a timeout`);
    assert.ok(
      settledAt - record.issuedAt >= record.timeout - 2,
      `${what}: TimeoutError after ${Math.round(settledAt - record.issuedAt)} ms`,
    );
  } else if (error instanceof CanceledError) {
    assert.ok(
      record.abortedAt !== undefined && settledAt >= record.abortedAt,
      `${what}: CanceledError without an abort`,
    );
  } else {
    assert.ok(error instanceof DisconnectedError, `${what}: unexpected ${error.name}: ${error.message}`);
  }
}

/** What the client sent on one hostile connection. */
function checkClientBytes(run: Run, conn: HostileConnection, v21: boolean, sent: Histogram): void {
  const who = `connection ${conn.index}`;
  const { setup } = run.scenario;
  let lastId = 0;
  let clientConf = 0;
  let heartbeats = 0;
  let sawRequest = false;
  const cancels = new Map<string, number>();
  const replies = new Map<string, Message[]>();
  const ownIds = new Set<string>();
  for (const [i, { bytes, binary }] of conn.received.entries()) {
    assert.ok(binary, `${who}: the client sent a text message`);
    let message: Message;
    try {
      message = decode(bytes);
    } catch (error) {
      assert.fail(`${who}: the client sent ${hex(bytes)}, which does not decode: ${String(error)}`);
    }
    sent.add(message.kind);
    switch (message.kind) {
      case 'client-conf':
        clientConf++;
        // PROTOCOL.md §4: exactly `22 01`, first, and only when the server announced minor >= 1.
        assert.ok(v21, `${who}: ClientConf on a v2.0 connection`);
        assert.equal(i, 0, `${who}: ClientConf is message #${i}`);
        assert.equal(hex(bytes), '2201');
        break;
      case 'request':
      case 'restore-session':
      case 'close-session': {
        const id = idToNumber(message.id);
        assert.ok(id > lastId, `${who}: request id ${id} after ${lastId}`);
        lastId = id;
        ownIds.add(hex(message.id));
        assert.notEqual(message.kind, 'close-session', `${who}: a close-session nobody asked for`);
        if (message.kind === 'request') sawRequest = true;
        // The session comes back before anything else is sent.
        else assert.ok(!sawRequest, `${who}: session restore after a request`);
        if (message.kind === 'restore-session') {
          const key = new TextDecoder().decode(message.key);
          assert.ok(keysSent(run).has(key), `${who}: restore of a key no server sent (${JSON.stringify(key)})`);
        }
        break;
      }
      case 'cancel': {
        assert.ok(v21, `${who}: CancelRequest on a v2.0 connection`);
        const key = hex(message.id);
        assert.ok(ownIds.has(key), `${who}: cancel of id ${key}, not a request of the client`);
        cancels.set(key, (cancels.get(key) ?? 0) + 1);
        assert.equal(cancels.get(key), 1, `${who}: two cancels of id ${key}`);
        break;
      }
      case 'heartbeat':
        heartbeats++;
        break;
      case 'signal':
        assert.equal(run.signals.get(message.name), true, `${who}: signal ${message.name} that signal() did not send`);
        break;
      case 'reply':
      case 'reply-error':
      case 'special-reply': {
        const key = hex(message.id);
        assert.ok(conn.serverRequests.has(key), `${who}: a reply to ${key}, which the server never asked`);
        const list = replies.get(key) ?? [];
        list.push(message);
        replies.set(key, list);
        break;
      }
      default:
        assert.fail(`${who}: the client sent a ${message.kind}`);
    }
  }
  if (v21) assert.ok(clientConf === 1 || conn.received.length === 0, `${who}: ${clientConf} ClientConf`);
  // Heartbeats: one per 0.75 x the announced read timeout of silence, none when that is under 1 ms.
  const handshake = conn.plan.handshake;
  const accept = conn.model.accepted && handshake.kind === 'message' ? decode(handshake.bytes) : undefined;
  const interval = accept?.kind === 'accept-conf' ? accept.readTimeout * 0.75 : 0;
  const lifetime = conn.closedAt - conn.openedAt;
  const most = interval >= 1 ? Math.ceil(lifetime / interval) + 1 : 0;
  assert.ok(
    heartbeats <= most,
    `${who}: ${heartbeats} heartbeats in ${Math.round(lifetime)} ms (interval ${interval} ms)`,
  );
  // Replies to server requests: per handler, at most one per request.
  for (const [key, list] of replies) {
    const asked = conn.serverRequests.get(key) ?? [];
    assert.ok(setup.handler !== 'hang', `${who}: a reply from a handler that never answers`);
    assert.ok(list.length <= asked.length, `${who}: ${list.length} replies to ${asked.length} requests of id ${key}`);
    for (const reply of list) {
      if (setup.handler === 'none') {
        assert.ok(
          reply.kind === 'special-reply' && reply.reason === 'internal-error',
          `${who}: not a 02 without onRequest`,
        );
      } else if (setup.handler === 'fail') {
        assert.ok(reply.kind === 'reply-error' && reply.code === 'E_CLIENT', `${who}: not the handler's RequestError`);
      } else {
        const got = reply.kind === 'reply' ? `${reply.payload.encoding}:${hex(reply.payload.data)}` : reply.kind;
        assert.ok(
          asked.some((p) => `${p.encoding}:${hex(p.data)}` === got),
          `${who}: echo reply ${got} to a request that carried none of that`,
        );
      }
    }
  }
}

/** Server requests the client must have answered on a connection that stayed open. */
function owedReplies(conn: HostileConnection): Map<string, number> {
  const owed = new Map<string, number>();
  for (const [key, list] of conn.serverRequests) {
    // A cancel may keep one of them from being answered (the latest of that id, if still running).
    owed.set(key, Math.max(0, list.length - (conn.serverCancels.get(key) ?? 0)));
  }
  return owed;
}

function repliesFrom(conn: HostileConnection, key: string): number {
  let n = 0;
  for (const { bytes } of conn.received) {
    if (bytes.length >= 9 && [0, 2, 191, 192, 193].includes(bytes[0]!) && hex(bytes.subarray(1, 9)) === key) n++;
  }
  return n;
}

/** Every session key a server of this run sent in JSON the client could read. */
function keysSent(run: Run): Set<string> {
  const keys = new Set<string>();
  for (const conn of run.hostile) {
    for (const text of conn.sessionTexts) {
      try {
        const value = JSON.parse(text) as unknown;
        if (value !== null && typeof value === 'object' && typeof (value as { k?: unknown }).k === 'string') {
          keys.add((value as { k: string }).k);
        }
      } catch {}
    }
  }
  return keys;
}

function withinBound<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]);
}

/* ------------------------------------------------------------------------------------------- */
/* One scenario, end to end                                                                    */
/* ------------------------------------------------------------------------------------------- */

/** Runs the plans against a fresh client, then checks everything the model says. */
async function runScenario(h: Harness, number: number, scenario: Scenario): Promise<void> {
  const run = new Run(number, scenario);
  const { setup } = scenario;
  h.current = run;
  h.runs.set(number, run);
  h.tracker.run = number;
  const logger = recordingLogger();
  const options: ClientOptions = {
    logger,
    autoConnect: false,
    reconnect: setup.reconnect ? { initialDelay: 5, maxDelay: 20, jitter: 0 } : false,
    connectTimeout: CONNECT_TIMEOUT,
    requestTimeout: REQUEST_TIMEOUT,
    maxMessageSize: LIMIT,
    protocolMinor: setup.protocolMinor,
    subProtocol: setup.subProtocol,
    serverTimeout: setup.serverTimeout,
    ...(setup.handler === 'hang' ? { maxInflightRequests: HANG_INFLIGHT } : {}),
    ...(setup.handler === 'none' ? {} : { onRequest: handlerOf(setup.handler) }),
  };
  const client = new Client(`${h.url}?run=${number}`, options);
  const d: Driven = { client, run, requestCount: 0, signalCount: 0 };
  run.driven = d;
  client.on('state', (state) => {
    const from = run.states.at(-1)!;
    if (!TRANSITIONS.get(from)!.has(state)) run.badTransitions.push(`${from} -> ${state}`);
    run.states.push(state);
  });
  client.on('error', (error) => run.errors.push({ at: performance.now(), error }));
  client.on('signal', (message) => {
    run.signalEvents.push({ conn: run.upgrades - 1, key: signalKey(message.name, message.payload) });
  });
  client.on('connect', () => {
    const to = run.upgrades > scenario.plans.length ? 'good' : run.upgrades - 1;
    run.connects.push(to);
  });
  client.on('disconnect', ({ code }) => {
    run.disconnects.push({ to: run.connects.at(-1)!, session: client.session?.key ?? null, code });
  });
  try {
    for (let i = 0; i < setup.early; i++) {
      issueRequest(d, { op: 'request', encoding: 'utf8', timeout: 'default', abortable: i === 1 });
    }
    const connected = client.connect().then(
      () => ({ ok: true as const }),
      (error: unknown) => ({ ok: false as const, error }),
    );

    // The plans, one connection each, for as long as the client comes back.
    let index = 0;
    let expectNext = true;
    let last: HostileConnection | undefined;
    let permanent = false;
    let clientClosed = false;
    while (expectNext && index < scenario.plans.length) {
      const conn = await run.connection(index, SETTLE_MS);
      assert.ok(conn instanceof HostileConnection, `connection ${index} did not come`);
      await conn.done;
      last = conn;
      const plan = conn.plan;
      clientClosed = plan.ending.end === 'client-close';
      permanent = conn.model.permanent;
      const model = conn.model;
      const negotiated = model.minor >= 1 && setup.protocolMinor === 1 ? 'v2.1' : 'v2.0';
      h.stats.handshakes.add(model.accepted ? `accepted ${negotiated}` : model.why.split(':')[0]!);
      // Whether it ended: a violation, a hang-up, a failed handshake (the client retries).
      const stillOpen = model.accepted && (plan.ending.end === 'never' || clientClosed) && conn.isOpen;
      if (!stillOpen && !clientClosed) {
        await withinBound(conn.closed, SETTLE_MS, `the end of connection ${index}`);
      }
      expectNext = setup.reconnect && !permanent && !clientClosed && !stillOpen;
      index++;
    }

    if (clientClosed) {
      // Closed by the plan: nothing to come back to.
    } else if (permanent || (!setup.reconnect && last !== undefined && !last.isOpen)) {
      // Given up: no further attempt.
      await waitFor(() => client.state === 'disconnected', SETTLE_MS, "state 'disconnected'");
      await delay(30);
      assert.equal(run.upgrades, index, 'a new connection attempt after the client gave up');
    } else if (expectNext) {
      // The good server: the client comes back and works.
      await waitFor(
        () => client.state === 'connected' && run.connects.at(-1) === 'good',
        SETTLE_MS,
        `the reconnect to the good server (state ${client.state}, ${run.upgrades} upgrades)`,
      );
      const reply = await client.request('final', utf8Payload('after'), { timeout: SETTLE_MS });
      assert.equal(hex(reply.data), hex(encodeUtf8('after')));
      assert.equal(client.session, null, 'a session survived a restore the good server refused');
      h.stats.events.add('reconnected');
    }
    // Open connections that must have answered every server request (v2.1, an answering handler).
    for (const conn of run.hostile) {
      const v21 = conn.model.accepted && conn.model.minor >= 1 && setup.protocolMinor === 1;
      if (!conn.isOpen || !v21 || setup.handler === 'hang') continue;
      for (const [key, owed] of owedReplies(conn)) {
        await waitFor(
          () => repliesFrom(conn, key) >= owed || !conn.isOpen,
          SETTLE_MS,
          `${owed} replies to server requests of id ${key} on connection ${conn.index}`,
        );
      }
    }
    // Requests with a timeout or an abort settle on their own.
    await waitFor(
      () => run.requests.every((r) => r.settledAt !== undefined || (r.timeout === 0 && r.abortedAt === undefined)),
      2 * SETTLE_MS,
      'the requests to settle',
    );

    // close() resolves promptly, wherever the client is.
    await closeClient(d);
    const closedAt = run.closeCalledAt;
    assert.equal(client.state, 'closed');
    assert.equal(client.serverInfo, undefined, 'serverInfo after close()');
    assert.equal(client.supportsV21, false, 'supportsV21 after close()');
    await waitFor(() => run.requests.every((r) => r.settledAt !== undefined), MARGIN_MS, 'the requests after close()');
    const connectOutcome = await connected;
    if (connectOutcome.ok) {
      assert.ok(run.connects.length > 0, 'connect() resolved without a connection');
    } else {
      const e = connectOutcome.error;
      assert.ok(
        e instanceof ConnectError || e instanceof IncompatibleServerError || e instanceof DisconnectedError,
        `connect() rejected with ${String(e)}`,
      );
      if (permanent && !clientClosed && run.connects.length === 0) {
        assert.ok(e instanceof IncompatibleServerError, String(e));
      }
    }

    // Each hostile connection ends, with the code the model allows.
    for (const conn of run.hostile) {
      const seen = await withinBound(conn.closed, SETTLE_MS, `the close of connection ${conn.index}`);
      checkCloseCode(run, conn, seen.code);
      h.stats.serverSaw.add(seen.code);
      const v21 = conn.model.accepted && conn.model.minor >= 1 && setup.protocolMinor === 1;
      checkClientBytes(run, conn, v21, h.stats.clientSent);
    }
    await waitFor(() => run.goodOpen === 0, SETTLE_MS, 'the good server to see the client go');
    for (const record of run.requests) checkRequest(run, record, closedAt);
    for (const name of run.goodSignals) assert.equal(run.signals.get(name), true, `good server got signal ${name}`);
    for (const { error } of run.errors) {
      assert.ok(error instanceof DuplexwireError || error instanceof ProtocolError, `'error' event: ${String(error)}`);
    }
    checkSessions(run);
    checkSignals(run);
    h.stats.events.add('signals emitted', run.signalEvents.length);
    assert.deepEqual(run.badTransitions, [], `state changes outside the documented ones: ${run.states.join(' -> ')}`);
    assert.equal(run.disconnects.length, run.connects.length, "a 'connect' without its 'disconnect' after close()");
    for (const state of run.states) h.stats.events.add(`state ${state}`);
  } finally {
    if (client.state !== 'closed')
      await withinBound(client.close(), CLOSE_BOUND_MS, 'close() in cleanup').catch(() => {});
    for (const conn of run.hostile) conn.terminate();
    await Promise.all(run.hostile.map((conn) => withinBound(conn.closed, SETTLE_MS, 'cleanup').catch(() => {})));
    await Promise.all(run.hostile.map((conn) => conn.done.catch(() => {})));
    h.tracker.run = 0;
    h.current = undefined;
  }
  try {
    // No timer or socket of the scenario left behind (a bounded wait: closes finish asynchronously).
    await waitFor(() => h.tracker.leftovers(number).length === 0, RELEASE_MS, 'resources to be released').catch(() => {
      assert.fail(`left behind after close():\n  ${h.tracker.leftovers(number).join('\n  ')}`);
    });
    // At most the one attempt that was under way, closed by the client at once without a word.
    assert.ok(run.late.length <= 1, `${run.late.length} connections after client.close()`);
    for (const late of run.late) {
      assert.ok(late.at - run.closeCalledAt < CONNECT_TIMEOUT, 'a connection long after client.close()');
      await waitFor(() => late.closeInfo !== undefined, SETTLE_MS, 'the close of a connection after client.close()');
      // 1000 when the client had read the 101 before close() reached the attempt; otherwise
      // close() ends the connect at once, without a close frame (1006), as for a preempted one.
      const code = late.closeInfo?.code ?? 0;
      assert.ok(code === 1000 || code === 1006, `a connection after client.close() closed with ${code}, not 1000/1006`);
      assert.equal(late.messages, 0, 'the client sent messages after client.close()');
      h.stats.events.add(`late attempt closed ${code}`);
    }
  } finally {
    h.runs.delete(number);
  }
  for (const r of run.requests) h.stats.outcomes.add(outcomeName(r));
}

function outcomeName(record: RequestRecord): string {
  const outcome = record.outcome;
  if (outcome === undefined) return 'unsettled';
  return outcome.ok ? 'ok' : ((outcome.error as Error)?.name ?? 'other');
}

function utf8Payload(text: string): Payload {
  return { encoding: 'utf8', data: encodeUtf8(text) };
}

function handlerOf(handler: Handler): NonNullable<ClientOptions['onRequest']> {
  switch (handler) {
    case 'echo':
    case 'none': // not installed: see runScenario
      return (message) => message.payload;
    case 'fail':
      return () => {
        throw new RequestError('E_CLIENT', 'client handler failed');
      };
    case 'hang':
      return (_message, context: RequestContext) =>
        new Promise((_, reject) => {
          if (context.signal.aborted) reject(context.signal.reason);
          context.signal.addEventListener('abort', () => reject(context.signal.reason), { once: true });
        });
  }
}

/* ------------------------------------------------------------------------------------------- */
/* Checks (continued)                                                                          */
/* ------------------------------------------------------------------------------------------- */

/** The close code the raw server saw on one connection, against the model. */
function checkCloseCode(run: Run, conn: HostileConnection, code: number): void {
  const plan = conn.plan;
  const who = `connection ${conn.index} (${conn.model.why})`;
  if (conn.preempted) {
    // The client was closed (1000) while this connection did its handshake or read its burst; a
    // close before the client read the 101 ends its connect at once, without a close frame (1006).
    const allowed = new Set([1000, 1006]);
    if (!conn.model.accepted) allowed.add(conn.model.code);
    else {
      const burst = { ...plan, steps: plan.steps.slice(0, burstLength(plan)) };
      const model = connectionModel(burst, run.scenario.setup, conn.model.minor >= 1);
      for (const c of model.possible) allowed.add(c);
      if (model.certain !== undefined) allowed.add(model.certain);
    }
    assert.ok(allowed.has(code), `${who}, preempted: the server saw ${code}, expected ${[...allowed].join('/')}`);
    return;
  }
  if (!conn.model.accepted) {
    const allowed = new Set([conn.model.code]);
    if (plan.ending.end === 'client-close') {
      // client.close() during the handshake closes it with 1000. A silent server cannot have made
      // the client give up before (that takes connectTimeout, which an 'error' event marks); with
      // a server that sent something, the client may or may not have read it by then.
      const gaveUp = run.errors.some(
        (e) =>
          e.error instanceof ConnectError &&
          e.error.message.includes('no AcceptConf') &&
          e.at > conn.openedAt &&
          e.at < run.closeCalledAt,
      );
      if (plan.handshake.kind === 'silent') {
        if (!gaveUp) allowed.delete(1002);
        allowed.add(gaveUp ? 1002 : 1000);
      } else {
        allowed.add(1000);
      }
      // A close before the client read the 101 ends its connect at once: no close frame.
      if (!gaveUp) allowed.add(1006);
    }
    assert.ok(allowed.has(code), `${who}: the server saw ${code}, expected ${[...allowed].join('/')}`);
    return;
  }
  const v21 = conn.model.minor >= 1 && run.scenario.setup.protocolMinor === 1;
  const model = connectionModel(plan, run.scenario.setup, v21);
  const allowed = new Set(model.possible);
  const racing = !plan.sync && plan.ending.end !== 'never';
  if (model.certain !== undefined) {
    allowed.add(model.certain);
    if (racing && (plan.ending.end === 'destroy' || plan.ending.end === 'fin')) allowed.add(1006);
    if (racing && plan.ending.end === 'client-close') allowed.add(1000);
  } else {
    allowed.add(endingCode(plan.ending));
  }
  assert.ok(
    allowed.has(code),
    `${who}: the server saw ${code}, expected ${[...allowed].join('/')} (${model.why}; ending ${JSON.stringify(plan.ending)})`,
  );
}

/** The signals the client emitted on each hostile connection: a prefix of the ones sent, within the model's range. */
function checkSignals(run: Run): void {
  for (const conn of run.hostile) {
    const got = run.signalEvents.filter((e) => e.conn === conn.index).map((e) => e.key);
    if (!conn.model.accepted || conn.preempted) {
      assert.ok(
        got.length <= (conn.preempted ? burstLength(conn.plan) : 0),
        `connection ${conn.index}: signals from a failed handshake`,
      );
      continue;
    }
    const v21 = conn.model.minor >= 1 && run.scenario.setup.protocolMinor === 1;
    const model = connectionModel(conn.plan, run.scenario.setup, v21);
    assert.deepEqual(got, model.signals.slice(0, got.length), `connection ${conn.index}: other signals than sent`);
    assert.ok(
      got.length >= model.sureSignals && got.length <= model.signals.length,
      `connection ${conn.index}: ${got.length} signals emitted, expected ${model.sureSignals}..${model.signals.length} (${model.why})`,
    );
  }
}

/** The session held when a hostile connection ended: the model's, or at least one a server sent. */
function checkSessions(run: Run): void {
  const sent = keysSent(run);
  for (const { to, session } of run.disconnects) {
    if (to === 'good') continue;
    const conn = run.hostile[to]!;
    assert.ok(session === null || sent.has(session), `connection ${to}: the client holds a session no server sent`);
    const restored = conn.requests.some((r) => r.kind === 'restore-session');
    if (restored) continue;
    const v21 = conn.model.minor >= 1 && run.scenario.setup.protocolMinor === 1;
    const model = connectionModel(conn.plan, run.scenario.setup, v21);
    if (model.sessions === undefined) continue;
    assert.ok(
      model.sessions.has(session),
      `connection ${to}: the client holds ${JSON.stringify(session)}, expected one of ${JSON.stringify([...model.sessions])}`,
    );
  }
}

/* ------------------------------------------------------------------------------------------- */
/* The fuzz                                                                                    */
/* ------------------------------------------------------------------------------------------- */

test(`client fuzz: a hostile server against a real Client (${RUNS} scenarios)`, async (t) => {
  const faults = watchFaults(t);
  const h = await startHarness(t);
  h.tracker.enable();
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  t.after(() => {
    lag.disable();
    h.tracker.disable();
  });
  let runs = 0;
  const started = performance.now();
  await checkFuzz(
    scenarioArb,
    async (scenario) => {
      // Per scenario, so that shrinking finds the one that caused it.
      faults.length = 0;
      h.strays.length = 0;
      lag.reset();
      try {
        await runScenario(h, ++runs, scenario);
      } catch (error) {
        // The machine is shared: a stalled event loop explains a timer that fired late.
        if (error instanceof Error) error.message += ` [event loop stalled up to ${Math.round(lag.max / 1e6)} ms]`;
        throw error;
      } finally {
        // What escaped the scenario comes first: it is usually the cause of anything else.
        assert.deepEqual(faults, [], 'uncaught exception, unhandled rejection or warning');
      }
      assert.deepEqual(h.strays, [], 'a connection attempt from a scenario that was over');
    },
    { runs: RUNS, seed: SEED, path: PATH, timeLimit: PROPERTY_MS, label: '', describe: describeScenario },
  );
  const elapsed = Math.round(performance.now() - started);
  console.log(`client-fuzz: ${JSON.stringify({ seed: SEED, runs, ms: elapsed, ...h.stats })}`);
  t.diagnostic(`seed ${SEED} (FUZZ_SEED=${SEED} FUZZ_RUNS=${RUNS} replays this run)`);
  assert.deepEqual(faults, [], 'uncaught exception, unhandled rejection or warning');

  // Coverage: the fuzz reached every kind of outcome, or it proves little.
  if (RUNS >= DEFAULT_RUNS && PATH === undefined) {
    const { handshakes, serverSaw, outcomes, events } = h.stats;
    const why = `seed ${SEED}: ${JSON.stringify(h.stats)}`;
    assert.ok(
      handshakes.get('accepted v2.1') + handshakes.get('accepted v2.0') >= runs / 2,
      `too few handshakes; ${why}`,
    );
    assert.ok(events.get('reconnected') >= runs / 10, `too few reconnects; ${why}`);
    for (const code of [1000, 1002, 1009]) assert.ok(serverSaw.get(code) > 0, `the server never saw ${code}; ${why}`);
    for (const name of ['ok', 'TimeoutError', 'DisconnectedError']) {
      assert.ok(outcomes.get(name) > 0, `no request ended ${name}; ${why}`);
    }
  }
});
