/**
 * Races between a connection taking a session (restore, create) and what can happen meanwhile:
 * a close by key, a close by the connection itself, an update. Real sockets on 127.0.0.1 (ws).
 * The invariants: the client ends holding what the server's connection holds, and a connection
 * never holds a session the store deleted.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { payloadText, utf8 } from '../../protocol/payload.ts';
import { SessionNotFoundError } from '../../src/errors.ts';
import type { IncomingMessage, ReplyValue } from '../../src/peer/peer.ts';
import type { Connection } from '../../src/server/connection.ts';
import type { Server } from '../../src/server/server.ts';
import { MemorySessionManager } from '../../src/session/memory-store.ts';
import type { Session, SessionAttachResult, SessionManager } from '../../src/session/session.ts';
import { login, sessionApp, whoami } from '../fixtures/session-helpers.ts';
import { connectClient, delay, startServer, waitFor } from '../helpers.ts';

function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { wait, open };
}

/**
 * A store with only the three required hooks and `onSessionUpdate` (no cross-process counting,
 * as `FileSessionManager`), whose lookups read the session and then wait while `holdLookup` is set.
 */
class GatedPlainStore implements SessionManager {
  readonly inner = new MemorySessionManager();
  holdLookup: Promise<void> | undefined;
  lookups = 0;
  onSessionCreated(session: Session): Promise<void> {
    return this.inner.onSessionCreated(session);
  }
  async onSessionLookup(key: string): Promise<Session | null> {
    const found = await this.inner.onSessionLookup(key);
    this.lookups++;
    await this.holdLookup;
    return found;
  }
  onSessionClosed(key: string): Promise<void> {
    return this.inner.onSessionClosed(key);
  }
  onSessionUpdate(key: string, info: Readonly<Record<string, unknown>> | undefined): Promise<Session | null> {
    return this.inner.onSessionUpdate(key, info);
  }
}

test('server.closeSession(key) while a restore is looking the session up: the restore gets "not found", nothing holds the deleted session', async (t) => {
  const store = new GatedPlainStore();
  const { url, server } = await startServer(t, { sessionManager: store, onRequest: sessionApp });
  const owner = await connectClient(t, url);
  const { key } = await login(owner, 'ada');
  const late = await connectClient(t, url);
  const held = gate();
  store.holdLookup = held.wait;
  const restoring = late.restoreSession(key);
  // The lookup has read the session when it is closed by key.
  await waitFor(() => store.lookups === 1, 1_000, "the restore's lookup");
  assert.equal(await server.closeSession(key), 1, 'the owner held it');
  assert.equal(await store.inner.onSessionLookup(key), null, 'deleted');
  held.open();
  await assert.rejects(restoring, SessionNotFoundError);
  assert.equal(late.session, null);
  assert.deepEqual(await whoami(late), null, 'the server side holds nothing either');
  assert.deepEqual(server.sessionConnections(key), []);
  assert.equal(server.activeSessionCount, 0);
});
