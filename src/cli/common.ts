/**
 * What the commands of the applications (tunnel, bridge) share: option parsing for addresses,
 * sizes and log levels, and the graceful stop on SIGTERM/SIGINT.
 */
import { DEFAULT_HEARTBEAT_INTERVAL } from '../apps/shared/heartbeat.ts';
import type { LogLevel } from '../apps/shared/log.ts';
import { durationOption } from '../apps/tunnel/timeout.ts';

export function hostPort(value: string, name: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  if (match === null) throw new RangeError(`${name} must be host:port, got ${JSON.stringify(value)}`);
  const port = Number(match[3]);
  if (port > 65535) throw new RangeError(`${name}: port out of range`);
  return { host: match[1] ?? (match[2] || '127.0.0.1'), port };
}

const SIZE_UNITS: Readonly<Record<string, number>> = {
  '': 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};

/** `10MiB`, `500kb`, `1048576`, `unlimited`. */
export function parseSize(value: string): number {
  if (value === 'unlimited' || value === 'Infinity') return Number.POSITIVE_INFINITY;
  const match = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(value.trim());
  const unit = SIZE_UNITS[match?.[2]?.toLowerCase() ?? 'x'];
  if (match === null || unit === undefined) throw new RangeError(`not a size: ${JSON.stringify(value)} (e.g. 10MiB)`);
  return Math.floor(Number(match[1]) * unit);
}

/**
 * A whole number in `min`..`max`, written in decimal digits (`Number()` would take `''`, `0x10`,
 * `1e3` and ` 12 `, and the error would name the option instead of the flag).
 */
export function integerFlag(value: string, name: string, min: number, max: number): number {
  const n = /^\d{1,16}$/.test(value) ? Number(value) : Number.NaN;
  if (!(n >= min && n <= max))
    throw new RangeError(`${name} must be an integer in ${min}..${max}, got ${JSON.stringify(value)}`);
  return n;
}

export function logLevel(value: string | undefined): LogLevel {
  const level = value ?? 'info';
  if (level !== 'error' && level !== 'warn' && level !== 'info' && level !== 'debug') {
    throw new RangeError('--log-level must be error, warn, info or debug');
  }
  return level;
}

/** Runs `stop` once on SIGTERM or SIGINT, then exits. */
export function onSignals(stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (): void => {
    if (stopping) return;
    stopping = true;
    stop().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(error);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', handler);
  process.once('SIGINT', handler);
}

/** `--heartbeat`: a duration such as `30s`, or `0` (off). */
export function heartbeatOption(value: string | undefined): number {
  if (value === '0') return 0;
  return durationOption('--heartbeat', value, DEFAULT_HEARTBEAT_INTERVAL);
}
