/**
 * Signatures of the bridge's requests: HMAC-SHA256 under a secret the bridge and the backend
 * share, over everything a receiver acts on: what the request is (an event of the bridge or a
 * callback of the backend), the timestamp, a random nonce, the event (or the callback's method),
 * the connection id (or callback token), the content type, the callback URL and the body. The
 * header reads `t=<unix ms>,n=<nonce>,v2=<hex>`. A backend checks an event with
 * `verifyEvent(secret, req.headers, body)` (or the same few lines in any language) and refuses
 * requests older than a few minutes, so a captured request cannot be replayed later, nor replayed
 * with another callback URL or content type; within those minutes, the nonce tells a replay (the
 * bridge refuses a callback's second use; a backend dedupes events on it).
 *
 * The signed text is the fields joined by newlines, then the body:
 * `v2\n<domain>\n<t>\n<nonce>\n<action>\n<subject>\n<content type>\n<callback URL>\n<body>`,
 * where the domain is `event` or `callback`, fixed by the receiver (never read from the request):
 * the secret signs in both directions, so without it a callback the backend signed could pass as
 * an event if sent back to the backend (the v1 format had no domain). No field may hold a
 * newline (none of them can: they are HTTP header values), so no two requests sign the same text.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { nanoid } from 'nanoid';
import { InvalidArgumentError } from '../../index.ts';
import type { SeenSignatures } from '../shared/seen-signatures.ts';
import type { BridgeEvent } from './backend.ts';

/** Header carrying the signature. */
export const SIGNATURE_HEADER = 'x-bridge-signature';
/** Requests older (or further in the future) than this are refused by `verifySignature`. @default 5 min */
export const DEFAULT_SIGNATURE_TOLERANCE = 5 * 60_000;
/** Shortest secret accepted, in bytes: 32 bytes, the size of the HMAC-SHA256 key block's worth of entropy. */
export const MIN_SECRET_BYTES = 32;

/** What a signature is for: an event of the bridge, or a callback of the backend. */
export type SignedDomain = 'event' | 'callback';

/** The actions of each domain; a signature for any other is never made nor accepted. */
const ACTIONS: Readonly<Record<SignedDomain, ReadonlySet<string>>> = {
  event: new Set<BridgeEvent>(['connect', 'message', 'close']),
  callback: new Set(['POST', 'DELETE']),
};

/** 16 to 64 characters of base64url; `sign` makes 21 (nanoid, 126 random bits). */
const NONCE = /^[A-Za-z0-9_-]{16,64}$/;
const HEADER = /^t=(\d{1,16}),n=([A-Za-z0-9_-]{16,64}),v2=([0-9a-f]{64})$/;

/** What a signature covers besides the timestamp, the nonce and the body. */
export interface SignedFields {
  /** `event` (the bridge's requests to the backend) or `callback` (the backend's to the bridge). */
  readonly domain: SignedDomain;
  /** `connect`, `message` or `close` for events; `POST` or `DELETE` for callbacks. */
  readonly action: string;
  /** The connection id (events) or the callback token (callbacks). */
  readonly subject: string;
  /** The request's `Content-Type`. @default '' (none) */
  readonly contentType?: string | undefined;
  /** The connection's callback URL (`x-bridge-callback` of `message` and `close` events). @default '' */
  readonly callback?: string | undefined;
}

function mac(
  secret: string | Uint8Array,
  timestamp: number,
  nonce: string,
  fields: SignedFields,
  body: Uint8Array,
): Buffer {
  const actions = ACTIONS[fields.domain] as ReadonlySet<string> | undefined;
  if (actions === undefined || !actions.has(fields.action)) {
    throw new InvalidArgumentError(`${JSON.stringify(fields.action)} is no ${String(fields.domain)} action`);
  }
  if (!NONCE.test(nonce)) throw new InvalidArgumentError('a nonce is 16 to 64 characters of base64url');
  const parts = [fields.subject, fields.contentType ?? '', fields.callback ?? ''];
  if (parts.some((part) => part.includes('\n')))
    throw new InvalidArgumentError('a signed field may not contain a newline');
  return createHmac('sha256', secret)
    .update(`v2\n${fields.domain}\n${timestamp}\n${nonce}\n${fields.action}\n${parts.join('\n')}\n`)
    .update(body)
    .digest();
}

/**
 * The signature header value for a request sent now (or at `timestamp`), with a fresh random
 * nonce (or `nonce`: never use one twice).
 */
export function sign(
  secret: string | Uint8Array,
  fields: SignedFields,
  body: Uint8Array,
  timestamp: number = Date.now(),
  nonce: string = nanoid(),
): string {
  return `t=${timestamp},n=${nonce},v2=${mac(secret, timestamp, nonce, fields, body).toString('hex')}`;
}

/** Options of `verifySignature` and `verifyEvent`. */
export interface VerifyOptions {
  /** Accepted clock difference, in ms. @default 5 min */
  readonly tolerance?: number;
  /** The current time in unix ms. @default Date.now() */
  readonly now?: number;
  /**
   * Nonces already accepted (`new SeenSignatures(DEFAULT_SIGNATURE_TOLERANCE)`, one per
   * process): a valid signature whose nonce it holds is refused as a replay, a new one is added.
   * Without it, a request captured within the tolerance verifies again.
   */
  readonly seen?: SeenSignatures;
}

/** The parts of a signature header, when well-formed. */
export interface SignatureParts {
  readonly timestamp: number;
  readonly nonce: string;
}

/** The timestamp and nonce of a signature header; undefined when it is missing or malformed. */
export function parseSignature(header: string | undefined): SignatureParts | undefined {
  const match = typeof header === 'string' ? HEADER.exec(header) : null;
  return match === null ? undefined : { timestamp: Number(match[1]), nonce: match[2]! };
}

/**
 * `ok`, or why not: `invalid` (missing, malformed, wrong, out of the tolerance) or `replayed` (a
 * valid signature whose nonce `options.seen` holds).
 */
export function checkSignature(
  secret: string | Uint8Array,
  header: string | undefined,
  fields: SignedFields,
  body: Uint8Array,
  options: VerifyOptions = {},
): 'ok' | 'invalid' | 'replayed' {
  const match = typeof header === 'string' ? HEADER.exec(header) : null;
  if (match === null) return 'invalid';
  const timestamp = Number(match[1]);
  const now = options.now ?? Date.now();
  const tolerance = options.tolerance ?? DEFAULT_SIGNATURE_TOLERANCE;
  if (Math.abs(now - timestamp) > tolerance) return 'invalid';
  let expected: Buffer;
  try {
    expected = mac(secret, timestamp, match[2]!, fields, body);
  } catch {
    return 'invalid';
  }
  if (!timingSafeEqual(expected, Buffer.from(match[3]!, 'hex'))) return 'invalid';
  // Only once the signature is good: strangers cannot fill the memory.
  if (options.seen !== undefined && !options.seen.add(match[2]!, timestamp, now)) return 'replayed';
  return 'ok';
}

/**
 * Checks a signature header against the secret, the signed fields and the body (compared in
 * constant time). False for a missing or malformed header, a wrong signature, a timestamp outside
 * the tolerance, or (with `options.seen`) a nonce used before.
 */
export function verifySignature(
  secret: string | Uint8Array,
  header: string | undefined,
  fields: SignedFields,
  body: Uint8Array,
  options: VerifyOptions = {},
): boolean {
  return checkSignature(secret, header, fields, body, options) === 'ok';
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
 * For a backend: true when an event from the bridge (`x-bridge-event` one of `connect`,
 * `message`, `close`) is signed with `secret` as an event, over its event, connection id, content
 * type, callback URL and `body` (the raw bytes), and recent. A callback signed with the same
 * secret never passes. Within the tolerance a captured event verifies again: pass `seen` (one
 * process), or dedupe on the signature's nonce (`parseSignature(header).nonce`, unique per
 * event) in storage the backend's instances share.
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
  if (action === undefined || subject === undefined || !ACTIONS.event.has(action)) return false;
  return verifySignature(
    secret,
    header(headers, SIGNATURE_HEADER),
    {
      domain: 'event',
      action,
      subject,
      contentType: header(headers, 'content-type'),
      callback: header(headers, 'x-bridge-callback'),
    },
    body,
    options,
  );
}

/**
 * For a backend, with `requireSignedCallbacks`: the `x-bridge-signature` value of a callback
 * request (`POST` a message or `DELETE`) to the callback `url`, with that content type and body.
 * Each call makes a new signature; the bridge accepts each one once (a retry of a request the
 * bridge may have received reuses it: refused as `REPLAYED` if it did).
 */
export function signCallback(
  secret: string | Uint8Array,
  request: { readonly method: 'POST' | 'DELETE'; readonly url: string; readonly contentType?: string },
  body: Uint8Array,
): string {
  const token = new URL(request.url).pathname.split('/').at(-1) ?? '';
  return sign(
    secret,
    { domain: 'callback', action: request.method, subject: token, contentType: request.contentType },
    body,
  );
}
