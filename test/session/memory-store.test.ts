/**
 * MemorySessionManager's own bounds (the contract suite covers the rest): `maxAge` expiry, the
 * `maxSessions` cap dropping the least recently used session, and option validation.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { InvalidArgumentError } from '../../src/errors.ts';
import { defaultKeyGenerator, type Session } from '../../src/session/session.ts';
import { DEFAULT_MAX_MEMORY_SESSIONS, MemorySessionManager } from '../../src/session/memory-store.ts';
import { assertSlidingExpiry, newSession } from './contract.ts';

const past = (ms: number): Date => new Date(Date.now() - ms);

function sessionLookedUp(msAgo: number): Session {
  return {
    key: defaultKeyGenerator.generate(),
    creation: past(msAgo + 1000),
    lastLookup: past(msAgo),
    info: undefined,
  };
}

describe('MemorySessionManager: maxSessions', () => {
  it('drops the least recently used session to store one more', async () => {
    const manager = new MemorySessionManager({ maxSessions: 3 });
    const [a, b, c, d] = [newSession(), newSession(), newSession(), newSession()];
    await manager.onSessionCreated(a);
    await manager.onSessionCreated(b);
    await manager.onSessionCreated(c);
    // A lookup makes `a` the most recently used: `b` is now the oldest.
    assert.ok(await manager.onSessionLookup(a.key));
    await manager.onSessionCreated(d);
    assert.equal(manager.size, 3);
    assert.equal(await manager.onSessionLookup(b.key), null, 'the least recently used one went');
    for (const kept of [a, c, d]) assert.ok(await manager.onSessionLookup(kept.key), 'the others stay');
  });

  it('keeps at most maxSessions under a flood of new sessions, and the newest of them', async () => {
    const manager = new MemorySessionManager({ maxSessions: 100 });
    const sessions = Array.from({ length: 1000 }, () => newSession());
    for (const session of sessions) await manager.onSessionCreated(session);
    assert.equal(manager.size, 100);
    assert.ok(await manager.onSessionLookup(sessions.at(-1)!.key));
    assert.equal(await manager.onSessionLookup(sessions[0]!.key), null);
  });

  it('storing a key again replaces it without dropping another session', async () => {
    const manager = new MemorySessionManager({ maxSessions: 2 });
    const a = newSession({ v: 1 });
    const b = newSession();
    await manager.onSessionCreated(a);
    await manager.onSessionCreated(b);
    await manager.onSessionCreated({ ...a, info: { v: 2 } });
    assert.equal(manager.size, 2);
    assert.deepEqual((await manager.onSessionLookup(a.key))?.info, { v: 2 });
    assert.ok(await manager.onSessionLookup(b.key));
  });

  it(`defaults to ${DEFAULT_MAX_MEMORY_SESSIONS.toLocaleString('en')} sessions`, async () => {
    const manager = new MemorySessionManager();
    for (let i = 0; i < DEFAULT_MAX_MEMORY_SESSIONS + 10; i++) {
      await manager.onSessionCreated({ key: `k${i}`, creation: new Date(), lastLookup: new Date(), info: undefined });
    }
    assert.equal(manager.size, DEFAULT_MAX_MEMORY_SESSIONS);
    assert.equal(await manager.onSessionLookup('k0'), null);
    assert.ok(await manager.onSessionLookup(`k${DEFAULT_MAX_MEMORY_SESSIONS + 9}`));
  });
});

describe('MemorySessionManager: maxAge', () => {
  it('treats a session whose lastLookup is older than maxAge as absent, and deletes it', async () => {
    const manager = new MemorySessionManager({ maxAge: 60_000 });
    const stale = sessionLookedUp(61_000);
    const fresh = sessionLookedUp(59_000);
    await manager.onSessionCreated(fresh);
    await manager.onSessionCreated(stale);
    assert.equal(await manager.onSessionLookup(stale.key), null);
    assert.equal(manager.size, 1, 'the expired session was deleted');
    assert.ok(await manager.onSessionLookup(fresh.key), 'within maxAge');
  });

  it('drops expired sessions as it is used, without a lookup of each (real time, bounded)', async () => {
    const manager = new MemorySessionManager({ maxAge: 300 });
    for (let i = 0; i < 50; i++) await manager.onSessionCreated(newSession());
    assert.equal(manager.size, 50);
    await sleep(450);
    await manager.onSessionCreated(newSession());
    assert.equal(manager.size, 1, 'the 50 expired ones at the front went');
  });

  it('slides: each lookup restarts maxAge (mocked clock)', async (t) => {
    await assertSlidingExpiry(t, new MemorySessionManager({ maxAge: 600 }));
  });
});

describe('MemorySessionManager: options', () => {
  for (const options of [
    { maxAge: 0 },
    { maxAge: -1 },
    { maxAge: 1.5 },
    { maxAge: Number.NaN },
    { maxAge: '1000' },
    { maxSessions: 0 },
    { maxSessions: 2.5 },
    { maxSessions: Number.POSITIVE_INFINITY },
  ]) {
    it(`refuses ${JSON.stringify(options, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v))}`, () => {
      assert.throws(() => new MemorySessionManager(options as never), InvalidArgumentError);
    });
  }
});
