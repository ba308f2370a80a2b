/**
 * Header rules of the tunnel, on raw header lists (`[name, value, name, value, ...]`, as Node's
 * `rawHeaders`): order and repeated headers survive, names keep their case.
 *
 * Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and never cross a proxy:
 * `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`,
 * `Upgrade` (except in an upgrade passthrough), and every `Proxy-*` header. The request framing
 * is then the agent's to choose for its own connection to the target.
 */

const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  // Not hop-by-hop by name, but the proxy already answered it (Node sends 100 Continue itself):
  // forwarding it would have the target send a second, stray 100.
  'expect',
]);

/** Header values never written to a log. */
const SECRET: ReadonlySet<string> = new Set([
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'x-api-key',
  'x-auth-token',
]);

const NO_TOKENS: ReadonlySet<string> = new Set();

/** The lower-case names listed in every `Connection` header of `raw`. */
export function connectionTokens(raw: readonly string[]): ReadonlySet<string> {
  let tokens: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length !== 10 || name.toLowerCase() !== 'connection') continue;
    for (const token of raw[i + 1]!.split(',')) {
      const listed = token.trim().toLowerCase();
      if (listed === '') continue;
      tokens ??= new Set();
      tokens.add(listed);
    }
  }
  // Most heads name nothing but keep-alive or close, often nothing at all: no set made for them.
  return tokens ?? NO_TOKENS;
}

export interface FilterOptions {
  /** Further names (lower case) to drop: the tunnel's routing and control headers. */
  readonly strip?: ReadonlySet<string>;
  /**
   * An upgrade passthrough: `Upgrade` is kept and `Connection: Upgrade` is the only connection
   * option sent on.
   */
  readonly upgrade?: boolean;
}

/** `raw` without hop-by-hop headers, the headers `Connection` names, and `strip`. */
export function filterHeaders(raw: readonly string[], options: FilterOptions = {}): string[] {
  const named = connectionTokens(raw);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (options.upgrade && lower === 'upgrade') {
      out.push(name, raw[i + 1]!);
      continue;
    }
    if (HOP_BY_HOP.has(lower) || lower.startsWith('proxy-') || named.has(lower) || options.strip?.has(lower)) continue;
    out.push(name, raw[i + 1]!);
  }
  if (options.upgrade) out.push('Connection', 'Upgrade');
  return out;
}

/** Every value of header `name` (case-insensitive), in order. */
export function headerValues(raw: readonly string[], name: string): string[] {
  const lower = name.toLowerCase();
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === lower) out.push(raw[i + 1]!);
  return out;
}

/** The one value of header `name`, `undefined` when absent; `null` when it is repeated. */
export function singleHeader(raw: readonly string[], name: string): string | undefined | null {
  const values = headerValues(raw, name);
  if (values.length === 0) return undefined;
  return values.length === 1 ? values[0]! : null;
}

/** Replaces (or adds) every `name` header with one `value`, keeping its first position. */
export function setHeader(raw: readonly string[], name: string, value: string): string[] {
  const lower = name.toLowerCase();
  const out: string[] = [];
  let done = false;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === lower) {
      if (!done) out.push(raw[i]!, value);
      done = true;
    } else {
      out.push(raw[i]!, raw[i + 1]!);
    }
  }
  if (!done) out.push(name, value);
  return out;
}

export interface ForwardedInfo {
  /** The user's address as the proxy saw it. */
  readonly remoteAddress: string;
  /** `http` or `https`. */
  readonly proto: string;
  /** The Host the user asked for. */
  readonly host: string | undefined;
  /**
   * `append`: add the address to an X-Forwarded-For the user sent (behind a trusted load
   * balancer, whose RFC 7239 `Forwarded` is kept too); `replace`: the proxy is the edge and what
   * users claim is dropped, `Forwarded` included.
   */
  readonly mode: 'replace' | 'append';
}

/**
 * Adds X-Forwarded-For, -Proto and -Host. Any the user sent are dropped first in `replace` mode,
 * and so is `Forwarded` (RFC 7239), which carries the same claims (`for=`, `proto=`, `host=`) for
 * targets that read it; in `append` mode X-Forwarded-For keeps the user's list and gets the
 * address appended, and `Forwarded` is passed on as it came.
 */
export function addForwarded(raw: readonly string[], info: ForwardedInfo): string[] {
  const replace = info.mode === 'replace';
  const previous = replace ? '' : headerValues(raw, 'x-forwarded-for').join(', ');
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (lower === 'x-forwarded-for' || lower === 'x-forwarded-proto' || lower === 'x-forwarded-host') continue;
    if (replace && lower === 'forwarded') continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  const address = info.remoteAddress.startsWith('::ffff:') ? info.remoteAddress.slice(7) : info.remoteAddress;
  out.push('X-Forwarded-For', previous === '' ? address : `${previous}, ${address}`);
  out.push('X-Forwarded-Proto', info.proto);
  if (info.host !== undefined) out.push('X-Forwarded-Host', info.host);
  return out;
}

/** A header list safe to log: secret values replaced. Bodies are never logged at all. */
export function redactHeaders(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    out.push(raw[i]!, SECRET.has(lower) ? '[redacted]' : raw[i + 1]!);
  }
  return out;
}

/** A path safe to log: the query (which may carry secrets) is replaced by `?…`. */
export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  return q < 0 ? url : `${url.slice(0, q)}?…`;
}

/** RFC 9110 token: what a header name may be. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** A character a header value may not hold (CR, LF, NUL and other controls but HTAB). */
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/;

/** True when every name is a token and no value could split the head it is written into. */
export function headersAreSafe(raw: readonly string[]): boolean {
  for (let i = 0; i < raw.length; i += 2) {
    if (!TOKEN.test(raw[i]!) || BAD_VALUE.test(raw[i + 1]!)) return false;
  }
  return true;
}

/** undici's raw headers (Buffers, or strings) as the `[name, value, ...]` strings the tunnel carries. */
export function latin1Pairs(raw: readonly (Buffer | string)[]): string[] {
  const out = new Array<string>(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const item = raw[i]!;
    out[i] = typeof item === 'string' ? item : item.toString('latin1');
  }
  return out;
}
