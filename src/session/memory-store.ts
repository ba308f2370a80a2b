/**
 * Sessions in process memory: for tests, development and single-process servers that can lose
 * their sessions on restart. Sessions stay until closed, expired (`maxAge`) or crowded out
 * (`maxSessions`, least recently used first): a disconnect does not close a session, so without
 * those bounds every client that ever got one would stay in memory.
 */
import { checkInteger } from '../util/validate.ts';
import {
  checkSessionInfo,
  type Session,
  type SessionAttachResult,
  type SessionManager,
  sessionFromJson,
  sessionToJson,
} from './session.ts';

/** Sessions kept at most by default. @default 100,000 */
export const DEFAULT_MAX_MEMORY_SESSIONS = 100_000;

export interface MemorySessionManagerOptions {
  /**
   * Milliseconds after its last lookup when a session expires: a lookup treats it as absent and
   * deletes it (as `FileSessionManager`'s `maxAge`). Expired sessions are also dropped as the store
   * is used, oldest first, so they do not pile up between lookups. @default undefined (never)
   */
  readonly maxAge?: number;
  /**
   * Most sessions kept. Storing one more drops the session looked up least recently (its client
   * then gets "session not found" on its next restore and starts a new one): a full store never
   * refuses new sessions, which would let whoever fills it lock everyone else out.
   * @default 100000
   */
  readonly maxSessions?: number;
}

interface Entry {
  /** The session as the other stores keep it. */
  readonly json: string;
  /** Its lastLookup, in ms: what `maxAge` is measured from. */
  readonly lastLookup: number;
  /** Updates of its info so far (`Session.version`). */
  readonly version: number;
}

/**
 * A `SessionManager` over a `Map`.
 *
 * Sessions are kept as their JSON text, the same form the file and Redis stores keep, so that
 * callers can neither change a stored session through an object they passed in or got back, nor
 * store something the other stores would refuse or alter (a Date or `undefined` in the info).
 * The Map's order is the order of use (a lookup moves its session to the end), which makes both
 * "least recently used" and "expired" a look at its front.
 *
 * @example
 * const sessions = new MemorySessionManager({ maxAge: 86_400_000 });
 * const now = new Date();
 * await sessions.onSessionCreated({ key, creation: now, lastLookup: now, info: { user: 'ada' } });
 * (await sessions.onSessionLookup(key))?.info; // { user: 'ada' }
 */
export class MemorySessionManager implements SessionManager {
  // A Map, not an object: keys come from the network ("__proto__" is just a key here).
  readonly #sessions = new Map<string, Entry>();
  /** Connections holding each session, counted for every server sharing this store. */
  readonly #holders = new Map<string, number>();
  readonly #maxAge: number | undefined;
  readonly #maxSessions: number;

  constructor(options: MemorySessionManagerOptions = {}) {
    const { maxAge, maxSessions } = options;
    this.#maxAge = maxAge === undefined ? undefined : checkInteger('maxAge', maxAge, 1, Number.MAX_SAFE_INTEGER);
    this.#maxSessions = checkInteger('maxSessions', maxSessions ?? DEFAULT_MAX_MEMORY_SESSIONS, 1, 2 ** 32);
  }

  /** Number of sessions stored (expired ones not yet dropped included). */
  get size(): number {
    return this.#sessions.size;
  }

  async onSessionCreated(session: Session): Promise<void> {
    this.#dropExpired(Date.now());
    // A key stored again moves to the end, as a new session.
    this.#sessions.delete(session.key);
    while (this.#sessions.size >= this.#maxSessions) this.#dropOldest();
    this.#sessions.set(session.key, {
      json: sessionToJson(session),
      lastLookup: session.lastLookup.getTime(),
      version: 0,
    });
  }

  async onSessionLookup(key: string): Promise<Session | null> {
    const now = Date.now();
    this.#dropExpired(now);
    const entry = this.#sessions.get(key);
    if (entry === undefined) return null;
    this.#sessions.delete(key);
    if (this.#expired(entry, now)) return null;
    const stored = sessionFromJson(entry.json);
    // Never move backwards, even if the clock does: lastLookup only grows.
    const lastLookup = new Date(Math.max(now, entry.lastLookup));
    this.#sessions.set(key, {
      json: sessionToJson({ ...stored, lastLookup }),
      lastLookup: lastLookup.getTime(),
      version: entry.version,
    });
    return { ...stored, lastLookup, version: entry.version };
  }

  /**
   * Replaces the info of a stored session. Its place in the order of use stays (an update is not
   * a lookup), and so do lastLookup and the `maxAge` counted from it. The version goes up by one
   * (synchronously with the write: nothing else runs in between).
   */
  async onSessionUpdate(key: string, info: Readonly<Record<string, unknown>> | undefined): Promise<Session | null> {
    checkSessionInfo(info);
    const entry = this.#sessions.get(key);
    if (entry === undefined) return null;
    if (this.#expired(entry, Date.now())) {
      this.#sessions.delete(key);
      return null;
    }
    const json = sessionToJson({ ...sessionFromJson(entry.json), info });
    // Set on a key already in the Map: its position (least recently used first) is kept.
    const version = entry.version + 1;
    this.#sessions.set(key, { json, lastLookup: entry.lastLookup, version });
    return { ...sessionFromJson(json), version };
  }

  async onSessionClosed(key: string): Promise<void> {
    this.#sessions.delete(key);
    this.#holders.delete(key);
  }

  /**
   * Counts the connections holding `key` across every server sharing this store (several
   * `Server`s in one process), so that their limit and "delete when the last connection closes
   * the session" are the store's, not each server's.
   */
  async onSessionAttach(key: string, limit: number): Promise<SessionAttachResult> {
    const entry = this.#sessions.get(key);
    if (entry === undefined || this.#expired(entry, Date.now())) return 'not-found';
    const count = this.#holders.get(key) ?? 0;
    if (limit > 0 && count >= limit) return 'limit';
    this.#holders.set(key, count + 1);
    return 'attached';
  }

  async onSessionDetach(key: string, closing = false): Promise<number> {
    const count = (this.#holders.get(key) ?? 1) - 1;
    if (count > 0) this.#holders.set(key, count);
    else this.#holders.delete(key);
    if (!this.#sessions.has(key)) return 0;
    // The last holder closed it: gone in the same step, before another server can attach it.
    if (closing && count === 0) this.#sessions.delete(key);
    return count;
  }

  #expired(entry: Entry, now: number): boolean {
    return this.#maxAge !== undefined && now - entry.lastLookup > this.#maxAge;
  }

  /**
   * Drops expired sessions from the front, where the least recently used are. It stops at the
   * first live one: a session stored with an older lastLookup than its neighbours (or a clock
   * that stepped back) may wait further in, and a lookup still refuses it when it is expired.
   */
  #dropExpired(now: number): void {
    if (this.#maxAge === undefined) return;
    for (const [key, entry] of this.#sessions) {
      if (!this.#expired(entry, now)) return;
      this.#sessions.delete(key);
    }
  }

  #dropOldest(): void {
    const oldest = this.#sessions.keys().next();
    if (!oldest.done) this.#sessions.delete(oldest.value);
  }
}
