import type { ClientTransport } from '../../transports/types.ts';
import { InvalidArgumentError } from '../errors.ts';
import { memoryKeyStore, type SessionKeyStore } from './session-key-store.ts';

type TransportFactory = () => ClientTransport | Promise<ClientTransport>;

let factory: TransportFactory | undefined;

/**
 * Sets the transport a Client uses when none is given. The package entry points set it: the Node
 * entries to the `ws` adapter (loaded on first use, so code passing its own transport never loads
 * `ws`), the browser entry to the standard-WebSocket adapter. This keeps the client itself free of
 * any runtime-specific import.
 */
export function setDefaultClientTransport(next: TransportFactory): void {
  factory = next;
}

/** The default client transport, or a clear error when no entry point has set one. */
export async function defaultClientTransport(): Promise<ClientTransport> {
  if (factory === undefined) {
    throw new InvalidArgumentError('no default transport here: pass options.transport, e.g. wsClientTransport()');
  }
  return factory();
}

let keyStoreFactory: () => SessionKeyStore = memoryKeyStore;

/** Sets the session key store a Client uses when none is given (browsers: localStorage). */
export function setDefaultSessionKeyStore(next: () => SessionKeyStore): void {
  keyStoreFactory = next;
}

/** A new default session key store: in memory, unless an entry point chose otherwise. */
export function defaultSessionKeyStore(): SessionKeyStore {
  return keyStoreFactory();
}
