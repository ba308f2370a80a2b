/** proxy-from-env ships no types. */
declare module 'proxy-from-env' {
  /** The proxy URL for `url` from the environment (`<scheme>_proxy`, `all_proxy`, `no_proxy`), or ''. */
  export function getProxyForUrl(url: string | URL): string;
}
