/**
 * Opening-handshake rules shared by the server adapters (ws, uWS), so that both answer the same
 * upgrade the same way. Internal: not part of any subpath export.
 */

/**
 * The subprotocol an accepted upgrade answers with: the owner's choice when the client offered it
 * ('' for none), by default the first offered (or none). Undefined for a choice the client did
 * not offer: the handshake would fail at the client, so the upgrade is refused instead.
 */
export function chooseProtocol(choice: string | undefined, offeredHeader: string | undefined): string | undefined {
  const offered = (offeredHeader ?? '')
    .split(',')
    .map((token) => token.trim())
    .filter((token) => token !== '');
  if (choice === undefined) return offered[0] ?? '';
  if (choice === '') return '';
  return offered.includes(choice) ? choice : undefined;
}
