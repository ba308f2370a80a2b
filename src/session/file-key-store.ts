import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { SessionKeyStore } from '../client/session-key-store.ts';

/**
 * Keeps a client's session key in a file (mode 0600), so a restarted Node process restores its
 * session. Written atomically (temp file, then rename).
 *
 * @example
 * const client = new Client(url, { sessionKeyStore: fileKeyStore('./.session-key') });
 */
export function fileKeyStore(path: string): SessionKeyStore {
  return {
    async load() {
      try {
        const key = (await readFile(path, 'utf8')).trim();
        return key.length > 0 ? key : null;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
        throw error;
      }
    },
    async save(key) {
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      const temp = `${path}.${process.pid}.tmp`;
      await writeFile(temp, key, { mode: 0o600 });
      await rename(temp, path);
    },
    async clear() {
      await rm(path, { force: true });
    },
  };
}
