import { encodeUtf8 } from '../../protocol/payload.ts';
import { InvalidArgumentError } from '../errors.ts';

/** The longest delay a timer takes: 2^31 - 1 ms (~24.8 days). Node fires a longer one after 1 ms. */
export const MAX_TIMER_DELAY = 2 ** 31 - 1;

/** Throws InvalidArgumentError unless `value` is an integer within [min, max]. */
export function checkInteger(name: string, value: number, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`option ${name} must be an integer in ${min}..${max}, got ${String(value)}`);
  }
  return value;
}

/** Throws InvalidArgumentError unless `value` is undefined or a function. */
export function checkFunction(name: string, value: unknown): void {
  if (value !== undefined && typeof value !== 'function') {
    throw new InvalidArgumentError(`option ${name} must be a function`);
  }
}

/** A sub-protocol option as raw bytes (empty for none). */
export function subProtocolBytes(value: string | Uint8Array | undefined): Uint8Array {
  if (value === undefined) return new Uint8Array(0);
  return typeof value === 'string' ? encodeUtf8(value) : value;
}
