/**
 * `duplexwire/client` in browsers (the `browser` export condition): the same exports as
 * `index.ts`, with the standard-WebSocket adapter as the default transport instead of `ws`.
 * Nothing reachable from here imports Node or `ws` (`test/browser/imports.test.ts` checks).
 *
 * @example
 * ```html
 * <script type="module">
 *   import { Client, utf8, payloadText } from './duplexwire-client.js';
 *   const client = new Client('wss://example.com/ws');
 *   console.log(payloadText(await client.request('echo', utf8('hi'))));
 * </script>
 * ```
 */
import './browser-default.ts';
export * from './public-api.ts';
export { type BrowserTransportOptions, browserTransport } from '../../transports/browser.ts';
