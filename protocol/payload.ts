import type { Encoding, Payload } from './types.ts';

const utf8Encoder = new TextEncoder();
// ignoreBOM: a leading U+FEFF is payload text, not a byte-order mark to strip (the wire fixes the
// byte order; the reference keeps it), so decoding must not drop it.
const utf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });
// TextDecoder's utf-16le decoder joins surrogate pairs correctly (the reference's converter broke
// them); lone surrogates become U+FFFD, as every well-formed UTF-16 reader does.
const utf16Decoder = new TextDecoder('utf-16le', { ignoreBOM: true });

const EMPTY = new Uint8Array(0);

/** An empty binary payload. */
export const EMPTY_PAYLOAD: Payload = Object.freeze({ encoding: 'binary', data: EMPTY });

/** A binary payload over `data` (not copied). */
export function binary(data: Uint8Array): Payload {
  return { encoding: 'binary', data };
}

/** A UTF-8 payload holding `text`. */
export function utf8(text: string): Payload {
  return { encoding: 'utf8', data: utf8Encoder.encode(text) };
}

/** A UTF-16 payload holding `text` as UTF-16LE code units (surrogate pairs kept as they are). */
export function utf16(text: string): Payload {
  return { encoding: 'utf16', data: encodeUtf16le(text) };
}

/** `text` as UTF-16LE bytes. */
export function encodeUtf16le(text: string): Uint8Array {
  const out = new Uint8Array(text.length * 2);
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    out[2 * i] = unit & 0xff;
    out[2 * i + 1] = unit >>> 8;
  }
  return out;
}

/** UTF-16LE bytes as a string. */
export function decodeUtf16le(bytes: Uint8Array): string {
  return utf16Decoder.decode(bytes);
}

/** UTF-8 bytes as a string (invalid sequences become U+FFFD). */
export function decodeUtf8(bytes: Uint8Array): string {
  return utf8Decoder.decode(bytes);
}

/** `text` as UTF-8 bytes. */
export function encodeUtf8(text: string): Uint8Array {
  return utf8Encoder.encode(text);
}

/**
 * The payload as text: UTF-16 payloads are read as UTF-16LE, UTF-8 and binary ones as UTF-8.
 */
export function payloadText(payload: Payload): string {
  return payload.encoding === 'utf16' ? decodeUtf16le(payload.data) : decodeUtf8(payload.data);
}

/** A payload from what handlers may return: a Payload, bytes (binary) or a string (UTF-8). */
export function toPayload(value: Payload | Uint8Array | string | null | undefined | void): Payload {
  if (value === undefined || value === null) return EMPTY_PAYLOAD;
  if (typeof value === 'string') return utf8(value);
  if (value instanceof Uint8Array) return binary(value);
  return value;
}

/** True when `value` has the shape of a Payload. */
export function isPayload(value: unknown): value is Payload {
  if (typeof value !== 'object' || value === null) return false;
  const { encoding, data } = value as { encoding?: unknown; data?: unknown };
  return (encoding === 'binary' || encoding === 'utf8' || encoding === 'utf16') && data instanceof Uint8Array;
}

export type { Encoding, Payload };
