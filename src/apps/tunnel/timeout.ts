/**
 * Durations as users write them in the `x-duplexwire-request-timeout` header and on the command
 * line: a decimal number with a unit, `1500ms`, `12s`, `2.5s`, `5m`, `1h`.
 */

const DURATION = /^(\d{1,12}(?:\.\d{1,6})?)(ms|s|m|h)$/;
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds of `text`, or `undefined` when it is not a duration > 0. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION.exec(text.trim());
  if (match === null) return undefined;
  const ms = Math.round(Number(match[1]) * UNIT_MS[match[2]!]!);
  return ms > 0 && Number.isSafeInteger(ms) ? ms : undefined;
}

export type TimeoutChoice =
  | { readonly ok: true; readonly ms: number; readonly capped: boolean }
  | { readonly ok: false; readonly reason: string };

/**
 * The timeout of one request: `header` when given (capped at `max`), else `fallback`.
 * An unreadable header is an error (400), not silently the default.
 */
export function chooseTimeout(header: string | undefined, fallback: number, max: number): TimeoutChoice {
  if (header === undefined) return { ok: true, ms: Math.min(fallback, max), capped: fallback > max };
  const ms = parseDuration(header);
  if (ms === undefined) return { ok: false, reason: 'timeout must be a positive duration such as 12s or 1500ms' };
  return ms > max ? { ok: true, ms: max, capped: true } : { ok: true, ms, capped: false };
}

/** `value` as a duration: a number of milliseconds or a string such as `30s`. */
export function durationOption(name: string, value: number | string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const ms = typeof value === 'number' ? value : parseDuration(value);
  if (ms === undefined || !Number.isFinite(ms) || ms < 0) {
    throw new RangeError(`${name} must be a duration (a number of ms, or e.g. "30s"), got ${String(value)}`);
  }
  return ms;
}
