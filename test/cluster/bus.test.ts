/**
 * BusSubscriptions against a scripted bus: one call at a time per topic, whatever the burst of
 * changes, ending in the state last wanted; failures reported and retried, on a timer and on the
 * next change.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  BUS_RETRY_FIRST_DELAY,
  BusSubscriptions,
  decodeBusMessage,
  decodeSessionClosedBody,
  decodeSessionUpdatedBody,
  encodeBusMessage,
  encodeSessionClosedBody,
  encodeSessionUpdatedBody,
  type TopicBus,
} from '../../src/cluster/bus.ts';
import { delay, waitFor } from '../helpers.ts';

/** A bus whose calls wait until the test settles them, recording their order and overlap. */
function scriptedBus() {
  const calls: string[] = [];
  const pending: Array<{ what: string; settle: (error?: Error) => void }> = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const call = (what: string): Promise<unknown> => {
    calls.push(what);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    return new Promise<void>((resolve, reject) => {
      pending.push({
        what,
        settle: (error) => {
          inFlight--;
          if (error === undefined) resolve();
          else reject(error);
        },
      });
    });
  };
  const bus: TopicBus = {
    publish: async () => {},
    subscribe: (topic) => call(`subscribe ${topic}`),
    unsubscribe: (topic) => call(`unsubscribe ${topic}`),
  };
  return {
    bus,
    calls,
    get maxInFlight() {
      return maxInFlight;
    },
    /** Settles the oldest call and lets the follow-up run. */
    async next(error?: Error): Promise<string> {
      const first = pending.shift();
      assert.ok(first, 'a call is pending');
      first.settle(error);
      await new Promise((resolve) => setImmediate(resolve));
      return first.what;
    },
    get pending() {
      return pending.length;
    },
  };
}

test('a burst of leave and join ends in the state last wanted, one call at a time', async () => {
  const script = scriptedBus();
  const { subs } = failureRecording(script.bus);
  subs.want('t', true);
  subs.want('t', false);
  subs.want('t', true);
  subs.want('t', false);
  subs.want('t', true);
  assert.deepEqual(script.calls, ['subscribe t']);
  await script.next();
  // Wanted again what it has: nothing more.
  assert.equal(script.pending, 0);

  subs.want('t', false);
  subs.want('t', true);
  subs.want('t', false);
  assert.deepEqual(script.calls, ['subscribe t', 'unsubscribe t']);
  await script.next();
  assert.equal(script.pending, 0);
  assert.equal(script.maxInFlight, 1);
});

test('a change while a call is in flight is made after it', async () => {
  const script = scriptedBus();
  const { subs } = failureRecording(script.bus);
  subs.want('t', true);
  subs.want('t', false);
  await script.next();
  assert.deepEqual(script.calls, ['subscribe t', 'unsubscribe t']);
  await script.next();
  subs.want('u', true);
  subs.want('t', true);
  assert.deepEqual(script.calls.slice(2), ['subscribe u', 'subscribe t'], 'topics are independent');
});

/** Subscriptions on `bus` that record their failures as `"<doing> <topic>"`. */
function failureRecording(bus: TopicBus): { subs: BusSubscriptions; failures: string[] } {
  const failures: string[] = [];
  const subs = new BusSubscriptions(
    bus,
    () => {},
    (doing, topic) => failures.push(`${doing} ${topic}`),
  );
  return { subs, failures };
}

test('a failed call is reported; the next change tries again', async () => {
  const script = scriptedBus();
  const { subs, failures } = failureRecording(script.bus);
  subs.want('t', true);
  await script.next(new Error('down'));
  assert.deepEqual(failures, ['subscribing t']);
  subs.want('t', false);
  assert.equal(script.pending, 0, 'never subscribed: nothing to undo');
  subs.want('t', true);
  assert.deepEqual(script.calls, ['subscribe t', 'subscribe t']);
  await script.next();
});

test('a failed call is made again after a while, until it succeeds; stop() ends the retries', async () => {
  const script = scriptedBus();
  const { subs, failures } = failureRecording(script.bus);
  subs.want('t', true);
  await script.next(new Error('connection lost'));
  // No change of the topic follows (its subscriber stays): the subscription is still made.
  await waitFor(() => script.pending === 1, 3_000, 'the retry');
  await script.next(new Error('still down'));
  await waitFor(() => script.pending === 1, 3_000, 'the second retry');
  await script.next();
  assert.deepEqual(script.calls, ['subscribe t', 'subscribe t', 'subscribe t']);
  assert.deepEqual(failures, ['subscribing t', 'subscribing t']);

  subs.want('u', true);
  await script.next(new Error('down'));
  subs.stop();
  await delay(BUS_RETRY_FIRST_DELAY * 3);
  assert.equal(script.pending, 0, 'no retry after stop()');
  assert.deepEqual(script.calls.slice(3), ['subscribe u']);
});

test('a change while a retry is due is made at once; one no longer wanted is not retried', async () => {
  const script = scriptedBus();
  const { subs } = failureRecording(script.bus);
  subs.want('t', true);
  await script.next();
  subs.want('t', false);
  await script.next(new Error('down'));
  // Subscribed again before the retry of the unsubscribe: nothing to do, and nothing is retried.
  subs.want('t', true);
  assert.equal(script.pending, 0);
  await delay(BUS_RETRY_FIRST_DELAY * 3);
  assert.equal(script.pending, 0, 'still as wanted: no retry');
  assert.deepEqual(script.calls, ['subscribe t', 'unsubscribe t']);
  subs.stop();
});

test('a bus that throws instead of rejecting is reported the same way', () => {
  const failures: string[] = [];
  const throwing: TopicBus = {
    publish: async () => {},
    subscribe: () => {
      throw new Error('sync');
    },
    unsubscribe: async () => {},
  };
  new BusSubscriptions(
    throwing,
    () => {},
    (doing) => failures.push(doing),
  ).want('t', true);
  return new Promise<void>((resolve) =>
    setImmediate(() => {
      assert.deepEqual(failures, ['subscribing']);
      resolve();
    }),
  );
});

test('bus messages: origin and signal round trip; anything else is refused', () => {
  const signal = Uint8Array.of(0x0a, 1, 0x61, 0x62);
  assert.deepEqual(decodeBusMessage(encodeBusMessage('origin-1', signal)), { origin: 'origin-1', signal });
  assert.equal(decodeBusMessage(Uint8Array.of()), undefined);
  assert.equal(decodeBusMessage(Uint8Array.of(2, 0, 1)), undefined, 'another format');
  assert.equal(decodeBusMessage(Uint8Array.of(1, 5, 0x61)), undefined, 'cut short');
  assert.equal(decodeBusMessage(encodeBusMessage('x', new Uint8Array(0))), undefined, 'no signal');
});

test('session bodies: a close is [1][key], an update [2][session JSON]; each decoder refuses the other kind', () => {
  const json = '{"k":"key","c":"2026-01-01T00:00:00.000Z","l":"2026-01-01T00:00:00.000Z","i":{"name":"Ада 🔑"}}';
  const updated = encodeSessionUpdatedBody(json);
  assert.equal(updated[0], 2);
  assert.equal(decodeSessionUpdatedBody(updated), json);
  assert.equal(decodeSessionClosedBody(updated), undefined, 'an update is not a close');
  const closed = encodeSessionClosedBody('key');
  assert.deepEqual([...closed], [1, 0x6b, 0x65, 0x79], 'the close body is unchanged');
  assert.equal(decodeSessionUpdatedBody(closed), undefined, 'a close is not an update');
  assert.equal(decodeSessionUpdatedBody(Uint8Array.of(2)), undefined, 'empty');
  assert.equal(decodeSessionUpdatedBody(Uint8Array.of(2, 0xff)), undefined, 'not UTF-8');
  assert.equal(decodeSessionUpdatedBody(Uint8Array.of(3, 0x7b)), undefined, 'another kind');
});
