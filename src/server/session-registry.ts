import type { Session, SessionKeyGenerator, SessionManager } from '../session/session.ts';

/** Server-side session settings, resolved. `null` manager: sessions are disabled. */
export interface SessionSettings {
  readonly manager: SessionManager;
  readonly keyGenerator: SessionKeyGenerator;
  /** Connections one session may have at once; 0 = unlimited. */
  readonly maxConnections: number;
  /** Turns stored info into the application's shape on restore. */
  readonly parseInfo: ((info: Readonly<Record<string, unknown>>) => Readonly<Record<string, unknown>>) | undefined;
}

/**
 * Which connections hold which session, in this process. Reservation and registration are one
 * synchronous step, so the connection limit holds however many restores race (the reference
 * checked, awaited the store, then registered).
 */
export class SessionRegistry<Conn> {
  private readonly byKey = new Map<string, Set<Conn>>();
  private readonly maxConnections: number;

  constructor(maxConnections: number) {
    this.maxConnections = maxConnections;
  }

  /** Registers `conn` under `key` unless the session has its maximum of connections. */
  tryRegister(key: string, conn: Conn): boolean {
    let set = this.byKey.get(key);
    if (set === undefined) {
      set = new Set();
      this.byKey.set(key, set);
    }
    if (set.has(conn)) return true;
    if (this.maxConnections > 0 && set.size >= this.maxConnections) return false;
    set.add(conn);
    return true;
  }

  /** Removes `conn` from `key`. Returns true when it was the session's last connection here. */
  unregister(key: string, conn: Conn): boolean {
    const set = this.byKey.get(key);
    if (set === undefined || !set.delete(conn)) return false;
    if (set.size > 0) return false;
    this.byKey.delete(key);
    return true;
  }

  /** The connections of a session (a copy). */
  connections(key: string): Conn[] {
    return [...(this.byKey.get(key) ?? [])];
  }

  /** Number of sessions with at least one connection. */
  get size(): number {
    return this.byKey.size;
  }
}

export type { Session };
