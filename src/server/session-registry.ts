import type { Logger } from '../logger.ts';
import type { Session, SessionAttachResult, SessionKeyGenerator, SessionManager } from '../session/session.ts';

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
 * Which connections hold which session. This process's connections are kept here; when the store
 * counts connections across processes (`onSessionAttach`/`onSessionDetach`, as
 * `RedisSessionManager` does), every attach and detach is also told to it, and its answers (the
 * limit, what is left) are the cluster's.
 *
 * Locally, reservation and registration are one synchronous step, so the connection limit holds
 * however many restores race (the reference checked, awaited the store, then registered); the
 * store's count, atomic on its side, then holds it across processes.
 */
export class SessionRegistry<Conn> {
  private readonly byKey = new Map<string, Set<Conn>>();
  /** Connections looking a session up to restore it, before they attach: an update must reach them too. */
  private readonly restoring = new Map<string, Set<Conn>>();
  /**
   * The store's attaches and detaches not answered yet. `Server.shutdown()` waits for them: the
   * connections it closes let go of their sessions in the store, and an application closing its
   * store client (Redis) once the shutdown resolved would otherwise cut those writes off, leaving
   * the connections counted (their slots of `maxSessionConnections` taken) until the counts expire.
   */
  private readonly inflight = new Set<Promise<void>>();
  private readonly maxConnections: number;
  private readonly manager: SessionManager | undefined;
  private readonly logger: Logger;

  constructor(settings: SessionSettings | null, logger: Logger) {
    this.maxConnections = settings?.maxConnections ?? 0;
    this.manager = settings?.manager.onSessionAttach === undefined ? undefined : settings.manager;
    this.logger = logger;
  }

  /**
   * `conn` takes the session `key`: registered here at once (unless this process already has the
   * limit's worth), then counted by the store when it counts across processes. On any answer but
   * `'attached'`, and when the store fails (the error is thrown), `conn` is registered nowhere.
   */
  async attach(key: string, conn: Conn): Promise<SessionAttachResult> {
    let set = this.byKey.get(key);
    if (set === undefined) {
      set = new Set();
      this.byKey.set(key, set);
    }
    if (set.has(conn)) return 'attached';
    if (this.maxConnections > 0 && set.size >= this.maxConnections) return 'limit';
    set.add(conn);
    if (this.manager === undefined) return 'attached';
    let result: SessionAttachResult;
    try {
      result = await this.track(this.manager.onSessionAttach!(key, this.maxConnections));
    } catch (error) {
      this.remove(key, conn);
      throw error;
    }
    if (result !== 'attached') this.remove(key, conn);
    return result;
  }

  /**
   * `conn` lets go of the session `key`. Resolves with the number of connections still holding
   * it: across processes when the store counts them, else in this process; -1 when `conn` did not
   * hold it (nothing was done).
   */
  async detach(key: string, conn: Conn, closing = false): Promise<number> {
    const left = this.remove(key, conn);
    if (left < 0 || this.manager === undefined) return left;
    return this.track(this.manager.onSessionDetach!(key, closing));
  }

  private track<T>(call: Promise<T>): Promise<T> {
    const done = call.then(
      () => {},
      () => {},
    );
    this.inflight.add(done);
    void done.then(() => this.inflight.delete(done));
    return call;
  }

  /** Resolves once every store call made so far, and any made meanwhile, was answered. */
  async idle(): Promise<void> {
    for (let round = 0; this.inflight.size > 0 && round < 100; round++) {
      await Promise.all(this.inflight);
      // An attach answered for a connection that closed meanwhile is released by its caller a few
      // microtasks later: a turn of the event loop lets that detach start before looking again.
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }

  /**
   * `detach` for a connection that needs no answer (it closed, or the session was closed by key):
   * a failure is logged. The store's count heals on its own (see `RedisSessionManager`'s
   * `presenceTtl`).
   */
  release(key: string, conn: Conn): void {
    this.detach(key, conn).catch((error: unknown) => {
      this.logger.error('session store failed to count a connection leaving a session', { error });
    });
  }

  /** Takes `conn` off `key` here. Returns how many connections of this process are left, or -1. */
  private remove(key: string, conn: Conn): number {
    const set = this.byKey.get(key);
    if (set === undefined || !set.delete(conn)) return -1;
    if (set.size === 0) this.byKey.delete(key);
    return set.size;
  }

  /**
   * `conn` is about to take the session `key` (its restore is looking it up) until `unexpect`:
   * meanwhile `audience(key)` includes it, so that an update landing between the lookup and the
   * attach is not lost.
   */
  expect(key: string, conn: Conn): void {
    let set = this.restoring.get(key);
    if (set === undefined) {
      set = new Set();
      this.restoring.set(key, set);
    }
    set.add(conn);
  }

  unexpect(key: string, conn: Conn): void {
    const set = this.restoring.get(key);
    if (set === undefined || !set.delete(conn)) return;
    if (set.size === 0) this.restoring.delete(key);
  }

  /** Whom an update of `key` concerns here: the connections holding it and those about to (a copy). */
  audience(key: string): Conn[] {
    const held = this.byKey.get(key);
    const coming = this.restoring.get(key);
    if (coming === undefined) return [...(held ?? [])];
    return [...new Set([...(held ?? []), ...coming])];
  }

  /** The connections of a session in this process (a copy). */
  connections(key: string): Conn[] {
    return [...(this.byKey.get(key) ?? [])];
  }

  /** Number of sessions with at least one connection in this process. */
  get size(): number {
    return this.byKey.size;
  }
}

export type { Session };
