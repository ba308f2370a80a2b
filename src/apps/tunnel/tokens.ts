/**
 * Agent credentials: one or more tokens per client id, kept only as SHA-256 digests and compared
 * in constant time. A token is bound to its id: the token of agent A presented with id B is
 * refused, so one leaked token never opens another id's traffic.
 *
 * Token file (JSON): `{ "<id>": "<token or digest>" | ["<token or digest>", ...] }` where a digest
 * is written `sha256:<64 hex>` (or bare 64 hex digits), and anything else is a plaintext token
 * hashed at load. Plaintext tokens must carry at least 128 bits: 22 or more characters of
 * base64url, as `duplexwire tunnel token` makes them (32 random bytes, 43 characters).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';

/** What a client id may be: it appears in routing headers, host names and paths. */
export const CLIENT_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export function isValidClientId(id: string): boolean {
  return CLIENT_ID.test(id);
}

/** 22 base64url characters are 132 bits. */
export const MIN_TOKEN_LENGTH = 22;
/** Presented tokens longer than this are refused before hashing. */
const MAX_TOKEN_LENGTH = 1024;
const DIGEST = /^(?:sha256:)?([0-9a-fA-F]{64})$/;
const TOKEN_CHARS = /^[\x21-\x7e]+$/;

/** True when `token` may be a plaintext token: printable ASCII, at least 128 bits' worth of it. */
export function isStrongToken(token: string): boolean {
  return token.length >= MIN_TOKEN_LENGTH && TOKEN_CHARS.test(token);
}

/** A new random token: 32 bytes from the CSPRNG, base64url (43 characters, 256 bits). */
export function generateToken(): string {
  return randomBytes(32).toString('base64url');
}

/** The digest line of `token` for a token file: `sha256:<hex>`. */
export function tokenDigest(token: string): string {
  return `sha256:${createHash('sha256').update(token, 'utf8').digest('hex')}`;
}

function digestBytes(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** Checks agent credentials. */
export interface AgentAuthenticator {
  /** True when `token` is one of `id`'s. Constant-time in the token; unknown ids take the same path. */
  verify(id: string, token: string): boolean;
  /** The ids with credentials. */
  ids(): string[];
}

/** Token entries as given in code or read from a file. */
export type TokenEntries =
  | Readonly<Record<string, string | readonly string[]>>
  | ReadonlyMap<string, string | readonly string[]>;

/** Compared against when the id is unknown, so the time taken does not tell which ids exist. */
const DUMMY = digestBytes('duplexwire tunnel: no such id');

/**
 * Builds an authenticator from entries (digests or plaintext tokens). Throws RangeError naming the
 * id of an invalid entry (never the token).
 */
export function tokenAuthenticator(entries: TokenEntries): AgentAuthenticator {
  const byId = new Map<string, Buffer[]>();
  const pairs: Iterable<[string, string | readonly string[]]> =
    entries instanceof Map ? entries.entries() : Object.entries(entries as Record<string, string | readonly string[]>);
  for (const [id, value] of pairs) {
    if (!isValidClientId(id)) throw new RangeError(`token file: invalid client id ${JSON.stringify(id)}`);
    const list = typeof value === 'string' ? [value] : value;
    if (!Array.isArray(list) || list.length === 0) throw new RangeError(`token file: id ${id} has no token`);
    const digests: Buffer[] = [];
    for (const item of list as readonly unknown[]) {
      if (typeof item !== 'string') throw new RangeError(`token file: id ${id}: tokens must be strings`);
      const digest = DIGEST.exec(item);
      if (digest !== null) {
        digests.push(Buffer.from(digest[1]!, 'hex'));
      } else if (isStrongToken(item)) {
        digests.push(digestBytes(item));
      } else {
        throw new RangeError(
          `token file: id ${id}: a token must have at least ${MIN_TOKEN_LENGTH} printable characters (128 bits), or be a sha256: digest`,
        );
      }
    }
    byId.set(id, digests);
  }
  return {
    verify(id, token) {
      if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_LENGTH) return false;
      const presented = digestBytes(token);
      const digests = byId.get(id);
      if (digests === undefined) {
        timingSafeEqual(presented, DUMMY);
        return false;
      }
      let ok = false;
      // Every digest is compared, so the time does not tell which of several tokens matched.
      for (const digest of digests) ok = timingSafeEqual(presented, digest) || ok;
      return ok;
    },
    ids() {
      return [...byId.keys()];
    },
  };
}

/** Reads a token file (see the module comment). */
export async function loadTokenFile(path: string): Promise<AgentAuthenticator> {
  const text = await readFile(path, 'utf8');
  let parsed: unknown;
  try {
    // A byte order mark, which Windows editors write (JSON.parse takes it for a stray character).
    parsed = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
  } catch {
    throw new RangeError(`token file ${path} is not valid JSON`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new RangeError(`token file ${path} must be a JSON object { "<id>": "<token or sha256:digest>" }`);
  }
  // JSON.parse makes own properties only, `__proto__` included as a plain key: Object.entries is safe.
  return tokenAuthenticator(parsed as Record<string, string | string[]>);
}

/** The token in `Authorization: Bearer <token>`, or undefined. */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined) return undefined;
  const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization);
  return match?.[1];
}
