/**
 * Signatures of the bridge's requests: HMAC-SHA256 under a secret the bridge and the backend
 * share, over the timestamp, the event (or the callback's method), the connection (or callback
 * token) and the body. The header reads `t=<unix ms>,v1=<hex>`. A backend checks it with
 * `verifySignature` (or the same few lines in any language) and refuses requests older than a few
 * minutes, so a captured request cannot be replayed later.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** Header carrying the signature. */
export const SIGNATURE_HEADER = 'x-bridge-signature';
/** Requests older (or further in the future) than this are refused by `verifySignature`. @default 5 min */
export const DEFAULT_SIGNATURE_TOLERANCE = 5 * 60_000;
/** Shortest secret accepted, in bytes: 32 bytes, the size of the HMAC-SHA256 key block's worth of entropy. */
export const MIN_SECRET_BYTES = 32;

/** What a signature covers besides the body. */
export interface SignedFields {
  /** `connect`, `message` or `close` for events; `POST` or `DELETE` for callbacks. */
  readonly action: string;
  /** The connection id (events) or the callback token (callbacks). */
  readonly subject: string;
}

function mac(secret: string | Uint8Array, timestamp: number, fields: SignedFields, body: Uint8Array): Buffer {
  return createHmac('sha256', secret)
    .update(`v1:${timestamp}:${fields.action}:${fields.subject}:`)
    .update(body)
    .digest();
}

/** The signature header value for a request sent now (or at `timestamp`). */
export function sign(
  secret: string | Uint8Array,
  fields: SignedFields,
  body: Uint8Array,
  timestamp: number = Date.now(),
): string {
  return `t=${timestamp},v1=${mac(secret, timestamp, fields, body).toString('hex')}`;
}

/** Options of `verifySignature`. */
export interface VerifyOptions {
  /** Accepted clock difference, in ms. @default 5 min */
  readonly tolerance?: number;
  /** The current time in unix ms. @default Date.now() */
  readonly now?: number;
}

/**
 * Checks a signature header against the secret, the signed fields and the body (compared in
 * constant time). False for a missing or malformed header, a wrong signature, or a timestamp
 * outside the tolerance.
 *
 * @example
 * // in the backend, for an event:
 * const ok = verifySignature(secret, req.headers['x-bridge-signature'],
 *   { action: req.headers['x-bridge-event'], subject: req.headers['x-bridge-connection'] }, body);
 */
export function verifySignature(
  secret: string | Uint8Array,
  header: string | undefined,
  fields: SignedFields,
  body: Uint8Array,
  options: VerifyOptions = {},
): boolean {
  if (typeof header !== 'string') return false;
  const match = /^t=(\d{1,16}),v1=([0-9a-f]{64})$/.exec(header);
  if (match === null) return false;
  const timestamp = Number(match[1]);
  const now = options.now ?? Date.now();
  if (Math.abs(now - timestamp) > (options.tolerance ?? DEFAULT_SIGNATURE_TOLERANCE)) return false;
  const expected = mac(secret, timestamp, fields, body);
  return timingSafeEqual(expected, Buffer.from(match[2]!, 'hex'));
}
