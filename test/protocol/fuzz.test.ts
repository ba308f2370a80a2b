/**
 * Fuzz loop over the decoder: random frames and mutations of valid frames. The only exception
 * allowed out of `decode` is ProtocolError (and out of `encode`, for what decoded, the same).
 *
 * 1 000 000 frames with CI=true, 100 000 otherwise. A seeded xorshift32 generator instead of
 * fast-check keeps a million iterations within a few seconds; the seed is random per run, printed
 * as a diagnostic and in any failure. Replay one with FUZZ_SEED=<seed>.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { test } from 'node:test';
import {
  binary,
  decode,
  encode,
  encodeAcceptConf,
  encodeCancel,
  encodeClientConf,
  encodeCloseSession,
  encodeHeartbeat,
  encodeReply,
  encodeReplyError,
  encodeRequest,
  encodeRestoreSession,
  encodeSessionClosed,
  encodeSessionCreated,
  encodeSignal,
  encodeSpecialReply,
  MessageType,
  ProtocolError,
  type ProtocolErrorCode,
  utf8,
  utf16,
} from '../../protocol/index.ts';
import { toHex } from './helpers.ts';

const FRAMES = process.env.CI === 'true' ? 1_000_000 : 100_000;
const DEADLINE_MS = 60_000;
const SEED = process.env.FUZZ_SEED === undefined ? randomInt(1, 2 ** 32) : Number(process.env.FUZZ_SEED) >>> 0 || 1;

/** xorshift32 (Marsaglia 2003): fast, deterministic for a seed, never 0 from a non-zero seed. */
class XorShift32 {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
  /** An integer in 0..n-1. */
  below(n: number): number {
    return this.next() % n;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)]!;
  }
}

const KNOWN_TYPES: readonly number[] = Object.values(MessageType);
/** Type bytes worth hitting often: every known type and the edges of the unknown ranges. */
const FIRST_BYTES: readonly number[] = [...KNOWN_TYPES, 6, 20, 24, 30, 36, 62, 66, 126, 130, 190, 194, 255];
/** Byte values that sit on length boundaries. */
const EDGE_BYTES: readonly number[] = [0, 1, 2, 8, 9, 10, 11, 0x7f, 0x80, 0xfe, 0xff];

function ascii(size: number): string {
  let out = '';
  for (let i = 0; i < size; i++) out += String.fromCharCode(97 + (i % 26));
  return out;
}

/** Valid frames of every type and shape, the seeds of the mutations. */
function corpus(): Uint8Array[] {
  const frames: Uint8Array[] = [];
  const payloads = [
    binary(Uint8Array.of(1, 2, 3)),
    utf8('héllo'),
    utf16('h😀'),
    binary(new Uint8Array(0)),
    utf8(''),
    utf16(''),
  ];
  for (const nameSize of [0, 1, 2, 3, 255]) {
    for (const payload of payloads) {
      const nameless = nameSize === 0 && payload.data.length === 0;
      if (!nameless) frames.push(encodeRequest(frames.length + 1, ascii(nameSize), payload));
      if (!nameless && !(payload.encoding === 'utf16' && payload.data.length === 0)) {
        frames.push(encodeSignal(ascii(nameSize), payload));
      }
    }
  }
  for (const payload of payloads) frames.push(encodeReply(7, payload));
  frames.push(
    encodeReplyError(0x14, 'SAMPLE_ERROR', 'Sample error message'),
    encodeReplyError(1, 'E', ''),
    encodeSpecialReply(1, 'shutdown'),
    encodeSpecialReply(2, 'internal-error'),
    encodeSpecialReply(3, 'session-not-found'),
    encodeSpecialReply(4, 'max-session-connections'),
    encodeSpecialReply(5, 'sessions-disabled'),
    encodeSessionCreated('{"k":"abc","c":"2026-11-22T11:41:29.065369494Z","l":"2026-11-22T11:41:29.065369494Z"}'),
    encodeSessionClosed(),
    encodeAcceptConf({
      major: 2,
      minor: 1,
      readTimeout: 60_000,
      maxMessageSize: 1 << 20,
      subProtocol: new Uint8Array(0),
    }),
    encodeAcceptConf({
      major: 2,
      minor: 0,
      readTimeout: 1,
      maxMessageSize: 8192,
      subProtocol: Uint8Array.of(0x61, 0x62),
    }),
    encodeCloseSession(9),
    encodeRestoreSession(10, new TextEncoder().encode('k'.repeat(64))),
    encodeHeartbeat(),
    encodeClientConf(1),
    encodeCancel(11),
  );
  return frames;
}

function randomFrame(rng: XorShift32): Uint8Array {
  const frame = new Uint8Array(rng.below(65));
  for (let i = 0; i < frame.length; i++) frame[i] = rng.next() & 0xff;
  if (frame.length > 0 && rng.below(4) !== 0) frame[0] = rng.pick(FIRST_BYTES);
  return frame;
}

function mutate(rng: XorShift32, source: Uint8Array): Uint8Array {
  let frame = source.slice();
  const count = 1 + rng.below(4);
  for (let m = 0; m < count; m++) {
    const at = frame.length === 0 ? 0 : rng.below(frame.length);
    switch (rng.below(7)) {
      case 0: // flip one bit
        if (frame.length > 0) frame[at]! ^= 1 << rng.below(8);
        break;
      case 1: // random byte
        if (frame.length > 0) frame[at] = rng.next() & 0xff;
        break;
      case 2: // boundary byte (length fields are the interesting targets)
        if (frame.length > 0) frame[at] = rng.pick(EDGE_BYTES);
        break;
      case 3: {
        // insert a byte
        const grown = new Uint8Array(frame.length + 1);
        grown.set(frame.subarray(0, at));
        grown[at] = rng.next() & 0xff;
        grown.set(frame.subarray(at), at + 1);
        frame = grown;
        break;
      }
      case 4: {
        // delete a byte
        if (frame.length === 0) break;
        const shrunk = new Uint8Array(frame.length - 1);
        shrunk.set(frame.subarray(0, at));
        shrunk.set(frame.subarray(at + 1), at);
        frame = shrunk;
        break;
      }
      case 5: // truncate
        frame = frame.slice(0, rng.below(frame.length + 1));
        break;
      default: {
        // append 1..8 random bytes
        const extra = 1 + rng.below(8);
        const grown = new Uint8Array(frame.length + extra);
        grown.set(frame);
        for (let i = frame.length; i < grown.length; i++) grown[i] = rng.next() & 0xff;
        frame = grown;
      }
    }
  }
  return frame;
}

test(`fuzz: decode throws only ProtocolError (${FRAMES} frames)`, (t) => {
  const rng = new XorShift32(SEED);
  const seeds = corpus();
  const rejected = new Map<ProtocolErrorCode, number>();
  let decoded = 0;
  const started = performance.now();

  for (let i = 0; i < FRAMES; i++) {
    const frame = rng.below(10) < 4 ? randomFrame(rng) : mutate(rng, rng.pick(seeds));
    let stage = 'decode';
    try {
      const message = decode(frame);
      decoded++;
      stage = 'encode';
      encode(message);
    } catch (error) {
      if (!(error instanceof ProtocolError)) {
        assert.fail(`seed ${SEED}, frame #${i}: ${stage} of ${toHex(frame)} threw ${String(error)}`);
      }
      if (stage === 'decode') rejected.set(error.code, (rejected.get(error.code) ?? 0) + 1);
    }
    if ((i & 0xffff) === 0xffff && performance.now() - started > DEADLINE_MS) {
      assert.fail(`seed ${SEED}: deadline of ${DEADLINE_MS} ms passed after ${i + 1} frames`);
    }
  }

  const elapsed = performance.now() - started;
  t.diagnostic(`seed ${SEED}; ${FRAMES} frames in ${Math.round(elapsed)} ms; ${decoded} decoded`);
  t.diagnostic(`rejected: ${JSON.stringify(Object.fromEntries(rejected))}`);
  assert.ok(elapsed < DEADLINE_MS, `seed ${SEED}: ${Math.round(elapsed)} ms`);

  // The loop must reach every decoder branch, valid and invalid, or it proves little.
  assert.ok(decoded > FRAMES / 10, `seed ${SEED}: only ${decoded} frames decoded`);
  const decoderCodes: readonly ProtocolErrorCode[] = [
    'ERR_PROTOCOL_EMPTY_MESSAGE',
    'ERR_PROTOCOL_UNKNOWN_TYPE',
    'ERR_PROTOCOL_BAD_LENGTH',
    'ERR_PROTOCOL_NAME_OVERFLOW',
    'ERR_PROTOCOL_BAD_UTF16',
    'ERR_PROTOCOL_EMPTY_MESSAGE_BODY',
    'ERR_PROTOCOL_BAD_ERROR_CODE',
  ];
  for (const code of decoderCodes)
    assert.ok((rejected.get(code) ?? 0) > 0, `seed ${SEED}: never rejected with ${code}`);
});
