/**
 * Liveness of the peers of the WebSocket applications (wsproxy, bridge). A peer that vanishes
 * without a FIN or RST (a phone that lost its network, a host that died, a NAT or load balancer
 * that forgot the flow) leaves a connection that looks open forever: nothing is written to it, so
 * TCP never notices, and it holds its slot under `maxConnections` and whatever it is linked to.
 * An application's own `ws` client even answers its upstream's pings for it, so the upstream's
 * heartbeat sees a vanished client as alive. Hence the applications check each side themselves,
 * as the `ws` README's heartbeat does: ping every `interval`, and give up on a peer from which
 * nothing came for two intervals (one ping's answer may take up to an interval on a busy link;
 * none in two means one was lost).
 *
 * One timer for the whole application, not one per socket: a tick pings every tracked socket
 * (a 2-byte frame each) and terminates the silent ones, which their owner then sees as an
 * ordinary close (1006, a connection dropped without a close frame).
 *
 * @example
 * ```ts
 * const heartbeat = new Heartbeat(30_000);
 * // when a connection opens:
 * const beat = heartbeat.track(socket, () => logger.info('peer timed out'));
 * // its handlers: onMessage, onPing and onActivity call beat.seen(), onDrain beat.drained(), onClose
 * // beat.untrack(); a send to it that answers 'backpressure' calls beat.owing();
 * // the owner stops reading it (backpressure): socket.pause() with beat.pause(), and
 * // socket.resume() with beat.resume().
 * // when the application closes:
 * heartbeat.stop();
 * ```
 */
import type { TransportSocket } from '../../../transports/types.ts';

/** How often the applications ping each peer; a peer silent for twice this is dropped. @default 30 s */
export const DEFAULT_HEARTBEAT_INTERVAL = 30_000;

/** Ticks without a sign of life after which a socket is terminated. */
const MISSED_TICKS = 2;

/** What the heartbeat needs of a socket. */
export type HeartbeatSocket = Pick<TransportSocket, 'ping' | 'terminate'>;

/** One socket's place in a {@link Heartbeat}. Every method is cheap (a field write) and idempotent. */
export interface HeartbeatTracking {
  /**
   * Something came from the peer: a message, a ping or a pong (`SocketHandlers.onPing` is both),
   * part of a message still arriving (`onActivity`), or it took what was queued for it
   * (`onDrain`). Call it from those handlers.
   */
  seen(): void;
  /**
   * A send to the socket answered `backpressure`: the owner waits for the peer to take what was
   * queued for it, until `drained()`.
   */
  owing(): void;
  /** The peer took what was queued for it (`SocketHandlers.onDrain`): `seen`, and owes nothing. */
  drained(): void;
  /**
   * The owner stopped reading the socket (`TransportSocket.pause`, backpressure): what the peer
   * sends, its pongs included, stays unread, so it is not judged until `resume`, unless it owes
   * a drain (`owing`): a peer that neither takes what it was sent nor can be heard is judged all
   * the same, by its drains alone. Else two peers each waiting for the other to read (an echo
   * upstream that stops reading while its replies back up, a client that sends and reads
   * nothing) would hold their link forever, a vanished one included.
   */
  pause(): void;
  /** The owner reads the socket again; counts as a sign of life, its clock starts over. */
  resume(): void;
  /** The socket closed (or is no longer the application's to watch). */
  untrack(): void;
}

/** What `track` returns when the heartbeat is off or stopped. */
export const UNTRACKED: HeartbeatTracking = Object.freeze({
  seen() {},
  owing() {},
  drained() {},
  pause() {},
  resume() {},
  untrack() {},
});

class Tracked implements HeartbeatTracking {
  /** Something came since the last tick. */
  alive = true;
  /** Ticks in a row without anything. */
  missed = 0;
  paused = false;
  /** A send answered backpressure and no drain followed yet. */
  owes = false;

  constructor(
    readonly socket: HeartbeatSocket,
    readonly onTimeout: (() => void) | undefined,
    private readonly owner: Set<Tracked>,
    private readonly emptied: () => void,
  ) {}

  seen(): void {
    this.alive = true;
  }

  owing(): void {
    this.owes = true;
  }

  drained(): void {
    this.alive = true;
    this.owes = false;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.alive = true;
    this.missed = 0;
  }

  untrack(): void {
    if (this.owner.delete(this) && this.owner.size === 0) this.emptied();
  }
}

/**
 * Pings the sockets it tracks every `interval` ms and terminates one from which nothing came
 * (`seen`) for two intervals, i.e. after between 2 and 3 intervals of silence. `interval` 0 turns
 * it off (`track` does nothing). Its timer runs only while something is tracked, is unref'd (it
 * never keeps a process alive), and ends with `stop()`.
 */
export class Heartbeat {
  /** Milliseconds between pings; 0: off. */
  readonly interval: number;
  readonly #tracked = new Set<Tracked>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #stopped = false;

  /** @param interval 0 (off) or an integer in 1..2^31-1, else RangeError. */
  constructor(interval: number) {
    if (interval !== 0 && (!Number.isInteger(interval) || interval < 1 || interval > 2 ** 31 - 1)) {
      throw new RangeError(`a heartbeat interval must be 0 (off) or an integer in 1..${2 ** 31 - 1}, got ${interval}`);
    }
    this.interval = interval;
  }

  /** Sockets tracked now. */
  get size(): number {
    return this.#tracked.size;
  }

  /**
   * Watches `socket` from now on (it counts as just seen). `onTimeout` runs after the heartbeat
   * terminated it (for logs and metrics; it must not throw); the owner's `onClose` follows as for
   * any dropped connection. Call `untrack()` when the socket closes.
   */
  track(socket: HeartbeatSocket, onTimeout?: () => void): HeartbeatTracking {
    if (this.interval === 0 || this.#stopped) return UNTRACKED;
    const tracked = new Tracked(socket, onTimeout, this.#tracked, () => this.#idle());
    this.#tracked.add(tracked);
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.#tick(), this.interval);
      this.#timer.unref();
    }
    return tracked;
  }

  /** Stops for good: the timer is cleared, nothing is tracked, `track` does nothing from now on. */
  stop(): void {
    this.#stopped = true;
    this.#tracked.clear();
    this.#idle();
  }

  #idle(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #tick(): void {
    for (const tracked of this.#tracked) {
      if (tracked.paused && !tracked.owes) continue;
      if (tracked.alive) {
        tracked.alive = false;
        tracked.missed = 0;
      } else if (++tracked.missed >= MISSED_TICKS) {
        tracked.untrack();
        tracked.socket.terminate();
        tracked.onTimeout?.();
        continue;
      }
      tracked.socket.ping();
    }
  }
}
