/**
 * The storage name of a session key (Node only; used by the file and Redis stores).
 *
 * Stores never use the key itself as a name: it comes from the network, and the reference file
 * store turned it into a path (`dir/<key>.wwrsess`: path traversal). The SHA-256 of the key has a
 * fixed length and alphabet whatever the key, so no key can name anything outside the store, and
 * a leaked listing of names (file names, Redis keys) does not reveal the keys, which are bearer
 * credentials.
 */
import { createHash } from 'node:crypto';
import { isStorableSessionKey } from './session.ts';

/**
 * Lower-case hex SHA-256 of the key's UTF-8 bytes, or undefined for a key no session can have
 * (empty, or a lone surrogate: UTF-8 would turn it into U+FFFD and two keys would share a name).
 */
export function sessionKeyHash(key: string): string | undefined {
  if (!isStorableSessionKey(key)) return undefined;
  return createHash('sha256').update(key, 'utf8').digest('hex');
}
