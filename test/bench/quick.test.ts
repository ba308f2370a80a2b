/**
 * Smoke test of the benchmark: `npm run bench:quick` (a few hundred ms per case, small connection
 * counts) must run every case, exit 0, print the tables and write valid JSON. No figure is
 * asserted: CI machines are shared and noisy, and timing belongs in bench/RESULTS.md, not in tests.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cases, QUICK } from '../../bench/cases.ts';
import type { Report } from '../../bench/report.ts';
import { runNode } from '../helpers.ts';

/**
 * Quick mode takes 60-90 s on 2 quiet cores; past this it is stuck, not slow. Not 180 s: on a
 * machine loaded by other work (load average 12-15) its cases took 3-5 s each and it ran past 180.
 */
const DEADLINE_MS = 300_000;

test('bench quick mode runs every case and prints the table and JSON', { timeout: DEADLINE_MS + 20_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'duplexwire-bench-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const jsonPath = join(dir, 'quick.json');
  // The same command as `npm run bench:quick`, without npm in between so that the deadline can
  // stop the orchestrator itself (which then kills its servers, load generators and busy loops).
  const { code, signal, stdout, stderr } = await runNode(
    t,
    ['--import', 'tsx', 'bench/run.ts', '--quick', '--json', jsonPath],
    DEADLINE_MS,
  );

  assert.equal(code, 0, `bench exited with ${code ?? signal}; stderr:\n${stderr.slice(-4_000)}`);
  for (const section of [
    '## Request-reply',
    '## Signals',
    '## Memory per idle connection',
    '## Codec',
    '## Ratios',
    '## Goals',
  ]) {
    assert.ok(stdout.includes(section), `the output has no "${section}" table:\n${stdout.slice(0, 2_000)}`);
  }
  const report = JSON.parse(readFileSync(jsonPath, 'utf8')) as Report;
  assert.equal(report.meta.mode, 'quick');
  const expected = cases(QUICK).map((c) => c.id);
  assert.deepEqual(
    report.cases.map((c) => c.id),
    expected,
  );
  for (const result of report.cases) {
    assert.equal(result.error, undefined, `${result.id} failed: ${result.error}`);
    assert.ok(Object.keys(result.metrics).length > 0, `${result.id} has no figures`);
  }
  assert.ok(report.goals.length > 0, 'no goal was checked');
});
