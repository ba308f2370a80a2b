/**
 * Signatures of the bridge's requests: HMAC-SHA256 under a secret the bridge and the backend
 * share, over everything a receiver acts on: the timestamp, the event (or the callback's method),
 * the connection id (or callback token), the content type, the callback URL and the body. The
 * header reads `t=<unix ms>,v1=<hex>`. A backend checks an event with `verifyEvent(secret,
 * req.headers, body)` (or the same few lines in any language) and refuses requests older than a
 * few minutes, so a captured request cannot be replayed later, nor replayed with another callback
 * URL or content type.
 *
 * The signed text is the fields joined by newlines, then the body:
 * `v1\n<t>\n<action>\n<subject>\n<content type>\n<callback URL>\n<body>`. No field may hold a
 * newline (none of them can: they are HTTP header values), so no two requests sign the same text.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { InvalidArgumentError } from '../../index.ts';

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
  /** The request's `Content-Type`. @default '' (none) */
  readonly contentType?: string | undefined;
  /** The connection's callback URL (`x-bridge-callback` of `message` and `close` events). @default '' */
  readonly callback?: string | undefined;
}

function mac(secret: string | Uint8Array, timestamp: number, fields: SignedFields, body: Uint8Array): Buffer {
  const parts = [fields.action, fields.subject, fields.contentType ?? '', fields.callback ?? ''];
  if (parts.some((part) => part.includes('\n')))
    throw new InvalidArgumentError('a signed field may not contain a newline');
  return createHmac('sha256', secret)
    .update(`v1\n${timestamp}\n${parts.join('\n')}\n`)
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
  let expected: Buffer;
  try {
    expected = mac(secret, timestamp, fields, body);
  } catch {
    return false;
  }
  return timingSafeEqual(expected, Buffer.from(match[2]!, 'hex'));
}

/** Request headers as Node (`req.headers`) or fetch (`request.headers`) give them. */
export type RequestHeaders =
  | Readonly<Record<string, string | readonly string[] | undefined>>
  | { get(name: string): string | null };

function header(headers: RequestHeaders, name: string): string | undefined {
  if (typeof (headers as { get?: unknown }).get === 'function') {
    return (headers as { get(name: string): string | null }).get(name) ?? undefined;
  }
  const value = (headers as Readonly<Record<string, string | readonly string[] | undefined>>)[name];
  return typeof value === 'string' ? value : value?.[0];
}

/**
 * For a backend: true when an event from the bridge is signed with `secret`, over its event,
 * connection id, content type, callback URL and `body` (the raw bytes), and recent.
 *
 * @example
 * // Node: read the body as bytes first
 * if (!verifyEvent(secret, req.headers, body)) return res.writeHead(401).end();
 * // fetch-style (Request): verifyEvent(secret, request.headers, new Uint8Array(await request.arrayBuffer()))
 */
export function verifyEvent(
  secret: string | Uint8Array,
  headers: RequestHeaders,
  body: Uint8Array,
  options: VerifyOptions = {},
): boolean {
  const action = header(headers, 'x-bridge-event');
  const subject = header(headers, 'x-bridge-connection');
  if (action === undefined || subject === undefined) return false;
  return verifySignature(
    secret,
    header(headers, SIGNATURE_HEADER),
    { action, subject, contentType: header(headers, 'content-type'), callback: header(headers, 'x-bridge-callback') },
    body,
    options,
  );
}

/**
 * For a backend, with `requireSignedCallbacks`: the `x-bridge-signature` value of a callback
 * request (`POST` a message or `DELETE`) to the callback `url`, with that content type and body.
 */
export function signCallback(
  secret: string | Uint8Array,
  request: { readonly method: 'POST' | 'DELETE'; readonly url: string; readonly contentType?: string },
  body: Uint8Array,
): string {
  const token = new URL(request.url).pathname.split('/').at(-1) ?? '';
  return sign(secret, { action: request.method, subject: token, contentType: request.contentType }, body);
}
