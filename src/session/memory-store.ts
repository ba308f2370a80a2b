/**
 * Sessions in process memory: for tests, development and single-process servers that can lose
 * their sessions on restart. Sessions stay until closed (a disconnect does not close a session),
 * so a long-running server should prefer a store that expires them (`FileSessionManager` with
 * `maxAge`, `RedisSessionManager` with `ttl`).
 */
import { type Session, type SessionManager, sessionFromJson, sessionToJson } from './session.ts';

/**
 * A `SessionManager` over a `Map`.
 *
 * Sessions are kept as their JSON text, the same form the file and Redis stores keep, so that
 * callers can neither change a stored session through an object they passed in or got back, nor
 * store something the other stores would refuse or alter (a Date or `undefined` in the info).
 *
 * @example
 * const sessions = new MemorySessionManager();
 * const now = new Date();
 * await sessions.onSessionCreated({ key, creation: now, lastLookup: now, info: { user: 'ada' } });
 * (await sessions.onSessionLookup(key))?.info; // { user: 'ada' }
 */
export class MemorySessionManager implements SessionManager {
  // A Map, not an object: keys come from the network ("__proto__" is just a key here).
  readonly #sessions = new Map<string, string>();

  /** Number of sessions stored. */
  get size(): number {
    return this.#sessions.size;
  }

  async onSessionCreated(session: Session): Promise<void> {
    this.#sessions.set(session.key, sessionToJson(session));
  }

  async onSessionLookup(key: string): Promise<Session | null> {
    const text = this.#sessions.get(key);
    if (text === undefined) return null;
    const stored = sessionFromJson(text);
    // Never move backwards, even if the clock does: lastLookup only grows.
    const lastLookup = new Date(Math.max(Date.now(), stored.lastLookup.getTime()));
    const session: Session = { ...stored, lastLookup };
    this.#sessions.set(key, sessionToJson(session));
    return session;
  }

  async onSessionClosed(key: string): Promise<void> {
    this.#sessions.delete(key);
  }
}
