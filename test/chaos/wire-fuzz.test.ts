/**
 * Wire fuzz over real sockets: a Server on 127.0.0.1, over the `ws` transport and over the
 * uWebSockets.js transport, against hostile raw WebSocket peers (the `ws` package's client, driven
 * byte by byte, with raw frames written under it when the fuzz wants malformed WebSocket framing).
 *
 * Each fast-check run is a scenario: 1-4 raw peers connect at once, and each sends a burst of
 * 1-8 messages (a clean peer sends valid ones only, a flooding one requests and cancels, a hostile
 * one anything) biased towards the protocol's shapes: valid messages of every type, mutations of
 * them, type bytes of the edges, lying name lengths, odd UTF-16, invalid UTF-8 in payloads and in
 * text frames, replies to requests never sent, cancels, empty and oversized messages, fragmented
 * messages, pings, malformed frame headers and huge declared lengths. A model (`expectOutcome`,
 * built on the pure codec and PROTOCOL.md's rules) says for each peer either "every message is
 * handled" or "op #k closes with code C"; the test then checks, per peer:
 * - open: the handler saw exactly the requests and signals sent, every request got its reply
 *   (sessions are disabled: close/restore session get 05), and a well-formed request on the same
 *   socket still gets its reply;
 * - closed: the close frame carries C (uWS: see UWS_CUT below) with a reason of at most 123
 *   bytes, the server reports C too, the handler saw exactly the messages before op #k and nothing
 *   after it, and nothing but the immediate replies of those messages came back;
 * and per run: a fresh raw peer's request gets its reply, the well-behaved Client connected the
 * whole time gets the reply of a request sent during the burst (10 s bound), and
 * `server.connections` goes back to that client alone (no leaked Connection). Over the whole
 * property: no uncaught exception or unhandled rejection, and no error logged by the server but
 * the handler failures the fuzz asks for. A histogram of close codes and handled messages is
 * printed (one line per transport) and a minimum coverage is asserted.
 *
 * How the model stays exact on real sockets: request handlers of a fuzzing peer wait on a gate
 * that opens only once the peer's whole burst was read (a marker signal that ends every burst was
 * handled) or the peer was closed. Requests in flight then only grow during a burst, so the
 * `maxInflightRequests` close (1008) lands on a known message whatever TCP does to the burst.
 *
 * Environment:
 *   FUZZ_RUNS=<n>   scenarios per transport (default 150; 400 with CI=true). The coverage minimums
 *                   are only asserted at the default count or above, and not when replaying a path.
 *   FUZZ_SEED=<n>   fast-check seed (default: random, printed in the histogram line and in any
 *                   failure). A failure prints `seed` and `path`; replay it with
 *   FUZZ_PATH=<p>   together with FUZZ_SEED, to rerun exactly the counterexample fast-check found.
 *
 * Regression tests (found by this fuzz or by probing its frame-level catalogue) are at the end,
 * with the frame-level rules uWebSockets.js does not enforce pinned as listed on `uwsTransport`.
 */
import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { randomInt } from 'node:crypto';
import type { Socket } from 'node:net';
import { type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { WebSocket } from 'ws';
import { decode } from '../../protocol/decode.ts';
import { encodeAcceptConf, encodeReply, encodeReplyError, encodeSpecialReply } from '../../protocol/encode.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { binary, payloadText, utf8 } from '../../protocol/payload.ts';
import type { Payload } from '../../protocol/types.ts';
import { Client } from '../../src/client/client.ts';
import { RequestError } from '../../src/errors.ts';
import type { Connection } from '../../src/server/connection.ts';
import type { DisconnectInfo } from '../../src/server/options.ts';
import { Server } from '../../src/server/server.ts';
import { wsClientTransport } from '../../transports/ws.ts';
import { hex, recordingLogger, waitFor } from '../helpers.ts';
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
} from './fuzz-helpers.ts';
import { type TransportUnderTest, uwsUnderTest, wsUnderTest } from '../transport-under-test.ts';

/* ------------------------------------------------------------------------------------------- */
/* Settings                                                                                    */
/* ------------------------------------------------------------------------------------------- */

const DEFAULT_RUNS = process.env.CI === 'true' ? 400 : 150;
const RUNS = envInteger('FUZZ_RUNS') ?? DEFAULT_RUNS;
const SEED = envInteger('FUZZ_SEED') ?? randomInt(1, 2 ** 31);
const PATH = process.env.FUZZ_PATH;
/** Small, so that oversized messages are cheap: 512 bytes pass, 513 close 1009. */
const LIMIT = 512;
/** Small, so that bursts of requests reach it: the fourth request in flight closes 1008. */
const MAX_INFLIGHT = 3;
/** Bound of every wait on the server (a close, a reply, a handler call). */
const SETTLE_MS = 5_000;
/** Bound of the well-behaved client's requests: generous, the machine is noisy. */
const CLIENT_MS = 10_000;
/** Whole property, shrinking included: a hang fails instead of eating the suite's time. */
const PROPERTY_MS = 45_000;

/** Names no generator produces: the marker that ends every burst, and the probe request. */
const MARK = '~fuzz-mark~';
const PROBE = '~fuzz-probe~';
const PROBE_ID = Uint8Array.of(0xfe, 0xca, 0xfe, 0xca, 0xfe, 0xca, 0xfe, 0xca);

/** Close codes a server may send to a peer that broke a rule (README, PROTOCOL.md §8, the adapters). */
const VIOLATION_CLOSE_CODES: ReadonlySet<number> = new Set([1002, 1003, 1007, 1008, 1009]);
/**
 * uWebSockets.js cuts some connections without a close frame (documented on `uwsTransport`): a
 * message over twice the limit, a text message of invalid UTF-8, a malformed frame. The peer sees
 * 1006; the server reports the code `ws` would have sent.
 */
const UWS_CUT = 1006;

/* ------------------------------------------------------------------------------------------- */
/* Bytes                                                                                       */
/* ------------------------------------------------------------------------------------------- */

const MARKER_MESSAGE = signalBytes(63, latin1(MARK), new Uint8Array(0));

function probeRequest(text: string): Uint8Array {
  return requestBytes(127, PROBE_ID, latin1(PROBE), latin1(text));
}

/**
 * One WebSocket frame as a client writes it: masked with a zero key, so the payload bytes stay
 * as they are. `declared` overrides the length field (a header may promise more than follows).
 */
function rawFrame(first: number, payload: Uint8Array, declared = BigInt(payload.length)): Buffer {
  let header: Buffer;
  if (declared < 126n) {
    header = Buffer.from([first, 0x80 | Number(declared)]);
  } else if (declared < 65536n) {
    header = Buffer.alloc(4);
    header[0] = first;
    header[1] = 0x80 | 126;
    header.writeUInt16BE(Number(declared), 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = first;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(declared, 2);
  }
  return Buffer.concat([header, Buffer.alloc(4), payload]);
}

/* ------------------------------------------------------------------------------------------- */
/* What the fuzzer sends                                                                       */
/* ------------------------------------------------------------------------------------------- */

/** Frame-level faults, written on the TCP socket under the raw peer. */
type FrameFault =
  | { readonly fault: 'huge-length'; readonly declared: bigint }
  | { readonly fault: 'reserved-bits'; readonly rsv: number }
  | { readonly fault: 'reserved-opcode'; readonly opcode: number }
  | { readonly fault: 'stray-continuation' }
  | { readonly fault: 'long-ping' }
  | { readonly fault: 'fragmented-ping' };

type Op =
  /** A binary message, sent in `fragments` frames. */
  | { readonly kind: 'binary'; readonly bytes: Uint8Array; readonly fragments: number }
  /** A text frame (the bytes may be invalid UTF-8), in `fragments` frames. */
  | { readonly kind: 'text'; readonly bytes: Uint8Array; readonly fragments: number }
  | { readonly kind: 'ping'; readonly bytes: Uint8Array }
  | ({ readonly kind: 'frame' } & FrameFault);

interface PeerPlan {
  readonly ops: readonly Op[];
}

type Scenario = readonly PeerPlan[];

function frameFaultBytes(op: FrameFault): Buffer {
  switch (op.fault) {
    case 'huge-length':
      return rawFrame(0x82, Uint8Array.of(0x7f, 0x01, 0x02), op.declared);
    case 'reserved-bits':
      return rawFrame(0x82 | op.rsv, Uint8Array.of(0x21));
    case 'reserved-opcode':
      return rawFrame(0x80 | op.opcode, Uint8Array.of(0x21));
    case 'stray-continuation':
      return rawFrame(0x80, Uint8Array.of(0x21));
    case 'long-ping':
      return rawFrame(0x89, new Uint8Array(126));
    case 'fragmented-ping':
      return rawFrame(0x09, Uint8Array.of(0x21));
  }
}

function describeOp(op: Op): string {
  switch (op.kind) {
    case 'binary':
    case 'text': {
      const shown =
        op.bytes.length > 48 ? `${hex(op.bytes.subarray(0, 48))}… (${op.bytes.length} bytes)` : hex(op.bytes);
      return `${op.kind}${op.fragments > 1 ? `/${op.fragments} fragments` : ''} [${shown}]`;
    }
    case 'ping':
      return `ping [${hex(op.bytes)}]`;
    case 'frame':
      return `frame ${JSON.stringify(op, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))} = ${frameFaultBytes(op).toString('hex')}`;
  }
}

function describeScenario(scenario: Scenario): string {
  return scenario
    .map((peer, i) => `  peer ${i}:\n${peer.ops.map((op, k) => `    #${k} ${describeOp(op)}`).join('\n')}`)
    .join('\n');
}

/* ------------------------------------------------------------------------------------------- */
/* Generators                                                                                  */
/* ------------------------------------------------------------------------------------------- */

/** Ids that collide on purpose (so cancels hit requests), plus the edges of `idToNumber`. */
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

/** `fail` and `boom` make the handler throw (reply 0 and reply 2). */
const nameArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('', 'echo', 'fail', 'boom', 'a', 'abc', '__proto__').map(latin1) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 12 }) },
  { weight: 1, arbitrary: fc.constantFrom(new Uint8Array(255).fill(0x6e), new Uint8Array(254).fill(0xff)) },
);

const requestArb = fc
  .tuple(fc.constantFrom(127, 128, 129), idArb, nameArb, payloadArb, utf16PayloadArb)
  .map(([type, id, name, payload, utf16]) => {
    let body = type === 129 ? utf16 : payload;
    // A request needs a name or a payload; a nameless UTF-16 request a code unit.
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
/** Replies, error replies and special replies: none answers a request the server sent. */
const stray = fc.oneof(
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
const controlArb = fc.oneof(
  fc.constant(Uint8Array.of(33)), // heartbeat
  fc.integer({ min: 0, max: 255 }).map((minor) => Uint8Array.of(34, minor)), // ClientConf
  idArb.map((id) => concat(35, id)), // cancel
  idArb.map((id) => concat(31, id)), // close session
  fc.tuple(idArb, fc.uint8Array({ minLength: 1, maxLength: 70 })).map(([id, key]) => concat(32, id, key)), // restore
  payloadArb.map((json) => concat(21, json.length === 0 ? [0x7b] : json)), // server-to-client types
  fc.constant(Uint8Array.of(22)),
  fc.uint8Array({ minLength: 10, maxLength: 14 }).map((rest) => concat(23, rest)),
);
const validMessageArb = fc.oneof(
  { weight: 5, arbitrary: requestArb },
  { weight: 3, arbitrary: signalArb },
  { weight: 2, arbitrary: stray },
  { weight: 3, arbitrary: controlArb },
);

const mutatedArb = fc
  .tuple(validMessageArb, fc.array(mutationArb, { minLength: 1, maxLength: 3 }))
  .map(([bytes, mutations]) => mutate(bytes, mutations));
const randomMessageArb = fc
  .tuple(fc.constantFrom(...TYPE_BYTES), fc.uint8Array({ maxLength: 40 }))
  .map(([type, rest]) => concat(type, rest));
/** Around the size limit: exactly the limit (accepted), just over, twice, over twice. */
const sizedArb = fc
  .tuple(fc.constantFrom(LIMIT, LIMIT + 1, 2 * LIMIT, 2 * LIMIT + 1, 3000), idArb)
  .map(([size, id]) => {
    const out = new Uint8Array(size).fill(0x2e);
    out.set(requestBytes(127, id, latin1('echo'), new Uint8Array(0)));
    return out;
  });

const fragmentsArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant(1) },
  { weight: 1, arbitrary: fc.integer({ min: 2, max: 3 }) },
);
const binaryOp = (bytes: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Op> =>
  fc.tuple(bytes, fragmentsArb).map(([b, fragments]) => ({ kind: 'binary' as const, bytes: b, fragments }));

const textArb = fc.oneof(
  { weight: 3, arbitrary: validTextArb },
  { weight: 3, arbitrary: invalidUtf8Arb },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 16 }) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom(LIMIT + 1, 2 * LIMIT + 1), fc.boolean())
      .map(([size, bad]) => new Uint8Array(size).fill(bad ? 0xff : 0x61)),
  },
);
const frameFaultArb: fc.Arbitrary<Op> = fc.oneof(
  fc
    .constantFrom(2n * BigInt(LIMIT) + 1n, 65_535n, 2n ** 32n, 2n ** 53n, 2n ** 63n)
    .map((declared) => ({ kind: 'frame' as const, fault: 'huge-length' as const, declared })),
  fc.constantFrom(0x40, 0x20, 0x10).map((rsv) => ({ kind: 'frame' as const, fault: 'reserved-bits' as const, rsv })),
  fc
    .constantFrom(3, 4, 7, 0xb, 0xf)
    .map((opcode) => ({ kind: 'frame' as const, fault: 'reserved-opcode' as const, opcode })),
  fc.constantFrom(
    { kind: 'frame' as const, fault: 'stray-continuation' as const },
    { kind: 'frame' as const, fault: 'long-ping' as const },
    { kind: 'frame' as const, fault: 'fragmented-ping' as const },
  ),
);

const hostileOpArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: binaryOp(validMessageArb) },
  { weight: 5, arbitrary: binaryOp(mutatedArb) },
  { weight: 2, arbitrary: binaryOp(randomMessageArb) },
  { weight: 1, arbitrary: binaryOp(sizedArb) },
  { weight: 1, arbitrary: binaryOp(fc.constant(new Uint8Array(0))) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(textArb, fragmentsArb)
      .map(([bytes, fragments]) => ({ kind: 'text' as const, bytes, fragments })),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 125 }).map((bytes) => ({ kind: 'ping' as const, bytes })) },
  { weight: 1, arbitrary: frameFaultArb },
);
/** A peer that only sends valid messages: without it, most peers would be closed by their first burst. */
const cleanOpArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: binaryOp(validMessageArb) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 16 }).map((bytes) => ({ kind: 'ping' as const, bytes })) },
);
/** Requests and cancels of the pooled ids: in-flight accounting, cancellation and the 1008 close. */
const floodOpArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: binaryOp(requestArb) },
  { weight: 1, arbitrary: binaryOp(fc.constantFrom(...ID_POOL).map((id) => concat(35, id))) },
);
const peerArb: fc.Arbitrary<PeerPlan> = fc.oneof(
  { weight: 1, arbitrary: fc.array(cleanOpArb, { minLength: 1, maxLength: 6 }).map((ops) => ({ ops })) },
  { weight: 1, arbitrary: fc.array(floodOpArb, { minLength: 2, maxLength: 6 }).map((ops) => ({ ops })) },
  { weight: 3, arbitrary: fc.array(hostileOpArb, { minLength: 1, maxLength: 8 }).map((ops) => ({ ops })) },
);
const scenarioArb: fc.Arbitrary<Scenario> = fc.array(peerArb, { minLength: 1, maxLength: 4 });

/* ------------------------------------------------------------------------------------------- */
/* The model                                                                                   */
/* ------------------------------------------------------------------------------------------- */

type TransportName = 'ws' | 'uws';

interface Expectation {
  /** The op that closes the connection, or -1 when every op is handled. */
  readonly closeAt: number;
  /** Close codes the raw peer may see, and the server may report (one each, but a set for uWS quirks). */
  readonly peerCodes: readonly number[];
  readonly serverCodes: readonly number[];
  readonly why: string;
  /** Requests and signals the handlers must see, in order (see `handledKey`). */
  readonly handled: readonly string[];
  /** Hex of the replies sent while the burst is read (session requests: 05), in order. */
  readonly immediate: readonly string[];
  /** Hex of the replies of the requests, once their handlers ran (open peers only). */
  readonly replies: readonly string[];
}

function handledKey(kind: 'request' | 'signal', name: string, payload: Payload): string {
  return `${kind} ${hex(latin1(name))} ${payload.encoding} ${hex(payload.data)}`;
}

/** What the test server's handler answers. */
function expectedReply(id: Uint8Array, name: string, payload: Payload): string {
  if (name === 'fail') return hex(encodeReplyError(id, 'E_FUZZ', 'fuzz failure'));
  if (name === 'boom') return hex(encodeSpecialReply(id, 'internal-error'));
  return hex(encodeReply(id, payload));
}

/**
 * What the server must do with one peer's burst, from PROTOCOL.md's validity table (through the
 * pure decoder), its section 8 close codes, the limits the test server is given, and the
 * documented differences of the uWS transport.
 */
function expectOutcome(ops: readonly Op[], transport: TransportName): Expectation {
  const handled: string[] = [];
  const immediate: string[] = [];
  const requests: Array<{ readonly reply: string; canceled: boolean }> = [];
  /** The requests of each id, by index: a peer may reuse an id while its request runs. */
  const running = new Map<string, number[]>();
  let clientConf = false;
  const close = (at: number, peerCode: number, serverCodes: readonly number[], why: string): Expectation => {
    return { closeAt: at, peerCodes: [peerCode], serverCodes, why, handled, immediate, replies: [] };
  };
  for (const [at, op] of ops.entries()) {
    if (op.kind === 'ping') continue;
    if (op.kind === 'frame') {
      const huge = op.fault === 'huge-length';
      if (transport === 'ws')
        return close(at, huge ? 1009 : 1002, [huge ? 1009 : 1002], `malformed frame (${op.fault})`);
      // uWS cuts most malformed frames without a close frame and reports 1006 to the owner (listed
      // on uwsTransport; pinned by 'uws: a malformed frame ...' below).
      return close(at, UWS_CUT, huge ? [1009] : [1002, UWS_CUT], `malformed frame (${op.fault}), cut by uWS`);
    }
    const size = op.bytes.length;
    if (transport === 'uws' && size > 2 * LIMIT) return close(at, UWS_CUT, [1009], 'over twice the limit, cut by uWS');
    if (op.kind === 'text') {
      const valid = isUtf8(op.bytes);
      // uWS checks UTF-8 before the adapter sees the size; ws checks the size on the frame header.
      if (transport === 'uws' && !valid) return close(at, UWS_CUT, [1007], 'text of invalid UTF-8, cut by uWS');
      if (size > LIMIT) return close(at, 1009, [1009], 'text message over the limit');
      if (!valid) return close(at, 1007, [1007], 'text message of invalid UTF-8');
      return close(at, 1003, [1003], 'text message');
    }
    if (size > LIMIT) return close(at, 1009, [1009], 'message over the limit');
    let message: ReturnType<typeof decode>;
    try {
      message = decode(op.bytes);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      // Every rule a received message can break closes 1002 (PROTOCOL.md §8), whatever the code.
      return close(at, 1002, [1002], `${error.code}: ${error.message}`);
    }
    switch (message.kind) {
      case 'request': {
        if (requests.length + 1 > MAX_INFLIGHT) return close(at, 1008, [1008], 'too many requests in flight');
        handled.push(handledKey('request', message.name, message.payload));
        const sameId = running.get(hex(message.id));
        if (sameId === undefined) running.set(hex(message.id), [requests.length]);
        else sameId.push(requests.length);
        requests.push({ reply: expectedReply(message.id, message.name, message.payload), canceled: false });
        break;
      }
      case 'signal':
        handled.push(handledKey('signal', message.name, message.payload));
        break;
      case 'client-conf':
        if (clientConf) return close(at, 1002, [1002], 'ClientConf twice');
        clientConf = true;
        break;
      case 'close-session':
      case 'restore-session':
        immediate.push(hex(encodeSpecialReply(message.id, 'sessions-disabled')));
        break;
      case 'cancel': {
        // Every request with that id (still running: handlers wait on the gate) is told, and
        // none of their replies is sent.
        for (const index of running.get(hex(message.id)) ?? []) requests[index]!.canceled = true;
        break;
      }
      default:
      // Replies to nothing, heartbeats, server-to-client types: ignored.
    }
  }
  return {
    closeAt: -1,
    peerCodes: [],
    serverCodes: [],
    why: 'every message is valid',
    handled,
    immediate,
    replies: requests.filter((r) => !r.canceled).map((r) => r.reply),
  };
}

/* ------------------------------------------------------------------------------------------- */
/* Raw peers                                                                                   */
/* ------------------------------------------------------------------------------------------- */

interface ClosedInfo {
  readonly code: number;
  readonly reason: Buffer;
}

/** A raw peer: what it received after the AcceptConf, and how it was closed. */
class FuzzPeer {
  readonly tag: string;
  readonly ws: WebSocket;
  readonly messages: Uint8Array[] = [];
  textMessages = 0;
  closeInfo: ClosedInfo | undefined;
  readonly closed: Promise<ClosedInfo>;
  acceptConf: Uint8Array | undefined;

  constructor(url: string, tag: string, sockets: Set<WebSocket>) {
    this.tag = tag;
    this.ws = new WebSocket(`${url}?fuzz=${tag}`, { perMessageDeflate: false, maxPayload: 1 << 20 });
    sockets.add(this.ws);
    this.ws.on('error', () => {});
    this.ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) this.textMessages++;
      else if (this.acceptConf === undefined) this.acceptConf = new Uint8Array(data);
      else this.messages.push(new Uint8Array(data));
    });
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code: number, reason: Buffer) => {
        sockets.delete(this.ws);
        this.closeInfo = { code, reason };
        resolve(this.closeInfo);
      });
    });
  }

  /** Resolves once the AcceptConf arrived. */
  async ready(): Promise<void> {
    await waitFor(
      () => this.acceptConf !== undefined || this.closeInfo !== undefined,
      SETTLE_MS,
      `AcceptConf for peer ${this.tag}`,
    );
    if (this.acceptConf === undefined) throw new Error(`peer ${this.tag} closed before its AcceptConf`);
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  send(op: Op): void {
    if (!this.isOpen) return; // closed by the server in the middle of its burst: nothing more to say
    switch (op.kind) {
      case 'binary':
      case 'text': {
        const binary = op.kind === 'binary';
        const cuts = fragmentBounds(op.bytes.length, op.fragments);
        for (let i = 0; i < cuts.length - 1; i++) {
          this.ws.send(Buffer.from(op.bytes.subarray(cuts[i], cuts[i + 1])), { binary, fin: i === cuts.length - 2 });
        }
        return;
      }
      case 'ping':
        this.ws.ping(Buffer.from(op.bytes));
        return;
      case 'frame':
        this.writeRaw(frameFaultBytes(op));
        return;
    }
  }

  sendBytes(bytes: Uint8Array): void {
    if (this.isOpen) this.ws.send(bytes, { binary: true });
  }

  /** Bytes written under ws, on the TCP socket. ws writes its frames synchronously, so order is kept. */
  writeRaw(data: Buffer): void {
    const socket = (this.ws as unknown as { _socket: Socket | null })._socket;
    if (socket?.writable) socket.write(data);
  }

  /** Closes from our side (1000), or drops the socket if that takes too long. */
  async close(): Promise<void> {
    if (this.closeInfo !== undefined) return;
    if (this.isOpen) this.ws.close(1000, 'fuzz done');
    const timer = setTimeout(() => this.ws.terminate(), 2_000);
    await this.closed;
    clearTimeout(timer);
  }
}

/* ------------------------------------------------------------------------------------------- */
/* The harness                                                                                 */
/* ------------------------------------------------------------------------------------------- */

interface Gate {
  readonly wait: Promise<void>;
  open(): void;
}

function makeGate(): Gate {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { wait, open };
}

/** What the server saw of one raw peer (its `?fuzz=` tag). */
interface PeerRecord {
  readonly handled: string[];
  markerSeen: boolean;
  serverClose: DisconnectInfo | undefined;
  readonly gate: Gate;
}

interface Harness {
  readonly transport: TransportName;
  readonly server: Server;
  readonly url: string;
  readonly client: Client;
  readonly logger: ReturnType<typeof recordingLogger>;
  readonly records: Map<string, PeerRecord>;
  readonly sockets: Set<WebSocket>;
  readonly stats: {
    runs: number;
    peers: number;
    ops: number;
    openPeers: number;
    closedPeers: number;
    /** Requests and signals the handlers got from raw peers, replies those peers got. */
    readonly handled: Histogram;
    /** Close codes the raw peers saw, and the ones the server reported, for server-initiated closes. */
    readonly peerCloses: Histogram;
    readonly serverCloses: Histogram;
    /** Closes where the uWS server reported another code than ws would (a listed uWS difference). */
    readonly uwsDifferences: Histogram;
  };
}

const tags = new WeakMap<Connection, string | null>();

function tagOf(conn: Connection): string | null {
  let tag = tags.get(conn);
  if (tag === undefined) {
    tag = new URLSearchParams(conn.handshake.query).get('fuzz');
    tags.set(conn, tag);
  }
  return tag;
}

async function startHarness(t: TestContext, under: TransportUnderTest, transport: TransportName): Promise<Harness> {
  const logger = recordingLogger();
  const records = new Map<string, PeerRecord>();
  const handled = new Histogram();
  const server = new Server({
    transport: under.server(),
    logger,
    maxMessageSize: LIMIT,
    maxInflightRequests: MAX_INFLIGHT,
    onRequest: async (conn, message) => {
      const tag = tagOf(conn);
      const record = tag === null ? undefined : records.get(tag);
      if (record !== undefined && message.name !== PROBE) {
        record.handled.push(handledKey('request', message.name, message.payload));
        handled.add('requests');
        await record.gate.wait;
      }
      if (message.name === 'fail') throw new RequestError('E_FUZZ', 'fuzz failure');
      if (message.name === 'boom') throw new Error('boom (asked for by the fuzz)');
      return message.payload;
    },
    onSignal: (conn, message) => {
      const tag = tagOf(conn);
      const record = tag === null ? undefined : records.get(tag);
      if (record === undefined) return;
      if (message.name === MARK) record.markerSeen = true;
      else {
        record.handled.push(handledKey('signal', message.name, message.payload));
        handled.add('signals');
      }
    },
    onClientDisconnected: (conn, info) => {
      const tag = tagOf(conn);
      const record = tag === null ? undefined : records.get(tag);
      if (record !== undefined) record.serverClose = info;
    },
  });
  await server.listen();
  const sockets = new Set<WebSocket>();
  t.after(async () => {
    for (const ws of sockets) ws.terminate();
    for (const record of records.values()) record.gate.open();
    await server.shutdown({ timeout: 500 });
  });
  const url = `ws://127.0.0.1:${server.address()!.port}/`;
  const client = new Client(url, { transport: wsClientTransport(), logger: recordingLogger(), reconnect: false });
  t.after(() => client.close());
  await client.connect();
  await waitFor(() => server.connections.size === 1, SETTLE_MS, 'the client connection');
  return {
    transport,
    server,
    url,
    client,
    logger,
    records,
    sockets,
    stats: {
      runs: 0,
      peers: 0,
      ops: 0,
      openPeers: 0,
      closedPeers: 0,
      handled,
      peerCloses: new Histogram(),
      serverCloses: new Histogram(),
      uwsDifferences: new Histogram(),
    },
  };
}

function multiset(items: readonly string[]): string[] {
  return [...items].sort();
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Checks one peer against its expectation, once its burst was sent. */
async function settle(h: Harness, peer: FuzzPeer, expected: Expectation, index: number): Promise<void> {
  const record = h.records.get(peer.tag)!;
  const who = `peer ${index}`;
  await waitFor(
    () => record.markerSeen || peer.closeInfo !== undefined,
    SETTLE_MS,
    `${who}: neither closed nor done with its burst (hang?)`,
  );
  if (expected.closeAt >= 0) {
    assert.ok(
      !record.markerSeen,
      `${who}: expected a close at op #${expected.closeAt} (${expected.why}), but the server read the whole burst`,
    );
    await waitFor(() => record.serverClose !== undefined, SETTLE_MS, `${who}: the server's close report`);
    const { code, reason } = peer.closeInfo!;
    const server = record.serverClose!;
    const what = `${who}, op #${expected.closeAt} (${expected.why}): peer saw ${code} ${JSON.stringify(reason.toString())}, server reported ${server.code} ${JSON.stringify(server.reason)}`;
    assert.ok(expected.peerCodes.includes(code), `${what}; expected the peer to see ${expected.peerCodes.join('/')}`);
    assert.ok(
      expected.serverCodes.includes(server.code),
      `${what}; expected the server to report ${expected.serverCodes.join('/')}`,
    );
    assert.ok(
      VIOLATION_CLOSE_CODES.has(code) || (h.transport === 'uws' && code === UWS_CUT),
      `${what}: not a documented close code`,
    );
    assert.ok(reason.length <= 123, `${what}: reason of ${reason.length} bytes`);
    assert.deepEqual(
      record.handled,
      expected.handled,
      `${what}: handlers saw other messages than those before the violation`,
    );
    // Replies sent before the violation may be cut with the connection; nothing else may come.
    const allowed = new Map<string, number>();
    for (const reply of expected.immediate) allowed.set(reply, (allowed.get(reply) ?? 0) + 1);
    for (const message of peer.messages) {
      const left = allowed.get(hex(message)) ?? 0;
      assert.ok(left > 0, `${what}: unexpected message ${hex(message)}`);
      allowed.set(hex(message), left - 1);
    }
    h.stats.closedPeers++;
    h.stats.peerCloses.add(code);
    h.stats.serverCloses.add(server.code);
    // How often the uWS differences the model allows showed up (listed on uwsTransport).
    if (server.code !== expected.serverCodes[0])
      h.stats.uwsDifferences.add(`${h.transport}: server reported ${server.code}, not ${expected.serverCodes[0]}`);
  } else {
    if (peer.closeInfo !== undefined) {
      const server = record.serverClose;
      assert.fail(
        `${who}: every message is valid, but the connection closed: peer saw ${peer.closeInfo.code} ${JSON.stringify(peer.closeInfo.reason.toString())}, server reported ${server?.code} ${JSON.stringify(server?.reason)}`,
      );
    }
    assert.deepEqual(record.handled, expected.handled, `${who}: handlers did not see exactly the messages sent`);
    // The burst was read; let its handlers finish (the replies of canceled ones are not sent).
    await nextTurn();
    record.gate.open();
    await nextTurn();
    const expectedCount = expected.immediate.length + expected.replies.length;
    await waitFor(
      () => peer.messages.length >= expectedCount || peer.closeInfo !== undefined,
      SETTLE_MS,
      `${who}: ${expectedCount} replies (got ${peer.messages.length})`,
    );
    // Still responsive: a well-formed request on the same socket gets its reply, after all others.
    peer.sendBytes(probeRequest(`probe ${peer.tag}`));
    const probeReply = hex(encodeReply(PROBE_ID, binary(latin1(`probe ${peer.tag}`))));
    await waitFor(
      () => peer.messages.some((m) => hex(m) === probeReply) || peer.closeInfo !== undefined,
      SETTLE_MS,
      `${who}: the reply to a well-formed request after the burst`,
    );
    assert.equal(peer.closeInfo, undefined, `${who}: closed after a well-formed request`);
    const received = peer.messages.map((m) => hex(m)).filter((m) => m !== probeReply);
    assert.deepEqual(
      multiset(received),
      multiset([...expected.immediate, ...expected.replies]),
      `${who}: the replies differ from the expected ones`,
    );
    h.stats.openPeers++;
    h.stats.handled.add('replies received', received.length);
    const requests = expected.handled.filter((key) => key.startsWith('request ')).length;
    h.stats.handled.add('canceled (no reply)', requests - expected.replies.length);
  }
  assert.equal(peer.textMessages, 0, `${who}: the server sent a text message`);
  assert.equal(hex(peer.acceptConf!), hex(ACCEPT_CONF), `${who}: AcceptConf`);
}

const ACCEPT_CONF = encodeAcceptConf({
  major: 2,
  minor: 1,
  readTimeout: 60_000,
  maxMessageSize: LIMIT,
  subProtocol: new Uint8Array(0),
}).slice();

async function runScenario(h: Harness, scenario: Scenario): Promise<void> {
  const run = ++h.stats.runs;
  // The well-behaved client asks during the burst; its answer is checked at the end of the run.
  const tick = h.client.request('echo', utf8(`tick ${run}`), { timeout: CLIENT_MS }).then(
    (payload) => ({ ok: true as const, text: payloadText(payload) }),
    (error: unknown) => ({ ok: false as const, error }),
  );
  const peers = scenario.map((_, i) => {
    const tag = `${run}-${i}`;
    h.records.set(tag, { handled: [], markerSeen: false, serverClose: undefined, gate: makeGate() });
    return new FuzzPeer(h.url, tag, h.sockets);
  });
  try {
    await Promise.all(peers.map((peer) => peer.ready()));
    const expectations = scenario.map((plan) => expectOutcome(plan.ops, h.transport));
    // One burst per peer, interleaved across peers, all written in one turn; the marker signal
    // ends each burst (and must never be handled after a violation).
    const longest = Math.max(...scenario.map((plan) => plan.ops.length));
    for (let k = 0; k < longest; k++) {
      scenario.forEach((plan, i) => {
        const op = plan.ops[k];
        if (op !== undefined) peers[i]!.send(op);
      });
    }
    for (const peer of peers) peer.sendBytes(MARKER_MESSAGE);
    h.stats.peers += peers.length;
    h.stats.ops += scenario.reduce((n, plan) => n + plan.ops.length, 0);
    await Promise.all(peers.map((peer, i) => settle(h, peer, expectations[i]!, i)));
  } finally {
    for (const peer of peers) h.records.get(peer.tag)?.gate.open();
    await Promise.all(peers.map((peer) => peer.close()));
  }
  // No leaked Connection: the server is back to the client alone.
  await waitFor(
    () => h.server.connections.size === 1,
    SETTLE_MS,
    `server.connections back to 1 (the client); it holds ${h.server.connections.size}`,
  );
  for (const peer of peers) h.records.delete(peer.tag);
  await freshProbe(h, run);
  const answered = await tick;
  assert.ok(answered.ok, `the well-behaved client's request failed: ${answered.ok ? '' : String(answered.error)}`);
  assert.equal(answered.text, `tick ${run}`);
  h.stats.handled.add('client replies');
}

/** A fresh raw peer's well-formed request still gets its reply. */
async function freshProbe(h: Harness, run: number): Promise<void> {
  const peer = new FuzzPeer(h.url, `${run}-fresh`, h.sockets);
  try {
    await peer.ready();
    peer.sendBytes(probeRequest(`fresh ${run}`));
    const reply = hex(encodeReply(PROBE_ID, binary(latin1(`fresh ${run}`))));
    await waitFor(
      () => peer.messages.some((m) => hex(m) === reply) || peer.closeInfo !== undefined,
      SETTLE_MS,
      'the reply to a fresh peer',
    );
    assert.equal(peer.closeInfo, undefined, 'a fresh peer was closed');
    h.stats.handled.add('fresh probes');
  } finally {
    await peer.close();
  }
}

/* ------------------------------------------------------------------------------------------- */
/* The fuzz, per transport                                                                     */
/* ------------------------------------------------------------------------------------------- */

async function fuzz(t: TestContext, under: TransportUnderTest, transport: TransportName): Promise<void> {
  const faults: unknown[] = [];
  const onFault = (error: unknown): void => {
    faults.push(error);
  };
  process.on('uncaughtException', onFault);
  process.on('unhandledRejection', onFault);
  t.after(() => {
    process.off('uncaughtException', onFault);
    process.off('unhandledRejection', onFault);
  });
  const h = await startHarness(t, under, transport);
  const started = performance.now();
  await checkFuzz(
    scenarioArb,
    async (scenario) => {
      await runScenario(h, scenario);
      assert.deepEqual(faults, [], 'uncaught exception or unhandled rejection');
    },
    {
      runs: RUNS,
      seed: SEED,
      path: PATH,
      timeLimit: PROPERTY_MS,
      label: transport,
      describe: (scenario) => `(hex)\n${describeScenario(scenario)}`,
    },
  );
  const elapsed = Math.round(performance.now() - started);
  const { stats } = h;
  console.log(
    `wire-fuzz ${transport}: ${JSON.stringify({
      seed: SEED,
      runs: stats.runs,
      ms: elapsed,
      peers: stats.peers,
      ops: stats.ops,
      openPeers: stats.openPeers,
      closedPeers: stats.closedPeers,
      handled: stats.handled,
      peerCloses: stats.peerCloses,
      serverCloses: stats.serverCloses,
      uwsDifferences: stats.uwsDifferences,
    })}`,
  );
  t.diagnostic(`seed ${SEED} (FUZZ_SEED=${SEED} FUZZ_RUNS=${RUNS} replays this run)`);

  // Health after the run: the client is still connected and nothing leaked.
  const last = await h.client.request('echo', utf8('after'), { timeout: CLIENT_MS });
  assert.equal(payloadText(last), 'after');
  assert.equal(h.server.connections.size, 1);
  assert.deepEqual(faults, [], 'uncaught exception or unhandled rejection');
  // A peer's mistake is not a server error; only the failures the fuzz asked for are logged.
  const errors = h.logger.entries.filter((e) => e.level === 'error' && e.message !== 'request handler failed');
  assert.deepEqual(errors, [], 'the server logged errors');

  // Coverage: the fuzz reached the handlers and every kind of close, or it proves little.
  if (RUNS >= DEFAULT_RUNS && PATH === undefined) {
    const codes = [...stats.serverCloses.counts.keys()].filter((code) => VIOLATION_CLOSE_CODES.has(Number(code)));
    const why = `seed ${SEED}: ${JSON.stringify({ handled: stats.handled, serverCloses: stats.serverCloses })}`;
    assert.ok(stats.handled.get('requests') >= stats.runs / 4, `too few requests handled; ${why}`);
    assert.ok(stats.handled.get('signals') >= stats.runs / 8, `too few signals handled; ${why}`);
    assert.ok(stats.openPeers >= stats.runs / 8, `too few peers stayed open; ${why}`);
    assert.ok(codes.length >= 3, `fewer than 3 distinct close codes; ${why}`);
    assert.ok(stats.serverCloses.get(1002) > 0 && stats.serverCloses.get(1009) > 0, `no 1002 or 1009; ${why}`);
  }
}

test(`wire fuzz over real sockets, ws transport (${RUNS} scenarios)`, async (t) => {
  await fuzz(t, wsUnderTest, 'ws');
});

test(`wire fuzz over real sockets, uws transport (${RUNS} scenarios)`, async (t) => {
  await fuzz(t, await uwsUnderTest(), 'uws');
});

/* ------------------------------------------------------------------------------------------- */
/* Regressions: minimal cases of what the fuzz found                                           */
/* ------------------------------------------------------------------------------------------- */

const UNDER: ReadonlyArray<readonly [TransportName, TransportUnderTest]> = [
  ['ws', wsUnderTest],
  ['uws', await uwsUnderTest()],
];

interface RegressionServer {
  readonly server: Server;
  readonly url: string;
  readonly sockets: Set<WebSocket>;
}

async function regressionServer(t: TestContext, under: TransportUnderTest): Promise<RegressionServer> {
  const server = new Server({
    transport: under.server(),
    logger: recordingLogger(),
    maxMessageSize: LIMIT,
    onRequest: (_conn, message) => message.payload,
  });
  await server.listen();
  const sockets = new Set<WebSocket>();
  t.after(async () => {
    for (const ws of sockets) ws.terminate();
    await server.shutdown({ timeout: 200 });
  });
  return { server, url: `ws://127.0.0.1:${server.address()!.port}/`, sockets };
}

/** A raw peer and the server's Connection for it. */
async function regressionPeer(r: RegressionServer): Promise<{ peer: FuzzPeer; conn: Connection }> {
  const peer = new FuzzPeer(r.url, 'regression', r.sockets);
  await peer.ready();
  await waitFor(() => r.server.connections.size === 1, SETTLE_MS, 'the connection');
  return { peer, conn: [...r.server.connections][0]! };
}

function boundedly<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), SETTLE_MS);
    }),
  ]);
}

/** Whichever comes first: a reply (the frame was taken as a message) or the close. */
function answeredOrClosed(peer: FuzzPeer): Promise<void> {
  return waitFor(() => peer.messages.length > 0 || peer.closeInfo !== undefined, SETTLE_MS, 'a reply or the close');
}

const REQUEST_N = requestBytes(127, idBytes(1n), latin1('n'), new Uint8Array(0)); // 7f 0100000000000000 01 6e

for (const [name, under] of UNDER) {
  // Found by the fuzz: after the server closed 1002 for 00, ws kept reading until the close echo,
  // failed the text frame ff as invalid UTF-8, and the Server reported 1007 instead of 1002.
  test(`${name}: a violation the ws package detects while the server closes does not change the code the server reports (00, then text ff)`, async (t) => {
    const r = await regressionServer(t, under);
    const { peer, conn } = await regressionPeer(r);
    peer.send({ kind: 'binary', bytes: Uint8Array.of(0x00), fragments: 1 });
    peer.send({ kind: 'text', bytes: Uint8Array.of(0xff), fragments: 1 });
    const seen = await boundedly(peer.closed, 'the close');
    assert.equal(seen.code, 1002);
    assert.equal(seen.reason.toString(), 'message type 0 of 1 bytes: needs at least 11 bytes');
    const reported = await boundedly(conn.closed, 'conn.closed');
    assert.deepEqual({ ...reported }, { code: 1002, reason: 'message type 0 of 1 bytes: needs at least 11 bytes' });
  });

  // The four cases below are RFC 6455 rules that `ws` enforces and uWebSockets.js (v20.30) does
  // not, where the adapter cannot step in (it sees messages, not frames): on uWS they pin what
  // happens, as listed on `uwsTransport`, so a uWS that changes is noticed.
  test(`${name}: a malformed frame (RSV1 set, no extension) closes the connection (ws: 1002; uWS: cut, 1006)`, async (t) => {
    const r = await regressionServer(t, under);
    const { peer, conn } = await regressionPeer(r);
    peer.writeRaw(Buffer.from('c2810000000021', 'hex'));
    const seen = await boundedly(peer.closed, 'the close');
    const expected = name === 'uws' ? UWS_CUT : 1002;
    assert.equal(seen.code, expected);
    assert.equal((await boundedly(conn.closed, 'conn.closed')).code, expected);
  });

  for (const { title, bytes, uwsTakesIt } of [
    {
      title: 'an unmasked client frame (RFC 6455 §5.1: ws closes 1002; uWS takes it)',
      // A zero-key masked frame with its MASK bit cleared: 82 0b 00000000 7f0100000000000000016e.
      bytes: Buffer.concat([Buffer.from([0x82, REQUEST_N.length, 0, 0, 0, 0]), REQUEST_N]),
      uwsTakesIt: 'uWS reads the 4 bytes after the header as a key and answers',
    },
    {
      title: 'a new data frame inside a fragmented message (RFC 6455 §5.4: ws closes 1002; uWS joins them)',
      // 02 (binary, FIN clear) with the request minus its last byte, then 82 (binary, FIN) with it.
      bytes: Buffer.concat([rawFrame(0x02, REQUEST_N.subarray(0, -1)), rawFrame(0x82, REQUEST_N.subarray(-1))]),
      uwsTakesIt: 'uWS takes the second frame as a continuation and answers',
    },
  ]) {
    test(`${name}: ${title}`, async (t) => {
      const r = await regressionServer(t, under);
      const { peer, conn } = await regressionPeer(r);
      peer.writeRaw(bytes);
      await answeredOrClosed(peer);
      if (name === 'uws') {
        assert.equal(peer.messages.length, 1, uwsTakesIt);
        return;
      }
      assert.deepEqual(peer.messages.map(hex), [], 'the request was answered');
      assert.equal((await boundedly(peer.closed, 'the close')).code, 1002);
      assert.equal((await boundedly(conn.closed, 'conn.closed')).code, 1002);
    });
  }

  test(`${name}: a close frame with an invalid status code, 999 (RFC 6455 §7.4.1: ws closes 1002; uWS answers without a code)`, async (t) => {
    const r = await regressionServer(t, under);
    const { peer, conn } = await regressionPeer(r);
    peer.writeRaw(rawFrame(0x88, Uint8Array.of(0x03, 0xe7)));
    const seen = await boundedly(peer.closed, 'the close');
    const reported = await boundedly(conn.closed, 'conn.closed');
    if (name === 'uws') {
      assert.equal(seen.code, 1005, 'an empty close frame');
      assert.equal(reported.code, UWS_CUT);
      return;
    }
    assert.equal(seen.code, 1002);
    assert.equal(reported.code, 1002);
  });
}
