/**
 * Close-frame and refusal-body rules shared by the transport adapters, so that every adapter
 * accepts and rejects the same close codes and cuts text at the same places. Internal: not part
 * of any subpath export.
 */

/** A close frame's payload is at most 125 bytes, 2 of which are the code (RFC 6455 §5.5). */
export const MAX_CLOSE_REASON_BYTES = 123;

/** How much of a refused upgrade's body a client keeps ({@link ConnectFailure.body}). */
export const MAX_REFUSAL_BODY_BYTES = 512;

/**
 * Whether `code` may be sent in a close frame (RFC 6455 §7.4.1; 1004-1006 and 1015 are reserved
 * for local use, 1016-2999 for future standards, 3000-4999 for libraries and applications).
 * Same rule as `ws` `lib/validation.js` `isValidStatusCode`, so both adapters agree.
 */
export function isSendableCloseCode(code: number): boolean {
  return (
    Number.isInteger(code) &&
    ((code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) ||
      (code >= 3000 && code <= 4999))
  );
}

/** Throws the `RangeError` a caller gets for a code no peer would accept: a bug, not a runtime event. */
export function assertSendableCloseCode(code: number): void {
  if (!isSendableCloseCode(code)) {
    throw new RangeError(`invalid WebSocket close code: ${code}`);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Cuts `text` to at most `maxBytes` bytes of UTF-8 without splitting a character, so that the
 * receiver's UTF-8 validation (RFC 6455 §8.1) never fails on a reason we shortened.
 */
export function truncateUtf8(text: string, maxBytes: number): string {
  // Fast path: each UTF-16 unit is at most 3 bytes of UTF-8.
  if (text.length * 3 <= maxBytes) return text;
  const bytes = encoder.encode(text);
  if (bytes.length <= maxBytes) return text;
  let end = maxBytes;
  // Back off to the lead byte of the character that straddles the limit (continuation bytes
  // are 0b10xxxxxx).
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return decoder.decode(bytes.subarray(0, end));
}

/** Headers a refusal writer sets itself: an owner's copy would break the response's framing. */
const RESERVED_REFUSAL_HEADERS: ReadonlySet<string> = new Set(['connection', 'content-length', 'transfer-encoding']);

/** The type of a refusal's body unless the owner names another (`Content-Type` in its headers). */
export const DEFAULT_REFUSAL_CONTENT_TYPE = 'text/plain; charset=utf-8';

/** RFC 9110 §5.6.2 `token`, the header names Node's `validateHeaderName` accepts. */
const HTTP_TOKEN = /^[\^_`a-zA-Z\-0-9!#$%&'*+.|~]+$/;

/**
 * A character outside RFC 9110 §5.5 `field-value` (HTAB, SP, VCHAR, obs-text), as Node's
 * `validateHeaderValue` checks: CR and LF are among them, so a value cannot start a new header.
 */
const INVALID_HEADER_VALUE_CHAR = /[^\t\x20-\x7e\x80-\xff]/;

/** What a server transport writes instead of the upgrade once the owner's decision is checked. */
export interface RefusalResponse {
  /** 200-599. */
  readonly status: number;
  readonly body: string;
  /** The body's `Content-Type`: the owner's, else {@link DEFAULT_REFUSAL_CONTENT_TYPE}. */
  readonly contentType: string;
  /**
   * The owner's extra headers, validated, without the ones the writer sets itself (`Connection`,
   * `Content-Length`, `Transfer-Encoding`) and without `Content-Type` (in `contentType`). Values
   * are meant to be written as latin1, as Node writes header strings.
   */
  readonly headers: ReadonlyArray<readonly [name: string, value: string]>;
}

// Pure: a client bundle, which never refuses an upgrade, drops it.
const BARE_500: RefusalResponse = /* @__PURE__ */ Object.freeze({
  status: 500,
  body: '',
  contentType: DEFAULT_REFUSAL_CONTENT_TYPE,
  headers: /* @__PURE__ */ Object.freeze([]),
});

/**
 * Checks a refusal decision. Invalid owner input (a status outside 200-599, a body that is not a
 * string, a header name that is not a token, a value with CR/LF or another forbidden character)
 * becomes a bare 500: a decision
 * must never be able to inject bytes into the response. Shared so that every server adapter
 * answers the same decision with the same response.
 */
export function refusalResponse(
  status: number,
  body = '',
  headers?: Readonly<Record<string, string>>,
): RefusalResponse {
  if (!(Number.isInteger(status) && status >= 200 && status <= 599)) return BARE_500;
  // Typed string too, but owners write JavaScript: another body is their bug, answered as one.
  if (typeof body !== 'string') return BARE_500;
  const extra: Array<readonly [string, string]> = [];
  let contentType = DEFAULT_REFUSAL_CONTENT_TYPE;
  if (headers !== undefined) {
    for (const [name, value] of Object.entries(headers)) {
      const lower = name.toLowerCase();
      if (RESERVED_REFUSAL_HEADERS.has(lower)) continue;
      // `value` is typed string, but owners write JavaScript too: Node stringifies a number and
      // rejects undefined, and so do we.
      if (!HTTP_TOKEN.test(name) || value === undefined || INVALID_HEADER_VALUE_CHAR.test(String(value)))
        return BARE_500;
      // One Content-Type, written where the default would be (a JSON refusal says so).
      if (lower === 'content-type') contentType = String(value);
      else extra.push([name, String(value)]);
    }
  }
  return { status, body, contentType, headers: extra };
}
