/**
 * `Deadlines` for browsers (see deadlines.ts, which bundlers replace with this file through the
 * package.json `browser` field): a timer per request. The Node version puts every deadline of a
 * peer on one timer, because a server's timers cost it on every request; a browser client sends
 * few requests, and the bundle is smaller this way. Same contract: `expire(id)` runs once the
 * request's deadline has passed, after the request was removed.
 */

import { MAX_TIMER_DELAY as MAX_DELAY } from '../util/validate.ts';

export class Deadlines {
  readonly #timers = new Map<number, ReturnType<typeof setTimeout>>();
  readonly #expire: (id: number) => void;

  constructor(expire: (id: number) => void) {
    this.#expire = expire;
  }

  /** Request `id` expires `timeout` ms (> 0) after `now`. */
  add(id: number, timeout: number, now: number): void {
    const deadline = now + timeout;
    const arm = (delay: number): void => {
      this.#timers.set(
        id,
        setTimeout(
          () => {
            const left = deadline - performance.now();
            if (left > 0) return arm(left);
            this.#timers.delete(id);
            this.#expire(id);
          },
          Math.min(delay, MAX_DELAY),
        ),
      );
    };
    arm(timeout);
  }

  /** Request `id` settled. */
  delete(id: number, _timeout?: number): void {
    clearTimeout(this.#timers.get(id));
    this.#timers.delete(id);
  }

  /** Forgets every deadline (the connection ended). */
  clear(): void {
    for (const timer of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
  }
}
