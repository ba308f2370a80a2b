/**
 * Replay memory for signed requests that carry a random nonce and a time: a receiver that accepts
 * a signature only while its time is within `window` of its clock remembers the nonces it
 * accepted for that long, so none serves twice. Bounded: past `max` nonces the oldest is
 * forgotten, and from then on every signature not newer than it is refused, so a replay never
 * passes (at worst a request that arrives later than newer ones is refused). Used by the tunnel's
 * cluster requests and the bridge's signed callbacks.
 */

/** Nonces remembered at most by default (about 85 bytes of heap each, 17 MB in all). */
export const MAX_REMEMBERED_SIGNATURES = 200_000;

export class SeenSignatures {
  /** Nonce -> the signature's time; in the order accepted, which is about the order of time. */
  private readonly seen = new Map<string, number>();
  /** Signatures with a time up to this one are refused: the newest time ever forgotten early. */
  private floor = Number.NEGATIVE_INFINITY;
  private readonly window: number;
  private readonly max: number;

  /**
   * @param window how far (ms) a signature's time may be from the receiver's clock: the receiver
   *   refuses older ones itself, so they are forgotten past it
   * @param max nonces remembered at most. @default 200,000
   */
  constructor(window: number, max = MAX_REMEMBERED_SIGNATURES) {
    this.window = window;
    this.max = max;
  }

  get size(): number {
    return this.seen.size;
  }

  /**
   * Records the nonce of a signature already found valid (only then: strangers must not fill the
   * memory); false when it was seen (or may have been: not newer than one forgotten).
   */
  add(nonce: string, time: number, now: number): boolean {
    // Forget what the window refuses anyway. Entries are about in time order: stop at the first
    // still-valid one (an older one behind it is kept a little longer, which costs only memory).
    for (const [old, oldTime] of this.seen) {
      if (oldTime >= now - this.window) break;
      this.seen.delete(old);
    }
    if (time <= this.floor || this.seen.has(nonce)) return false;
    if (this.seen.size >= this.max) {
      const [oldest, oldestTime] = this.seen.entries().next().value as [string, number];
      this.seen.delete(oldest);
      this.floor = Math.max(this.floor, oldestTime);
      if (time <= this.floor) return false;
    }
    this.seen.set(nonce, time);
    return true;
  }
}
