/**
 * `allocate` for browsers (see alloc.ts, which bundlers replace with this file through the
 * package.json `browser` field): a fresh zeroed array per message. The slab of the Node version
 * is a speed trick for servers encoding many messages a second; a browser client does not, and
 * the bundle is smaller without it.
 */
export function allocate(length: number): Uint8Array {
  return new Uint8Array(length);
}
