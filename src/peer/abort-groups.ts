/**
 * Requests grouped by the abort signal they share, with one 'abort' listener per signal however
 * many requests use it. A user who passes one app-wide or per-page `AbortSignal` to many requests
 * (as fetch-style code does) would otherwise get a listener per pending request on it: Node warns
 * past 10 (`MaxListenersExceededWarning`), and each add and remove walks the signal's listener
 * list. Grouped, the listeners a signal holds from us are bounded by the peers (connections,
 * clients) using it, not by the requests.
 */
import type { AbortSignalLike } from './cancellation.ts';

interface Group<T> {
  /** In the order they were added: an abort settles them in that order, as separate listeners did. */
  readonly items: Set<T>;
  readonly listener: () => void;
}

export class AbortGroups<T> {
  /**
   * Weak: a group leaves with its last item anyway, but nothing here may keep a user's signal
   * alive. Also cheaper than a Map for the usual signal of one request (measured on Node 20).
   */
  readonly #groups = new WeakMap<AbortSignalLike, Group<T>>();
  /** Called once for each item of a signal that aborts; must not throw. */
  readonly #onAbort: (item: T, signal: AbortSignalLike) => void;

  constructor(onAbort: (item: T, signal: AbortSignalLike) => void) {
    this.#onAbort = onAbort;
  }

  /** Adds `item` under `signal` (not aborted): the first item of a signal adds the listener. */
  add(signal: AbortSignalLike, item: T): void {
    let group = this.#groups.get(signal);
    if (group === undefined) {
      const items = new Set<T>();
      const listener = (): void => {
        // Out of the map first: what `onAbort` removes while this runs leaves `items` alone.
        this.#groups.delete(signal);
        for (const each of items) this.#onAbort(each, signal);
      };
      group = { items, listener };
      this.#groups.set(signal, group);
      signal.addEventListener('abort', listener, { once: true });
    }
    group.items.add(item);
  }

  /** Removes `item` (settled): the last item of a signal removes the listener. */
  delete(signal: AbortSignalLike, item: T): void {
    const group = this.#groups.get(signal);
    if (group === undefined || !group.items.delete(item) || group.items.size > 0) return;
    this.#groups.delete(signal);
    signal.removeEventListener('abort', group.listener);
  }
}
