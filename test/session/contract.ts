/**
 * The SessionManager conformance suite: one function, called once per store by
 * `contract.test.ts` (the shape of crossws `test/tests.ts`). Any SessionManager should pass it.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it, type TestContext } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.ts';
import { defaultKeyGenerator, type Session, type SessionManager, sessionToJson } from '../../src/session/session.ts';

export interface ManagerFixture {
  readonly manager: SessionManager;
  /** The store keeps `Session.version` (every built-in store): checked, never skipped. @default false */
  readonly versions?: boolean;
  cleanup(): Promise<void>;
}

/**
 * Keys an attacker might send: traversal, encodings, NUL, absolute paths, length, Unicode, empty.
 * The server rejects them all before the store (`isValid`), but a store must be safe on its own.
 */
export const HOSTILE_KEYS: readonly string[] = [
  '../x',
  '..\\x',
  '%2e%2e/',
  '%2e%2e%2fx',
  'a\u0000b',
  '/etc/passwd',
  'C:\\Windows',
  '\\\\server\\share',
  '.',
  '..',
  '*',
  'duplexwire:session:*',
  'a'.repeat(300),
  'ключ',
  '🔑',
  'x\ny',
  '__proto__',
  'constructor',
  '',
  '\ud800', // a lone surrogate: not well-formed, cannot be a stored key
];

/** Hostile keys that are nonetheless well-formed, so a store can hold a session under them. */
export const STORABLE_HOSTILE_KEYS = HOSTILE_KEYS.filter((key) => key !== '' && key !== '\ud800');

/** A Date at millisecond precision `offset` ms from now. */
function at(offset: number): Date {
  return new Date(Date.now() + offset);
}

export function newSession(info?: Record<string, unknown>, key = defaultKeyGenerator.generate()): Session {
  const now = at(0);
  return { key, creation: now, lastLookup: now, info };
}

/**
 * For stores with an expiry of 600 ms after the last lookup (`maxAge`, `ttl`): each lookup
 * restarts it, and a session not looked up for longer is gone. On a mocked `Date` (the store's
 * clock; its I/O stays real): in real time, lookups 200 ms apart against 600 ms failed ("lookup 0
 * within the expiry of the previous one") whenever a loaded machine stalled the test process for
 * 400 ms, which it does (stalls of 300-800 ms measured at a load of 12-14).
 */
export async function assertSlidingExpiry(t: TestContext, manager: SessionManager): Promise<void> {
  t.mock.timers.enable({ apis: ['Date'], now: Date.now() });
  const session = newSession();
  await manager.onSessionCreated(session);
  // 3 x 500 ms: past the 600 ms of the creation, so each lookup must have restarted it.
  for (let i = 0; i < 3; i++) {
    t.mock.timers.tick(500);
    assert.ok(await manager.onSessionLookup(session.key), `lookup ${i} within the expiry of the previous one`);
  }
  t.mock.timers.tick(601);
  assert.equal(await manager.onSessionLookup(session.key), null);
}

/** Info values that JSON keeps exactly, and so must every store. */
export const INFO_SAMPLES: readonly (readonly [string, Record<string, unknown>])[] = [
  ['flat', { user: 'ada', admin: false, age: 36, score: 0.1, nothing: null }],
  ['nested', { a: { b: { c: [1, { d: [true, null, 'x'] }, [[], [{}]]] } } }],
  [
    'unicode',
    {
      ключ: 'значение',
      emoji: '🔑👩‍👩‍👧',
      rtl: 'שלום',
      controls: '\u0000\u0001\n\t"\\',
      separators: '\u2028\u2029',
      bom: '\ufeff',
    },
  ],
  ['empty object', {}],
  ['empty members', { o: {}, a: [], s: '' }],
  ['numbers', { max: Number.MAX_SAFE_INTEGER, min: Number.MIN_SAFE_INTEGER, big: 1e308, tiny: 5e-324, neg: -1.5e-7 }],
  [
    'special names',
    JSON.parse('{"__proto__":{"polluted":true},"constructor":{"prototype":1},"":"empty name","toString":"no"}'),
  ],
  ['long string', { s: 'é'.repeat(50_000) }],
  ['array of objects', { list: Array.from({ length: 100 }, (_, i) => ({ i, s: String(i) })) }],
];

export function sessionManagerContract(name: string, make: () => Promise<ManagerFixture>): void {
  describe(`${name}: SessionManager contract`, () => {
    async function setup(t: TestContext): Promise<SessionManager> {
      const fixture = await make();
      t.after(() => fixture.cleanup());
      return fixture.manager;
    }

    it('returns a created session on lookup, with lastLookup updated and persisted', async (t) => {
      const manager = await setup(t);
      const created: Session = {
        key: defaultKeyGenerator.generate(),
        creation: at(-120_000),
        lastLookup: at(-60_000),
        info: { user: 'ada', roles: ['admin'] },
      };
      await manager.onSessionCreated(created);

      const before = Date.now();
      const first = await manager.onSessionLookup(created.key);
      const after = Date.now();
      assert.ok(first);
      assert.equal(first.key, created.key);
      assert.equal(first.creation.getTime(), created.creation.getTime());
      assert.deepEqual(first.info, created.info);
      assert.ok(first.lastLookup instanceof Date && first.creation instanceof Date);
      assert.ok(
        first.lastLookup.getTime() >= before && first.lastLookup.getTime() <= after,
        'lastLookup is the lookup time',
      );

      const second = await manager.onSessionLookup(created.key);
      assert.ok(second);
      assert.ok(second.lastLookup.getTime() >= first.lastLookup.getTime(), 'the first lookup time was kept');
      assert.equal(second.creation.getTime(), created.creation.getTime());
      assert.deepEqual(second.info, created.info);
    });

    it('never moves lastLookup backwards (a later time already stored is kept)', async (t) => {
      const manager = await setup(t);
      const future = at(3_600_000);
      const created: Session = {
        key: defaultKeyGenerator.generate(),
        creation: at(0),
        lastLookup: future,
        info: undefined,
      };
      await manager.onSessionCreated(created);
      const found = await manager.onSessionLookup(created.key);
      assert.equal(found?.lastLookup.getTime(), future.getTime());
    });

    it('returns null for an unknown key, and closing one is harmless', async (t) => {
      const manager = await setup(t);
      assert.equal(await manager.onSessionLookup(defaultKeyGenerator.generate()), null);
      await manager.onSessionClosed(defaultKeyGenerator.generate());
    });

    it('returns null once a session is closed, and only that session', async (t) => {
      const manager = await setup(t);
      const a = newSession({ n: 1 });
      const b = newSession({ n: 2 });
      await manager.onSessionCreated(a);
      await manager.onSessionCreated(b);
      await manager.onSessionClosed(a.key);
      assert.equal(await manager.onSessionLookup(a.key), null);
      await manager.onSessionClosed(a.key); // twice: still fine
      assert.equal(await manager.onSessionLookup(a.key), null);
      assert.deepEqual((await manager.onSessionLookup(b.key))?.info, { n: 2 });
    });

    it('round-trips a session without info (no "i")', async (t) => {
      const manager = await setup(t);
      const created = newSession();
      await manager.onSessionCreated(created);
      const found = await manager.onSessionLookup(created.key);
      assert.ok(found);
      assert.ok('info' in found);
      assert.equal(found.info, undefined);
      assert.ok(!sessionToJson(found).includes('"i"'));
    });

    for (const [label, info] of INFO_SAMPLES) {
      it(`round-trips info exactly: ${label}`, async (t) => {
        const manager = await setup(t);
        const created = newSession(info);
        await manager.onSessionCreated(created);
        for (let i = 0; i < 2; i++) {
          const found = await manager.onSessionLookup(created.key);
          assert.deepStrictEqual(found?.info, info);
        }
        assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched');
      });
    }

    it('keeps stored state apart from the objects passed in and handed out', async (t) => {
      const manager = await setup(t);
      const info = { list: [1, 2], inner: { x: 1 } };
      const created = newSession(info);
      await manager.onSessionCreated(created);
      info.list.push(3);
      info.inner.x = 2;
      const found = await manager.onSessionLookup(created.key);
      assert.deepEqual(found?.info, { list: [1, 2], inner: { x: 1 } });
      assert.ok(found);
      (found.info!.list as number[]).push(99);
      found.creation.setTime(0);
      const again = await manager.onSessionLookup(created.key);
      assert.deepEqual(again?.info, { list: [1, 2], inner: { x: 1 } });
      assert.equal(again?.creation.getTime(), created.creation.getTime());
    });

    it('refuses a session it could not store faithfully (InvalidArgumentError)', async (t) => {
      const manager = await setup(t);
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      const bad: Session[] = [
        newSession(undefined, ''),
        newSession({ when: new Date() }),
        newSession({ missing: undefined }),
        newSession({ n: Number.NaN }),
        newSession({ n: Number.POSITIVE_INFINITY }),
        newSession({ f: () => 1 }),
        newSession({ b: 1n }),
        newSession({ m: new Map() }),
        newSession(cyclic),
        newSession([1, 2] as unknown as Record<string, unknown>),
        { key: defaultKeyGenerator.generate(), creation: new Date(Number.NaN), lastLookup: at(0), info: undefined },
      ];
      for (const session of bad) {
        await assert.rejects(manager.onSessionCreated(session), InvalidArgumentError);
        assert.equal(await manager.onSessionLookup(session.key), null);
      }
    });

    it('stays consistent under 200 concurrent creations then lookups', async (t) => {
      const manager = await setup(t);
      const sessions = Array.from({ length: 200 }, (_, i) => newSession({ i, tag: `s${i}` }));
      await Promise.all(sessions.map((s) => manager.onSessionCreated(s)));
      const found = await Promise.all(sessions.map((s) => manager.onSessionLookup(s.key)));
      found.forEach((f, i) => {
        assert.equal(f?.key, sessions[i]!.key);
        assert.deepEqual(f?.info, { i, tag: `s${i}` });
      });
    });

    it('never resurrects a session closed during concurrent lookups', async (t) => {
      const manager = await setup(t);
      for (let round = 0; round < 3; round++) {
        const sessions = Array.from({ length: 50 }, (_, i) => newSession({ i }));
        await Promise.all(sessions.map((s) => manager.onSessionCreated(s)));
        const results = await Promise.all(
          sessions.flatMap((s, i) =>
            i % 2 === 0
              ? [manager.onSessionLookup(s.key), manager.onSessionClosed(s.key), manager.onSessionLookup(s.key)]
              : [manager.onSessionClosed(s.key), manager.onSessionLookup(s.key), manager.onSessionLookup(s.key)],
          ),
        );
        for (const result of results) {
          if (result) assert.ok(sessions.some((s) => s.key === result.key));
        }
        for (const s of sessions)
          assert.equal(await manager.onSessionLookup(s.key), null, `round ${round}: closed stays closed`);
      }
    });

    it('treats keys as opaque: near misses and the key hash are unknown keys', async (t) => {
      const manager = await setup(t);
      const created = newSession({ ok: true });
      await manager.onSessionCreated(created);
      const key = created.key;
      const lastChar = key.at(-1)!;
      const nearMisses = [
        defaultKeyGenerator.generate(),
        key.slice(0, -1) + (lastChar === 'A' ? 'B' : 'A'),
        key.slice(0, -1),
        `${key}x`,
        ` ${key}`,
        key.toUpperCase() === key ? key.toLowerCase() : key.toUpperCase(),
        createHash('sha256').update(key).digest('hex'),
        `${createHash('sha256').update(key).digest('hex')}.json`,
      ];
      for (const miss of nearMisses) {
        if (miss === key) continue;
        assert.equal(await manager.onSessionLookup(miss), null, `lookup ${JSON.stringify(miss)}`);
        await manager.onSessionClosed(miss);
      }
      assert.deepEqual((await manager.onSessionLookup(key))?.info, { ok: true }, 'closing near misses left it alone');
    });

    it('treats hostile keys as unknown keys', async (t) => {
      const manager = await setup(t);
      const bystander = newSession({ bystander: true });
      await manager.onSessionCreated(bystander);
      for (const key of HOSTILE_KEYS) {
        assert.equal(await manager.onSessionLookup(key), null, `lookup ${JSON.stringify(key)}`);
        await manager.onSessionClosed(key);
      }
      assert.deepEqual((await manager.onSessionLookup(bystander.key))?.info, { bystander: true });
    });

    it('stores sessions under hostile but well-formed keys as opaque strings', async (t) => {
      const manager = await setup(t);
      for (const key of STORABLE_HOSTILE_KEYS) {
        await manager.onSessionCreated(newSession({ key }, key));
      }
      for (const key of STORABLE_HOSTILE_KEYS) {
        const found = await manager.onSessionLookup(key);
        assert.equal(found?.key, key);
        assert.deepEqual(found?.info, { key });
      }
      for (const key of STORABLE_HOSTILE_KEYS) {
        await manager.onSessionClosed(key);
        assert.equal(await manager.onSessionLookup(key), null);
      }
    });

    /** The store's onSessionUpdate, or undefined after skipping the test (the hook is optional). */
    /** True when the store counts connections (`onSessionAttach`/`onSessionDetach`); else the test is skipped. */
    function countsConnections(
      t: TestContext,
      manager: SessionManager,
    ): manager is SessionManager & Required<Pick<SessionManager, 'onSessionAttach' | 'onSessionDetach'>> {
      if (manager.onSessionAttach !== undefined && manager.onSessionDetach !== undefined) return true;
      t.skip('this store leaves connection counts to each server');
      return false;
    }

    function updateHook(
      t: TestContext,
      manager: SessionManager,
    ): NonNullable<SessionManager['onSessionUpdate']> | undefined {
      if (manager.onSessionUpdate === undefined) {
        t.skip('this store has no onSessionUpdate (updateSession is refused with it)');
        return undefined;
      }
      return manager.onSessionUpdate.bind(manager);
    }

    it('onSessionUpdate replaces the info; key, creation and lastLookup stay', async (t) => {
      const manager = await setup(t);
      const update = updateHook(t, manager);
      if (update === undefined) return;
      const created: Session = {
        key: defaultKeyGenerator.generate(),
        creation: at(-120_000),
        lastLookup: at(-60_000),
        info: { user: 'ada', roles: ['admin'] },
      };
      await manager.onSessionCreated(created);

      const updated = await update(created.key, { user: 'grace' });
      assert.ok(updated);
      assert.equal(updated.key, created.key);
      assert.equal(updated.creation.getTime(), created.creation.getTime());
      assert.equal(updated.lastLookup.getTime(), created.lastLookup.getTime(), 'an update is not a lookup');
      assert.deepStrictEqual(updated.info, { user: 'grace' }, 'replaced, not merged: roles is gone');

      const before = Date.now();
      const found = await manager.onSessionLookup(created.key);
      assert.ok(found);
      assert.deepStrictEqual(found.info, { user: 'grace' });
      assert.equal(found.creation.getTime(), created.creation.getTime());
      assert.ok(found.lastLookup.getTime() >= before, 'lookups still move lastLookup after an update');

      // Once looked up, an update keeps the new lastLookup too.
      const again = await update(created.key, { user: 'ada' });
      assert.equal(again?.lastLookup.getTime(), found.lastLookup.getTime());

      // undefined: no info at all (no "i"), as a session created without info.
      const bare = await update(created.key, undefined);
      assert.ok(bare);
      assert.ok('info' in bare);
      assert.equal(bare.info, undefined);
      const stored = await manager.onSessionLookup(created.key);
      assert.equal(stored?.info, undefined);
      assert.ok(!sessionToJson(stored!).includes('"i"'));
      assert.deepStrictEqual((await update(created.key, { back: true }))?.info, { back: true }, 'and back');
    });

    it('onSessionUpdate of an unknown or closed key resolves null and stores nothing', async (t) => {
      const manager = await setup(t);
      const update = updateHook(t, manager);
      if (update === undefined) return;
      const unknown = defaultKeyGenerator.generate();
      assert.equal(await update(unknown, { user: 'eve' }), null);
      assert.equal(await manager.onSessionLookup(unknown), null, 'an update never creates a session');
      const session = newSession({ user: 'ada' });
      await manager.onSessionCreated(session);
      await manager.onSessionClosed(session.key);
      assert.equal(await update(session.key, { user: 'eve' }), null);
      assert.equal(await manager.onSessionLookup(session.key), null, 'an update never resurrects a session');
      const bystander = newSession({ bystander: true });
      await manager.onSessionCreated(bystander);
      for (const key of HOSTILE_KEYS) assert.equal(await update(key, { x: 1 }), null, `update ${JSON.stringify(key)}`);
      assert.deepEqual((await manager.onSessionLookup(bystander.key))?.info, { bystander: true });
    });

    for (const [label, info] of INFO_SAMPLES) {
      it(`onSessionUpdate round-trips info exactly: ${label}`, async (t) => {
        const manager = await setup(t);
        const update = updateHook(t, manager);
        if (update === undefined) return;
        const created = newSession({ before: true });
        await manager.onSessionCreated(created);
        assert.deepStrictEqual((await update(created.key, info))?.info, info);
        for (let i = 0; i < 2; i++) assert.deepStrictEqual((await manager.onSessionLookup(created.key))?.info, info);
        assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched');
      });
    }

    it('onSessionUpdate refuses info it could not store faithfully (InvalidArgumentError), keeping the old', async (t) => {
      const manager = await setup(t);
      const update = updateHook(t, manager);
      if (update === undefined) return;
      const session = newSession({ user: 'ada' });
      await manager.onSessionCreated(session);
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      const bad: unknown[] = [
        { when: new Date() },
        { missing: undefined },
        { n: Number.NaN },
        { f: () => 1 },
        { m: new Map() },
        cyclic,
        [1, 2],
        null,
        'text',
      ];
      for (const info of bad) {
        await assert.rejects(update(session.key, info as Record<string, unknown>), InvalidArgumentError);
        await assert.rejects(
          update(defaultKeyGenerator.generate(), info as Record<string, unknown>),
          InvalidArgumentError,
        );
      }
      assert.deepEqual((await manager.onSessionLookup(session.key))?.info, { user: 'ada' });
    });

    it('onSessionUpdate keeps stored state apart from the objects passed in and handed out', async (t) => {
      const manager = await setup(t);
      const update = updateHook(t, manager);
      if (update === undefined) return;
      const session = newSession();
      await manager.onSessionCreated(session);
      const info = { list: [1, 2] };
      const updated = await update(session.key, info);
      info.list.push(3);
      (updated!.info!.list as number[]).push(99);
      assert.deepEqual((await manager.onSessionLookup(session.key))?.info, { list: [1, 2] });
    });

    it('onSessionUpdate racing closes and lookups never resurrects a session; the last update wins', async (t) => {
      const manager = await setup(t);
      const update = updateHook(t, manager);
      if (update === undefined) return;
      const sessions = Array.from({ length: 50 }, (_, i) => newSession({ i }));
      await Promise.all(sessions.map((s) => manager.onSessionCreated(s)));
      await Promise.all(
        sessions.flatMap((s, i) =>
          i % 2 === 0
            ? [update(s.key, { i, n: 1 }), manager.onSessionClosed(s.key), update(s.key, { i, n: 2 })]
            : [update(s.key, { i, n: 1 }), manager.onSessionLookup(s.key), update(s.key, { i, n: 2 })],
        ),
      );
      for (const [i, s] of sessions.entries()) {
        const found = await manager.onSessionLookup(s.key);
        if (i % 2 === 0) assert.equal(found, null, 'closed stays closed');
        else assert.deepEqual(found?.info, { i, n: 2 });
      }
    });

    it('versions: 0 as created, one more per update in the order the store wrote them, returned by lookups', async (t) => {
      const fixture = await make();
      t.after(() => fixture.cleanup());
      const { manager } = fixture;
      const update = updateHook(t, manager);
      if (update === undefined) return;
      const session = newSession({ n: 0 });
      await manager.onSessionCreated({ ...session, version: 7 }); // a version passed in is not the store's
      const created = await manager.onSessionLookup(session.key);
      if (created?.version === undefined && fixture.versions !== true) {
        t.skip('this store keeps no versions (servers apply updates in the order they hear of them)');
        return;
      }
      assert.equal(created?.version, 0);
      assert.equal((await update(session.key, { n: 1 }))?.version, 1);
      assert.equal((await manager.onSessionLookup(session.key))?.version, 1, 'a lookup neither adds nor loses one');
      assert.equal((await manager.onSessionLookup(session.key))?.version, 1);

      // Concurrent updates: each its own version, with its own info; the stored one is the highest.
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => update(session.key, { n: i + 2 })));
      const versions = results.map((r) => r?.version ?? -1).sort((a, b) => a - b);
      assert.deepEqual(
        versions,
        Array.from({ length: 20 }, (_, i) => i + 2),
      );
      const last = results.find((r) => r?.version === 21);
      const stored = await manager.onSessionLookup(session.key);
      assert.equal(stored?.version, 21);
      assert.deepEqual(stored?.info, last?.info, 'what is stored is the update with the highest version');
      assert.ok(!sessionToJson(stored!).includes('"v"'), 'the version is never part of the wire form');

      // Other sessions count their own; a closed one is gone with its count.
      const other = newSession();
      await manager.onSessionCreated(other);
      assert.equal((await update(other.key, { x: 1 }))?.version, 1);
      await manager.onSessionClosed(session.key);
      assert.equal(await update(session.key, { n: 99 }), null);
    });

    it('onSessionUpdate leaves the connection counts alone, when the store counts', async (t) => {
      const manager = await setup(t);
      const update = updateHook(t, manager);
      if (update === undefined) return;
      if (!countsConnections(t, manager)) return;
      const session = newSession({ user: 'ada' });
      await manager.onSessionCreated(session);
      assert.equal(await manager.onSessionAttach(session.key, 2), 'attached');
      assert.equal(await manager.onSessionAttach(session.key, 2), 'attached');
      await update(session.key, { user: 'grace' });
      assert.equal(await manager.onSessionAttach(session.key, 2), 'limit', 'still two connections');
      assert.equal(await manager.onSessionDetach(session.key), 1);
      assert.deepEqual((await manager.onSessionLookup(session.key))?.info, { user: 'grace' });
    });

    it('counts connections with onSessionAttach/onSessionDetach, when it has them', async (t) => {
      const manager = await setup(t);
      assert.equal(
        manager.onSessionAttach === undefined,
        manager.onSessionDetach === undefined,
        'both hooks or neither',
      );
      if (!countsConnections(t, manager)) return;
      const session = newSession({ user: 'ada' });
      assert.equal(await manager.onSessionAttach(session.key, 2), 'not-found', 'no session yet');
      await manager.onSessionCreated(session);
      assert.equal(await manager.onSessionAttach(session.key, 2), 'attached');
      assert.equal(await manager.onSessionAttach(session.key, 2), 'attached');
      assert.equal(await manager.onSessionAttach(session.key, 2), 'limit', 'two connections already');
      assert.equal(await manager.onSessionAttach(session.key, 3), 'attached', 'a refused attach counts for nothing');
      assert.equal(await manager.onSessionDetach(session.key), 2);
      assert.equal(await manager.onSessionAttach(session.key, 0), 'attached', 'limit 0: no limit');
      assert.equal(await manager.onSessionDetach(session.key), 2);
      assert.equal(await manager.onSessionDetach(session.key), 1);
      assert.equal(await manager.onSessionDetach(session.key), 0);
      assert.ok(await manager.onSessionLookup(session.key), 'counting never deletes');

      // Concurrent attaches never pass the limit, whatever their order.
      const results = await Promise.all(Array.from({ length: 20 }, () => manager.onSessionAttach!(session.key, 5)));
      assert.equal(results.filter((r) => r === 'attached').length, 5);
      assert.equal(results.filter((r) => r === 'limit').length, 15);

      // A closed session: attaches find nothing, detaches of its old connections report 0.
      await manager.onSessionClosed(session.key);
      assert.equal(await manager.onSessionAttach(session.key, 0), 'not-found');
      assert.equal(await manager.onSessionDetach(session.key), 0);
      assert.equal(await manager.onSessionLookup(session.key), null, 'a detach does not bring it back');
      for (const key of HOSTILE_KEYS) assert.equal(await manager.onSessionAttach(key, 0), 'not-found');
    });

    it('onSessionDetach with closing deletes the session with its last count, and only then', async (t) => {
      const manager = await setup(t);
      if (!countsConnections(t, manager)) return;
      const session = newSession({ user: 'ada' });
      await manager.onSessionCreated(session);
      assert.equal(await manager.onSessionAttach(session.key, 0), 'attached');
      assert.equal(await manager.onSessionAttach(session.key, 0), 'attached');
      assert.equal(await manager.onSessionDetach(session.key, true), 1, 'another connection holds it');
      assert.ok(await manager.onSessionLookup(session.key), 'kept while held');
      assert.equal(await manager.onSessionDetach(session.key, true), 0);
      assert.equal(await manager.onSessionLookup(session.key), null, 'gone with the last count');
      assert.equal(await manager.onSessionAttach(session.key, 0), 'not-found');
      await manager.onSessionClosed(session.key); // the server's own delete after it: harmless
    });
  });
}
