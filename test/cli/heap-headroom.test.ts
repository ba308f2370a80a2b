/**
 * The command's heap headroom (src/cli/heap-headroom.ts): the growing factor it asks V8 for, and
 * that installing it in a process changes nothing else about it (the process still exits).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { growingPercent, HEADROOM } from '../../src/cli/heap-headroom.ts';

const MiB = 1024 * 1024;

test('a small live heap gets a growing factor that leaves HEADROOM for garbage', () => {
  for (const live of [8 * MiB, 12 * MiB, 20 * MiB]) {
    const percent = growingPercent(live);
    assert.ok(live * (1 + percent / 100) >= live + HEADROOM, `${live / MiB} MiB live: ${percent}%`);
  }
});

test('the factor is capped for a tiny heap, and left to V8 once V8 would give that room', () => {
  assert.equal(growingPercent(1 * MiB), 1000);
  assert.equal(growingPercent(0), 1000);
  // From HEADROOM / 3 up, V8's own factor (up to 4) may already leave the room: not overridden.
  assert.equal(growingPercent(HEADROOM / 3 + MiB), 0);
  assert.equal(growingPercent(HEADROOM), 0);
  assert.equal(growingPercent(1024 * MiB), 0);
});

test('keepHeapHeadroom() is idempotent and does not keep the process alive', () => {
  const module = fileURLToPath(new URL('../../src/cli/heap-headroom.ts', import.meta.url));
  const script = `
    const { keepHeapHeadroom } = await import(${JSON.stringify(module)});
    keepHeapHeadroom();
    keepHeapHeadroom();
    // Garbage for a few full collections, which the observer answers.
    for (let i = 0; i < 5; i++) { new Array(1e6).fill(i); globalThis.gc?.(); }
    console.log('done');
  `;
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--expose-gc', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout.trim(), 'done');
});
