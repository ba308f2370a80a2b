/**
 * A short soak (bench/soak.ts) in the test suite: the server process and the clients under
 * constant faults for 15 s, the same checks as `npm run soak` (no growth of the server's heap and
 * handles after the warm-up, only the errors the faults explain, everything let go at the end).
 * Run as `npm run soak` does, in child processes, with a deadline that kills them.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { SoakReport } from '../../bench/soak.ts';
import { runNode } from '../helpers.ts';

const SECONDS = 15;
/** Past this the run is stuck, not slow. */
const DEADLINE_MS = 90_000;

test(`a ${SECONDS} s soak under faults passes: no growth, no unexpected error, nothing left behind`, {
  timeout: DEADLINE_MS + 20_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'duplexwire-soak-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const jsonPath = join(dir, 'soak.json');
  // SIGTERM first at the deadline: the orchestrator kills its server process on the way out.
  const { code, signal, stdout, stderr } = await runNode(
    t,
    ['--import', 'tsx', 'bench/soak.ts', '--seconds', String(SECONDS), '--clients', '16', '--json', jsonPath],
    DEADLINE_MS,
  );

  assert.equal(code, 0, `soak exited with ${code ?? signal}:\n${stdout.slice(-4_000)}\n${stderr.slice(-2_000)}`);
  const report = JSON.parse(readFileSync(jsonPath, 'utf8')) as SoakReport;
  assert.equal(report.pass, true, report.failures.join('\n'));
  assert.deepEqual(report.failures, []);
  // It did what it says: samples after the warm-up, faults of every kind, work that went through.
  assert.ok(report.samples.length >= SECONDS - 2, `${report.samples.length} samples`);
  assert.ok(report.samples.length - report.warmupSamples >= 6);
  assert.ok(Object.keys(report.faults).length >= 5, JSON.stringify(report.faults));
  assert.ok(report.links > 16, `${report.links} connections`);
  assert.ok((report.ops.echo?.ok ?? 0) > 100, JSON.stringify(report.ops.echo));
  assert.ok(report.replacedClients > 0);
  assert.deepEqual(report.unexpected, {});
  assert.equal(report.final.connections, 0);
  assert.ok(stdout.includes('PASS'));
});
