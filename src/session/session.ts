/**
 * Sessions: what a session is, its JSON form on the wire and in storage, the storage contract the
 * server drives, and session keys.
 *
 * This module is shared with the client (it parses the session the server sends in a
 * NotifySessionCreated message, type 21, and in a restore reply, type 192), so it uses nothing
 * Node-specific: Web Crypto and plain string handling only.
 */
import { InvalidArgumentError } from '../errors.ts';

/** A session: a key the client can present again to get back its server-side info. */
export interface Session {
  readonly key: string;
  readonly creation: Date;
  readonly lastLookup: Date;
  /**
   * JSON-serialisable application data, or undefined. Only what JSON keeps exactly: plain
   * objects, arrays, strings, finite numbers, booleans and null (no Date, Map, class instance,
   * `undefined` member, NaN, cycle); anything else is refused with InvalidArgumentError when the
   * session is written, rather than coming back different from the store.
   */
  readonly info: Readonly<Record<string, unknown>> | undefined;
  /**
   * Server side only, never sent to clients: the store's count of updates of this session's info,
   * as the store wrote it. 0 for a session as created, one more with each `onSessionUpdate`, the
   * increment made in the same atomic step as the write, so that the store's order of writes is
   * the order of versions. Servers use it to apply the updates they hear of from each other (over
   * the `bus`, which may deliver them out of order) in that order, ignoring one older than what
   * they hold. Undefined when the store keeps no versions (a custom store may not): updates are
   * then applied in the order they arrive.
   */
  readonly version?: number;
}

/**
 * True when `incoming` is no newer than `held`, by their versions: an update that must not replace
 * the session held (it was written before it, or is the same write heard twice). False whenever
 * either has no version: without versions, what arrives last wins.
 */
export function isStaleSession(incoming: Session, held: Session): boolean {
  return incoming.version !== undefined && held.version !== undefined && incoming.version <= held.version;
}

/** `version` when it is one (a non-negative safe integer), else undefined. */
export function checkSessionVersion(version: unknown): number | undefined {
  return typeof version === 'number' && Number.isSafeInteger(version) && version >= 0 ? version : undefined;
}

/**
 * Where the server keeps sessions. One of `MemorySessionManager`, `FileSessionManager`,
 * `RedisSessionManager`, or your own; `test/session/contract.ts` is the suite any implementation
 * should pass.
 *
 * Keys reach the store from the network. The server checks them with `SessionKeyGenerator.isValid`
 * first, but a store must still treat a key as opaque, hostile text: never as a path, a pattern or
 * a command (the reference file store used it as a file name: path traversal).
 */
export interface SessionManager {
  /** A session was created (the client has been told). Persist it. */
  onSessionCreated(session: Session): Promise<void>;
  /**
   * The session with this key, or null. Must update the stored last-lookup time (and return the
   * session with it updated). A store that keeps versions returns the stored `version`.
   */
  onSessionLookup(key: string): Promise<Session | null>;
  /** The session's last connection left or it was closed: delete it permanently. */
  onSessionClosed(key: string): Promise<void>;
  /**
   * Optional: replaces the info of the session `key` with `info` (undefined: no info), atomically,
   * and resolves with the session as now stored, or null when there is no such session (expired
   * ones included). Key, creation and lastLookup stay as they are: an update is not a lookup, so
   * it neither moves lastLookup nor restarts an expiry counted from it. A store that keeps versions
   * (every built-in store does) adds 1 to the session's `version` in the same atomic step and
   * returns the new one: that is what lets several servers agree on which of two concurrent updates
   * came last (see `Session.version`). Without versions, a server applies updates in the order it
   * hears of them, so with several servers a concurrent pair may end in the older one on some. Rejects with
   * InvalidArgumentError, storing nothing, when `info` is not JSON-exact (see `Session.info`).
   * Without it, `conn.updateSession()` and `server.updateSession()` reject with
   * SessionStoreUnsupportedError.
   */
  onSessionUpdate?(key: string, info: Readonly<Record<string, unknown>> | undefined): Promise<Session | null>;
  /**
   * Optional, with `onSessionDetach`: counts the connections holding each session across every
   * server using this store, for stores shared by several processes. A connection of this
   * process takes the session `key`: resolves `'attached'`, or `'limit'` when the session already
   * has `limit` connections in all (0 = no limit; nothing is counted then), or `'not-found'` when
   * it no longer exists. Without these two hooks each server counts only its own connections,
   * which is right for a store used by one server (`MaxSessionConnections` and "delete when the
   * last connection closes the session" are then per server).
   */
  onSessionAttach?(key: string, limit: number): Promise<SessionAttachResult>;
  /**
   * Optional, with `onSessionAttach`: a connection of this process let go of the session `key`
   * (it closed the session, was dropped from it, or closed). Resolves with the number of
   * connections still holding it anywhere (0 when the session no longer exists). With `closing`
   * (the connection closed the session), a store deletes the session in the same atomic step when
   * that number is 0: a restore elsewhere could otherwise attach it between the count and the
   * delete, and hold a session about to vanish. The server still calls `onSessionClosed` then
   * (so deleting twice must be harmless), for stores that do not. When it rejects while a client
   * closes its session, the server looks the session up and attaches the connection again
   * (`onSessionAttach`) to give the client back the session it still holds: a store must count
   * so that a detach that failed (or whose answer was lost) followed by that attach leaves the
   * count right, as `RedisSessionManager` does by writing each process's count whole rather than
   * adding and subtracting.
   */
  onSessionDetach?(key: string, closing?: boolean): Promise<number>;
  /** Releases timers/handles. Optional. */
  close?(): Promise<void>;
}

/** What `SessionManager.onSessionAttach` resolves with. */
export type SessionAttachResult = 'attached' | 'limit' | 'not-found';

/** Makes session keys, and recognises keys it could have made. */
export interface SessionKeyGenerator {
  /** A new key. */
  generate(): string;
  /** True when `key` could have come from generate() (length and alphabet); checked before any store call. */
  isValid(key: string): boolean;
}

/** Random bytes in a default session key: 384 bits, as in the reference. @default 48 */
export const DEFAULT_SESSION_KEY_BYTES = 48;

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const DEFAULT_KEY_PATTERN = /^[A-Za-z0-9_-]{64}$/;

/** base64url without padding. Written out because `Buffer` is Node-only and `btoa` wants a binary string. */
function base64url(bytes: Uint8Array): string {
  let out = '';
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out += BASE64URL[n >>> 18]! + BASE64URL[(n >>> 12) & 63]! + BASE64URL[(n >>> 6) & 63]! + BASE64URL[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i]! << 16;
    out += BASE64URL[n >>> 18]! + BASE64URL[(n >>> 12) & 63]!;
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out += BASE64URL[n >>> 18]! + BASE64URL[(n >>> 12) & 63]! + BASE64URL[(n >>> 6) & 63]!;
  }
  return out;
}

/**
 * The default key generator, as in the reference: 48 bytes from a CSPRNG
 * (`crypto.getRandomValues`), base64url, so 64 characters of `[A-Za-z0-9_-]`.
 *
 * @example
 * const key = defaultKeyGenerator.generate(); // "pB3v…" (64 characters)
 * defaultKeyGenerator.isValid(key);           // true
 * defaultKeyGenerator.isValid('../etc/passwd'); // false
 */
// Marked pure so bundles that never use it (the browser client) drop it and base64url.
export const defaultKeyGenerator: SessionKeyGenerator = /* @__PURE__ */ Object.freeze({
  generate(): string {
    return base64url(globalThis.crypto.getRandomValues(new Uint8Array(DEFAULT_SESSION_KEY_BYTES)));
  },
  isValid(key: string): boolean {
    // `$` without the m flag matches only at the very end in JS: "…\n" is rejected.
    return typeof key === 'string' && DEFAULT_KEY_PATTERN.test(key);
  },
});

// ---------------------------------------------------------------------------------------------
// Times

/**
 * RFC 3339 (https://www.rfc-editor.org/rfc/rfc3339#section-5.6). Any number of fraction digits:
 * Go's RFC3339Nano sends up to 9 and drops trailing zeros (and the dot for whole seconds). Go
 * writes the time in its own location, so offsets other than Z are accepted too.
 */
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/** Formats a session time: RFC 3339, UTC, milliseconds, e.g. "2026-11-22T11:41:29.065Z". */
export function formatSessionTime(date: Date): string {
  const ms = date instanceof Date ? date.getTime() : Number.NaN;
  if (Number.isNaN(ms)) throw new InvalidArgumentError('session time must be a valid Date');
  const year = date.getUTCFullYear();
  // toISOString switches to "+010000-…" outside 0000..9999, which is not RFC 3339.
  if (year < 0 || year > 9999) throw new InvalidArgumentError(`session time out of RFC 3339 range: year ${year}`);
  return date.toISOString();
}

/**
 * Parses an RFC 3339 time of any fraction precision, truncated to milliseconds (a `Date` holds
 * no more). Throws InvalidArgumentError when `text` is not one.
 */
export function parseSessionTime(text: string): Date {
  const m = typeof text === 'string' ? RFC3339.exec(text) : null;
  if (m === null) throw new InvalidArgumentError('session time is not an RFC 3339 date-time');
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  // Not Date.UTC: it maps years 0..99 to 1900..1999.
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  // A month outside 1..12, day 0 or a day past the month's end (April 31, February 29 of 2026)
  // moves the date to another month. Leap seconds (60) are legal RFC 3339 but neither Go nor Date
  // produce them; refuse rather than guess.
  if (date.getUTCMonth() !== month - 1 || hour > 23 || minute > 59 || second > 59) {
    throw new InvalidArgumentError('session time has a field out of range');
  }
  date.setUTCHours(hour, minute, second, Number(`${m[7] ?? ''}000`.slice(0, 3)));
  let offsetMinutes = 0;
  if (m[8] === undefined) {
    const oh = Number(m[10]);
    const om = Number(m[11]);
    if (oh > 23 || om > 59) throw new InvalidArgumentError('session time has an offset out of range');
    offsetMinutes = (m[9] === '-' ? -1 : 1) * (oh * 60 + om);
  }
  return new Date(date.getTime() - offsetMinutes * 60_000);
}

// ---------------------------------------------------------------------------------------------
// Info

/**
 * Throws unless `value` survives JSON unchanged: plain objects, arrays, strings, finite numbers,
 * booleans and null. JSON.stringify would silently drop `undefined` and functions, turn NaN into
 * null and a Date into a string, so a session would come back from storage different from what
 * was stored. (-0 becomes 0, the one change let through.)
 */
function checkJsonValue(value: unknown, path: string, ancestors: Set<object>): void {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw new InvalidArgumentError(`session info ${path} is not a finite number`);
      return;
    case 'object': {
      if (value === null) return;
      if (ancestors.has(value)) throw new InvalidArgumentError(`session info ${path} is circular`);
      ancestors.add(value);
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) checkJsonValue(value[i], `${path}[${i}]`, ancestors);
      } else {
        const proto = Object.getPrototypeOf(value) as unknown;
        if (proto !== Object.prototype && proto !== null) {
          throw new InvalidArgumentError(`session info ${path} is not a plain object or array`);
        }
        for (const [name, item] of Object.entries(value)) checkJsonValue(item, `${path}.${name}`, ancestors);
      }
      ancestors.delete(value);
      return;
    }
    default:
      throw new InvalidArgumentError(`session info ${path} is a ${typeof value}, which JSON cannot hold`);
  }
}

/**
 * Throws InvalidArgumentError unless `info` may be a session's info: undefined, or a plain object
 * that JSON keeps exactly (see `Session.info`).
 */
export function checkSessionInfo(info: unknown): asserts info is Record<string, unknown> | undefined {
  if (info === undefined) return;
  if (info === null || typeof info !== 'object' || Array.isArray(info)) {
    throw new InvalidArgumentError('session info must be a plain object or undefined');
  }
  checkJsonValue(info, 'info', new Set());
}

// ---------------------------------------------------------------------------------------------
// Keys and JSON

/** Matches a UTF-16 surrogate not part of a pair (`u` mode reads pairs as one code point). */
const LONE_SURROGATE = /\p{Surrogate}/u;

/**
 * True for a string a store can hold as a session key: non-empty and well-formed Unicode (a lone
 * surrogate would become U+FFFD in UTF-8, so two different keys could share one storage name).
 */
export function isStorableSessionKey(key: unknown): key is string {
  return typeof key === 'string' && key.length > 0 && !LONE_SURROGATE.test(key);
}

/** The JSON object form of a session: `{"k", "c", "l", "i"?}`. */
export interface SessionJson {
  readonly k: string;
  readonly c: string;
  readonly l: string;
  readonly i?: Readonly<Record<string, unknown>>;
}

/** A session's JSON object form, validated (InvalidArgumentError). Key order k, c, l, i. */
export function sessionToJsonValue(session: Session): SessionJson {
  if (session === null || typeof session !== 'object') throw new InvalidArgumentError('session must be an object');
  if (!isStorableSessionKey(session.key)) {
    throw new InvalidArgumentError('session key must be a non-empty, well-formed string');
  }
  const c = formatSessionTime(session.creation);
  const l = formatSessionTime(session.lastLookup);
  checkSessionInfo(session.info);
  return session.info === undefined ? { k: session.key, c, l } : { k: session.key, c, l, i: session.info };
}

/**
 * The session as JSON text: `{"k":key,"c":creation,"l":lastLookup,"i":info}`, `"i"` omitted when
 * there is no info, times as RFC 3339 UTC with milliseconds. This is the wire form (types 21 and
 * 192) and the stored form. Throws InvalidArgumentError when the session cannot be written
 * faithfully: an empty or ill-formed key, an invalid Date or one outside years 0000..9999, info
 * JSON would change (see `Session.info`).
 *
 * @example
 * sessionToJson({ key, creation: new Date(0), lastLookup: new Date(0), info: undefined });
 * // '{"k":"…","c":"1970-01-01T00:00:00.000Z","l":"1970-01-01T00:00:00.000Z"}'
 */
export function sessionToJson(session: Session): string {
  return JSON.stringify(sessionToJsonValue(session));
}

/**
 * A session from its parsed JSON object form. Unknown members are ignored (room for future
 * fields); `"i": null` counts as no info (Go's omitempty already omits an empty map).
 */
export function sessionFromJsonValue(value: unknown): Session {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidArgumentError('session JSON must be an object');
  }
  const { k, c, l, i } = value as Record<string, unknown>;
  if (!isStorableSessionKey(k)) throw new InvalidArgumentError('session JSON "k" must be a non-empty string');
  if (typeof c !== 'string') throw new InvalidArgumentError('session JSON "c" must be a string');
  if (typeof l !== 'string') throw new InvalidArgumentError('session JSON "l" must be a string');
  if (i !== undefined && i !== null && (typeof i !== 'object' || Array.isArray(i))) {
    throw new InvalidArgumentError('session JSON "i" must be an object');
  }
  return {
    key: k,
    creation: parseSessionTime(c),
    lastLookup: parseSessionTime(l),
    info: (i ?? undefined) as Record<string, unknown> | undefined,
  };
}

/**
 * Parses the JSON form (see `sessionToJson`). Times may carry any number of fraction digits (Go
 * sends nanoseconds) and are truncated to milliseconds. Throws InvalidArgumentError when `text`
 * is not a session.
 *
 * @example
 * sessionFromJson('{"k":"…","c":"2026-11-22T11:41:29.065369494Z","l":"2026-11-22T11:41:29Z"}');
 */
export function sessionFromJson(text: string): Session {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new InvalidArgumentError('session JSON is not valid JSON', { cause: error });
  }
  return sessionFromJsonValue(value);
}
