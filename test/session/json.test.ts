/**
 * The session JSON form (wire types 21 and 192, and storage) and the default key generator.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InvalidArgumentError } from '../../src/errors.ts';
import {
  defaultKeyGenerator,
  formatSessionTime,
  isStorableSessionKey,
  parseSessionTime,
  type Session,
  sessionFromJson,
  sessionToJson,
} from '../../src/session/session.ts';

const KEY = 'pB3vQ9x_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS';
const T1 = new Date(Date.UTC(2026, 10, 22, 11, 41, 29, 65));
const T2 = new Date(Date.UTC(2026, 10, 23, 8, 0, 0, 0));

describe('sessionToJson', () => {
  it('writes k, c, l, i in that order, times RFC 3339 UTC with milliseconds', () => {
    const session: Session = { key: KEY, creation: T1, lastLookup: T2, info: { user: 'ada', n: [1, 2] } };
    assert.equal(
      sessionToJson(session),
      `{"k":"${KEY}","c":"2026-11-22T11:41:29.065Z","l":"2026-11-23T08:00:00.000Z","i":{"user":"ada","n":[1,2]}}`,
    );
  });

  it('omits "i" when there is no info, and keeps an empty one', () => {
    assert.equal(
      sessionToJson({ key: KEY, creation: T1, lastLookup: T1, info: undefined }),
      `{"k":"${KEY}","c":"2026-11-22T11:41:29.065Z","l":"2026-11-22T11:41:29.065Z"}`,
    );
    assert.match(sessionToJson({ key: KEY, creation: T1, lastLookup: T1, info: {} }), /,"i":\{\}\}$/);
  });

  it('keeps the order whatever the object, and writes nothing else', () => {
    const session = { extra: 1, info: { a: 1 }, lastLookup: T2, creation: T1, key: KEY } as Session;
    assert.deepEqual(Object.keys(JSON.parse(sessionToJson(session))), ['k', 'c', 'l', 'i']);
  });

  it('refuses times outside RFC 3339 and invalid dates', () => {
    assert.equal(formatSessionTime(new Date('0001-01-01T00:00:00Z')), '0001-01-01T00:00:00.000Z');
    assert.equal(formatSessionTime(new Date('9999-12-31T23:59:59.999Z')), '9999-12-31T23:59:59.999Z');
    assert.throws(() => formatSessionTime(new Date('+010000-01-01T00:00:00Z')), InvalidArgumentError);
    assert.throws(() => formatSessionTime(new Date('-000001-01-01T00:00:00Z')), InvalidArgumentError);
    assert.throws(() => formatSessionTime(new Date(Number.NaN)), InvalidArgumentError);
    assert.throws(() => formatSessionTime(1 as unknown as Date), InvalidArgumentError);
  });

  it('refuses what JSON would not keep exactly', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = { back: cyclic };
    const shared = { x: 1 };
    const bad: unknown[] = [
      { d: new Date() },
      { u: undefined },
      { a: [1, undefined] },
      { n: Number.NaN },
      { n: -Infinity },
      { f() {} },
      { s: Symbol('s') },
      { b: 2n },
      { m: new Map() },
      { r: /x/ },
      { c: new (class Point {})() },
      cyclic,
      [1],
      null,
      'text',
    ];
    bad.forEach((info, i) => {
      assert.throws(
        () => sessionToJson({ key: KEY, creation: T1, lastLookup: T1, info: info as Record<string, unknown> }),
        InvalidArgumentError,
        `bad info #${i}`,
      );
    });
    // Shared (not circular) references are fine: JSON writes them twice.
    assert.doesNotThrow(() =>
      sessionToJson({ key: KEY, creation: T1, lastLookup: T1, info: { a: shared, b: shared } }),
    );
    assert.doesNotThrow(() => sessionToJson({ key: KEY, creation: T1, lastLookup: T1, info: Object.create(null) }));
  });

  it('refuses keys no store can hold: empty, not a string, lone surrogates', () => {
    for (const key of ['', '\ud800', 'a\udc00b', 42 as unknown as string]) {
      assert.throws(() => sessionToJson({ key, creation: T1, lastLookup: T1, info: undefined }), InvalidArgumentError);
    }
    assert.ok(isStorableSessionKey('🔑'));
    assert.ok(!isStorableSessionKey('\ud83d'));
  });
});

describe('sessionFromJson', () => {
  it('reads Go nanosecond timestamps, truncating to milliseconds', () => {
    const session = sessionFromJson(
      `{"k":"${KEY}","c":"2026-11-22T11:41:29.065369494Z","l":"2026-11-22T11:41:29.999999999Z","i":{"a":"b"}}`,
    );
    assert.equal(session.key, KEY);
    assert.equal(session.creation.toISOString(), '2026-11-22T11:41:29.065Z');
    assert.equal(session.lastLookup.toISOString(), '2026-11-22T11:41:29.999Z', 'truncated, not rounded');
    assert.deepEqual(session.info, { a: 'b' });
  });

  it('reads any fraction precision, none at all, offsets and lower-case t/z', () => {
    const cases: [string, string][] = [
      ['2026-11-22T11:41:29Z', '2026-11-22T11:41:29.000Z'],
      ['2026-11-22T11:41:29.1Z', '2026-11-22T11:41:29.100Z'],
      ['2026-11-22T11:41:29.12Z', '2026-11-22T11:41:29.120Z'],
      ['2026-11-22T11:41:29.065Z', '2026-11-22T11:41:29.065Z'],
      ['2026-11-22T11:41:29.0653Z', '2026-11-22T11:41:29.065Z'],
      [`2026-11-22T11:41:29.${'9'.repeat(30)}Z`, '2026-11-22T11:41:29.999Z'],
      ['2026-11-22t11:41:29.5z', '2026-11-22T11:41:29.500Z'],
      ['2026-11-22T12:41:29.065369494+01:00', '2026-11-22T11:41:29.065Z'],
      ['2026-11-22T06:11:29.065-05:30', '2026-11-22T11:41:29.065Z'],
      ['2026-01-01T00:30:00+01:00', '2025-12-31T23:30:00.000Z'],
      ['0001-01-01T00:00:00Z', '0001-01-01T00:00:00.000Z'],
      ['0099-06-15T00:00:00Z', '0099-06-15T00:00:00.000Z'],
      ['2024-02-29T23:59:59.999Z', '2024-02-29T23:59:59.999Z'],
      ['2000-02-29T00:00:00Z', '2000-02-29T00:00:00.000Z'],
    ];
    for (const [text, iso] of cases) assert.equal(parseSessionTime(text).toISOString(), iso, text);
  });

  it('takes "i": null and a missing "i" as no info, and ignores unknown members', () => {
    const base = `"k":"${KEY}","c":"2026-11-22T11:41:29Z","l":"2026-11-22T11:41:29Z"`;
    assert.equal(sessionFromJson(`{${base}}`).info, undefined);
    assert.equal(sessionFromJson(`{${base},"i":null}`).info, undefined);
    assert.deepEqual(sessionFromJson(`{${base},"i":{},"x":[1]}`).info, {});
    assert.deepEqual(Object.keys(sessionFromJson(`{${base}}`)).sort(), ['creation', 'info', 'key', 'lastLookup']);
  });

  it('throws InvalidArgumentError on anything malformed', () => {
    const c = '"c":"2026-11-22T11:41:29Z"';
    const l = '"l":"2026-11-22T11:41:29Z"';
    const k = `"k":"${KEY}"`;
    const time = (t: string): string => `{${k},"c":${JSON.stringify(t)},${l}}`;
    const bad = [
      '',
      'not json',
      '{',
      'null',
      '42',
      '"text"',
      '[]',
      '{}',
      `{${c},${l}}`,
      `{${k},${l}}`,
      `{${k},${c}}`,
      `{"k":"",${c},${l}}`,
      `{"k":42,${c},${l}}`,
      `{"k":"\\ud800",${c},${l}}`,
      `{${k},"c":1700000000000,${l}}`,
      `{${k},${c},${l},"i":[]}`,
      `{${k},${c},${l},"i":"x"}`,
      `{${k},${c},${l},"i":1}`,
      time('2026-11-22 11:41:29Z'),
      time('2026-11-22T11:41:29'),
      time('2026-11-22T11:41Z'),
      time('2026-11-22T11:41:29.Z'),
      time('26-11-22T11:41:29Z'),
      time('2026-13-01T00:00:00Z'),
      time('2026-00-01T00:00:00Z'),
      time('2026-02-29T00:00:00Z'),
      time('1900-02-29T00:00:00Z'),
      time('2026-04-31T00:00:00Z'),
      time('2026-11-00T00:00:00Z'),
      time('2026-11-22T24:00:00Z'),
      time('2026-11-22T11:60:00Z'),
      time('2026-11-22T11:41:60Z'),
      time('2026-11-22T11:41:29+24:00'),
      time('2026-11-22T11:41:29+01:60'),
      time('2026-11-22T11:41:29+0100'),
      time('2026-11-22T11:41:29Z '),
      time(' 2026-11-22T11:41:29Z'),
      time('2026-11-22T11:41:29Z\n'),
      time('２０２６-11-22T11:41:29Z'),
    ];
    for (const text of bad) assert.throws(() => sessionFromJson(text), InvalidArgumentError, text);
    assert.throws(() => sessionFromJson(undefined as unknown as string), InvalidArgumentError);
  });

  it('round-trips any storable session (property)', () => {
    const jsonObject = fc.dictionary(fc.string(), fc.jsonValue(), { maxKeys: 8 });
    fc.assert(
      fc.property(
        fc.string({ minLength: 1, unit: 'grapheme' }),
        fc.date({
          min: new Date('0000-01-01T00:00:00Z'),
          max: new Date('9999-12-31T23:59:59.999Z'),
          noInvalidDate: true,
        }),
        fc.date({
          min: new Date('0000-01-01T00:00:00Z'),
          max: new Date('9999-12-31T23:59:59.999Z'),
          noInvalidDate: true,
        }),
        fc.option(jsonObject, { nil: undefined }),
        (key, creation, lastLookup, info) => {
          const session: Session = { key, creation, lastLookup, info };
          const back = sessionFromJson(sessionToJson(session));
          assert.equal(back.key, key);
          assert.equal(back.creation.getTime(), creation.getTime());
          assert.equal(back.lastLookup.getTime(), lastLookup.getTime());
          // JSON's one normalisation: -0 becomes 0.
          assert.deepStrictEqual(back.info, info === undefined ? undefined : JSON.parse(JSON.stringify(info)));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('parses every formatted time back to itself, with any extra fraction digits (property)', () => {
    fc.assert(
      fc.property(
        fc.date({
          min: new Date('0000-01-01T00:00:00Z'),
          max: new Date('9999-12-31T23:59:59.999Z'),
          noInvalidDate: true,
        }),
        fc.stringMatching(/^[0-9]{0,12}$/),
        (date, extra) => {
          const text = formatSessionTime(date).replace('Z', `${extra}Z`);
          assert.equal(parseSessionTime(text).getTime(), date.getTime());
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('defaultKeyGenerator', () => {
  const ALPHABET = /^[A-Za-z0-9_-]+$/;

  it('makes 64-character base64url keys of 48 random bytes, all distinct over 10,000', () => {
    const keys = new Set<string>();
    const seen = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      const key = defaultKeyGenerator.generate();
      assert.equal(key.length, 64);
      assert.match(key, ALPHABET);
      assert.ok(defaultKeyGenerator.isValid(key));
      keys.add(key);
      for (const ch of key) seen.add(ch);
    }
    assert.equal(keys.size, 10_000);
    assert.equal(seen.size, 64, 'every base64url character shows up');
    const key = defaultKeyGenerator.generate();
    assert.equal(Buffer.from(key, 'base64url').length, 48);
    assert.equal(Buffer.from(key, 'base64url').toString('base64url'), key);
  });

  it('encodes the CSPRNG bytes as standard base64url', (t) => {
    const samples = [
      new Uint8Array(48),
      new Uint8Array(48).fill(255),
      Uint8Array.from({ length: 48 }, (_, i) => i * 5),
    ];
    let next: Uint8Array = samples[0]!;
    t.mock.method(globalThis.crypto, 'getRandomValues', <T extends ArrayBufferView | null>(array: T): T => {
      (array as unknown as Uint8Array).set(next);
      return array;
    });
    for (const bytes of samples) {
      next = bytes;
      assert.equal(defaultKeyGenerator.generate(), Buffer.from(bytes).toString('base64url'));
    }
  });

  it('isValid accepts exactly 64 characters of the alphabet', () => {
    const good = 'A'.repeat(32) + '_-09azAZ'.repeat(4);
    assert.ok(defaultKeyGenerator.isValid(good));
    const bad = [
      good.slice(1),
      `${good}A`,
      '',
      `${good.slice(1)}+`,
      `${good.slice(1)}/`,
      `${good.slice(1)}=`,
      `${good.slice(1)} `,
      `${good.slice(1)}.`,
      `${good.slice(1)}\n`,
      `${good}\n`,
      `${good.slice(2)}é`,
      `${good.slice(2)}🔑`,
      `${good.slice(3)}../`,
      `${good.slice(1)}\u0000`,
      42 as unknown as string,
      null as unknown as string,
    ];
    for (const key of bad) assert.ok(!defaultKeyGenerator.isValid(key), JSON.stringify(key));
  });
});
