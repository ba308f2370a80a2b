/**
 * Structured logs of the applications (tunnel, bridge): one JSON object per line. They only ever
 * log what they chose to (ids, methods, paths without their query, statuses, sizes, durations);
 * bodies, tokens, callback URLs and Authorization/Cookie values never reach a log line. Errors are
 * reduced to name, code and message.
 */
import type { Logger } from '../../index.ts';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
const RANK: Readonly<Record<LogLevel, number>> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface JsonLoggerOptions {
  /** @default process.stderr */
  readonly stream?: { write(line: string): unknown };
  /** Lowest level written. @default 'info' */
  readonly level?: LogLevel;
  /** Fields added to every line, e.g. `{ component: 'proxy' }`. */
  readonly fields?: Readonly<Record<string, unknown>>;
}

function plain(value: unknown, depth = 0): unknown {
  if (value instanceof Error) {
    const out: Record<string, unknown> = { name: value.name, message: value.message };
    const code = (value as { code?: unknown }).code;
    if (typeof code === 'string' || typeof code === 'number') out.code = code;
    return out;
  }
  if (value instanceof Uint8Array) return `[${value.length} bytes]`;
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return depth > 3 ? '[…]' : value.map((v) => plain(v, depth + 1));
  if (typeof value === 'object' && value !== null) {
    if (depth > 3) return '{…}';
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = plain(v, depth + 1);
    return out;
  }
  return value;
}

/** A duplexwire Logger writing JSON lines. */
export function jsonLogger(options: JsonLoggerOptions = {}): Logger {
  const stream = options.stream ?? process.stderr;
  const max = RANK[options.level ?? 'info'];
  const fields = options.fields ?? {};
  const at =
    (level: LogLevel) =>
    (msg: string, context?: Record<string, unknown>): void => {
      if (RANK[level] > max) return;
      const line = { time: new Date().toISOString(), level, msg, ...fields, ...(plain(context ?? {}) as object) };
      stream.write(`${JSON.stringify(line)}\n`);
    };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}
