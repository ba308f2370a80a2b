/**
 * WebSocket data frames the ws adapter writes itself (`sendParts`), so that a message made of a
 * small head and a large payload goes out without the payload being copied into a message buffer
 * first (RFC 6455 §5.2). ws's own `send` takes one buffer, and on the client side copies it once
 * more to mask it (ws masks into a new buffer whenever the data may be shared, which is always
 * the case for a Buffer handed to it).
 *
 * - Server frames are not masked (§5.1): the frame header and the message head share one small
 *   buffer and the payload follows as it is, in the same vectored write.
 * - Client frames are masked with a fresh random key each (§5.3). Masking is a pass over every
 *   byte anyway, so head and payload are masked while being copied, once, into a frame buffer
 *   taken from a small pool and given back when the write is done: a client streaming large
 *   messages allocates nothing per frame (fresh 64 KiB buffers per frame made the garbage
 *   collector the largest cost of a tunnel agent relaying a download, bench/tunnel.ts).
 */
import { randomFillSync } from 'node:crypto';
import { createRequire } from 'node:module';

/** FIN set, opcode 2 (binary): a whole binary message in one frame. */
const FIN_BINARY = 0x82;
const MASK_BIT = 0x80;

/** Bytes of the header of a frame carrying `length` payload bytes. */
export function frameHeaderLength(length: number, masked: boolean): number {
  const base = length < 126 ? 2 : length < 0x1_0000 ? 4 : 10;
  return masked ? base + 4 : base;
}

/** Writes the frame header (without a masking key) at the start of `out`; returns where the key or payload goes. */
function writeFrameHeader(out: Uint8Array, length: number, masked: boolean): number {
  out[0] = FIN_BINARY;
  const maskBit = masked ? MASK_BIT : 0;
  if (length < 126) {
    out[1] = maskBit | length;
    return 2;
  }
  if (length < 0x1_0000) {
    out[1] = maskBit | 126;
    out[2] = length >>> 8;
    out[3] = length & 0xff;
    return 4;
  }
  out[1] = maskBit | 127;
  // A 64-bit length; messages here stay far below 2^32 (the core's maxMessageSize is a u32).
  out[2] = 0;
  out[3] = 0;
  out[4] = 0;
  out[5] = 0;
  out[6] = (length >>> 24) & 0xff;
  out[7] = (length >>> 16) & 0xff;
  out[8] = (length >>> 8) & 0xff;
  out[9] = length & 0xff;
  return 10;
}

/** The header of an unmasked (server) frame followed by `head`, in one buffer; the payload is written after it. */
export function serverFrameStart(head: Uint8Array, payloadLength: number): Buffer {
  const length = head.length + payloadLength;
  const out = Buffer.allocUnsafe(frameHeaderLength(length, false) + head.length);
  out.set(head, writeFrameHeader(out, length, false));
  return out;
}

// ------------------------------------------------------------------------------ client frames

/** Masking keys are cut from one block of CSPRNG output, refilled when used up (as ws does). */
const KEY_POOL_SIZE = 8 * 1024;
const keyPool = Buffer.alloc(KEY_POOL_SIZE);
let keyPoolOffset = KEY_POOL_SIZE;

function nextMaskingKey(): Uint8Array {
  if (keyPoolOffset === KEY_POOL_SIZE) {
    randomFillSync(keyPool);
    keyPoolOffset = 0;
  }
  const key = keyPool.subarray(keyPoolOffset, keyPoolOffset + 4);
  keyPoolOffset += 4;
  return key;
}

/**
 * Frame buffers of the pool: room for a 64 KiB payload (the size streams are cut into, e.g. the
 * tunnel's body chunks) and its headers. Larger frames get a buffer of their own.
 */
const POOLED_FRAME_BYTES = 64 * 1024 + 256;
/**
 * Smaller frames get a buffer of their exact size (below 4 KiB, a slice of Node's shared pool): a
 * frame holds its buffer until written, so a pooled one for each of the frames a slow peer lets
 * pile up would hold up to 64 KiB for every one of them, the connection's send-buffer limit
 * counting only their length. From half the pooled size on, that is at most twice their bytes.
 */
const POOLED_FRAME_MIN = POOLED_FRAME_BYTES / 2;
/** Free frame buffers kept; more come back only while frames are in flight, and are dropped. */
const POOL_MAX = 64;
const pool: Buffer[] = [];

/** A frame buffer of at least `length` bytes, and whether it goes back to the pool once written. */
function frameBuffer(length: number): { buffer: Buffer; pooled: boolean } {
  if (length < POOLED_FRAME_MIN || length > POOLED_FRAME_BYTES)
    return { buffer: Buffer.allocUnsafe(length), pooled: false };
  return { buffer: pool.pop() ?? Buffer.allocUnsafeSlow(POOLED_FRAME_BYTES), pooled: true };
}

/** Gives a frame buffer back once the socket is done with it (its write callback without error). */
export function releaseFrameBuffer(buffer: Buffer): void {
  if (pool.length < POOL_MAX) pool.push(buffer);
}

/**
 * The native masking of `bufferutil` (an optional dependency of ws, by ws's authors), when it is
 * installed and not disabled with WS_NO_BUFFER_UTIL as for ws itself: it masks while copying, at
 * memory speed. Otherwise the frame is copied, then masked in place a word at a time.
 */
export interface NativeMask {
  mask(source: Uint8Array, mask: Uint8Array, output: Uint8Array, offset: number, length: number): void;
}

function loadNativeMask(): NativeMask | undefined {
  if (process.env.WS_NO_BUFFER_UTIL) return undefined;
  try {
    const native = createRequire(import.meta.url)('bufferutil') as Partial<NativeMask>;
    return typeof native.mask === 'function' ? (native as NativeMask) : undefined;
  } catch {
    return undefined;
  }
}

/** `undefined`: not looked for yet (only a client that sends large frames needs it). */
let native: NativeMask | null | undefined;

/** The native masking, once looked for; null when bufferutil is not installed or is disabled. */
export function nativeMask(): NativeMask | null {
  if (native === undefined) native = loadNativeMask() ?? null;
  return native;
}

/** XORs `out[start, end)` in place with `key`, the payload's first byte being at `start`. */
function mask(out: Buffer, start: number, end: number, key: Uint8Array): void {
  let i = start;
  // Bytes up to a 4-byte boundary of the underlying memory, then whole words, then the rest.
  const aligned = Math.min(end, start + ((4 - ((out.byteOffset + start) & 3)) & 3));
  for (; i < aligned; i++) out[i] = out[i]! ^ key[(i - start) & 3]!;
  const words = (end - i) >>> 2;
  if (words > 0) {
    // The key as one word, starting at the byte the first aligned word holds. Built through a
    // byte view so the word matches memory order whatever the platform's endianness.
    const rotated = new Uint8Array(4);
    for (let k = 0; k < 4; k++) rotated[k] = key[(i - start + k) & 3]!;
    const keyWord = new Uint32Array(rotated.buffer)[0]!;
    const view = new Uint32Array(out.buffer, out.byteOffset + i, words);
    for (let w = 0; w < words; w++) view[w] = view[w]! ^ keyWord;
    i += words * 4;
  }
  for (; i < end; i++) out[i] = out[i]! ^ key[(i - start) & 3]!;
}

/**
 * A whole masked client frame carrying `head` then `body`, and whether its buffer came from the
 * pool (then hand it to `releaseFrameBuffer` once the socket wrote it).
 */
export function clientFrame(
  head: Uint8Array,
  body: Uint8Array,
  masker: NativeMask | null = nativeMask(),
): { frame: Buffer; buffer: Buffer; pooled: boolean } {
  const length = head.length + body.length;
  const total = frameHeaderLength(length, true) + length;
  const { buffer, pooled } = frameBuffer(total);
  let at = writeFrameHeader(buffer, length, true);
  const key = nextMaskingKey();
  buffer.set(key, at);
  at += 4;
  buffer.set(head, at);
  if (masker !== null && body.length > 0) {
    mask(buffer, at, at + head.length, key);
    // The body's first byte is payload byte head.length: the key turned to start there.
    const phase = head.length & 3;
    const turned =
      phase === 0
        ? key
        : Uint8Array.of(key[phase]!, key[(phase + 1) & 3]!, key[(phase + 2) & 3]!, key[(phase + 3) & 3]!);
    masker.mask(body, turned, buffer, at + head.length, body.length);
  } else {
    buffer.set(body, at + head.length);
    mask(buffer, at, at + length, key);
  }
  return { frame: buffer.subarray(0, total), buffer, pooled };
}
