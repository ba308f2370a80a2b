/**
 * Flow control of body streams: byte credit that a sender takes before sending a chunk and gets
 * back when the receiver acks it (after its own sink took the bytes). Two windows bound memory:
 * one per stream (a slow user holds at most one window of its own bytes in flight) and one per
 * agent connection (the sum over streams stays below the connection's `maxBufferedBytes`, past
 * which duplexwire would close it as a slow consumer).
 */
import type { AbortSignalLike } from '../../index.ts';

/**
 * What one message costs in credit: its bytes, but at least 8 KiB, so that a window also bounds
 * the number of unacked messages (a stream of tiny server-sent events would otherwise have
 * thousands in flight within one window; 2 MiB / 8 KiB = 256 at most).
 */
export const MIN_MESSAGE_COST = 8 * 1024;

export function messageCost(bytes: number): number {
  return Math.max(bytes, MIN_MESSAGE_COST);
}

interface Waiter {
  readonly n: number;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
  readonly signal: AbortSignalLike | undefined;
  readonly onAbort: () => void;
}

export class CreditWindow {
  readonly limit: number;
  private used = 0;
  private readonly waiters: Waiter[] = [];

  constructor(limit: number) {
    this.limit = limit;
  }

  /** Bytes taken and not yet given back. */
  get inFlight(): number {
    return this.used;
  }

  private fits(n: number): boolean {
    // A chunk larger than the whole window still passes alone, or it would wait forever.
    return this.used === 0 || this.used + n <= this.limit;
  }

  /**
   * Takes `n` bytes of credit. Returns `undefined` when they were available at once (the hot
   * path allocates no promise), else a promise that resolves once they are, in FIFO order, or
   * rejects with the signal's reason.
   */
  acquire(n: number, signal?: AbortSignalLike): Promise<void> | undefined {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.waiters.length === 0 && this.fits(n)) {
      this.used += n;
      return undefined;
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        n,
        resolve,
        reject,
        signal,
        onAbort: () => {
          const index = this.waiters.indexOf(waiter);
          if (index >= 0) this.waiters.splice(index, 1);
          reject(signal?.reason);
          this.wake();
        },
      };
      signal?.addEventListener('abort', waiter.onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  /** Takes `n` bytes if they are available now (and nobody waits before us); false otherwise. */
  tryAcquire(n: number): boolean {
    if (this.waiters.length > 0 || !this.fits(n)) return false;
    this.used += n;
    return true;
  }

  release(n: number): void {
    this.used = Math.max(0, this.used - n);
    this.wake();
  }

  private wake(): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.n)) {
      const waiter = this.waiters.shift()!;
      waiter.signal?.removeEventListener('abort', waiter.onAbort);
      this.used += waiter.n;
      waiter.resolve();
    }
  }
}

/** Takes `n` bytes from both windows at once, or from neither. */
export function tryAcquireBoth(stream: CreditWindow, connection: CreditWindow, n: number): boolean {
  if (!stream.tryAcquire(n)) return false;
  if (connection.tryAcquire(n)) return true;
  stream.release(n);
  return false;
}

/** Takes credit from both windows, stream first. */
export async function acquireBoth(
  stream: CreditWindow,
  connection: CreditWindow,
  n: number,
  signal: AbortSignalLike | undefined,
): Promise<void> {
  const first = stream.acquire(n, signal);
  if (first !== undefined) await first;
  const second = connection.acquire(n, signal);
  if (second === undefined) return;
  try {
    await second;
  } catch (error) {
    stream.release(n);
    throw error;
  }
}
