/**
 * Runs async tasks one at a time per key, in call order; different keys run concurrently.
 *
 * The file store needs it so that a lookup (read, then write back the new last-lookup time) and a
 * close of the same session cannot interleave: without it, the lookup's write-back could land
 * after the close's unlink and bring the session back to life.
 */
export class KeyedQueue {
  readonly #tails = new Map<string, Promise<void>>();

  /** Runs `task` after every task queued before it under `key` has settled. */
  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key);
    // Start at once when the key is idle; `new Promise` turns a synchronous throw into a rejection.
    const result = previous === undefined ? new Promise<T>((resolve) => resolve(task())) : previous.then(task);
    const tail = result.then(
      () => {},
      () => {},
    );
    this.#tails.set(key, tail);
    // Forget the key once its last task is done, so the map holds only busy keys.
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return result;
  }

  /** Number of keys with a task queued or running. */
  get size(): number {
    return this.#tails.size;
  }

  /** Resolves once every task queued so far, and any queued meanwhile, has settled. */
  async idle(): Promise<void> {
    while (this.#tails.size > 0) await Promise.all(this.#tails.values());
  }
}
