type Timer = ReturnType<typeof setTimeout>;

/**
 * Lets a Node timer keep the process alive, or not. Browsers' timers are numbers, without either
 * (this file runs in both).
 */
function refTimer(timer: Timer | undefined, ref: boolean): void {
  const handle = timer as { ref?: () => void; unref?: () => void } | undefined;
  if (ref) handle?.ref?.();
  else handle?.unref?.();
}

/**
 * The deadlines of a peer's pending requests, on one timer.
 *
 * A timer per request (`setTimeout` when it is sent, `clearTimeout` when its reply comes) costs a
 * Timeout object, a closure and two trips through Node's timer lists on every request, nearly
 * always for nothing: replies come in microseconds, timeouts are seconds. Here a request costs an
 * entry in a Map. Requests are grouped by their timeout; within a group deadlines come in the
 * order the requests were sent, which is the Map's iteration order, so the earliest deadline of a
 * group is its first entry and expiring is popping from the front. The one timer is armed for the
 * earliest deadline it knows of and is not moved when that request settles first: it fires, finds
 * nothing due, and re-arms for the earliest deadline left, about once per timeout period.
 *
 * Timeouts fire as they did (when their deadline has passed, in the order the requests were sent
 * within a timeout value), and the timer keeps the process alive exactly while a request with a
 * deadline is pending, as the per-request timers did. (CONVENTIONS.md names nats.js's timer per
 * request; this departs from it for the cost measured in bench/RESULTS.md, change 3.)
 */
export class Deadlines {
  /** Timeout (ms) -> request id -> deadline (`performance.now()` ms), in sending order. */
  readonly #groups = new Map<number, Map<number, number>>();
  readonly #expire: (id: number) => void;
  #count = 0;
  #timer: Timer | undefined;
  /** When `#timer` fires; Infinity when none is armed. */
  #timerAt = Number.POSITIVE_INFINITY;

  /** `expire(id)` runs for each request whose deadline passed, after it was removed. */
  constructor(expire: (id: number) => void) {
    this.#expire = expire;
  }

  /** Request `id` expires `timeout` ms (> 0) after `now`. */
  add(id: number, timeout: number, now: number): void {
    let group = this.#groups.get(timeout);
    if (group === undefined) {
      group = new Map();
      this.#groups.set(timeout, group);
    }
    const deadline = now + timeout;
    group.set(id, deadline);
    if (this.#count++ === 0) refTimer(this.#timer, true);
    if (deadline < this.#timerAt) this.#arm(deadline, now);
  }

  /** Request `id` (added with `timeout`) settled. */
  delete(id: number, timeout: number): void {
    if (this.#groups.get(timeout)?.delete(id) !== true) return;
    // Nothing pending: the armed timer must not keep the process alive.
    if (--this.#count === 0) refTimer(this.#timer, false);
  }

  /** Forgets every deadline and stops the timer (the connection ended). */
  clear(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Number.POSITIVE_INFINITY;
    this.#groups.clear();
    this.#count = 0;
  }

  #arm(at: number, now: number): void {
    clearTimeout(this.#timer);
    this.#timerAt = at;
    // Node's timers have millisecond resolution and may run up to 1 ms before `at` by
    // performance.now(): a deadline not yet passed then is simply re-armed.
    this.#timer = setTimeout(this.#fire, Math.max(1, Math.ceil(at - now)));
    if (this.#count === 0) refTimer(this.#timer, false);
  }

  readonly #fire = (): void => {
    this.#timer = undefined;
    this.#timerAt = Number.POSITIVE_INFINITY;
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    for (const [timeout, group] of this.#groups) {
      for (const [id, deadline] of group) {
        if (deadline > now) {
          if (deadline < next) next = deadline;
          break;
        }
        group.delete(id);
        this.#count--;
        this.#expire(id);
      }
      if (group.size === 0) this.#groups.delete(timeout);
    }
    // `expire` may have armed the timer already (a new request) or cleared everything (close).
    if (this.#count > 0 && next < this.#timerAt) this.#arm(next, now);
  };
}
