/**
 * Which agent a user's request is for: the client id, read from a header, from the host name
 * (`<id>.<domain>`) or from a path prefix (`/t/<id>/...`). Strategies are tried in the order
 * configured; the first that finds an id decides.
 */
import { validateHeaderName } from 'node:http';
import { headerValues } from './headers.ts';
import { isValidClientId } from './tokens.ts';

/** @default name of the routing header */
export const DEFAULT_CLIENT_ID_HEADER = 'x-duplexwire-client-id';
/** The header backstream services send, accepted with `backstreamCompat`. */
export const BACKSTREAM_CLIENT_ID_HEADER = 'x-backstream-client-id';
/** @default prefix of path routing */
export const DEFAULT_PATH_PREFIX = '/t';

export type RoutingStrategy =
  | {
      readonly by: 'header';
      /** @default DEFAULT_CLIENT_ID_HEADER */
      readonly name?: string;
      /** Also read `x-backstream-client-id` (after `name`). @default false */
      readonly backstreamCompat?: boolean;
    }
  | {
      readonly by: 'host';
      /** `4711.tunnel.example.com` routes to 4711 with domain `tunnel.example.com`. */
      readonly domain: string;
    }
  | {
      readonly by: 'path';
      /** `/t/4711/any/path` routes to 4711 and the agent sees `/any/path`. @default '/t' */
      readonly prefix?: string;
    };

export type RouteResult =
  /** `url` is what the agent's target sees (a path prefix removed). */
  | { readonly kind: 'routed'; readonly id: string; readonly url: string }
  /** No strategy found an id. */
  | { readonly kind: 'none' }
  /** An id was given but is not a valid client id. */
  | { readonly kind: 'invalid' };

export interface Router {
  route(url: string, rawHeaders: readonly string[]): RouteResult;
  /** Lower-case header names that belong to the tunnel and are never forwarded. */
  readonly headerNames: ReadonlySet<string>;
}

/** True for what may be a header's name: an RFC 9110 token (§5.1, §5.6.2), as Node checks it. */
export function isHeaderName(name: string): boolean {
  try {
    validateHeaderName(name);
    return true;
  } catch {
    return false;
  }
}

export function createRouter(strategies: readonly RoutingStrategy[]): Router {
  if (strategies.length === 0) throw new RangeError('routing needs at least one strategy');
  const headerNames = new Set<string>();
  const steps: Array<(url: string, raw: readonly string[]) => RouteResult> = [];
  for (const strategy of strategies) {
    switch (strategy.by) {
      case 'header': {
        const name = strategy.name ?? DEFAULT_CLIENT_ID_HEADER;
        // Any other name would never be found in a request: every request would get 400.
        if (!isHeaderName(name))
          throw new RangeError(`routing header name must be an HTTP token, got ${JSON.stringify(name)}`);
        const names = [name.toLowerCase()];
        if (strategy.backstreamCompat) names.push(BACKSTREAM_CLIENT_ID_HEADER);
        for (const name of names) headerNames.add(name);
        steps.push((url, raw) => {
          for (const name of names) {
            const values = headerValues(raw, name);
            if (values.length === 0) continue;
            // Two ids in one request: ambiguous, refused rather than guessed.
            if (values.length > 1) return { kind: 'invalid' };
            const id = values[0]!.trim();
            return isValidClientId(id) ? { kind: 'routed', id, url } : { kind: 'invalid' };
          }
          return { kind: 'none' };
        });
        break;
      }
      case 'host': {
        const suffix = `.${strategy.domain.toLowerCase().replace(/^\.+|\.+$/g, '')}`;
        if (suffix === '.') throw new RangeError('host routing needs a domain');
        steps.push((url, raw) => {
          const hosts = headerValues(raw, 'host');
          if (hosts.length !== 1) return { kind: 'none' };
          const host = hosts[0]!.trim().toLowerCase().replace(/:\d+$/, '');
          if (!host.endsWith(suffix) || host.length === suffix.length) return { kind: 'none' };
          const id = host.slice(0, -suffix.length);
          return !id.includes('.') && isValidClientId(id) ? { kind: 'routed', id, url } : { kind: 'invalid' };
        });
        break;
      }
      case 'path': {
        const prefix = (strategy.prefix ?? DEFAULT_PATH_PREFIX).replace(/\/+$/, '');
        if (!prefix.startsWith('/'))
          throw new RangeError(`path prefix must start with '/', got ${JSON.stringify(prefix)}`);
        const start = `${prefix}/`;
        steps.push((url) => {
          if (!url.startsWith(start)) return { kind: 'none' };
          const rest = url.slice(start.length);
          const end = rest.search(/[/?]/);
          const id = end < 0 ? rest : rest.slice(0, end);
          if (!isValidClientId(id)) return { kind: 'invalid' };
          const tail = end < 0 ? '' : rest.slice(end);
          return { kind: 'routed', id, url: tail === '' ? '/' : tail.startsWith('?') ? `/${tail}` : tail };
        });
        break;
      }
      default:
        throw new RangeError(`unknown routing strategy ${JSON.stringify((strategy as { by: unknown }).by)}`);
    }
  }
  return {
    headerNames,
    route(url, raw) {
      for (const step of steps) {
        const result = step(url, raw);
        if (result.kind !== 'none') return result;
      }
      return { kind: 'none' };
    },
  };
}

/**
 * The origin-form of a request target (RFC 9112 §3.2): absolute-form `http://host/p?q` becomes
 * `/p?q`, byte for byte. Returns `undefined` for anything else but `*` (OPTIONS).
 */
export function originForm(target: string): string | undefined {
  if (target.startsWith('/') || target === '*') return target;
  const match = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(target);
  if (match === null) return undefined;
  const rest = target.slice(match[0].length);
  return rest === '' ? '/' : rest.startsWith('?') ? `/${rest}` : rest;
}
