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
export { DEFAULT_RECONNECT, type ReconnectOptions } from './backoff.ts';
export { Client, type ClientEvents, type ClientOptions, type ClientState, type ServerInfo } from './client.ts';
export { localStorageKeyStore, memoryKeyStore, type SessionKeyStore } from './session-key-store.ts';
export { type Session, sessionFromJson } from '../session/session.ts';
export * from '../errors.ts';
export { consoleLogger, type Logger, silentLogger } from '../logger.ts';
export type { IncomingMessage, ReplyValue, RequestContext, RequestOptions } from '../peer/peer.ts';
export {
  binary,
  EMPTY_PAYLOAD,
  type Encoding,
  type Payload,
  payloadText,
  utf8,
  utf16,
} from '../../protocol/payload.ts';
export { type BrowserTransportOptions, browserTransport } from '../../transports/browser.ts';
