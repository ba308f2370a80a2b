/**
 * Browsers: the Client's default transport is the standard-WebSocket adapter. Imported for its
 * effect by the browser entry point (`duplexwire/client` under the `browser` export condition),
 * in place of `node-default.ts`; a static import, as the adapter is small and has no dependency.
 */
import { browserTransport } from '../../transports/browser.ts';
import { setDefaultClientTransport, setDefaultSessionKeyStore } from './default-transport.ts';
import { localStorageKeyStore, memoryKeyStore } from './session-key-store.ts';

setDefaultClientTransport(() => browserTransport());
// A page reload restores the session; where storage is unavailable (some sandboxes), memory.
setDefaultSessionKeyStore(() => {
  try {
    return localStorageKeyStore();
  } catch {
    return memoryKeyStore();
  }
});
