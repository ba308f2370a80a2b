/** Where duplexwire reports what it cannot throw to anyone (handler failures, protocol violations). */
export interface Logger {
  error(message: string, context?: Record<string, unknown>): void;
  warn(message: string, context?: Record<string, unknown>): void;
  info(message: string, context?: Record<string, unknown>): void;
  debug(message: string, context?: Record<string, unknown>): void;
}

const noop = (): void => {};

/** Logs warnings and errors to the console; info and debug are dropped. */
export const consoleLogger: Logger = {
  error: (message, context) => console.error(`duplexwire: ${message}`, context ?? ''),
  warn: (message, context) => console.warn(`duplexwire: ${message}`, context ?? ''),
  info: noop,
  debug: noop,
};

/** Logs nothing. */
export const silentLogger: Logger = { error: noop, warn: noop, info: noop, debug: noop };
