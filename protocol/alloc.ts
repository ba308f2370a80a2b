/**
 * Where encoders write a message: `allocate(length)` returns `length` zeroed bytes that nothing
 * else is handed. This is the Node implementation; browsers get `alloc.browser.ts` instead (the
 * package.json `browser` field maps one to the other for bundlers).
 *
 * Messages up to `POOLED_MAX` bytes are cut from a shared slab instead of getting an ArrayBuffer
 * each. A `new Uint8Array(n)` above 64 bytes is an off-heap allocation that costs ~10x a view of
 * a slab (~350 ns against ~35 ns, measured on Node 20), and most messages (requests, replies,
 * signals of a few hundred bytes) are over 64 bytes: on a round trip that is two such
 * allocations, about a tenth of the CPU time of both ends (bench/RESULTS.md). Node's
 * `Buffer.allocUnsafe` pool does the same; we cannot use Buffer here (no Node types in protocol/).
 *
 * A message kept alive keeps its whole slab alive, so a slow consumer's queue can pin up to one
 * slab per queued message: the slab is 8 KiB, as Node's pool, which `ws` already uses for the
 * frame header of every queued message, so this adds no new worst case.
 */
const POOLED_MAX = 512;
const SLAB_SIZE = 8 * 1024;
let slab = new Uint8Array(SLAB_SIZE);
let slabOffset = 0;

/**
 * `length` zeroed bytes that nothing else is handed: every region of a slab is given out once,
 * and a slab starts zeroed, so the padding bytes encoders leave unwritten are 0. The bytes are a
 * view into a larger buffer (`byteOffset` may be non-zero), like any Uint8Array a codec returns.
 */
export function allocate(length: number): Uint8Array {
  if (length > POOLED_MAX) return new Uint8Array(length);
  if (slabOffset + length > SLAB_SIZE) {
    slab = new Uint8Array(SLAB_SIZE);
    slabOffset = 0;
  }
  const out = slab.subarray(slabOffset, slabOffset + length);
  slabOffset += length;
  return out;
}
