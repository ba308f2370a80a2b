import { checkInteger, MAX_TIMER_DELAY } from '../util/validate.ts';
import { InvalidArgumentError } from '../errors.ts';

/** How the client reconnects. */
export interface ReconnectOptions {
  /** Delay before the first retry, in ms. @default 500 */
  readonly initialDelay?: number;
  /** Longest delay between attempts, in ms. @default 10000 */
  readonly maxDelay?: number;
  /** Growth of the delay per attempt. @default 2 */
  readonly factor?: number;
  /** Random part of each delay: 0.5 draws it from [50%, 100%] of the computed delay. @default 0.5 */
  readonly jitter?: number;
  /** Attempts in a row before giving up (Infinity: never). @default Infinity */
  readonly maxAttempts?: number;
  /**
   * A connection that lasted less than this, in ms, does not start the backoff over: the next
   * reconnect waits as after one more failed attempt, so a server that accepts and drops at once
   * is not reconnected to every `initialDelay` for ever. @default 5000
   */
  readonly minUptime?: number;
  /** Replaces the computed delay: gets the attempt number (1, 2, ...) and returns milliseconds. */
  readonly delay?: (attempt: number) => number;
}

export const DEFAULT_RECONNECT: Required<Omit<ReconnectOptions, 'delay'>> = Object.freeze({
  initialDelay: 500,
  maxDelay: 10_000,
  factor: 2,
  jitter: 0.5,
  maxAttempts: Infinity,
  minUptime: 5_000,
});

export interface ReconnectPolicy {
  readonly maxAttempts: number;
  readonly minUptime: number;
  delay(attempt: number): number;
}

/** Validates reconnect options and returns the delay policy: exponential backoff with jitter. */
export function reconnectPolicy(options: ReconnectOptions): ReconnectPolicy {
  const initialDelay = checkInteger(
    'reconnect.initialDelay',
    options.initialDelay ?? DEFAULT_RECONNECT.initialDelay,
    0,
    MAX_TIMER_DELAY,
  );
  const maxDelay = checkInteger(
    'reconnect.maxDelay',
    options.maxDelay ?? DEFAULT_RECONNECT.maxDelay,
    0,
    MAX_TIMER_DELAY,
  );
  const factor = options.factor ?? DEFAULT_RECONNECT.factor;
  const jitter = options.jitter ?? DEFAULT_RECONNECT.jitter;
  const maxAttempts = options.maxAttempts ?? DEFAULT_RECONNECT.maxAttempts;
  if (!(factor >= 1)) throw new InvalidArgumentError('option reconnect.factor must be >= 1');
  if (!(jitter >= 0 && jitter <= 1)) throw new InvalidArgumentError('option reconnect.jitter must be in 0..1');
  if (!(maxAttempts >= 1)) throw new InvalidArgumentError('option reconnect.maxAttempts must be >= 1');
  const minUptime = checkInteger(
    'reconnect.minUptime',
    options.minUptime ?? DEFAULT_RECONNECT.minUptime,
    0,
    MAX_TIMER_DELAY,
  );
  const custom = options.delay;
  return {
    maxAttempts,
    minUptime,
    delay(attempt: number): number {
      // Clamped: Node runs a timer over 2^31 - 1 ms after 1 ms (a tight retry loop), and NaN as 1 ms.
      if (custom !== undefined) return Math.min(MAX_TIMER_DELAY, Math.max(0, custom(attempt) || 0));
      const base = Math.min(maxDelay, initialDelay * factor ** (attempt - 1));
      return Math.round(base * (1 - jitter * Math.random()));
    },
  };
}
