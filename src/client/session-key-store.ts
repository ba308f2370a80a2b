/**
 * Where a client keeps its session key between connections, and between runs: the client restores
 * the session after every reconnect, and on its first connection when the store has a key.
 */
export interface SessionKeyStore {
  load(): string | null | Promise<string | null>;
  save(key: string): void | Promise<void>;
  clear(): void | Promise<void>;
}

/** Keeps the key in memory: it survives reconnects, not a restart. The default. */
export function memoryKeyStore(): SessionKeyStore {
  let key: string | null = null;
  return {
    load: () => key,
    save: (value) => {
      key = value;
    },
    clear: () => {
      key = null;
    },
  };
}

/** What `localStorageKeyStore` needs of a Web Storage (`localStorage`, `sessionStorage`). */
export interface StorageLike {
  getItem(name: string): string | null;
  setItem(name: string, value: string): void;
  removeItem(name: string): void;
}

/**
 * Keeps the key in the browser's `localStorage` under `name`, so a page reload restores the
 * session; the default in browsers. Another Web Storage may be given: `sessionStorage` gives each
 * tab its own session (a reload keeps it, a new tab starts without one).
 *
 * @example
 * new Client(url, { sessionKeyStore: localStorageKeyStore('chat.session', sessionStorage) });
 */
export function localStorageKeyStore(
  name = 'duplexwire.session',
  storage: StorageLike | undefined = (globalThis as { localStorage?: StorageLike }).localStorage,
): SessionKeyStore {
  if (storage === undefined) throw new TypeError('localStorage is not available here');
  return {
    load: () => storage.getItem(name),
    save: (key) => storage.setItem(name, key),
    clear: () => storage.removeItem(name),
  };
}
