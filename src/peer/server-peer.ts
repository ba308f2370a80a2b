/**
 * The peer engine with what only a server needs for a graceful shutdown: stop taking new work
 * (`drain`) and wait until the work already taken is done (`whenIdle`). The engine itself is
 * `Peer`; this is kept apart only so that the browser client's bundle does not carry it.
 */
import { Peer } from './peer.ts';

export class ServerPeer extends Peer {
  #idleWaiters: Array<() => void> | undefined;

  /**
   * Stops taking new work: requests get ReplyShutdown, signals are dropped. Work already received
   * runs to its end. Replies to our own requests are still delivered.
   */
  drain(): void {
    this.draining = true;
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Resolves when no handler runs or waits (at once if none does, or once the connection closed). */
  whenIdle(): Promise<void> {
    if (!this.busy || this.isClosed) return Promise.resolve();
    this.#idleWaiters ??= [];
    const waiters = this.#idleWaiters;
    return new Promise((resolve) => waiters.push(resolve));
  }

  protected override becameIdle(): void {
    const waiters = this.#idleWaiters;
    if (waiters === undefined) return;
    this.#idleWaiters = undefined;
    for (const resolve of waiters) resolve();
  }
}
