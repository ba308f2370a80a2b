/**
 * `Cancellation`: an AbortSignalLike without an EventTarget. It must behave as an AbortSignal does
 * for everything the engine (and a user) relies on.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Cancellation } from '../../src/peer/cancellation.ts';

test('listeners run once, in the order they were added; a removed one does not', () => {
  const cancellation = new Cancellation();
  const calls: string[] = [];
  const a = (): void => void calls.push('a');
  const b = (): void => void calls.push('b');
  const c = (): void => void calls.push('c');
  cancellation.addEventListener('abort', a);
  cancellation.addEventListener('abort', b);
  cancellation.addEventListener('abort', c);
  cancellation.addEventListener('abort', a); // twice is once, as on an EventTarget
  cancellation.removeEventListener('abort', b);
  assert.equal(cancellation.aborted, false);
  assert.equal(cancellation.reason, undefined);
  const reason = new Error('stop');
  cancellation.abort(reason);
  cancellation.abort(new Error('again'));
  assert.deepEqual(calls, ['a', 'c']);
  assert.equal(cancellation.aborted, true);
  assert.equal(cancellation.reason, reason);
});

test('the default reason is an AbortError, as AbortController.abort() gives', () => {
  const cancellation = new Cancellation();
  cancellation.abort();
  const reason = cancellation.reason as DOMException;
  assert.equal(reason.name, 'AbortError');
  const controller = new AbortController();
  controller.abort();
  assert.equal((controller.signal.reason as DOMException).name, reason.name);
});

test('a listener added after the abort never runs', () => {
  const cancellation = new Cancellation();
  cancellation.abort();
  let ran = false;
  cancellation.addEventListener('abort', () => {
    ran = true;
  });
  assert.equal(ran, false);
});

test('a listener that throws does not stop the others, and its error is not swallowed', () => {
  // In a process of its own: the error surfaces as an uncaught exception, as an EventTarget's does.
  const module = fileURLToPath(new URL('../../src/peer/cancellation.ts', import.meta.url));
  const script = `
    const { Cancellation } = await import(${JSON.stringify(module)});
    process.on('uncaughtException', (error) => console.log('uncaught:', error.message));
    const cancellation = new Cancellation();
    cancellation.addEventListener('abort', () => { throw new Error('listener bug'); });
    cancellation.addEventListener('abort', () => console.log('second ran'));
    cancellation.abort();
  `;
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.equal(result.stdout, 'second ran\nuncaught: listener bug\n', result.stderr);
});
